"""SIGKILL drills: a CDC run killed mid-apply (its whole process group), then run again, leaves the
target exactly equal to the source, with no change lost or applied twice.

The kill points are found by watching the database, never by sleeping: the test holds a lock the run
needs at that point (the target, before the touched keys are deleted; ``etl.state``, after the
changes are written but before the position is saved), waits until ``pg_locks`` shows the run's
backend waiting for it, kills the run, then releases the lock.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest
from psycopg import sql

from etl_assets.cdc import capture, sync
from etl_assets.extract.state import clear_state
from etl_assets.io.tables import TableRef
from etl_assets_tests.cdc_helpers import assert_equal, make_items, rows_of, spec_for

CHILD = """
import json, sys
from etl_assets.cdc.sync import sync_table
from etl_assets.io.tables import TableRef
from etl_assets.pipeline_config import TableSpec
a = json.loads(sys.argv[1])
spec = TableSpec(source=TableRef(*a["source"]), extract="cdc", load="upsert", target=TableRef(*a["target"]),
                 primary_key=("id",))
print(sync_table(spec, run_id="drill", wait=5).summary(), flush=True)
"""


def _run(spec, source_dsn, warehouse_dsn) -> sync.CdcReport:
    return sync.sync_table(
        spec,
        sync.dsn_connector(source_dsn, "source", "S"),
        sync.dsn_connector(warehouse_dsn, "warehouse", "W"),
        wait=5,
    )


def _state(conn: psycopg.Connection, target: TableRef) -> dict | None:
    row = conn.execute("SELECT state FROM etl.state WHERE target = %s", (str(target),)).fetchone()
    return row[0] if row else None


def _kill_while_waiting_for(
    lock_sql: sql.Composable, relation: TableRef, spec, env: dict[str, str], warehouse_dsn: str
) -> None:
    """Start a run, hold ``lock_sql`` until the run waits for ``relation``, SIGKILL it, release."""
    with psycopg.connect(warehouse_dsn) as holder, psycopg.connect(warehouse_dsn, autocommit=True) as watch:
        holder.execute(lock_sql)
        args = json.dumps(
            {
                "source": [spec.source.schema, spec.source.name],
                "target": [spec.target.schema, spec.target.name],
            }
        )
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, args],
            env=env,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 45
            while True:
                waiting = watch.execute(
                    """SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                        WHERE NOT l.granted AND l.relation = to_regclass(%s)
                          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                          AND a.application_name = 'etl-assets'""",
                    (relation.regclass_text,),
                ).fetchone()[0]
                if waiting:
                    break
                assert child.poll() is None, child.communicate()
                assert time.monotonic() < deadline, "the run never reached the kill point"
                watch.execute("SELECT pg_sleep(0.02)")  # a server-side pause between polls
            os.killpg(child.pid, signal.SIGKILL)
            assert child.wait(timeout=30) == -signal.SIGKILL
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        holder.rollback()
        # The killed run's backend notices its client is gone and rolls back.
        deadline = time.monotonic() + 30
        while watch.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'etl-assets' AND datname = "
            "current_database() AND pid <> pg_backend_pid()"
        ).fetchone()[0]:
            assert time.monotonic() < deadline, "the killed run's backend did not go away"
            watch.execute("SELECT pg_sleep(0.02)")


def _mixed_changes(conn: psycopg.Connection, ref: TableRef, n: int) -> None:
    t = ref.ident
    with conn.transaction():
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (id, name, amount) SELECT g, 'ins', g FROM generate_series(%s, %s) g"
            ).format(t),
            (100_000, 100_000 + n // 2),
        )
        conn.execute(
            sql.SQL("UPDATE {} SET name = 'upd ' || id, amount = amount * 2 WHERE mod(id, 3) = 0").format(t)
        )
        conn.execute(
            sql.SQL("UPDATE {} SET id = id + 1000000 WHERE mod(id, 17) = 1 AND id < 100000").format(t)
        )
        conn.execute(sql.SQL("DELETE FROM {} WHERE mod(id, 5) = 2").format(t))


@pytest.mark.drill
@pytest.mark.parametrize("kill_point", ["before_delete", "before_position_saved", "snapshot_before_saved"])
def test_sigkill_mid_apply_then_rerun_is_exact(
    kill_point, source_conn, warehouse_conn, source_dsn, warehouse_dsn, fresh_schema, etl_env
) -> None:
    ref = make_items(source_conn, 3000)
    capture.install(source_conn, ref)
    spec = spec_for(ref, fresh_schema)
    _run(spec, source_dsn, warehouse_dsn)  # the snapshot
    _mixed_changes(source_conn, ref, 4000)
    before_rows = rows_of(warehouse_conn, spec.target)
    before_state = _state(warehouse_conn, spec.target)
    if kill_point == "snapshot_before_saved":
        with psycopg.connect(warehouse_dsn) as conn:
            clear_state(conn, spec.target)
            conn.commit()
        before_state = None

    env = {**os.environ, **etl_env}
    if kill_point == "before_delete":
        lock, relation = sql.SQL("LOCK TABLE {} IN SHARE MODE").format(spec.target.ident), spec.target
    else:
        lock, relation = sql.SQL("LOCK TABLE etl.state IN SHARE MODE"), TableRef("etl", "state")
    _kill_while_waiting_for(lock, relation, spec, env, warehouse_dsn)

    # Nothing of the killed run is visible: same rows, same position.
    assert rows_of(warehouse_conn, spec.target) == before_rows
    assert _state(warehouse_conn, spec.target) == before_state

    report = _run(spec, source_dsn, warehouse_dsn)
    assert report.mode == ("snapshot" if kill_point == "snapshot_before_saved" else "apply")
    assert report.pending == 0
    assert_equal(source_conn, warehouse_conn, spec)
