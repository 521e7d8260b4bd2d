"""The embedded server as a user meets it: no DSN set, an empty ETL_HOME, commands in a row.

These tests start their own embedded server under a temporary ETL_HOME (the DSN variables unset,
exactly like README's first command on a fresh machine) and stop it at the end.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from etl_assets import embedded
from etl_assets.settings import PROJECT_ROOT
from etl_assets_tests.conftest import TEST_HOME
from etl_assets_tests.test_runner import _wait_for, lock_waiters

UNSET = (
    "ETL_SOURCE_DSN",
    "ETL_WAREHOUSE_DSN",
    "DAGSTER_PG_URL",
    "DAGSTER_HOME",
    "ETL_EMBEDDED",
    "ETL_PIPELINES",
)


@pytest.fixture
def empty_home() -> Iterator[tuple[Path, dict[str, str]]]:
    """A fresh ETL_HOME and an environment with no DSN; the server it gets is stopped afterwards.

    The home lives under the test server's folder, not pytest's tmp: pytest resets its tmp root to
    mode 0700, after which the unprivileged user PostgreSQL runs as (as root) can no longer reach it.
    """
    home = TEST_HOME / "homes" / secrets.token_hex(4)
    home.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env["ETL_HOME"] = str(home)
    env["ETL_DEMO_ROWS"] = "3000"  # the automatic seeding, smaller than the 100,000 of a real first run
    yield home, env
    stopped = subprocess.run(
        [sys.executable, "-m", "etl_assets.cli", "server", "stop"],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert embedded.status(home) is None
    shutil.rmtree(home, ignore_errors=True)


def etl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "etl_assets.cli", *args],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def server_pid(env: dict[str, str]) -> int:
    result = etl(env, "server", "status")
    assert result.returncode == 0, result.stdout + result.stderr
    return int(re.search(r"pid (\d+)", result.stdout).group(1))


def test_run_from_an_empty_home_twice_and_shared_by_dagster(empty_home: tuple[Path, dict[str, str]]) -> None:
    home, env = empty_home
    assert not (home / "pgdata").exists()
    first = etl(env, "run")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "raw/orders: 3,000 rows" in first.stdout  # seeded automatically on first use
    # it says what it is doing first (on standard error: `etl-assets env` output stays evaluable)
    assert f"starting the embedded PostgreSQL under {embedded.pgdata_dir(home.resolve())}…" in first.stderr
    assert "seeding the demo source: 3,000 orders…" in first.stderr
    assert "\r" not in first.stderr  # no terminal here: no progress bar drawn
    assert "result: OK" in first.stdout
    pid = server_pid(env)

    second = etl(env, "run")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "result: OK" in second.stdout
    assert server_pid(env) == pid  # the same server, reused
    assert "starting the embedded" not in second.stderr and "seeding" not in second.stderr

    # A plain Dagster command in another process, with README's `eval "$(etl-assets env)"`, uses the
    # same server (its run, materialization and check results land in the same instance).
    exported = etl(env, "env")
    assert exported.returncode == 0, exported.stderr
    dagster_env = dict(env)
    for line in exported.stdout.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        dagster_env[name] = shlex.split(value)[0]
    assert dagster_env["DAGSTER_HOME"] == str(home / "dagster")
    dagster = subprocess.run(
        [
            sys.executable,
            "-m",
            "dagster",
            "asset",
            "materialize",
            "-m",
            "etl_assets.definitions",
            "--select",
            "raw/categories",
            "--config-json",  # steps in the command's own process: quicker, same server either way
            '{"execution": {"config": {"in_process": {}}}}',
        ],
        env=dagster_env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert dagster.returncode == 0, dagster.stdout[-3000:] + dagster.stderr[-3000:]
    assert server_pid(env) == pid
    server = embedded.status(home)
    with psycopg.connect(embedded.database_uri(server, "dagster")) as conn:
        runs = conn.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall()
        materialized = conn.execute(
            "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'"
            " AND asset_key = %s",
            ('["raw", "categories"]',),
        ).fetchone()[0]
    assert set(dict(runs)) == {"SUCCESS"}  # `etl-assets run` twice (a run per partitioning), then dagster
    assert materialized == 3
    # The dagster.yaml the instance uses is the project's, copied into $ETL_HOME/dagster.
    assert (home / "dagster" / "dagster.yaml").read_text() == (PROJECT_ROOT / "dagster.yaml").read_text()


@pytest.mark.drill
def test_server_survives_a_sigkilled_run(empty_home: tuple[Path, dict[str, str]]) -> None:
    home, env = empty_home
    seeded = etl(env, "seed", "--rows", "1000")
    assert seeded.returncode == 0, seeded.stderr
    pid = server_pid(env)
    source = embedded.database_uri(embedded.status(home), "source")
    locker = psycopg.connect(source)
    locker.execute("LOCK TABLE shop.orders IN ACCESS EXCLUSIVE MODE")
    proc = subprocess.Popen(
        [sys.executable, "-m", "etl_assets.cli", "run", "--select", "raw/orders"],
        env=env,
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_for(lambda: lock_waiters(source, "shop") > 0, "the run to block on shop.orders", proc)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        locker.rollback()
        locker.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert server_pid(env) == pid  # the server did not go down with the killed run
    after = etl(env, "run", "--select", "raw/categories")
    assert after.returncode == 0, after.stdout + after.stderr
    assert "dead runs marked failed" in after.stdout
    assert server_pid(env) == pid
