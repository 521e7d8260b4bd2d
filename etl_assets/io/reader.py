"""Loading a warehouse table (some columns, one partition) back as a pandas or polars frame.

Column dtypes come from the table's PostgreSQL types through :mod:`etl_assets.io.typemap`, so an
empty result still has the right schema. uuid and json columns load as text in polars (it has no
such dtypes) and as ``uuid.UUID`` / parsed JSON objects in pandas ``object`` columns, which is what
pandas code passes back in; lists load as lists.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import psycopg
from psycopg import sql

from etl_assets.errors import ConfigError, MissingObject
from etl_assets.io import catalog
from etl_assets.io.tables import TableRef
from etl_assets.io.typemap import PG_TYPES_ATTR, PgType, polars_dtype_for

if TYPE_CHECKING:  # loaded where a frame is built, not when this module is imported
    import polars as pl

FrameKind = Literal["pandas", "polars"]
FETCH_ROWS = 50_000


def read_table(
    conn: psycopg.Connection,
    table: TableRef,
    *,
    columns: Sequence[str] | None = None,
    partition: Any = None,
    kind: FrameKind = "polars",
    order_by: Sequence[str] | None = None,
) -> Any:
    """Read ``table`` (optionally only ``columns`` and the rows of ``partition``) as ``kind``."""
    if catalog.table_oid(conn, table) is None:
        raise MissingObject(f"Table {table} does not exist in the warehouse; materialize its asset first.")
    cols = catalog.columns(conn, table)
    types = {c.name: c.type for c in cols}
    names = list(columns) if columns else [c.name for c in cols]
    unknown = [n for n in names if n not in types]
    if unknown:
        raise MissingObject(f"Column(s) {unknown} requested from {table} do not exist; it has {list(types)}.")
    if kind not in ("pandas", "polars"):
        raise ConfigError(f"Unknown frame kind {kind!r}; use 'pandas' or 'polars'.")
    if all(_copyable(types[n]) for n in names):
        frame = _read_copy(conn, names, types, table, partition, order_by)
    else:
        frame = _read_rows(conn, names, types, table, partition, order_by)
    return frame if kind == "polars" else _to_pandas(frame, types)


def _where(
    query: sql.Composable, types: dict[str, PgType], partition: Any, order_by: Sequence[str] | None
) -> tuple[sql.Composable, tuple]:
    params: tuple = ()
    if partition is not None:
        from etl_assets.io.writer import partition_condition

        cond, params = partition_condition(partition, types)
        query += sql.SQL(" WHERE ") + cond
    if order_by:
        query += sql.SQL(" ORDER BY {}").format(sql.SQL(", ").join(sql.Identifier(c) for c in order_by))
    return query, params


def _read_rows(
    conn: psycopg.Connection,
    names: list[str],
    types: dict[str, PgType],
    table: TableRef,
    partition: Any,
    order_by: Sequence[str] | None,
) -> pl.DataFrame:
    """The fallback route: psycopg's row loaders (types the COPY route does not render)."""
    import polars as pl

    select = [
        sql.SQL("{}::text").format(sql.Identifier(n))
        if types[n].base in ("json", "jsonb", "uuid")
        else sql.Identifier(n)
        for n in names
    ]
    query, params = _where(
        sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(select), table.ident),
        types,
        partition,
        order_by,
    )
    values: list[list[Any]] = [[] for _ in names]
    with conn.cursor() as cur:
        cur.execute(query, params or None)
        while rows := cur.fetchmany(FETCH_ROWS):
            for i, col in enumerate(zip(*rows, strict=True)):
                values[i].extend(col)
    return pl.DataFrame([_series(n, values[i], types[n]) for i, n in enumerate(names)])


# --------------------------------------------------------------------------------------------------
# The COPY route for polars: one COPY ... TO STDOUT (FORMAT csv), parsed by polars, cast per column.
# Types whose text form polars cannot parse are rendered by PostgreSQL into one it can (epoch
# microseconds for times, hex for bytea, JSON for arrays); anything else uses the row route.
# --------------------------------------------------------------------------------------------------

_SCALAR_COPY = {
    "smallint",
    "integer",
    "bigint",
    "real",
    "double precision",
    "numeric",
    "text",
    "varchar",
    "char",
    "boolean",
    "date",
    "timestamp",
    "timestamptz",
    "time",
    "interval",
    "bytea",
    "uuid",
    "json",
    "jsonb",
}
_ARRAY_ELEMENTS = {"smallint", "integer", "bigint", "real", "double precision", "text", "varchar", "boolean"}


def _copyable(pg: PgType) -> bool:
    if pg.dims:
        return pg.element.base in _ARRAY_ELEMENTS
    return pg.base in _SCALAR_COPY


def _copy_select(name: str, pg: PgType) -> sql.Composable:
    col = sql.Identifier(name)
    if pg.dims:
        return sql.SQL("to_json({})::text").format(col)
    if pg.base in ("timestamp", "timestamptz", "time", "interval"):
        return sql.SQL("(extract(epoch from {}) * 1000000)::int8").format(col)
    if pg.base == "date":
        return sql.SQL("({} - DATE '1970-01-01')").format(col)
    if pg.base == "bytea":
        return sql.SQL("encode({}, 'hex')").format(col)
    return col


