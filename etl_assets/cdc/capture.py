"""Capture in the source database: the SQL that installs, removes, inspects and prunes change logs.

Everything lives in the source schema ``etl_cdc``:

- ``etl_cdc.capture``: one row per captured table: the table's oid, its log table, the key columns,
  ``log_id`` (a uuid made at install: a reinstalled log has another one, which is how a consumer
  notices that the log it was reading is gone) and ``pruned_through`` (the highest position prune
  may have removed: a consumer that has not applied that far has lost changes).
- ``etl_cdc.consumer``: the applied position of every warehouse target reading a log, written back
  after each apply commits. Prune never removes past the smallest of them, so it never removes an
  entry some consumer has not applied. (The warehouse's own ``etl.state`` row is the truth for the
  consumer; the copy here can only lag it, which makes prune keep more, never less.)
- per table: ``etl_cdc.log_<table>_<hash>``: ``position`` (bigint from a CACHE 1 sequence, so
  positions grow in the order they are handed out), ``op`` (I, U, D, T for truncate), ``key`` (the
  row's key after the change, or the deleted key), ``old_key`` (the key before an update that changed
  it), ``data`` (the whole new row as jsonb), ``txid`` (the writing transaction, ``xid8``) and
  ``changed_at``. Three AFTER … FOR EACH STATEMENT triggers with transition tables fill it (one
  ``INSERT … SELECT`` per statement, however many rows it changed), and an AFTER TRUNCATE trigger
  logs truncates.

Why statement triggers: a row trigger runs a PL/pgSQL call and a one-row INSERT per changed row,
which made set-based writes to a captured table 4–7× slower; one ``INSERT … SELECT`` from the
statement's transition table logs the same entries in one pass. PostgreSQL allows transition tables
only on single-event triggers without column lists, hence one trigger per event (one function).
Old and new transition rows are not paired, so an UPDATE is logged by joining OLD and NEW on the
key: a key present in both is an update (``U``, the new row), an old key absent from NEW a delete
(``D``), a new key absent from OLD an insert (``I``): an update that changes a key is logged as the
delete of the old key and the insert of the new one, which replays to the same rows. (Logs written by
the row trigger of earlier versions carry ``old_key`` on such updates; the reader handles both, and
``cdc install`` upgrades such a capture in place, in one transaction, keeping its log.)

The trigger function is ``SECURITY DEFINER`` (owned by the installing role, ``search_path`` pinned),
so the application's roles need no privilege on ``etl_cdc``. It takes the transaction id
(``pg_current_xact_id()``) before any position is drawn; the reader relies on that.

Every function here that changes something returns (or runs) a list of statements; ``dry_run``
returns them unexecuted, so ``etl-assets cdc install --dry-run`` prints exactly what would run.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg import sql

from etl_assets.errors import ConfigError, EtlError, MissingObject
from etl_assets.io.tables import TableRef

SCHEMA = "etl_cdc"
ROW_TRIGGER = "etl_cdc_capture"  # the single row-level trigger of earlier versions (upgraded by install)
STATEMENT_TRIGGERS = {
    "INSERT": "etl_cdc_capture_insert",
    "UPDATE": "etl_cdc_capture_update",
    "DELETE": "etl_cdc_capture_delete",
}
TRUNCATE_TRIGGER = "etl_cdc_capture_truncate"
ALL_TRIGGERS = (ROW_TRIGGER, *STATEMENT_TRIGGERS.values(), TRUNCATE_TRIGGER)
DEFAULT_LOCK_TIMEOUT = "5s"
_DOLLAR = "$etl_cdc$"
_DOLLAR_QUERY = "$etl_cdc_q$"  # quotes the dynamic UPDATE statement inside the function body

REGISTRY_DDL: tuple[str, ...] = (
    "CREATE SCHEMA IF NOT EXISTS etl_cdc",
    """CREATE TABLE IF NOT EXISTS etl_cdc.capture (
    source_schema  text NOT NULL,
    source_table   text NOT NULL,
    relid          oid NOT NULL,
    log_table      text NOT NULL UNIQUE,
    log_sequence   text NOT NULL,
    log_function   text NOT NULL,
    log_id         uuid NOT NULL UNIQUE,
    key_columns    text[] NOT NULL,
    installed_at   timestamptz NOT NULL DEFAULT now(),
    pruned_through bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (source_schema, source_table)
)""",
    """CREATE TABLE IF NOT EXISTS etl_cdc.consumer (
    log_id           uuid NOT NULL REFERENCES etl_cdc.capture (log_id) ON DELETE CASCADE,
    consumer         text NOT NULL,
    target           text NOT NULL,
    applied_position bigint NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (log_id, consumer)
)""",
)


class CaptureMissing(MissingObject):
    """Capture is not installed (or no longer intact) on a source table."""


@dataclass(frozen=True)
class Capture:
    """One row of ``etl_cdc.capture``: where a table's changes are logged."""

    source: TableRef
    relid: int
    log_table: str
    log_sequence: str
    log_function: str
    log_id: str
    key_columns: tuple[str, ...]
    installed_at: datetime | None = None
    pruned_through: int = 0

    @property
    def log_ident(self) -> sql.Identifier:
        return sql.Identifier(SCHEMA, self.log_table)

    @property
    def sequence_ident(self) -> sql.Identifier:
        return sql.Identifier(SCHEMA, self.log_sequence)

    @property
    def function_ident(self) -> sql.Identifier:
        return sql.Identifier(SCHEMA, self.log_function)


