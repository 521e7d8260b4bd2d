"""Incremental cost: the same 1,000 changed rows picked up from a small and from a big table.

An incremental extract should cost what the change costs, not what the table costs: the
high-water-mark query and the read both go through the cursor's index, and the upsert touches only
the changed rows. So the time to pick up 1,000 changed rows from 5,000,000 rows should be close to
the time from 100,000 (target: within 1.5x). Anything that scans the table (a missing index, a
``count(*)`` of the target after the write, an ANALYZE) shows up here as a ratio that grows with
the table.

Setup per size (untimed, once per contender process): a copy of the source table with the cursor
index, and an initial load into the warehouse (fast path, so the setup itself stays cheap). Then
before each run (untimed) 1,000 rows spread over the key range get a new ``score`` and
``updated_at = clock_timestamp()``; the timed part is one ``run_extract`` of the declaration
``extract: incremental, cursor: updated_at, load: upsert``. Verified: the target equals the source
as it is after the change (count and checksum over every column).
"""

from __future__ import annotations

import functools
import importlib.util

import psycopg
from psycopg import sql

from etl_assets.bench.data import table_checksum_dsn
from etl_assets.bench.harness import BenchContext, Case, Contender

CHANGED_ROWS = 1_000


def incremental_pickup(ctx: BenchContext) -> Case:
    from etl_assets.db import connect
    from etl_assets.extract.runner import run_extract
    from etl_assets.extract.state import clear_state
    from etl_assets.io.tables import TableRef
    from etl_assets.pipeline_config import TableSpec

    n = ctx.rows
    changed = int(ctx.params["changed"])
    fast = bool(ctx.params.get("fast_path"))
    src_name = f"inc_{'fast' if fast else 'frame'}_{n}"
    tgt_name = f"ours_inc_{'fast' if fast else 'frame'}_{n}"
    src_ident = sql.Identifier(ctx.schema, src_name)
    tgt_ident = sql.Identifier(ctx.schema, tgt_name)

    def spec(fast_path: bool) -> TableSpec:
        return TableSpec(
            source=TableRef(ctx.schema, src_name),
            extract="incremental",
            load="upsert",
            target=TableRef(ctx.schema, tgt_name),
            primary_key=("id",),
            cursor="updated_at",
            fast_path=fast_path,
        )

    source = functools.partial(connect, ctx.source_dsn)
    warehouse = functools.partial(connect, ctx.warehouse_dsn)
    with psycopg.connect(ctx.source_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(src_ident))
        conn.execute(
            sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
                src_ident, sql.Identifier(ctx.schema, ctx.params["source"])
            )
        )
        conn.execute(
            sql.SQL("INSERT INTO {} SELECT * FROM {}").format(
                src_ident, sql.Identifier(ctx.schema, ctx.params["source"])
            )
        )
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(src_ident))
    with psycopg.connect(ctx.warehouse_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(tgt_ident))
        if conn.execute("SELECT to_regclass('etl.state')").fetchone()[0] is not None:
            clear_state(conn, TableRef(ctx.schema, tgt_name))
    run_extract(spec(True), source, warehouse)  # the initial load, untimed
    with psycopg.connect(ctx.warehouse_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(tgt_ident))
    step = max(1, n // changed)
    measured = spec(fast)

    def prepare() -> None:
        with psycopg.connect(ctx.source_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL(
                    "UPDATE {} SET score = score + 1, updated_at = clock_timestamp() "
                    "WHERE id % {} = 0 AND id <= {}"
                ).format(src_ident, sql.Literal(step), sql.Literal(step * changed)),
            )

    def run():
        return run_extract(measured, source, warehouse)

    def close() -> None:
        with psycopg.connect(ctx.source_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(src_ident))
        with psycopg.connect(ctx.warehouse_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(tgt_ident))

    return Case(
        run=run,
        prepare=prepare,
        close=close,
        check=lambda _: table_checksum_dsn(ctx.warehouse_dsn, tgt_ident),
        expect=lambda: table_checksum_dsn(ctx.source_dsn, src_ident),
        note=f"{changed:,} rows changed before each run; extract=incremental load=upsert"
        + (" fast_path" if fast else ""),
    )


def contenders(plan) -> list[Contender]:
    have = importlib.util.find_spec("etl_assets.extract.runner") is not None
    out = []
    for n in plan.sizes:
        changed = min(CHANGED_ROWS, max(1, n // 10))
        for fast in (False, True):
            variant = f"incremental {changed:,} changed rows, " + ("fast path" if fast else "frame path")
            out.append(
                Contender(
                    name=variant,
                    group="incremental",
                    rows=n,
                    func=f"{__name__}:incremental_pickup",
                    frame="-",
                    role="ours",
                    params={"source": f"src_{n}", "changed": changed, "fast_path": fast},
                    repeat=max(plan.repeat, 5) if not plan.quick else 1,
                    gap=None if have else "etl_assets.extract is not built yet",
                    tags={
                        "op": "incremental",
                        "variant": "fast path" if fast else "frame path",
                        "changed": changed,
                    },
                )
            )
    return out
