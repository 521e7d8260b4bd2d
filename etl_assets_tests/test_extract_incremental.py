"""Incremental extracts: late-committing transactions, NULL cursors, and index use on a large table."""

from __future__ import annotations

import secrets
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


# --- The late-commit bound: time zones, standby, privileges, prepared and idle transactions ----------


def _local_events(dbs: dict[str, str], schema: str, rows: int) -> None:
    """``updated_at timestamp`` (no time zone) stamped by ``now()`` in each writer's session zone."""
    execute(dbs["source"], sql.SQL(
        "DROP SCHEMA IF EXISTS {s} CASCADE; CREATE SCHEMA {s};"
        "CREATE TABLE {s}.events (id int PRIMARY KEY, v text, updated_at timestamp NOT NULL DEFAULT now());"
        "CREATE INDEX ON {s}.events (updated_at);"
        "SET TIME ZONE 'America/Los_Angeles';"
        "INSERT INTO {s}.events (id, v) SELECT g, 'v' || g FROM generate_series(1, {r}) g"
    ).format(s=sql.Identifier(schema), r=sql.Literal(rows)))


def _local_spec(schema: str, extra: str):
    return spec_of(f"tables:\n  - name: {schema}.events\n    extract: incremental\n    primary_key: [id]\n"
                   f"    cursor: updated_at\n    target: raw.{schema}_events\n" + extra)


def _writer(dbs: dict[str, str], zone: str, statement: str) -> psycopg.Connection:
    """A session in ``zone`` whose transaction is left open after ``statement``."""
    conn = psycopg.connect(dbs["source"])
    conn.execute(sql.SQL("SET TIME ZONE {}").format(sql.Literal(zone)))
    conn.commit()
    conn.execute(statement)
    return conn


def _nothing_loaded(dbs: dict[str, str], target: str) -> None:
    assert scalar(dbs["warehouse"], "SELECT to_regclass(%s) IS NULL", [target])
    assert scalar(dbs["warehouse"], "SELECT count(*) FROM etl.state WHERE target = %s", [target]) == 0


def test_timestamp_cursor_without_zone_or_a_26h_lag_is_refused(dbs: dict[str, str]) -> None:
    from etl_assets.errors import ConfigError

    _local_events(dbs, "nozone", 5)
    run(spec_of("tables:\n  - name: seqs.log\n    extract: full\n"), dbs)  # etl.state exists
    for extra in ("", "    lag: 3600\n"):
        with pytest.raises(ConfigError) as info:
            run(_local_spec("nozone", extra), dbs)
        message = str(info.value)
        assert "\n" not in message
        assert "nozone.events" in message and "timestamp without time zone" in message
        assert "cursor_time_zone:" in message and "lag: 93600" in message
        _nothing_loaded(dbs, "raw.nozone_events")


def test_late_commit_from_a_los_angeles_writer_with_cursor_time_zone(dbs: dict[str, str]) -> None:
    """The writers stamp local Los Angeles time; one holds its transaction open across an extract and
    commits after it: the next run picks its row up (with the extracting role's zone, UTC, the bound
    was 8 hours past the row and it was lost). The session holding the bound is reported by pid."""
    _local_events(dbs, "la", 20)
    spec = _local_spec("la", "    cursor_time_zone: America/Los_Angeles\n")
    assert spec.cursor_time_zone == "America/Los_Angeles"
    assert run(spec, dbs).rows_read == 20
    holder = _writer(dbs, "America/Los_Angeles",
                     "UPDATE la.events SET v = 'late', updated_at = now() WHERE id = 1")
    try:
        later = _writer(dbs, "America/Los_Angeles",
                        "UPDATE la.events SET v = 'early', updated_at = now() WHERE id = 2")
        later.commit()
        later.close()
        middle = run(spec, dbs)
        assert scalar(dbs["warehouse"], "SELECT v FROM raw.la_events WHERE id = 2") == "early"
        assert scalar(dbs["warehouse"], "SELECT v FROM raw.la_events WHERE id = 1") == "v1"
        pid = holder.info.backend_pid
        assert f"pid {pid} (idle in transaction" in middle.metadata()["lower_bound_held_by"]
        assert any(f"pg_terminate_backend({pid})" in w for w in middle.warnings)
        holder.commit()
    finally:
        holder.close()
    last = run(spec, dbs)
    assert scalar(dbs["warehouse"], "SELECT v FROM raw.la_events WHERE id = 1") == "late"
    assert last.lower_bound_held_by is None
    assert_equal(dbs, spec)


