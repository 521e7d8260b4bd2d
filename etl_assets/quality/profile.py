"""Column profiles of warehouse tables, computed in one SQL statement inside the warehouse.

:func:`profile_table` runs ONE ``SELECT`` of aggregates over the table (one scan; the distinct counts
and medians sort inside the server): the row count, and per column the null count and percent, the
distinct count, min / max / mean / median for numbers, min / max for dates and times, and the
average length for text. Only that one row of aggregates crosses the wire.

:func:`profile_metadata` turns a profile into materialization metadata: plain numbers under
``profile/<column>/<measure>`` (so the UI plots each over time), a markdown table under ``profile``,
``dagster/row_count`` and ``dagster/column_schema``. Values of sensitive columns (min, max, mean,
median) never leave the warehouse: they are left out of the numbers and shown as ``***``.

Schema changes between materializations are checked by Dagster's
``build_column_schema_change_checks`` over the emitted ``dagster/column_schema`` (a WARN check by
default; see ``etl_assets.quality.defs``).
"""

from __future__ import annotations

import datetime as _dt
import decimal
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import psycopg
from psycopg import sql

from etl_assets.errors import MissingObject
from etl_assets.io.tables import TableRef
from etl_assets.quality.rules import MASK

NUMERIC_TYPES = {"smallint", "integer", "bigint", "numeric", "real", "double precision"}
# Types that support = and < natively (distinct, min, max); others are compared as text.
_ORDERED_CATEGORIES = {"N", "D", "S", "B", "U", "V", "E"}  # numeric, datetime, string, bool, user, bit, enum


@dataclass
class ColumnProfile:
    name: str
    type: str
    nullable: bool
    category: str  # "number" | "temporal" | "text" | "other"
    null_count: int = 0
    null_percent: float = 0.0
    distinct_count: int = 0
    min: Any = None
    max: Any = None
    mean: float | None = None
    median: float | None = None
    avg_length: float | None = None
    sensitive: bool = False


@dataclass
class TableProfile:
    table: TableRef
    row_count: int
    columns: list[ColumnProfile] = field(default_factory=list)

    def column(self, name: str) -> ColumnProfile:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)


def _catalog(conn: psycopg.Connection, table: TableRef) -> list[tuple[str, str, bool, str]]:
    rows = conn.execute(
        """SELECT a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull,
                  t.typcategory, t.typname
           FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
           WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped
           ORDER BY a.attnum""",
        (table.regclass_text,),
    ).fetchall()
    if not rows:
        raise MissingObject(f"Cannot profile {table}: the table does not exist in the warehouse.")
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def _category(type_text: str, typcategory: str) -> str:
    base = type_text.split("(")[0].strip()
    if base in NUMERIC_TYPES:
        return "number"
    if typcategory == "D":
        return "temporal"
    if typcategory == "S":
        return "text"
    return "other"


def _float(value: Any) -> float | None:
    if value is None:
        return None
    result = float(value)
    return result if math.isfinite(result) else None