def _copy_cast(name: str, pg: PgType, raw: pl.Series) -> pl.Series:
    import polars as pl

    dtype = polars_dtype_for(pg)
    if pg.dims:
        return raw.str.json_decode(dtype).alias(name)
    base = pg.base
    if base == "boolean":
        return (raw == "t").alias(name)
    if base in ("timestamp", "timestamptz", "interval", "date"):
        if base == "date":
            return raw.cast(pl.Int32).cast(pl.Date).alias(name)
        return raw.cast(pl.Int64).cast(dtype).alias(name)
    if base == "time":
        return (raw.cast(pl.Int64) * 1000).cast(pl.Time).alias(name)
    if base == "bytea":
        return raw.str.decode("hex").alias(name)
    if base == "numeric":
        if pg.precision is None:
            scale = raw.str.extract(r"\.(\d+)$").str.len_chars().max() or 0
            return raw.cast(pl.Decimal(38, min(int(scale), 37))).alias(name)
        return raw.cast(dtype).alias(name)
    if base in ("real", "double precision", "smallint", "integer", "bigint"):
        return raw.cast(dtype).alias(name)
    return raw.alias(name)


def _read_copy(
    conn: psycopg.Connection,
    names: list[str],
    types: dict[str, PgType],
    table: TableRef,
    partition: Any,
    order_by: Sequence[str] | None,
) -> pl.DataFrame:
    """The COPY route: one ``COPY (SELECT ...) TO STDOUT (FORMAT csv)`` parsed by polars."""
    import polars as pl

    buf = io.BytesIO()
    query, params = _where(
        sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(_copy_select(n, types[n]) for n in names), table.ident
        ),
        types,
        partition,
        order_by,
    )
    # COPY takes no parameters: bind the partition bounds client-side (psycopg quotes them).
    bound = psycopg.ClientCursor(conn).mogrify(query, params) if params else query
    stmt = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(
        sql.SQL(bound) if isinstance(bound, str) else bound
    )
    with conn.cursor() as cur, cur.copy(stmt) as cp:
        for chunk in cp:
            buf.write(chunk)
    if buf.tell() == 0:
        return pl.DataFrame({n: pl.Series(n, [], dtype=polars_dtype_for(types[n])) for n in names})
    buf.seek(0)
    raw = pl.read_csv(
        buf,
        has_header=False,
        new_columns=[f"c{i}" for i in range(len(names))],
        schema={f"c{i}": pl.String for i in range(len(names))},
        quote_char='"',
    )
    return pl.DataFrame([_copy_cast(n, types[n], raw.get_column(f"c{i}")) for i, n in enumerate(names)])


def _series(name: str, values: list[Any], pg: PgType) -> pl.Series:
    import polars as pl

    dtype = polars_dtype_for(pg)
    if pg.base == "numeric" and pg.precision is None and not pg.dims:
        scale = max((-v.as_tuple().exponent for v in values if v is not None and v.is_finite()), default=0)
        dtype = pl.Decimal(38, min(max(scale, 0), 37))
    return pl.Series(name, values, dtype=dtype, strict=False)


def _to_pandas(frame: pl.DataFrame, types: dict[str, PgType]) -> Any:
    """pandas as pandas code writes it: Python objects where pandas has no dtype (dates, decimals,
    uuid, JSON, bytes, lists), nullable dtypes for integers/booleans with NULLs, numpy otherwise."""
    import uuid

    import pandas as pd
    import polars as pl

    data: dict[str, Any] = {}
    for name in frame.columns:
        pg = types[name]
        series = frame.get_column(name)
        if pg.base in ("json", "jsonb") and not pg.dims:
            vals: list[Any] = [None if v is None else json.loads(v) for v in series.to_list()]
            data[name] = pd.Series(vals, dtype=object, name=name)
        elif pg.base == "uuid" and not pg.dims:
            data[name] = pd.Series(
                [None if v is None else uuid.UUID(v) for v in series.to_list()], dtype=object, name=name
            )
        elif pg.dims or pg.base in ("date", "time", "timetz", "bytea", "numeric"):
            data[name] = pd.Series(series.to_list(), dtype=object, name=name)
        elif series.null_count() and (series.dtype.is_integer() or series.dtype == pl.Boolean):
            # numpy ints/bools cannot hold NULL (pandas would turn them into float/object)
            nullable = "boolean" if series.dtype == pl.Boolean else str(series.dtype).capitalize()
            data[name] = pd.Series(pd.array(series.to_list(), dtype=nullable), name=name)
        else:
            data[name] = series.to_pandas()
    out = pd.DataFrame(data, columns=list(frame.columns))
    # numeric(p,s) columns are Decimal objects, which do not carry p and s: keep them beside the
    # frame so that writing it (or a frame derived from it) gives the column the same type.
    out.attrs[PG_TYPES_ATTR] = {
        n: types[n].sql()
        for n in frame.columns
        if types[n].base == "numeric" and types[n].precision is not None and not types[n].dims
    }
    return out
