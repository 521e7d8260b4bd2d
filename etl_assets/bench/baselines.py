"""The baselines and ceilings our contenders are compared with, each as a harness case factory.

These are deliberately the routes users reach for first (pandas ``to_sql``, polars
``write_database``, the seed's ``executemany`` upsert, ``pandas.read_sql``, OFFSET pagination) and the
fastest plain routes we know (ADBC ingest, COPY of a CSV stream, ``COPY … TO STDOUT`` into a frame),
which define the *ceiling*. None of this code is used by the project itself: the baselines are
what the project exists to beat, and several of them are patterns our conventions forbid.

Every load case writes into a table of exactly the benchmark shape (``data.ddl``, with its primary
key) created empty by ``prepare`` (untimed), so every contender pays for the same index.
"""

from __future__ import annotations

import io
from typing import Any

import psycopg
from psycopg import sql

from etl_assets.bench.data import COLUMNS, Digest, recreate_table, table_checksum_dsn
from etl_assets.bench.harness import BenchContext, Case, Observed

MULTI_CHUNK = 65_535 // len(COLUMNS) - 1  # method='multi' sends one parameter per value


def _target(ctx: BenchContext) -> sql.Identifier:
    return sql.Identifier(ctx.schema, ctx.params["target"])


def _sqlalchemy_url(dsn: str) -> str:
    from etl_assets.settings import as_url

    url = as_url(dsn)
    return "postgresql+psycopg://" + url.split("://", 1)[1]


def _empty_target_case(ctx: BenchContext, run, note: str = "") -> Case:
    target = _target(ctx)

    def prepare() -> None:
        with psycopg.connect(ctx.warehouse_dsn, autocommit=True) as conn:
            recreate_table(conn, target)

    return Case(
        run=run, prepare=prepare, check=lambda _: table_checksum_dsn(ctx.warehouse_dsn, target), note=note
    )


# ---------------------------------------------------------------------------------------------
# write ceilings
# ---------------------------------------------------------------------------------------------


def ceiling_adbc(ctx: BenchContext) -> Case:
    """polars ``write_database(engine='adbc')``: ADBC ingest (binary COPY) into the empty table."""
    import polars as pl

    kind = ctx.params["frame"]
    frame = ctx.frame(ctx.params["dataset"], kind)
    uri = _plain_uri(ctx.warehouse_dsn)
    name = f"{ctx.schema}.{ctx.params['target']}"

    def run() -> None:
        pl_frame = frame if kind == "polars" else pl.from_pandas(frame)
        pl_frame.write_database(name, uri, engine="adbc", if_table_exists="append")

    return _empty_target_case(
        ctx, run, "ADBC ingest on its own connection (cannot join a psycopg transaction)"
    )


def ceiling_copy_csv(ctx: BenchContext) -> Case:
    """psycopg ``COPY … FROM STDIN (FORMAT csv)`` fed by ``polars.write_csv`` in 100,000-row pieces."""
    import polars as pl

    from etl_assets.bench.data import copy_frame_csv

    kind = ctx.params["frame"]
    frame = ctx.frame(ctx.params["dataset"], kind)
    target = _target(ctx)

    def run() -> None:
        pl_frame = frame if kind == "polars" else pl.from_pandas(frame)
        with psycopg.connect(ctx.warehouse_dsn) as conn:
            copy_frame_csv(conn, target, pl_frame, piece_rows=100_000)

    return _empty_target_case(ctx, run)


def _plain_uri(dsn: str) -> str:
    from etl_assets.settings import as_url

    return as_url(dsn)


# ---------------------------------------------------------------------------------------------
# write baselines
# ---------------------------------------------------------------------------------------------


def _decimal_dtype() -> dict[str, Any]:
    """pandas infers Decimal objects as text; a user has to name the column's type (as here)."""
    import sqlalchemy

    return {"amount": sqlalchemy.Numeric(12, 2)}


