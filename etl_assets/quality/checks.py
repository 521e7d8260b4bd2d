"""Rules become Dagster asset checks.

One :func:`dagster.multi_asset_check` per asset holds one :class:`dagster.AssetCheckSpec` per rule,
so the UI lists every rule by its name while the rules of one table share one step and one
connection (a step per rule would cost a process each under the multiprocess executor).
Severities map as follows:

- ``error``: ``blocking=True`` and ``AssetCheckSeverity.ERROR``. When it fails the step raises after
  reporting every rule's result, and Dagster skips the asset's downstream assets in that run.
- ``warning``: not blocking, ``AssetCheckSeverity.WARN``; the check fails visibly, the run goes on.
- ``info``: always passes; the result records the measurement (and whether the thresholds held).

A rule that cannot be evaluated (a missing column, broken custom SQL) fails with its own severity
and the reason, instead of hiding the other rules' results.

Rules for transformed assets are declared in Python next to the asset::

    from etl_assets.quality.checks import rules_for
    from etl_assets.quality.rules import Rule

    rules_for(["clean", "orders"], [Rule(name="amount_positive", kind="range", columns=["amount"], min=0)])

:func:`rules_for` only records them; ``etl_assets.quality.defs.apply_quality`` turns every recorded
rule into checks when the project's Definitions are assembled.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
import psycopg
from psycopg import sql

from etl_assets.console import plural
from etl_assets.errors import ConfigError, EtlError
from etl_assets.io.tables import TableRef
from etl_assets.quality.rules import Rule, RuleResult, evaluate, partition_scope
from etl_assets.quality.scope import describe as describe_scope
from etl_assets.quality.scope import new_rows_scope, scope_condition, scoped

WAREHOUSE_KEY = "warehouse"


@dataclass(frozen=True)
class RuleSet:
    """The rules of one asset, with the table they run on and the columns to mask."""

    asset_key: dg.AssetKey
    rules: tuple[Rule, ...]
    table: TableRef | None = None
    keys: tuple[str, ...] | None = None
    sensitive: tuple[str, ...] = ()
    partition_expr: str | None = None  # a partitioned asset's partition column: rules see one partition

    def target(self) -> TableRef:
        return self.table or TableRef.for_asset_key(self.asset_key)


_REGISTRY: dict[dg.AssetKey, RuleSet] = {}


def _key(asset: Any) -> dg.AssetKey:
    if isinstance(asset, dg.AssetsDefinition):
        return asset.key
    return dg.AssetKey.from_coercible(asset)


def rules_for(
    asset: Any,
    rules: Sequence[Rule],
    *,
    table: str | TableRef | None = None,
    keys: Sequence[str] | None = None,
    sensitive: Sequence[str] = (),
) -> RuleSet:
    """Declare ``rules`` for a (transformed) asset; they become its checks in the project Definitions.

    ``table`` defaults to the asset's own table (``TableRef.for_asset_key`` or its ``target``
    metadata); ``keys`` to the table's primary key. Declaring twice for one asset adds rules; a rule
    name used twice for one asset is an error.
    """
    key = _key(asset)
    ref = TableRef.parse(table) if isinstance(table, str) else table
    previous = _REGISTRY.get(key)
    merged = (*previous.rules, *rules) if previous else tuple(rules)
    names = [r.name for r in merged]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise EtlError(f"Asset {key.to_user_string()}: check name(s) {', '.join(dupes)} declared twice.")
    rule_set = RuleSet(
        key,
        merged,
        ref or (previous.table if previous else None),
        tuple(keys) if keys is not None else (previous.keys if previous else None),
        tuple(dict.fromkeys([*(previous.sensitive if previous else ()), *sensitive])),
    )
    _REGISTRY[key] = rule_set
    return rule_set


def registered() -> list[RuleSet]:
    """Every rule set declared with :func:`rules_for` so far."""
    return list(_REGISTRY.values())


def to_check_result(
    result: RuleResult, asset_key: dg.AssetKey, sensitive: Iterable[str] = ()
) -> dg.AssetCheckResult:
    """The Dagster check result of one evaluated rule, carrying counts, sample and definition."""
    rule = result.rule
    metadata: dict[str, Any] = {
        "failing_rows": dg.MetadataValue.int(result.failing_rows),
        "failing_percent": dg.MetadataValue.float(result.failing_percent),
        "total_rows": dg.MetadataValue.int(result.total_rows),
        "threshold_met": dg.MetadataValue.bool(result.passed),
        "rule": dg.MetadataValue.json(rule.definition(sensitive)),
        "table": dg.MetadataValue.text(str(result.table)),
    }
    if result.sample:
        metadata["sample"] = dg.MetadataValue.json(result.sample)
    for name, value in result.observed.items():
        if isinstance(value, int) and not isinstance(value, bool):
            metadata[f"observed_{name}"] = dg.MetadataValue.int(value)
        elif name == "partition":
            metadata["partition"] = dg.MetadataValue.text(str(value))
    if result.error:
        metadata["error"] = dg.MetadataValue.text(result.error)
    if "scope" in result.observed:  # which rows the rule looked at (etl_assets.quality.scope)
        metadata["scope"] = dg.MetadataValue.text(str(result.observed["scope"]))
        metadata["scope_rows"] = dg.MetadataValue.text(str(result.observed.get("scope_rows", "")))
    passed = True if rule.severity == "info" else result.passed
    severity = dg.AssetCheckSeverity.ERROR if rule.severity == "error" else dg.AssetCheckSeverity.WARN
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=rule.name,
        passed=passed,
        severity=severity,
        metadata=metadata,
        description=_verdict_text(result),
    )


def _verdict_text(result: RuleResult) -> str:
    """What the run summary and the UI show next to the check: the counts, then the rule."""
    rule = result.rule
    if result.error:
        return f"could not run: {result.error}"
    if rule.kind == "row_count":
        return f"{result.total_rows:,} rows; {rule.describe()}"
    if "dead_lettered" in result.observed:
        return (
            f"{result.observed['dead_lettered']:,} of {result.total_rows:,} rows failed and were moved to "
            f"the dead-letter table: {rule.describe()}"
        )
    rows = "new rows" if result.observed.get("scope") == "new_rows" else "rows"
    return (
        f"{result.failing_rows:,} of {result.total_rows:,} {rows} ({result.failing_percent:.2f}%) fail: "
        f"{rule.describe()}"
    )


CHECK_TIMEOUT_VAR = "ETL_CHECK_STATEMENT_TIMEOUT"
DEFAULT_CHECK_TIMEOUT = "5min"


def check_statement_timeout() -> str:
    """The statement timeout of every check statement: ``ETL_CHECK_STATEMENT_TIMEOUT`` (a PostgreSQL
    duration such as ``30s``, ``5min`` or milliseconds as a plain number), default 5 minutes."""
    import os

    value = os.environ.get(CHECK_TIMEOUT_VAR, "").strip() or DEFAULT_CHECK_TIMEOUT
    if not re.fullmatch(r"\d+(\.\d+)?\s*(ms|s|min|h|d)?", value):
        raise ConfigError(
            f"{CHECK_TIMEOUT_VAR}={value!r} is not a duration; use e.g. 30s, 5min, 1h or 0 for no limit."
        )
    return value


def _explain_check_error(exc: Exception, rule: Rule, target: TableRef, timeout: str) -> str:
    """The one-line reason a rule could not run, saying what to change for the errors a rule causes."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction):
        return (
            f"ReadOnlySqlTransaction: check {rule.name!r} on {target} tried to write ({first}); checks run "
            "in a READ ONLY transaction and nothing was changed. A check must only read: remove the write "
            "(INSERT/UPDATE/DELETE, nextval, a function that writes) from its SQL."
        )
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return (
            f"QueryCanceled: check {rule.name!r} on {target} ran longer than the statement timeout "
            f"{timeout} ({first}); make its SQL cheaper or raise {CHECK_TIMEOUT_VAR}."
        )
    return f"{type(exc).__name__}: {first}"


