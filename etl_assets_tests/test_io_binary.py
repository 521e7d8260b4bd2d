"""The binary COPY route writes exactly what the CSV route writes, edge values included."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import polars as pl
import psycopg
import pytest
from psycopg import sql

from etl_assets.io import binary
from etl_assets.io.bulk import copy_frame
from etl_assets.io.tables import TableRef
from etl_assets.io.writer import ensure_table, write_frame

UTC = dt.UTC
EDGE = pl.DataFrame(
    {
        "i16": pl.Series([-32768, 32767, None, 0], dtype=pl.Int16),
        "i32": pl.Series([-(2**31), 2**31 - 1, None, 0], dtype=pl.Int32),
        "i64": pl.Series([-(2**63), 2**63 - 1, None, 0], dtype=pl.Int64),
        "f32": pl.Series([float("nan"), float("-inf"), None, 0.1], dtype=pl.Float32),
        "f64": [float("inf"), -0.0, None, 5e-324],
        "flag": [True, False, None, True],
        "day": [dt.date(1, 1, 1), dt.date(9999, 12, 31), None, dt.date(2000, 1, 1)],
        "ts": [
            dt.datetime(1970, 1, 1),
            dt.datetime(1999, 12, 31, 23, 59, 59, 999999),
            None,
            dt.datetime(2262, 4, 11, 23, 47, 16, 854775),
        ],
        "tstz": pl.Series(
            [
                dt.datetime(1900, 1, 1, tzinfo=UTC),
                dt.datetime(2024, 3, 31, 1, 30, tzinfo=UTC),
                None,
                dt.datetime(2000, 1, 1, tzinfo=UTC),
            ],
            dtype=pl.Datetime("us", "UTC"),
        ),
        "d2": pl.Series(
            [Decimal("-99999999999999.99"), Decimal("0.01"), None, Decimal("0")], dtype=pl.Decimal(16, 2)
        ),
        "d5": pl.Series(
            [Decimal("-123.45678"), Decimal("0.00001"), None, Decimal("99999.99999")], dtype=pl.Decimal(10, 5)
        ),
        "d0": pl.Series(
            [Decimal("-1"), Decimal("123456789012345678"), None, Decimal("10000")], dtype=pl.Decimal(18, 0)
        ),
        "txt": ["", 'ünïcödé \\ " , \n \t', None, "x" * 10_000],
        "ord": [1, 2, 3, 4],
    }
)


@pytest.fixture
def conn(warehouse_dsn: str):
    with psycopg.connect(warehouse_dsn, autocommit=True) as c:
        yield c


def test_binary_and_csv_routes_store_identical_rows(conn, fresh_schema):
    stored = {}
    for route in ("binary", "csv"):
        t = TableRef(fresh_schema, f"via_{route}")
        shape = ensure_table(conn, EDGE, t)
        assert binary.supports(EDGE, shape.types)
        copy_frame(conn, EDGE, t, targets=shape.types, route=route, piece_rows=3)
        cols = [c if c not in ("f32", "f64") else f"{c}::text" for c in EDGE.columns]  # NaN != NaN in Python
        stored[route] = conn.execute(
            sql.SQL("SELECT {} FROM {} ORDER BY ord").format(sql.SQL(", ").join(map(sql.SQL, cols)), t.ident)
        ).fetchall()
    assert stored["binary"] == stored["csv"]
    first, second, nulls, fourth = stored["binary"]
    assert nulls[:13] == (None,) * 13
    assert first[3:5] == ("NaN", "Infinity") and second[3:5] == ("-Infinity", "-0")
    assert first[9:12] == (Decimal("-99999999999999.99"), Decimal("-123.45678"), Decimal("-1"))
    assert fourth[12] == "x" * 10_000 and first[12] == "" and second[12] == 'ünïcödé \\ " , \n \t'


def test_auto_route_falls_back_to_csv_when_types_differ(conn, fresh_schema):
    t = TableRef(fresh_schema, "narrow")
    conn.execute(sql.SQL("CREATE TABLE {} (id integer, v varchar(5), n numeric)").format(t.ident))
    # Int64 into integer; a Decimal too wide for one int64 once padded to base-10000 digits
    df = pl.DataFrame(
        {"id": [1, 2], "v": ["a", None], "n": pl.Series([Decimal("1.5"), None], dtype=pl.Decimal(18, 2))}
    )
    shape = ensure_table(conn, df, t)
    assert not binary.supports(df, shape.types)
    write_frame(conn, df, t, "insert")
    assert conn.execute(sql.SQL("SELECT * FROM {} ORDER BY id").format(t.ident)).fetchall() == [
        (1, "a", Decimal("1.5")),
        (2, None, None),
    ]


def test_rows_with_nulls_in_every_column_and_sliced_pieces_match_csv(conn, fresh_schema):
    """Pieces start mid-frame (Arrow offsets), NULLs sit in every column at different rows, a text
    column is NULL throughout: the row layout must still match the CSV route's rows exactly."""
    n = 2_000
    df = pl.DataFrame(
        {
            "ord": list(range(n)),
            "i": [None if k % 3 == 0 else k - 1000 for k in range(n)],
            "f": [None if k % 5 == 0 else k / 7 for k in range(n)],
            "b": [None if k % 4 == 0 else k % 2 == 0 for k in range(n)],
            "t": [None if k % 7 == 0 else "é" * (k % 11) for k in range(n)],
            "none": pl.Series([None] * n, dtype=pl.String),
            "d": pl.Series(
                [None if k % 6 == 0 else Decimal(k) / 100 for k in range(n)], dtype=pl.Decimal(8, 2)
            ),
        }
    )
    stored = {}
    for route in ("binary", "csv"):
        t = TableRef(fresh_schema, f"nulls_{route}")
        shape = ensure_table(conn, df, t)
        assert binary.supports(df, shape.types)
        copy_frame(conn, df, t, targets=shape.types, route=route, piece_rows=333)
        stored[route] = conn.execute(sql.SQL("SELECT * FROM {} ORDER BY ord").format(t.ident)).fetchall()
    assert stored["binary"] == stored["csv"] and len(stored["binary"]) == n
    assert stored["binary"][1] == (1, -999, 1 / 7, False, "é", None, Decimal("0.01"))
