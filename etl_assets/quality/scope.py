"""Which rows a check looks at: the rows an incremental run wrote, or the whole table.

Why: an automated incremental run that writes 1,000 rows into a 5,000,000-row table must not scan
the 5,000,000 rows once per rule. The extract asset of an ``incremental`` table therefore records,
in its materialization metadata (:data:`NEW_ROWS_KEY`), the lower bound its read started from
(``cursor >= from``, the stored ``next_from`` of ``etl.state`` before the run; it already includes the
late-commit look-back). Every row the run wrote has its cursor at or past that bound (or a NULL
cursor, which incremental extracts re-read on every run), so the condition selects a superset of
the written rows, through an index on the target's cursor column (:func:`ensure_cursor_index`).

A check step then uses :func:`new_rows_scope`: when the asset was materialized *in the same run*
with that marker, the row-level rules are evaluated on the new rows only; otherwise (a run of the
checks alone, e.g. the daily ``quality_full_checks`` schedule, a first load, another extract mode)
on the whole table. Each result says which (metadata ``scope``: ``new_rows`` or ``full_table``).

Rules by kind on an incremental run:

- row-level predicates (not_null, accepted_values, range, pattern, not_in_future, references,
  sql ``expression``) and ``polars``: the new rows;
- ``unique``: the new rows whose value occurs in any other row of the table (a duplicate needs at
  least one new row, so this finds every new duplicate; an index on the column keeps it cheap);
- ``row_count`` and sql ``query``: always the full table (they are about the table as a whole).
"""

from __future__ import annotations

import hashlib
from typing import Any

import psycopg
from psycopg import sql

from etl_assets.io.tables import TableRef

NEW_ROWS_KEY = "quality/new_rows"
# Kinds whose failing rows are a row-level predicate (the scope is spliced into their FROM).
SCOPED_KINDS = frozenset(
    {"not_null", "accepted_values", "range", "pattern", "not_in_future", "references", "sql", "polars",
     "unique"}
)


def scoped(rule: Any) -> bool:
    """Whether ``rule`` can be evaluated on the new rows of a run."""
    if rule.kind not in SCOPED_KINDS:
        return False
    return not (rule.kind == "sql" and rule.query is not None)


def new_rows_marker(conn: psycopg.Connection, target: TableRef, cursor: str | None) -> dict[str, str] | None:
    """Before an incremental extract: the bound its read starts from, as ``{column, from, type}``
    (``None`` on a first run, or when the stored state is not an incremental one)."""
    if not cursor:
        return None
    if conn.execute("SELECT to_regclass('etl.state')").fetchone()[0] is None:
        return None
    row = conn.execute(
        "SELECT state ->> 'next_from', state ->> 'cursor_type' FROM etl.state "
        "WHERE target = %s AND kind = 'incremental'",
        (str(target),),
    ).fetchone()
    if row is None or row[0] is None or row[1] is None:
        return None
    return {"column": cursor, "from": row[0], "type": row[1]}


def scope_condition(marker: dict[str, str]) -> sql.Composable:
    """``column >= from OR column IS NULL`` with literals, spliceable into every rule statement.

    The type comes from ``etl.state`` (written by the extract from the source's catalog), so the
    comparison uses the column's own type and its index.
    """
    col = sql.Identifier(marker["column"])
    return sql.SQL("({c} >= {v}::{t} OR {c} IS NULL)").format(
        c=col, v=sql.Literal(marker["from"]), t=sql.SQL(marker["type"])
    )


def describe(marker: dict[str, str] | None) -> str:
    if marker is None:
        return "full table"
    return f"new rows ({marker['column']} >= {marker['from']} or NULL)"


def index_name(target: TableRef, column: str) -> str:
    digest = hashlib.sha1(f"{target}.{column}".encode()).hexdigest()[:8]
    return f"{target.name[:40]}_{column[:10]}_etl_{digest}"


def ensure_cursor_index(conn: psycopg.Connection, target: TableRef, column: str) -> bool:
    """Give the target an index led by ``column`` unless it has one; returns True when created.

    Checked in the catalog first, so the common case takes no lock. Built once (on a large existing
    target that first build costs one scan), then maintained by the upserts.
    """
    have = conn.execute(
        """SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
           WHERE i.indrelid = to_regclass(%s) AND a.attname = %s LIMIT 1""",
        (target.regclass_text, column),
    ).fetchone()
    if have:
        return False
    if conn.execute("SELECT to_regclass(%s)", (target.regclass_text,)).fetchone()[0] is None:
        return False
    conn.execute(
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
            sql.Identifier(index_name(target, column)), target.ident, sql.Identifier(column)
        )
    )
    return True


def new_rows_scope(context: Any, asset_key: Any) -> dict[str, str] | None:
    """In a check step: the new-rows marker of ``asset_key`` when it was materialized in this very
    run, else ``None`` (check the full table)."""
    try:
        instance = context.instance
        run_id = context.run.run_id
        entry = instance.get_latest_materialization_event(asset_key)
    except Exception:
        return None
    if entry is None or entry.run_id != run_id or entry.asset_materialization is None:
        return None
    value = entry.asset_materialization.metadata.get(NEW_ROWS_KEY)
    data = getattr(value, "value", value)
    if isinstance(data, dict) and {"column", "from", "type"} <= set(data):
        return {k: str(data[k]) for k in ("column", "from", "type")}
    return None


def before_extract(spec: Any, warehouse: Any) -> dict[str, str] | None:
    """Called by an extract asset before its extract: the new-rows marker of an incremental table."""
    if spec.extract != "incremental":
        return None
    with warehouse.connect(autocommit=True) as conn:
        return new_rows_marker(conn, spec.target, spec.cursor)


def after_extract(spec: Any, warehouse: Any, marker: dict[str, str] | None, log: Any, run_id: str
                  ) -> dict[str, Any]:
    """Called by an extract (or CDC) asset after its write: the profile on its cadence, the cursor
    index an incremental target's new-rows checks read through, and the new-rows marker."""
    import dagster as dg

    from etl_assets.quality.profile import profile_after_write, profile_every

    with warehouse.connect() as conn:
        if spec.extract == "incremental" and spec.cursor:
            try:
                with conn.transaction():
                    if ensure_cursor_index(conn, spec.target, spec.cursor):
                        log.info(f"indexed {spec.target} ({spec.cursor}) for checks on new rows")
            except psycopg.Error as exc:  # the checks then scan more; the load itself is done
                log.warning(f"no index on {spec.target} ({spec.cursor}): {type(exc).__name__}: {exc}")
        meta = profile_after_write(
            conn, spec.target, {"sensitive": list(spec.sensitive)}, log, every=profile_every(), run_id=run_id
        )
    if marker is not None:
        meta[NEW_ROWS_KEY] = dg.MetadataValue.json(marker)
    return meta
