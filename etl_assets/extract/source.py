"""The source side of an extract: what the declared table looks like, and reading its rows.

Rows leave the source through ``COPY (SELECT …) TO STDOUT`` (the fastest way out of PostgreSQL) and
become a polars frame of text columns: PostgreSQL's own text form round-trips every type exactly
(numeric scale, timestamps with time zone, intervals, arrays, json, NULL distinct from '') into a
target created with the source's column types, so no value is ever reinterpreted by Python on the
way. Reading is streamed in bounded pieces where the caller asks for it (chunked extracts).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from etl_assets.errors import MissingObject, MissingPrivilege
from etl_assets.io.tables import TableRef
from etl_assets.io.transfer import set_text_format
from etl_assets.io.typemap import PgType, warehouse_type
from etl_assets.pipeline_config import TableSpec

if TYPE_CHECKING:  # loaded where a frame is built, not when this module is imported
    import polars as pl


@dataclass(frozen=True)
class SourceColumn:
    name: str
    type_sql: str  # format_type() text, e.g. "numeric(12,2)", "timestamp with time zone"
    not_null: bool
    builtin: bool  # a pg_catalog type: exists in every warehouse, binary COPY works across servers

    @property
    def pg_type(self) -> PgType:
        """The warehouse column type (:func:`etl_assets.io.typemap.warehouse_type`)."""
        return warehouse_type(self.type_sql, self.builtin)


@dataclass(frozen=True)
class SourceTable:
    ref: TableRef
    columns: tuple[SourceColumn, ...]
    #: A unique index (or primary key) of the source covers exactly the declared primary_key: rows
    #: read from it cannot share a key, so the load need not check for repeated keys.
    key_unique: bool = False

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> SourceColumn:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def all_builtin(self) -> bool:
        return all(c.builtin for c in self.columns)


_COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       t.typnamespace = 'pg_catalog'::regnamespace
  FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
 WHERE a.attrelid = %s::oid AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum
"""


def prepare_session(conn: psycopg.Connection) -> None:
    """Fix the settings that shape PostgreSQL's text output, so cursor values stored as text
    compare and round-trip exactly whatever the server's defaults are."""
    set_text_format(conn)


def describe(conn: psycopg.Connection, spec: TableSpec) -> SourceTable:
    """The declared source table's columns; a missing table or declared column raises
    :class:`MissingObject` naming it and the declaration."""
    where = f" (declared at line {spec.line})" if spec.line else ""
    row = conn.execute("SELECT to_regclass(%s)::oid", (spec.source.regclass_text,)).fetchone()
    if row is None or row[0] is None:
        raise MissingObject(
            f"Source table {spec.source} does not exist in the "
            f"{f'{spec.source_name} source' if spec.source_name else 'source'} database{where}; create it, "
            "grant this role access to it, or correct its name in the tables declaration."
        )
    columns = tuple(
        SourceColumn(name, type_sql, bool(not_null), bool(builtin))
        for name, type_sql, not_null, builtin in conn.execute(_COLUMNS, (row[0],)).fetchall()
    )
    _require_select(conn, spec, row[0], [c.name for c in columns], where)
    wanted = sorted(spec.primary_key)
    unique = bool(wanted) and any(u and sorted(cols) == wanted for u, cols in index_facts(conn, spec.source))
    table = SourceTable(spec.source, columns, key_unique=unique)
    declared = [("primary_key", c) for c in spec.primary_key]
    if spec.cursor:
        declared.append(("cursor", spec.cursor))
    names = set(table.names)
    for key, column in declared:
        if column not in names:
            raise MissingObject(
                f"Source table {spec.source} has no column {column!r} (key '{key}'{where}); its columns are "
                f"{', '.join(table.names)}. Correct the declaration or the source table."
            )
    return table


