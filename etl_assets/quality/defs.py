"""The data-quality domain: checks, freshness, run metrics, and the policies applied at the root.

Two entry points:

- :func:`build_defs` (listed in ``etl_assets.domains``): the asset checks of every declared table
  (``checks:`` in the tables YAML), the run-status sensors that record failed and canceled runs, and
  the ``etl/run_metrics_summary`` asset (success rate and duration per asset, as a markdown table in
  the UI).
- :func:`apply_quality` (called once by ``etl_assets.definitions`` on the merged Definitions): what
  must see every domain's assets, so it is applied in one place at the root: the checks of rules
  declared in Python with :func:`etl_assets.quality.checks.rules_for` (only for assets that exist, so
  a user's YAML without the demo tables still loads), the run-metrics hooks on every asset, the
  FreshnessPolicy on extracted tables, the ``sensitive`` columns as asset metadata (read by the IO
  manager's profile), and Dagster's column-schema change checks (WARN) on the table assets.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import warnings
from typing import Any

import dagster as dg
from dagster._record import replace  # the same helper Definitions.map_resolved_asset_specs uses

from etl_assets.io.tables import TableRef
from etl_assets.quality import demo_rules  # noqa: F401  (registers the demo's Python rules)
from etl_assets.quality.checks import RuleSet, build_asset_checks, registered
from etl_assets.quality.metrics import (
    HOOKS,
    build_run_status_sensors,
    parse_window,
    summarize,
    summary_markdown,
)
from etl_assets.quality.rules import parse_rules, parse_sensitive
from etl_assets.quality.schema_change import SCHEMA_CHANGE_CHECK, checkable

SUMMARY_KEY = dg.AssetKey(["etl", "run_metrics_summary"])
SUMMARY_WINDOW = "7d"
FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=_dt.timedelta(hours=24), warn_window=_dt.timedelta(hours=12)
)
SCHEMA_CHANGE_EXCLUDE = {SUMMARY_KEY}
_log = logging.getLogger(__name__)


def _pipelines() -> Any:
    """The validated tables declaration, or None when the extracts module is not available."""
    try:
        from etl_assets.pipeline_config import load_pipelines
    except ImportError:  # pragma: no cover - the extracts engineer's module ships with the project
        return None
    return load_pipelines()


def declared_rule_sets(config: Any = None) -> list[RuleSet]:
    """The rule sets of the declared tables (``checks:`` and ``sensitive:`` of each table)."""
    config = config if config is not None else _pipelines()
    if config is None:
        return []
    sets: list[RuleSet] = []
    for spec in config.tables:
        where = spec.origin or getattr(config, "path", None)  # the file, for messages with lines
        sensitive = parse_sensitive(spec.label, list(spec.sensitive), origin=where,
                                    line=spec.key_lines.get("sensitive"))
        rules = parse_rules(spec.label, list(spec.checks), origin=where, lines=spec.check_lines)
        key = dg.AssetKey(spec.asset_key_path)
        if rules and not all(checkable(key, r.name) for r in rules):
            from etl_assets.errors import ConfigError

            raise ConfigError(
                f"Table {spec.label}: its checks cannot be attached to asset {key.to_user_string()!r}, "
                "because Dagster check names allow only letters, digits and '_' in the asset key and "
                "check name. Give it a plain target (e.g. history.audit_log) or remove its checks."
            )
        if rules:
            sets.append(
                RuleSet(
                    asset_key=dg.AssetKey(spec.asset_key_path),
                    rules=tuple(rules),
                    table=spec.target,
                    keys=tuple(spec.primary_key) or None,
                    sensitive=sensitive,
                )
            )
    return sets


def merge_rule_sets(rule_sets: list[RuleSet]) -> list[RuleSet]:
    """One rule set per asset; the same check name twice on one asset is an error."""
    merged: dict[dg.AssetKey, RuleSet] = {}
    for rule_set in rule_sets:
        have = merged.get(rule_set.asset_key)
        if have is None:
            merged[rule_set.asset_key] = rule_set
            continue
        names = {r.name for r in have.rules}
        clash = [r.name for r in rule_set.rules if r.name in names]
        if clash:
            from etl_assets.errors import ConfigError

            raise ConfigError(
                f"Asset {rule_set.asset_key.to_user_string()}: check name(s) {', '.join(clash)} are declared "
                "twice (tables YAML and/or Python rules_for); rename one."
            )
        merged[rule_set.asset_key] = RuleSet(
            have.asset_key,
            have.rules + rule_set.rules,
            have.table or rule_set.table,
            have.keys or rule_set.keys,
            tuple(dict.fromkeys(have.sensitive + rule_set.sensitive)),
        )
    return list(merged.values())


@dg.asset(
    key=SUMMARY_KEY,
    group_name="etl",
    kinds={"postgres"},
    description="Success rate and duration per asset over the last 7 days, from etl.run_metrics "
    "(also: `etl-assets metrics`).",
    required_resource_keys={"warehouse"},
)
def run_metrics_summary(context) -> dg.MaterializeResult:  # context unannotated: see checks.py
    window = parse_window(SUMMARY_WINDOW)
    with context.resources.warehouse.connect() as conn:
        summaries = summarize(conn, window)
    runs = sum(s.runs for s in summaries)
    successes = sum(s.successes for s in summaries)
    return dg.MaterializeResult(
        metadata={
            "summary": dg.MetadataValue.md(summary_markdown(summaries, window)),
            "assets_tracked": dg.MetadataValue.int(len(summaries)),
            "asset_runs": dg.MetadataValue.int(runs),
            "success_rate": dg.MetadataValue.float(round(successes / runs, 6) if runs else 1.0),
        }
    )


FULL_CHECKS_JOB = "quality_full_checks"
FULL_CHECKS_CRON = "0 4 * * *"


def full_checks_job() -> dg.UnresolvedAssetJobDefinition:
    """Every asset check, run alone: no asset is materialized in the run, so every rule covers the
    whole table (etl_assets.quality.scope), the cadence that complements checks on new rows."""
    return dg.define_asset_job(
        FULL_CHECKS_JOB,
        selection=dg.AssetSelection.all_asset_checks(),
        description="Every data-quality check on the whole table (incremental runs check their new rows).",
    )


def build_defs() -> dg.Definitions:
    job = full_checks_job()
    return dg.Definitions(
        assets=[run_metrics_summary],
        asset_checks=[build_asset_checks(s) for s in merge_rule_sets(declared_rule_sets())],
        sensors=build_run_status_sensors(),
        jobs=[job],
        schedules=[
            dg.ScheduleDefinition(
                name="quality_full_checks_daily",
                job=job,
                cron_schedule=FULL_CHECKS_CRON,
                execution_timezone="UTC",
                default_status=dg.DefaultScheduleStatus.RUNNING,
                description="Daily: every check on the whole table (the full-table cadence).",
            )
        ],
    )


# --------------------------------------------------------------------------------------------------
# Root policies
# --------------------------------------------------------------------------------------------------


def _with_hooks(assets: Any) -> list[Any]:
    out = []
    for item in assets or []:
        if (
            isinstance(item, dg.AssetsDefinition)
            and not isinstance(item, dg.AssetChecksDefinition)
            and item.is_executable
            and item.keys
        ):
            item = item.with_hooks(set(HOOKS))
        out.append(item)
    return out


def schema_change_keys(assets: list[Any]) -> list[dg.AssetKey]:
    """The keys of ``assets`` that get a column-schema change check; the others are left out with a
    logged warning instead of making the whole Definitions fail to load."""
    keys = sorted({k for a in assets for k in a.keys}, key=lambda k: k.to_user_string())
    skipped = [k for k in keys if not checkable(k, SCHEMA_CHANGE_CHECK)]
    if skipped:
        _log.warning(
            "No column-schema change check for %s: Dagster check names allow only letters, digits and "
            "'_' in the asset key. Give the target a plain name to get the check.",
            ", ".join(k.to_user_string() for k in skipped),
        )
    return [k for k in keys if k not in skipped]


def apply_quality(defs: dg.Definitions) -> dg.Definitions:
    """Apply the project-wide quality policies to the merged Definitions (see module docstring)."""
    config = _pipelines()
    extracted: dict[dg.AssetKey, tuple[str, ...]] = {}
    if config is not None:
        for spec in config.tables:
            extracted[dg.AssetKey(spec.asset_key_path)] = parse_sensitive(spec.label, list(spec.sensitive))
    for rule_set in registered():
        if rule_set.sensitive:
            extracted.setdefault(rule_set.asset_key, ())

    def policies(spec: dg.AssetSpec) -> dg.AssetSpec:
        if spec.key in extracted:
            spec = dg.apply_freshness_policy(spec, FRESHNESS, overwrite_existing=False)
        sensitive = set(extracted.get(spec.key, ()))
        sensitive |= {c for s in registered() if s.asset_key == spec.key for c in s.sensitive}
        if sensitive and "sensitive" not in (spec.metadata or {}):
            spec = spec.merge_attributes(metadata={"sensitive": sorted(sensitive)})
        return spec

    with warnings.catch_warnings():  # map_asset_specs is "preview", the schema-change checks "beta"
        warnings.simplefilter("ignore", category=Warning)
        # The permissive variant leaves SourceAssets and cacheable assets alone instead of refusing them.
        defs = defs.permissive_map_resolved_asset_specs(func=policies, selection=None)
    # asset -> its "target" and "partition_expr" metadata (where and how the IO manager writes it)
    targets: dict[dg.AssetKey, Any] = {}
    partition_exprs: dict[dg.AssetKey, Any] = {}
    for item in defs.assets or []:
        if isinstance(item, dg.AssetsDefinition):
            for spec in item.specs:
                meta = spec.metadata or {}
                targets[spec.key] = getattr(meta.get("target"), "value", meta.get("target"))
                expr = getattr(meta.get("partition_expr"), "value", meta.get("partition_expr"))
                if spec.partitions_def is not None and isinstance(expr, str):
                    partition_exprs[spec.key] = expr
    python_sets = []
    for rule_set in merge_rule_sets([s for s in registered() if s.asset_key in targets]):
        if rule_set.table is None and targets.get(rule_set.asset_key):
            rule_set = dataclasses.replace(rule_set, table=TableRef.parse(str(targets[rule_set.asset_key])))
        if rule_set.partition_expr is None and rule_set.asset_key in partition_exprs:
            rule_set = dataclasses.replace(rule_set, partition_expr=partition_exprs[rule_set.asset_key])
        python_sets.append(rule_set)
    python_checks = [build_asset_checks(rule_set) for rule_set in python_sets]
    table_assets = [
        item
        for item in defs.assets or []
        if isinstance(item, dg.AssetsDefinition)
        and item.is_executable
        and not isinstance(item, dg.AssetChecksDefinition)
        and not set(item.keys) & SCHEMA_CHANGE_EXCLUDE
        # extracts answer the check in their own step (etl_assets/quality/schema_change.py)
        and not any(c.name == SCHEMA_CHANGE_CHECK for c in item.check_specs)
    ]
    schema_keys = schema_change_keys(table_assets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=Warning)
        schema_checks = (
            list(
                dg.build_column_schema_change_checks(assets=schema_keys, severity=dg.AssetCheckSeverity.WARN)
            )
            if schema_keys
            else []
        )
    return replace(
        defs,
        assets=_with_hooks(defs.assets),
        asset_checks=[*(defs.asset_checks or []), *python_checks, *schema_checks],
    )
