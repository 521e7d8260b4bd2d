"""The demo source generator and change simulator, on a database of this module's own."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest

from etl_assets.demo import seed as demo
from etl_assets.errors import MissingObject
from etl_assets_tests.conftest import create_database, drop_database

CHECKSUM = """
SELECT md5(string_agg(t::text, '|' ORDER BY t.id)) FROM {table} t
"""


@pytest.fixture
def seed_dsn(pg_admin_dsn: str) -> Iterator[str]:
    name = f"t_seed_{secrets.token_hex(4)}"
    dsn = create_database(pg_admin_dsn, name)
    yield dsn
    drop_database(pg_admin_dsn, name)


def _checksums(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        return {
            t: conn.execute(CHECKSUM.format(table=f"shop.{t}")).fetchone()[0]
            for t in ("customers", "categories", "orders")
        }


def _one(conn: psycopg.Connection, query: str, params: tuple = ()) -> int:
    return conn.execute(query, params or None).fetchone()[0]


def test_seed_creates_schema_with_keys_and_indexes(seed_dsn: str) -> None:
    result = demo.seed(seed_dsn, rows=2000, seed=1)
    assert (result.orders, result.customers, result.categories) == (2000, 200, len(demo.CATEGORIES))
    with psycopg.connect(seed_dsn) as conn:
        assert _one(conn, "SELECT count(*) FROM shop.orders") == 2000
        assert _one(conn, "SELECT count(*) FROM shop.customers") == 200
        assert _one(conn, "SELECT count(*) FROM shop.categories") == 12
        assert _one(conn, "SELECT count(DISTINCT id) FROM shop.orders") == 2000
        pks = conn.execute(
            "SELECT conrelid::regclass::text FROM pg_constraint WHERE contype = 'p' "
            "AND connamespace = 'shop'::regnamespace ORDER BY 1"
        ).fetchall()
        assert [r[0] for r in pks] == ["shop.categories", "shop.customers", "shop.orders"]
        indexed = conn.execute(
            "SELECT tablename FROM pg_indexes WHERE schemaname = 'shop' AND indexdef LIKE '%(updated_at%'"
            " ORDER BY 1"
        ).fetchall()
        assert [r[0] for r in indexed] == ["customers", "orders"]
        types = dict(
            conn.execute(
                "SELECT column_name, format_type(atttypid, atttypmod) FROM information_schema.columns c"
                " JOIN pg_attribute a ON a.attrelid = 'shop.orders'::regclass AND a.attname = c.column_name"
                " WHERE table_schema = 'shop' AND table_name = 'orders'"
            ).fetchall()
        )
        assert types["amount"] == "numeric(12,2)"
        assert types["updated_at"] == "timestamp with time zone"
        # updated_at is at or after created_at, except for rows whose created_at is (dirty) in the future;
        # updated_at itself is never in the future (the application stamps it).
        assert _one(conn, "SELECT count(*) FROM shop.orders WHERE updated_at < created_at") == _one(
            conn, "SELECT count(*) FROM shop.orders WHERE created_at > now()"
        )
        assert _one(conn, "SELECT count(*) FROM shop.orders WHERE updated_at > now()") == 0
        assert _one(conn, "SELECT count(*) FROM shop.customers WHERE updated_at > now()") == 0
        # Orders reference existing customers.
        assert (
            _one(
                conn,
                "SELECT count(*) FROM shop.orders o WHERE NOT EXISTS "
                "(SELECT 1 FROM shop.customers c WHERE c.id = o.user_id)",
            )
            == 0
        )
    assert demo.seed_info(seed_dsn) == {
        "seed": 1,
        "rows": 2000,
        "customers": 200,
        "dirty_share": 0.02,
        "until": result.until.isoformat(),
    }
    assert result.until == demo.today().date()  # by default the demo ends today: it always looks recent


def test_seed_is_deterministic_for_a_seed(seed_dsn: str) -> None:
    demo.seed(seed_dsn, rows=1500, seed=7, until=demo.END)
    first = _checksums(seed_dsn)
    demo.seed(seed_dsn, rows=1500, seed=7, until=demo.END)
    assert _checksums(seed_dsn) == first
    demo.seed(seed_dsn, rows=1500, seed=7, until=demo.END + timedelta(days=1))
    shifted = _checksums(seed_dsn)
    assert shifted["orders"] != first["orders"]  # the same rows, one day later
    demo.seed(seed_dsn, rows=1500, seed=8, until=demo.END)
    other = _checksums(seed_dsn)
    assert other["orders"] != first["orders"]
    assert other["customers"] != first["customers"]
    assert other["categories"] == first["categories"]  # the lookup table is fixed


def test_seed_golden_rows_are_stable_across_servers(seed_dsn: str) -> None:
    """The hash is PostgreSQL's hash-partitioning hash: the same on every version and platform."""
    demo.seed(seed_dsn, rows=5, seed=3, until=demo.END)
    with psycopg.connect(seed_dsn) as conn:
        rows = conn.execute(
            "SELECT id, user_id, category_id, amount::text, status,"
            " (created_at AT TIME ZONE 'UTC')::text"
            " FROM shop.orders ORDER BY id LIMIT 2"
        ).fetchall()
    assert rows == GOLDEN_ORDERS