def test_late_commits_from_writers_in_two_zones_with_a_26h_lag(dbs: dict[str, str]) -> None:
    """Writers in Los Angeles (UTC-8) and Tokyo (UTC+9), no cursor_time_zone: lag 93600 covers both."""
    _local_events(dbs, "zones", 20)
    spec = _local_spec("zones", "    lag: 93600\n")
    assert run(spec, dbs).rows_read == 20
    west = _writer(dbs, "America/Los_Angeles",
                   "UPDATE zones.events SET v = 'west', updated_at = now() WHERE id = 1")
    east = _writer(dbs, "Asia/Tokyo", "UPDATE zones.events SET v = 'east', updated_at = now() WHERE id = 2")
    try:
        execute(dbs["source"], "SET TIME ZONE 'Asia/Tokyo';"
                "UPDATE zones.events SET v = 'x', updated_at = now() "
                "WHERE id = 3")
        run(spec, dbs)
        assert scalar(dbs["warehouse"], "SELECT string_agg(v, ',' ORDER BY id) FROM raw.zones_events "
                      "WHERE id <= 3") == "v1,v2,x"
        west.commit()
        east.commit()
    finally:
        west.close()
        east.close()
    run(spec, dbs)
    assert scalar(dbs["warehouse"], "SELECT string_agg(v, ',' ORDER BY id) FROM raw.zones_events "
                  "WHERE id <= 3") == "west,east,x"
    assert_equal(dbs, spec)


