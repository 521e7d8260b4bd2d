"""The column-schema change check of an extracted table, evaluated in the extract's own step.

Dagster's ``build_column_schema_change_checks`` makes one more op that runs after the asset: a step of
its own in every run, with its own start, pool claim, events and hooks, to compare two metadata
entries. An extract asset already knows its target's columns (``dagster/column_schema`` in its
report), so it compares them with its previous materialization's itself and returns the result with
its materialization: the same check name, severity (WARN) and verdicts, one step less per run.
Assets that are not extracts (transforms, aggregates) keep Dagster's check (:mod:`.defs`).
"""

from __future__ import annotations

import re
from typing import Any

import dagster as dg

SCHEMA_CHANGE_CHECK = "column_schema_change"  # the name dg.build_column_schema_change_checks gives
_DAGSTER_NAME = re.compile(r"[A-Za-z0-9_]+")
DESCRIPTION = "Passes when the table's columns (names and types) are those of its previous materialization."


def checkable(key: dg.AssetKey, check_name: str) -> bool:
    """Whether Dagster can hold a check named ``check_name`` on ``key``.

    Dagster names a check's op/output after the asset key and check name, and refuses names outside
    ``^[A-Za-z0-9_]+$``; a declared target like ``history."audit log"`` gives such a key (the extract
    asset itself copes, with an explicit output name, but a check cannot choose its output name).
    """
    identifier = dg.AssetCheckSpec(check_name, asset=key).get_python_identifier()
    return _DAGSTER_NAME.fullmatch(identifier) is not None


def schema_change_spec(key: dg.AssetKey) -> dg.AssetCheckSpec | None:
    """The check an extract asset declares (None when Dagster cannot name a check on ``key``)."""
    if not checkable(key, SCHEMA_CHANGE_CHECK):
        return None
    return dg.AssetCheckSpec(SCHEMA_CHANGE_CHECK, asset=key, description=DESCRIPTION)


def _columns(schema: Any) -> dict[str, str] | None:
    value = getattr(schema, "value", schema)  # a TableSchemaMetadataValue, or the TableSchema itself
    columns = getattr(value, "columns", None)
    return None if columns is None else {c.name: c.type for c in columns}


_STORED = object()


def schema_change_result(instance: dg.DagsterInstance, key: dg.AssetKey, current: Any = _STORED
                         ) -> dg.AssetCheckResult:
    """The check's result for this materialization (``current``: its ``dagster/column_schema``)
    against the latest stored one, with the verdicts and wording of Dagster's check. Without
    ``current`` (the check run alone: the UI's "execute checks", the daily full-checks job), the
    latest stored materialization against the one before, as Dagster's check does."""

    def result(passed: bool, text: str, **extra: Any) -> dg.AssetCheckResult:
        return dg.AssetCheckResult(asset_key=key, check_name=SCHEMA_CHANGE_CHECK, passed=passed,
                                   severity=dg.AssetCheckSeverity.WARN, description=text,
                                   metadata={"description": text, **extra})

    if current is _STORED:  # the check alone: the two latest stored materializations
        records = instance.fetch_materializations(records_filter=key, limit=2).records
        if len(records) < 2:
            return result(True, "The asset has been materialized fewer than 2 times")
        latest = records[0].asset_materialization
        current = (latest.metadata if latest else {}).get("dagster/column_schema")
        records = records[1:]
    else:
        records = instance.fetch_materializations(records_filter=key, limit=1).records
    if not records:
        return result(True, "The asset has been materialized fewer than 2 times")
    now = _columns(current)
    if now is None:
        return result(False, "Latest materialization has no column schema metadata")
    previous = records[0].asset_materialization
    before = _columns((previous.metadata if previous else {}).get("dagster/column_schema"))
    if before is None:
        return result(False, "Previous materialization has no column schema metadata")
    added = [c for c in now if c not in before]
    removed = [c for c in before if c not in now]
    changed = {c: (before[c], now[c]) for c in now if c in before and before[c] != now[c]}
    if not (added or removed or changed):
        return result(True, "No changes to column schema between previous and latest materialization")
    text = "Column schema changed between previous and latest materialization."
    if added:
        text += f"\n\nAdded columns: {', '.join(added)}"
    if removed:
        text += f"\n\nRemoved columns: {', '.join(removed)}"
    if changed:
        text += "\n\nColumn type changes:" + "".join(f"\n- {c}: {a} -> {b}" for c, (a, b) in changed.items())
    return result(False, text, added=dg.MetadataValue.json(added), removed=dg.MetadataValue.json(removed),
                  changed=dg.MetadataValue.json({c: list(v) for c, v in changed.items()}))