@dataclass
class CaptureHealth:
    """Whether an installed capture still works: table, triggers, log and sequence all present, and
    the table still one whose every row change reaches the log (``unsupported`` says why not)."""

    capture: Capture
    problems: list[str] = field(default_factory=list)
    unsupported: str | None = None
    row_level: bool = False  # logged by a row trigger (a partition, or an earlier version's capture)

    @property
    def intact(self) -> bool:
        return not self.problems


# --------------------------------------------------------------------------------------------------
# Names and catalog
# --------------------------------------------------------------------------------------------------


def log_names(source: TableRef) -> tuple[str, str, str]:
    """(log table, sequence, trigger function) names for ``source``: readable, always with a hash
    of the exact schema and table so ``a_b.c`` and ``a.b_c`` never share a log."""
    digest = hashlib.sha1(f"{source.schema}\x00{source.name}".encode()).hexdigest()[:8]
    base = re.sub(r"[^a-z0-9_]+", "_", f"{source.schema}_{source.name}".lower()).strip("_")[:36] or "t"
    return f"log_{base}_{digest}", f"log_{base}_{digest}_position", f"capture_{base}_{digest}"


def registry_exists(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT to_regclass('etl_cdc.capture') IS NOT NULL").fetchone()
    return bool(row and row[0])


_CAPTURE_COLUMNS = """source_schema, source_table, relid::int8, log_table, log_sequence, log_function,
                      log_id::text, key_columns, installed_at, pruned_through"""


def _capture_from_row(row: Sequence) -> Capture:
    return Capture(
        TableRef(row[0], row[1]),
        int(row[2]),
        row[3],
        row[4],
        row[5],
        row[6],
        tuple(row[7]),
        row[8],
        int(row[9]),
    )


def get_capture(conn: psycopg.Connection, source: TableRef, *, lock: str = "") -> Capture | None:
    """The registry row of ``source``, or None. ``lock`` may be "FOR UPDATE" / "FOR SHARE"."""
    if not registry_exists(conn):
        return None
    query = sql.SQL(
        "SELECT " + _CAPTURE_COLUMNS + " FROM etl_cdc.capture "
        "WHERE source_schema = %s AND source_table = %s " + lock
    )
    row = conn.execute(query, (source.schema, source.name)).fetchone()
    return _capture_from_row(row) if row else None


def list_captures(conn: psycopg.Connection) -> list[Capture]:
    if not registry_exists(conn):
        return []
    rows = conn.execute(
        "SELECT " + _CAPTURE_COLUMNS + " FROM etl_cdc.capture ORDER BY source_schema, source_table"
    ).fetchall()
    return [_capture_from_row(r) for r in rows]


def table_oid(conn: psycopg.Connection, source: TableRef) -> int | None:
    row = conn.execute("SELECT to_regclass(%s)::oid::int8", (source.regclass_text,)).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def immediate_unique_keys(conn: psycopg.Connection, relid: int) -> list[tuple[str, ...]]:
    """Column lists of the table's non-deferrable, non-partial unique indexes (primary key first)."""
    rows = conn.execute(
        """
        SELECT ARRAY(SELECT a.attname FROM unnest(x.indkey) WITH ORDINALITY AS k(attnum, n)
                     JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
                     ORDER BY k.n)
          FROM pg_index x
         WHERE x.indrelid = %s::oid AND x.indisunique AND x.indimmediate
           AND x.indpred IS NULL AND x.indexprs IS NULL
         ORDER BY x.indisprimary DESC, x.indexrelid
        """,
        (relid,),
    ).fetchall()
    return [tuple(r[0]) for r in rows]


_KINDS = {
    "v": "a view",
    "m": "a materialized view",
    "f": "a foreign table",
    "S": "a sequence",
    "i": "an index",
    "I": "a partitioned index",
    "c": "a composite type",
    "t": "a TOAST table",
}
_INSTEAD = "declare it with `extract: incremental` (or `extract: full`) instead of `extract: cdc`"


def unsupported_reason(conn: psycopg.Connection, source: TableRef, relid: int) -> str | None:
    """Why row triggers on ``source`` cannot see every change of its rows (None: they can).

    A partitioned table's rows live in its partitions: TRUNCATE of one partition, DETACH PARTITION
    and DROP of a partition remove rows without firing the parent's triggers (only an event
    trigger, which needs a superuser, could see the last two), so the warehouse would keep rows the
    source lost, silently. Inheritance children are read by ``SELECT … FROM parent`` (the snapshot)
    but their writes never fire the parent's triggers. Capturing a partition itself is fine: writes
    routed through the parent and a TRUNCATE of the parent fire the partition's own triggers.
    """
    row = conn.execute(
        """SELECT c.relkind::text,
                  ARRAY(SELECT i.inhrelid::regclass::text FROM pg_inherits i
                         WHERE i.inhparent = c.oid ORDER BY 1)
             FROM pg_class c WHERE c.oid = %s::oid""",
        (relid,),
    ).fetchone()
    if row is None:
        return None
    kind, children = row[0], list(row[1])
    if kind == "p":
        shown = ", ".join(children[:5]) + (f" and {len(children) - 5} more" if len(children) > 5 else "")
        listed = f"{len(children)} partitions" + (f": {shown}" if shown else "")
        return (
            f"Source table {source} is partitioned ({listed}): "
            "change capture cannot log TRUNCATE, DETACH or DROP of a partition, so the warehouse would "
            f"drift silently; {_INSTEAD}, or capture each partition as its own table."
        )
    if kind != "r":
        return (
            f"Source {source} is {_KINDS.get(kind, f'a relation of kind {kind!r}')}, not an ordinary "
            f"table; change capture needs one (it logs changes with triggers); {_INSTEAD}."
        )
    if children:
        return (
            f"Source table {source} has inheritance child tables ({', '.join(children[:5])}): their rows "
            "are read with it but their changes never reach its triggers, so the warehouse would drift "
            f"silently; {_INSTEAD}, or capture each child table as its own table."
        )
    return None


def partition_parent(conn: psycopg.Connection, relid: int) -> str | None:
    """The partitioned table ``relid`` is a partition of (None: not a partition)."""
    row = conn.execute(
        """SELECT i.inhparent::regclass::text FROM pg_class c JOIN pg_inherits i ON i.inhrelid = c.oid
            WHERE c.oid = %s::oid AND c.relispartition""",
        (relid,),
    ).fetchone()
    return row[0] if row else None


def health(conn: psycopg.Connection, capture: Capture) -> CaptureHealth:
    """What is broken about an installed capture (empty when intact).

    Besides the capture's own objects, checks that the table is still one whose row changes all
    reach the log: a capture installed on a partitioned table (before install refused them), or a
    table that has since gained inheritance children, is reported broken (``unsupported``), since
    rows can leave it without a log entry.
    """
    result = CaptureHealth(capture)
    oid = table_oid(conn, capture.source)
    if oid is None:
        result.problems.append(f"source table {capture.source} no longer exists")
    elif oid != capture.relid:
        result.problems.append(f"source table {capture.source} was dropped and recreated since install")
    else:
        result.unsupported = unsupported_reason(conn, capture.source, oid)
        if result.unsupported:
            result.problems.append(result.unsupported)
        names = {
            r[0]
            for r in conn.execute(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::oid AND tgenabled <> 'D'", (oid,)
            ).fetchall()
        }
        statement = set(STATEMENT_TRIGGERS.values())
        parent = partition_parent(conn, oid)
        if ROW_TRIGGER in names and not names & statement:
            result.row_level = True  # a partition's capture, or an earlier version's (install upgrades it)
        elif parent is not None:
            result.problems.append(
                f"source table {capture.source} became a partition of {parent} after capture was installed: "
                f"rows written through {parent} do not fire its statement-level triggers, so changes may "
                "be missing (capture of a partition uses row-level triggers)"
            )
        else:
            for trig in sorted(statement - names):
                result.problems.append(f"trigger {trig} on {capture.source} is missing or disabled")
        if TRUNCATE_TRIGGER not in names:
            result.problems.append(f"trigger {TRUNCATE_TRIGGER} on {capture.source} is missing or disabled")
    row = conn.execute(
        "SELECT to_regclass(%s), (SELECT cache_size FROM pg_sequences"
        " WHERE schemaname = %s AND sequencename = %s)",
        (f'{SCHEMA}."{capture.log_table}"', SCHEMA, capture.log_sequence),
    ).fetchone()
    if row is None or row[0] is None:
        result.problems.append(f"change log {SCHEMA}.{capture.log_table} is missing")
    if row is None or row[1] is None:
        result.problems.append(f"sequence {SCHEMA}.{capture.log_sequence} is missing")
    elif int(row[1]) != 1:
        result.problems.append(
            f"sequence {SCHEMA}.{capture.log_sequence} has CACHE {row[1]}; it must be CACHE 1 so that "
            "positions "
            "grow in the order they are handed out"
        )
    return result


def require_capture(conn: psycopg.Connection, source: TableRef) -> Capture:
    """The intact capture of ``source``; otherwise :class:`CaptureMissing` saying which command fixes it."""
    capture = get_capture(conn, source)
    if capture is None:
        raise CaptureMissing(
            f"Change capture is not installed on source table {source}. A DBA (or a role with the "
            f"privileges listed in README 'Change data capture') runs `etl-assets cdc install {source}` "
            f"(add --dry-run to review the SQL first)."
        )
    state = health(conn, capture)
    if state.unsupported:
        raise CaptureMissing(
            f"Change capture on {source} cannot be trusted: {state.unsupported} Remove it with "
            f"`etl-assets cdc uninstall {source}`."
        )
    if not state.intact:
        raise CaptureMissing(
            f"Change capture on {source} is broken: {'; '.join(state.problems)}. Reinstall it with "
            f"`etl-assets cdc install {source}` (a new change log), then `etl-assets reset TARGET` "
            "for a new snapshot of each target reading it."
        )
    return capture


# --------------------------------------------------------------------------------------------------
# Install / uninstall
# --------------------------------------------------------------------------------------------------


def _resolve_key(
    conn: psycopg.Connection, source: TableRef, relid: int, key: Sequence[str] | None
) -> tuple[str, ...]:
    keys = immediate_unique_keys(conn, relid)
    if key:
        wanted = tuple(key)
        if not any(set(k) == set(wanted) for k in keys):
            raise ConfigError(
                f"Key {list(wanted)} of {source} is not the column list of a primary key or a non-deferrable "
                f"unique index (found {[list(k) for k in keys] or 'none'}). Capture needs one: changes are "
                "matched by key, and a deferrable key lets one statement log moves in an order that "
                "cannot be replayed. Add such a constraint or declare the matching primary_key."
            )
        return wanted
    if not keys:
        raise ConfigError(
            f"Source table {source} has no primary key or non-deferrable unique index; capture needs one "
            "to match changes to rows. Add a primary key (or pass --key COLUMN...)."
        )
    return keys[0]


def _key_object(key: Sequence[str], record: str) -> sql.Composable:
    """``jsonb_build_object('k1', r.k1, …)``: the logged form of a row's key."""
    return sql.SQL("jsonb_build_object({})").format(
        sql.SQL(", ").join(
            sql.SQL("{}, {}.{}").format(sql.Literal(k), sql.SQL(record), sql.Identifier(k)) for k in key
        )
    )


def _function_header(fn_ident: sql.Identifier, body: sql.Composable) -> sql.Composed:
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER\n"
        # TimeZone pinned: a timestamptz key logged from sessions in different time zones must give
        # the same jsonb, or one row would look like two keys.
        "SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' AS " + _DOLLAR + "{body}" + _DOLLAR
    ).format(fn=fn_ident, body=body)