def _require_select(
    conn: psycopg.Connection, spec: TableSpec, oid: int, names: list[str], where: str
) -> None:
    """SELECT on the table (or on each of its columns), else a message naming table and privilege."""
    user, columns, whole = conn.execute(
        "SELECT current_user, array_agg(a.name ORDER BY a.n) FILTER (WHERE NOT has_column_privilege("
        "%s, a.name, 'SELECT')), has_table_privilege(%s, 'SELECT') "
        "FROM unnest(%s::text[]) WITH ORDINALITY a(name, n)",
        (oid, oid, names),
    ).fetchone()
    if whole or not columns:
        return
    which = "" if len(columns) == len(names) else f" (columns {', '.join(columns)})"
    raise MissingPrivilege(
        f"Role {user} lacks the SELECT privilege on source table {spec.source}{which}"
        f"{f' in source {spec.source_name}' if spec.source_name else ''}{where}. As the table's "
        f"owner: GRANT SELECT ON {spec.source.regclass_text} TO {user} (docs/roles.md, source role)."
    )


def select_list(table: SourceTable, columns: Sequence[str] | None = None) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(c) for c in (columns or table.names))


def copy_query_to_frame(conn: psycopg.Connection, query: sql.Composable, params: Sequence[object] = (),
                        columns: Sequence[str] = ()) -> pl.DataFrame:
    """Run ``COPY (query) TO STDOUT`` as CSV and parse it as text columns (NULL stays NULL, '' stays '')."""
    copy_sql = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv, HEADER false)").format(query)
    buffer = io.BytesIO()
    with conn.cursor() as cur, cur.copy(copy_sql, params or None) as copy:
        for block in copy:
            buffer.write(block)
    return csv_to_frame(buffer.getvalue(), columns)


PIECE_BYTES = 8 * 1024 * 1024  # CSV bytes per frame when streaming a COPY (bounds memory)


def _record_boundary(buffer: bytearray) -> int:
    """Length of the longest prefix of ``buffer`` made of whole CSV records (0 if none).

    A newline ends a record only outside quotes, i.e. where the number of '"' before it is even
    (PostgreSQL quotes fields containing newlines and doubles quotes inside them).
    """
    total = buffer.count(b'"')
    end = len(buffer)
    while True:
        nl = buffer.rfind(b"\n", 0, end)
        if nl < 0:
            return 0
        if (total - buffer.count(b'"', nl + 1)) % 2 == 0:
            return nl + 1
        end = nl


def iter_copy_frames(conn: psycopg.Connection, query: sql.Composable, params: Sequence[object] = (),
                     columns: Sequence[str] = (), piece_bytes: int = PIECE_BYTES) -> Iterator[pl.DataFrame]:
    """Stream ``COPY (query) TO STDOUT`` as frames of about ``piece_bytes`` of CSV each (at least one
    frame, possibly empty), so that a whole table never has to fit in memory at once."""
    copy_sql = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv, HEADER false)").format(query)
    buffer = bytearray()
    produced = False
    with conn.cursor() as cur, cur.copy(copy_sql, params or None) as copy:
        for block in copy:
            buffer += block
            if len(buffer) >= piece_bytes:
                cut = _record_boundary(buffer)
                if cut:
                    frame = csv_to_frame(bytes(buffer[:cut]), columns)
                    del buffer[:cut]
                    produced = True
                    yield frame
    if buffer or not produced:
        yield csv_to_frame(bytes(buffer), columns)


def csv_to_frame(data: bytes, columns: Sequence[str]) -> pl.DataFrame:
    import polars as pl

    if not data:
        return pl.DataFrame({c: pl.Series(c, [], dtype=pl.String) for c in columns})
    return pl.read_csv(
        io.BytesIO(data),
        has_header=False,
        schema={c: pl.String for c in columns},
        infer_schema=False,
        quote_char='"',
    )


def key_tuple(frame: pl.DataFrame, key: Sequence[str]) -> list[str | None]:
    """The last row's key values (text) of a frame ordered by ``key``: the keyset position."""
    last = frame.select(list(key)).row(-1)
    return list(last)


