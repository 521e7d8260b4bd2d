"""The target's row count reported by extracts comes from etl.state (previous + inserted - deleted,
committed with the data), not from a ``count(*)`` over the whole target on every run."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from etl_assets import state as target_state
from etl_assets_tests.extract_helpers import execute, module_databases, run, scalar, spec_of


@pytest.fixture(scope="module")
def dbs(pg_admin_dsn: str) -> Iterator[dict[str, str]]:
    yield from module_databases(pg_admin_dsn)


def _source(dbs: dict[str, str], schema: str, rows: int) -> None:
    execute(dbs["source"], sql.SQL(
        "DROP SCHEMA IF EXISTS {s} CASCADE; CREATE SCHEMA {s};"
        "CREATE TABLE {s}.events (id int PRIMARY KEY, v text, updated_at timestamptz NOT NULL DEFAULT now());"
        "CREATE INDEX ON {s}.events (updated_at);"
        "INSERT INTO {s}.events (id, v) SELECT g, 'v' || g FROM generate_series(1, {r}) g"
    ).format(s=sql.Identifier(schema), r=sql.Literal(rows)))


def _spec(schema: str, extract: str, load: str = "upsert", fast: bool = False):
    extra = "    cursor: updated_at\n" if extract == "incremental" else "    chunk_size: 70\n"
    return spec_of(f"tables:\n  - name: {schema}.events\n    extract: {extract}\n    load: {load}\n"
                   f"    primary_key: [id]\n{extra}    fast_path: {str(fast).lower()}\n"
                   f"    target: raw.{schema}_events\n")


def _target_count(dbs: dict[str, str], schema: str) -> int:
    return scalar(dbs["warehouse"], sql.SQL("SELECT count(*) FROM raw.{}").format(
        sql.Identifier(f"{schema}_events")))


def _change(dbs: dict[str, str], schema: str, first_new: int, new: int, updated: int) -> None:
    execute(dbs["source"], sql.SQL(
        "UPDATE {s}.events SET v = v || '!', updated_at = now() WHERE id <= {u};"
        "INSERT INTO {s}.events (id, v) SELECT g, 'n' || g FROM generate_series({a}, {b}) g"
    ).format(s=sql.Identifier(schema), u=sql.Literal(updated), a=sql.Literal(first_new),
             b=sql.Literal(first_new + new - 1)))


CASES = [("incremental", "upsert", False), ("incremental", "upsert", True),
         ("chunked", "upsert", False), ("chunked", "upsert", True),
         ("chunked", "insert", False), ("chunked", "insert", True),
         ("full", "truncate_insert", False), ("full", "swap", True), ("full", "upsert", True)]


@pytest.mark.parametrize(("extract", "load", "fast"), CASES)
def test_reported_row_count_is_exact_across_runs(dbs: dict[str, str], extract: str, load: str,
                                                 fast: bool) -> None:
    schema = f"rc_{extract}_{load}_{int(fast)}"
    _source(dbs, schema, 200)
    spec = _spec(schema, extract, load, fast)
    next_id = 201
    for new, updated in [(0, 0), (30, 10), (0, 5), (140, 0)]:
        _change(dbs, schema, next_id, new, updated)
        next_id += new
        report = run(spec, dbs)
        expected = _target_count(dbs, schema)
        assert report.table_rows == expected
        assert report.metadata()["dagster/row_count"] == expected
        stored = scalar(dbs["warehouse"],
                        "SELECT (state->>'table_rows')::bigint FROM etl.state WHERE target = %s",
                        [str(spec.target)])
        assert stored == expected


def _stats(dbs: dict[str, str], schema: str) -> tuple[int, int, int]:
    with psycopg.connect(dbs["warehouse"], autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        return conn.execute(
            "SELECT seq_scan, n_tup_ins, n_tup_upd FROM pg_stat_user_tables WHERE relid = to_regclass(%s)",
            [f"raw.{schema}_events"]).fetchone()


def _flushed(dbs: dict[str, str], schema: str, inserted: int, updated: int) -> tuple[int, int, int]:
    """Statistics once the writes of ``inserted``/``updated`` rows are visible: a backend flushes all
    of its table counters together (at exit at the latest), so the seq_scan count is then complete."""
    deadline = time.monotonic() + 30
    while True:
        stats = _stats(dbs, schema)
        if stats[1] >= inserted and stats[2] >= updated:
            return stats
        assert time.monotonic() < deadline, f"statistics never showed the writes: {stats}"
        time.sleep(0.05)


@pytest.mark.parametrize("fast", [False, True])
def test_incremental_run_does_not_scan_the_target(dbs: dict[str, str], fast: bool) -> None:
    schema = f"rc_scan_{int(fast)}"
    _source(dbs, schema, 500)
    spec = _spec(schema, "incremental", fast=fast)
    assert run(spec, dbs).table_rows == 500  # the first run counts (no stored count yet)
    before = _flushed(dbs, schema, 500, 0)
    _change(dbs, schema, 501, 7, 3)
    report = run(spec, dbs)
    assert (report.inserted, report.updated, report.table_rows) == (7, 3, 507)
    after = _flushed(dbs, schema, before[1] + 7, before[2] + 3)
    assert after[0] == before[0], f"the incremental run scanned the target: {before} -> {after}"
    assert _target_count(dbs, schema) == 507


def test_reset_recounts_the_target(dbs: dict[str, str]) -> None:
    schema = "rc_reset"
    _source(dbs, schema, 100)
    spec = _spec(schema, "incremental")
    assert run(spec, dbs).table_rows == 100
    # Rows written behind the extract's back: the stored count no longer matches until reset.
    execute(dbs["warehouse"], "INSERT INTO raw.rc_reset_events (id, v, updated_at) "
                              "SELECT g, 'x', now() FROM generate_series(1001, 1004) g")
    removed, _ = target_state.reset(dbs["warehouse"], [str(spec.target)])
    assert removed == [str(spec.target)]
    _change(dbs, schema, 101, 2, 1)
    report = run(spec, dbs)
    assert report.table_rows == _target_count(dbs, schema) == 106
    report = run(spec, dbs)
    assert report.table_rows == _target_count(dbs, schema) == 106
