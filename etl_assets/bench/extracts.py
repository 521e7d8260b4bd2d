"""Extract throughput and chunked-extract memory, as the extracts issue reports them.

    python -m etl_assets.bench.extracts                  # 1,000,000 rows, every mode, both paths
    python -m etl_assets.bench.extracts --rows 100000 --rss 1000000,5000000

* Throughput: ``run_extract`` of a 1,000,000-row, 8-column source table (primary key, an index on
  the cursor) into an empty warehouse target, for each declared mode on the frame path and on the
  COPY-to-COPY fast path: seconds and rows per second, with the target's row count verified.
* Memory: a chunked extract (``load: upsert``, 50,000-row chunks, frame path) in a fresh child
  process per table size, reporting the child's peak RSS (``ru_maxrss``): flat memory means the
  5,000,000-row figure is close to the 1,000,000-row one.

Reusable: :func:`measure_modes` and :func:`measure_chunked_rss` return plain dicts (the benchmarks
command can call them); the source table is rebuilt by :func:`make_source`.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import subprocess
import sys
import time
from typing import Any

import psycopg
from psycopg import sql

SCHEMA = "bench_extract"
TABLE = "facts"
MODES: tuple[tuple[str, str], ...] = (
    ("full", "truncate_insert"),
    ("full", "swap"),
    ("full", "insert"),
    ("full", "upsert"),
    ("incremental", "upsert"),
    ("chunked", "upsert"),
    ("chunked", "insert"),
    ("chunked", "truncate_insert"),
)


def make_source(source_dsn: str, rows: int) -> None:
    """(Re)create ``bench_extract.facts`` with ``rows`` rows of 8 typical columns."""
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {s} CASCADE; CREATE SCHEMA {s}").format(
            s=sql.Identifier(SCHEMA)))
        conn.execute(sql.SQL(
            """CREATE TABLE {t} (id bigint PRIMARY KEY, user_id bigint NOT NULL, category_id integer,
                   amount numeric(12,2), status text, note text, created_at timestamptz NOT NULL,
                   updated_at timestamptz NOT NULL)"""
        ).format(t=sql.Identifier(SCHEMA, TABLE)))
        conn.execute(sql.SQL(
            """INSERT INTO {t} SELECT g, g % 100000, g % 40, round((g % 100000) / 7.0, 2),
                   (ARRAY['pending','paid','shipped','cancelled'])[1 + g % 4],
                   CASE WHEN g % 10 = 0 THEN NULL ELSE 'note ' || md5(g::text) END,
                   timestamptz '2024-01-01' + g * interval '1 second',
                   timestamptz '2024-01-01' + g * interval '1 second' + interval '1 hour'
               FROM generate_series(1, {n}) g"""
        ).format(t=sql.Identifier(SCHEMA, TABLE), n=sql.Literal(rows)))
        conn.execute(sql.SQL("CREATE INDEX ON {} (updated_at)").format(sql.Identifier(SCHEMA, TABLE)))
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(SCHEMA, TABLE)))


def _spec(extract: str, load: str, fast: bool, chunk_size: int = 50_000):
    from etl_assets.pipeline_config import parse_pipelines

    cursor = "    cursor: updated_at\n" if extract == "incremental" else ""
    text = (f"tables:\n  - name: {SCHEMA}.{TABLE}\n    extract: {extract}\n    load: {load}\n"
            f"    primary_key: [id]\n    chunk_size: {chunk_size}\n    fast_path: {str(fast).lower()}\n"
            f"    target: {SCHEMA}.t_{extract}_{load}_{'copy' if fast else 'frame'}\n" + cursor)
    (spec,) = parse_pipelines(text, "bench").tables
    return spec


def _clean(warehouse_dsn: str, spec) -> None:
    from etl_assets.extract.state import clear_state
    from etl_assets.io.swap import previous_table

    with psycopg.connect(warehouse_dsn, autocommit=True) as conn:
        for ref in (spec.target, previous_table(spec.target)):
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(ref.ident))
        if conn.execute("SELECT to_regclass('etl.state')").fetchone()[0] is not None:
            clear_state(conn, spec.target)


def extract_once(source_dsn: str, warehouse_dsn: str, spec) -> dict[str, Any]:
    from etl_assets.db import connect
    from etl_assets.extract.runner import run_extract

    _clean(warehouse_dsn, spec)
    started = time.perf_counter()
    source, warehouse = functools.partial(connect, source_dsn), functools.partial(connect, warehouse_dsn)
    report = run_extract(spec, source, warehouse)
    seconds = time.perf_counter() - started
    with psycopg.connect(warehouse_dsn) as conn:
        rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(spec.target.ident)).fetchone()[0]
    return {"extract": spec.extract, "load": spec.load, "path": "copy" if spec.fast_path else "frame",
            "rows": report.rows_read, "target_rows": rows, "seconds": round(seconds, 2),
            "rows_per_second": round(report.rows_read / seconds)}


def measure_modes(source_dsn: str, warehouse_dsn: str, modes=MODES,
                  paths=(False, True)) -> list[dict[str, Any]]:
    """One extract+load per mode and path into an empty target (the source must exist)."""
    results = []
    for fast in paths:
        for extract, load in modes:
            result = extract_once(source_dsn, warehouse_dsn, _spec(extract, load, fast))
            print(json.dumps(result), flush=True)
            results.append(result)
            _clean(warehouse_dsn, _spec(extract, load, fast))
    return results


def _child(source_dsn: str, warehouse_dsn: str) -> None:
    """Child process: one chunked upsert extract, then its peak RSS as JSON on stdout."""
    spec = _spec("chunked", "upsert", False)
    result = extract_once(source_dsn, warehouse_dsn, spec)
    _clean(warehouse_dsn, spec)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result), flush=True)


def measure_chunked_rss(source_dsn: str, warehouse_dsn: str,
                        sizes=(1_000_000, 5_000_000)) -> list[dict[str, Any]]:
    """Peak RSS of a chunked extract per source size, each in a fresh process."""
    results = []
    for rows in sizes:
        make_source(source_dsn, rows)
        out = subprocess.run(
            [sys.executable, "-m", "etl_assets.bench.extracts", "--child", source_dsn, warehouse_dsn],
            check=True, capture_output=True, text=True,
        ).stdout.strip().splitlines()[-1]
        result = json.loads(out)
        print(json.dumps(result), flush=True)
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m etl_assets.bench.extracts",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="source rows for the throughput runs")
    parser.add_argument("--rss", default="1000000,5000000",
                        help="table sizes for the memory runs ('' to skip)")
    parser.add_argument("--skip-modes", action="store_true", help="only the memory runs")
    parser.add_argument("--child", nargs=2, metavar=("SOURCE", "WAREHOUSE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0
    from etl_assets.environment import ensure_environment

    env = ensure_environment(seed_demo=False)
    summary: dict[str, Any] = {}
    if not args.skip_modes:
        make_source(env.source_dsn, args.rows)
        summary["modes"] = measure_modes(env.source_dsn, env.warehouse_dsn)
    if args.rss:
        sizes = [int(x) for x in args.rss.split(",") if x]
        summary["chunked_rss"] = measure_chunked_rss(env.source_dsn, env.warehouse_dsn, sizes)
    with psycopg.connect(env.source_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
