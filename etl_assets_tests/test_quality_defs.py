"""The quality domain inside the project's Definitions, and the demo run showing the seed's rules with
their expected outcomes, profiles on the materializations and run-metrics rows written by the run."""

from __future__ import annotations

import dagster as dg
import psycopg
import pytest

from etl_assets import runner
from etl_assets.demo import seed as demo


@pytest.fixture
def project_defs(etl_env: dict[str, str], source_dsn: str) -> dg.Definitions:
    demo.seed(source_dsn, rows=2000, seed=1)
    from etl_assets.definitions import build_definitions

    return build_definitions()


def test_definitions_carry_checks_freshness_hooks_and_sensors(project_defs: dg.Definitions) -> None:
    graph = project_defs.get_repository_def().asset_graph
    checks = {(k.asset_key.to_user_string(), k.name): graph.get_check_spec(k) for k in graph.asset_check_keys}
    # the seed's four rules, with their severities (error = blocking)
    assert checks[("raw/customers", "no_null_ids")].blocking is True
    assert checks[("raw/customers", "valid_emails")].blocking is False
    assert checks[("raw/orders", "reasonable_amounts")].blocking is False
    assert checks[("raw/orders", "no_future_dates")].blocking is False
    assert ("raw/orders", "column_schema_change") in checks
    for key in ("raw/customers", "raw/orders", "raw/categories"):
        node = graph.get(dg.AssetKey.from_user_string(key))
        assert node.freshness_policy is not None, key
    assert graph.get(dg.AssetKey(["raw", "customers"])).metadata["sensitive"] == ["email"]
    hooked = [a for a in project_defs.assets if isinstance(a, dg.AssetsDefinition) and a.hook_defs]
    assert {h.name for a in hooked for h in a.hook_defs} == {
        "etl_run_metrics_success",
        "etl_run_metrics_failure",
    }
    assert {s.name for s in project_defs.sensors} >= {
        "etl_run_metrics_failed_runs",
        "etl_run_metrics_canceled_runs",
    }


def test_demo_run_shows_rule_outcomes_profiles_and_metrics(
    project_defs: dg.Definitions, etl_env: dict[str, str], warehouse_conn: psycopg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # profile after every write: an earlier test on this worker's warehouse may have profiled the
    # demo tables within the default 24 hours
    monkeypatch.setenv("ETL_PROFILE_EVERY_HOURS", "0")
    with dg.DagsterInstance.get() as instance:
        summary = runner.run(defs=project_defs, instance=instance, out=lambda s: None)
        text = runner.format_summary(summary)
        assert summary.ok, text
        outcome = {(c.asset, c.name): (c.passed, c.severity) for c in summary.checks}
        # errors hold (the demo routes dirty rows away before blocking checks), warnings fail visibly
        assert outcome[("raw/customers", "no_null_ids")] == (True, "ERROR")
        assert outcome[("raw/orders", "no_null_ids")] == (True, "ERROR")
        assert outcome[("raw/customers", "valid_emails")] == (False, "WARN")
        assert outcome[("raw/orders", "reasonable_amounts")] == (False, "WARN")
        assert outcome[("raw/orders", "no_future_dates")] == (False, "WARN")
        assert "raw/orders:reasonable_amounts: FAILED WARN" in text
        # the profile sits on the materialization (numbers for the plots, sensitive values masked)
        event = instance.get_latest_materialization_event(dg.AssetKey(["raw", "customers"]))
        meta = event.asset_materialization.metadata
        assert meta["profile/id/null_count"].value == 0
        assert "profile/email/distinct_count" in meta and "@" not in meta["profile"].value
        # one run-metrics row per materialized asset, written during the run
        got = dict(
            warehouse_conn.execute(
                "SELECT asset, status FROM etl.run_metrics WHERE run_id = ANY(%s)", (summary.run_ids,)
            ).fetchall()
        )
        assert {a.key for a in summary.materialized} <= set(got)
        assert set(got.values()) == {"success"}


def test_definitions_load_with_a_hostile_named_table(
    etl_env: dict[str, str], tmp_path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A declared target whose asset key Dagster check names cannot hold (a space, a quote) loads:
    its asset is there, its column-schema change check is left out with a warning, and a plain-named
    table next to it keeps its check."""
    file = tmp_path / "hostile.yaml"
    file.write_text(
        "tables:\n"
        "  - schema: app\n    table: Audit Log\n    extract: full\n    primary_key: [id]\n"
        "    target: 'history.\"audit log\"'\n"
        "  - name: app.users\n    extract: full\n    primary_key: [id]\n    target: raw.users\n"
    )
    monkeypatch.setenv("ETL_PIPELINES", str(file))
    from etl_assets.definitions import build_definitions

    with caplog.at_level("WARNING", logger="etl_assets.quality.defs"):
        graph = build_definitions().resolve_asset_graph()
    hostile, plain = dg.AssetKey(["history", "audit log"]), dg.AssetKey(["raw", "users"])
    assert {hostile, plain} <= set(graph.get_all_asset_keys())
    checks = {(k.asset_key, k.name) for k in graph.asset_check_keys}
    assert (plain, "column_schema_change") in checks
    assert not [c for c in checks if c[0] == hostile]
    assert any("history/audit log" in r.getMessage() and "column-schema change" in r.getMessage()
               for r in caplog.records)
    # checks the user declared on such a table cannot exist in Dagster: one clear error naming it
    from etl_assets.errors import ConfigError

    file.write_text(file.read_text().replace(
        "    target: 'history.\"audit log\"'\n",
        "    target: 'history.\"audit log\"'\n"
        "    checks:\n      - {name: ids, kind: not_null, columns: [id]}\n",
    ))
    assert "checks:" in file.read_text()
    with pytest.raises(ConfigError, match=r"Table app\.Audit Log: its checks cannot be attached"):
        build_definitions()


def test_definitions_leave_extracts_out_of_dagsters_schema_check_op(
    project_defs: dg.Definitions,
) -> None:
    """Extracts carry the check themselves; transforms keep Dagster's (one op over their keys)."""
    graph = project_defs.resolve_asset_graph()
    for key in (dg.AssetKey(["raw", "orders"]), dg.AssetKey(["raw", "categories"])):
        node = graph.get(key)
        assert dg.AssetCheckKey(key, "column_schema_change") in node.check_keys
    owners = {}
    for item in project_defs.asset_checks or []:
        for check_key in item.check_keys:
            if check_key.name == "column_schema_change":
                owners[check_key.asset_key.to_user_string()] = item
    assert "raw/orders" not in owners and "raw/categories" not in owners
    assert "clean/orders" in owners  # a transform: Dagster's check op
