"""The pipeline runs itself: sensors on incremental and CDC sources, schedules for full and chunked
tables, declarative automation downstream and the daily aggregate's changed days (docs/automation.md).

``build_defs()`` is this domain's part of the project's Definitions (see ``etl_assets/domains.py``).
"""

from __future__ import annotations

from typing import Any


def build_defs() -> Any:
    from etl_assets.automation.defs import build_defs as build

    return build()
