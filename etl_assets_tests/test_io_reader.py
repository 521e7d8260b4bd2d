"""read_table: columns, partitions, empty results, and the same data through both frame types."""

from __future__ import annotations

import datetime as dt

import polars as pl
import psycopg
import pytest

from etl_assets.errors import MissingObject
from etl_assets.io.reader import read_table
from etl_assets.io.tables import TableRef
from etl_assets.io.writer import PartitionWindow, write_frame

UTC = dt.UTC


@pytest.fixture
def conn(warehouse_dsn: str):
    with psycopg.connect(warehouse_dsn, autocommit=True) as c:
        yield c


def _events(conn, schema: str) -> TableRef:
    t = TableRef(schema, "Events 'x'")
    df = pl.DataFrame(
        {
            "id": [1, 2, 3, 4],
            "at": [
                dt.datetime(2024, 1, 1, 23, tzinfo=UTC),
                dt.datetime(2024, 1, 2, tzinfo=UTC),
                dt.datetime(2024, 1, 2, 23, 59, tzinfo=UTC),
                dt.datetime(2024, 1, 3, tzinfo=UTC),
            ],
            "kind": ["a", "b", "b", "c"],
            "tags": [["x"], [], None, ["y", "z"]],
        }
    )
    write_frame(conn, df, t, "truncate_insert", primary_key=["id"])
    return t


@pytest.mark.parametrize("kind", ["polars", "pandas"])
def test_partition_window_and_columns(conn, fresh_schema, kind):
    t = _events(conn, fresh_schema)
    window = PartitionWindow(
        "at", start=dt.datetime(2024, 1, 2, tzinfo=UTC), end=dt.datetime(2024, 1, 3, tzinfo=UTC)
    )
    got = read_table(conn, t, kind=kind, partition=window, columns=["id", "kind"], order_by=["id"])
    assert list(got.columns) == ["id", "kind"]
    as_rows = got.to_dicts() if kind == "polars" else got.to_dict("records")
    assert as_rows == [{"id": 2, "kind": "b"}, {"id": 3, "kind": "b"}]
    static = read_table(conn, t, kind=kind, partition=PartitionWindow("kind", values=("c",)), order_by=["id"])
    ids = static["id"].to_list() if kind == "polars" else static["id"].tolist()
    assert ids == [4]


def test_empty_result_keeps_dtypes_and_missing_things_are_named(conn, fresh_schema):
    t = _events(conn, fresh_schema)
    window = PartitionWindow(
        "at", start=dt.datetime(2030, 1, 1, tzinfo=UTC), end=dt.datetime(2030, 1, 2, tzinfo=UTC)
    )
    empty = read_table(conn, t, kind="polars", partition=window)
    assert empty.height == 0
    assert empty.schema == pl.Schema(
        {"id": pl.Int64, "at": pl.Datetime("us", "UTC"), "kind": pl.String, "tags": pl.List(pl.String)}
    )
    with pytest.raises(MissingObject, match=r"Column\(s\) \['nope'\]"):
        read_table(conn, t, columns=["nope"])
    with pytest.raises(MissingObject, match="does not exist in the warehouse"):
        read_table(conn, TableRef(fresh_schema, "absent"))


def test_pandas_keeps_integers_and_booleans_with_nulls_exact(conn, fresh_schema):
    t = TableRef(fresh_schema, "nullable")
    big = 2**62 + 1  # not representable as float64
    write_frame(conn, pl.DataFrame({"id": [1, 2], "n": [big, None], "ok": [True, None]}), t, "insert")
    got = read_table(conn, t, kind="pandas", order_by=["id"])
    assert str(got["n"].dtype) == "Int64" and str(got["ok"].dtype) == "boolean"
    assert got["n"][0] == big and got["n"].isna().tolist() == [False, True]
    assert got["ok"].tolist()[0] is True and got["ok"].isna().tolist() == [False, True]
    assert str(got["id"].dtype) == "int64"


def test_pandas_read_keeps_numeric_precision_for_the_next_write(conn, fresh_schema):
    """Decimal objects carry no column precision: the pandas read records numeric(p,s) in
    ``attrs``, so a frame derived from it is stored as numeric(12,2) like the polars path, not as the
    smallest precision its values need; values that outgrew the type keep the inferred one."""
    from decimal import Decimal

    src = TableRef(fresh_schema, "prices")
    create = "CREATE TABLE {} (id int PRIMARY KEY, amount numeric(12,2))"
    conn.execute(psycopg.sql.SQL(create).format(src.ident))
    conn.execute(psycopg.sql.SQL("INSERT INTO {} VALUES (1, 3.01), (2, 150.5), (3, NULL)").format(src.ident))
    frame = read_table(conn, src, kind="pandas")
    kept = frame.loc[frame["id"] < 3].copy()  # an ordinary pandas derivation
    grown = frame.assign(amount=[Decimal("12345678901234.50"), None, None])
    write_frame(conn, kept, TableRef(fresh_schema, "kept"), "truncate_insert")
    write_frame(conn, grown, TableRef(fresh_schema, "grown"), "truncate_insert")
    polars_copy = read_table(conn, src, kind="polars")
    write_frame(conn, polars_copy, TableRef(fresh_schema, "via_polars"), "truncate_insert")
    amount = (
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass "
        "AND attname = 'amount'"
    )
    typ = {t: conn.execute(amount, (f"{fresh_schema}.{t}",)).fetchone()[0]
           for t in ("kept", "grown", "via_polars")}
    assert typ == {"kept": "numeric(12,2)", "grown": "numeric(16,2)", "via_polars": "numeric(12,2)"}
    assert conn.execute(psycopg.sql.SQL("SELECT id, amount FROM {} ORDER BY id").format(
        TableRef(fresh_schema, "kept").ident)).fetchall() == [(1, Decimal("3.01")), (2, Decimal("150.50"))]
