"""The type mapping: every type round-trips through PostgreSQL with its edge values; schema evolution."""

from __future__ import annotations

import datetime as dt
import math
import uuid
from decimal import Decimal

import pandas as pd
import polars as pl
import psycopg
import pytest
from psycopg import sql

from etl_assets.errors import SchemaMismatch
from etl_assets.io.reader import read_table
from etl_assets.io.tables import TableRef
from etl_assets.io.typemap import PgType, to_polars
from etl_assets.io.writer import write_frame

UTC = dt.UTC
EDGE = pl.DataFrame(
    {
        "id": [1, 2, 3],
        "i16": pl.Series([-32768, 32767, None], dtype=pl.Int16),
        "i32": pl.Series([-(2**31), 2**31 - 1, None], dtype=pl.Int32),
        "i64": pl.Series([-(2**63), 2**63 - 1, None], dtype=pl.Int64),
        "f32": pl.Series([0.1, float("inf"), None], dtype=pl.Float32),
        "f64": [float("nan"), float("-inf"), 5e-324],
        "dec": pl.Series([Decimal("-99999999.99"), Decimal("0.01"), None], dtype=pl.Decimal(10, 2)),
        "txt": ["", None, 'a,b "c"\n\\d\té'],
        "flag": [True, False, None],
        "day": [dt.date(1, 1, 1), dt.date(9999, 12, 31), None],
        "tod": [dt.time(0, 0), dt.time(23, 59, 59, 999999), None],
        "ts": [dt.datetime(1970, 1, 1), dt.datetime(2262, 4, 11, 23, 47, 16, 854775), None],
        "tstz": pl.Series(
            [dt.datetime(2024, 3, 31, 1, 30, tzinfo=UTC), dt.datetime(1900, 1, 1, tzinfo=UTC), None],
            dtype=pl.Datetime("us", "UTC"),
        ),
        "span": [dt.timedelta(0), dt.timedelta(days=-3, microseconds=1), None],
        "raw": [b"", b"\x00\xff\\x", None],
        "ints": [[1, None, 3], [], None],
        "words": [["a,b", 'q"x', "", None, "NULL", "{}"], [], None],
        "doc": [{"k": "v", "n": 1}, {"k": None, "n": None}, None],
    }
)


@pytest.fixture
def conn(warehouse_dsn: str):
    with psycopg.connect(warehouse_dsn, autocommit=True) as c:
        yield c


def _types(conn, t: TableRef) -> dict[str, str]:
    return dict(
        conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) "
            "AND attnum > 0 AND NOT attisdropped",
            (t.regclass_text,),
        ).fetchall()
    )


def test_polars_types_map_and_round_trip_exactly(conn, fresh_schema):
    t = TableRef(fresh_schema, "edge")
    write_frame(conn, EDGE, t, "truncate_insert", primary_key=["id"])
    assert _types(conn, t) == {
        "id": "bigint",
        "i16": "smallint",
        "i32": "integer",
        "i64": "bigint",
        "f32": "real",
        "f64": "double precision",
        "dec": "numeric(10,2)",
        "txt": "text",
        "flag": "boolean",
        "day": "date",
        "tod": "time without time zone",
        "ts": "timestamp without time zone",
        "tstz": "timestamp with time zone",
        "span": "interval",
        "raw": "bytea",
        "ints": "bigint[]",
        "words": "text[]",
        "doc": "jsonb",
    }
    # What PostgreSQL holds, checked in SQL (not only through our reader).
    got = conn.execute(
        sql.SQL(
            "SELECT txt IS NULL, txt = '', f64::text, f32::text, raw, words, doc, "
            "span = interval '-3 days 0.000001 seconds' FROM {} ORDER BY id"
        ).format(t.ident)
    ).fetchall()
    assert got[0][:4] == (False, True, "NaN", "0.1")
    assert got[1][:4] == (True, None, "-Infinity", "Infinity")
    assert got[1][4] == b"\x00\xff\\x"
    assert got[0][5] == ["a,b", 'q"x', "", None, "NULL", "{}"]
    assert got[0][6] == {"k": "v", "n": 1} and got[1][6] == {"k": None, "n": None}
    assert got[1][7] is True
    back = read_table(conn, t, kind="polars").sort("id")
    expected = EDGE.with_columns(
        pl.col("doc").struct.json_encode().str.replace_all(",", ", ").str.replace_all(":", ": ")
    )
    for name in EDGE.columns:
        if name == "f64":
            assert math.isnan(back["f64"][0]) and back["f64"][1:].to_list() == EDGE["f64"][1:].to_list()
        elif name == "doc":
            assert back["doc"].to_list() == expected["doc"].to_list()
        else:
            assert back[name].to_list() == EDGE[name].to_list(), name
            assert back[name].dtype == EDGE[name].dtype, name