def _update_sql(log_ident: sql.Identifier, key: Sequence[str], xid: str, *, typed: bool) -> sql.Composed:
    """The UPDATE statement's logging ``INSERT … SELECT``: OLD and NEW rows are not paired, so they
    are joined on the key. ``typed``: on the key columns with their own ``=`` (typed columns hash far
    cheaper than jsonb); otherwise on the logged jsonb key objects (see :func:`_typed_key_join`).
    ``m`` marks a side present in the join. Whole rows are written ``n.*``: a bare ``n`` would mean
    a column of that name if the table has one."""
    match: sql.Composable = sql.SQL(" AND ").join(
        sql.SQL("o.{k} = n.{k}").format(k=sql.Identifier(f"k{i}")) for i in range(len(key))
    )

    def keys(alias: str) -> sql.Composable:
        return sql.SQL(", ").join(
            sql.SQL("{}.{} AS {}").format(sql.Identifier(alias), sql.Identifier(k), sql.Identifier(f"k{i}"))
            for i, k in enumerate(key)
        )

    def key_object(alias: str) -> sql.Composable:
        return sql.SQL("jsonb_build_object({})").format(
            sql.SQL(", ").join(
                sql.SQL("{}, {}.{}").format(sql.Literal(k), sql.Identifier(alias), sql.Identifier(f"k{i}"))
                for i, k in enumerate(key)
            )
        )

    if not typed:
        match = sql.SQL("{} = {}").format(key_object("o"), key_object("n"))
    return sql.SQL(
        """INSERT INTO {log} (op, key, data, txid)
        SELECT CASE WHEN n.m IS NULL THEN 'D' WHEN o.m IS NULL THEN 'I' ELSE 'U' END,
               CASE WHEN n.m IS NULL THEN {old_key} ELSE {new_key} END, n.d, """
        + xid
        + """
          FROM (SELECT {old_cols}, true AS m FROM old_rows o) o
          FULL JOIN (SELECT {new_cols}, to_jsonb(n.*) AS d, true AS m FROM new_rows n) n ON {match}"""
    ).format(
        log=log_ident,
        old_key=key_object("o"),
        new_key=key_object("n"),
        old_cols=keys("o"),
        new_cols=keys("n"),
        match=match,
    )


