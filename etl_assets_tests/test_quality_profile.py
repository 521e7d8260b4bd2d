"""Column profiles: values equal to an independent computation; attached by the IO manager; schema
changes between materializations flagged as a WARN check."""

from __future__ import annotations

import datetime as dt
import statistics
from decimal import Decimal

import dagster as dg
import polars as pl
import psycopg
import pytest
from psycopg import sql

from etl_assets.db import PostgresResource
from etl_assets.io.manager import PostgresIOManager
from etl_assets.io.tables import TableRef
from etl_assets.quality.profile import profile_metadata, profile_table
from etl_assets.quality.rules import MASK

D = dt.date
TS = dt.datetime
UTC = dt.UTC
# id, price numeric, score float8, name text, born date, seen timestamptz, flag bool, email (sensitive)
ROWS = [
    (1, Decimal("1.50"), 1.5, "ann", D(2000, 1, 2), TS(2025, 1, 1, 12, tzinfo=UTC), True, "a@x.io"),
    (2, Decimal("2.25"), 2.5, "bernadette", D(1999, 5, 6), None, False, "b@x.io"),
    (3, None, 4.0, None, None, TS(2025, 3, 1, tzinfo=UTC), None, None),
    (4, Decimal("3.00"), 4.0, "cy", D(2010, 12, 31), TS(2024, 6, 1, tzinfo=UTC), True, "c@x.io"),
    (5, Decimal("4.25"), None, "", D(2000, 1, 2), TS(2025, 1, 1, 12, tzinfo=UTC), True, "a@x.io"),
    (6, Decimal("2.25"), 10.25, "dee", D(1980, 2, 29), TS(2023, 1, 1, tzinfo=UTC), False, "d@x.io"),
]
COLUMNS = ["id", "price", "score", "name", "born", "seen", "flag", "email"]


@pytest.fixture
def known(warehouse_conn: psycopg.Connection, fresh_schema: str) -> TableRef:
    ref = TableRef(fresh_schema, "known")
    warehouse_conn.execute(
        sql.SQL(
            """CREATE TABLE {} (id int PRIMARY KEY, price numeric(10,2), score double precision, name text,
               born date, seen timestamptz, flag boolean, email text)"""
        ).format(ref.ident)
    )
    with warehouse_conn.cursor().copy(sql.SQL("COPY {} FROM STDIN").format(ref.ident)) as copy:
        for row in ROWS:
            copy.write_row(row)
    return ref


def expected(column: str) -> dict:
    """The profile of one column computed in Python from ROWS, independently of PostgreSQL."""
    values = [r[COLUMNS.index(column)] for r in ROWS]
    present = [v for v in values if v is not None]
    out = {"null_count": len(values) - len(present), "distinct_count": len(set(present))}
    out["null_percent"] = round(100.0 * out["null_count"] / len(values), 6)
    return out | {"present": present}


def test_profile_values_equal_independent_computation(warehouse_conn, known) -> None:
    profile = profile_table(warehouse_conn, known)
    assert profile.row_count == len(ROWS)
    for name in COLUMNS:
        col = profile.column(name)
        exp = expected(name)
        assert (col.null_count, col.null_percent, col.distinct_count) == (
            exp["null_count"],
            exp["null_percent"],
            exp["distinct_count"],
        ), name
    for name in ("id", "price", "score"):
        col, present = profile.column(name), expected(name)["present"]
        assert col.category == "number"
        assert (col.min, col.max) == (min(present), max(present))
        assert col.mean == float(sum(Decimal(str(v)) for v in present) / len(present))
        assert col.median == float(statistics.median(float(v) for v in present))
    for name in ("born", "seen"):
        col, present = profile.column(name), expected(name)["present"]
        assert col.category == "temporal"
        assert (col.min, col.max) == (min(present), max(present))
    for name in ("name", "email"):
        col, present = profile.column(name), expected(name)["present"]
        assert col.category == "text"
        assert col.avg_length == sum(len(v) for v in present) / len(present)
    assert profile.column("flag").category == "other"
    # the numbers, the plotted keys and the schema
    md = profile_metadata(profile)
    assert md["dagster/row_count"].value == 6
    assert md["profile/price/mean"].value == 2.65
    assert md["profile/price/median"].value == 2.25
    assert md["profile/score/null_percent"].value == round(100 / 6, 6)
    assert md["profile/name/avg_length"].value == 3.6  # (3 + 10 + 2 + 0 + 3) / 5
    schema = md["dagster/column_schema"].value
    assert [(c.name, c.type) for c in schema.columns] == [
        ("id", "integer"),
        ("price", "numeric(10,2)"),
        ("score", "double precision"),
        ("name", "text"),
        ("born", "date"),
        ("seen", "timestamp with time zone"),
        ("flag", "boolean"),
        ("email", "text"),
    ]
    assert schema.columns[0].constraints.nullable is False
    assert "| price | numeric(10,2) | 1 | 16.67 | 4 | 1.50 | 4.25 | 2.65 | 2.25 |" in md["profile"].value


def test_sensitive_columns_are_masked(warehouse_conn, known) -> None:
    md = profile_metadata(profile_table(warehouse_conn, known, sensitive=["price", "email"]))
    assert "profile/price/min" not in md and "profile/price/mean" not in md
    assert md["profile/price/null_count"].value == 1  # counts stay
    row = next(line for line in md["profile"].value.splitlines() if line.startswith("| price "))
    assert row.count(MASK) == 4
    assert "x.io" not in md["profile"].value


def test_io_manager_attaches_profile_and_schema_change_warns(
    warehouse_dsn, warehouse_conn, fresh_schema
) -> None:
    key = dg.AssetKey([fresh_schema, "people"])
    shape = {"wide": False}

    @dg.asset(key=key, metadata={"sensitive": ["email"], "write_mode": "truncate_insert"})
    def people() -> pl.DataFrame:
        frame = pl.DataFrame({"id": [1, 2, 3], "email": ["a@x.io", None, "c@x.io"], "age": [30, 40, 50]})
        return frame.with_columns(city=pl.lit("Oslo")) if shape["wide"] else frame

    checks = dg.build_column_schema_change_checks(assets=[people])
    resources = {"io_manager": PostgresIOManager(warehouse=PostgresResource(dsn=warehouse_dsn))}
    with dg.instance_for_test() as instance:
        first = dg.materialize([people, *checks], resources=resources, instance=instance)
        mats = first.asset_materializations_for_node(key.to_python_identifier())
        meta = mats[0].metadata
        assert meta["profile/age/mean"].value == 40.0
        assert meta["profile/email/null_count"].value == 1
        assert "profile/email/min" not in meta and "a@x.io" not in meta["profile"].value
        assert meta["dagster/row_count"].value == 3
        shape["wide"] = True
        second = dg.materialize([people, *checks], resources=resources, instance=instance)
        evaluations = second.get_asset_check_evaluations()
        assert len(evaluations) == 1
        assert evaluations[0].passed is False
        assert evaluations[0].severity == dg.AssetCheckSeverity.WARN
        assert second.success  # a schema change warns, it does not fail the run