def pandas_to_sql(ctx: BenchContext) -> Case:
    """pandas ``DataFrame.to_sql`` (SQLAlchemy + psycopg), default or ``method='multi'``."""
    import sqlalchemy

    frame = ctx.pandas(ctx.params["dataset"])
    method = ctx.params.get("method")
    engine = sqlalchemy.create_engine(_sqlalchemy_url(ctx.warehouse_dsn))

    def run() -> None:
        frame.to_sql(
            ctx.params["target"],
            engine,
            schema=ctx.schema,
            if_exists="append",
            index=False,
            method=method,
            chunksize=MULTI_CHUNK if method == "multi" else None,
            dtype=_decimal_dtype(),
        )

    case = _empty_target_case(
        ctx,
        run,
        f"method='multi' needs chunksize <= 65535/{len(COLUMNS)} parameters" if method == "multi" else "",
    )
    case.close = engine.dispose
    return case


def polars_write_sqlalchemy(ctx: BenchContext) -> Case:
    """polars ``write_database(engine='sqlalchemy')`` (goes through pandas ``to_sql``)."""
    import sqlalchemy

    frame = ctx.polars(ctx.params["dataset"])
    engine = sqlalchemy.create_engine(_sqlalchemy_url(ctx.warehouse_dsn))
    name = f"{ctx.schema}.{ctx.params['target']}"

    def run() -> None:
        frame.write_database(
            name,
            engine,
            engine="sqlalchemy",
            if_table_exists="append",
            engine_options={"dtype": _decimal_dtype()},
        )

    case = _empty_target_case(ctx, run)
    case.close = engine.dispose
    return case


def seed_executemany_upsert(ctx: BenchContext) -> Case:
    """The seed's ``load_upsert``: ``INSERT … ON CONFLICT DO UPDATE`` executed for a list of dicts.

    psycopg 3 pipelines ``executemany``, which makes this far faster than one round trip per row,
    but every value still crosses Python one by one. Scenario: half new rows, half changed rows.
    """
    frame = ctx.polars(ctx.params["dataset"])
    before = ctx.polars(ctx.params["before"])
    target = _target(ctx)
    cols = list(COLUMNS)
    stmt = sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT (id) DO UPDATE SET {}").format(
        target,
        sql.SQL(", ").join(map(sql.Identifier, cols)),
        sql.SQL(", ").join(sql.Placeholder(c) for c in cols),
        sql.SQL(", ").join(
            sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
            for c in cols
            if c != "id"
        ),
    )

    def prepare() -> None:
        from etl_assets.bench.data import copy_frame_csv

        with psycopg.connect(ctx.warehouse_dsn) as conn:
            recreate_table(conn, target)
            copy_frame_csv(conn, target, before)

    def run() -> None:
        records = frame.to_dicts()  # the seed takes list[dict]
        with psycopg.connect(ctx.warehouse_dsn) as conn, conn.cursor() as cur:
            cur.executemany(stmt, records)

    return Case(
        run=run,
        prepare=prepare,
        check=lambda _: table_checksum_dsn(ctx.warehouse_dsn, target),
        note="psycopg 3 executemany (pipelined); half new, half changed",
    )


# ---------------------------------------------------------------------------------------------
# read ceiling and baselines (source database)
# ---------------------------------------------------------------------------------------------


def _source_table(ctx: BenchContext) -> sql.Identifier:
    return sql.Identifier(ctx.schema, ctx.params["source"])


def copy_to_frame(ctx: BenchContext) -> Case:
    """``COPY table TO STDOUT (FORMAT csv)`` into memory, parsed by polars (or pandas+pyarrow)."""
    kind = ctx.params["frame"]
    table = _source_table(ctx)

    def run() -> Any:
        buf = io.BytesIO()
        with psycopg.connect(ctx.source_dsn) as conn:
            conn.execute("SET timezone = 'UTC'")
            with (
                conn.cursor() as cur,
                cur.copy(sql.SQL("COPY {} TO STDOUT (FORMAT csv, HEADER)").format(table)) as copy,
            ):
                for block in copy:
                    buf.write(block)
        buf.seek(0)
        if kind == "polars":
            import polars as pl

            return pl.read_csv(buf, try_parse_dates=True, infer_schema_length=10_000)
        import pandas as pd

        return pd.read_csv(buf, engine="pyarrow")

    return Case(run=run, check=_frame_check)


def adbc_read(ctx: BenchContext) -> Case:
    """polars ``read_database_uri(engine='adbc')`` (numeric arrives as an opaque string)."""
    import polars as pl

    uri = _plain_uri(ctx.source_dsn)
    query = f'SELECT * FROM "{ctx.schema}"."{ctx.params["source"]}"'  # our own fixed names

    def run() -> Any:
        frame = pl.read_database_uri(query, uri, engine="adbc")
        return frame if ctx.params["frame"] == "polars" else frame.to_pandas()

    return Case(run=run, check=_frame_check)


