"""The benchmark command: a tiny smoke run, and the checksums that keep a fast wrong answer from winning.

The real measurement (100,000 and 1,000,000 rows) is never part of the test suite; here the whole
command runs at 2,000 rows, one run per contender, and every contender must be present and verified.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from etl_assets.bench.data import copy_frame_csv, frame_digest, make_frame, recreate_table, table_checksum

# Every contender the issue names, as (group, name prefix, frame): the smoke run must have each, verified.
REQUIRED = [
    ("load", "polars write_database(adbc)", "polars"),
    ("load", "COPY csv stream", "polars"),
    ("load", "pandas to_sql (default)", "pandas"),
    ("load", "pandas to_sql (multi)", "pandas"),
    ("load", "polars write_database(sqlalchemy)", "polars"),
    ("load", "seed executemany upsert", "polars"),
    *[
        ("load", mode, kind)
        for kind in ("pandas", "polars")
        for mode in (
            "insert",
            "upsert (into empty)",
            "upsert (all changed)",
            "upsert (half new, half changed)",
            "truncate_insert",
            "swap",
        )
    ],
    ("extract", "COPY TO STDOUT -> frame", "polars"),
    ("extract", "pandas read_sql", "pandas"),
    ("extract", "keyset chunks", "polars"),
    ("extract", "offset chunks", "polars"),
    ("extract", "full extract read (ours)", "polars"),
    ("extract", "chunked extract read (ours", "polars"),
    ("extract", "chunked extract+load upsert (ours)", "polars"),
    ("e2e", "full truncate_insert frame path (ours)", "-"),
    ("e2e", "full truncate_insert fast path", "-"),
    ("e2e", "asset materialize frame path (ours)", "-"),
    ("e2e", "asset materialize fast path (ours)", "-"),
    ("e2e", "dlt sql_database -> postgres", "-"),
    ("incremental", "incremental", "-"),
    ("incremental", "incremental 200 changed rows, whole asset run", "-"),
]


def test_bench_quick_runs_and_verifies_every_contender(etl_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("etl-assets")), "bench", "--quick", "--out", str(out)],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads((out / "bench.json").read_text())
    results = report["results"]
    problems = [
        f"{r['group']} {r['name']} [{r['frame']}]: {r['gap'] or r['error'] or 'not verified'} "
        f"{r['observed']} != {r['expected']}"
        for r in results
        if not r["verified"]
    ]
    assert not problems, "\n".join(problems) + "\n" + proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    for group, prefix, frame in REQUIRED:
        assert any(
            r["group"] == group and r["name"].startswith(prefix) and r["frame"] == frame for r in results
        ), f"missing contender {group} {prefix} [{frame}]"
    assert all(r["rows"] == 2_000 and r["seconds"] > 0 and r["peak_mb"] is not None for r in results)
    assert report["machine"]["cpus"] == os.cpu_count()
    assert {r["target"] for r in report["ratios"]} >= {
        "upsert >= 0.5x ceiling",
        "upsert >= 5x pandas to_sql",
        "end to end faster than dlt, less memory",
    }
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the command cleans up after itself
    with psycopg.connect(etl_env["ETL_WAREHOUSE_DSN"]) as conn:
        left = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'etl\\_bench%'").fetchall()
    assert left == []


def test_checksums_catch_a_wrong_answer(warehouse_conn: psycopg.Connection, fresh_schema: str) -> None:
    frame = make_frame(1, 301)
    table = sql.Identifier(fresh_schema, "t")
    recreate_table(warehouse_conn, table)
    copy_frame_csv(warehouse_conn, table, frame)
    good = table_checksum(warehouse_conn, table)
    assert good.rows == 300

    # the same rows read back through COPY as text give the same frame digest as the frame itself
    with (
        warehouse_conn.cursor() as cur,
        cur.copy(sql.SQL("COPY {} TO STDOUT (FORMAT csv, HEADER)").format(table)) as copy,
    ):
        data = b"".join(bytes(block) for block in copy)
    import io

    import polars as pl

    warehouse_conn.execute("SET timezone = 'UTC'")
    assert frame_digest(pl.read_csv(io.BytesIO(data), try_parse_dates=True)) == frame_digest(frame)
    assert frame_digest(frame.slice(0, 299)) != frame_digest(frame)

    # one changed value, a NULL for an empty string, a lost row: each changes the table checksum
    (score,) = warehouse_conn.execute(sql.SQL("SELECT score FROM {} WHERE id = 7").format(table)).fetchone()
    warehouse_conn.execute(sql.SQL("UPDATE {} SET score = %s WHERE id = 7").format(table), (score + 1e-9,))
    assert table_checksum(warehouse_conn, table) != good
    warehouse_conn.execute(sql.SQL("UPDATE {} SET score = %s WHERE id = 7").format(table), (score,))
    assert table_checksum(warehouse_conn, table) == good
    warehouse_conn.execute(sql.SQL("UPDATE {} SET note = '' WHERE id = 10").format(table))
    assert table_checksum(warehouse_conn, table) != good
    warehouse_conn.execute(sql.SQL("UPDATE {} SET note = NULL WHERE id = 10").format(table))
    assert table_checksum(warehouse_conn, table) == good
    warehouse_conn.execute(sql.SQL("DELETE FROM {} WHERE id = 300").format(table))
    assert table_checksum(warehouse_conn, table).rows == 299


@pytest.mark.drill
@pytest.mark.timeout(900)
def test_scale_bench_runs_every_way_and_verifies(pg_admin_dsn: str, tmp_path: Path) -> None:
    """`bench --only scale`, small: 3 tables of 2,000 rows in one process, with the multiprocess
    executor and (where RabbitMQ answers) on two Celery workers; every way verified by checksum, and
    the scratch databases dropped."""
    from etl_assets.bench import scale

    lines: list[str] = []
    assert scale.run_scale_bench(pg_admin_dsn, tmp_path, tables=3, rows=2000, log=lines.append) == 0, lines
    report = json.loads((tmp_path / "scale.json").read_text())
    ways = [r["way"] for r in report["results"]]
    assert ways[:2] == ["in_process", "multiprocess"]
    assert ("celery" in ways) == scale._broker_answers()
    assert all(r["verified"] and r["exit"] == 0 and r["peak_mb"] > 50 for r in report["results"]), report
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        assert not conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'etl_bench_scale_%'"
                                ).fetchall()  # scratch databases dropped


@pytest.mark.drill
def test_process_bench_times_every_tool_and_verifies(pg_admin_dsn: str, tmp_path: Path) -> None:
    """`bench --only process`, small: 3,000 rows, one run per job; every tool's every job present
    and verified by checksum (Sling and dlt come with the test extras), the goals computed from the
    run's own figures, and the scratch databases dropped."""
    from etl_assets.bench import process

    lines: list[str] = []
    code = process.run_process_bench(pg_admin_dsn, tmp_path, rows=3000, repeat=1, log=lines.append)
    report = json.loads((tmp_path / "process.json").read_text())
    got = {(r["job"], r["tool"]): r for r in report["results"]}
    expected = {("floor", "floor"), ("full", "copy-pipe")} | {
        (job, tool) for job in ("full", "incremental_unchanged", "incremental_1pct")
        for tool in ("etl-assets", "sling", "dlt")}
    assert set(got) == expected, lines
    assert all(r["verified"] and r["gap"] is None and r["seconds"] > 0 and r["peak_mb"] > 5
               for r in got.values()), lines
    assert code == 0
    # peak memory is the job's own, not this test process's (100+ MB): two psql processes stay small
    assert got[("full", "copy-pipe")]["peak_mb"] < 50 < got[("full", "etl-assets")]["peak_mb"]
    assert report["ratios"][0]["goal"].startswith("incremental, nothing changed")
    assert all(g["value"] is not None and g["limit"] is not None for g in report["ratios"])
    table = process.format_process_table(report)
    assert "| full load |" in table and "etl-assets vs Sling" in table
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        assert not conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'etl_bench_proc_%'"
                                ).fetchall()


