"""Swap loads: build the new table beside the live one, then exchange them in one short step.

Why each step:

* The new table is built under a temporary name (``LIKE`` the live table, evolved for the frame) and
  loaded with COPY while readers keep using the live table undisturbed (only our advisory lock and
  an ACCESS SHARE lock are held on it).
* Its indexes and index-backed constraints are built after the load (faster than maintaining them
  row by row) under temporary names, because index names are unique per schema; in the swap they
  are renamed to the live names, so names carry over. CHECK and NOT NULL constraints come with
  ``LIKE``; foreign keys are re-added under their own names; table and column grants, the owner,
  storage options (``reloptions``, the TOAST table's too), ``UNLOGGED``, replica identity, per-column
  statistics targets and options are copied; extended statistics (``CREATE STATISTICS``) are
  recreated on the new table under their names in the swap step (the old ones are renamed away).
* A view is bound to a table's identity, not its name: after the renames it would still read the
  old table. So dependent views (and views on those) are dropped and recreated, with their options,
  owner, grants and comments, inside the swap step. Where that is impossible (materialized views,
  views we cannot re-own, foreign keys from other tables, triggers, rules, row-level security,
  partitioned or inherited tables, membership of a publication) the swap refuses before touching
  the live table, naming them. A published table cannot be swapped safely: the new table's rows are
  COPYed before it takes the live name, so subscribers would never receive them (or, under a
  ``FOR ALL TABLES`` publication, would receive them for a table name they do not have).
* The swap step itself runs in a savepoint with ``lock_timeout``: if readers hold the table longer,
  it gives up the lock request (so readers queued behind it are not stalled) and tries again a few
  times. The renames take ACCESS EXCLUSIVE for milliseconds, held to the commit of the write.
  A swapped-in table is not MVCC-safe: a REPEATABLE READ reader whose snapshot predates the commit
  finds it empty (docs/load-modes.md says what readers see in each mode).
* The old table stays as ``<name>__etl_prev`` until the next swap, recorded in ``etl.swap_history``;
  :func:`rollback` exchanges it back (and a rollback can be rolled back the same way).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from etl_assets.errors import EtlError, MissingObject, SchemaMismatch
from etl_assets.io import catalog
from etl_assets.io.bulk import masked_diagnostics
from etl_assets.io.tables import TableRef, derived_name, lock_target
from etl_assets.migrations import ensure_control_tables

LOCK_TIMEOUT = "2s"
ATTEMPTS = 5
PREV_SUFFIX = "__etl_prev"
_PRIVILEGES = {"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "MAINTAIN"}


def previous_table(target: TableRef) -> TableRef:
    """Where the previous version of ``target`` is kept between swaps."""
    return target.sibling(PREV_SUFFIX)


@dataclass
class IndexInfo:
    name: str
    constraint: str | None  # name of the PK/UNIQUE/EXCLUDE constraint it backs
    constraint_def: str | None
    using_tail: str  # "btree (a, b) WHERE ..." from pg_get_indexdef
    unique: bool


@dataclass
class ViewInfo:
    oid: int
    schema: str
    name: str
    depth: int
    options: list[str]
    owner: str
    comment: str | None
    grants: list[tuple[str | None, str, bool]]
    definition: str = ""

    @property
    def ref(self) -> TableRef:
        return TableRef(self.schema, self.name)


@dataclass
class StatisticsInfo:
    """An extended statistics object on the live table (``CREATE STATISTICS``)."""

    schema: str
    name: str
    definition: str  # pg_get_statisticsobjdef, fully qualified (names the live table)
    target: int  # stxstattarget; -1 is the default
    owner: str
    comment: str | None


@dataclass
class TablePlan:
    """What the live table carries that the incoming table must get."""

    oid: int
    owner: str
    indexes: list[IndexInfo]
    foreign_keys: list[tuple[str, str]]
    grants: list[tuple[str | None, str, bool]]
    comment: str | None
    views: list[ViewInfo]
    owned_sequences: list[tuple[str, str]] = field(default_factory=list)  # (sequence regclass text, column)
    label: str = ""  # the live table's name, for messages
    column_grants: list[tuple[str, str | None, str, bool]] = field(default_factory=list)  # (column, ...)
    reloptions: list[str] = field(default_factory=list)  # "name=value", TOAST's prefixed "toast."
    unlogged: bool = False
    replica_identity: str = "d"  # pg_class.relreplident: d(efault), n(othing), f(ull), i(ndex)
    replica_index: str | None = None
    # (column, statistics target, attoptions)
    column_settings: list[tuple[str, int, list[str]]] = field(default_factory=list)
    statistics: list[StatisticsInfo] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Inspection and refusal
# --------------------------------------------------------------------------------------------------


def _grants(conn: psycopg.Connection, oid: int) -> list[tuple[str | None, str, bool]]:
    rows = conn.execute(
        """
        SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END,
               a.privilege_type, a.is_grantable
        FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = %s
        ORDER BY 1 NULLS FIRST, 2
        """,
        (oid,),
    ).fetchall()
    return [(r[0], r[1], bool(r[2])) for r in rows]


def inspect(conn: psycopg.Connection, target: TableRef, oid: int) -> TablePlan:
    """Collect indexes, constraints, grants and dependent views; refuse what cannot be carried over."""
    problems: list[str] = []
    info = conn.execute(
        """
        SELECT c.relkind, pg_get_userbyid(c.relowner), c.relrowsecurity, obj_description(c.oid, 'pg_class'),
               EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = c.oid OR inhparent = c.oid)
        FROM pg_class c WHERE c.oid = %s
        """,
        (oid,),
    ).fetchone()
    relkind, owner, rls, comment, inherits = info
    if relkind == "p" or inherits:
        problems.append("it is partitioned or part of an inheritance tree")
    if rls:
        problems.append("it has row-level security")
    triggers = [
        r[0]
        for r in conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = %s AND NOT tgisinternal ORDER BY 1", (oid,)
        )
    ]
    if triggers:
        problems.append(f"triggers {triggers} would not carry over")
    rules = [
        r[0] for r in conn.execute("SELECT rulename FROM pg_rewrite WHERE ev_class = %s ORDER BY 1", (oid,))
    ]
    if rules:
        problems.append(f"rules {rules} would not carry over")
    incoming = [
        f"{r[0]} ({r[1]})"
        for r in conn.execute(
            """SELECT conrelid::regclass::text, conname FROM pg_constraint
           WHERE confrelid = %s AND contype = 'f' AND conrelid <> confrelid ORDER BY 1, 2""",
            (oid,),
        )
    ]
    if incoming:
        problems.append(f"foreign keys of other tables reference it: {', '.join(incoming)}")
    indexes = [
        IndexInfo(r[0], r[1], r[2], r[3][len(r[4]) :] if r[3].startswith(r[4]) else "", bool(r[5]))
        for r in conn.execute(
            """
            SELECT i.relname, con.conname, pg_get_constraintdef(con.oid), pg_get_indexdef(x.indexrelid),
                   format('CREATE %%sINDEX %%I ON %%I.%%I USING ',
                          CASE WHEN x.indisunique THEN 'UNIQUE ' ELSE '' END,
                          i.relname, n.nspname, c.relname),
                   x.indisunique
            FROM pg_index x
            JOIN pg_class i ON i.oid = x.indexrelid
            JOIN pg_class c ON c.oid = x.indrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            LEFT JOIN pg_constraint con
              ON con.conindid = x.indexrelid AND con.conrelid = x.indrelid AND con.contype IN ('p', 'u', 'x')
            WHERE x.indrelid = %s ORDER BY i.relname
            """,
            (oid,),
        )
    ]
    for ix in indexes:
        if ix.constraint is None and not ix.using_tail:
            problems.append(f"index {ix.name!r} has a definition the swap cannot rebuild")
    fks = [
        (r[0], r[1])
        for r in conn.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = %s AND contype = 'f' ORDER BY conname",
            (oid,),
        )
    ]
    views: list[ViewInfo] = []
    for r in conn.execute(
        """
        WITH RECURSIVE deps(oid, depth) AS (
            SELECT r.ev_class, 1 FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
            WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
              AND d.refobjid = %(oid)s AND r.ev_class <> %(oid)s
            UNION
            SELECT r.ev_class, deps.depth + 1 FROM deps
            JOIN pg_depend d ON d.refobjid = deps.oid AND d.classid = 'pg_rewrite'::regclass
                            AND d.refclassid = 'pg_class'::regclass
            JOIN pg_rewrite r ON r.oid = d.objid
            WHERE r.ev_class <> deps.oid AND deps.depth < 32
        )
        SELECT v.oid::int8, n.nspname, v.relname, v.relkind, max(deps.depth), pg_get_userbyid(v.relowner),
               coalesce(v.reloptions, '{}'), obj_description(v.oid, 'pg_class'),
               pg_has_role(v.relowner, 'MEMBER')
        FROM deps JOIN pg_class v ON v.oid = deps.oid JOIN pg_namespace n ON n.oid = v.relnamespace
        GROUP BY v.oid, n.nspname, v.relname, v.relkind, v.relowner, v.reloptions
        ORDER BY max(deps.depth), n.nspname, v.relname
        """,
        {"oid": oid},
    ).fetchall():
        voi, schema, name, kind, depth, vowner, options, vcomment, can_own = r
        label = f"{schema}.{name}"
        if kind != "v":
            problems.append(f"materialized view {label} depends on it (it cannot be recreated in the swap)")
            continue
        if not can_own:
            problems.append(f"view {label} is owned by {vowner}, which this role cannot recreate it as")
            continue
        views.append(ViewInfo(voi, schema, name, depth, list(options), vowner, vcomment, _grants(conn, voi)))
    publications = [
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT pubname FROM pg_catalog.pg_publication_tables "
            "WHERE schemaname = %s AND tablename = %s ORDER BY 1",
            (target.schema, target.name),
        )
    ]
    if publications:
        problems.append(
            f"it is in publication(s) {', '.join(publications)}: logical replication subscribers would not "
            "receive the swapped-in rows (truncate_insert replicates as TRUNCATE + INSERT)"
        )
    if problems:
        raise SchemaMismatch(
            f"Cannot swap {target}: " + "; ".join(problems) + ". Nothing was changed; use write_mode "
            "'truncate_insert' for this table, or remove those objects."
        )
    sequences = [
        (r[0], r[1])
        for r in conn.execute(
            """
        SELECT d.objid::regclass::text, a.attname FROM pg_depend d
        JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
        JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
        WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
          AND d.refobjid = %s AND d.deptype = 'a'
        """,
            (oid,),
        )
    ]
    plan = TablePlan(oid, owner, indexes, fks, _grants(conn, oid), comment, views, sequences, str(target))
    _storage_and_statistics(conn, oid, plan)
    return plan


def _storage_and_statistics(conn: psycopg.Connection, oid: int, plan: TablePlan) -> None:
    """What ``CREATE TABLE ... (LIKE ...)`` does not copy: column grants, storage options,
    persistence, replica identity, column statistics settings, extended statistics."""
    plan.column_grants = [
        (r[0], r[1], r[2], bool(r[3]))
        for r in conn.execute(
            """
            SELECT a.attname, CASE WHEN x.grantee = 0 THEN NULL ELSE pg_get_userbyid(x.grantee) END,
                   x.privilege_type, x.is_grantable
            FROM pg_attribute a, aclexplode(a.attacl) x
            WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped AND a.attacl IS NOT NULL
            ORDER BY a.attnum, 2 NULLS FIRST, 3
            """,
            (oid,),
        )
    ]
    options, toast_options, persistence, identity = conn.execute(
        """
        SELECT coalesce(c.reloptions, '{}'), coalesce(t.reloptions, '{}'), c.relpersistence, c.relreplident
        FROM pg_class c LEFT JOIN pg_class t ON t.oid = c.reltoastrelid WHERE c.oid = %s
        """,
        (oid,),
    ).fetchone()
    plan.reloptions = list(options) + [f"toast.{o}" for o in toast_options]
    plan.unlogged = persistence == "u"
    plan.replica_identity = identity
    if identity == "i":
        plan.replica_index = conn.execute(
            "SELECT i.relname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
            "WHERE x.indrelid = %s AND x.indisreplident",
            (oid,),
        ).fetchone()[0]
    plan.column_settings = [
        (r[0], int(r[1]), list(r[2]))
        for r in conn.execute(
            """
            SELECT attname, coalesce(attstattarget, -1),
                   ARRAY(SELECT o FROM unnest(attoptions) o
                         WHERE split_part(o, '=', 1) IN ('n_distinct', 'n_distinct_inherited'))
            FROM pg_attribute
            WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped
              AND (coalesce(attstattarget, -1) <> -1 OR attoptions IS NOT NULL)
            ORDER BY attnum
            """,
            (oid,),
        )
    ]
    old = conn.execute("SELECT current_setting('search_path')").fetchone()[0]
    conn.execute("SELECT set_config('search_path', '', true)")  # definitions fully qualified
    try:
        plan.statistics = [
            StatisticsInfo(r[0], r[1], r[2], int(r[3]), r[4], r[5])
            for r in conn.execute(
                """
                SELECT n.nspname, s.stxname, pg_get_statisticsobjdef(s.oid), coalesce(s.stxstattarget, -1),
                       pg_get_userbyid(s.stxowner), obj_description(s.oid, 'pg_statistic_ext')
                FROM pg_statistic_ext s JOIN pg_namespace n ON n.oid = s.stxnamespace
                WHERE s.stxrelid = %s ORDER BY 1, 2
                """,
                (oid,),
            )
        ]
    finally:
        conn.execute("SELECT set_config('search_path', %s, true)", (old,))


# --------------------------------------------------------------------------------------------------
# Building pieces
# --------------------------------------------------------------------------------------------------


def _apply_grants(
    conn: psycopg.Connection,
    rel: TableRef,
    grants: Sequence[tuple[str | None, str, bool]],
    kind: str = "TABLE",
) -> None:
    """Make ``rel``'s privileges exactly ``grants`` (revoke what it has, grant what the live one had)."""
    current = conn.execute(
        "SELECT DISTINCT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END "
        "FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = to_regclass(%s)",
        (rel.regclass_text,),
    ).fetchall()
    for (grantee,) in current:
        conn.execute(
            sql.SQL("REVOKE ALL ON TABLE {} FROM {}").format(
                rel.ident, sql.SQL("PUBLIC") if grantee is None else sql.Identifier(grantee)
            )
        )
    for grantee, privilege, grantable in grants:
        if privilege not in _PRIVILEGES:
            continue
        conn.execute(
            sql.SQL("GRANT {} ON TABLE {} TO {}{}").format(
                sql.SQL(privilege),
                rel.ident,
                sql.SQL("PUBLIC") if grantee is None else sql.Identifier(grantee),
                sql.SQL(" WITH GRANT OPTION" if grantable else ""),
            )
        )