def _function_sql(
    source: TableRef,
    log_ident: sql.Identifier,
    fn_ident: sql.Identifier,
    key: Sequence[str],
    *,
    typed: bool = True,
) -> sql.Composed:
    """The statement-level trigger function: one ``INSERT … SELECT`` per statement and event.

    An empty transition table (a statement that changed no row) logs nothing and, by returning
    before ``pg_current_xact_id()``, does not make a read-only transaction take a transaction id.

    The UPDATE join runs as a static statement only for one-row statements, and through
    ``EXECUTE`` (planned for the actual row counts) otherwise: PL/pgSQL keeps a statement's plan for
    the session, and a hash join planned for a 200,000-row statement, reused for every later
    one-row update, cost each of them ~100× the update itself.
    """
    body = sql.SQL(
        """
DECLARE
    v_xid xid8;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        INSERT INTO {log} (op, txid) VALUES ('T', pg_current_xact_id());
        RETURN NULL;
    ELSIF TG_OP = 'DELETE' THEN
        IF NOT EXISTS (SELECT FROM old_rows) THEN RETURN NULL; END IF;
        -- The transaction id first: positions are drawn after it, which the reader relies on.
        v_xid := pg_current_xact_id();
        INSERT INTO {log} (op, key, txid) SELECT 'D', {old_key}, v_xid FROM old_rows o;
    ELSIF TG_OP = 'INSERT' THEN
        IF NOT EXISTS (SELECT FROM new_rows) THEN RETURN NULL; END IF;
        v_xid := pg_current_xact_id();
        INSERT INTO {log} (op, key, data, txid)
        SELECT 'I', {new_key}, to_jsonb(n.*), v_xid FROM new_rows n;
    ELSE
        IF NOT EXISTS (SELECT FROM new_rows) THEN RETURN NULL; END IF;
        v_xid := pg_current_xact_id();
        -- OLD and NEW rows are not paired: match them by key. Unmatched old keys were deleted (or
        -- moved away), unmatched new keys inserted (or moved here).
        IF NOT EXISTS (SELECT FROM new_rows OFFSET 1) THEN
        {update_static};
        ELSE
        EXECUTE """
        + _DOLLAR_QUERY
        + "{update_dynamic}"
        + _DOLLAR_QUERY
        + """ USING v_xid;
        END IF;
    END IF;
    RETURN NULL;
END
"""
    ).format(
        log=log_ident,
        old_key=_key_object(key, "o"),
        new_key=_key_object(key, "n"),
        update_static=_update_sql(log_ident, key, "v_xid", typed=typed),
        update_dynamic=_update_sql(log_ident, key, "$1", typed=typed),
    )
    return _function_header(fn_ident, body)


