"""The README's first command installs the base dependencies only (`pip install -e .`): every
third-party module the project imports outside the benchmark must come with them.

The test extras pull in more (dlt brings croniter, for one), so a module missing from the base
list passes every other test and fails only on a fresh machine: this test reads the imports of
``etl_assets`` and checks each against what the base requirements install.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib

from packaging.requirements import Requirement

from etl_assets.settings import PROJECT_ROOT

# Modules that import an extra's packages, behind a clear "install the extra" message.
EXTRA_USERS = {"celery": {"etl_assets/celery_executor.py", "etl_assets/cli/worker.py"}}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(requirements: list[str]) -> set[str]:
    """``requirements`` and everything they require in turn (markers evaluated)."""
    todo = [Requirement(r) for r in requirements]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = _canonical(req.name)
        if name in seen or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        try:
            requires = [Requirement(r) for r in md.requires(req.name) or []]
        except md.PackageNotFoundError:
            continue
        for sub in requires:
            if sub.marker is None or sub.marker.evaluate({"extra": ""}):
                todo.append(sub)
            elif any(sub.marker.evaluate({"extra": extra}) for extra in req.extras):
                todo.append(Requirement(str(sub).split(";")[0]))
    return seen


def _project() -> dict:
    return tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]


def _imported_distributions() -> dict[str, set[str]]:
    """distribution -> the files of etl_assets (benchmark excluded) that import it."""
    owners = md.packages_distributions()
    found: dict[str, set[str]] = {}
    for path in (PROJECT_ROOT / "etl_assets").rglob("*.py"):
        if "bench" in path.relative_to(PROJECT_ROOT / "etl_assets").parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "etl_assets":
                    continue
                for dist in owners.get(top, [top]):
                    found.setdefault(_canonical(dist), set()).add(str(path.relative_to(PROJECT_ROOT)))
    return found


def test_every_runtime_import_comes_with_the_base_install() -> None:
    project = _project()
    base = _closure(project["dependencies"])
    extras = {name: _closure(project["optional-dependencies"][name]) for name in EXTRA_USERS}
    imported = _imported_distributions()
    assert {"dagster", "psycopg", "polars", "pandas", "tqdm"} <= set(imported)  # the scan sees the project
    missing = {}
    for dist, files in imported.items():
        if dist in base:
            continue
        outside = {f for f in files
                   if not any(f in users and dist in extras[extra] for extra, users in EXTRA_USERS.items())}
        if outside:
            missing[dist] = sorted(outside)
    assert missing == {}, f"imported but not installed by `pip install -e .`: {missing}"