def _apply_column_grants(
    conn: psycopg.Connection, rel: TableRef, grants: Sequence[tuple[str, str | None, str, bool]]
) -> None:
    """Make ``rel``'s column privileges exactly ``grants`` (column, grantee, privilege, grantable)."""
    current = conn.execute(
        "SELECT DISTINCT a.attname, CASE WHEN x.grantee = 0 THEN NULL ELSE pg_get_userbyid(x.grantee) END "
        "FROM pg_attribute a, aclexplode(a.attacl) x WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0",
        (rel.regclass_text,),
    ).fetchall()
    for column, grantee in current:
        conn.execute(
            sql.SQL("REVOKE ALL ({}) ON TABLE {} FROM {}").format(
                sql.Identifier(column),
                rel.ident,
                sql.SQL("PUBLIC") if grantee is None else sql.Identifier(grantee),
            )
        )
    for column, grantee, privilege, grantable in grants:
        if privilege not in _PRIVILEGES:
            continue
        conn.execute(
            sql.SQL("GRANT {} ({}) ON TABLE {} TO {}{}").format(
                sql.SQL(privilege),
                sql.Identifier(column),
                rel.ident,
                sql.SQL("PUBLIC") if grantee is None else sql.Identifier(grantee),
                sql.SQL(" WITH GRANT OPTION" if grantable else ""),
            )
        )