def profile_table(
    conn: psycopg.Connection, table: TableRef, *, sensitive: Iterable[str] = ()
) -> TableProfile:
    """Profile ``table`` with one aggregate query; see the module docstring for the measures."""
    hidden = set(sensitive)
    catalog = _catalog(conn, table)
    exprs: list[sql.Composable] = [sql.SQL("count(*)")]
    layout: list[tuple[ColumnProfile, list[str]]] = []
    for name, type_text, nullable, typcategory in catalog:
        col = sql.Identifier(name)
        comparable = col if typcategory in _ORDERED_CATEGORIES else sql.SQL("{}::text").format(col)
        prof = ColumnProfile(
            name, type_text, nullable, _category(type_text, typcategory), sensitive=name in hidden
        )
        measures = ["non_null", "distinct"]
        exprs += [sql.SQL("count({})").format(col), sql.SQL("count(DISTINCT {})").format(comparable)]
        if prof.category == "number":
            measures += ["min", "max", "mean", "median"]
            exprs += [
                sql.SQL("min({})").format(col),
                sql.SQL("max({})").format(col),
                sql.SQL("avg({})").format(col),
                sql.SQL("percentile_cont(0.5) WITHIN GROUP (ORDER BY {}::float8)").format(col),
            ]
        elif prof.category == "temporal":
            measures += ["min", "max"]
            exprs += [sql.SQL("min({})").format(col), sql.SQL("max({})").format(col)]
        elif prof.category == "text":
            measures += ["avg_length"]
            exprs += [sql.SQL("avg(char_length({}))").format(col)]
        layout.append((prof, measures))
    row = conn.execute(sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(exprs), table.ident)).fetchone()
    assert row is not None
    total = int(row[0])
    values = iter(row[1:])
    columns: list[ColumnProfile] = []
    for prof, measures in layout:
        got = {m: next(values) for m in measures}
        prof.null_count = total - int(got["non_null"])
        prof.null_percent = round(100.0 * prof.null_count / total, 6) if total else 0.0
        prof.distinct_count = int(got["distinct"])
        prof.min = got.get("min")
        prof.max = got.get("max")
        if prof.category == "number":
            prof.mean = _float(got["mean"])
            prof.median = _float(got["median"])
        if prof.category == "text":
            prof.avg_length = _float(got["avg_length"])
        columns.append(prof)
    return TableProfile(table, total, columns)


def _show(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    return str(value)


def profile_markdown(profile: TableProfile) -> str:
    """A readable markdown table of the profile (sensitive values shown as ``***``)."""
    lines = [
        f"**{profile.table}**: {profile.row_count} rows",
        "",
        "| column | type | nulls | null % | distinct | min | max | mean | median | avg length |",
        "|---|---|---:|---:|---:|---|---|---:|---:|---:|",
    ]
    for c in profile.columns:
        secret = c.sensitive

        def cell(value: Any, secret: bool = secret) -> str:
            return MASK if secret and value is not None else _show(value)

        lines.append(
            f"| {c.name} | {c.type} | {c.null_count} | {c.null_percent:.2f} | {c.distinct_count} | "
            f"{cell(c.min)} | {cell(c.max)} | {cell(c.mean)} | {cell(c.median)} | {_show(c.avg_length)} |"
        )
    return "\n".join(lines)


def column_schema(profile: TableProfile) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=c.name,
                type=c.type,
                constraints=dg.TableColumnConstraints(nullable=c.nullable),
            )
            for c in profile.columns
        ]
    )


def profile_metadata(profile: TableProfile) -> dict[str, Any]:
    """Materialization metadata for a profile: plotted numbers, a markdown table, the column schema."""
    md: dict[str, Any] = {
        "dagster/row_count": dg.MetadataValue.int(profile.row_count),
        "dagster/column_schema": dg.MetadataValue.table_schema(column_schema(profile)),
        "profile": dg.MetadataValue.md(profile_markdown(profile)),
    }
    for c in profile.columns:
        prefix = f"profile/{c.name}"
        md[f"{prefix}/null_count"] = dg.MetadataValue.int(c.null_count)
        md[f"{prefix}/null_percent"] = dg.MetadataValue.float(c.null_percent)
        md[f"{prefix}/distinct_count"] = dg.MetadataValue.int(c.distinct_count)
        if c.avg_length is not None:
            md[f"{prefix}/avg_length"] = dg.MetadataValue.float(c.avg_length)
        if c.category == "number" and not c.sensitive:
            for measure in ("min", "max", "mean", "median"):
                value = _float(getattr(c, measure))
                if value is not None:
                    md[f"{prefix}/{measure}"] = dg.MetadataValue.float(value)
    return md


def profile_table_metadata(
    conn: psycopg.Connection, table: TableRef, *, sensitive: Iterable[str] = ()
) -> dict[str, Any]:
    """:func:`profile_table` then :func:`profile_metadata`: what the IO manager attaches after a write."""
    return profile_metadata(profile_table(conn, table, sensitive=sensitive))


PROFILE_EVERY_VAR = "ETL_PROFILE_EVERY_HOURS"
DEFAULT_PROFILE_EVERY_HOURS = 24.0
CADENCE_TASK = "profile"


