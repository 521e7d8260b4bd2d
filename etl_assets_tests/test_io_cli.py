"""``etl-assets rollback`` and ``etl-assets bench`` (write-mode table) from the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
import psycopg
from psycopg import sql

from etl_assets.bench.write_modes import format_mode_table, mode_ratios
from etl_assets.cli import main
from etl_assets.io.tables import TableRef
from etl_assets.io.writer import write_frame
from etl_assets_tests.io_helpers import rows


def test_rollback_command_swaps_back(etl_env, warehouse_dsn, fresh_schema, capsys):
    t = TableRef(fresh_schema, "Daily Revenue")
    with psycopg.connect(warehouse_dsn, autocommit=True) as conn:
        write_frame(conn, pl.DataFrame({"id": [1]}), t, "swap", primary_key=["id"])
        write_frame(conn, pl.DataFrame({"id": [2, 3]}), t, "swap", primary_key=["id"])
        target = f'{fresh_schema}."Daily Revenue"'
        assert main(["rollback", target]) == 0
        assert "now holds the version the last swap replaced (1 rows)" in capsys.readouterr().out
        assert rows(conn, t) == [(1,)]
        assert main(["rollback", target]) == 0
        assert rows(conn, t) == [(2,), (3,)]
        conn.execute(
            sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(fresh_schema, "never_swapped"))
        )
    assert main(["rollback", f"{fresh_schema}.never_swapped"]) == 2
    assert "has no previous version to roll back to" in capsys.readouterr().err


def test_mode_ratios_pair_each_mode_with_fastest_plain_write():
    results = [
        {
            "group": "load",
            "role": "ceiling",
            "name": "COPY csv stream",
            "frame": "polars",
            "rows": 10,
            "seconds": 2.0,
            "verified": True,
        },
        {
            "group": "load",
            "role": "ceiling",
            "name": "ADBC",
            "frame": "polars",
            "rows": 10,
            "seconds": 1.0,
            "verified": True,
        },
        {
            "group": "load",
            "role": "ceiling",
            "name": "wrong but fast",
            "frame": "polars",
            "rows": 10,
            "seconds": 0.1,
            "verified": False,
        },
        {
            "group": "load",
            "role": "ours",
            "name": "upsert (into empty)",
            "frame": "polars",
            "rows": 10,
            "seconds": 2.5,
            "rows_per_second": 4.0,
            "verified": True,
        },
        {
            "group": "load",
            "role": "ours",
            "name": "swap",
            "frame": "pandas",
            "rows": 10,
            "seconds": 1.0,
            "verified": True,
        },
    ]
    ratios = mode_ratios(results)
    assert [(r.mode, r.ceiling, r.ratio) for r in ratios] == [
        ("upsert (into empty)", "ADBC", 2.5),
        ("swap", None, None),
    ]
    table = format_mode_table(ratios)
    assert "2.50x" in table and "upsert (into empty)" in table


def test_bench_command_prints_write_mode_table(etl_env, tmp_path):
    """Smoke test of the command with a tiny size: one plain write and two modes per frame type."""
    exe = Path(sys.executable).with_name("etl-assets")
    out = subprocess.run(
        [
            str(exe),
            "bench",
            "--rows",
            "2000",
            "--repeat",
            "1",
            "--only",
            "COPY csv",
            "--only",
            "truncate_insert",
            "--only",
            "upsert (into",
            "--out",
            str(tmp_path / "bench"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Write modes vs the fastest plain bulk write" in out.stdout
    table = out.stdout.split("Write modes vs the fastest plain bulk write")[1]
    for frame_kind in ("pandas", "polars"):
        assert any(
            line.startswith("truncate_insert")
            and f" {frame_kind} " in line
            and "COPY csv stream" in line
            and line.rstrip().endswith("x")
            for line in table.splitlines()
        )
    assert (tmp_path / "bench" / "bench.json").exists()
