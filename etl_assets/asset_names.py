"""Dagster names of the assets built from declared tables (extract and CDC alike).

Dagster accepts only ``[A-Za-z0-9_]`` in op and group names; a declared schema or table name may
hold anything PostgreSQL allows, so names are sanitised here, once, for both asset builders.
"""

from __future__ import annotations

import hashlib
import re

from etl_assets.pipeline_config import TableSpec

_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def safe_name(text: str) -> str:
    """A Dagster-valid name for ``text``; a hash keeps two sanitised names apart."""
    cleaned = _UNSAFE.sub("_", text)
    if cleaned != text:
        cleaned = f"{cleaned}_{hashlib.sha1(text.encode()).hexdigest()[:6]}"
    return cleaned


def op_name(spec: TableSpec) -> str:
    """The op of the asset that loads ``spec.target``."""
    return "extract__" + safe_name(f"{spec.target.schema}__{spec.target.name}")
