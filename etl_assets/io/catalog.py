"""Catalog look-ups the IO layer needs: does a table exist, what are its columns and unique keys.

All queries take names as parameters and compare them exactly (no case folding), so tables whose
names contain capitals, spaces or quotes are found like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from etl_assets.io.tables import TableRef
from etl_assets.io.typemap import PgType


@dataclass(frozen=True)
class Column:
    name: str
    type: PgType
    not_null: bool


def ensure_schema(conn: psycopg.Connection, schema: str) -> None:
    """Create ``schema`` unless it exists.

    ``CREATE SCHEMA IF NOT EXISTS`` needs the CREATE privilege on the database even when the schema
    is there, so a least-privilege role that owns its schemas (docs/roles.md) could not run it: look
    first, create only what is missing, and name the fix when the role may not.
    """
    from psycopg import sql

    from etl_assets.errors import MissingObject

    if conn.execute("SELECT to_regnamespace(%s) IS NOT NULL", (_quote_ident(schema),)).fetchone()[0]:
        return
    try:
        with conn.transaction():
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    except psycopg.errors.InsufficientPrivilege:
        user, database = conn.execute("SELECT current_user, current_database()").fetchone()
        raise MissingObject(
            f"Schema {schema} does not exist in database {database} and role {user} lacks the CREATE "
            f"privilege on the database to create it. Create it once as an administrator: "
            f"CREATE SCHEMA {_quote_ident(schema)} AUTHORIZATION {_quote_ident(user)} (see docs/roles.md)."
        ) from None


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def table_oid(conn: psycopg.Connection, table: TableRef) -> int | None:
    """OID of an ordinary or partitioned table named exactly ``table``; None if there is none."""
    row = conn.execute(
        """
        SELECT c.oid::int8, c.relkind FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relname = %s
        """,
        (table.schema, table.name),
    ).fetchone()
    if row is None:
        return None
    if row[1] not in ("r", "p"):
        from etl_assets.errors import SchemaMismatch

        kinds = {
            "v": "a view",
            "m": "a materialized view",
            "f": "a foreign table",
            "i": "an index",
            "S": "a sequence",
        }
        raise SchemaMismatch(
            f"{table} is {kinds.get(row[1], 'not a table')}, not a table; choose another target."
        )
    return int(row[0])


def columns(conn: psycopg.Connection, table: TableRef) -> list[Column]:
    """Live columns of ``table`` in order, with their ``format_type`` types."""
    rows = conn.execute(
        """
        SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull
        FROM pg_catalog.pg_attribute a
        JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
        """,
        (table.schema, table.name),
    ).fetchall()
    return [Column(name, PgType.parse(typ), bool(nn)) for name, typ, nn in rows]


def unique_index_on(conn: psycopg.Connection, table: TableRef, keys: Sequence[str]) -> str | None:
    """Name of a non-partial unique index whose columns are exactly ``keys`` (any order)."""
    rows = conn.execute(
        """
        SELECT i.relname,
               ARRAY(SELECT a.attname FROM unnest(x.indkey) AS k(attnum)
                     JOIN pg_catalog.pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum)
        FROM pg_catalog.pg_index x
        JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
        JOIN pg_catalog.pg_class c ON c.oid = x.indrelid
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relname = %s AND x.indisunique AND x.indisvalid
          AND x.indpred IS NULL AND x.indexprs IS NULL
        """,
        (table.schema, table.name),
    ).fetchall()
    wanted = sorted(keys)
    for name, cols in rows:
        if sorted(cols) == wanted and len(cols) == len(wanted):
            return name
    return None
