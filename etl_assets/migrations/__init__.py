"""Versioned migrations of the control schema ``etl`` in the warehouse.

Migrations are the files ``etl_assets/migrations/NNNN_name.sql``, applied in order of their number,
each in its own transaction together with its row in ``etl.schema_migrations``. A transaction-level
advisory lock serialises concurrent callers, so running :func:`migrate` from many processes at once,
or again and again, is safe: the second caller waits, then finds nothing left to do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import psycopg

from etl_assets.errors import ConfigError

# An arbitrary, fixed key for pg_advisory_xact_lock: "etl-migr" in ASCII.
_LOCK_KEY = 0x65746C2D6D696772 & 0x7FFFFFFFFFFFFFFF
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    """Every migration shipped with the package, in order."""
    found: list[Migration] = []
    for entry in resources.files("etl_assets.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(versions) != len(set(versions)):
        raise ConfigError(f"Two migrations share a version number: {versions}")
    return found


def migrate(conn: psycopg.Connection) -> list[int]:
    """Bring the control schema up to date; returns the versions applied by this call."""
    applied_now: list[int] = []
    if conn.autocommit:
        raise ValueError("migrate() needs a connection with autocommit off")
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        if conn.execute("SELECT to_regnamespace('etl') IS NULL").fetchone()[0]:  # IF NOT EXISTS needs
            conn.execute("CREATE SCHEMA IF NOT EXISTS etl")  # CREATE on the database even when it exists
        conn.execute(
            """CREATE TABLE IF NOT EXISTS etl.schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {row[0] for row in conn.execute("SELECT version FROM etl.schema_migrations")}
        for migration in available():
            if migration.version in done:
                continue
            with conn.transaction():
                conn.execute(migration.sql)
                conn.execute(
                    "INSERT INTO etl.schema_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
            applied_now.append(migration.version)
    return applied_now


_migrated: set[str] = set()


def ensure_migrated(conn: psycopg.Connection) -> None:
    """Run :func:`migrate` once per process and database; cheap afterwards."""
    key = f"{conn.info.host}:{conn.info.port}/{conn.info.dbname}"
    if key in _migrated:
        return
    migrate(conn)
    _migrated.add(key)


def migrated(conn: psycopg.Connection) -> None:
    """Make sure ``etl`` (state table) exists, committing the migration; works on an autocommit
    connection too."""
    was = conn.autocommit
    if was:
        conn.autocommit = False
    try:
        ensure_migrated(conn)
        conn.commit()
    finally:
        if was:
            conn.autocommit = True


def ensure_control_tables(conn: psycopg.Connection) -> None:
    """Apply the control-schema migrations (etl.swap_history) on ``conn`` if they are missing; inside
    the caller's open transaction, if there is one (it commits with it)."""
    if conn.execute("SELECT to_regclass('etl.swap_history')").fetchone()[0] is not None:
        return
    if conn.autocommit and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        conn.autocommit = False  # migrate() runs its own transactions on a non-autocommit connection
        try:
            ensure_migrated(conn)
            conn.commit()
        finally:
            conn.autocommit = True
    else:
        ensure_migrated(conn)
