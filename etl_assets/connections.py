"""Opening PostgreSQL connections, and the translation of connection failures into clear errors.

Everything that talks to PostgreSQL opens its connections through :func:`connect` (directly, or
through :class:`etl_assets.db.PostgresResource`), so that every connection carries the same application
name and timeouts, and every failure to connect says which database, which variable configures it,
and what to try. No Dagster here: the command line's light commands (``env`` seeding the demo source,
``dlq``, ``cdc``, ``stream``…) connect without loading it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from etl_assets.errors import ConfigError, DatabaseUnreachable, EtlError, MissingPrivilege
from etl_assets.settings import redact_conninfo_error, redact_dsn, redact_text

APPLICATION_NAME = "etl-assets"


def _explain(exc: psycopg.Error, role: str, env_var: str, dsn: str) -> EtlError:
    # libpq quotes pieces of the connection string in some messages (a parse error shows the text
    # around it): mask the DSN and its password wherever they appear.
    text = redact_text(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, dsn)
    if isinstance(exc, psycopg.ProgrammingError):  # libpq could not read the connection string
        text = redact_conninfo_error(text, dsn)
        return ConfigError(
            f"The {role} connection string in {env_var} is not valid: {text}. Correct it (libpq key=value "
            "pairs or a postgresql:// URI; quote values with spaces, percent-encode URIs)."
        )
    hint = "check that the server is running and reachable"
    lowered = text.lower()
    if "password" in lowered or "authentication" in lowered:
        hint = "check the user name and password in it"
    elif "does not exist" in lowered and "database" in lowered:
        hint = "create the database or correct the name in it"
    return DatabaseUnreachable(
        f"Cannot connect to the {role} database at {redact_dsn(dsn)}: {text}. "
        f"The connection string comes from {env_var}; {hint}."
    )


@contextmanager
def connect(
    dsn: str,
    *,
    role: str = "PostgreSQL",
    env_var: str = "the DSN",
    autocommit: bool = False,
    connect_timeout: int = 10,
    application_name: str = APPLICATION_NAME,
) -> Iterator[psycopg.Connection]:
    """Open a psycopg connection; a failure to connect raises :class:`DatabaseUnreachable`.

    With ``autocommit=False`` the caller groups work in ``with conn.transaction():`` blocks; leaving
    the context commits what is pending on success and rolls back on an exception.
    """
    try:
        conn = psycopg.connect(
            dsn,
            autocommit=autocommit,
            connect_timeout=connect_timeout,
            application_name=application_name,
        )
    except (psycopg.OperationalError, psycopg.ProgrammingError) as exc:
        raise _explain(exc, role, env_var, dsn) from None
    with conn:
        try:
            yield conn
        except psycopg.errors.InsufficientPrivilege as exc:
            if not _raised_by(exc, conn):
                raise  # another connection's error, passing through this block
            raise missing_privilege(exc, conn, role, env_var) from exc


def _raised_by(exc: BaseException, conn: psycopg.Connection) -> bool:
    """Whether psycopg raised ``exc`` for ``conn``: the frames it was raised in belong to ``conn``
    (a Connection, or a Cursor/Copy of it). Errors carry no reference to their connection."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):  # from where it was raised outwards: the first psycopg object decides
        owner = frame.f_locals.get("self")
        for candidate in (owner, getattr(owner, "connection", None), getattr(owner, "_conn", None)):
            if isinstance(candidate, psycopg.Connection):
                return candidate is conn
    return False


def missing_privilege(
    exc: psycopg.errors.InsufficientPrivilege, conn: psycopg.Connection, role: str, env_var: str
) -> MissingPrivilege:
    """A "permission denied" from the server, saying which role, which database and where to look."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else "permission denied"
    return MissingPrivilege(
        f"Role {conn.info.user} lacks a privilege in the {role} database ({env_var}): {first}. Grant it "
        f"what docs/roles.md lists for the {role} role."
    )