def test_pandas_types_round_trip(conn, fresh_schema):
    t = TableRef(fresh_schema, "pandas_edge")
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    df = pd.DataFrame(
        {
            "id": pd.array([1, 2, 3], dtype="Int64"),
            "n": pd.array([None, 7, -1], dtype="Int32"),
            "txt": pd.array(["", None, "x"], dtype="str"),
            "f": [float("nan"), float("inf"), 1.5],
            "u": [u, None, uuid.UUID(int=0)],
            "doc": [{"a": [1, 2]}, None, {"b": {"c": None}}],
            "dec": [Decimal("1.10"), None, Decimal("-3.25")],
            "ts": pd.to_datetime(["2024-01-01 10:00", None, "1999-12-31 23:59:59.123456"], format="ISO8601"),
            "tstz": pd.to_datetime(
                ["2024-01-01 10:00+02:00", None, "2024-06-01 00:00Z"], utc=True, format="ISO8601"
            ),
            "span": pd.to_timedelta(["1 day", None, "-5us"]),
            "day": [dt.date(2024, 2, 29), None, dt.date(1, 1, 1)],
            "ints": [[1, 2], None, []],
            "raw": [b"\x01", None, b""],
        }
    )
    write_frame(conn, df, t, "truncate_insert", primary_key=["id"])
    types = _types(conn, t)
    assert types["u"] == "uuid" and types["doc"] == "jsonb" and types["n"] == "integer"
    assert types["tstz"] == "timestamp with time zone" and types["ts"] == "timestamp without time zone"
    back = read_table(conn, t, kind="pandas").sort_values("id").reset_index(drop=True)
    assert back["txt"].tolist()[0] == "" and pd.isna(back["txt"].tolist()[1])
    assert back["u"].tolist() == [u, None, uuid.UUID(int=0)]
    assert back["doc"].tolist() == [{"a": [1, 2]}, None, {"b": {"c": None}}]
    assert back["dec"].tolist()[0] == Decimal("1.10") and back["dec"].tolist()[2] == Decimal("-3.25")
    assert math.isnan(back["f"][0]) and back["f"][1] == math.inf
    assert back["ts"][2] == pd.Timestamp("1999-12-31 23:59:59.123456")
    assert back["tstz"][0] == pd.Timestamp("2024-01-01 08:00", tz="UTC")
    assert back["span"][2] == pd.Timedelta(microseconds=-5)
    assert back["day"].tolist()[0] == dt.date(2024, 2, 29)
    assert back["ints"].tolist() == [[1, 2], None, []]
    assert back["raw"].tolist() == [b"\x01", None, b""]
    assert back["n"].tolist()[1:] == [7, -1]
    # polars reads the same table: uuid and jsonb as text
    pl_back = read_table(conn, t, kind="polars", columns=["id", "u"]).sort("id")
    assert pl_back["u"].to_list() == [str(u), None, str(uuid.UUID(int=0))]