def _option(text: str) -> sql.Composable:
    """``name=value`` from pg_class.reloptions as ``name = 'value'`` (the name checked, the value quoted)."""
    name, _, value = text.partition("=")
    if not re.fullmatch(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?", name):
        raise SchemaMismatch(
            f"Cannot copy the storage option {name!r} in a swap; remove it or use truncate_insert."
        )
    return sql.SQL("{} = {}").format(sql.SQL(name), sql.Literal(value))


def _apply_storage(conn: psycopg.Connection, rel: TableRef, plan: TablePlan) -> None:
    """Give ``rel`` the live table's storage options and column statistics settings (exactly: options
    ``rel`` has beyond them are reset)."""
    current = conn.execute(
        """
        SELECT coalesce(c.reloptions, '{}')
               || coalesce(ARRAY(SELECT 'toast.' || o FROM unnest(t.reloptions) o), '{}')
        FROM pg_class c LEFT JOIN pg_class t ON t.oid = c.reltoastrelid WHERE c.oid = to_regclass(%s)
        """,
        (rel.regclass_text,),
    ).fetchone()[0]
    if current:
        names = sql.SQL(", ").join(sql.SQL(o.partition("=")[0]) for o in current if _option(o))
        conn.execute(sql.SQL("ALTER TABLE {} RESET ({})").format(rel.ident, names))
    if plan.reloptions:
        options = sql.SQL(", ").join(_option(o) for o in plan.reloptions)
        conn.execute(sql.SQL("ALTER TABLE {} SET ({})").format(rel.ident, options))
    for column, target, options in plan.column_settings:
        if target >= 0:
            conn.execute(
                sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET STATISTICS {}").format(
                    rel.ident, sql.Identifier(column), sql.Literal(target)
                )
            )
        if options:
            conn.execute(
                sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET ({})").format(
                    rel.ident, sql.Identifier(column), sql.SQL(", ").join(_option(o) for o in options)
                )
            )