def keyset_predicate(key: Sequence[str], after: Sequence[object] | None) -> tuple[sql.Composable, list]:
    """``(k1, k2) > (%s, %s)`` (row comparison: one index range scan on the primary key)."""
    if after is None:
        return sql.SQL("TRUE"), []
    cols = sql.SQL(", ").join(sql.Identifier(k) for k in key)
    marks = sql.SQL(", ").join(sql.Placeholder() * len(key))
    return sql.SQL("({}) > ({})").format(cols, marks), list(after)


def typed_key_params(table: SourceTable, key: Sequence[str], values: Sequence[object]) -> sql.Composable:
    """``(%s::type, …)`` placeholders so text key values compare as the key's own types."""
    parts = [sql.SQL("{}::{}").format(sql.Placeholder(), sql.SQL(table.column(k).type_sql)) for k in key]
    return sql.SQL(", ").join(parts)


def iter_keyset_chunks(conn: psycopg.Connection, table: SourceTable, key: Sequence[str], chunk_size: int,
                       after: Sequence[object] | None = None) -> Iterator[pl.DataFrame]:
    """Frames of at most ``chunk_size`` rows in primary-key order, starting after ``after``.

    Keyset pagination (``WHERE key > last ORDER BY key LIMIT n``): each chunk is one index range
    scan, so the cost per chunk does not grow with the position, unlike OFFSET.
    """
    position = list(after) if after is not None else None
    order = sql.SQL(", ").join(sql.Identifier(k) for k in key)
    cols = sql.SQL(", ").join(sql.Identifier(k) for k in key)
    while True:
        if position is None:
            where, params = sql.SQL("TRUE"), []
        else:
            where = sql.SQL("({}) > ({})").format(cols, typed_key_params(table, key, position))
            params = list(position)
        query = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT {}").format(
            select_list(table), table.ref.ident, where, order, sql.Literal(chunk_size)
        )
        frame = copy_query_to_frame(conn, query, params, table.names)
        if frame.height == 0:
            return
        position = key_tuple(frame, key)
        yield frame
        if frame.height < chunk_size:
            return


_INDEXES = """
SELECT x.indisunique AND x.indpred IS NULL AND x.indexprs IS NULL,
       ARRAY(SELECT a.attname FROM unnest(x.indkey) WITH ORDINALITY k(attnum, n)
             JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum ORDER BY k.n)
  FROM pg_index x WHERE x.indrelid = to_regclass(%s) AND x.indisvalid
"""


def index_facts(conn: psycopg.Connection, table: TableRef) -> list[tuple[bool, list[str]]]:
    """(unique and total, columns in order) of every valid index of the source table."""
    return [(bool(u), list(cols)) for u, cols in conn.execute(_INDEXES, (table.regclass_text,)).fetchall()]


def require_unique_key(conn: psycopg.Connection, spec: TableSpec) -> None:
    """Keyset pagination needs the declared key to be unique in the source: with duplicates, rows
    sharing the key of a chunk's last row would be skipped. It also needs an index to be cheap."""
    wanted = sorted(spec.primary_key)
    if any(unique and sorted(cols) == wanted for unique, cols in index_facts(conn, spec.source)):
        return
    raise MissingObject(
        f"extract: chunked reads {spec.source} in order of primary_key ({', '.join(spec.primary_key)}), "
        "which needs a unique index (or primary key) on exactly those columns in the source, and there "
        "is none. Add it, or declare the columns that are the table's key."
    )


def cursor_index_warning(conn: psycopg.Connection, spec: TableSpec) -> str | None:
    """A warning when no index starts with the cursor column (each run would scan the table)."""
    if any(cols and cols[0] == spec.cursor for _, cols in index_facts(conn, spec.source)):
        return None
    return (f"No index on {spec.source} starts with cursor column {spec.cursor!r}: every incremental run "
            "scans the whole table. Create one, e.g. CREATE INDEX ON <table> (<cursor>).")

