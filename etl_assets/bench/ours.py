"""Our contenders: the project's own code, called exactly as the IO manager and the extract assets call it.

* loads: :func:`etl_assets.io.writer.write_frame` in every mode, pandas and polars frames, upsert
  three ways (into an empty table, every row changed, half new and half changed);
* extracts: the read side of our full extract (``copy_query_to_frame``) and of our chunked extract
  (``iter_keyset_chunks``), and the chunked extract with its per-chunk commit and checkpoint
  (``run_extract``, ``extract: chunked, load: upsert``), whose peak memory must stay flat;
* end to end: ``run_extract`` of ``extract: full, load: truncate_insert`` through a frame, and the
  same declaration with ``fast_path`` (``COPY … TO STDOUT`` streamed into ``COPY … FROM STDIN``).

What runs here is the function each asset body calls; Dagster's own per-run overhead (run and
event storage) is not part of these numbers and is the same for any loader run as an asset.
"""

from __future__ import annotations

import functools
import importlib.util

import psycopg
from psycopg import sql

from etl_assets.bench.data import Digest, recreate_table, table_checksum_dsn
from etl_assets.bench.harness import BenchContext, Case, Contender


def _ref(ctx: BenchContext, name: str):
    from etl_assets.io.tables import TableRef

    return TableRef(ctx.schema, name)


# ---------------------------------------------------------------------------------------------
# loads
# ---------------------------------------------------------------------------------------------


def write_mode(ctx: BenchContext) -> Case:
    """``write_frame(conn, frame, target, mode, primary_key=["id"])`` into a prepared target.

    ``before`` names the dataset the target holds before the write (``None``: an empty table).
    """
    from etl_assets.io.writer import write_frame

    kind = ctx.params["frame"]
    frame = ctx.frame(ctx.params["dataset"], kind)
    mode = ctx.params["mode"]
    target = _ref(ctx, ctx.params["target"])
    before = ctx.params.get("before")
    ident = sql.Identifier(ctx.schema, ctx.params["target"])

    def prepare() -> None:
        with psycopg.connect(ctx.warehouse_dsn, autocommit=True) as conn:
            for (leftover,) in conn.execute(  # a swap's kept previous version, staging leftovers
                "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND relkind = 'r' AND relname LIKE %s AND relname <> %s",
                (ctx.schema, "%" + ctx.params["target"] + "%", ctx.params["target"]),
            ).fetchall():
                conn.execute(
                    sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(ctx.schema, leftover))
                )
            recreate_table(conn, ident)
            if before:
                conn.execute(
                    sql.SQL("INSERT INTO {} SELECT * FROM {}").format(
                        ident, sql.Identifier(ctx.schema, f"ref_{before}")
                    )
                )
                conn.execute(sql.SQL("VACUUM ANALYZE {}").format(ident))

    def run() -> None:
        with psycopg.connect(ctx.warehouse_dsn) as conn:
            write_frame(conn, frame, target, mode, primary_key=["id"])

    return Case(
        run=run,
        prepare=prepare,
        check=lambda _: table_checksum_dsn(ctx.warehouse_dsn, ident),
        note=f"write_frame mode={mode}" + (f", target holds {before} before" if before else ""),
    )


# ---------------------------------------------------------------------------------------------
# extracts
# ---------------------------------------------------------------------------------------------


def _spec(ctx: BenchContext, extract: str, load: str, target: str, *, fast_path: bool = False, **more):
    from etl_assets.io.tables import TableRef
    from etl_assets.pipeline_config import TableSpec

    return TableSpec(
        source=TableRef(ctx.schema, ctx.params["source"]),
        extract=extract,
        load=load,
        target=TableRef(ctx.schema, target),
        primary_key=("id",),
        fast_path=fast_path,
        **more,
    )


def _connector(dsn: str):
    from etl_assets.db import connect

    return functools.partial(connect, dsn)


def full_read(ctx: BenchContext) -> Case:
    """The read of ``extract: full``: one snapshot, ``COPY (SELECT …) TO STDOUT`` into a polars frame."""
    from etl_assets.extract.source import copy_query_to_frame, describe, prepare_session, select_list

    spec = _spec(ctx, "full", "truncate_insert", "unused")

    def run():
        with psycopg.connect(ctx.source_dsn, autocommit=True) as src:
            prepare_session(src)
            table = describe(src, spec)
            query = sql.SQL("SELECT {} FROM {}").format(select_list(table), table.ref.ident)
            return copy_query_to_frame(src, query, (), table.names)

    def check(frame):
        digest = Digest()
        digest.add(frame)
        return digest.observed()

    return Case(run=run, check=check, note="text columns; the warehouse COPY types them")