def test_process_timing_reports_the_child_peak_memory_and_exit(tmp_path: Path) -> None:
    """`timed` measures the child, not this process: a child that allocates ~200 MB reports at least
    that, one that exits 3 reports 3, and its output is kept."""
    from etl_assets.bench.process import timed

    big = timed([sys.executable, "-c", "b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]);"
                 "print('done')"], dict(os.environ))
    small = timed([sys.executable, "-c", "import sys; sys.exit(3)"], dict(os.environ))
    assert big.exit == 0 and big.peak_mb >= 200 and "done" in big.output
    assert small.exit == 3 and small.peak_mb < big.peak_mb - 150


@pytest.mark.timeout(600)
def test_cdc_bench_applies_verifies_and_compares_the_trigger_designs(pg_admin_dsn: str) -> None:
    """`bench --only cdc`, small: the mixed changes are applied and verified by checksum, the
    trigger comparison logs every change of every statement under both designs, and the scratch
    databases are dropped."""
    from etl_assets.bench import cdc

    lines: list[str] = []
    assert cdc.run_cdc_bench(pg_admin_dsn, 2000, 1000, 1, log=lines.append) == 0, lines
    run = json.loads(lines[0])
    assert run["verified"] and run["changes"] == 1100 and run["applied"] == {
        "insert": 400, "update": 500, "delete": 200
    }
    lines.clear()
    assert cdc.run_cdc_bench(pg_admin_dsn, 5000, 0, 1, triggers=True, log=lines.append) == 0, lines
    costs = json.loads(lines[0])
    # insert 5,000 + update 5,000 + 2,000 single-row updates + key move 2 x 5,000 + delete 5,000
    assert costs["statement"]["log_entries"] == 27000
    assert costs["row"]["log_entries"] == 22000  # the row trigger logs a key move as one entry
    assert set(costs["statement_ratio"]) == {"insert_select", "update_all", "oltp_2000", "update_keys",
                                             "delete_all"}
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        left = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'etl_bench_cdc_%'").fetchall()
    assert not left  # scratch databases dropped
