"""Raw copies of the demo source tables: ``raw/customers``, ``raw/categories``, ``raw/orders``.

A deliberately small full extract (a server-side cursor read in chunks into one polars frame, typed
from the catalog through the project's one type mapping) that the IO manager writes to ``raw.<table>``
in one transaction. The declarative extracts (YAML: incremental, chunked, CDC) replace this module
and keep the asset keys, so downstream assets do not change.
"""

from __future__ import annotations

import dagster as dg
import polars as pl
from psycopg import sql

from etl_assets.db import PostgresResource
from etl_assets.errors import MissingObject

SOURCE_SCHEMA = "shop"
TABLES = ("customers", "categories", "orders")
FETCH_ROWS = 50_000  # rows per round trip of the server-side cursor


def read_table(conn, schema: str, table: str) -> pl.DataFrame:
    """Read a whole table into a polars frame with dtypes derived from its column types."""
    from etl_assets.io.typemap import PgType, polars_dtype_for

    columns = conn.execute(
        """SELECT a.attname, format_type(a.atttypid, a.atttypmod)
           FROM pg_attribute a
           WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped
           ORDER BY a.attnum""",
        (sql.Identifier(schema, table).as_string(conn),),
    ).fetchall()
    if not columns:
        raise MissingObject(
            f"The source table {schema}.{table} does not exist; seed the demo with `etl-assets seed`."
        )
    schema_map = {name: polars_dtype_for(PgType.parse(type_text)) for name, type_text in columns}
    chunks: list[pl.DataFrame] = []
    with conn.transaction(), conn.cursor(name=f"extract_{table}") as cur:
        cur.execute(
            sql.SQL("SELECT {} FROM {} ORDER BY 1").format(
                sql.SQL(", ").join(sql.Identifier(name) for name in schema_map),
                sql.Identifier(schema, table),
            )
        )
        while rows := cur.fetchmany(FETCH_ROWS):
            chunks.append(pl.DataFrame(rows, schema=schema_map, orient="row"))
    if not chunks:
        return pl.DataFrame(schema=schema_map)
    return pl.concat(chunks, rechunk=True)


def _raw_asset(table: str) -> dg.AssetsDefinition:
    @dg.asset(
        key=["raw", table],
        group_name="raw",
        kinds={"postgres", "polars"},
        pool="warehouse",
        description=f"Full copy of the demo source table {SOURCE_SCHEMA}.{table}.",
        metadata={
            "write_mode": "truncate_insert",
            "primary_key": ["id"],
            "source": f"{SOURCE_SCHEMA}.{table}",
        },
    )
    def _extract(context: dg.AssetExecutionContext, source: PostgresResource) -> pl.DataFrame:
        with source.connect() as conn:
            frame = read_table(conn, SOURCE_SCHEMA, table)
        context.log.info(f"read {frame.height:,} rows from {SOURCE_SCHEMA}.{table}")
        return frame

    return _extract


def build_defs() -> dg.Definitions:
    return dg.Definitions(assets=[_raw_asset(table) for table in TABLES])
