"""Windows hold whole source transactions (issue 12, defect 5): a transfer between two accounts made
in two statements is applied entirely or not at all, whether the window would end inside it because
of the batch size or because of the final bound; and under concurrent transfers every run leaves the
warehouse with the source's constant total."""

from __future__ import annotations

import json
import random
import secrets
import threading

import psycopg
import pytest
from psycopg import sql

from etl_assets.cdc import capture, reader, sync
from etl_assets.io.tables import TableRef
from etl_assets.pipeline_config import TableSpec
from etl_assets_tests.cdc_helpers import assert_equal

ACCOUNTS = 100
OPENING = 1000


def _run(spec, source_dsn, warehouse_dsn, **kw) -> sync.CdcReport:
    kw.setdefault("wait", 2)
    return sync.sync_table(
        spec,
        sync.dsn_connector(source_dsn, "source", "S"),
        sync.dsn_connector(warehouse_dsn, "warehouse", "W"),
        **kw,
    )


@pytest.fixture
def accounts(source_conn: psycopg.Connection, fresh_schema: str):
    """A captured ``accounts`` table (100 accounts of 1000) and the spec of its CDC target."""
    ref = TableRef(f"acc_{secrets.token_hex(4)}", "accounts")
    source_conn.execute(sql.SQL("CREATE SCHEMA {}").format(ref.schema_ident))
    source_conn.execute(
        sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, balance bigint NOT NULL)").format(ref.ident)
    )
    source_conn.execute(
        sql.SQL("INSERT INTO {} SELECT g, %s FROM generate_series(1, %s) g").format(ref.ident),
        (OPENING, ACCOUNTS),
    )
    capture.install(source_conn, ref)
    spec = TableSpec(
        source=ref,
        extract="cdc",
        load="upsert",
        target=TableRef(fresh_schema, "accounts"),
        primary_key=("id",),
    )
    yield ref, spec
    source_conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(ref.schema_ident))


def _total(conn: psycopg.Connection, table: TableRef) -> int:
    return int(conn.execute(sql.SQL("SELECT sum(balance) FROM {}").format(table.ident)).fetchone()[0])


def _transfer(conn: psycopg.Connection, table: TableRef, a: int, b: int, amount: int) -> None:
    """Move ``amount`` from account ``a`` to ``b``: two statements, two log entries, one transaction."""
    with conn.transaction():
        conn.execute(
            sql.SQL("UPDATE {} SET balance = balance - %s WHERE id = %s").format(table.ident), (amount, a)
        )
        conn.execute(
            sql.SQL("UPDATE {} SET balance = balance + %s WHERE id = %s").format(table.ident), (amount, b)
        )


def test_batches_end_between_transactions(
    accounts, source_conn, warehouse_conn, source_dsn, warehouse_dsn, monkeypatch
) -> None:
    ref, spec = accounts
    _run(spec, source_dsn, warehouse_dsn)
    for i in range(1, 11):
        _transfer(source_conn, ref, i, i + 50, 100)
    with source_conn.transaction():  # one transaction larger than a batch: applied whole
        source_conn.execute(sql.SQL("UPDATE {} SET balance = balance - 1 WHERE id <= 50").format(ref.ident))
        source_conn.execute(sql.SQL("UPDATE {} SET balance = balance + 50 WHERE id = 100").format(ref.ident))
    monkeypatch.setenv(sync.BATCH_VAR, "3")
    report = _run(spec, source_dsn, warehouse_dsn)
    assert report.changes == 20 + 51
    # A batch of 3 entries would end inside every other transfer; each batch ends after the whole
    # transaction its limit falls in: transfers go two per batch (4 entries), then the big one.
    assert report.batches == 5 + 1
    assert _total(warehouse_conn, spec.target) == ACCOUNTS * OPENING
    assert_equal(source_conn, warehouse_conn, spec)


def _inject_horizon(conn: psycopg.Connection, target: TableRef, horizon: reader.Horizon) -> None:
    """Make ``horizon`` one the target's state kept from an earlier run (as a run held back keeps it)."""
    conn.execute(
        "UPDATE etl.state SET state = jsonb_set(state, '{horizons}', %s::jsonb) WHERE target = %s",
        (json.dumps([[horizon.position, horizon.xid]]), str(target)),
    )
    conn.commit()


