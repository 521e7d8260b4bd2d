"""Creating and evolving a warehouse target table: the one place every write path shapes its target.

Extract (columns from the source's types), CDC (the same) and the IO manager (columns from a frame's
types) all come here, so a target is created, gains columns and widens them by one rule: missing
columns are added, an existing column whose incoming type is a safe widening is widened (see
:func:`etl_assets.io.typemap.reconcile`), and any other type change raises
:class:`~etl_assets.errors.SchemaMismatch` naming the column and both types before anything is
changed. Target columns the incoming side no longer has are kept (new rows get NULL there) and
reported, so the caller can warn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from etl_assets.errors import ConfigError, SchemaMismatch
from etl_assets.io import catalog
from etl_assets.io.tables import TableRef
from etl_assets.io.typemap import PgType, reconcile

#: Snapshot history (extract load ``insert``): when the snapshot was taken; part of the target's key.
LOADED_AT = "_loaded_at"
#: The project's own columns a target may carry beside the incoming ones, with their types.
BOOKKEEPING: dict[str, PgType] = {LOADED_AT: PgType("timestamptz")}


@dataclass
class TargetShape:
    """The target's columns after :func:`ensure_target` (table order), and what evolution changed."""

    types: dict[str, PgType]
    created: bool
    added: list[str] = field(default_factory=list)
    widened: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # target columns the incoming side does not have


def with_bookkeeping(columns: Mapping[str, PgType], bookkeeping: Sequence[str] = ()) -> dict[str, PgType]:
    """``columns`` followed by the named bookkeeping columns (see :data:`BOOKKEEPING`)."""
    return {**columns, **{name: BOOKKEEPING[name] for name in bookkeeping}}


def create_table_sql(target: TableRef, columns: Mapping[str, PgType],
                     primary_key: Sequence[str] = ()) -> sql.Composed:
    """``CREATE TABLE`` with ``columns``; key columns NOT NULL and the primary key declared."""
    parts = [
        sql.SQL("{} {}{}").format(
            sql.Identifier(name), sql.SQL(typ.sql()), sql.SQL(" NOT NULL" if name in primary_key else "")
        )
        for name, typ in columns.items()
    ]
    if primary_key:
        parts.append(sql.SQL("PRIMARY KEY ({})").format(sql.SQL(", ").join(map(sql.Identifier, primary_key))))
    return sql.SQL("CREATE TABLE {} ({})").format(target.ident, sql.SQL(", ").join(parts))


def ensure_target(
    conn: psycopg.Connection,
    target: TableRef,
    columns: Mapping[str, PgType],
    primary_key: Sequence[str] = (),
    *,
    values: Mapping[str, Any] | None = None,
    widen: bool = True,
    create_as: TableRef | None = None,
) -> TargetShape:
    """Create ``target`` with ``columns`` (in order) and ``primary_key``, or evolve it to take them.

    ``values``: per column, the polars Series about to be written (a widening is skipped when the
    values already fit the column). ``widen=False`` only adds columns and never changes a type.
    ``create_as`` applies the evolution to a copy (the swap's new table) instead of the target.
    Runs in the caller's transaction; the caller holds the target's lock.
    """
    missing = [k for k in primary_key if k not in columns]
    if missing:
        raise ConfigError(
            f"Primary key column(s) {missing} of {target} are not among its columns {list(columns)}."
        )
    catalog.ensure_schema(conn, target.schema)
    if catalog.table_oid(conn, target) is None:
        conn.execute(create_table_sql(target, columns, primary_key))
        return TargetShape(types=dict(columns), created=True)
    existing = {c.name: c.type for c in catalog.columns(conn, target)}
    kept = [name for name in existing if name not in columns]
    apply_to = create_as or target
    adds: list[tuple[str, PgType]] = []
    widen_to: list[tuple[str, PgType]] = []
    for name, typ in columns.items():
        if name not in existing:
            adds.append((name, typ))
        elif widen:
            series = values.get(name) if values is not None else None
            wider = reconcile(name, str(target), existing[name], typ, series)
            if wider is not None:
                widen_to.append((name, wider))
    for name, typ in adds:
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                apply_to.ident, sql.Identifier(name), sql.SQL(typ.sql())
            )
        )
        existing[name] = typ
    for name, typ in widen_to:
        _widen(conn, target, apply_to, name, existing[name], typ)
        existing[name] = typ
    return TargetShape(
        types=existing, created=False, added=[a for a, _ in adds], widened=[w for w, _ in widen_to], kept=kept
    )


def _widen(conn: psycopg.Connection, target: TableRef, apply_to: TableRef, name: str, old: PgType,
           new: PgType) -> None:
    try:
        with conn.transaction():
            conn.execute(
                sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {} USING {}::{}").format(
                    apply_to.ident, sql.Identifier(name), sql.SQL(new.sql()), sql.Identifier(name),
                    sql.SQL(new.sql()),
                )
            )
    except psycopg.errors.FeatureNotSupported as exc:
        raise SchemaMismatch(
            f"Cannot widen column {name!r} of {target} from {old} to {new}: "
            f"{exc.diag.message_primary} ({exc.diag.message_detail or ''}). Drop or change the dependent "
            "objects, or use write_mode 'swap', which recreates dependent views."
        ) from exc
