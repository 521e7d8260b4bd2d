"""An incremental run checks the rows it wrote; the full table is checked on its own cadence; the
column profile is not recomputed within its cadence."""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
import psycopg
import pytest

from etl_assets.db import PostgresResource
from etl_assets.extract.assets import extract_asset
from etl_assets.quality.checks import RuleSet, build_asset_checks
from etl_assets.quality.defs import full_checks_job
from etl_assets.quality.rules import parse_rules
from etl_assets_tests.extract_helpers import execute, module_databases, spec_of

KEY = dg.AssetKey(["raw", "sc_items"])


@pytest.fixture(scope="module")
def dbs(pg_admin_dsn: str) -> Iterator[dict[str, str]]:
    yield from module_databases(pg_admin_dsn)


@pytest.fixture
def defs(dbs: dict[str, str]) -> dg.Definitions:
    execute(dbs["source"], """
        DROP SCHEMA IF EXISTS sc CASCADE; CREATE SCHEMA sc;
        CREATE TABLE sc.items (id int PRIMARY KEY, amount numeric, code text,
                               updated_at timestamptz NOT NULL);
        CREATE INDEX ON sc.items (updated_at);
        -- distinct, old cursor values; row 7 is bad (negative amount), row 9 has code 'dup'
        INSERT INTO sc.items SELECT g, CASE WHEN g = 7 THEN -5 ELSE g END,
               CASE WHEN g = 9 THEN 'dup' ELSE 'c' || g END,
               now() - interval '1 day' + g * interval '1 second' FROM generate_series(1, 200) g;
    """)
    execute(dbs["warehouse"], "DROP SCHEMA IF EXISTS raw CASCADE; DROP SCHEMA IF EXISTS etl CASCADE")
    spec = spec_of("tables:\n  - name: sc.items\n    extract: incremental\n    cursor: updated_at\n"
                   "    primary_key: [id]\n    target: raw.sc_items\n")
    rules = parse_rules("sc.items", [
        {"name": "amount_positive", "kind": "range", "column": "amount", "min": 0, "severity": "warning"},
        {"name": "ids_present", "kind": "not_null", "column": "id", "severity": "error"},
        {"name": "codes_unique", "kind": "unique", "column": "code", "severity": "warning"},
        {"name": "has_rows", "kind": "row_count", "min": 1, "severity": "warning"},
    ])
    checks = build_asset_checks(RuleSet(KEY, tuple(rules), spec.target, ("id",)))
    return dg.Definitions(
        assets=[extract_asset(spec, "test.yaml")],
        asset_checks=[checks],
        jobs=[full_checks_job()],
        resources={
            "source": PostgresResource(dsn=dbs["source"], role="source"),
            "warehouse": PostgresResource(dsn=dbs["warehouse"]),
        },
    )


def _results(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def _meta(evaluation: dg.AssetCheckEvaluation, key: str):
    return evaluation.metadata[key].value


def test_incremental_run_checks_new_rows_and_full_cadence_checks_the_table(
    defs: dg.Definitions, dbs: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ETL_PROFILE_EVERY_HOURS", raising=False)
    job = defs.resolve_implicit_global_asset_job_def()
    with dg.instance_for_test() as instance:
        first = job.execute_in_process(instance=instance, raise_on_error=False)
        checks = _results(first)
        # First load: no stored lower bound, so every rule covers the whole table; the bad row fails.
        assert _meta(checks["amount_positive"], "scope") == "full_table"
        assert not checks["amount_positive"].passed and _meta(checks["amount_positive"], "failing_rows") == 1
        first_meta = first.asset_materializations_for_node("extract__raw__sc_items")[0].metadata
        assert "profile/amount/null_count" in first_meta  # profiled (no earlier profile)

        # 5 rows change at the source; one of them takes the code of an OLD row.
        execute(dbs["source"], "UPDATE sc.items SET amount = amount + 1, updated_at = now() "
                               "WHERE id IN (20, 40, 60, 80, 100)")
        execute(dbs["source"], "UPDATE sc.items SET code = 'dup' WHERE id = 100")
        second = job.execute_in_process(instance=instance, raise_on_error=False)
        checks = _results(second)
        for name in ("amount_positive", "ids_present", "codes_unique"):
            assert _meta(checks[name], "scope") == "new_rows", name
            # the 5 changed rows and the row at the previous high-water mark (read again by design)
            assert _meta(checks[name], "total_rows") == 6, name
        assert checks["amount_positive"].passed  # the old bad row is outside the new rows
        assert checks["ids_present"].passed
        # a new row duplicating an old one is found, though the old row is not among the new rows
        assert not checks["codes_unique"].passed and _meta(checks["codes_unique"], "failing_rows") == 1
        assert _meta(checks["has_rows"], "scope") == "full_table"  # row_count: always the table
        assert "new rows" in checks["amount_positive"].description
        second_meta = second.asset_materializations_for_node("extract__raw__sc_items")[0].metadata
        assert "profile/amount/null_count" not in second_meta  # within the cadence: no full scan
        assert "profile/skipped" in second_meta and "profile/last_full_at" in second_meta
        # the cadence in words, never a timedelta repr ("1 day, 0:00:00")
        assert second_meta["profile/skipped"].value.startswith("full profile at most every 1 day (")
        assert second_meta["dagster/row_count"].value == 200  # the count still comes from etl.state

        # The daily full-table cadence: the checks alone, on every row.
        full_job = defs.resolve_job_def("quality_full_checks")
        full = full_job.execute_in_process(instance=instance, raise_on_error=False)
        checks = _results(full)
        assert _meta(checks["amount_positive"], "scope") == "full_table"
        assert not checks["amount_positive"].passed and _meta(checks["amount_positive"], "failing_rows") == 1
        assert _meta(checks["amount_positive"], "total_rows") == 200
        assert _meta(checks["codes_unique"], "failing_rows") == 2  # both rows of the duplicate

        # Cadence 0: profile after every write.
        monkeypatch.setenv("ETL_PROFILE_EVERY_HOURS", "0")
        execute(dbs["source"], "UPDATE sc.items SET updated_at = now() WHERE id = 1")
        third = job.execute_in_process(instance=instance, raise_on_error=False)
        third_meta = third.asset_materializations_for_node("extract__raw__sc_items")[0].metadata
        assert third_meta["profile/amount/min"].value == -5.0
    with psycopg.connect(dbs["warehouse"]) as conn:
        (runs,) = conn.execute("SELECT count(*) FROM etl.quality_cadence WHERE target = 'raw.sc_items'"
                               ).fetchone()
        index = conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'sc_items' "
                             "AND indexdef LIKE '%(updated_at)%'").fetchone()
    assert runs == 1  # one cadence row per table and task
    assert index is not None  # the new-rows scope reads through an index on the cursor
