"""The transform assets through real Dagster runs on a real warehouse: dead letters are exactly the
injected bad rows with the right reasons, counts reconcile, the threshold fails the asset, pandas and
polars agree, enrichment keeps unmatched rows, one day is recomputed alone, and replay moves fixed
rows once (twice is a no-op) and survives the next rebuild of a truncate_insert target."""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from decimal import Decimal

import dagster as dg
import polars as pl
import psycopg
import pytest

from etl_assets import dlq
from etl_assets.db import PostgresResource
from etl_assets.http_source import FX_URL_VAR, FxRatesSource, snapshot_rates
from etl_assets.io.manager import PostgresIOManager
from etl_assets.io.tables import TableRef
from etl_assets.io.writer import write_frame
from etl_assets.transforms import aggregate, capture, customers, orders
from etl_assets.transforms.assets import (
    ASSETS,
    CHECKS,
    CLEAN_CUSTOMERS,
    CLEAN_ORDERS,
    CLEAN_ORDERS_PANDAS,
    DAILY_TOTALS,
    FX_RATES,
    ORDERS_ENRICHED,
    RAW_CATEGORIES,
    RAW_CUSTOMERS,
    RAW_ORDERS,
)
from etl_assets.transforms.replay import dlq_replay, replay

UTC = dt.UTC
T0 = dt.datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
FUTURE = dt.datetime(2036, 1, 1, tzinfo=UTC)

# id -> (first_name, last_name, email, created_at) overrides that make a customer bad, and the reason
BAD_CUSTOMERS = {
    3: ({"first_name": None}, "MissingName"),
    7: ({"last_name": None}, "MissingName"),
    11: ({"email": "ann.lee11 at example.com"}, "InvalidEmail"),
    14: ({"email": "bob.kay14@"}, "InvalidEmail"),
    18: ({"created_at": FUTURE}, "FutureDate"),
}
BAD_ORDERS = {
    5: ({"amount": Decimal("-12.50")}, "NegativeAmount"),
    9: ({"amount": Decimal("1500000.00")}, "AmountTooLarge"),
    13: ({"created_at": FUTURE}, "FutureDate"),
}
UNKNOWN_CATEGORY = {21, 22}
RELAXED = {"max_failure_rate": 0.5}


def customers_frame() -> pl.DataFrame:
    rows = []
    for i in range(1, 21):
        row = {
            "id": i,
            "first_name": f"First{i}",
            "last_name": f"Last{i}",
            "email": f"first{i}.last@shop{i % 3}.example",
            "created_at": T0 + dt.timedelta(hours=i),
            "updated_at": T0 + dt.timedelta(days=1, hours=i),
        }
        row.update(BAD_CUSTOMERS.get(i, ({}, ""))[0])
        rows.append(row)
    return pl.DataFrame(
        rows,
        schema={
            "id": pl.Int64,
            "first_name": pl.String,
            "last_name": pl.String,
            "email": pl.String,
            "created_at": pl.Datetime("us", "UTC"),
            "updated_at": pl.Datetime("us", "UTC"),
        },
    )


def orders_frame() -> pl.DataFrame:
    rows = []
    for i in range(1, 41):
        row = {
            "id": i,
            "user_id": 1 + i % 7,
            "category_id": 1 + i % 3,
            "amount": Decimal(f"{i * 3}.{i % 100:02d}"),
            "status": "paid",
            "created_at": T0 + dt.timedelta(hours=2 * i),
            "updated_at": T0 + dt.timedelta(days=5),
        }
        if i in UNKNOWN_CATEGORY:
            row["category_id"] = 999
        row.update(BAD_ORDERS.get(i, ({}, ""))[0])
        rows.append(row)
    return pl.DataFrame(
        rows,
        schema={
            "id": pl.Int64,
            "user_id": pl.Int64,
            "category_id": pl.Int32,
            "amount": pl.Decimal(12, 2),
            "status": pl.String,
            "created_at": pl.Datetime("us", "UTC"),
            "updated_at": pl.Datetime("us", "UTC"),
        },
    )