def _apply_identity(
    conn: psycopg.Connection, rel: TableRef, plan: TablePlan, index_pairs: Sequence[tuple[str, str]]
) -> None:
    """The live table's REPLICA IDENTITY on ``rel`` (whose indexes carry the names in ``index_pairs``)."""
    if plan.replica_identity == "f":
        conn.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(rel.ident))
    elif plan.replica_identity == "n":
        conn.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY NOTHING").format(rel.ident))
    elif plan.replica_identity == "i":
        names = dict(index_pairs)
        if plan.replica_index not in names:
            raise SchemaMismatch(
                f"Cannot swap {plan.label}: its replica identity index {plan.replica_index} "
                "cannot be rebuilt."
            )
        conn.execute(
            sql.SQL("ALTER TABLE {} REPLICA IDENTITY USING INDEX {}").format(
                rel.ident, sql.Identifier(names[plan.replica_index])
            )
        )


def _swap_statistics(
    conn: psycopg.Connection, plan: TablePlan, incoming_stats: Sequence[tuple[str, str]]
) -> None:
    """In the swap step, after the tables' renames: extended statistics move to the table now live.

    The incoming table's own statistics objects (a rolled-back version's) are dropped; the live
    table's are renamed to ``<name>__etl_prev`` and recreated, under their names, on the table that
    now has the live name (their definitions name the table by that name).
    """
    for schema, name in incoming_stats:
        conn.execute(sql.SQL("DROP STATISTICS {}").format(sql.Identifier(schema, name)))
    current = conn.execute("SELECT current_user").fetchone()[0]
    for st in plan.statistics:
        conn.execute(
            sql.SQL("ALTER STATISTICS {} RENAME TO {}").format(
                sql.Identifier(st.schema, st.name), sql.Identifier(derived_name(st.name, PREV_SUFFIX))
            )
        )
        conn.execute(sql.SQL(st.definition))
        ident = sql.Identifier(st.schema, st.name)
        if st.target >= 0:
            conn.execute(
                sql.SQL("ALTER STATISTICS {} SET STATISTICS {}").format(ident, sql.Literal(st.target))
            )
        if st.owner != current:
            conn.execute(sql.SQL("ALTER STATISTICS {} OWNER TO {}").format(ident, sql.Identifier(st.owner)))
        if st.comment is not None:
            conn.execute(sql.SQL("COMMENT ON STATISTICS {} IS {}").format(ident, sql.Literal(st.comment)))