def pandas_read_sql(ctx: BenchContext) -> Case:
    """``pandas.read_sql`` through SQLAlchemy + psycopg."""
    import pandas as pd
    import sqlalchemy

    engine = sqlalchemy.create_engine(_sqlalchemy_url(ctx.source_dsn))
    query = f'SELECT * FROM "{ctx.schema}"."{ctx.params["source"]}"'

    def run() -> Any:
        with engine.connect() as conn:
            return pd.read_sql(sqlalchemy.text(query), conn)

    return Case(run=run, check=_frame_check, close=engine.dispose)


def _frame_check(output: Any) -> Observed:
    digest = Digest()
    digest.add(output)
    return digest.observed()


def _chunk_query(table: sql.Identifier, chunk: int, *, after: int | None, offset: int | None) -> sql.Composed:
    if offset is not None:
        inner = sql.SQL("SELECT * FROM {} ORDER BY id LIMIT {} OFFSET {}").format(
            table, sql.Literal(chunk), sql.Literal(offset)
        )
    else:
        inner = sql.SQL("SELECT * FROM {} WHERE id > {} ORDER BY id LIMIT {}").format(
            table, sql.Literal(after), sql.Literal(chunk)
        )
    return sql.SQL("COPY ({}) TO STDOUT (FORMAT csv, HEADER)").format(inner)


def chunked_read(ctx: BenchContext) -> Case:
    """Read the table in ``chunk`` rows at a time, by OFFSET (the seed's) or by keyset on the key.

    Both variants read each chunk the same way (COPY of the chunk's query into polars text columns)
    and digest it before dropping it, so the difference is the pagination alone: OFFSET re-reads and
    discards every earlier row for each chunk (quadratic), keyset starts each chunk at an index lookup.
    """
    import polars as pl

    table = _source_table(ctx)
    chunk = int(ctx.params.get("chunk", 50_000))
    by_offset = ctx.params["paging"] == "offset"

    def run() -> Observed:
        digest = Digest()
        with psycopg.connect(ctx.source_dsn) as conn:
            conn.execute("SET timezone = 'UTC'")
            offset, after = 0, 0
            while True:
                query = _chunk_query(
                    table, chunk, after=None if by_offset else after, offset=offset if by_offset else None
                )
                buf = io.BytesIO()
                with conn.cursor() as cur, cur.copy(query) as copy:
                    for block in copy:
                        buf.write(block)
                buf.seek(0)
                # text columns, like our chunked extract: typed parsing per chunk would dominate and
                # hide the pagination difference this pair exists to show
                frame = pl.read_csv(buf, infer_schema=False)
                if frame.height == 0:
                    break
                digest.add(frame)
                offset += frame.height
                after = int(frame["id"].cast(pl.Int64).max())  # text columns: compare as numbers
                if frame.height < chunk:
                    break
        return digest.observed()

    return Case(
        run=run, check=lambda observed: observed, note=f"{chunk:,}-row chunks, each digested then dropped"
    )


# ---------------------------------------------------------------------------------------------
# the list
# ---------------------------------------------------------------------------------------------

SLOW_ABOVE = 1_000_000  # pandas/SQLAlchemy routes take minutes per run above this


