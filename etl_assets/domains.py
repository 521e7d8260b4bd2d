"""The list of domain modules whose ``build_defs()`` make up the project's Definitions.

Adding a domain means adding its module name here; nothing else in definitions.py changes.
"""

from __future__ import annotations

import importlib
from types import ModuleType

DOMAIN_MODULES: tuple[str, ...] = (
    "etl_assets.extract.assets",
    "etl_assets.transforms",
    "etl_assets.quality.defs",
    "etl_assets.housekeeping",
    "etl_assets.alerts",
    "etl_assets.stream.assets",
    "etl_assets.automation",
)


def modules() -> list[ModuleType]:
    return [importlib.import_module(name) for name in DOMAIN_MODULES]