def test_schema_evolution_adds_columns_and_widens_safely(conn, fresh_schema):
    t = TableRef(fresh_schema, "evolving")
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (id integer PRIMARY KEY, qty integer, price numeric(6,2), "
            "code varchar(3), ratio real)"
        ).format(t.ident)
    )
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 5, 1.50, 'abc', 0.5)").format(t.ident))
    df = pl.DataFrame(
        {
            "id": [2],
            "qty": pl.Series([2**40], dtype=pl.Int64),
            "price": pl.Series([Decimal("123456.789")], dtype=pl.Decimal(12, 3)),
            "code": ["longer code"],
            "ratio": [0.25],
            "note": ["new column"],
        }
    )
    r = write_frame(conn, df, t, "upsert", primary_key=["id"])
    # id is Int64 in the frame but its values fit integer: no rewrite; qty's value needs bigint.
    assert _types(conn, t) == {
        "id": "integer",
        "qty": "bigint",
        "price": "numeric(12,3)",
        "code": "text",
        "ratio": "double precision",
        "note": "text",
    }
    assert sorted(r.widened_columns) == ["code", "price", "qty", "ratio"] and r.added_columns == ["note"]
    assert conn.execute(sql.SQL("SELECT * FROM {} ORDER BY id").format(t.ident)).fetchall() == [
        (1, 5, Decimal("1.500"), "abc", 0.5, None),
        (2, 2**40, Decimal("123456.789"), "longer code", 0.25, "new column"),
    ]
    # integer column receiving decimals widens to numeric
    write_frame(
        conn,
        pl.DataFrame({"id": [3], "qty": pl.Series([Decimal("1.5")], dtype=pl.Decimal(5, 1))}),
        t,
        "insert",
    )
    assert _types(conn, t)["qty"] == "numeric(20,1)"
    # values that fit the existing types change nothing
    write_frame(conn, pl.DataFrame({"id": [4], "code": ["ok"], "price": [Decimal("1.5")]}), t, "insert")
    assert _types(conn, t)["price"] == "numeric(12,3)"


def test_schema_evolution_refuses_unsafe_change_naming_column_and_types(conn, fresh_schema):
    t = TableRef(fresh_schema, "strict")
    write_frame(conn, pl.DataFrame({"id": [1], "When": [dt.date(2024, 1, 1)]}), t, "insert")
    with pytest.raises(SchemaMismatch, match=r"Column 'When' of .*strict is date but the frame has bigint"):
        write_frame(conn, pl.DataFrame({"id": [2], "When": [20240101]}), t, "insert")
    with pytest.raises(SchemaMismatch, match=r"'id' .* is bigint but the frame has double precision"):
        write_frame(conn, pl.DataFrame({"id": [2.5]}), t, "insert")
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(t.ident)).fetchone() == (1,)


def test_pg_type_parse_and_render():
    for text in [
        "numeric(12,2)",
        "character varying(20)",
        "timestamp(3) without time zone",
        "integer[]",
        "timestamp with time zone",
        "text[][]",
        "numeric",
    ]:
        assert PgType.parse(text).sql() == text


def test_numbers_go_into_wider_number_columns_unchanged(conn, fresh_schema):
    t = TableRef(fresh_schema, "numbers")
    conn.execute(
        sql.SQL("CREATE TABLE {} (id bigint, price numeric(8,3), ratio double precision)").format(t.ident)
    )
    write_frame(conn, pl.DataFrame({"id": [1], "price": [1.25], "ratio": [3]}), t, "insert")
    assert _types(conn, t) == {"id": "bigint", "price": "numeric(8,3)", "ratio": "double precision"}
    assert conn.execute(sql.SQL("SELECT price, ratio FROM {}").format(t.ident)).fetchone() == (
        Decimal("1.250"),
        3.0,
    )


def test_unsigned_and_128_bit_integers_go_to_numeric(conn, fresh_schema):
    t = TableRef(fresh_schema, "wide_ints")
    df = pl.DataFrame(
        {
            "u64": pl.Series([2**64 - 1, 0], dtype=pl.UInt64),
            "i128": pl.Series([-(2**100), 2**100], dtype=pl.Int128),
            "u32": pl.Series([2**32 - 1, 0], dtype=pl.UInt32),
        }
    )
    write_frame(conn, df, t, "insert")
    assert _types(conn, t) == {"u64": "numeric(20,0)", "i128": "numeric(39,0)", "u32": "bigint"}
    assert conn.execute(sql.SQL("SELECT u64, i128, u32 FROM {} ORDER BY u32").format(t.ident)).fetchall() == [
        (Decimal(0), Decimal(2**100), 0),
        (Decimal(2**64 - 1), Decimal(-(2**100)), 2**32 - 1),
    ]


# --------------------------------------------------------------------------------------------------
# pandas Decimal columns: typed (vectorised) conversion to the target's numeric(p,s), exact fallback
# --------------------------------------------------------------------------------------------------


def _decimals(values: list) -> pd.DataFrame:
    return pd.DataFrame({"d": pd.Series(values, dtype=object)})


