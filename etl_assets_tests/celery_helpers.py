"""Helpers of the Celery tests: the broker probe, worker processes, a loopback TCP proxy the tests
can cut, and table checksums."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
from psycopg import sql

BROKER_HOST = "127.0.0.1"
BROKER_PORT = 5672
BROKER_URL = f"pyamqp://guest:guest@{BROKER_HOST}:{BROKER_PORT}//"
# Schemas holding the data a run produces (etl holds run ids and timestamps: compared separately).
DATA_SCHEMAS = ("raw", "clean", "mart", "ref")


def broker_answers(host: str = BROKER_HOST, port: int = BROKER_PORT) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def etl_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "etl_assets.cli", *args]


class Worker:
    """One ``etl-assets worker`` process; its output goes to a file the tests can read."""

    def __init__(self, env: dict[str, str], log: Path, *extra: str) -> None:
        self.log = log
        self._file = log.open("wb")
        self.proc = subprocess.Popen(
            etl_command("worker", "--concurrency", "1", *extra),
            env=env, stdout=self._file, stderr=subprocess.STDOUT, start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def node(self) -> str | None:
        match = re.search(r"etl-assets worker (\S+): ready", self.output())
        return match.group(1) if match else None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_ready(self, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            node = self.node
            if node:
                return node
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            time.sleep(0.5)
        raise AssertionError(f"worker not ready after {timeout}s:\n{self.output()[-3000:]}")

    def terminate(self, timeout: float = 90) -> int:
        """SIGTERM (warm shutdown) and wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._file.close()

    def kill(self) -> None:
        """Kill the worker's process group (the main process and its pool children) with SIGKILL."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._file.close()


class TcpProxy:
    """A loopback TCP proxy to ``target``: :meth:`cut` drops every connection and refuses new ones
    (the broker looks unreachable), :meth:`restore` listens again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener: socket.socket | None = None
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.restore()

    @property
    def url(self) -> str:
        return f"pyamqp://guest:guest@127.0.0.1:{self.port}//"

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 1.0)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()

    def cut(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()

    def close(self) -> None:
        self.cut()


def table_checksums(dsn: str, schemas: tuple[str, ...] = DATA_SCHEMAS) -> dict[str, tuple[int, str]]:
    """``schema.table`` -> (row count, md5 of the rows in a fixed order) for every table of ``schemas``."""
    out: dict[str, tuple[int, str]] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema = ANY(%s) AND table_type = 'BASE TABLE' ORDER BY 1, 2",
            (list(schemas),),
        ).fetchall()
        for schema, name in tables:
            count, digest = conn.execute(
                sql.SQL("SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                        "FROM {} AS t").format(sql.Identifier(schema, name))
            ).fetchone()
            out[f"{schema}.{name}"] = (count, digest)
    return out


def dead_letter_digest(dsn: str) -> list[tuple]:
    """What the dead-letter table holds, without run ids and times."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "SELECT asset_key, coalesce(partition_key, ''), error_class, row_hash FROM etl.dead_letters "
            "ORDER BY 1, 2, 3, 4"
        ).fetchall()