def chunked_read(ctx: BenchContext) -> Case:
    """The read of ``extract: chunked``: keyset chunks (``iter_keyset_chunks``), each digested and dropped."""
    from etl_assets.extract.source import describe, iter_keyset_chunks, prepare_session

    chunk = int(ctx.params["chunk"])
    spec = _spec(ctx, "chunked", "upsert", "unused", chunk_size=chunk)

    def run():
        digest = Digest()
        with psycopg.connect(ctx.source_dsn, autocommit=True) as src:
            prepare_session(src)
            table = describe(src, spec)
            for frame in iter_keyset_chunks(src, table, ("id",), chunk):
                digest.add(frame)
        return digest.observed()

    return Case(run=run, check=lambda observed: observed, note=f"{chunk:,}-row chunks")


def extract_run(ctx: BenchContext) -> Case:
    """``run_extract`` of a declared table into an empty warehouse target (state cleared each run)."""
    from etl_assets.extract.runner import run_extract
    from etl_assets.extract.state import clear_state

    more = {"chunk_size": int(ctx.params["chunk"])} if ctx.params.get("chunk") else {}
    spec = _spec(
        ctx,
        ctx.params["extract"],
        ctx.params["load"],
        ctx.params["target"],
        fast_path=bool(ctx.params.get("fast_path")),
        **more,
    )
    ident = sql.Identifier(ctx.schema, ctx.params["target"])

    def prepare() -> None:
        with psycopg.connect(ctx.warehouse_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(ident))
            if conn.execute("SELECT to_regclass('etl.state')").fetchone()[0] is not None:
                clear_state(conn, spec.target)

    def run():
        return run_extract(spec, _connector(ctx.source_dsn), _connector(ctx.warehouse_dsn), run_id=None)

    return Case(
        run=run,
        prepare=prepare,
        check=lambda _: table_checksum_dsn(ctx.warehouse_dsn, ident),
        note=f"extract={spec.extract} load={spec.load}" + (" fast_path" if spec.fast_path else ""),
    )


def asset_materialize(ctx: BenchContext) -> Case:
    """The declared table's Dagster asset (``extract_asset``) materialized in-process with
    ``dagster.materialize`` on an ephemeral instance: the extract, the load, the column profile the
    asset attaches, and Dagster's own per-run work (events, step orchestration)."""
    import dagster as dg

    from etl_assets.db import PostgresResource
    from etl_assets.extract.assets import extract_asset
    from etl_assets.extract.state import clear_state

    spec = _spec(
        ctx,
        ctx.params["extract"],
        ctx.params["load"],
        ctx.params["target"],
        fast_path=bool(ctx.params.get("fast_path")),
    )
    asset = extract_asset(spec, "etl-assets bench")
    resources = {
        "source": PostgresResource(dsn=ctx.source_dsn, role="source", env_var="ETL_SOURCE_DSN"),
        "warehouse": PostgresResource(dsn=ctx.warehouse_dsn, role="warehouse", env_var="ETL_WAREHOUSE_DSN"),
    }
    ident = sql.Identifier(ctx.schema, ctx.params["target"])

    def prepare() -> None:
        with psycopg.connect(ctx.warehouse_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(ident))
            if conn.execute("SELECT to_regclass('etl.state')").fetchone()[0] is not None:
                clear_state(conn, spec.target)

    def run():
        result = dg.materialize([asset], resources=resources, raise_on_error=True)
        if not result.success:
            raise RuntimeError("the asset's run failed")

    return Case(
        run=run,
        prepare=prepare,
        check=lambda _: table_checksum_dsn(ctx.warehouse_dsn, ident),
        note="dagster.materialize of the extract asset, ephemeral instance",
    )


# ---------------------------------------------------------------------------------------------
# the list
# ---------------------------------------------------------------------------------------------