@pytest.mark.parametrize("gap", [False, True], ids=["extended-to-the-transaction-end", "held-back-whole"])
def test_final_bound_inside_a_transaction(
    gap, accounts, source_conn, warehouse_conn, source_dsn, warehouse_dsn
) -> None:
    """The final bound falls between the two statements of a transfer: a horizon taken after its
    first update, final once it commits, while a newer horizon is held back by an open transaction.

    Without a gap after the bound the window extends to the transfer's end; when an open transaction
    holds a position between its two entries, the window stops before the transfer and the next run
    applies it whole. Either way the warehouse never shows money created or destroyed."""
    ref, spec = accounts
    _run(spec, source_dsn, warehouse_dsn)
    t = ref.ident
    with (
        psycopg.connect(source_dsn) as transfer,
        psycopg.connect(source_dsn) as other,
        psycopg.connect(source_dsn, autocommit=True) as probe,
    ):
        transfer.execute(sql.SQL("UPDATE {} SET balance = balance - 100 WHERE id = 1").format(t))
        horizon = reader.take_horizon(probe, capture.get_capture(probe, ref))  # inside the transfer
        if gap:  # an open transaction draws a position between the transfer's two entries
            other.execute(sql.SQL("UPDATE {} SET balance = balance + 0 WHERE id = 77").format(t))
        transfer.execute(sql.SQL("UPDATE {} SET balance = balance + 100 WHERE id = 2").format(t))
        transfer.commit()
        if not gap:  # still an open transaction, holding back the newest horizon, after the transfer
            other.execute(sql.SQL("UPDATE {} SET balance = balance + 0 WHERE id = 77").format(t))
        _inject_horizon(warehouse_conn, spec.target, horizon)
        report = _run(spec, source_dsn, warehouse_dsn, wait=0)
        assert str(other.info.backend_pid) in (report.held_back_by or "")  # names the open transaction
        assert _total(warehouse_conn, spec.target) == ACCOUNTS * OPENING
        balances = dict(
            warehouse_conn.execute(
                sql.SQL("SELECT id, balance FROM {} WHERE id IN (1, 2)").format(spec.target.ident)
            )
        )
        if gap:
            assert report.changes == 0 and balances == {1: OPENING, 2: OPENING}
        else:
            assert report.applied == {"update": 2} and balances == {1: OPENING - 100, 2: OPENING + 100}
            assert report.position_after == horizon.position + 1
        other.commit()
    report = _run(spec, source_dsn, warehouse_dsn)
    assert report.held_back_by is None and report.pending == 0
    assert_equal(source_conn, warehouse_conn, spec)


def test_concurrent_transfers_every_run_sees_the_constant_total(
    accounts, source_conn, warehouse_conn, source_dsn, warehouse_dsn
) -> None:
    """Three writers move money between two or three accounts, one statement per account with a
    pause between statements, while runs with a batch of 3 entries apply (a batch of 3 would end
    inside most transactions, and a horizon is often taken inside one). A watcher reads the
    warehouse's total all along: it never sees anything but the constant total, nor does the check
    after each run; after the last run the warehouse equals the source."""
    ref, spec = accounts
    _run(spec, source_dsn, warehouse_dsn)
    stop = threading.Event()
    done = [0, 0, 0]
    errors: list[BaseException] = []
    seen: list[int] = []
    update = sql.SQL("UPDATE {} SET balance = balance + %s WHERE id = %s").format(ref.ident)

    def writer(n: int) -> None:
        rnd = random.Random(n)
        try:
            with psycopg.connect(source_dsn) as conn:
                while not stop.is_set() and done[n] < 150:
                    ids = sorted(rnd.sample(range(1, ACCOUNTS + 1), rnd.choice((2, 2, 3))))
                    amounts = [rnd.randint(1, 100) for _ in ids[1:]]
                    amounts.insert(rnd.randrange(len(ids)), -sum(amounts))  # sums to zero
                    with conn.transaction():  # accounts locked in id order: no deadlock
                        for i, amount in zip(ids, amounts, strict=True):
                            conn.execute(update, (amount, i))
                            stop.wait(0.001)
                    done[n] += 1
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def watcher() -> None:
        try:
            with psycopg.connect(warehouse_dsn, autocommit=True) as conn:
                while not stop.is_set():
                    seen.append(_total(conn, spec.target))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    threads.append(threading.Thread(target=watcher))
    for thread in threads:
        thread.start()
    totals, batches = [], 0
    try:
        with pytest.MonkeyPatch.context() as m:
            m.setenv(sync.BATCH_VAR, "3")
            for _ in range(6):
                report = _run(spec, source_dsn, warehouse_dsn, wait=0.5, prune_after=False)
                batches += report.batches
                totals.append(_total(warehouse_conn, spec.target))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors, errors
    assert sum(done) >= 50 and batches >= 10 and len(seen) >= 10  # it all ran concurrently
    assert totals == [ACCOUNTS * OPENING] * len(totals)
    assert set(seen) == {ACCOUNTS * OPENING}
    report = _run(spec, source_dsn, warehouse_dsn)
    assert report.pending == 0
    assert _total(warehouse_conn, spec.target) == ACCOUNTS * OPENING
    assert_equal(source_conn, warehouse_conn, spec)
