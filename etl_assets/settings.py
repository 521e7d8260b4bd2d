"""Where everything lives: environment variables, the project home and the database DSNs.

One place decides which PostgreSQL servers the project talks to. Each of ``ETL_SOURCE_DSN``,
``ETL_WAREHOUSE_DSN`` and ``DAGSTER_PG_URL`` that is unset falls back to a database on the embedded
server under ``ETL_HOME``; :func:`etl_assets.environment.ensure_environment` resolves them once and
exports them into
``os.environ`` so that every child process (the webserver, the daemon, run workers, ``dagster``
commands) inherits the same answer and Dagster resources can read them through ``dagster.EnvVar``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from etl_assets.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_ROOT = Path(__file__).resolve().parent

SOURCE_DSN_VAR = "ETL_SOURCE_DSN"
WAREHOUSE_DSN_VAR = "ETL_WAREHOUSE_DSN"
DAGSTER_URL_VAR = "DAGSTER_PG_URL"
HOME_VAR = "ETL_HOME"
PIPELINES_VAR = "ETL_PIPELINES"

# Environment variable -> database name on the embedded server.
EMBEDDED_DATABASES: dict[str, str] = {
    SOURCE_DSN_VAR: "source",
    WAREHOUSE_DSN_VAR: "warehouse",
    DAGSTER_URL_VAR: "dagster",
}

CONTROL_SCHEMA = "etl"


def etl_home() -> Path:
    """The folder holding the embedded server's data and the default Dagster home."""
    raw = os.environ.get(HOME_VAR)
    home = Path(raw).expanduser() if raw else PROJECT_ROOT / ".etl"
    return home.resolve()


MASK = "***"


def libpq_dsn(dsn: str) -> str:
    """``dsn`` as libpq reads it: SQLAlchemy's ``postgresql+driver://`` scheme back to ``postgresql://``."""
    scheme, sep, rest = dsn.partition("://")
    if sep and scheme.startswith(("postgresql+", "postgres+")):
        return f"postgresql://{rest}"
    return dsn


def dsn_password(dsn: str) -> str | None:
    """The password ``dsn`` carries, read with libpq's own parser (URI userinfo or query, key=value with
    any quoting); None when it has none or is not a connection string libpq can read."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        return conninfo_to_dict(libpq_dsn(dsn)).get("password") or None
    except (ProgrammingError, ValueError, TypeError):
        return None


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced by ``***``, safe for messages and logs.

    libpq decides what the password is (``conninfo_to_dict``): a pattern cannot follow its quoting
    (``password = 's3 cret'``, ``\\'`` escapes) or its URIs (``?password=``, several hosts). A URI stays a
    URI with the password left out of the userinfo and the query; a key=value string is rebuilt by
    ``make_conninfo`` with the password masked. A string libpq cannot read is not shown at all.
    """
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        params = conninfo_to_dict(libpq_dsn(dsn))
    except (ProgrammingError, ValueError, TypeError):
        return "<unparseable DSN>"
    if params.get("password") is None:
        return dsn
    scheme, sep, rest = dsn.partition("://")
    if not sep:
        return make_conninfo("", **{**params, "password": MASK})
    rest, hash_sep, fragment = rest.partition("#")
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{hosts}" if colon else f"{userinfo}@{hosts}"
    kept = [
        item for item in query.split("&") if item and unquote(item.partition("=")[0]) != "password"
    ]
    if len(kept) != len([item for item in query.split("&") if item]):
        kept.append(f"password={MASK}")
    query = "&".join(kept)
    return (
        f"{scheme}://{netloc}{slash}{path}"
        + (f"?{query}" if query else "")
        + (f"#{fragment}" if hash_sep else "")
    )


