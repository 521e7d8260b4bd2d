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


def source_op_tags(spec: TableSpec) -> dict[str, str]:
    """A named source's extract goes to its own Celery queue (``source-<name>``), so that a worker
    placed near that database can take it; the default source's go to the default queue."""
    if spec.source_name is None:
        return {}
    from etl_assets.celery_executor import QUEUE_TAG, source_queue

    return {QUEUE_TAG: source_queue(spec.source_name)}