def run_rule(
    conn: psycopg.Connection,
    rule_set: RuleSet,
    rule: Rule,
    scope: sql.Composable | None = None,
    *,
    across_table: bool = False,
) -> RuleResult:
    """Evaluate one rule; an evaluation failure becomes a failed result naming the reason.

    Rules carry user SQL (kind ``sql``): each runs in its own READ ONLY transaction with a statement
    timeout, so a check can neither change the warehouse (a write, even through a function or
    ``nextval``, fails and is rolled back) nor hold a connection for hours.
    """
    target = rule_set.target()
    timeout = check_statement_timeout()
    # Prepared statements use the extended protocol, which takes one statement per execute: user SQL
    # cannot end the READ ONLY transaction with "...; COMMIT; DELETE ..." (the simple protocol, which
    # psycopg uses for a query without parameters, would run all of them).
    threshold, conn.prepare_threshold = conn.prepare_threshold, 0
    try:
        with conn.transaction():
            conn.execute("SET TRANSACTION READ ONLY")
            conn.execute("SELECT set_config('statement_timeout', %s, true)", (timeout,))
            return evaluate(
                conn, rule, target, keys=rule_set.keys, sensitive=rule_set.sensitive, scope=scope,
                across_table=across_table,
            )
    except (EtlError, psycopg.Error) as exc:
        if not conn.autocommit and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()
        return RuleResult(rule, target, 0, 0, False, error=_explain_check_error(exc, rule, target, timeout))
    finally:
        conn.prepare_threshold = threshold


