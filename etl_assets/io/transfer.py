"""Moving rows between two PostgreSQL servers as text: the session settings both sides agree on.

PostgreSQL's text output of dates, times, intervals, floats and bytea depends on session settings;
text that one session prints and another parses (or that is stored and compared later, such as an
incremental cursor) must be printed and read under the same settings, whatever each server's
defaults are. These are those settings, in one place.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

#: The settings that shape text output: fixed, so values round-trip exactly.
TEXT_FORMAT: tuple[tuple[str, str], ...] = (
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO, YMD"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
)


def set_text_format(conn: psycopg.Connection, *, local: bool = False) -> None:
    """Apply :data:`TEXT_FORMAT` to ``conn``: for the session, or (``local``) for the current
    transaction only, so a connection handed back afterwards keeps its own settings."""
    scope = "SET LOCAL" if local else "SET"
    for name, value in TEXT_FORMAT:
        conn.execute(sql.SQL("{} {} = {}").format(sql.SQL(scope), sql.SQL(name), sql.Literal(value)))
