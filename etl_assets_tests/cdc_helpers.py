"""Helpers shared by the CDC tests: a captured source table and exact source/target comparison."""

from __future__ import annotations

import secrets

import psycopg
from psycopg import sql

from etl_assets.io.tables import TableRef
from etl_assets.pipeline_config import TableSpec

ITEMS_DDL = """
CREATE TABLE {t} (
    id      bigint PRIMARY KEY,
    name    text,
    amount  numeric(12, 2),
    tags    text[],
    doc     jsonb,
    seen_at timestamptz,
    blob    bytea
)
"""


def make_items(source_conn: psycopg.Connection, rows: int = 200) -> TableRef:
    """A fresh source table ``s_xxxx.items`` with ``rows`` rows of varied types."""
    schema = f"src_{secrets.token_hex(4)}"
    ref = TableRef(schema, "items")
    source_conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    source_conn.execute(sql.SQL(ITEMS_DDL).format(t=ref.ident))
    source_conn.execute(
        sql.SQL(
            """INSERT INTO {} SELECT g, 'name ' || g, g * 1.25, ARRAY['a' || g, NULL],
                      jsonb_build_object('g', g, 'nested', jsonb_build_array(g, 'x')),
                      timestamptz '2025-01-01 00:00:00+00' + g * interval '1 minute',
                      decode(lpad(to_hex(g), 8, '0'), 'hex')
                 FROM generate_series(1, %s) g"""
        ).format(ref.ident),
        (rows,),
    )
    return ref


def spec_for(source: TableRef, target_schema: str, name: str = "items") -> TableSpec:
    return TableSpec(
        source=source, extract="cdc", load="upsert", target=TableRef(target_schema, name), primary_key=("id",)
    )


def rows_of(conn: psycopg.Connection, table: TableRef, key: str = "id") -> list[tuple]:
    conn.execute("SET TimeZone = 'UTC'")
    return conn.execute(
        sql.SQL("SELECT * FROM {} ORDER BY {}").format(table.ident, sql.Identifier(key))
    ).fetchall()


def assert_equal(source_conn: psycopg.Connection, warehouse_conn: psycopg.Connection, spec: TableSpec) -> int:
    """Target rows equal source rows exactly (every column, deletes included); returns the count."""
    src = rows_of(source_conn, spec.source)
    dst = rows_of(warehouse_conn, spec.target)
    assert len(dst) == len(src)
    assert dst == src
    return len(src)