def profile_every() -> _dt.timedelta:
    """``ETL_PROFILE_EVERY_HOURS`` (default 24; 0 profiles after every write) as a timedelta."""
    import os

    from etl_assets.errors import ConfigError

    raw = os.environ.get(PROFILE_EVERY_VAR, "").strip()
    if not raw:
        return _dt.timedelta(hours=DEFAULT_PROFILE_EVERY_HOURS)
    try:
        hours = float(raw)
    except ValueError:
        hours = -1.0
    if not hours >= 0:
        raise ConfigError(
            f"{PROFILE_EVERY_VAR}={raw!r} is not a number of hours >= 0 (e.g. 24; 0: every run)."
        )
    return _dt.timedelta(hours=hours)


def _last_profiled(conn: psycopg.Connection, target: TableRef) -> _dt.datetime | None:
    row = conn.execute(
        "SELECT last_run_at FROM etl.quality_cadence WHERE target = %s AND task = %s",
        (str(target), CADENCE_TASK),
    ).fetchone()
    return row[0] if row else None


def _record_profiled(conn: psycopg.Connection, target: TableRef, run_id: str | None, rows: int) -> None:
    from psycopg.types.json import Jsonb

    conn.execute(
        """INSERT INTO etl.quality_cadence (target, task, last_run_at, run_id, details)
           VALUES (%s, %s, now(), %s, %s)
           ON CONFLICT (target, task) DO UPDATE SET last_run_at = EXCLUDED.last_run_at,
               run_id = EXCLUDED.run_id, details = EXCLUDED.details""",
        (str(target), CADENCE_TASK, run_id, Jsonb({"row_count": rows})),
    )


def profile_after_write(
    conn: psycopg.Connection,
    target: TableRef,
    definition_metadata: Mapping[str, Any],
    log: Any = None,
    *,
    every: _dt.timedelta | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """The profile metadata the IO manager attaches after a successful write (never fails the write).

    Honors the asset's definition metadata: ``profile: false`` turns profiling off (e.g. for a huge
    table where one more scan per run is too much), ``sensitive: [columns]`` masks those columns.
    Runs in its own transaction (a savepoint inside a caller's), so a failure here leaves the data
    that was just written untouched; it is logged as a warning and the profile is left out.

    ``every`` (extract assets pass :func:`profile_every`): a cadence. The full profile (a scan of the
    whole table) runs at most once per ``every`` per table, recorded in ``etl.quality_cadence``;
    within it the metadata says when the last profile ran (``profile/last_full_at``) and why this
    write has none (``profile/skipped``), so an automated run costs what its change costs.
    """
    flag = getattr(
        definition_metadata.get("profile", True), "value", definition_metadata.get("profile", True)
    )
    if flag is False:
        return {}
    raw = definition_metadata.get("sensitive") or ()
    sensitive = getattr(raw, "value", raw)
    if isinstance(sensitive, str):
        sensitive = [sensitive]
    try:
        with conn.transaction():
            if every is not None and every.total_seconds() > 0:
                from etl_assets.console import duration_text
                from etl_assets.migrations import ensure_migrated

                ensure_migrated(conn)
                last = _last_profiled(conn, target)
                now = conn.execute("SELECT now()").fetchone()[0]
                if last is not None and now - last < every:
                    return {
                        "profile/last_full_at": dg.MetadataValue.timestamp(last),
                        "profile/skipped": dg.MetadataValue.text(
                            f"full profile at most every {duration_text(every)} ({PROFILE_EVERY_VAR}); "
                            f"the last one ran at {last.isoformat()}, "
                            f"the next after {(last + every).isoformat()}"
                        ),
                    }
            meta = profile_table_metadata(conn, target, sensitive=list(sensitive))
            if every is not None and every.total_seconds() > 0:
                _record_profiled(conn, target, run_id, int(meta["dagster/row_count"].value))
                meta["profile/last_full_at"] = dg.MetadataValue.timestamp(
                    conn.execute("SELECT now()").fetchone()[0]
                )
            return meta
    except (psycopg.Error, MissingObject) as exc:
        if log is not None:
            log.warning(f"no profile for {target}: {type(exc).__name__}: {exc}")
        return {}