_LOADS = (
    # name, mode, dataset, before, expected, tags
    ("insert", "insert", "base", None, "base", {"op": "insert"}),
    ("upsert (into empty)", "upsert", "base", None, "base", {"op": "upsert", "scenario": "empty"}),
    (
        "upsert (all changed)",
        "upsert",
        "changed",
        "base",
        "changed",
        {"op": "upsert", "scenario": "all changed"},
    ),
    (
        "upsert (half new, half changed)",
        "upsert",
        "half",
        "base",
        "halfres",
        {"op": "upsert", "scenario": "half"},
    ),
    ("truncate_insert", "truncate_insert", "changed", "base", "changed", {"op": "truncate_insert"}),
    ("swap", "swap", "changed", "base", "changed", {"op": "swap"}),
)


def contenders(plan) -> list[Contender]:
    have_writer = importlib.util.find_spec("etl_assets.io.writer") is not None
    have_extract = importlib.util.find_spec("etl_assets.extract.runner") is not None
    writer_gap = None if have_writer else "etl_assets.io.writer is not built yet"
    extract_gap = None if have_extract else "etl_assets.extract is not built yet"
    mod = __name__
    out: list[Contender] = []
    for n in plan.sizes:
        for kind in ("pandas", "polars"):
            for label, mode, dataset, before, expected, tags in _LOADS:
                slug = label.split(" ")[0] + "_" + (tags.get("scenario", "") or "").replace(" ", "")
                out.append(
                    Contender(
                        name=label,
                        group="load",
                        rows=n,
                        func=f"{mod}:write_mode",
                        frame=kind,
                        role="ours",
                        params={
                            "frame": kind,
                            "dataset": f"{dataset}_{n}",
                            "mode": mode,
                            "before": f"{before}_{n}" if before else None,
                            "target": f"ours_{slug}_{kind}_{n}",
                        },
                        expected=plan.table(expected, n),
                        repeat=plan.repeat,
                        gap=writer_gap,
                        tags=dict(tags),
                    )
                )
        src = f"src_{n}"
        chunk = 500 if plan.quick else 50_000
        out.append(
            Contender(
                name="full extract read (ours)",
                group="extract",
                rows=n,
                func=f"{mod}:full_read",
                frame="polars",
                role="ours",
                params={"source": src},
                expected=plan.frame("base", n),
                repeat=plan.repeat,
                gap=extract_gap,
                tags={"op": "full"},
            )
        )
        out.append(
            Contender(
                name=f"chunked extract read (ours, keyset {chunk:,})",
                group="extract",
                rows=n,
                func=f"{mod}:chunked_read",
                frame="polars",
                role="ours",
                params={"source": src, "chunk": chunk},
                expected=plan.frame("base", n),
                repeat=plan.repeat,
                gap=extract_gap,
                tags={"op": "chunked"},
            )
        )
        out.append(
            Contender(
                name="chunked extract+load upsert (ours)",
                group="extract",
                rows=n,
                func=f"{mod}:extract_run",
                frame="polars",
                role="ours",
                params={
                    "source": src,
                    "extract": "chunked",
                    "load": "upsert",
                    "chunk": chunk,
                    "target": f"ours_chunked_{n}",
                },
                expected=plan.table("base", n),
                repeat=plan.repeat,
                gap=extract_gap,
                tags={"op": "chunked"},
            )
        )
        for fast in (False, True):
            out.append(
                Contender(
                    name="full truncate_insert "
                    + ("fast path COPY->COPY (ours)" if fast else "frame path (ours)"),
                    group="e2e",
                    rows=n,
                    func=f"{mod}:extract_run",
                    frame="-",
                    role="ours",
                    params={
                        "source": src,
                        "extract": "full",
                        "load": "truncate_insert",
                        "fast_path": fast,
                        "target": f"ours_e2e_{'fast' if fast else 'frame'}_{n}",
                    },
                    expected=plan.table("base", n),
                    repeat=plan.repeat,
                    gap=extract_gap,
                    tags={"op": "e2e", "path": "fast" if fast else "frame"},
                )
            )
        for fast in (False, True):
            out.append(
                Contender(
                    name="asset materialize " + ("fast path (ours)" if fast else "frame path (ours)"),
                    group="e2e",
                    rows=n,
                    func=f"{mod}:asset_materialize",
                    frame="-",
                    role="ours",
                    params={
                        "source": src,
                        "extract": "full",
                        "load": "truncate_insert",
                        "fast_path": fast,
                        "target": f"ours_asset_{'fast' if fast else 'frame'}_{n}",
                    },
                    expected=plan.table("base", n),
                    repeat=plan.repeat,
                    gap=extract_gap,
                    memory_warmup=True,
                    tags={"op": "e2e", "path": "fast" if fast else "frame", "via": "dagster"},
                )
            )
    return out
