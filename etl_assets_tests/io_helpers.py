"""Helpers shared by the IO tests: frames in both flavours and exact table contents."""

from __future__ import annotations

from typing import Any

import pandas as pd
import polars as pl
import psycopg
from psycopg import sql

from etl_assets.io.tables import TableRef

FLAVOURS = ("pandas", "polars")


def frame(flavour: str, data: dict[str, list[Any]], schema: dict[str, Any] | None = None) -> Any:
    """The same rows as a polars frame or (converted through Arrow) a pandas frame."""
    df = pl.DataFrame(data, schema=schema, strict=False)
    if flavour == "polars":
        return df
    out = df.to_pandas()
    for name, dtype in df.schema.items():
        if dtype == pl.Date:  # pandas keeps dates as datetime.date objects, not datetime64
            out[name] = pd.Series(df.get_column(name).to_list(), dtype=object)
    return out


def rows(conn: psycopg.Connection, table: TableRef, order: str | list[str] = "id") -> list[tuple]:
    keys = [order] if isinstance(order, str) else order
    return conn.execute(
        sql.SQL("SELECT * FROM {} ORDER BY {}").format(
            table.ident, sql.SQL(", ").join(map(sql.Identifier, keys))
        )
    ).fetchall()


def leftovers(conn: psycopg.Connection) -> list[str]:
    """Staging or half-built tables the IO layer might have left behind."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT relname FROM pg_class "
            "WHERE relname LIKE 'etl\\_stage\\_%' OR relname LIKE '%\\_\\_etl\\_new\\_%'"
        )
    ]
