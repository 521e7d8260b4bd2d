"""Table references and the derived names the IO layer creates beside a table.

A :class:`TableRef` is the one way code in this project names a warehouse table: it renders as a
``psycopg.sql.Identifier`` (so capitals, spaces and quotes in names are always quoted correctly) and
as ``schema.table`` for people. Derived names (staging tables, the swap's new and previous tables,
temporary index names) must fit PostgreSQL's 63-byte identifier limit and stay unique, so they are
built here in one place.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from etl_assets.errors import ConfigError

MAX_IDENTIFIER_BYTES = 63


def _split_dotted(text: str) -> list[str]:
    """Split ``schema.table`` honouring double quotes (``"my.schema"."My Table"``)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    i = 0
    while i < len(text):
        ch = text[i]
        if quoted:
            if ch == '"':
                if i + 1 < len(text) and text[i + 1] == '"':
                    current.append('"')
                    i += 1
                else:
                    quoted = False
            else:
                current.append(ch)
        elif ch == '"':
            quoted = True
        elif ch == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    if quoted:
        raise ConfigError(f"Table name {text!r} has an unterminated double quote.")
    parts.append("".join(current))
    return parts


@dataclass(frozen=True)
class TableRef:
    """A schema-qualified table name. Names are used exactly as given (no case folding)."""

    schema: str
    name: str

    def __post_init__(self) -> None:
        if not self.schema or not self.name:
            raise ConfigError(
                f"A table needs a schema and a name, got schema={self.schema!r} name={self.name!r}."
            )
        for part in (self.schema, self.name):
            if len(part.encode()) > MAX_IDENTIFIER_BYTES:
                raise ConfigError(
                    f"Name {part!r} is longer than PostgreSQL's {MAX_IDENTIFIER_BYTES}-byte identifier "
                    "limit; shorten it."
                )

    @classmethod
    def parse(cls, text: str, default_schema: str = "public") -> TableRef:
        """``"schema.table"`` (or ``"table"`` in ``default_schema``); double quotes protect dots."""
        parts = _split_dotted(text.strip())
        if len(parts) == 1:
            return cls(default_schema, parts[0])
        if len(parts) == 2:
            return cls(parts[0], parts[1])
        raise ConfigError(f"Table name {text!r} must be 'schema.table' (quote parts containing dots).")

    @classmethod
    def for_asset_key(cls, key: object) -> TableRef:
        """``["raw", "orders"]`` -> ``raw.orders``; a one-part key -> ``public.<name>``.

        Longer keys use the second-to-last part as the schema and the last as the table.
        """
        path: Sequence[str] = getattr(key, "path", key)  # dagster.AssetKey or a list of strings
        if isinstance(path, str):
            path = [path]
        path = list(path)
        if not path:
            raise ConfigError("An empty asset key has no table.")
        if len(path) == 1:
            return cls("public", path[0])
        return cls(path[-2], path[-1])

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def schema_ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema)

    @property
    def regclass_text(self) -> str:
        """The name as text for ``to_regclass`` / ``::regclass`` parameters (quoted, exact case)."""
        return _quote(self.schema) + "." + _quote(self.name)

    def sibling(self, suffix: str) -> TableRef:
        """A table in the same schema named after this one with ``suffix`` (see :func:`derived_name`)."""
        return TableRef(self.schema, derived_name(self.name, suffix))

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


def _quote(part: str) -> str:
    return '"' + part.replace('"', '""') + '"'


def derived_name(base: str, suffix: str) -> str:
    """``base + suffix`` if it fits in 63 bytes, else a shortened base plus a hash of the full base.

    The hash keeps two long names that share a prefix from colliding after shortening.
    """
    full = base + suffix
    if len(full.encode()) <= MAX_IDENTIFIER_BYTES:
        return full
    digest = hashlib.sha1(base.encode()).hexdigest()[:8]
    room = MAX_IDENTIFIER_BYTES - len(suffix.encode()) - len(digest) - 1
    short = base.encode()[:room].decode(errors="ignore")
    return f"{short}_{digest}{suffix}"


def lock_key(target: TableRef) -> str:
    """The text hashed into the per-target advisory lock (same for every writer of ``target``)."""
    return f"etl-assets:write:{target.schema}.{target.name}"


def lock_target(conn: psycopg.Connection, target: TableRef) -> None:
    """Wait for the per-target advisory lock, held until this transaction ends (every writer of
    ``target`` takes it: two writes of one table never interleave)."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (lock_key(target),))
