"""``on_fail: dead_letter`` routing on the target of an extract: the extract's stored row count stays
exact, and routed rows stay out of the target across the incremental boundary re-read until they
change at the source."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from etl_assets import dlq
from etl_assets.quality.routing import route_failing_rows
from etl_assets.quality.rules import Rule
from etl_assets_tests.extract_helpers import execute, module_databases, run, scalar, spec_of


@pytest.fixture(scope="module")
def dbs(pg_admin_dsn: str) -> Iterator[dict[str, str]]:
    yield from module_databases(pg_admin_dsn)


RULE = Rule(name="v_present", kind="not_null", columns=["v"], on_fail="dead_letter")


def _route(dbs: dict[str, str], target) -> int:
    origin = dlq.Origin(asset_key="/".join([target.schema, target.name]), run_id="check", target=str(target))
    with psycopg.connect(dbs["warehouse"]) as conn:
        return route_failing_rows(conn, RULE, target, origin)


def _counts(dbs: dict[str, str], target) -> tuple[int, int]:
    """(count(*) of the target, the row count stored in its extract state)."""
    return (scalar(dbs["warehouse"], sql.SQL("SELECT count(*) FROM {}").format(target.ident)),
            scalar(dbs["warehouse"], "SELECT (state->>'table_rows')::int FROM etl.state WHERE target = %s",
                   [str(target)]))


def _letters(dbs: dict[str, str], target) -> list[tuple[int, int]]:
    return [tuple(r) for r in psycopg.connect(dbs["warehouse"]).execute(
        "SELECT (payload->>'id')::int, attempts FROM etl.dead_letters WHERE target = %s ORDER BY 1, 2",
        [str(target)]).fetchall()]


@pytest.mark.parametrize("fast", [False, True], ids=["frame", "copy"])
def test_routing_keeps_the_count_and_routed_rows_stay_out_until_they_change(dbs: dict[str, str],
                                                                            fast: bool) -> None:
    schema = f"routing_{int(fast)}"
    # 111 rows committed in one statement: they share one cursor value, the inclusive boundary.
    execute(dbs["source"], sql.SQL(
        "DROP SCHEMA IF EXISTS {s} CASCADE; CREATE SCHEMA {s};"
        "CREATE TABLE {s}.events (id int PRIMARY KEY, v text, updated_at timestamptz NOT NULL DEFAULT now());"
        "CREATE INDEX ON {s}.events (updated_at);"
        "INSERT INTO {s}.events (id, v) SELECT g, CASE WHEN g % 11 = 0 THEN NULL ELSE 'v' || g END"
        " FROM generate_series(1, 111) g").format(s=sql.Identifier(schema)))
    spec = spec_of(f"tables:\n  - name: {schema}.events\n    extract: incremental\n    primary_key: [id]\n"
                   f"    cursor: updated_at\n    fast_path: {str(fast).lower()}\n    target: raw.{schema}\n")
    target = spec.target
    first = run(spec, dbs)
    assert (first.rows_read, first.table_rows) == (111, 111)
    assert _route(dbs, target) == 10
    assert _counts(dbs, target) == (101, 101)

    again = run(spec, dbs)  # re-reads the boundary: every row shares it
    assert (again.rows_read, again.inserted, again.table_rows) == (101, 0, 101)
    assert again.metadata()["dagster/row_count"] == 101
    assert _counts(dbs, target) == (101, 101)
    assert _route(dbs, target) == 0
    assert _letters(dbs, target) == [(i, 1) for i in range(11, 111, 11)]

    # Changed at the source: 11 fixed, 22 still bad. Both are read again; 22 is routed again.
    execute(dbs["source"], sql.SQL("UPDATE {s}.events SET v = 'fixed', updated_at = now() WHERE id = 11;"
                                   "UPDATE {s}.events SET updated_at = now() WHERE id = 22"
                                   ).format(s=sql.Identifier(schema)))
    changed = run(spec, dbs)
    assert (changed.inserted, changed.table_rows) == (2, 103)
    assert _counts(dbs, target) == (103, 103)
    assert _route(dbs, target) == 1
    assert _counts(dbs, target) == (102, 102)
    assert scalar(dbs["warehouse"], sql.SQL("SELECT v FROM {} WHERE id = 11").format(target.ident)) == "fixed"
    last = run(spec, dbs)
    assert (last.inserted, last.table_rows) == (0, 102)
    assert _counts(dbs, target) == (102, 102)
    # Every source row is in the target or pending in the dead-letter table, never both.
    in_target = {r[0] for r in psycopg.connect(dbs["warehouse"]).execute(
        sql.SQL("SELECT id FROM {}").format(target.ident)).fetchall()}
    dead = {i for i, _ in _letters(dbs, target)} - {11}
    assert in_target | dead == set(range(1, 112)) and not in_target & dead