def _statistics_of(conn: psycopg.Connection, rel: TableRef) -> list[tuple[str, str]]:
    return [
        (r[0], r[1])
        for r in conn.execute(
            "SELECT n.nspname, s.stxname FROM pg_statistic_ext s "
            "JOIN pg_namespace n ON n.oid = s.stxnamespace WHERE s.stxrelid = to_regclass(%s)",
            (rel.regclass_text,),
        )
    ]


def _set_owner_comment(
    conn: psycopg.Connection, rel: TableRef, owner: str, comment: str | None, kind: str = "TABLE"
) -> None:
    current = conn.execute("SELECT current_user").fetchone()[0]
    if owner != current:
        conn.execute(
            sql.SQL("ALTER {} {} OWNER TO {}").format(sql.SQL(kind), rel.ident, sql.Identifier(owner))
        )
    if comment is not None:
        conn.execute(sql.SQL("COMMENT ON {} {} IS {}").format(sql.SQL(kind), rel.ident, sql.Literal(comment)))


def _temp_index_name(token: str, i: int) -> str:
    return f"etl_swap_{token}_{i}"


def _build_indexes(
    conn: psycopg.Connection, new: TableRef, plan: TablePlan, token: str
) -> list[tuple[str, str]]:
    """Create the live table's indexes and constraints on ``new`` under temporary names.

    Rows that break a unique index or a foreign key fail here, before the live table is touched;
    PostgreSQL's message quotes the offending key, so it is replaced by one with the values masked.
    """
    pairs: list[tuple[str, str]] = []  # (live name, temporary name)
    for i, ix in enumerate(plan.indexes):
        tmp = _temp_index_name(token, i)
        if ix.constraint is not None:
            stmt = sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                new.ident, sql.Identifier(tmp), sql.SQL(ix.constraint_def)
            )
        else:
            stmt = sql.SQL("CREATE {}INDEX {} ON {} USING {}").format(
                sql.SQL("UNIQUE " if ix.unique else ""),
                sql.Identifier(tmp),
                new.ident,
                sql.SQL(ix.using_tail),
            )
        _build(conn, stmt, plan, ix.constraint or ix.name, tmp)
        pairs.append((ix.name, tmp))
    for name, definition in plan.foreign_keys:
        stmt = sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
            new.ident, sql.Identifier(name), sql.SQL(definition)
        )
        _build(conn, stmt, plan, name, name)
    return pairs


