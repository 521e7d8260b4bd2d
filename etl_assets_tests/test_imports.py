"""No import a process does not use: the frame libraries (pandas, polars, pyarrow; ~130 MB and several
hundred milliseconds) load only where a frame is built, and the light commands do not load Dagster.

Each case runs in a fresh interpreter (this test process has long imported everything) and reports
the modules it ended with.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
from psycopg import sql

from etl_assets.settings import PROJECT_ROOT

FRAME_LIBRARIES = ("pandas", "polars", "pyarrow", "numpy")
DAGSTER = ("dagster", "dagster_shared", "dagster_postgres", "pydantic", "sqlalchemy")
MARKER = "LOADED-MODULES "


def _loaded_after(code: str, env: dict[str, str]) -> tuple[set[str], subprocess.CompletedProcess]:
    """Run ``code`` in a fresh interpreter; the top-level modules loaded when it ended (even by
    ``SystemExit``), and the process (its output without the module list)."""
    script = "\n".join([
        "import json, sys",
        "try:",
        textwrap.indent(textwrap.dedent(code).strip(), "    "),
        "finally:",
        "    top = sorted({name.split('.')[0] for name in sys.modules})",
        f"    print({MARKER!r} + json.dumps(top), file=sys.stderr)",
    ])
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    lines = proc.stderr.splitlines()
    found = [ln for ln in lines if ln.startswith(MARKER)]
    assert found, f"the child printed no module list:\n{proc.stdout}\n{proc.stderr}"
    proc.stderr = "\n".join(ln for ln in lines if not ln.startswith(MARKER))
    return set(json.loads(found[-1][len(MARKER):])), proc


def test_loading_the_definitions_loads_no_frame_library(etl_env: dict[str, str]) -> None:
    """What `etl-assets run`, the code location and every run worker load first."""
    modules, proc = _loaded_after(
        """
        from etl_assets.definitions import defs
        print(len(list(defs.resolve_all_asset_keys())))
        """,
        os.environ.copy(),
    )
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.split()[-1]) > 10  # the demo's Definitions really loaded
    assert "dagster" in modules  # the scan sees what the child loaded
    assert modules.isdisjoint(FRAME_LIBRARIES), sorted(modules & set(FRAME_LIBRARIES))


def test_the_light_commands_load_neither_dagster_nor_frame_libraries(
    etl_env: dict[str, str], tmp_path: Path
) -> None:
    env = os.environ.copy()
    env["ETL_HOME"] = str(tmp_path / "no_server_home")  # `server status` finds no server there
    expected = {("--help",): 0, ("env",): 0, ("server", "status"): 3}
    for argv, status in expected.items():
        modules, proc = _loaded_after(
            f"""
            from etl_assets.cli import main
            sys.exit(main({list(argv)!r}))
            """,
            env,
        )
        assert proc.returncode == status, (argv, proc.stdout, proc.stderr)
        assert proc.stdout.strip(), argv  # it answered
        heavy = {*DAGSTER, *FRAME_LIBRARIES, "psycopg"}  # env connects only to an embedded server
        assert modules.isdisjoint(heavy), (argv, sorted(modules & heavy))


def test_seeding_the_embedded_demo_source_loads_no_dagster(etl_env: dict[str, str]) -> None:
    """`etl-assets env` with no source DSN set seeds the embedded server's demo source through
    these modules (connections with clear errors, without Dagster's resource class)."""
    modules, proc = _loaded_after(
        """
        import etl_assets.environment
        from etl_assets.demo.seed import ensure_seeded
        """,
        os.environ.copy(),
    )
    assert proc.returncode == 0, proc.stderr
    assert "psycopg" in modules
    assert modules.isdisjoint(DAGSTER + FRAME_LIBRARIES), sorted(modules & {*DAGSTER, *FRAME_LIBRARIES})


def test_a_fast_path_run_builds_no_frame_and_loads_no_frame_library(
    fresh_project: dict[str, str], tmp_path: Path
) -> None:
    """`etl-assets run` of COPY fast-path extracts (a full and an incremental upsert, with checks
    compiled to SQL) moves the rows without a frame, so the frame libraries never load."""
    tables = tmp_path / "tables.yaml"
    tables.write_text(
        textwrap.dedent(
            """
            tables:
              - name: shop.categories
                extract: full
                load: truncate_insert
                primary_key: [id]
                fast_path: true
                checks:
                  - {name: has_rows, kind: row_count, min: 1, severity: error}
              - name: shop.orders
                extract: incremental
                primary_key: [id]
                cursor: updated_at
                load: upsert
                fast_path: true
                checks:
                  - {name: no_null_ids, kind: not_null, column: id, severity: error}
            """
        )
    )
    modules, proc = _loaded_after(
        f"""
        from etl_assets.cli import main
        sys.exit(main(["--pipelines", {str(tables)!r}, "run", "--select", "raw/categories",
                       "--select", "raw/orders"]))
        """,
        fresh_project,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "result: OK" in proc.stdout
    assert "dagster" in modules
    assert modules.isdisjoint(FRAME_LIBRARIES), sorted(modules & set(FRAME_LIBRARIES))
    with psycopg.connect(fresh_project["ETL_SOURCE_DSN"]) as src, \
            psycopg.connect(fresh_project["ETL_WAREHOUSE_DSN"]) as wh:
        for source, target in (("shop.categories", "raw.categories"), ("shop.orders", "raw.orders")):
            # every row, every column (the fast path keeps the source's columns and types)
            digest = sql.SQL("SELECT count(*), md5(string_agg(t::text, E'\\n' ORDER BY t.id)) FROM {} t")
            expected = src.execute(digest.format(sql.Identifier(*source.split(".")))).fetchone()
            got = wh.execute(digest.format(sql.Identifier(*target.split(".")))).fetchone()
            assert expected[0] > 0
            assert got == expected, target