def _row_function_sql(
    source: TableRef, log_ident: sql.Identifier, fn_ident: sql.Identifier, key: Sequence[str]
) -> sql.Composed:
    """The row-level trigger function: for a partition (rows written through its parent fire the
    partition's row triggers, not its statement triggers); earlier versions used it for every table
    (``etl-assets bench`` measures both designs)."""
    body = sql.SQL(
        """
DECLARE
    v_xid xid8 := pg_current_xact_id();
    v_key jsonb;
    v_old jsonb;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        INSERT INTO {log} (op, txid) VALUES ('T', v_xid);
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        v_old := {old_key};
    END IF;
    IF TG_OP = 'DELETE' THEN
        INSERT INTO {log} (op, key, txid) VALUES ('D', v_old, v_xid);
        RETURN NULL;
    END IF;
    v_key := {new_key};
    INSERT INTO {log} (op, key, old_key, data, txid)
    VALUES (CASE TG_OP WHEN 'INSERT' THEN 'I' ELSE 'U' END, v_key,
            CASE WHEN TG_OP = 'UPDATE' AND v_old IS DISTINCT FROM v_key THEN v_old END,
            to_jsonb(NEW), v_xid);
    RETURN NULL;
END
"""
    ).format(log=log_ident, old_key=_key_object(key, "OLD"), new_key=_key_object(key, "NEW"))
    return _function_header(fn_ident, body)


def _typed_key_join(conn: psycopg.Connection, relid: int, key: Sequence[str]) -> bool:
    """Whether the UPDATE trigger may match OLD and NEW rows on the key columns' own ``=``: every key
    column has a built-in type (whose ``=`` is its btree equality) and no nondeterministic collation.
    Otherwise rows are matched on their logged jsonb keys, as the apply compares them: under a
    case-insensitive collation ``'a'`` and ``'A'`` are equal to ``=`` but are two keys in the
    warehouse, and a user-defined type may have no ``=`` at all (the trigger, and with it the
    application's write, would fail)."""
    row = conn.execute(
        """SELECT count(*) FILTER (WHERE t.typnamespace = 'pg_catalog'::regnamespace
                                     AND coalesce(c.collisdeterministic, true))
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
             LEFT JOIN pg_collation c ON c.oid = a.attcollation
            WHERE a.attrelid = %s::oid AND a.attname = ANY(%s) AND NOT a.attisdropped""",
        (relid, list(key)),
    ).fetchone()
    return bool(row) and int(row[0]) == len(key)


def _function_for(conn: psycopg.Connection, capture: Capture, *, row_level: bool) -> sql.Composed:
    """The trigger function this version installs for ``capture``."""
    if row_level:
        return _row_function_sql(
            capture.source, capture.log_ident, capture.function_ident, capture.key_columns
        )
    return _function_sql(
        capture.source,
        capture.log_ident,
        capture.function_ident,
        capture.key_columns,
        typed=_typed_key_join(conn, capture.relid, capture.key_columns),
    )