def _build(conn: psycopg.Connection, stmt: sql.Composable, plan: TablePlan, name: str, tmp: str) -> None:
    try:
        conn.execute(stmt)
    except psycopg.errors.IntegrityError as exc:
        primary, detail, _ = masked_diagnostics(exc)
        raise SchemaMismatch(
            f"The new rows for {plan.label} break {name} of the live table: {primary.replace(tmp, name)}. "
            f"{detail} Nothing was changed; fix the rows (values are masked: they may be sensitive)."
        ) from None


def _rename_index(conn: psycopg.Connection, schema: str, old: str, new: str) -> None:
    conn.execute(
        sql.SQL("ALTER INDEX {} RENAME TO {}").format(sql.Identifier(schema, old), sql.Identifier(new))
    )
    # An index backing a constraint renames the constraint with it (PostgreSQL does that itself).


def _view_definitions(conn: psycopg.Connection, views: Sequence[ViewInfo]) -> None:
    """Fill each view's definition, fully schema-qualified (empty search_path while decompiling)."""
    old = conn.execute("SELECT current_setting('search_path')").fetchone()[0]
    conn.execute("SELECT set_config('search_path', '', true)")
    try:
        for v in views:
            text = conn.execute("SELECT pg_get_viewdef(%s::oid)", (v.oid,)).fetchone()[0]
            v.definition = text.strip().rstrip(";")
    finally:
        conn.execute("SELECT set_config('search_path', %s, true)", (old,))