CATEGORIES = pl.DataFrame(
    {"id": [1, 2, 3], "name": ["Books", "Garden", "Music"], "type": ["physical", "physical", "digital"]},
    schema={"id": pl.Int32, "name": pl.String, "type": pl.String},
)


@pytest.fixture
def wh(module_warehouse: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The module's warehouse, reset: only the raw tables with the injected bad rows, no dead letters."""
    monkeypatch.delenv(FX_URL_VAR, raising=False)
    with psycopg.connect(module_warehouse) as conn:
        conn.execute("DROP SCHEMA IF EXISTS raw, clean, mart, ref CASCADE")
        conn.execute("TRUNCATE etl.dead_letters")
        write_frame(
            conn, customers_frame(), TableRef("raw", "customers"), "truncate_insert", primary_key=["id"]
        )
        write_frame(conn, orders_frame(), TableRef("raw", "orders"), "truncate_insert", primary_key=["id"])
        write_frame(conn, CATEGORIES, TableRef("raw", "categories"), "truncate_insert", primary_key=["id"])
        conn.commit()
    return module_warehouse


def resources(dsn: str) -> dict:
    warehouse = PostgresResource(dsn=dsn)
    return {
        "warehouse": warehouse,
        "io_manager": PostgresIOManager(warehouse=warehouse),
        "fx_source": FxRatesSource(),
    }


def run(
    dsn: str,
    keys: list[dg.AssetKey],
    config: dict | None = None,
    partition: str | None = None,
    instance: dg.DagsterInstance | None = None,
) -> dg.ExecuteInProcessResult:
    specs = [dg.AssetSpec(k) for k in (RAW_CUSTOMERS, RAW_ORDERS, RAW_CATEGORIES)]
    ops = {k.to_python_identifier(): {"config": cfg} for k, cfg in (config or {}).items()}
    return dg.materialize(
        [*ASSETS, *CHECKS, *specs],
        selection=keys,
        resources=resources(dsn),
        run_config={"ops": ops},
        partition_key=partition,
        instance=instance,
        raise_on_error=False,
    )


def meta(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict:
    [mat] = result.asset_materializations_for_node(key.to_python_identifier())
    return {k: v.value for k, v in mat.metadata.items()}


def letters(
    conn: psycopg.Connection, key: dg.AssetKey, status: str | None = None
) -> dict[int, dlq.DeadLetter]:
    return {x.payload["id"]: x for x in dlq.fetch(conn, asset_key=key.to_user_string(), status=status)}


def test_dead_letters_are_exactly_the_injected_rows_and_counts_reconcile(wh: str) -> None:
    result = run(
        wh,
        [FX_RATES, CLEAN_CUSTOMERS, CLEAN_ORDERS, CLEAN_ORDERS_PANDAS],
        {CLEAN_CUSTOMERS: RELAXED, CLEAN_ORDERS: RELAXED, CLEAN_ORDERS_PANDAS: RELAXED},
    )
    assert result.success
    raw_customers = {r["id"]: r for r in customers_frame().iter_rows(named=True)}
    with psycopg.connect(wh, autocommit=True) as conn:
        dead = letters(conn, CLEAN_CUSTOMERS)
        assert {i: x.error_class for i, x in dead.items()} == {
            i: why for i, (_, why) in BAD_CUSTOMERS.items()
        }
        types = dlq.frame_types(customers_frame())
        for i, x in dead.items():
            assert x.payload == dlq.encode_row(raw_customers[i], types)  # the original row, whole
            assert x.row_hash == dlq.row_hash(x.payload)
            assert (x.status, x.attempts, x.stage, x.run_id) == ("pending", 1, "transform", result.run_id)
            assert x.target == "clean.customers" and x.partition_key is None
        trace = conn.execute(
            "SELECT error_trace FROM etl.dead_letters WHERE id = %s", (dead[3].id,)
        ).fetchone()[0]
        assert "Traceback" in trace and "MissingName: first_name is missing" in trace
        clean_ids = {r[0] for r in conn.execute("SELECT id FROM clean.customers")}
        assert clean_ids == set(range(1, 21)) - set(BAD_CUSTOMERS)
        row = conn.execute(
            "SELECT full_name, email_domain, created_date FROM clean.customers WHERE id = 1"
        ).fetchone()
        assert row == ("First1 Last1", "shop1.example", dt.date(2025, 3, 1))

        for key in (CLEAN_ORDERS, CLEAN_ORDERS_PANDAS):
            dead = letters(conn, key)
            assert {i: x.error_class for i, x in dead.items()} == {
                i: why for i, (_, why) in BAD_ORDERS.items()
            }
            assert all(x.stage == "validate" for x in dead.values())
            table = TableRef.for_asset_key(key)
            ids = {r[0] for r in conn.execute(psycopg.sql.SQL("SELECT id FROM {}").format(table.ident))}
            assert ids == set(range(1, 41)) - set(BAD_ORDERS)  # unknown categories are not dropped here
        # the two engines wrote the same rows, with the same column types
        diff = conn.execute(
            "SELECT (SELECT count(*) FROM (TABLE clean.orders EXCEPT ALL TABLE clean.orders_pandas) a),"
            "       (SELECT count(*) FROM (TABLE clean.orders_pandas EXCEPT ALL TABLE clean.orders) b)"
        ).fetchone()
        assert diff == (0, 0)
        names = (
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 ORDER BY attnum"
        )
        assert (
            conn.execute(names, ("clean.orders",)).fetchall()
            == conn.execute(names, ("clean.orders_pandas",)).fetchall()
        )
        column_types = (
            "SELECT column_name, data_type, numeric_precision, numeric_scale, datetime_precision "
            "FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
            "ORDER BY ordinal_position"
        )
        polars_types = conn.execute(column_types, ("clean", "orders")).fetchall()
        assert polars_types == conn.execute(column_types, ("clean", "orders_pandas")).fetchall()
        raw_amount = [r for r in conn.execute(column_types, ("raw", "orders")) if r[0] == "amount"]
        assert raw_amount == [r for r in polars_types if r[0] == "amount"]  # the source's numeric(p,s)
        eur = conn.execute("SELECT amount, amount_eur FROM clean.orders WHERE id = 1").fetchone()
        assert eur == (Decimal("3.01"), round(3.01 * snapshot_rates().rate("EUR"), 2))

    m = meta(result, CLEAN_CUSTOMERS)
    assert (m["rows_in"], m["rows_out"], m["dead_letters"]) == (20, 15, 5)
    assert m["rows_in"] == m["rows_out"] + m["dead_letters"]
    assert m["dead_letters_by_class"] == {
        "transform:MissingName": 2,
        "transform:InvalidEmail": 2,
        "transform:FutureDate": 1,
    }
    assert m["success_rate"] == 0.75
    for key in (CLEAN_ORDERS, CLEAN_ORDERS_PANDAS):
        m = meta(result, key)
        assert (m["rows_in"], m["rows_out"], m["dead_letters"]) == (40, 37, 3)
    [check] = result.get_asset_check_evaluations()
    assert check.passed
    # payloads and messages never reach the event log or metadata
    events = " ".join(str(e) for e in result.all_events)
    assert "ann.lee11" not in events and "bob.kay14" not in events and "first_name is missing" not in events


def test_each_run_bumps_attempts_of_the_same_rows(wh: str) -> None:
    first = run(wh, [CLEAN_CUSTOMERS], {CLEAN_CUSTOMERS: RELAXED})
    second = run(wh, [CLEAN_CUSTOMERS], {CLEAN_CUSTOMERS: RELAXED})
    assert first.success and second.success
    with psycopg.connect(wh, autocommit=True) as conn:
        dead = letters(conn, CLEAN_CUSTOMERS)
        assert sorted(dead) == sorted(BAD_CUSTOMERS)
        assert {(x.attempts, x.run_id) for x in dead.values()} == {(2, second.run_id)}
        assert {r[0] for r in conn.execute("SELECT DISTINCT first_run_id FROM etl.dead_letters")} == {
            first.run_id
        }
        assert conn.execute("SELECT count(*) FROM clean.customers").fetchone()[0] == 15


def test_failure_rate_above_threshold_fails_and_writes_nothing(wh: str) -> None:
    result = run(wh, [CLEAN_CUSTOMERS])  # default max_failure_rate 5%; 5 of 20 rows are bad
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert "rejected 5 of 20 rows (25.0%)" in message and "max_failure_rate of 5.0%" in message
    with psycopg.connect(wh, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('clean.customers')").fetchone()[0] is None
        assert conn.execute("SELECT to_regclass('etl.dead_letters')").fetchone()[0] is not None
        assert conn.execute("SELECT count(*) FROM etl.dead_letters").fetchone()[0] == 0


def test_enrichment_keeps_unmatched_rows_and_one_day_is_recomputed_alone(wh: str) -> None:
    result = run(wh, [FX_RATES, CLEAN_ORDERS, ORDERS_ENRICHED], {CLEAN_ORDERS: RELAXED})
    assert result.success
    m = meta(result, ORDERS_ENRICHED)
    assert (m["rows_in"], m["rows_out"], m["unmatched_rows"], m["unmatched_keys"]) == (37, 37, 2, 1)
    assert m["unmatched_key_sample"] == "999"
    with psycopg.connect(wh, autocommit=True) as conn:
        unmatched = conn.execute(
            "SELECT id FROM mart.orders_enriched WHERE NOT category_matched AND category_name IS NULL "
            "ORDER BY id"
        ).fetchall()
        assert [r[0] for r in unmatched] == sorted(UNKNOWN_CATEGORY)
        days = [r[0] for r in conn.execute("SELECT DISTINCT order_date FROM mart.orders_enriched ORDER BY 1")]
        assert days == [dt.date(2025, 3, 1), dt.date(2025, 3, 2), dt.date(2025, 3, 3), dt.date(2025, 3, 4)]

        for day in ("2025-03-02", "2025-03-03", "2025-03-02"):  # the second 03-02 replaces, never appends
            assert run(wh, [DAILY_TOTALS], partition=day).success
        table = TableRef.for_asset_key(ORDERS_ENRICHED)
        for day in (dt.date(2025, 3, 2), dt.date(2025, 3, 3)):
            expected = conn.execute(
                aggregate.expected_sql(table), (day, day + dt.timedelta(days=1))
            ).fetchall()
            got = conn.execute(
                "SELECT order_date, category_id, event_count, unique_users, round(total_amount::numeric, 2) "
                "FROM mart.daily_category_totals WHERE order_date = %s ORDER BY 1, 2",
                (day,),
            ).fetchall()
            assert got == expected and len(got) >= 3
        assert (
            conn.execute("SELECT count(DISTINCT order_date) FROM mart.daily_category_totals").fetchone()[0]
            == 2
        )
        total = conn.execute("SELECT sum(event_count) FROM mart.daily_category_totals").fetchone()[0]
        assert (
            total
            == conn.execute(
                "SELECT count(*) FROM mart.orders_enriched WHERE order_date IN ('2025-03-02', '2025-03-03')"
            ).fetchone()[0]
        )


def test_a_day_that_loses_its_orders_is_cleared(wh: str) -> None:
    assert run(wh, [FX_RATES, CLEAN_ORDERS, ORDERS_ENRICHED], {CLEAN_ORDERS: RELAXED}).success
    assert run(wh, [DAILY_TOTALS], partition="2025-03-02").success
    assert run(wh, [DAILY_TOTALS], partition="2025-03-03").success
    with psycopg.connect(wh, autocommit=True) as conn:
        conn.execute("DELETE FROM mart.orders_enriched WHERE order_date = '2025-03-02'")
        had = conn.execute(
            "SELECT count(*) FROM mart.daily_category_totals WHERE order_date = '2025-03-02'"
        ).fetchone()[0]
        empty_day = run(wh, [DAILY_TOTALS], partition="2025-03-02")
        assert empty_day.success
        assert had >= 3 and meta(empty_day, DAILY_TOTALS)["rows_deleted"] == had
        assert meta(empty_day, DAILY_TOTALS)["dagster/row_count"] == 0  # the partition's rows now
        days = conn.execute("SELECT DISTINCT order_date FROM mart.daily_category_totals").fetchall()
        assert days == [(dt.date(2025, 3, 3),)]  # the other day is untouched
    assert run(wh, [DAILY_TOTALS], partition="2026-01-01").success  # a day without any orders at all


def test_replay_of_a_corrected_row_moves_it_once_and_it_survives_the_next_rebuild(wh: str) -> None:
    instance = dg.DagsterInstance.ephemeral()
    assert run(wh, [CLEAN_CUSTOMERS], {CLEAN_CUSTOMERS: RELAXED}, instance=instance).success
    with psycopg.connect(wh, autocommit=True) as conn:
        # an operator corrects the e-mail of customer 11 in the dead-letter table
        conn.execute(
            "UPDATE etl.dead_letters "
            "SET payload = jsonb_set(payload, '{email}', '\"ann.lee11@example.com\"') "
            "WHERE asset_key = 'clean/customers' AND payload->>'id' = '11'"
        )
        job = dg.Definitions(jobs=[dlq_replay], resources=resources(wh)).resolve_job_def("dlq_replay")
        replayed = job.execute_in_process(instance=instance)
        assert replayed.success
        dead = letters(conn, CLEAN_CUSTOMERS)
        assert dead[11].status == "replayed" and dead[11].resolved_run_id == replayed.run_id
        still = {i: x for i, x in dead.items() if i != 11}
        assert {(x.status, x.attempts, x.stage) for x in still.values()} == {
            ("pending", 2, "replay:transform")
        }
        assert {i: x.error_class for i, x in still.items()} == {
            i: w for i, (_, w) in BAD_CUSTOMERS.items() if i != 11
        }
        assert conn.execute("SELECT email, email_domain FROM clean.customers WHERE id = 11").fetchone() == (
            "ann.lee11@example.com",
            "example.com",
        )
        snapshot = conn.execute("SELECT * FROM clean.customers ORDER BY id").fetchall()

        again = job.execute_in_process(instance=instance)  # replay twice: nothing more is loaded
        assert again.success
        assert conn.execute("SELECT * FROM clean.customers ORDER BY id").fetchall() == snapshot
        assert letters(conn, CLEAN_CUSTOMERS)[11].resolved_run_id == replayed.run_id

        # the next regular rebuild (truncate_insert) keeps the corrected row
        rebuilt = run(wh, [CLEAN_CUSTOMERS], {CLEAN_CUSTOMERS: RELAXED}, instance=instance)
        assert rebuilt.success
        m = meta(rebuilt, CLEAN_CUSTOMERS)
        assert (m["rows_in"], m["rows_out"], m["dead_letters"], m["corrections_applied"]) == (20, 16, 4, 1)
        assert conn.execute("SELECT * FROM clean.customers ORDER BY id").fetchall() == snapshot
        dead = letters(conn, CLEAN_CUSTOMERS)
        assert dead[11].status == "replayed" and dead[11].resolved_run_id == replayed.run_id
        assert {x.attempts for i, x in dead.items() if i != 11} == {4}


def test_replay_after_a_code_fix(wh: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run(
        wh,
        [FX_RATES, CLEAN_CUSTOMERS, CLEAN_ORDERS, CLEAN_ORDERS_PANDAS],
        {CLEAN_CUSTOMERS: RELAXED, CLEAN_ORDERS: RELAXED, CLEAN_ORDERS_PANDAS: RELAXED},
    ).success
    with psycopg.connect(wh, autocommit=True) as conn:  # and a data fix on the pandas asset's order 5
        conn.execute(
            "UPDATE etl.dead_letters SET payload = jsonb_set(payload, '{amount}', '\"12.50\"') "
            "WHERE asset_key = 'clean/orders_pandas' AND payload->>'id' = '5'"
        )
    original = customers.transform_customer

    def lenient(row: dict, now: dt.datetime) -> dict:  # the "fix": a missing last name is allowed
        return original({**row, "last_name": row.get("last_name") or "(unknown)"}, now)

    monkeypatch.setattr(customers, "transform_customer", lenient)
    with psycopg.connect(wh) as conn:
        reports = {r.asset_key: r for r in replay(conn, run_id="replay-1")}
        conn.commit()
    assert (reports["clean/customers"].replayed, reports["clean/customers"].failed_again) == (1, 4)
    assert (reports["clean/orders"].replayed, reports["clean/orders"].failed_again) == (0, 3)
    assert (reports["clean/orders_pandas"].replayed, reports["clean/orders_pandas"].failed_again) == (1, 2)
    with psycopg.connect(wh, autocommit=True) as conn:
        row = conn.execute("SELECT amount, amount_eur FROM clean.orders_pandas WHERE id = 5").fetchone()
        assert row == (Decimal("12.50"), round(12.5 * snapshot_rates().rate("EUR"), 2))
    with psycopg.connect(wh, autocommit=True) as conn:
        assert conn.execute("SELECT full_name FROM clean.customers WHERE id = 7").fetchone() == (
            "First7 (unknown)",
        )
        assert letters(conn, CLEAN_CUSTOMERS)[7].status == "replayed"
        assert conn.execute("SELECT count(*) FROM clean.customers").fetchone()[0] == 16
        before = conn.execute("SELECT * FROM clean.customers ORDER BY id").fetchall()
    with psycopg.connect(wh) as conn:
        twice = {r.asset_key: r for r in replay(conn, run_id="replay-2", asset_key="clean/customers")}
        conn.commit()
    assert (twice["clean/customers"].replayed, twice["clean/customers"].failed_again) == (0, 4)
    with psycopg.connect(wh, autocommit=True) as conn:
        assert conn.execute("SELECT * FROM clean.customers ORDER BY id").fetchall() == before
        assert letters(conn, CLEAN_CUSTOMERS)[7].resolved_run_id == "replay-1"
    # the fixed code now passes the row in the regular rebuild too
    rebuilt = run(wh, [CLEAN_CUSTOMERS], {CLEAN_CUSTOMERS: RELAXED})
    assert (meta(rebuilt, CLEAN_CUSTOMERS)["rows_out"], meta(rebuilt, CLEAN_CUSTOMERS)["dead_letters"]) == (
        16,
        4,
    )


def test_replay_of_orders_uses_the_configured_currency(wh: str) -> None:
    """A corrected order replays in the currency the target was built in (GBP here), not the default."""
    gbp = {**RELAXED, "currency": "GBP"}
    keys = [FX_RATES, CLEAN_ORDERS, CLEAN_ORDERS_PANDAS]
    assert run(wh, keys, {CLEAN_ORDERS: gbp, CLEAN_ORDERS_PANDAS: gbp}).success
    with psycopg.connect(wh, autocommit=True) as conn:
        conn.execute(
            "UPDATE etl.dead_letters SET payload = jsonb_set(payload, '{amount}', '\"12.50\"') "
            "WHERE asset_key IN ('clean/orders', 'clean/orders_pandas') AND payload->>'id' = '5'"
        )
    with psycopg.connect(wh) as conn:
        reports = {r.asset_key: r for r in replay(conn, run_id="replay-gbp")}
        conn.commit()
    assert (reports["clean/orders"].replayed, reports["clean/orders_pandas"].replayed) == (1, 1)
    expected = round(12.5 * snapshot_rates().rate("GBP"), 2)
    assert expected != round(12.5 * snapshot_rates().rate("EUR"), 2)
    with psycopg.connect(wh, autocommit=True) as conn:
        for table in ("orders", "orders_pandas"):
            columns = [
                r[0] for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = 'clean' "
                    "AND table_name = %s AND column_name LIKE 'amount%%' ORDER BY 1", (table,)
                )
            ]
            assert columns == ["amount", "amount_gbp"], table  # no amount_eur column was added
            row = conn.execute(f"SELECT amount, amount_gbp FROM clean.{table} WHERE id = 5").fetchone()
            assert row == (Decimal("12.50"), pytest.approx(expected)), table


def test_pandas_and_polars_give_identical_output_on_the_same_input() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=UTC)
    frame = orders_frame()
    a = orders.clean_orders_polars(frame, 0.9487, "eur", now)
    b = orders.clean_orders_pandas(frame.to_pandas(), 0.9487, "eur", now)
    assert [(f.position, f.error_class) for f in a.failures] == [
        (f.position, f.error_class) for f in b.failures
    ]
    left, right = a.frame, dlq.as_polars(b.frame)
    assert left.columns == right.columns and left.height == 37
    assert left.with_columns(pl.col("amount").cast(pl.String)).equals(
        right.with_columns(pl.col("amount").cast(pl.String))
    )
    # the same with naive timestamps (timestamp without time zone)
    naive = frame.with_columns(pl.col("created_at", "updated_at").dt.replace_time_zone(None))
    a = orders.clean_orders_polars(naive, 1.0, "eur", now)
    b = orders.clean_orders_pandas(naive.to_pandas(), 1.0, "eur", now)
    assert [f.position for f in a.failures] == [f.position for f in b.failures] == [4, 8, 12]
    assert (
        a.frame.get_column("order_date").to_list()
        == dlq.as_polars(b.frame).get_column("order_date").to_list()
    )


def test_a_write_whose_connection_is_dropped_is_retried_whole_and_exact(wh: str) -> None:
    """The IO manager's write is killed mid-transaction; Dagster's RetryPolicy reruns the step; the
    table and the dead letters are exactly those of one clean run (the killed attempt rolled back)."""
    assert run(wh, [CLEAN_CUSTOMERS], {CLEAN_CUSTOMERS: RELAXED}).success
    with psycopg.connect(wh, autocommit=True) as watcher:
        expected = watcher.execute("SELECT * FROM clean.customers ORDER BY id").fetchall()
        watcher.execute("TRUNCATE etl.dead_letters")
        holder = psycopg.connect(wh)  # holds the table so the next write's TRUNCATE waits where we see it
        holder.execute("LOCK TABLE clean.customers IN ACCESS EXCLUSIVE MODE")
        box: dict = {}
        thread = threading.Thread(
            target=lambda: box.setdefault("result", run(wh, [CLEAN_CUSTOMERS], {CLEAN_CUSTOMERS: RELAXED}))
        )
        thread.start()
        try:
            deadline, pid = time.monotonic() + 60, None
            while pid is None and time.monotonic() < deadline:  # poll the database for the blocked write
                row = watcher.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                ).fetchone()
                pid = row[0] if row else None
            assert pid is not None, "the write never blocked on the table"
            assert watcher.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
        finally:
            holder.rollback()
            holder.close()
            thread.join(120)
        result = box["result"]
        assert result.success
        step_events = [e.event_type_value for e in result.all_events if e.step_key == "clean__customers"]
        assert step_events.count("STEP_UP_FOR_RETRY") == 1 and step_events.count("STEP_RESTARTED") == 1
        assert watcher.execute("SELECT * FROM clean.customers ORDER BY id").fetchall() == expected
        dead = letters(watcher, CLEAN_CUSTOMERS)
        assert sorted(dead) == sorted(BAD_CUSTOMERS) and {x.attempts for x in dead.values()} == {1}


def test_concurrent_replays_load_each_row_once(wh: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run(wh, [CLEAN_CUSTOMERS], {CLEAN_CUSTOMERS: RELAXED}).success
    monkeypatch.setattr(customers, "EMAIL", re.compile(r"^(.+)$"))  # a "fix" that accepts every e-mail
    results: list = []

    def one(tag: str) -> None:
        with psycopg.connect(wh) as conn:
            results.extend(replay(conn, run_id=tag, asset_key="clean/customers"))
            conn.commit()

    threads = [threading.Thread(target=one, args=(f"replay-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(r.replayed for r in results) == 2  # the two malformed e-mails, each by one replay
    with psycopg.connect(wh, autocommit=True) as conn:
        dead = letters(conn, CLEAN_CUSTOMERS)
        assert {i for i, x in dead.items() if x.status == "replayed"} == {11, 14}
        assert conn.execute("SELECT count(*), count(DISTINCT id) FROM clean.customers").fetchone() == (17, 17)


def test_a_transform_that_loses_rows_is_caught() -> None:
    def lossy(frame: pl.DataFrame) -> capture.TransformResult:
        return capture.TransformResult(frame.head(frame.height - 1), [])

    with pytest.raises(capture.ReconciliationError, match="rows in"):
        capture.apply(lossy, customers_frame())