# Seed 3 on PostgreSQL 18 (embedded); the same rows must come out of any other version.
GOLDEN_ORDERS = [
    (1, 5, 9, "150.68", "refunded", "2025-04-17 13:16:51"),
    (2, 4, 7, "327.12", "shipped", "2025-06-10 06:00:20"),
]


def test_dirty_rows_appear_at_the_configured_share(seed_dsn: str) -> None:
    demo.seed(seed_dsn, rows=10_000, seed=5, dirty_share=0.1)
    with psycopg.connect(seed_dsn) as conn:
        kinds = conn.execute(
            f"""SELECT count(*) FILTER (WHERE amount < 0),
                       count(*) FILTER (WHERE amount >= {demo.HUGE_AMOUNT}),
                       count(*) FILTER (WHERE created_at > now()),
                       count(*) FILTER (WHERE category_id NOT IN (SELECT id FROM shop.categories))
                FROM shop.orders"""
        ).fetchone()
        customer_kinds = conn.execute(
            """SELECT count(*) FILTER (WHERE first_name IS NULL OR last_name IS NULL),
                      count(*) FILTER (WHERE email !~ '^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$'),
                      count(*) FILTER (WHERE created_at > now())
               FROM shop.customers"""
        ).fetchone()
    assert all(k > 100 for k in kinds), kinds  # each of the four kinds is about 250 of 10,000
    assert 800 <= sum(kinds) <= 1200, kinds
    assert all(k > 10 for k in customer_kinds), customer_kinds  # 1,000 customers, ~100 dirty
    demo.seed(seed_dsn, rows=3000, seed=5, dirty_share=0.0)
    with psycopg.connect(seed_dsn) as conn:
        dirty = _one(
            conn,
            f"""SELECT count(*) FROM shop.orders WHERE amount < 0 OR amount >= {demo.HUGE_AMOUNT}
                OR created_at > now() OR category_id > 12""",
        )
        dirty_customers = _one(
            conn,
            "SELECT count(*) FROM shop.customers WHERE first_name IS NULL OR last_name IS NULL"
            " OR email !~ '^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$' OR created_at > now()",
        )
    assert (dirty, dirty_customers) == (0, 0)


def test_seed_rejects_bad_arguments(seed_dsn: str) -> None:
    with pytest.raises(ValueError, match="dirty_share"):
        demo.seed(seed_dsn, rows=10, dirty_share=1.5)
    with pytest.raises(ValueError, match="rows"):
        demo.seed(seed_dsn, rows=-1)


def test_simulate_inserts_updates_and_deletes(seed_dsn: str) -> None:
    with pytest.raises(MissingObject, match="etl-assets seed"):
        demo.simulate(seed_dsn, changes=10)
    demo.seed(seed_dsn, rows=1000, seed=2, dirty_share=0.0, until=demo.END)
    before = _checksums(seed_dsn)
    result = demo.simulate(seed_dsn, changes=200, seed=11)
    assert result.inserted == {"customers": 10, "orders": 100}
    assert 0 < result.updated["orders"] <= 80
    assert 0 < result.deleted["orders"] <= 20
    with psycopg.connect(seed_dsn) as conn:
        assert _one(conn, "SELECT count(*) FROM shop.orders") == 1000 + 100 - result.deleted["orders"]
        assert _one(conn, "SELECT count(*) FROM shop.orders WHERE id > 1000") == 100
        assert _one(conn, "SELECT count(*) FROM shop.customers") == 110
        # Updated and inserted rows carry the transaction's time: after every seeded timestamp.
        moved = _one(conn, "SELECT count(*) FROM shop.orders WHERE updated_at >= %s", (demo.END,))
        assert moved == 100 + result.updated["orders"]
        assert _one(conn, "SELECT count(*) FROM shop.orders WHERE updated_at < created_at") == 0
    assert _checksums(seed_dsn)["orders"] != before["orders"]


def test_simulate_picks_the_same_rows_for_the_same_seed(seed_dsn: str) -> None:
    picked = []
    for _ in range(2):
        demo.seed(seed_dsn, rows=500, seed=4, until=demo.END)
        result = demo.simulate(seed_dsn, changes=100, seed=9)
        with psycopg.connect(seed_dsn) as conn:
            ids = conn.execute("SELECT array_agg(id ORDER BY id) FROM shop.orders").fetchone()[0]
        picked.append((result, ids))
    assert picked[0] == picked[1]


def test_ensure_seeded_seeds_once_even_when_racing(seed_dsn: str) -> None:
    outcomes: list[bool] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            outcomes.append(demo.ensure_seeded(seed_dsn, rows=3000))
        except BaseException as exc:  # asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(outcomes) == [False, False, True]
    with psycopg.connect(seed_dsn) as conn:
        assert _one(conn, "SELECT count(*) FROM shop.orders") == 3000
    assert demo.ensure_seeded(seed_dsn) is False