def _recreate_views(conn: psycopg.Connection, views: Sequence[ViewInfo]) -> None:
    for v in views:
        options = sql.SQL("")
        if v.options:
            options = sql.SQL(" WITH ({})").format(sql.SQL(", ").join(sql.SQL(o) for o in v.options))
        try:
            with conn.transaction():
                conn.execute(
                    sql.SQL("CREATE VIEW {}{} AS {}").format(v.ref.ident, options, sql.SQL(v.definition))
                )
        except psycopg.Error as exc:
            raise SchemaMismatch(
                f"Cannot recreate view {v.ref} on the new table: {exc.diag.message_primary or exc}. "
                "The swap was rolled back; the live table is unchanged."
            ) from exc
        _set_owner_comment(conn, v.ref, v.owner, v.comment, kind="VIEW")
        _apply_grants(conn, v.ref, v.grants, kind="VIEW")


def _exchange(
    conn: psycopg.Connection,
    live: TableRef,
    incoming: TableRef,
    plan: TablePlan,
    index_pairs: Sequence[tuple[str, str]],
    keep_as: TableRef,
) -> dict[str, str]:
    """Inside a savepoint: put ``incoming`` in place of ``live``; ``live`` becomes ``keep_as``.

    ``index_pairs`` are (live index name, incoming index name). Returns live name -> kept name.
    """
    conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(live.ident))
    incoming_stats = _statistics_of(conn, incoming)
    _view_definitions(conn, plan.views)
    for v in reversed(plan.views):
        conn.execute(sql.SQL("DROP VIEW {}").format(v.ref.ident))
    parking = live.sibling(f"__etl_x{secrets.token_hex(3)}")
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(live.ident, sql.Identifier(parking.name)))
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(incoming.ident, sql.Identifier(live.name)))
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(parking.ident, sql.Identifier(keep_as.name)))
    kept: dict[str, str] = {}
    for live_name, incoming_name in index_pairs:
        parked = f"etl_park_{secrets.token_hex(6)}"
        _rename_index(conn, live.schema, live_name, parked)
        _rename_index(conn, live.schema, incoming_name, live_name)
        kept_name = (
            derived_name(live_name, PREV_SUFFIX) if incoming_name.startswith("etl_swap_") else incoming_name
        )
        _rename_index(conn, live.schema, parked, kept_name)
        kept[live_name] = kept_name
    _swap_statistics(conn, plan, incoming_stats)
    for seq, column in plan.owned_sequences:
        conn.execute(
            sql.SQL("ALTER SEQUENCE {} OWNED BY {}").format(
                sql.SQL(seq), sql.Identifier(live.schema, live.name, column)
            )
        )
    _recreate_views(conn, plan.views)
    return kept


def _with_lock_retries(conn: psycopg.Connection, target: TableRef, step, lock_timeout: str, attempts: int):
    old = conn.execute("SELECT current_setting('lock_timeout')").fetchone()[0]
    last: Exception | None = None
    try:
        for _attempt in range(attempts):
            try:
                with conn.transaction():
                    conn.execute("SELECT set_config('lock_timeout', %s, true)", (lock_timeout,))
                    return step()
            except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected) as exc:
                last = exc
        holders = conn.execute(
            """SELECT string_agg(DISTINCT format('pid %%s (%%s, %%s)', l.pid, a.application_name, l.mode),
                                 '; ')
               FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
               WHERE l.relation = to_regclass(%s) AND l.pid <> pg_backend_pid()
                 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())""",
            (target.regclass_text,),
        ).fetchone()[0]
        raise EtlError(
            f"Could not swap {target}: other sessions held it for {attempts} attempts of {lock_timeout} each "
            f"({holders or 'no holder left'}; last error: {last}). The live table is unchanged; retry later."
        )
    finally:
        conn.execute("SELECT set_config('lock_timeout', %s, true)", (old,))


def _record(
    conn: psycopg.Connection,
    target: TableRef,
    previous: TableRef,
    kept: Mapping[str, str],
    action: str,
    run_id: str | None,
    rows: int | None,
) -> None:
    conn.execute(
        """INSERT INTO etl.swap_history
               (target_schema, target_name, previous_name, index_names, action, run_id, rows)
           VALUES (%s, %s, %s, %s::jsonb, %s, %s, %s)""",
        (target.schema, target.name, previous.name, json.dumps(dict(kept)), action, run_id, rows),
    )


