"""Extracts of declared source tables (etl_assets/pipelines/*.yaml): full, incremental, chunked,
and the COPY-to-COPY fast path. :func:`run_extract` picks the implementation for a table spec."""

from __future__ import annotations

from etl_assets.extract.runner import run_extract

__all__ = ["run_extract"]
