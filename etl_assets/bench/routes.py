"""Measure the bulk-load routes the IO layer could take, side by side, in one process and run.

``python -m etl_assets.bench.routes [--rows N] [--repeat R]`` loads the benchmark frame
(:func:`etl_assets.bench.data.make_frame`, 8 columns plus key) into an empty table of the benchmark
shape through each route and prints the median seconds. Routes:

* ``binary``: what :func:`etl_assets.io.bulk.copy_frame` does when the frame's dtypes match the
  table's types (numpy-encoded binary COPY pieces, sent by a worker thread), from polars and pandas;
* ``csv-polars``: its fallback (polars ``write_csv`` per piece into ``COPY ... (FORMAT csv)``), and
  the same without the sending thread;
* ``csv-pyarrow``: the same with ``pyarrow.csv.write_csv`` per record batch;
* ``binary-write_row``: psycopg binary COPY fed row by row (per-row Python), on a 10 % sample scaled;
* ``adbc``: ``adbc_ingest`` (binary COPY in C++), the fastest, but on its own connection, so it
  cannot share the write's transaction with cursors, dead letters or the swap.

This is the evidence for the route the IO layer takes; the harness (``etl-assets bench``) measures
the write modes themselves.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable

import polars as pl
import psycopg
from psycopg import sql

from etl_assets.bench.data import make_frame, recreate_table

SCHEMA = "etl_bench_routes"


def _ours(conn: psycopg.Connection, frame: object, *, overlap: bool = True, route: str = "auto") -> None:
    from etl_assets.io.bulk import copy_frame
    from etl_assets.io.catalog import columns
    from etl_assets.io.tables import TableRef

    table = TableRef(SCHEMA, "t")
    copy_frame(
        conn,
        frame,
        table,
        targets={c.name: c.type for c in columns(conn, table)},
        overlap=overlap,
        route=route,
    )


def _csv_pyarrow(conn: psycopg.Connection, table: sql.Identifier, frame: pl.DataFrame) -> None:
    import pyarrow.csv as pacsv

    arrow = frame.to_arrow()
    stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
        table, sql.SQL(", ").join(map(sql.Identifier, frame.columns))
    )
    opts = pacsv.WriteOptions(include_header=False)
    with conn.cursor() as cur, cur.copy(stmt) as cp:
        for batch in arrow.to_batches(max_chunksize=100_000):
            buf = io.BytesIO()
            pacsv.write_csv(batch, buf, opts)
            cp.write(buf.getvalue())


def _binary_rows(conn: psycopg.Connection, table: sql.Identifier, frame: pl.DataFrame) -> None:
    stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
        table, sql.SQL(", ").join(map(sql.Identifier, frame.columns))
    )
    with conn.cursor() as cur, cur.copy(stmt) as cp:
        cp.set_types(
            [
                "bigint",
                "integer",
                "numeric",
                "double precision",
                "text",
                "text",
                "boolean",
                "timestamptz",
                "timestamptz",
            ]
        )
        for row in frame.iter_rows():
            cp.write_row(row)


def _adbc(dsn: str, table: str, frame: pl.DataFrame) -> None:
    import adbc_driver_postgresql.dbapi as adbc

    with adbc.connect(dsn) as aconn, aconn.cursor() as cur:
        cur.adbc_ingest(table, frame.to_arrow(), mode="append", db_schema_name=SCHEMA)
        aconn.commit()


def measure(dsn: str, rows: int, repeat: int, log: Callable[[str], None] = print) -> dict[str, float]:
    frame = make_frame(0, rows)
    sample = frame.head(max(1, rows // 10))
    out: dict[str, float] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
        routes: dict[str, tuple[Callable[[], None], float]] = {}
        ident = sql.Identifier(SCHEMA, "t")

        def in_tx(fn: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                with conn.transaction():
                    fn()

            return run

        routes["binary COPY, numpy-encoded (ours)"] = (in_tx(lambda: _ours(conn, frame)), 1.0)
        routes["binary COPY from pandas (ours)"] = (in_tx(lambda: _ours(conn, pandas_frame)), 1.0)
        routes["csv-polars (ours when types differ)"] = (in_tx(lambda: _ours(conn, frame, route="csv")), 1.0)
        routes["csv-polars, send then render"] = (
            in_tx(lambda: _ours(conn, frame, route="csv", overlap=False)),
            1.0,
        )
        routes["csv-pyarrow"] = (in_tx(lambda: _csv_pyarrow(conn, ident, frame)), 1.0)
        routes["binary write_row (x10 of 10% sample)"] = (
            in_tx(lambda: _binary_rows(conn, ident, sample)),
            rows / sample.height,
        )
        routes["adbc_ingest (own connection)"] = (lambda: _adbc(dsn, "t", frame), 1.0)
        pandas_frame = frame.to_pandas()
        for name, (fn, scale) in routes.items():
            times = []
            for _ in range(repeat):
                recreate_table(conn, ident)
                started = time.perf_counter()
                fn()
                times.append((time.perf_counter() - started) * scale)
            out[name] = statistics.median(times)
            log(f"  {name:<40} {out[name]:7.2f} s  ({rows / out[name]:,.0f} rows/s)")
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(SCHEMA)))
    return out


def main(argv: list[str] | None = None) -> int:
    from etl_assets.environment import ensure_environment

    parser = argparse.ArgumentParser(
        prog="python -m etl_assets.bench.routes", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    env = ensure_environment(seed_demo=False)
    print(f"bulk-load routes, {args.rows:,} rows x 9 columns with primary key, median of {args.repeat}:")
    measure(env.warehouse_dsn, args.rows, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
