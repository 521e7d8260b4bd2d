"""The column-schema change check of an extract, answered in the extract's own step."""

from __future__ import annotations

import dagster as dg
import pytest

from etl_assets import runner
from etl_assets.quality.schema_change import SCHEMA_CHANGE_CHECK, schema_change_spec
from etl_assets_tests.extract_helpers import execute, spec_of


def _verdicts(result: dg.ExecuteInProcessResult) -> list[tuple[bool, str]]:
    evaluations = [e.asset_check_evaluation_data for e in result.all_events
                   if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    return [(e.passed, e.metadata["description"].value) for e in evaluations
            if e.check_name == SCHEMA_CHANGE_CHECK]


def test_extract_reports_added_removed_and_retyped_columns_in_its_own_step(
    etl_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from etl_assets.extract.assets import extract_asset
    from etl_assets.resources import build_resources

    src = etl_env["ETL_SOURCE_DSN"]
    execute(src, "CREATE SCHEMA IF NOT EXISTS app; DROP TABLE IF EXISTS app.shapes;"
                 "CREATE TABLE app.shapes (id int PRIMARY KEY, name text, size int);"
                 "INSERT INTO app.shapes SELECT g, 's' || g, g FROM generate_series(1, 20) g")
    spec = spec_of("tables:\n  - name: app.shapes\n    extract: full\n    primary_key: [id]\n")
    asset = extract_asset(spec, "test.yaml")
    assert [c.name for c in asset.check_specs] == [SCHEMA_CHANGE_CHECK]
    resources = build_resources()
    with dg.DagsterInstance.get() as instance:
        def materialize() -> list[tuple[bool, str]]:
            result = dg.materialize([asset], resources=resources, instance=instance)
            assert result.success
            # one step: the asset's; no separate check op
            steps = {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
            assert steps == {asset.op.name}
            return _verdicts(result)

        assert materialize() == [(True, "The asset has been materialized fewer than 2 times")]
        assert materialize() == [
            (True, "No changes to column schema between previous and latest materialization")]
        # The target follows the source's columns (widened, extended); the check says what changed.
        execute(src, "ALTER TABLE app.shapes ADD COLUMN colour text; ALTER TABLE app.shapes "
                     "ALTER COLUMN size TYPE bigint; UPDATE app.shapes SET colour = 'red'")
        ((passed, text),) = materialize()
        assert not passed
        assert "Added columns: colour" in text
        assert "- size: integer -> bigint" in text
        # The check alone (the UI's "execute checks", the daily full-checks job): the two latest
        # stored materializations, and no new materialization.
        job = dg.define_asset_job("checks_only", selection=dg.AssetSelection.all_asset_checks())
        defs = dg.Definitions(assets=[asset], jobs=[job], resources=resources)
        before = instance.get_latest_materialization_event(asset.key).run_id
        alone = defs.resolve_job_def("checks_only").execute_in_process(instance=instance)
        assert alone.success
        ((passed, text),) = _verdicts(alone)
        assert not passed and "Added columns: colour" in text
        assert instance.get_latest_materialization_event(asset.key).run_id == before
        # The asset without its check (the UI's launchpad selects no checks): it materializes, no verdict.
        job_def = dg.Definitions(assets=[asset], resources=resources).resolve_implicit_global_asset_job_def()
        subset = job_def.get_subset(asset_selection={asset.key}, asset_check_selection=set())
        bare = subset.execute_in_process(instance=instance)
        assert bare.success and _verdicts(bare) == []
        assert instance.get_latest_materialization_event(asset.key).run_id == bare.run_id
    # WARN: a changed schema is reported, the run itself succeeds (checked above) and exits 0.


def test_a_key_dagster_cannot_name_gets_no_check() -> None:
    assert schema_change_spec(dg.AssetKey(["history", "audit log"])) is None
    assert schema_change_spec(dg.AssetKey(["raw", "orders"])) is not None


def test_run_summary_lists_the_extract_check(etl_env: dict[str, str]) -> None:
    """`etl-assets run` of an extract alone: its check shows in the summary, from the asset's step."""
    from etl_assets.extract.assets import extract_asset
    from etl_assets.resources import build_resources

    execute(etl_env["ETL_SOURCE_DSN"], "CREATE SCHEMA IF NOT EXISTS app; DROP TABLE IF EXISTS app.dots;"
            "CREATE TABLE app.dots (id int PRIMARY KEY); INSERT INTO app.dots VALUES (1), (2)")
    asset = extract_asset(spec_of("tables:\n  - name: app.dots\n    extract: full\n    primary_key: [id]\n"),
                          "test.yaml")
    lines: list[str] = []
    with dg.DagsterInstance.get() as instance:
        summary = runner.run(defs=dg.Definitions(assets=[asset], resources=build_resources()),
                             instance=instance, out=lines.append)
    assert summary.ok, lines
    assert [(c.asset, c.name, c.passed) for c in summary.checks] == [("raw/dots", SCHEMA_CHANGE_CHECK, True)]
    assert not any("checks of" in line for line in lines), lines  # no separate check step
