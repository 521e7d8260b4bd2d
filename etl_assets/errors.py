"""The project's error types.

Every failure a user can cause or fix (configuration, unreachable databases, missing tables, bad rows)
is raised as an :class:`EtlError` whose message names the thing and says what to do. The command line
prints these without a traceback; Dagster shows them as the step's failure message.
"""

from __future__ import annotations


class EtlError(Exception):
    """A failure with a message meant for the user: what went wrong, where, and what to do."""


class ConfigError(EtlError):
    """Invalid configuration: environment variables, the pipelines YAML, asset metadata."""


class DatabaseUnreachable(EtlError):
    """A PostgreSQL server could not be reached or refused the credentials."""


class MissingObject(EtlError):
    """A table, column or schema that the configuration names does not exist."""


class MissingPrivilege(EtlError):
    """The connecting role lacks a privilege it needs (docs/roles.md lists each role's)."""


class SchemaMismatch(EtlError):
    """A frame or source does not fit the target table and cannot be widened safely."""


class ServerError(EtlError):
    """The embedded PostgreSQL server could not be started, stopped or inspected."""


class DuplicateKeys(SchemaMismatch):
    """Rows to upsert share a value of the declared key: one of them would be lost, so none is written."""


class ExtractBusy(EtlError):
    """Another run holds the extract of this table (etl_assets/extract/runlock.py): retry later."""
