"""Scratch databases for the benchmarks that need their own (stream, scale, CDC): created next to
the configured ones, dropped afterwards, so a user's demo is never touched."""

from __future__ import annotations

import psycopg
from psycopg import sql

from etl_assets.settings import with_database


def create_database(dsn: str, name: str) -> str:
    """Create ``name`` on the server of ``dsn`` (dropping a leftover of a killed run); its DSN."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(dsn, name)


def drop_database(dsn: str, name: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