def redact_text(text: str, *dsns: str) -> str:
    """``text`` with every DSN in ``dsns`` and every password they carry masked.

    For messages built around a DSN (a driver's error, a SQLAlchemy URL in an exception): the DSN itself
    becomes its redacted form, and any other appearance of its password (decoded or percent-encoded)
    becomes ``***``.
    """
    from urllib.parse import quote

    for dsn in dsns:
        if not dsn:
            continue
        if dsn in text:
            text = text.replace(dsn, redact_dsn(dsn))
        password = dsn_password(dsn)
        if password:
            for form in sorted({password, quote(password, safe=""), quote(password)}, key=len, reverse=True):
                text = text.replace(form, MASK)
    return text


def redact_conninfo_error(message: str, dsn: str) -> str:
    """A libpq "cannot read this connection string" message safe to show.

    libpq quotes the text around the problem (``missing "=" after "cr3t"``, ``invalid URI query
    parameter: "..."``), and a string it cannot read has no password we could look for: every quoted
    piece of the DSN is masked, except the name in ``invalid connection option "..."`` (a key).
    """
    import re

    message = redact_text(message, dsn)
    if message.startswith("invalid connection option"):
        return message
    return re.sub(r'"([^"]+)"', lambda m: '"***"' if len(m[1]) > 1 and m[1] in dsn else m[0], message)


def redact_environment(text: str) -> str:
    """``text`` with the passwords of every DSN this process is configured with masked."""
    return redact_text(text, *(os.environ.get(var, "") for var in EMBEDDED_DATABASES))


def dagster_home() -> Path:
    """``DAGSTER_HOME`` when set, else ``$ETL_HOME/dagster``, holding a copy of the repo's dagster.yaml."""
    raw = os.environ.get("DAGSTER_HOME")
    home = Path(raw).expanduser().resolve() if raw else etl_home() / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    shipped = PROJECT_ROOT / "dagster.yaml"
    if not raw or not target.exists():
        if not shipped.exists():
            raise ConfigError(
                f"dagster.yaml was not found at {shipped}; reinstall the project with `pip install -e .` "
                "from its repository."
            )
        if not target.exists() or target.read_bytes() != shipped.read_bytes():
            shutil.copyfile(shipped, target)
    return home


def with_database(dsn: str, database: str) -> str:
    """The same server and credentials as ``dsn``, another database; URIs stay URIs."""
    from urllib.parse import quote

    if "://" in dsn:
        parts = urlsplit(dsn)
        return urlunsplit((parts.scheme, parts.netloc, "/" + quote(database), parts.query, parts.fragment))
    from psycopg.conninfo import make_conninfo

    return make_conninfo(dsn, dbname=database)


def dagster_storage_url(dsn: str) -> str:
    """The URL dagster-postgres needs: ``postgresql+psycopg2://``, whatever form ``dsn`` has.

    SQLAlchemy 2.1 made psycopg 3 the default driver of a plain ``postgresql://`` URL, and
    dagster-postgres' event log then fails (``NOTIFY run_events, $1`` is a syntax error with
    server-side parameters); naming the psycopg2 driver keeps it on the driver it is written for.
    """
    url = as_url(dsn)
    scheme, sep, rest = url.partition("://")
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        return f"postgresql+psycopg2{sep}{rest}"
    return url


def as_url(dsn: str) -> str:
    """A ``postgresql://`` URL for a libpq DSN (SQLAlchemy, hence dagster-postgres, wants URLs)."""
    if "://" in dsn:
        return dsn
    from urllib.parse import quote, urlencode

    from psycopg.conninfo import conninfo_to_dict

    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
    user = quote(params.pop("user", ""), safe="")
    password = params.pop("password", None)
    database = quote(params.pop("dbname", ""), safe="")
    host = params.pop("host", "")
    port = params.pop("port", "")
    auth = f"{user}:{quote(password, safe='')}@" if password else (f"{user}@" if user else "")
    if host.startswith("/"):
        params["host"] = host
        host = ""
    netloc = f"{auth}{host}" + (f":{port}" if port and host else "")
    if port and not host:
        params["port"] = port
    query = urlencode(params)
    return f"postgresql://{netloc}/{database}" + (f"?{query}" if query else "")
