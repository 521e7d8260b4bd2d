"""Incremental extracts: late-committing transactions, NULL cursors, and index use on a large table."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from etl_assets.extract.incremental import extract_queries
from etl_assets.extract.source import describe, prepare_session
from etl_assets_tests.extract_helpers import (
    assert_equal,
    execute,
    module_databases,
    run,
    scalar,
    spec_of,
)


@pytest.fixture(scope="module")
def dbs(pg_admin_dsn: str) -> Iterator[dict[str, str]]:
    yield from module_databases(pg_admin_dsn)


def _events(dbs: dict[str, str], schema: str, rows: int, nullable: bool = False) -> None:
    execute(dbs["source"], sql.SQL(
        "DROP SCHEMA IF EXISTS {s} CASCADE; CREATE SCHEMA {s};"
        "CREATE TABLE {s}.events (id int PRIMARY KEY, v text, updated_at timestamptz {n} DEFAULT now());"
        "CREATE INDEX ON {s}.events (updated_at);"
        "INSERT INTO {s}.events (id, v) SELECT g, 'v' || g FROM generate_series(1, {r}) g"
    ).format(s=sql.Identifier(schema), n=sql.SQL("" if nullable else "NOT NULL"), r=sql.Literal(rows)))


def _spec(schema: str, lag: int = 0):
    return spec_of(f"tables:\n  - name: {schema}.events\n    extract: incremental\n    primary_key: [id]\n"
                   f"    cursor: updated_at\n    lag: {lag}\n    target: raw.{schema}_events\n")


def test_late_commit_with_an_earlier_cursor_is_not_lost(dbs: dict[str, str]) -> None:
    _events(dbs, "late", 100)
    spec = _spec("late")
    assert run(spec, dbs).rows_read == 100
    holder = psycopg.connect(dbs["source"])  # a transaction held open across the next extract
    try:
        started = holder.execute(
            "UPDATE late.events SET v = 'late', updated_at = now() WHERE id = 1 RETURNING updated_at"
        ).fetchone()[0]
        # A later transaction commits a later cursor value first.
        execute(dbs["source"], "UPDATE late.events SET v = 'early', updated_at = now() WHERE id = 2")
        middle = run(spec, dbs)
        assert middle.cursor_after is not None
        assert scalar(dbs["warehouse"], "SELECT v FROM raw.late_events WHERE id = 2") == "early"
        assert scalar(dbs["warehouse"], "SELECT v FROM raw.late_events WHERE id = 1") == "v1"
        # The stored lower bound waits for the open transaction's start, not for the high-water mark.
        next_from = scalar(dbs["warehouse"],
                           "SELECT (state->>'next_from')::timestamptz FROM etl.state WHERE target = %s",
                           ["raw.late_events"])
        assert next_from <= started
        holder.commit()
    finally:
        holder.close()
    last = run(spec, dbs)
    assert last.updated >= 1
    assert scalar(dbs["warehouse"], "SELECT v FROM raw.late_events WHERE id = 1") == "late"
    assert_equal(dbs, spec)


def test_null_cursor_rows_are_read_every_run_and_counted(dbs: dict[str, str]) -> None:
    _events(dbs, "nulls", 50, nullable=True)
    execute(dbs["source"], "UPDATE nulls.events SET updated_at = NULL WHERE id <= 5")
    spec = _spec("nulls")
    first = run(spec, dbs)
    assert (first.rows_read, first.null_cursor_rows) == (50, 5)
    assert any("NULL" in w for w in first.warnings)
    assert first.metadata()["null_cursor_rows"] == 5
    execute(dbs["source"], "UPDATE nulls.events SET v = 'changed' WHERE id = 3")
    second = run(spec, dbs)
    assert second.null_cursor_rows == 5 and second.updated == 1
    assert_equal(dbs, spec)


def test_numeric_cursor_with_lag(dbs: dict[str, str]) -> None:
    execute(dbs["source"], "DROP SCHEMA IF EXISTS seqs CASCADE; CREATE SCHEMA seqs;"
            "CREATE TABLE seqs.log (id bigint PRIMARY KEY, v text);"
            "INSERT INTO seqs.log SELECT g, 'x' FROM generate_series(1, 30) g")
    spec = spec_of("tables:\n  - name: seqs.log\n    extract: incremental\n    primary_key: [id]\n"
                   "    cursor: id\n    lag: 10\n")
    assert run(spec, dbs).rows_read == 30
    execute(dbs["source"], "INSERT INTO seqs.log VALUES (25.5::int + 100, 'y'), (131, 'z')")
    second = run(spec, dbs)
    assert second.rows_read == 13  # 20..30 again (lag 10) plus the two new ids
    assert_equal(dbs, spec)


def test_missing_source_table_and_cursor_column_are_named(dbs: dict[str, str]) -> None:
    from etl_assets.errors import MissingObject

    _events(dbs, "miss", 3)
    with pytest.raises(MissingObject, match=r"Source table miss\.nope does not exist"):
        run(spec_of("tables:\n  - name: miss.nope\n    extract: full\n"), dbs)
    with pytest.raises(MissingObject, match=r"no column 'changed_at' \(key 'cursor'"):
        run(spec_of("tables:\n  - name: miss.events\n    extract: incremental\n    primary_key: [id]\n"
                    "    cursor: changed_at\n"), dbs)


def test_high_water_mark_and_extract_use_the_index(dbs: dict[str, str]) -> None:
    """EXPLAIN on a 200,000-row table: neither query scans the table sequentially."""
    _events(dbs, "big", 200_000)
    execute(dbs["source"], "UPDATE big.events SET updated_at = now() - (id || ' seconds')::interval;"
            "ANALYZE big.events")
    spec = _spec("big")
    with psycopg.connect(dbs["source"], autocommit=True) as conn:
        prepare_session(conn)
        table = describe(conn, spec)
        lower = conn.execute("SELECT (now() - interval '100 seconds')::text").fetchone()[0]
        upper = conn.execute("SELECT max(updated_at)::text FROM big.events").fetchone()[0]
        hwm, query, params = extract_queries(table, spec, lower, upper)
        plans = []
        for statement, args in ((hwm, None), (query, params)):
            rows = conn.execute(sql.SQL("EXPLAIN ") + statement, args).fetchall()
            plans.append("\n".join(r[0] for r in rows))
    for plan in plans:
        assert "Seq Scan" not in plan, plan
        assert "Index" in plan, plan


def test_chunked_needs_a_unique_key_and_incremental_warns_without_cursor_index(dbs: dict[str, str]) -> None:
    from etl_assets.errors import MissingObject

    execute(dbs["source"], "DROP SCHEMA IF EXISTS nokey CASCADE; CREATE SCHEMA nokey;"
            "CREATE TABLE nokey.t (id int, v text, updated_at timestamptz DEFAULT now());"
            "INSERT INTO nokey.t (id, v) SELECT g % 5, 'x' FROM generate_series(1, 20) g")
    with pytest.raises(MissingObject, match=r"unique index .* on exactly those columns"):
        run(spec_of("tables:\n  - name: nokey.t\n    extract: chunked\n    primary_key: [id]\n"), dbs)
    execute(dbs["source"], "CREATE TABLE nokey.u (id int PRIMARY KEY, updated_at timestamptz DEFAULT now());"
            "INSERT INTO nokey.u (id) VALUES (1), (2)")
    report = run(spec_of("tables:\n  - name: nokey.u\n    extract: incremental\n    primary_key: [id]\n"
                         "    cursor: updated_at\n"), dbs)
    assert any("No index on nokey.u starts with cursor column 'updated_at'" in w for w in report.warnings)