def contenders(plan) -> list:
    """Every ceiling and baseline at every size of the plan."""
    from etl_assets.bench.harness import Contender

    mod = __name__
    out: list[Contender] = []
    smallest = min(plan.sizes)
    for n in plan.sizes:
        base = plan.table("base", n)
        slow_gap = (
            f"not run above {SLOW_ABOVE:,} rows: about 30-50 s per million rows, repeated"
            if n > SLOW_ABOVE
            else None
        )
        for kind in ("pandas", "polars"):
            out.append(
                Contender(
                    name="polars write_database(adbc)" if kind == "polars" else "ADBC ingest (from pandas)",
                    group="load",
                    rows=n,
                    func=f"{mod}:ceiling_adbc",
                    frame=kind,
                    role="ceiling",
                    params={"dataset": f"base_{n}", "frame": kind, "target": f"ceil_adbc_{kind}_{n}"},
                    expected=base,
                    repeat=plan.repeat,
                    tags={"op": "ceiling", "route": "adbc"},
                )
            )
            out.append(
                Contender(
                    name="COPY csv stream",
                    group="load",
                    rows=n,
                    func=f"{mod}:ceiling_copy_csv",
                    frame=kind,
                    role="ceiling",
                    params={"dataset": f"base_{n}", "frame": kind, "target": f"ceil_csv_{kind}_{n}"},
                    expected=base,
                    repeat=plan.repeat,
                    tags={"op": "ceiling", "route": "copy_csv"},
                )
            )
        for method in (None, "multi"):
            label = "default" if method is None else method
            gap = slow_gap
            if method == "multi" and n > 100_000:
                gap = (
                    "method='multi' is measured at 100,000 rows only: it took about 55 s per 100,000 "
                    "rows here (one 7,000-row statement at a time), so about 9 minutes per run at this size"
                )
            out.append(
                Contender(
                    name=f"pandas to_sql ({label})",
                    group="load",
                    rows=n,
                    func=f"{mod}:pandas_to_sql",
                    frame="pandas",
                    role="baseline",
                    params={"dataset": f"base_{n}", "method": method, "target": f"to_sql_{label}_{n}"},
                    expected=base,
                    gap=gap,
                    tags={"op": "to_sql", "method": label},
                    **plan.slow(n, seconds_per_million=60 if method is None else 550),
                )
            )
        out.append(
            Contender(
                name="polars write_database(sqlalchemy)",
                group="load",
                rows=n,
                func=f"{mod}:polars_write_sqlalchemy",
                frame="polars",
                role="baseline",
                params={"dataset": f"base_{n}", "target": f"pl_sqla_{n}"},
                expected=base,
                gap=slow_gap,
                tags={"op": "write_database_sqlalchemy"},
                **plan.slow(n, seconds_per_million=95),
            )
        )
        if n == smallest and (n <= 100_000 or plan.quick):
            out.append(
                Contender(
                    name="seed executemany upsert (half)",
                    group="load",
                    rows=n,
                    func=f"{mod}:seed_executemany_upsert",
                    frame="polars",
                    role="baseline",
                    params={"dataset": f"half_{n}", "before": f"base_{n}", "target": f"seed_upsert_{n}"},
                    expected=plan.table("halfres", n),
                    repeat=plan.repeat,
                    tags={"op": "executemany_upsert", "scenario": "half"},
                )
            )
        frame_base = plan.frame("base", n)
        src = f"src_{n}"
        for kind in ("polars", "pandas"):
            out.append(
                Contender(
                    name="COPY TO STDOUT -> frame",
                    group="extract",
                    rows=n,
                    func=f"{mod}:copy_to_frame",
                    frame=kind,
                    role="ceiling",
                    params={"source": src, "frame": kind},
                    expected=frame_base,
                    repeat=plan.repeat,
                    tags={"op": "ceiling", "route": "copy_csv"},
                )
            )
        out.append(
            Contender(
                name="ADBC read_database_uri",
                group="extract",
                rows=n,
                func=f"{mod}:adbc_read",
                frame="polars",
                role="ceiling",
                params={"source": src, "frame": "polars"},
                expected=frame_base,
                repeat=plan.repeat,
                tags={"op": "ceiling", "route": "adbc"},
            )
        )
        out.append(
            Contender(
                name="pandas read_sql",
                group="extract",
                rows=n,
                func=f"{mod}:pandas_read_sql",
                frame="pandas",
                role="baseline",
                params={"source": src},
                expected=frame_base,
                tags={"op": "read_sql"},
                **plan.slow(n, seconds_per_million=25),
            )
        )
        chunk = 500 if plan.quick else 50_000
        for paging in ("keyset", "offset"):
            out.append(
                Contender(
                    name=f"{paging} chunks of {chunk:,}",
                    group="extract",
                    rows=n,
                    func=f"{mod}:chunked_read",
                    frame="polars",
                    role="baseline",
                    params={"source": src, "paging": paging, "chunk": chunk},
                    expected=frame_base,
                    repeat=plan.repeat,
                    gap=(
                        "OFFSET is quadratic: not run above 1,000,000 rows"
                        if paging == "offset" and n > 1_000_000
                        else None
                    ),
                    tags={"op": "chunked_baseline", "paging": paging},
                )
            )
    return out
