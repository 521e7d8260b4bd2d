"""Loading a warehouse table (some columns, one partition) back as a pandas or polars frame.

Column dtypes come from the table's PostgreSQL types through :mod:`etl_assets.io.typemap`, so an
empty result still has the right schema. uuid and json columns load as text in polars (it has no
such dtypes) and as ``uuid.UUID`` / parsed JSON objects in pandas ``object`` columns, which is what
pandas code passes back in; lists load as lists.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

import polars as pl
import psycopg
from psycopg import sql

from etl_assets.errors import ConfigError, MissingObject
from etl_assets.io import catalog
from etl_assets.io.tables import TableRef
from etl_assets.io.typemap import PgType, polars_dtype_for

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
    select = []
    for n in names:
        t = types[n]
        if (t.base in ("json", "jsonb") and kind == "polars") or (t.base == "uuid" and kind == "polars"):
            select.append(sql.SQL("{}::text").format(sql.Identifier(n)))
        else:
            select.append(sql.Identifier(n))
    query = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(select), table.ident)
    params: tuple = ()
    if partition is not None:
        from etl_assets.io.writer import partition_condition

        cond, params = partition_condition(partition, types)
        query += sql.SQL(" WHERE ") + cond
    if order_by:
        query += sql.SQL(" ORDER BY {}").format(sql.SQL(", ").join(sql.Identifier(c) for c in order_by))
    values: list[list[Any]] = [[] for _ in names]
    with conn.cursor() as cur:
        cur.execute(query, params)
        while True:
            rows = cur.fetchmany(FETCH_ROWS)
            if not rows:
                break
            for i, col in enumerate(zip(*rows, strict=True)):
                values[i].extend(col)
    if kind == "polars":
        return pl.DataFrame([_series(n, values[i], types[n]) for i, n in enumerate(names)])
    if kind == "pandas":
        return _pandas(names, values, types)
    raise ConfigError(f"Unknown frame kind {kind!r}; use 'pandas' or 'polars'.")


def _series(name: str, values: list[Any], pg: PgType) -> pl.Series:
    dtype = polars_dtype_for(pg)
    if pg.base == "numeric" and pg.precision is None and not pg.dims:
        scale = max((-v.as_tuple().exponent for v in values if v is not None and v.is_finite()), default=0)
        dtype = pl.Decimal(38, min(max(scale, 0), 37))
    return pl.Series(name, values, dtype=dtype, strict=False)


def _pandas(names: list[str], values: list[list[Any]], types: dict[str, PgType]) -> Any:
    import pandas as pd

    data: dict[str, Any] = {}
    for i, n in enumerate(names):
        pg = types[n]
        if pg.dims or pg.base in ("json", "jsonb", "uuid", "date", "time", "timetz", "bytea", "numeric"):
            if pg.base == "json":
                vals = [
                    None if v is None else (json.loads(v) if isinstance(v, str) else v) for v in values[i]
                ]
            else:
                vals = values[i]
            data[n] = pd.Series(vals, dtype=object, name=n)
        else:
            data[n] = _series(n, values[i], pg).to_pandas()
    return pd.DataFrame(data, columns=names)