def test_pandas_decimals_take_the_target_numeric_type_exactly():
    values = [Decimal("-9999999999.99"), Decimal("0.1"), None, Decimal("7"), Decimal("NaN"), 3]
    out, hints = to_polars(_decimals(values), {"d": PgType("numeric", 12, 2)})
    assert out["d"].dtype == pl.Decimal(12, 2) and hints == {}
    # pandas semantics: Decimal NaN is a missing value (as without a target type)
    assert out["d"].to_list() == [Decimal("-9999999999.99"), Decimal("0.10"), None, Decimal("7.00"), None, 3]
    assert to_polars(_decimals(values))[0]["d"].to_list() == out["d"].to_list()


@pytest.mark.parametrize(
    "value, reason",
    [
        (Decimal("123456.78"), "more integer digits than numeric(7,2)"),
        (Decimal("1.234"), "a finer scale"),
        (Decimal("1E-40"), "more than 38 digits below the scale (pyarrow's decimal128 would give 0)"),
        (Decimal("0." + "0" * 44 + "5"), "far below the scale"),
    ],
)
def test_values_that_do_not_fit_the_target_type_keep_the_exact_path(value, reason):
    values = [Decimal("1.50"), value]
    out, _ = to_polars(_decimals(values), {"d": PgType("numeric", 7, 2)})
    assert out["d"].dtype != pl.Decimal(7, 2), reason
    assert [Decimal(str(v)) for v in out["d"].to_list()] == values, reason


def test_a_float_among_decimals_is_handled_as_without_a_target_type():
    frame = _decimals([Decimal("1.50"), 2.5])
    try:
        expected = to_polars(frame)[0]["d"].to_list()
    except SchemaMismatch:
        with pytest.raises(SchemaMismatch):
            to_polars(frame, {"d": PgType("numeric", 7, 2)})
    else:
        assert to_polars(frame, {"d": PgType("numeric", 7, 2)})[0]["d"].to_list() == expected


@pytest.mark.parametrize(
    "target",
    [PgType("numeric", 40, 2), PgType("numeric"), PgType("numeric", 3, 5), PgType.parse("numeric(5,-2)")],
)
def test_numeric_types_without_a_128_bit_decimal_keep_the_exact_path(target):
    values = [Decimal("1.25"), None, Decimal("-300")]
    out, _ = to_polars(_decimals(values), {"d": target})
    assert out["d"].dtype == to_polars(_decimals(values))[0]["d"].dtype
    assert out["d"].to_list() == [Decimal("1.25"), None, Decimal("-300.00")]


def test_decimals_beyond_38_digits_go_as_exact_numeric_text():
    big = Decimal("1." + "1" * 45)
    out, hints = to_polars(_decimals([big, None, Decimal("-2")]))
    assert out["d"].dtype == pl.String and hints["d"] == PgType("numeric")
    assert [None if v is None else Decimal(v) for v in out["d"].to_list()] == [big, None, Decimal("-2")]


def test_pandas_decimal_upsert_round_trips_exactly_into_existing_numeric(conn, fresh_schema):
    t = TableRef(fresh_schema, "money")
    conn.execute(
        sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, amount numeric(20,4), big numeric)").format(t.ident)
    )
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 1, 1), (2, 2, 2)").format(t.ident))
    huge = Decimal("9" * 50 + "." + "1" * 10)
    df = pd.DataFrame(
        {
            "id": [1, 2, 3, 4],
            "amount": pd.Series(
                [Decimal("1.0000"), Decimal("-9999999999999999.9999"), None, Decimal("0.0001")], dtype=object
            ),
            "big": pd.Series([Decimal("1"), huge, Decimal("1E-60"), None], dtype=object),
        }
    )
    r = write_frame(conn, df, t, "upsert", primary_key=["id"])
    assert (r.inserted, r.updated, r.unchanged) == (2, 1, 1)
    assert _types(conn, t)["amount"] == "numeric(20,4)" and _types(conn, t)["big"] == "numeric"
    got = conn.execute(sql.SQL("SELECT id, amount, big FROM {} ORDER BY id").format(t.ident)).fetchall()
    assert got == [
        (1, Decimal("1.0000"), Decimal("1")),
        (2, Decimal("-9999999999999999.9999"), huge),
        (3, None, Decimal("1E-60")),
        (4, Decimal("0.0001"), None),
    ]
    # the same frame again: nothing changed
    again = write_frame(conn, df, t, "upsert", primary_key=["id"])
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 4)
