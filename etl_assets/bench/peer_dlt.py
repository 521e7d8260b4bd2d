"""The peer: dlt's ``sql_database`` source into dlt's ``postgres`` destination, same data, same server.

dlt is given its fastest documented configuration rather than its defaults, so that we beat the
peer at its best, not a straw man: the ``pyarrow`` backend (its docs report Arrow backends 20-30x
faster than the row-by-row default), ``chunk_size`` 50,000 (its default), and the ``csv`` loader file
format, which its postgres destination loads with COPY instead of the default multi-row
``INSERT … VALUES``. ``write_disposition='replace'`` makes each run a full reload like ours.

dlt is only in the ``bench`` extra (``pip install -e '.[bench]'``), never a runtime dependency.
Its result is verified like every contender: the destination table's row count and checksum over
our columns (dlt's ``_dlt_load_id``/``_dlt_id`` columns are ignored) must equal the source's.
"""

from __future__ import annotations

import importlib.util
import shutil

import psycopg
from psycopg import sql

from etl_assets.bench.data import table_checksum_dsn
from etl_assets.bench.harness import BenchContext, Case, Contender
from etl_assets.settings import as_url


def _dlt_destination_url(dsn: str) -> str:
    """dlt's postgres credentials insist on a host and a password; a socket-only or trust-auth server
    has neither, so give a placeholder host and password and let libpq's ``host`` query parameter
    (which wins over the URL's host) point at the socket folder. The server ignores the password."""
    from urllib.parse import quote, urlencode

    from psycopg.conninfo import conninfo_to_dict

    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
    user = quote(params.pop("user", "postgres"), safe="")
    password = quote(params.pop("password", "unused"), safe="")
    database = quote(params.pop("dbname", "postgres"), safe="")
    host = params.pop("host", "localhost")
    port = params.pop("port", "5432")
    if host.startswith("/"):
        params["host"] = host
        host = "localhost"
    query = urlencode(params)
    return f"postgresql://{user}:{password}@{host}:{port}/{database}" + (f"?{query}" if query else "")


def dlt_sql_to_postgres(ctx: BenchContext) -> Case:
    import dlt
    from dlt.sources.sql_database import sql_database

    n = ctx.rows
    dataset = f"{ctx.schema}_dlt_{n}"
    table = ctx.params["source"]
    pipelines_dir = ctx.workdir / f"dlt_pipelines_{n}"
    # SQLAlchemy (dlt's source side) defaults postgresql:// to psycopg2; dlt's destination uses psycopg2.
    source_url = as_url(ctx.source_dsn)
    dest_url = _dlt_destination_url(ctx.warehouse_dsn)

    def prepare() -> None:
        shutil.rmtree(pipelines_dir, ignore_errors=True)
        with psycopg.connect(ctx.warehouse_dsn, autocommit=True) as conn:
            for suffix in ("", "_staging"):
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(dataset + suffix))
                )

    def run() -> None:
        pipeline = dlt.pipeline(
            pipeline_name=f"etl_bench_{n}",
            destination=dlt.destinations.postgres(credentials=dest_url),
            dataset_name=dataset,
            pipelines_dir=str(pipelines_dir),
        )
        source = sql_database(
            credentials=source_url,
            schema=ctx.schema,
            table_names=[table],
            backend="pyarrow",
            chunk_size=50_000,
        )
        info = pipeline.run(source, write_disposition="replace", loader_file_format="csv")
        info.raise_on_failed_jobs()

    def check(_: object) -> object:
        return table_checksum_dsn(ctx.warehouse_dsn, sql.Identifier(dataset, table))

    return Case(
        run=run,
        prepare=prepare,
        check=check,
        close=prepare,
        note="dlt sql_database(backend=pyarrow, chunk_size=50,000) -> "
        "postgres(loader_file_format=csv, COPY), write_disposition=replace",
    )


def contenders(plan) -> list[Contender]:
    available = importlib.util.find_spec("dlt") is not None
    out = []
    for n in plan.sizes:
        out.append(
            Contender(
                name="dlt sql_database -> postgres",
                group="e2e",
                rows=n,
                func=f"{__name__}:dlt_sql_to_postgres",
                frame="-",
                role="peer",
                params={"source": f"src_{n}"},
                expected=plan.table("base", n),
                memory_warmup=True,
                **plan.slow(n, seconds_per_million=15),
                gap=None if available else "dlt is not installed: pip install -e '.[bench]'",
                tags={"op": "e2e", "tool": "dlt"},
            )
        )
    return out