def _trigger_statements(
    conn: psycopg.Connection, capture: Capture, *, row_level: bool = False, replace: bool = False
) -> list[sql.Composable]:
    """The function and the triggers logging ``capture.source``'s changes; with ``replace``, first
    drop the capture triggers there (run in one transaction, so no statement goes unlogged)."""
    source, fn = capture.source, capture.function_ident
    statements: list[sql.Composable] = [
        sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(t), source.ident)
        for t in (ALL_TRIGGERS if replace else ())
    ]
    statements += [
        _function_for(conn, capture, row_level=row_level),
        sql.SQL("REVOKE ALL ON FUNCTION {}() FROM PUBLIC").format(fn),
    ]
    if row_level:
        statements.append(
            sql.SQL(
                "CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW EXECUTE FUNCTION {}()"
            ).format(sql.Identifier(ROW_TRIGGER), source.ident, fn)
        )
    else:
        referencing = {
            "INSERT": "REFERENCING NEW TABLE AS new_rows",
            "UPDATE": "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
            "DELETE": "REFERENCING OLD TABLE AS old_rows",
        }
        statements += [
            sql.SQL(
                "CREATE TRIGGER {} AFTER " + event + " ON {} " + referencing[event]
                + " FOR EACH STATEMENT EXECUTE FUNCTION {}()"
            ).format(sql.Identifier(name), source.ident, fn)
            for event, name in STATEMENT_TRIGGERS.items()
        ]
    statements.append(
        sql.SQL("CREATE TRIGGER {} AFTER TRUNCATE ON {} FOR EACH STATEMENT EXECUTE FUNCTION {}()").format(
            sql.Identifier(TRUNCATE_TRIGGER), source.ident, fn
        )
    )
    return statements


def _function_current(conn: psycopg.Connection, capture: Capture, *, row_level: bool) -> bool:
    """Whether the capture's trigger function has the body this version installs."""
    body = _function_for(conn, capture, row_level=row_level).as_string(conn).split(_DOLLAR)[1]
    row = conn.execute(
        "SELECT prosrc FROM pg_proc WHERE oid = to_regprocedure(%s)",
        (f'{SCHEMA}."{capture.log_function}"()',),
    ).fetchone()
    return row is not None and row[0] == body


def install_statements(
    conn: psycopg.Connection,
    source: TableRef,
    key: Sequence[str] | None = None,
    *,
    lock_timeout: str = DEFAULT_LOCK_TIMEOUT,
    log_id: str | None = None,
    row_level: bool | None = None,
) -> tuple[list[sql.Composable], Capture | None]:
    """The statements installing capture on ``source`` (empty when an intact capture exists), and the
    capture they create. A broken capture (table recreated, trigger dropped) is replaced by a new log.

    An intact capture installed by an earlier version with a row trigger is upgraded in place: the
    same log, the function replaced and the triggers swapped in one transaction (which waits for
    writers of the table and blocks new ones until it commits), so every change is logged by
    exactly one of the two. An intact capture whose function has an earlier body gets this
    version's (``CREATE OR REPLACE FUNCTION``: one atomic statement, the same log and triggers).
    ``row_level`` installs that earlier design (benchmarks, tests); by
    default it is used only for a partition, whose rows written through its parent fire the
    partition's row triggers but not its statement triggers."""
    relid = table_oid(conn, source)
    if relid is None:
        raise MissingObject(f"Source table {source} does not exist; check the name (schema.table).")
    existing = get_capture(conn, source)
    statements: list[sql.Composable] = [
        sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(lock_timeout))
    ]
    statements += [sql.SQL(s) for s in REGISTRY_DDL]
    refusal = unsupported_reason(conn, source, relid)
    if refusal:
        raise ConfigError(refusal)
    if row_level is None:
        row_level = partition_parent(conn, relid) is not None
    if existing is not None:
        state = health(conn, existing)
        if state.intact:
            if state.row_level == row_level:
                if _function_current(conn, existing, row_level=row_level):
                    return [], existing
                # Same triggers, an earlier body of the function: replacing it is one atomic statement.
                return [*statements, _function_for(conn, existing, row_level=row_level)], existing
            swap = _trigger_statements(conn, existing, row_level=row_level, replace=True)
            return statements + swap, existing
        statements += _drop_statements(conn, existing)
    key_cols = _resolve_key(conn, source, relid, key)
    for name in key_cols:
        for tag in (_DOLLAR, _DOLLAR_QUERY):
            if tag in name:
                raise ConfigError(f"Column name {name!r} of {source} contains {tag}, which capture reserves.")
    log_table, seq, fn = log_names(source)
    capture = Capture(source, relid, log_table, seq, fn, log_id or str(uuid.uuid4()), key_cols)
    statements += [
        sql.SQL("CREATE SEQUENCE {} AS bigint CACHE 1 NO CYCLE").format(capture.sequence_ident),
        sql.SQL(
            """CREATE TABLE {log} (
    position   bigint PRIMARY KEY DEFAULT nextval({seq_text}::regclass),
    op         text NOT NULL CHECK (op IN ('I', 'U', 'D', 'T')),
    key        jsonb,
    old_key    jsonb,
    data       jsonb,
    txid       xid8 NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT clock_timestamp()
)"""
        ).format(log=capture.log_ident, seq_text=sql.Literal(f'{SCHEMA}."{seq}"')),
        sql.SQL("ALTER SEQUENCE {} OWNED BY {}.position").format(capture.sequence_ident, capture.log_ident),
        *_trigger_statements(conn, capture, row_level=row_level),
        sql.SQL(
            "INSERT INTO etl_cdc.capture (source_schema, source_table, relid, log_table, log_sequence, "
            "log_function, log_id, key_columns) VALUES ({}, {}, {}, {}, {}, {}, {}, {})"
        ).format(
            *(sql.Literal(v) for v in (source.schema, source.name, relid, log_table, seq, fn)),
            sql.SQL("{}::uuid").format(sql.Literal(capture.log_id)),
            sql.SQL("{}::text[]").format(sql.Literal(list(key_cols))),
        ),
    ]
    return statements, capture