def test_hot_standby_source_needs_lag(dbs: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A standby's pg_stat_activity does not show the primary's transactions: refused without lag."""
    from etl_assets.errors import ConfigError
    from etl_assets.extract import incremental

    monkeypatch.setattr(incremental, "source_in_recovery", lambda conn: True)
    _events(dbs, "standby", 10)
    for fast in ("false", "true"):
        spec = spec_of("tables:\n  - name: standby.events\n    extract: incremental\n    primary_key: [id]\n"
                       f"    cursor: updated_at\n    fast_path: {fast}\n    target: raw.standby_events\n")
        with pytest.raises(ConfigError, match=r"standby.events.*hot standby.*declare lag:"):
            run(spec, dbs)
        _nothing_loaded(dbs, "raw.standby_events")
    assert run(_spec("standby", lag=600), dbs).rows_read == 10
    assert scalar(dbs["warehouse"], "SELECT count(*) FROM raw.standby_events") == 10


def test_role_without_pg_read_all_stats_is_refused_unless_lag_or_opt_in(dbs: dict[str, str],
                                                                         pg_admin_dsn: str) -> None:
    from etl_assets.errors import ConfigError
    from etl_assets.settings import with_database

    _events(dbs, "stats", 10)
    role = f"r_{secrets.token_hex(4)}"
    database = scalar(dbs["source"], "SELECT current_database()")
    execute(pg_admin_dsn, sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        grant = "GRANT USAGE ON SCHEMA stats TO {r}; GRANT SELECT ON stats.events TO {r}"
        execute(dbs["source"], sql.SQL(grant).format(r=sql.Identifier(role)))
        limited = {"source": with_database(pg_admin_dsn.replace("postgres@", f"{role}@", 1), database),
                   "warehouse": dbs["warehouse"]}
        assert scalar(limited["source"], "SELECT current_user") == role
        with pytest.raises(ConfigError) as info:
            run(_spec("stats"), limited)
        message = str(info.value)
        assert "pg_read_all_stats" in message and "lag:" in message and "late_commits: ignore" in message
        _nothing_loaded(dbs, "raw.stats_events")
        opted = spec_of("tables:\n  - name: stats.events\n    extract: incremental\n    primary_key: [id]\n"
                        "    cursor: updated_at\n    late_commits: ignore\n    target: raw.stats_events\n")
        report = run(opted, limited)
        assert report.rows_read == 10 and any("late_commits: ignore" in w for w in report.warnings)
        assert run(_spec("stats", lag=60), limited).rows_read == 10
        execute(pg_admin_dsn, sql.SQL("GRANT pg_read_all_stats TO {}").format(sql.Identifier(role)))
        assert run(_spec("stats"), limited).rows_read == 10
        assert scalar(dbs["warehouse"], "SELECT count(*) FROM raw.stats_events") == 10
    finally:
        execute(dbs["source"], sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        execute(pg_admin_dsn, sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_pending_prepared_transaction_holds_the_bound(dbs: dict[str, str]) -> None:
    """The start of a prepared transaction is recorded nowhere (only its later PREPARE time), so
    while one is pending the bound stays at the previous run's (or at the beginning on a first run)."""
    from etl_assets.extract.incremental import OpenTransactions, next_lower_bound

    with psycopg.connect(dbs["source"], autocommit=True) as conn:
        prepare_session(conn)
        now = conn.execute("SELECT now()::text").fetchone()[0]
        upper = conn.execute("SELECT (now() - interval '1 minute')::text").fetchone()[0]
        previous = conn.execute("SELECT (now() - interval '1 hour')::text").fetchone()[0]
        ctype = "timestamp with time zone"
        nothing = OpenTransactions(now, None, 0, "UTC")
        assert next_lower_bound(conn, ctype, "timestamptz", upper, nothing, 0, None, previous).value == upper
        prepared = OpenTransactions(now, None, 0, "UTC", prepared=1, oldest_prepared=now)
        held = next_lower_bound(conn, ctype, "timestamptz", upper, prepared, 0, None, previous)
        assert held.value == previous
        assert next_lower_bound(conn, ctype, "timestamptz", upper, prepared, 0, None, None).value is None


def test_prepared_transaction_committed_late_is_not_lost(dbs: dict[str, str]) -> None:
    """Runs on the embedded server (max_prepared_transactions = 10, etl_assets/embedded.py); a server
    without prepared transactions cannot hold one, which the skip says."""
    if int(scalar(dbs["source"], "SHOW max_prepared_transactions")) == 0:
        pytest.skip("max_prepared_transactions = 0 on this server: PREPARE TRANSACTION is impossible "
                    "(the bound's handling is tested by test_pending_prepared_transaction_holds_the_bound)")
    _events(dbs, "twophase", 10)
    spec = _spec("twophase")
    assert run(spec, dbs).rows_read == 10
    gid = f"g{secrets.token_hex(4)}"
    with psycopg.connect(dbs["source"], autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute("UPDATE twophase.events SET v = 'prepared', updated_at = now() WHERE id = 1")
        execute(dbs["source"], "UPDATE twophase.events SET v = 'after', updated_at = now() WHERE id = 2")
        conn.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))
    try:
        run(spec, dbs)  # the session is gone: only pg_prepared_xacts shows the transaction
        run(spec, dbs)
    finally:
        execute(dbs["source"], sql.SQL("COMMIT PREPARED {}").format(sql.Literal(gid)))
    run(spec, dbs)
    assert scalar(dbs["warehouse"], "SELECT v FROM raw.twophase_events WHERE id = 1") == "prepared"
    assert_equal(dbs, spec)