def partition_of(context: Any, rule_set: RuleSet) -> tuple[str | None, sql.Composable | None]:
    """The partition key of the check's step and the condition selecting its rows, if any.

    A check on a partitioned asset runs in the partition's run; with the asset's ``partition_expr``
    known, its rules look only at that partition's rows (so a bad day does not fail every later day).
    """
    op_context = getattr(context, "op_execution_context", context)
    try:
        if not rule_set.partition_expr or not op_context.has_partition_key:
            return None, None
        key = op_context.partition_key
    except Exception:
        return None, None
    try:
        window = op_context.partition_time_window
    except Exception:  # not time-partitioned: static or dynamic keys
        return key, partition_scope(rule_set.partition_expr, values=[key])
    return key, partition_scope(rule_set.partition_expr, start=window.start, end=window.end)


def _route(
    context: Any, warehouse: Any, rule_set: RuleSet, result: RuleResult, scope: Any = None, key: Any = None
) -> RuleResult:
    """``on_fail: dead_letter``: move the failing rows to the dead-letter table; the rule then holds."""
    from etl_assets import dlq
    from etl_assets.quality.routing import route_failing_rows

    step = getattr(getattr(context, "op_execution_context", context), "step_key", None)
    origin = dlq.Origin(
        asset_key=rule_set.asset_key.to_user_string(),
        run_id=context.run.run_id,
        step=step,
        partition_key=key,
        target=str(result.table),
    )
    try:
        with warehouse.connect() as conn:
            moved = route_failing_rows(conn, result.rule, result.table, origin, scope)
    except (EtlError, psycopg.Error) as exc:
        result.error = f"routing to the dead-letter table failed: {type(exc).__name__}: {exc}"
        return result
    context.log.warning(
        f"check {result.rule.name}: moved {plural(moved, 'failing row')} of {result.table} "
        "to etl.dead_letters"
    )
    result.observed["dead_lettered"] = moved
    result.passed = True
    return result


def build_asset_checks(rule_set: RuleSet, warehouse_key: str = WAREHOUSE_KEY) -> dg.AssetChecksDefinition:
    """One multi-asset check for the rules of one asset (each rule a named, selectable spec), on the
    warehouse resource bound under ``warehouse_key``."""
    key = rule_set.asset_key
    specs = [
        dg.AssetCheckSpec(
            name=rule.name,
            asset=key,
            blocking=rule.blocking,
            description=rule.describe(),
            metadata={"severity": rule.severity, "kind": rule.kind},
        )
        for rule in rule_set.rules
    ]
    by_name = {rule.name: rule for rule in rule_set.rules}
    op_name = "quality_" + "__".join(key.path).replace("-", "_").replace(".", "_")

    @dg.multi_asset_check(
        specs=specs,
        name=op_name,
        can_subset=True,
        required_resource_keys={warehouse_key},
        description=f"Data-quality rules of {key.to_user_string()} on {rule_set.target()}",
    )
    def _quality_checks(context):  # unannotated: string annotations confuse the decorator
        selected = {k.name for k in context.selected_asset_check_keys}
        warehouse = getattr(context.resources, warehouse_key)
        partition, scope = partition_of(context, rule_set)
        # An incremental run's own materialization in this run: row-level rules look at its new rows.
        marker = new_rows_scope(context, key) if partition is None else None
        with warehouse.connect(autocommit=True) as conn:
            for name, rule in by_name.items():
                if name not in selected:
                    continue
                used = scope
                if marker is not None and scoped(rule):
                    used = scope_condition(marker)
                    result = run_rule(conn, rule_set, rule, used, across_table=True)
                    result.observed["scope"] = "new_rows"
                    result.observed["scope_rows"] = describe_scope(marker)
                else:
                    result = run_rule(conn, rule_set, rule, scope)
                    result.observed["scope"] = "partition" if partition is not None else "full_table"
                    result.observed["scope_rows"] = (
                        f"partition {partition}" if partition is not None else "every row of the table"
                    )
                if partition is not None:
                    result.observed["partition"] = partition
                if rule.on_fail == "dead_letter" and not result.passed and not result.error:
                    result = _route(context, warehouse, rule_set, result, used, partition)
                if result.error:
                    context.log.warning(
                        f"check {name} on {key.to_user_string()} could not run: {result.error}"
                    )
                yield to_check_result(result, key, rule_set.sensitive)

    return _quality_checks
