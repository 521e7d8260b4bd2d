"""PostgresIOManager through dagster.materialize() with real assets, pandas and polars, partitioned."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pandas as pd
import polars as pl
import psycopg
import pytest
from psycopg import sql

from etl_assets.db import PostgresResource
from etl_assets.io.batch import LoadBatch
from etl_assets.io.frametypes import PandasFrame, PolarsFrame
from etl_assets.io.manager import PostgresIOManager
from etl_assets.io.tables import TableRef
from etl_assets_tests.io_helpers import rows


@pytest.fixture
def conn(warehouse_dsn: str):
    with psycopg.connect(warehouse_dsn, autocommit=True) as c:
        yield c


@pytest.fixture
def io_manager(warehouse_dsn: str) -> PostgresIOManager:
    return PostgresIOManager(warehouse=PostgresResource(dsn=warehouse_dsn))


def test_pandas_and_polars_assets_store_and_load_by_annotation(io_manager, conn, fresh_schema):
    seen: dict[str, object] = {}

    @dg.asset(key_prefix=[fresh_schema], metadata={"write_mode": "upsert", "primary_key": ["id"]})
    def customers() -> pd.DataFrame:
        return pd.DataFrame({"id": [1, 2, 2], "name": ["ann", "bob", "bobby"]})

    @dg.asset(key_prefix=[fresh_schema])
    def orders() -> pl.DataFrame:
        return pl.DataFrame({"id": [10, 11], "customer_id": [1, 2], "amount": [1.5, 2.5]})

    @dg.asset(
        key_prefix=[fresh_schema],
        ins={
            "customers": dg.AssetIn(key=[fresh_schema, "customers"]),
            "orders": dg.AssetIn(
                key=[fresh_schema, "orders"], metadata={"columns": ["customer_id", "amount"]}
            ),
        },
        metadata={"write_mode": "swap"},
    )
    def totals(customers: pl.DataFrame, orders: pd.DataFrame) -> pl.DataFrame:
        seen["customers"], seen["orders"] = type(customers), list(orders.columns)
        o = pl.from_pandas(orders)
        return (
            customers.join(o, left_on="id", right_on="customer_id")
            .group_by("name")
            .agg(pl.col("amount").sum())
            .sort("name")
        )

    result = dg.materialize([customers, orders, totals], resources={"io_manager": io_manager})
    assert result.success
    assert seen == {"customers": pl.DataFrame, "orders": ["customer_id", "amount"]}
    assert rows(conn, TableRef(fresh_schema, "customers")) == [(1, "ann"), (2, "bobby")]
    assert rows(conn, TableRef(fresh_schema, "totals"), "name") == [("ann", 1.5), ("bobby", 2.5)]
    mats = {
        m.asset_key.path[-1]: m.metadata
        for m in (e.event_specific_data.materialization for e in result.get_asset_materialization_events())
    }
    meta = mats["customers"]
    assert meta["dagster/row_count"].value == 2
    assert meta["dagster/table_name"].value == f"{fresh_schema}.customers"
    assert meta["write_mode"].value == "upsert"
    assert (meta["rows_inserted"].value, meta["duplicate_keys_dropped"].value) == (2, 1)
    assert [c.name for c in meta["dagster/column_schema"].schema.columns] == ["id", "name"]
    assert mats["totals"]["write_mode"].value == "swap"


def test_inputs_load_as_the_frame_type_annotations_name(io_manager, conn, fresh_schema):
    """PolarsFrame/PandasFrame (etl_assets.io.frametypes: no import when the Definitions load) and
    pl.LazyFrame each get their kind of frame, with the stored rows."""
    seen: dict[str, object] = {}

    def items(name: str) -> dg.AssetsDefinition:
        @dg.asset(key=[fresh_schema, name])
        def one() -> pl.DataFrame:
            return pl.DataFrame({"id": [1, 2], "name": ["a", "b"]})

        return one

    upstream = [items(f"items_{name}") for name in ("p", "d", "z")]

    @dg.asset(key_prefix=[fresh_schema], ins={n: dg.AssetIn([fresh_schema, f"items_{n}"]) for n in "pdz"})
    def seen_by(p: PolarsFrame, d: PandasFrame, z: pl.LazyFrame) -> None:
        seen.update(p=type(p), d=type(d), z=type(z))
        seen["rows"] = (
            p.sort("id").rows(), d.sort_values("id").values.tolist(), z.sort("id").collect().rows()
        )

    result = dg.materialize([*upstream, seen_by], resources={"io_manager": io_manager})
    assert result.success
    expected = [(1, "a"), (2, "b")]
    assert seen == {"p": pl.DataFrame, "d": pd.DataFrame, "z": pl.LazyFrame,
                    "rows": (expected, [list(r) for r in expected], expected)}


def test_partitioned_asset_replaces_its_partition_and_loads_only_it(io_manager, conn, fresh_schema):
    daily = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-01-05")
    loaded: list[int] = []

    @dg.asset(key_prefix=[fresh_schema], partitions_def=daily, metadata={"partition_expr": "day"})
    def events(context) -> pl.DataFrame:
        day = dt.date.fromisoformat(context.partition_key)
        return pl.DataFrame({"day": [day, day], "n": [day.day * 10, day.day * 10 + 1]})

    @dg.asset(
        key_prefix=[fresh_schema],
        partitions_def=daily,
        metadata={"partition_expr": "day"},
        ins={"events": dg.AssetIn(key=[fresh_schema, "events"])},
    )
    def doubled(events: pd.DataFrame) -> pd.DataFrame:
        loaded.append(len(events))
        return events.assign(n=events["n"] * 2)

    for key in ("2024-01-01", "2024-01-02", "2024-01-02"):
        assert dg.materialize(
            [events, doubled], partition_key=key, resources={"io_manager": io_manager}
        ).success
    d1, d2 = dt.date(2024, 1, 1), dt.date(2024, 1, 2)
    assert rows(conn, TableRef(fresh_schema, "events"), ["day", "n"]) == [
        (d1, 10),
        (d1, 11),
        (d2, 20),
        (d2, 21),
    ]
    assert rows(conn, TableRef(fresh_schema, "doubled"), ["day", "n"]) == [
        (d1, 20),
        (d1, 22),
        (d2, 40),
        (d2, 42),
    ]
    assert loaded == [2, 2, 2]


def test_load_batch_hooks_commit_with_the_data(io_manager, conn, fresh_schema):
    marker = TableRef(fresh_schema, "marker")
    conn.execute(sql.SQL("CREATE TABLE {} (note text)").format(marker.ident))

    def mark(c):
        c.execute(sql.SQL("INSERT INTO {} VALUES ('committed with data')").format(marker.ident))

    @dg.asset(key_prefix=[fresh_schema], metadata={"write_mode": "insert"})
    def batch() -> LoadBatch:
        return LoadBatch(pl.DataFrame({"id": [1]}), on_commit=[mark], metadata={"source_rows": 1})

    @dg.asset(key_prefix=[fresh_schema], metadata={"write_mode": "insert"})
    def failing() -> LoadBatch:
        def boom(c):
            raise RuntimeError("hook failed")

        return LoadBatch(pl.DataFrame({"id": [1]}), on_commit=[mark, boom])

    res = dg.materialize([batch], resources={"io_manager": io_manager})
    assert res.success
    meta = res.get_asset_materialization_events()[0].event_specific_data.materialization.metadata
    assert meta["source_rows"].value == 1
    assert (
        dg.materialize([failing], resources={"io_manager": io_manager}, raise_on_error=False).success is False
    )
    assert rows(conn, marker, "note") == [("committed with data",)]
    assert conn.execute(
        "SELECT to_regclass(%s)", (TableRef(fresh_schema, "failing").regclass_text,)
    ).fetchone() == (None,)


def test_multi_partitioned_asset_replaces_only_its_cell(io_manager, conn, fresh_schema):
    parts = dg.MultiPartitionsDefinition(
        {
            "date": dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-01-03"),
            "region": dg.StaticPartitionsDefinition(["eu", "us"]),
        }
    )
    version = {"n": 0}

    @dg.asset(
        key_prefix=[fresh_schema],
        partitions_def=parts,
        metadata={"partition_expr": {"date": "day", "region": "region"}},
    )
    def sales(context) -> pl.DataFrame:
        key = context.partition_key.keys_by_dimension
        day = dt.date.fromisoformat(key["date"])
        return pl.DataFrame({"day": [day], "region": [key["region"]], "v": [version["n"]]})

    for date in ("2024-01-01", "2024-01-02"):
        for region in ("eu", "us"):
            key = dg.MultiPartitionKey({"date": date, "region": region})
            assert dg.materialize([sales], partition_key=key, resources={"io_manager": io_manager}).success
    version["n"] = 1
    key = dg.MultiPartitionKey({"date": "2024-01-02", "region": "eu"})
    assert dg.materialize([sales], partition_key=key, resources={"io_manager": io_manager}).success
    d1, d2 = dt.date(2024, 1, 1), dt.date(2024, 1, 2)
    assert rows(conn, TableRef(fresh_schema, "sales"), ["day", "region"]) == [
        (d1, "eu", 0),
        (d1, "us", 0),
        (d2, "eu", 1),
        (d2, "us", 0),
    ]