def _drop_statements(conn: psycopg.Connection, capture: Capture) -> list[sql.Composable]:
    statements: list[sql.Composable] = []
    if table_oid(conn, capture.source) == capture.relid:
        for trig in ALL_TRIGGERS:
            statements.append(
                sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(trig), capture.source.ident)
            )
    statements += [
        sql.SQL("DROP FUNCTION IF EXISTS {}() CASCADE").format(capture.function_ident),
        sql.SQL("DROP TABLE IF EXISTS {}").format(capture.log_ident),
        sql.SQL("DROP SEQUENCE IF EXISTS {}").format(capture.sequence_ident),
        sql.SQL("DELETE FROM etl_cdc.capture WHERE source_schema = {} AND source_table = {}").format(
            sql.Literal(capture.source.schema), sql.Literal(capture.source.name)
        ),
    ]
    return statements


def uninstall_statements(
    conn: psycopg.Connection, source: TableRef, *, lock_timeout: str = DEFAULT_LOCK_TIMEOUT
) -> list[sql.Composable]:
    """Statements removing capture from ``source`` (empty when none is installed)."""
    existing = get_capture(conn, source)
    if existing is None:
        return []
    return [
        sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(lock_timeout)),
        *_drop_statements(conn, existing),
    ]


def run_statements(conn: psycopg.Connection, statements: Sequence[sql.Composable], what: str) -> None:
    """Execute ``statements`` in one transaction; a lock timeout names the busy table."""
    if not statements:
        return
    try:
        with conn.transaction():
            for statement in statements:
                conn.execute(statement)
    except psycopg.errors.LockNotAvailable as exc:
        raise EtlError(
            f"{what}: a table is busy (lock timeout: {exc.diag.message_primary}); long transactions on it "
            "block trigger changes. Retry when it is quieter, or pass a longer --lock-timeout."
        ) from None
    except psycopg.errors.InsufficientPrivilege as exc:
        raise EtlError(
            f"{what}: permission denied ({exc.diag.message_primary}). See README 'Change data capture' "
            "for the privileges capture needs, or give the --dry-run SQL to a DBA."
        ) from None


def install(
    conn: psycopg.Connection,
    source: TableRef,
    key: Sequence[str] | None = None,
    *,
    lock_timeout: str = DEFAULT_LOCK_TIMEOUT,
    row_level: bool | None = None,
) -> tuple[Capture, bool]:
    """Install (repair, upgrade) capture on ``source``; returns the capture and whether anything changed."""
    statements, capture = install_statements(
        conn, source, key, lock_timeout=lock_timeout, row_level=row_level
    )
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE and not conn.autocommit:
        conn.commit()
    run_statements(conn, statements, f"Installing capture on {source}")
    assert capture is not None
    return capture, bool(statements)


def uninstall(
    conn: psycopg.Connection, source: TableRef, *, lock_timeout: str = DEFAULT_LOCK_TIMEOUT
) -> bool:
    statements = uninstall_statements(conn, source, lock_timeout=lock_timeout)
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE and not conn.autocommit:
        conn.commit()
    run_statements(conn, statements, f"Removing capture from {source}")
    return bool(statements)


def render(conn: psycopg.Connection, statements: Sequence[sql.Composable]) -> str:
    """The statements as a reviewable SQL script (for ``--dry-run``)."""
    if not statements:
        return ""
    lines = ["BEGIN;"]
    lines += [s.as_string(conn).strip() + ";" for s in statements]
    lines.append("COMMIT;")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Consumers, status and prune
# --------------------------------------------------------------------------------------------------


def register_consumer(
    conn: psycopg.Connection, capture: Capture, consumer: str, target: str, position: int | None = None
) -> None:
    """Record ``consumer``'s applied position (autocommit-safe; one short transaction).

    ``position=None`` registers it at the log's ``pruned_through`` (nothing below exists anyway):
    done before a snapshot, so that prune cannot remove entries the new consumer still needs. The
    capture row is locked like prune locks it, so the two never interleave.
    """
    with conn.transaction():
        row = conn.execute(
            "SELECT pruned_through FROM etl_cdc.capture WHERE log_id = %s::uuid FOR UPDATE", (capture.log_id,)
        ).fetchone()
        if row is None:
            return
        value = int(row[0]) if position is None else position
        conn.execute(
            """INSERT INTO etl_cdc.consumer (log_id, consumer, target, applied_position, updated_at)
               VALUES (%s::uuid, %s, %s, %s, now())
               ON CONFLICT (log_id, consumer) DO UPDATE
                  SET target = EXCLUDED.target, applied_position = EXCLUDED.applied_position,
                      updated_at = EXCLUDED.updated_at""",
            (capture.log_id, consumer, target, value),
        )