# --------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------


def build_and_swap(
    conn: psycopg.Connection,
    target: TableRef,
    fill: Callable[[TableRef], int],
    *,
    run_id: str | None = None,
    prepare: Callable[[TableRef], Any] | None = None,
    lock_timeout: str = LOCK_TIMEOUT,
    attempts: int = ATTEMPTS,
) -> tuple[int, int]:
    """Build a new table beside the existing ``target`` with ``fill(new) -> rows``, then swap it in.

    The public swap for streaming callers (chunked extracts, COPY streams): ``prepare(new)`` may
    evolve the new table's columns first. Runs inside the caller's transaction, which should hold
    :func:`etl_assets.io.writer.lock_target`. Returns (rows filled, rows the replaced table had).
    """
    oid = catalog.table_oid(conn, target)
    if oid is None:
        raise MissingObject(f"{target} must exist before a swap; create it first.")
    plan = inspect(conn, target, oid)
    token = secrets.token_hex(4)
    new = target.sibling(f"__etl_new_{token}")
    conn.execute(
        sql.SQL(
            "CREATE {}TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED "
            "INCLUDING IDENTITY INCLUDING STORAGE INCLUDING COMMENTS INCLUDING COMPRESSION)"
        ).format(sql.SQL("UNLOGGED " if plan.unlogged else ""), new.ident, target.ident)
    )
    _apply_storage(conn, new, plan)  # before the fill: fillfactor applies to the rows COPYed in
    if prepare is not None:
        prepare(new)
    rows = fill(new)
    pairs = _build_indexes(conn, new, plan, token)
    _apply_identity(conn, new, plan, pairs)
    _set_owner_comment(conn, new, plan.owner, plan.comment)
    _apply_grants(conn, new, plan.grants)
    _apply_column_grants(conn, new, plan.column_grants)
    previous = previous_table(target)
    replaced = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(target.ident)).fetchone()[0]

    def step() -> dict[str, str]:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(previous.ident))
        return _exchange(conn, target, new, plan, pairs, previous)

    kept = _with_lock_retries(conn, target, step, lock_timeout, attempts)
    _record(conn, target, previous, kept, "swap", run_id, rows)
    return rows, replaced


def rollback(
    conn: psycopg.Connection,
    target: TableRef,
    *,
    lock_timeout: str = LOCK_TIMEOUT,
    attempts: int = ATTEMPTS,
    run_id: str | None = None,
) -> TableRef:
    """Exchange ``target`` with its previous version (kept by the last swap); returns that table's name."""
    ensure_control_tables(conn)
    with conn.transaction():
        lock_target(conn, target)
        row = conn.execute(
            """SELECT previous_name, index_names FROM etl.swap_history
               WHERE target_schema = %s AND target_name = %s ORDER BY id DESC LIMIT 1""",
            (target.schema, target.name),
        ).fetchone()
        oid = catalog.table_oid(conn, target)
        if row is None or oid is None:
            raise MissingObject(f"{target} has no previous version to roll back to (it was never swapped).")
        previous = TableRef(target.schema, row[0])
        if catalog.table_oid(conn, previous) is None:
            raise MissingObject(f"The previous version of {target} ({previous}) no longer exists.")
        plan = inspect(conn, target, oid)
        kept_names: dict[str, str] = row[1] or {}
        pairs = [
            (live, prev) for live, prev in kept_names.items() if any(ix.name == live for ix in plan.indexes)
        ]
        _set_owner_comment(conn, previous, plan.owner, plan.comment)
        _apply_grants(conn, previous, plan.grants)
        _apply_column_grants(conn, previous, plan.column_grants)
        _apply_storage(conn, previous, plan)
        _apply_identity(conn, previous, plan, pairs)
        rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(previous.ident)).fetchone()[0]
        kept = _with_lock_retries(
            conn,
            target,
            lambda: _exchange(conn, target, previous, plan, pairs, previous),
            lock_timeout,
            attempts,
        )
        _record(conn, target, previous, kept, "rollback", run_id, rows)
    return previous
