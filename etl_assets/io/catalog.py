"""Catalog look-ups the IO layer needs: does a table exist, what are its columns and unique keys.

All queries take names as parameters and compare them exactly (no case folding), so tables whose
names contain capitals, spaces or quotes are found like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from etl_assets.errors import MissingObject, SchemaMismatch
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
    if conn.execute("SELECT to_regnamespace(%s) IS NOT NULL", (_quote_ident(schema),)).fetchone()[0]:
        return
    try:
        with conn.transaction():
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    except psycopg.errors.UniqueViolation:
        # Another session created it between our look and our CREATE (two extracts into a new schema
        # at once: IF NOT EXISTS does not cover that race in PostgreSQL). It exists: done.
        return
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


# How each column's old and new values are compared by an upsert ("has the row changed?").
#: ``=`` is used directly only where the type's default btree operator class declares that equal
#: values are identical (its ``equalimage`` support function, PostgreSQL 13+): int, text (with a
#: deterministic collation), timestamp, uuid... Types without a btree equality (json, xml, point,
#: box...) have no usable ``=`` or one that is not identity (box ``=`` compares areas), and types
#: whose equality is looser than identity (numeric 1.0 = 1.00, float 0 = -0, interval
#: '1 day' = '24 hours', jsonb, arrays) would let a real change pass as "unchanged". Those are
#: compared by their binary send function (exact, and independent of session settings such as
#: extra_float_digits), or as text where a type has none. Only an operator class declared for the
#: type itself counts, or text's for a type implicitly binary-coercible to text (varchar; xml's cast
#: is not implicit and xml has no ``=``). Measured cost of a send comparison over ``=``, per million
#: compared rows: numeric +0.26 s, float8 +0.27 s, interval +0.36 s, jsonb +1.45 s.
_COMPARISON = """
WITH RECURSIVE cols AS (
    SELECT a.attname, a.attnum, a.atttypid AS typ, a.attcollation FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
), base(attname, typ, depth) AS (  -- domains resolved to their base type
    SELECT attname, typ, 0 FROM cols
    UNION ALL
    SELECT b.attname, t.typbasetype, b.depth + 1 FROM base b JOIN pg_catalog.pg_type t ON t.oid = b.typ
    WHERE t.typtype = 'd' AND b.depth < 16
)
SELECT c.attname,
       EXISTS (
           SELECT 1 FROM pg_catalog.pg_opclass oc
           JOIN pg_catalog.pg_am am ON am.oid = oc.opcmethod AND am.amname = 'btree'
           JOIN pg_catalog.pg_amproc p ON p.amprocfamily = oc.opcfamily AND p.amprocnum = 4
                AND p.amproclefttype = oc.opcintype AND p.amprocrighttype = oc.opcintype
           WHERE oc.opcdefault
             AND (oc.opcintype = bt.oid
                  OR (bt.typtype = 'e' AND oc.opcintype = 'pg_catalog.anyenum'::pg_catalog.regtype)
                  -- varchar: = resolves to text's through an implicit binary-coercible cast (xml's
                  -- cast to text is not implicit: xml has no =)
                  OR (oc.opcintype = 'pg_catalog.text'::pg_catalog.regtype AND EXISTS (
                          SELECT 1 FROM pg_catalog.pg_cast k WHERE k.castsource = bt.oid
                          AND k.casttarget = oc.opcintype AND k.castmethod = 'b' AND k.castcontext = 'i')))
             AND (p.amproc = 'pg_catalog.btequalimage'::pg_catalog.regproc
                  OR (p.amproc = 'pg_catalog.btvarstrequalimage'::pg_catalog.regproc
                      AND coalesce((SELECT co.collisdeterministic FROM pg_catalog.pg_collation co
                                    WHERE co.oid = c.attcollation), true)))
       ),
       sn.nspname, sp.proname
FROM cols c
JOIN base b ON b.attname = c.attname
             AND b.depth = (SELECT max(depth) FROM base b2 WHERE b2.attname = c.attname)
JOIN pg_catalog.pg_type bt ON bt.oid = b.typ
LEFT JOIN pg_catalog.pg_proc sp ON sp.oid = bt.typsend
LEFT JOIN pg_catalog.pg_namespace sn ON sn.oid = sp.pronamespace
ORDER BY c.attnum
"""


@dataclass(frozen=True)
class Comparison:
    """How an upsert tells whether a column's value changed: ``"equal"`` (``IS DISTINCT FROM`` on
    the values), ``"send"`` (on the bytes of the type's send function ``function``) or ``"text"``."""

    column: str
    how: str
    function: tuple[str, str] | None = None  # (schema, name) of the send function


def comparisons(conn: psycopg.Connection, table: TableRef) -> dict[str, Comparison]:
    """Per column of ``table``, the exact way to compare an old and a new value (see above)."""
    oid = table_oid(conn, table)
    if oid is None:
        return {}
    out: dict[str, Comparison] = {}
    for name, image_equal, nsp, proname in conn.execute(_COMPARISON, (oid,)).fetchall():
        if image_equal:
            out[name] = Comparison(name, "equal")
        elif proname:
            out[name] = Comparison(name, "send", (nsp, proname))
        else:
            out[name] = Comparison(name, "text")
    return out