@dataclass
class ConsumerStatus:
    consumer: str
    target: str
    applied_position: int
    pending: int
    oldest_pending_position: int | None
    oldest_pending_at: datetime | None
    lag_seconds: float
    updated_at: datetime | None


@dataclass
class CaptureStatus:
    capture: Capture
    problems: list[str]
    entries: int
    min_position: int | None
    max_position: int | None
    consumers: list[ConsumerStatus]

    @property
    def pending(self) -> int:
        """Entries not yet applied by the slowest consumer (all entries when none is registered)."""
        return max((c.pending for c in self.consumers), default=self.entries)


def status(conn: psycopg.Connection, sources: Sequence[TableRef] = ()) -> list[CaptureStatus]:
    """Per captured table: log size, and per consumer the pending changes and the oldest unapplied one."""
    captures = list_captures(conn)
    if sources:
        wanted = set(sources)
        captures = [c for c in captures if c.source in wanted]
    result: list[CaptureStatus] = []
    for capture in captures:
        problems = health(conn, capture).problems
        if any("change log" in p for p in problems):
            result.append(CaptureStatus(capture, problems, 0, None, None, []))
            continue
        entries, lo, hi = conn.execute(
            sql.SQL("SELECT count(*), min(position), max(position) FROM {}").format(capture.log_ident)
        ).fetchone()
        consumers: list[ConsumerStatus] = []
        for consumer, target, applied, updated_at in conn.execute(
            "SELECT consumer, target, applied_position, updated_at FROM etl_cdc.consumer "
            "WHERE log_id = %s::uuid ORDER BY consumer",
            (capture.log_id,),
        ).fetchall():
            pending, oldest_pos, oldest_at, lag = conn.execute(
                sql.SQL(
                    "SELECT count(*), min(position), min(changed_at), "
                    "coalesce(extract(epoch FROM clock_timestamp() - min(changed_at)), 0)::float8 "
                    "FROM {} WHERE position > %s"
                ).format(capture.log_ident),
                (applied,),
            ).fetchone()
            consumers.append(
                ConsumerStatus(
                    consumer,
                    target,
                    int(applied),
                    int(pending),
                    oldest_pos,
                    oldest_at,
                    float(lag),
                    updated_at,
                )
            )
        result.append(CaptureStatus(capture, problems, int(entries), lo, hi, consumers))
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE and not conn.autocommit:
        conn.rollback()
    return result


@dataclass
class PruneResult:
    source: TableRef
    through: int | None  # highest position removed (None: nothing could be removed)
    removed: int
    reason: str = ""


def prune_statements(
    conn: psycopg.Connection, capture: Capture
) -> tuple[list[sql.Composable], int | None, str]:
    """Statements removing entries every registered consumer has applied, and up to which position."""
    row = conn.execute(
        "SELECT min(applied_position), count(*) FROM etl_cdc.consumer WHERE log_id = %s::uuid",
        (capture.log_id,),
    ).fetchone()
    if row is None or not row[1]:
        return [], None, "no consumer has registered an applied position yet; nothing is removed"
    through = int(row[0])
    if through <= capture.pruned_through:
        return [], None, f"nothing applied beyond position {capture.pruned_through} by every consumer"
    return (
        [
            sql.SQL("DELETE FROM {} WHERE position <= {}").format(capture.log_ident, sql.Literal(through)),
            sql.SQL(
                "UPDATE etl_cdc.capture SET pruned_through = greatest(pruned_through, {}) "
                "WHERE log_id = {}::uuid"
            ).format(sql.Literal(through), sql.Literal(capture.log_id)),
        ],
        through,
        "",
    )


def prune(conn: psycopg.Connection, source: TableRef, *, dry_run: bool = False) -> tuple[PruneResult, str]:
    """Remove the entries of ``source``'s log that every consumer has applied, never one more.

    Runs in one transaction holding the capture row locked, so a consumer registering for a
    snapshot waits (or is seen). Returns the result and the SQL (for ``--dry-run``).
    """
    with conn.transaction():
        capture = get_capture(conn, source, lock="FOR UPDATE")
        if capture is None:
            raise CaptureMissing(f"Change capture is not installed on {source}; nothing to prune.")
        statements, through, reason = prune_statements(conn, capture)
        script = render(conn, statements)
        if dry_run or not statements:
            return PruneResult(source, None, 0, reason or "dry run"), script
        removed = conn.execute(statements[0]).rowcount
        conn.execute(statements[1])
    return PruneResult(source, through, removed), script
