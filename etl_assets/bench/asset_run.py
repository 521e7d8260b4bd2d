"""Incremental cost of the whole asset run: extract, checks and profile, not only the extract.

The companion of :mod:`etl_assets.bench.incremental` (which times ``run_extract`` alone). Here the
timed part is one Dagster materialization of the extract asset together with its six data-quality
checks (not_null, unique, range, accepted_values, not_in_future, pattern), as an automated run
executes it: the checks look at the run's new rows (``etl_assets.quality.scope``), the column
profile follows its cadence (``ETL_PROFILE_EVERY_HOURS``, default 24 h, so the timed runs reuse the
profile of the untimed initial load). The same 1,000 changed rows are picked up from each table
size; the target is a ratio of at most 1.5 between the largest and the smallest size. Verified: the
target equals the source after the change (count and checksum) and every check passed.
"""

from __future__ import annotations

import importlib.util

import psycopg
from psycopg import sql

from etl_assets.bench.data import table_checksum_dsn
from etl_assets.bench.harness import BenchContext, Case, Contender
from etl_assets.bench.incremental import CHANGED_ROWS

VARIANT = "whole asset run (extract + 6 checks + profile cadence)"
RULES = [
    {"name": "ids_present", "kind": "not_null", "column": "id", "severity": "error"},
    {"name": "ids_unique", "kind": "unique", "column": "id", "severity": "error"},
    {"name": "score_positive", "kind": "range", "column": "score", "min": 0, "severity": "warning"},
    {"name": "known_status", "kind": "accepted_values", "column": "status",
     "values": ["new", "paid", "shipped", "delivered", "returned"], "severity": "warning"},
    {"name": "created_not_future", "kind": "not_in_future", "column": "created_at", "severity": "warning"},
    {"name": "note_shape", "kind": "pattern", "column": "note", "regex": "^note ", "severity": "warning"},
]


def asset_pickup(ctx: BenchContext) -> Case:
    import dagster as dg

    from etl_assets.db import PostgresResource
    from etl_assets.extract.assets import extract_asset
    from etl_assets.extract.state import clear_state
    from etl_assets.io.tables import TableRef
    from etl_assets.pipeline_config import TableSpec
    from etl_assets.quality.checks import RuleSet, build_asset_checks
    from etl_assets.quality.rules import parse_rules

    n = ctx.rows
    changed = int(ctx.params["changed"])
    src_name, tgt_name = f"asset_src_{n}", f"ours_asset_{n}"
    src_ident = sql.Identifier(ctx.schema, src_name)
    tgt_ident = sql.Identifier(ctx.schema, tgt_name)
    spec = TableSpec(
        source=TableRef(ctx.schema, src_name), extract="incremental", load="upsert",
        target=TableRef(ctx.schema, tgt_name), primary_key=("id",), cursor="updated_at",
    )
    key = dg.AssetKey(spec.asset_key_path)
    asset = extract_asset(spec, "bench")
    checks = build_asset_checks(RuleSet(key, tuple(parse_rules(src_name, RULES)), spec.target, ("id",)))
    resources = {
        "source": PostgresResource(dsn=ctx.source_dsn, role="source"),
        "warehouse": PostgresResource(dsn=ctx.warehouse_dsn),
    }
    instance = dg.DagsterInstance.ephemeral()

    with psycopg.connect(ctx.source_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(src_ident))
        conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
            src_ident, sql.Identifier(ctx.schema, ctx.params["source"])))
        conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM {}").format(
            src_ident, sql.Identifier(ctx.schema, ctx.params["source"])))
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(src_ident))
    with psycopg.connect(ctx.warehouse_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(tgt_ident))
        if conn.execute("SELECT to_regclass('etl.state')").fetchone()[0] is not None:
            clear_state(conn, spec.target)
        if conn.execute("SELECT to_regclass('etl.quality_cadence')").fetchone()[0] is not None:
            conn.execute("DELETE FROM etl.quality_cadence WHERE target = %s", (str(spec.target),))

    def materialize() -> dg.ExecuteInProcessResult:
        result = dg.materialize([asset, checks], resources=resources, instance=instance, raise_on_error=False)
        failed = [e.check_name for e in result.get_asset_check_evaluations() if not e.passed]
        if not result.success or failed:
            raise RuntimeError(f"asset run failed (checks failing: {failed})")
        return result

    materialize()  # the initial load (full profile, cursor index), untimed
    with psycopg.connect(ctx.warehouse_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(tgt_ident))
    step = max(1, n // changed)

    def prepare() -> None:
        with psycopg.connect(ctx.source_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL(
                "UPDATE {} SET score = score + 1, updated_at = clock_timestamp() "
                "WHERE id % {} = 0 AND id <= {}"
            ).format(src_ident, sql.Literal(step), sql.Literal(step * changed)))

    def close() -> None:
        with psycopg.connect(ctx.source_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(src_ident))
        with psycopg.connect(ctx.warehouse_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(tgt_ident))

    return Case(
        run=materialize,
        prepare=prepare,
        close=close,
        check=lambda _: table_checksum_dsn(ctx.warehouse_dsn, tgt_ident),
        expect=lambda: table_checksum_dsn(ctx.source_dsn, src_ident),
        note=f"{changed:,} rows changed before each run; dagster materialize of the extract asset and "
        f"{len(RULES)} checks on its new rows; profile on its cadence",
    )


def contenders(plan) -> list[Contender]:
    have = importlib.util.find_spec("etl_assets.quality.scope") is not None
    out = []
    for n in plan.sizes:
        changed = min(CHANGED_ROWS, max(1, n // 10))
        out.append(
            Contender(
                name=f"incremental {changed:,} changed rows, {VARIANT}",
                group="incremental",
                rows=n,
                func=f"{__name__}:asset_pickup",
                frame="-",
                role="ours",
                params={"source": f"src_{n}", "changed": changed},
                repeat=max(plan.repeat, 5) if not plan.quick else 1,
                gap=None if have else "etl_assets.quality.scope is not built yet",
                tags={"op": "incremental", "variant": VARIANT, "changed": changed},
            )
        )
    return out
