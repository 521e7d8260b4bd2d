"""Crash drills: SIGKILL a real ``etl-assets run`` (its whole process group) at points found by watching
the database - during a COPY, right after a load committed, between chunks - then run again and
compare the target with the source by row count and a checksum over every column."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from etl_assets.settings import PROJECT_ROOT
from etl_assets_tests.extract_helpers import assert_equal, checksum, execute, scalar, spec_of

pytestmark = pytest.mark.drill

ROWS = 60_000


def _source(dbs: dict[str, str]) -> None:
    execute(dbs["source"], sql.SQL(
        "DROP SCHEMA IF EXISTS drill CASCADE; CREATE SCHEMA drill;"
        "CREATE TABLE drill.facts (id bigint PRIMARY KEY, label text, amount numeric(14,4), tags int[],"
        " updated_at timestamptz NOT NULL DEFAULT now());"
        "CREATE INDEX ON drill.facts (updated_at);"
        "INSERT INTO drill.facts SELECT g, repeat(md5(g::text), 3), g / 3.0, ARRAY[g, g + 1], now()"
        " FROM generate_series(1, {n}) g"
    ).format(n=sql.Literal(ROWS)))


def _declare(tmp_path: Path, body: str) -> str:
    file = tmp_path / "drill.yaml"
    file.write_text("tables:\n  - name: drill.facts\n    primary_key: [id]\n" + body)
    return str(file)


def _start(env: dict[str, str], pipelines: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "etl_assets.cli", "--pipelines", pipelines, "run", "--select", "raw/facts"],
        cwd=PROJECT_ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )


def _kill_when(proc: subprocess.Popen, condition: Callable[[], bool], what: str,
               timeout: float = 120) -> None:
    """Poll the database until ``condition`` holds, then SIGKILL the run's whole process group."""
    deadline = time.monotonic() + timeout
    try:
        while not condition():
            if proc.poll() is not None:
                pytest.fail(f"the run ended before {what}:\n{proc.stdout.read() if proc.stdout else ''}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}")
            time.sleep(0.005)  # polling interval of the watcher, not a wait for the run
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _finish(env: dict[str, str], pipelines: str) -> str:
    proc = _start(env, pipelines)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return out


def _copying(warehouse: str) -> Callable[[], bool]:
    def check() -> bool:
        return bool(scalar(warehouse,
                           "SELECT count(*) FROM pg_stat_progress_copy WHERE datname = current_database()"
                           " AND command = 'COPY FROM' AND tuples_processed > 0"))
    return check


def _state(warehouse: str, expression: str) -> Callable[[], bool]:
    def check() -> bool:
        with psycopg.connect(warehouse, autocommit=True) as conn:
            if not conn.execute("SELECT to_regclass('etl.state') IS NOT NULL").fetchone()[0]:
                return False
            query = f"SELECT count(*) FROM etl.state WHERE target = 'raw.facts' AND ({expression})"
            return bool(conn.execute(query).fetchone()[0])
    return check


@pytest.fixture
def drill(etl_env: dict[str, str], pg_databases: dict[str, str]):
    dbs = {"source": pg_databases["source"], "warehouse": pg_databases["warehouse"]}
    _source(dbs)
    execute(dbs["warehouse"], "DROP TABLE IF EXISTS raw.facts; DROP TABLE IF EXISTS raw.facts__build")
    execute(dbs["warehouse"], "DO $$ BEGIN IF to_regclass('etl.state') IS NOT NULL THEN "
            "DELETE FROM etl.state WHERE target = 'raw.facts'; END IF; END $$")
    return etl_env, dbs


@pytest.mark.parametrize(("body", "label"), [
    ("    extract: full\n    load: truncate_insert\n", "full"),
    ("    extract: incremental\n    cursor: updated_at\n", "incremental"),
    ("    extract: full\n    load: truncate_insert\n    fast_path: true\n", "fast"),
], ids=["full", "incremental", "fast"])
def test_kill_during_copy_then_rerun(drill, tmp_path: Path, body: str, label: str) -> None:
    env, dbs = drill
    pipelines = _declare(tmp_path, body)
    spec = spec_of(Path(pipelines).read_text())
    if label == "incremental":  # a first complete load, so the killed run is an increment
        _finish(env, pipelines)
        execute(dbs["source"], "UPDATE drill.facts SET label = 'x', updated_at = now() WHERE id % 2 = 0")
    columns = ["id", "label", "amount", "tags", "updated_at"]
    before = checksum(dbs["warehouse"], spec.target, columns, ["id"]) if label == "incremental" else None
    _kill_when(_start(env, pipelines), _copying(dbs["warehouse"]), "a COPY into the warehouse")
    if before is not None:  # the killed increment left nothing behind: state and rows rolled back together
        assert checksum(dbs["warehouse"], spec.target, columns, ["id"]) == before
        state = scalar(dbs["warehouse"], "SELECT run_id FROM etl.state WHERE target = 'raw.facts'")
        assert state is not None
    _finish(env, pipelines)
    assert_equal(dbs, spec)


def test_kill_after_load_then_rerun(drill, tmp_path: Path) -> None:
    env, dbs = drill
    pipelines = _declare(tmp_path, "    extract: incremental\n    cursor: updated_at\n")
    spec = spec_of(Path(pipelines).read_text())
    # Killed right after its data and cursor committed, before Dagster recorded the materialization.
    _kill_when(_start(env, pipelines), _state(dbs["warehouse"], "true"), "the load to commit")
    assert_equal(dbs, spec)
    execute(dbs["source"], "UPDATE drill.facts SET amount = -amount, updated_at = now() WHERE id <= 500")
    _finish(env, pipelines)
    assert_equal(dbs, spec)


@pytest.mark.parametrize(("load", "fast"), [("upsert", False), ("insert", True)],
                         ids=["frame-upsert", "copy-insert"])
def test_kill_between_chunks_then_resume(drill, tmp_path: Path, load: str, fast: bool) -> None:
    env, dbs = drill
    pipelines = _declare(tmp_path, f"    extract: chunked\n    load: {load}\n    chunk_size: 4000\n"
                                   f"    fast_path: {str(fast).lower()}\n")
    spec = spec_of(Path(pipelines).read_text())
    _kill_when(_start(env, pipelines), _state(dbs["warehouse"], "(state->>'chunks')::int >= 3"),
               "three committed chunks")
    with psycopg.connect(dbs["warehouse"]) as conn:
        state, = conn.execute("SELECT state FROM etl.state WHERE target = 'raw.facts'").fetchone()
        committed = conn.execute("SELECT count(*) FROM raw.facts").fetchone()[0]
    assert state["after"] is not None and state["passes"] == 0
    assert committed == state["rows"]  # exactly the checkpointed chunks are in the target
    out = _finish(env, pipelines)
    assert "raw/facts" in out
    with psycopg.connect(dbs["warehouse"]) as conn:
        state, = conn.execute("SELECT state FROM etl.state WHERE target = 'raw.facts'").fetchone()
    assert state["passes"] == 1 and state["after"] is None and state["last_pass_rows"] == ROWS
    if load == "upsert":
        assert_equal(dbs, spec)
    else:  # one snapshot, each row exactly once, although the pass was interrupted
        columns = ["id", "label", "amount", "tags", "updated_at"]
        assert checksum(dbs["warehouse"], spec.target, columns, ["id"]) == checksum(
            dbs["source"], spec.source, columns, ["id"])
        assert scalar(dbs["warehouse"], "SELECT count(DISTINCT _loaded_at) FROM raw.facts") == 1
