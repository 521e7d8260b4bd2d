"""CDC benchmark: changes applied per second for a batch of mixed changes; the trigger's cost.

    python -m etl_assets.bench.cdc [--changes 100000] [--rows 100000] [--repeat 3]
    python -m etl_assets.bench.cdc --triggers [--rows 200000] [--repeat 3]
    etl-assets bench --only cdc [--rows 100000] [--repeat 3] [--quick]   (both: N changes, 2N-row writes)

Creates two scratch databases on the server of ``ETL_SOURCE_DSN`` (the embedded server when unset),
a source table of ``--rows`` rows with capture installed, takes the snapshot, then makes
``--changes`` log entries (30 % inserts, 50 % updates, 10 % key-changing updates, 10 % deletes) and
times one CDC run applying them all. The source statements are also timed on an identical table
without capture, which gives the trigger's overhead on writers: for set-based bulk statements and
for 2,000 single-row updates in their own transactions (how applications usually write). Every
run is verified: row count and an md5 over every column must match between source and target.
Prints one JSON line per repetition and a summary (medians).

``--triggers`` measures the capture designs side by side on the writers' side only: a
``--rows``-row INSERT … SELECT, UPDATE of every row, UPDATE of every key and DELETE, and 2,000
single-row updates in their own transactions, on a table without capture, with the row-level
trigger of earlier versions and with the statement-level triggers (transition tables) used now;
each statement's time is reported with its ratio to the table without capture.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import psycopg
from psycopg import sql

from etl_assets.bench.scratch import create_database, drop_database
from etl_assets.cdc import capture, sync
from etl_assets.environment import ensure_environment
from etl_assets.io.tables import TableRef
from etl_assets.pipeline_config import TableSpec
from etl_assets.settings import with_database

DDL = """CREATE TABLE {t} (id bigint PRIMARY KEY, name text, amount numeric(12,2), status text,
                           created_at timestamptz, updated_at timestamptz)"""
FILL = """INSERT INTO {t} SELECT g, 'name ' || g, mod(g, 1000) + 0.25, 'new',
                 timestamptz '2025-01-01' + g * interval '1 second', timestamptz '2025-01-01'
            FROM generate_series(1, %s) g"""


def _changes(conn: psycopg.Connection, t: TableRef, rows: int, changes: int) -> float:
    """Make exactly ``changes`` row changes in 10 transactions; returns the seconds they took."""
    n_ins, n_upd, n_key = changes * 3 // 10, changes * 5 // 10, changes // 10
    n_del = changes - n_ins - n_upd - n_key
    if n_upd + n_key + n_del > rows:
        raise SystemExit(f"--rows must be at least {n_upd + n_key + n_del} for {changes} changes")
    steps = 10
    started = time.perf_counter()
    for i in range(steps):
        with conn.transaction():

            def part(n: int, i: int = i) -> tuple[int, int]:
                return n * i // steps, n * (i + 1) // steps

            lo, hi = part(n_ins)
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} SELECT 10000000 + g, 'ins', 1, 'new', now(), now() "
                    "FROM generate_series(%s::bigint, %s::bigint) g"
                ).format(t.ident),
                (lo + 1, hi),
            )
            lo, hi = part(n_upd)
            conn.execute(
                sql.SQL(
                    "UPDATE {} SET amount = amount + 1, status = 'paid', updated_at = now() "
                    "WHERE id > %s AND id <= %s"
                ).format(t.ident),
                (lo, hi),
            )
            lo, hi = part(n_key)
            conn.execute(
                sql.SQL("UPDATE {} SET id = id + 20000000 WHERE id > %s AND id <= %s").format(t.ident),
                (n_upd + lo, n_upd + hi),
            )
            lo, hi = part(n_del)
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE id > %s AND id <= %s").format(t.ident),
                (n_upd + n_key + lo, n_upd + n_key + hi),
            )
    return time.perf_counter() - started


def _oltp(conn: psycopg.Connection, t: TableRef, n: int) -> float:
    """``n`` single-row updates, each its own transaction (how applications write); seconds taken."""
    statement = sql.SQL("UPDATE {} SET status = 'oltp', updated_at = now() WHERE id = %s").format(t.ident)
    started = time.perf_counter()
    for i in range(n):
        conn.execute(statement, (n + i,))
    return time.perf_counter() - started


def _digest(conn: psycopg.Connection, t: TableRef) -> tuple[int, str]:
    conn.execute("SET TimeZone = 'UTC'")
    row = conn.execute(
        sql.SQL(
            "SELECT count(*), md5(coalesce(string_agg(x::text, ',' ORDER BY x.id), '')) FROM {} x"
        ).format(t.ident)
    ).fetchone()
    return int(row[0]), row[1]


def run_once(source_dsn: str, warehouse_dsn: str, rows: int, changes: int) -> dict[str, object]:
    src_ref, plain_ref, target = (
        TableRef("bench", "items"),
        TableRef("bench", "plain"),
        TableRef("bench", "items"),
    )
    with (
        psycopg.connect(source_dsn, autocommit=True) as s,
        psycopg.connect(warehouse_dsn, autocommit=True) as w,
    ):
        s.execute("DROP SCHEMA IF EXISTS bench CASCADE")
        s.execute("CREATE SCHEMA bench")
        w.execute("DROP SCHEMA IF EXISTS bench CASCADE")
        if w.execute("SELECT to_regclass('etl.state')").fetchone()[0] is not None:
            w.execute("DELETE FROM etl.state WHERE target = %s", (str(target),))
        for ref in (src_ref, plain_ref):
            s.execute(sql.SQL(DDL).format(t=ref.ident))
            s.execute(sql.SQL(FILL).format(t=ref.ident), (rows,))
        capture.install(s, src_ref)
        spec = TableSpec(source=src_ref, extract="cdc", load="upsert", target=target, primary_key=("id",))
        connectors = (
            sync.dsn_connector(source_dsn, "source", "S"),
            sync.dsn_connector(warehouse_dsn, "warehouse", "W"),
        )
        snap = sync.sync_table(spec, *connectors, wait=30, prune_after=False)
        plain_seconds = _changes(s, plain_ref, rows, changes)
        captured_seconds = _changes(s, src_ref, rows, changes)
        report = sync.sync_table(spec, *connectors, wait=30, prune_after=False)
        same = _digest(s, src_ref) == _digest(w, target)
        oltp_plain = _oltp(s, plain_ref, 2000)  # after the measured apply: not part of its changes
        oltp_captured = _oltp(s, src_ref, 2000)
        capture.uninstall(s, src_ref)
        s.execute("DROP SCHEMA bench CASCADE")
    return {
        "rows": rows,
        "changes": report.changes,
        "applied": report.applied,
        "apply_seconds": round(report.seconds, 3),
        "changes_per_second": round(report.changes / report.seconds),
        "snapshot_seconds": round(snap.seconds, 3),
        "source_writes_plain_seconds": round(plain_seconds, 3),
        "source_writes_captured_seconds": round(captured_seconds, 3),
        "trigger_overhead": round(captured_seconds / plain_seconds, 2),
        "oltp_2000_single_row_updates_plain_seconds": round(oltp_plain, 3),
        "oltp_2000_single_row_updates_captured_seconds": round(oltp_captured, 3),
        "oltp_trigger_overhead": round(oltp_captured / oltp_plain, 2),
        "verified": same,
    }


TRIGGER_STATEMENTS = (
    ("insert_select", "INSERT INTO {t} SELECT g, 'name ' || g, mod(g, 1000) + 0.25, 'new', "
     "timestamptz '2025-01-01' + g * interval '1 second', timestamptz '2025-01-01' "
     "FROM generate_series(1, %(rows)s) g"),
    ("update_all", "UPDATE {t} SET amount = amount + 1, status = 'paid', updated_at = now()"),
    ("update_keys", "UPDATE {t} SET id = id + 10000000"),
    ("delete_all", "DELETE FROM {t}"),
)


def trigger_costs(dsn: str, rows: int) -> dict[str, object]:
    """Seconds per set-based statement and for 2,000 single-row transactions, per capture design."""
    result: dict[str, object] = {"rows": rows}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for design in ("none", "row", "statement"):
            conn.execute("DROP SCHEMA IF EXISTS bench_trg CASCADE")
            conn.execute("CREATE SCHEMA bench_trg")
            ref = TableRef("bench_trg", "items")
            conn.execute(sql.SQL(DDL).format(t=ref.ident))
            if design != "none":
                capture.install(conn, ref, row_level=design == "row")
            conn.execute("CHECKPOINT")
            timings: dict[str, float] = {}
            for name, text in TRIGGER_STATEMENTS:
                if name == "update_keys":  # the single-row transactions while the keys are 1..rows
                    timings["oltp_2000"] = _oltp(conn, ref, 2000)
                started = time.perf_counter()
                conn.execute(sql.SQL(text).format(t=ref.ident), {"rows": rows})
                timings[name] = time.perf_counter() - started
            if design != "none":
                cap = capture.get_capture(conn, ref)
                logged = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(cap.log_ident)).fetchone()[0]
                timings["log_entries"] = int(logged)
                capture.uninstall(conn, ref)
            result[design] = {k: round(v, 3) if isinstance(v, float) else v for k, v in timings.items()}
        conn.execute("DROP SCHEMA bench_trg CASCADE")
    for design in ("row", "statement"):
        result[f"{design}_ratio"] = {
            k: round(result[design][k] / result["none"][k], 2) for k in result["none"]  # type: ignore[index]
        }
    return result


def run_cdc_bench(admin: str, rows: int, changes: int, repeat: int, *, triggers: bool = False,
                  log=print) -> int:
    """The measurement on the server of ``admin`` (a DSN allowed to create databases), in two scratch
    databases dropped afterwards; exit status 0 when every run was verified."""
    names = ("etl_bench_cdc_source", "etl_bench_cdc_warehouse")
    for name in names:
        create_database(admin, name)
    try:
        if triggers:
            return _trigger_main(with_database(admin, names[0]), rows, repeat, log)
        results = []
        for _ in range(repeat):
            result = run_once(with_database(admin, names[0]), with_database(admin, names[1]), rows, changes)
            log(json.dumps(result))
            results.append(result)
    finally:
        for name in names:
            drop_database(admin, name)
    log(
        json.dumps(
            {
                "summary": "median",
                "changes": changes,
                "changes_per_second": statistics.median(r["changes_per_second"] for r in results),
                "apply_seconds": statistics.median(r["apply_seconds"] for r in results),
                "trigger_overhead": statistics.median(r["trigger_overhead"] for r in results),
                "oltp_trigger_overhead": statistics.median(r["oltp_trigger_overhead"] for r in results),
                "all_verified": all(r["verified"] for r in results),
            }
        )
    )
    return 0 if all(r["verified"] for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m etl_assets.bench.cdc", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--triggers", action="store_true", help="compare the capture trigger designs")
    args = parser.parse_args(argv)
    env = ensure_environment(seed_demo=False)
    admin = with_database(env.source_dsn, "postgres")
    return run_cdc_bench(admin, args.rows, args.changes, args.repeat, triggers=args.triggers,
                         log=lambda line: print(line, flush=True))


def _trigger_main(dsn: str, rows: int, repeat: int, log=print) -> int:
    results = []
    for _ in range(repeat):
        result = trigger_costs(dsn, rows)
        log(json.dumps(result))
        results.append(result)
    summary: dict[str, object] = {"summary": "median", "rows": rows}
    for design in ("row_ratio", "statement_ratio"):
        keys = results[0][design].keys()  # type: ignore[union-attr]
        summary[design] = {k: statistics.median(r[design][k] for r in results) for k in keys}  # type: ignore[index]
    log(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
