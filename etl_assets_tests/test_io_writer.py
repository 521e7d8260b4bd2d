"""write_frame against real PostgreSQL: every mode with pandas and polars, exact table contents."""

from __future__ import annotations

import threading

import polars as pl
import psycopg
import pytest
from psycopg import sql

from etl_assets.errors import ConfigError, EtlError, SchemaMismatch
from etl_assets.io.tables import TableRef
from etl_assets.io.writer import PartitionWindow, write_frame
from etl_assets_tests.io_helpers import FLAVOURS, frame, leftovers, rows


@pytest.fixture
def conn(warehouse_dsn: str):
    # autocommit: write_frame opens its own transaction; reads in the test then hold no locks.
    with psycopg.connect(warehouse_dsn, autocommit=True) as c:
        yield c


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_insert_appends(conn, fresh_schema, flavour):
    t = TableRef(fresh_schema, "orders")
    r1 = write_frame(conn, frame(flavour, {"id": [1, 2], "v": ["a", "b"]}), t, "insert")
    r2 = write_frame(conn, frame(flavour, {"id": [3], "v": [None]}), t, "insert")
    assert rows(conn, t) == [(1, "a"), (2, "b"), (3, None)]
    assert (r1.inserted, r2.inserted, r2.table_rows) == (2, 1, 3)
    meta = r2.metadata()
    assert meta["dagster/row_count"] == 3 and meta["dagster/table_name"] == f"{fresh_schema}.orders"
    assert [c.name for c in meta["dagster/column_schema"].columns] == ["id", "v"]
    assert meta["write_mode"] == "insert" and meta["rows_per_second"] > 0


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_truncate_insert_replaces_everything(conn, fresh_schema, flavour):
    t = TableRef(fresh_schema, "orders")
    write_frame(
        conn,
        frame(flavour, {"id": [1, 2, 3], "v": ["a", "b", "c"]}),
        t,
        "truncate_insert",
        primary_key=["id"],
    )
    r = write_frame(
        conn, frame(flavour, {"id": [2, 9], "v": ["x", ""]}), t, "truncate_insert", primary_key=["id"]
    )
    assert rows(conn, t) == [(2, "x"), (9, "")]
    assert (r.deleted, r.inserted, r.table_rows) == (3, 2, 2)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_upsert_new_changed_unchanged_and_duplicate_keys(conn, fresh_schema, flavour):
    t = TableRef(fresh_schema, "customers")
    first = frame(flavour, {"id": [1, 2, 3], "name": ["ann", "bob", "cy"], "ver": [1, 1, 1]})
    r0 = write_frame(conn, first, t, "upsert", primary_key=["id"], order_by="ver")
    assert (r0.inserted, r0.updated, r0.unchanged) == (3, 0, 0)
    xmin_before = dict(conn.execute(sql.SQL("SELECT id, xmin::text FROM {}").format(t.ident)).fetchall())
    # 1 unchanged, 2 changed, 3 twice (the higher ver wins although it comes first), 4 new
    second = frame(
        flavour,
        {"id": [1, 2, 3, 3, 4], "name": ["ann", "BOB", "cy-new", "cy-old", "dee"], "ver": [1, 2, 3, 2, 1]},
    )
    r = write_frame(conn, second, t, "upsert", primary_key=["id"], order_by="ver")
    assert rows(conn, t) == [(1, "ann", 1), (2, "BOB", 2), (3, "cy-new", 3), (4, "dee", 1)]
    assert (r.inserted, r.updated, r.unchanged, r.duplicates) == (1, 2, 1, 1)
    assert r.table_rows == 4
    xmin_after = dict(conn.execute(sql.SQL("SELECT id, xmin::text FROM {}").format(t.ident)).fetchall())
    assert xmin_after[1] == xmin_before[1], "an unchanged row must not be rewritten"
    assert xmin_after[2] != xmin_before[2]
    assert leftovers(conn) == []


def test_upsert_without_order_by_keeps_last_row_of_frame(conn, fresh_schema):
    t = TableRef(fresh_schema, "k")
    df = pl.DataFrame({"id": [1, 1, 1, 2], "v": ["first", "middle", "last", "x"]})
    r = write_frame(conn, df, t, "upsert", primary_key=["id"])
    assert rows(conn, t) == [(1, "last"), (2, "x")]
    assert (r.inserted, r.duplicates) == (2, 2)


def test_upsert_composite_key_and_key_only_table(conn, fresh_schema):
    t = TableRef(fresh_schema, "pairs")
    df = pl.DataFrame({"a": [1, 1, 2], "b": ["x", "y", "x"]})
    write_frame(conn, df, t, "upsert", primary_key=["a", "b"])
    r = write_frame(conn, pl.DataFrame({"a": [1, 3], "b": ["x", "z"]}), t, "upsert", primary_key=["b", "a"])
    assert rows(conn, t, ["a", "b"]) == [(1, "x"), (1, "y"), (2, "x"), (3, "z")]
    assert (r.inserted, r.updated, r.unchanged) == (1, 0, 1)


def test_upsert_into_table_without_unique_index_names_the_missing_index(conn, fresh_schema):
    t = TableRef(fresh_schema, "plain")
    write_frame(conn, pl.DataFrame({"id": [1], "v": [1]}), t, "insert")
    with pytest.raises(SchemaMismatch, match=r"unique index on \(id\).*missing index is UNIQUE \(id\)"):
        write_frame(conn, pl.DataFrame({"id": [1], "v": [2]}), t, "upsert", primary_key=["id"])
    assert rows(conn, t) == [(1, 1)]
    with pytest.raises(ConfigError, match="needs primary_key"):
        write_frame(conn, pl.DataFrame({"id": [1]}), t, "upsert")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_partition_replace_touches_only_its_window(conn, fresh_schema, flavour):
    import datetime as dt

    t = TableRef(fresh_schema, "events")
    d1, d2, d3 = dt.date(2024, 1, 1), dt.date(2024, 1, 2), dt.date(2024, 1, 3)
    write_frame(conn, frame(flavour, {"id": [1, 2, 3], "day": [d1, d2, d2]}), t, "insert")
    window = PartitionWindow(
        "day", start=dt.datetime(2024, 1, 2, tzinfo=dt.UTC), end=dt.datetime(2024, 1, 3, tzinfo=dt.UTC)
    )
    r = write_frame(conn, frame(flavour, {"id": [7, 8], "day": [d2, d2]}), t, "insert", partition=window)
    assert rows(conn, t) == [(1, d1), (7, d2), (8, d2)]
    assert (r.deleted, r.inserted, r.table_rows) == (2, 2, 2)
    with pytest.raises(SchemaMismatch, match="outside the partition's window"):
        write_frame(conn, frame(flavour, {"id": [9], "day": [d3]}), t, "insert", partition=window)
    static = PartitionWindow("day", values=(d1,))
    write_frame(conn, frame(flavour, {"id": [5], "day": [d1]}), t, "truncate_insert", partition=static)
    assert rows(conn, t) == [(5, d1), (7, d2), (8, d2)]


@pytest.mark.parametrize("mode", ["insert", "truncate_insert", "upsert", "swap"])
def test_failure_mid_write_leaves_target_unchanged_and_no_staging(conn, fresh_schema, mode):
    t = TableRef(fresh_schema, "guarded")
    write_frame(conn, pl.DataFrame({"id": [1, 2], "n": [10, 20]}), t, "insert", primary_key=["id"])
    conn.execute(sql.SQL("ALTER TABLE {} ADD CHECK (n < 1000)").format(t.ident))
    conn.commit()
    bad = pl.DataFrame({"id": list(range(3, 3003)), "n": [5] * 2999 + [5000]})  # the last row is rejected
    with pytest.raises(SchemaMismatch, match=rf"{fresh_schema}\.guarded"):
        write_frame(conn, bad, t, mode, primary_key=["id"])
    assert rows(conn, t) == [(1, 10), (2, 20)]
    assert leftovers(conn) == []
    # text the column type rejects (text goes into any column and PostgreSQL parses it)
    with pytest.raises(SchemaMismatch, match="invalid input syntax"):
        write_frame(conn, pl.DataFrame({"id": [3], "n": ["zwanzig"]}), t, mode, primary_key=["id"])
    assert rows(conn, t) == [(1, 10), (2, 20)]
    assert leftovers(conn) == []


def test_on_commit_hooks_join_the_transaction(conn, fresh_schema):
    t = TableRef(fresh_schema, "data")
    log = TableRef(fresh_schema, "cursor")
    conn.execute(sql.SQL("CREATE TABLE {} (v int)").format(log.ident))
    conn.commit()

    def save_cursor(c):
        c.execute(sql.SQL("INSERT INTO {} VALUES (42)").format(log.ident))

    def fail(c):
        raise RuntimeError("hook failed")

    write_frame(conn, pl.DataFrame({"id": [1]}), t, "insert", on_commit=[save_cursor])
    with pytest.raises(RuntimeError):
        write_frame(conn, pl.DataFrame({"id": [2]}), t, "insert", on_commit=[save_cursor, fail])
    assert rows(conn, t) == [(1,)]
    assert rows(conn, log, "v") == [(42,)]
    # Inside a caller's transaction the write is a savepoint: the caller's rollback undoes it.
    with pytest.raises(ZeroDivisionError), conn.transaction():
        write_frame(conn, pl.DataFrame({"id": [3]}), t, "insert")
        1 / 0  # noqa: B018
    assert rows(conn, t) == [(1,)]


def test_two_concurrent_writers_never_interleave(warehouse_dsn, fresh_schema):
    """Writer A holds the target lock; B must wait (seen in pg_locks), then run after A commits."""
    t = TableRef(fresh_schema, "shared")
    order: list[str] = []
    a_inside = threading.Event()
    release_a = threading.Event()
    errors: list[BaseException] = []

    def hold(c):
        order.append("A-hook")
        a_inside.set()
        assert release_a.wait(30)

    def writer(name, df, hooks):
        try:
            with psycopg.connect(warehouse_dsn) as c:
                write_frame(c, df, t, "truncate_insert", on_commit=[*hooks, lambda c: order.append(name)])
        except BaseException as exc:  # pragma: no cover - surfaced below
            errors.append(exc)

    a = threading.Thread(target=writer, args=("A", pl.DataFrame({"id": [1, 2]}), [hold]))
    a.start()
    assert a_inside.wait(30)
    b = threading.Thread(target=writer, args=("B", pl.DataFrame({"id": [3]}), []))
    b.start()
    with psycopg.connect(warehouse_dsn, autocommit=True) as watch:
        for _ in range(3000):  # poll the lock table, no sleeping on a guess
            waiting = watch.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ).fetchone()[0]
            if waiting:
                break
            watch.execute("SELECT pg_sleep(0.01)")
        assert waiting == 1
        release_a.set()
        a.join(30)
        b.join(30)
        assert not errors
        assert order == ["A-hook", "A", "B"]
        assert rows(watch, t) == [(3,)]


@pytest.mark.parametrize("mode", ["insert", "truncate_insert", "upsert", "swap"])
def test_capitals_spaces_and_quotes_in_names(conn, warehouse_conn, mode):
    schema = 'My "Odd" 100%s Schema'
    warehouse_conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    t = TableRef(schema, 'Order "Lines"; DROP TABLE x')
    df = pl.DataFrame({"Key Col": [1, 2], 'say "hi"': ["a", None], "UPPER": [1.5, 2.5]})
    try:
        pk = [] if mode == "insert" else ["Key Col"]
        write_frame(conn, df, t, mode, primary_key=pk)
        write_frame(conn, df.with_columns(pl.col("UPPER") * 2), t, mode, primary_key=pk)
        got = rows(conn, t, "Key Col")
        expected_first = [(1, "a", 3.0), (2, None, 5.0)]
        if mode == "insert":
            assert got == [(1, "a", 1.5), (1, "a", 3.0), (2, None, 2.5), (2, None, 5.0)]
        else:
            assert got == expected_first
        cols = [
            r[0]
            for r in conn.execute(
                "SELECT attname FROM pg_attribute "
                "WHERE attrelid = to_regclass(%s) AND attnum > 0 ORDER BY attnum",
                (t.regclass_text,),
            )
        ]
        assert cols == ["Key Col", 'say "hi"', "UPPER"]
        if mode != "swap":  # a partition replace (or partition upsert) with the same hostile names
            part = PartitionWindow("Key Col", values=(2,))
            one = pl.DataFrame({"Key Col": [2], 'say "hi"': ["p%s"], "UPPER": [9.0]})
            write_frame(conn, one, t, mode, primary_key=pk, partition=part)
            assert [r for r in rows(conn, t, "Key Col") if r[0] == 2] == [(2, "p%s", 9.0)]
    finally:
        conn.rollback()
        warehouse_conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def test_truncate_of_a_referenced_table_explains_itself(conn, fresh_schema):
    parent = TableRef(fresh_schema, "parent")
    write_frame(conn, pl.DataFrame({"id": [1]}), parent, "truncate_insert", primary_key=["id"])
    conn.execute(
        sql.SQL("CREATE TABLE {} (pid bigint REFERENCES {})").format(
            sql.Identifier(fresh_schema, "child"), parent.ident
        )
    )
    with pytest.raises(SchemaMismatch, match=r"Cannot truncate .*parent.*Use write_mode 'upsert'"):
        write_frame(conn, pl.DataFrame({"id": [2]}), parent, "truncate_insert", primary_key=["id"])
    assert rows(conn, parent) == [(1,)]


def test_upsert_from_staging_is_the_one_merge(conn, fresh_schema):
    """io.upsert.upsert_from_staging merges a staging table (used by write_frame's upsert and the
    extract COPY fast path): exact inserted/updated counts, unchanged rows untouched, bad values
    refused naming the table."""
    from etl_assets.io.upsert import upsert_from_staging

    t = TableRef(fresh_schema, "orders")
    stage = TableRef(fresh_schema, "orders_stage")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v text, n smallint)").format(t.ident))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'a', 1), (2, 'b', 2), (3, 'c', 3)").format(t.ident))
    conn.execute(sql.SQL("CREATE TABLE {} (id int, v text, n int)").format(stage.ident))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'a', 1), (2, 'B', 2), (4, 'd', 4)").format(stage.ident))
    xmin_of_1 = sql.SQL("SELECT xmin::text FROM {} WHERE id = 1").format(t.ident)
    xmin_1 = conn.execute(xmin_of_1).fetchone()[0]
    with conn.transaction():
        counts = upsert_from_staging(conn, stage.ident, t, ["id", "v", "n"], ["id"])
    assert counts == (1, 1)  # inserted 4, updated 2; 1 unchanged
    assert rows(conn, t) == [(1, "a", 1), (2, "B", 2), (3, "c", 3), (4, "d", 4)]
    assert conn.execute(xmin_of_1).fetchone()[0] == xmin_1
    conn.execute(sql.SQL("INSERT INTO {} VALUES (5, 'e', 100000)").format(stage.ident))
    with pytest.raises(SchemaMismatch, match=f"{fresh_schema}.orders"), conn.transaction():
        upsert_from_staging(conn, stage.ident, t, ["id", "v", "n"], ["id"])
    assert rows(conn, t) == [(1, "a", 1), (2, "B", 2), (3, "c", 3), (4, "d", 4)]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_empty_frame_clears_exactly_its_time_window(conn, fresh_schema, flavour):
    """An empty frame for a time-window partition deletes that window's rows (one transaction) and
    nothing else; the table keeps its columns."""
    import datetime as dt

    t = TableRef(fresh_schema, "events")
    d1, d2, d3 = dt.date(2024, 1, 1), dt.date(2024, 1, 2), dt.date(2024, 1, 3)
    write_frame(conn, frame(flavour, {"id": [1, 2, 3, 4], "day": [d1, d2, d2, d3]}), t, "insert")
    window = PartitionWindow(
        "day", start=dt.datetime(2024, 1, 2, tzinfo=dt.UTC), end=dt.datetime(2024, 1, 3, tzinfo=dt.UTC)
    )
    empty = pl.DataFrame(schema={"id": pl.Int64, "day": pl.Date})
    if flavour == "pandas":  # pandas has no date dtype: dates are objects (none here)
        import pandas as pd

        empty = pd.DataFrame({"id": pd.Series([], dtype="int64"), "day": pd.Series([], dtype=object)})
    r = write_frame(conn, empty, t, "insert", partition=window)
    assert rows(conn, t) == [(1, d1), (4, d3)]
    assert (r.deleted, r.inserted, r.table_rows) == (2, 0, 0)
    again = write_frame(conn, empty, t, "insert", partition=window)
    assert (again.deleted, again.inserted) == (0, 0)
    assert rows(conn, t) == [(1, d1), (4, d3)]


# --------------------------------------------------------------------------------------------------
# What readers see in each mode (docs/load-modes.md): every statement of that page, demonstrated
# --------------------------------------------------------------------------------------------------

OLD = pl.DataFrame({"id": [1, 2, 3], "v": ["a", "b", "c"]})
NEW = pl.DataFrame({"id": [2, 3, 4, 5], "v": ["B", "c", "d", "e"]})
# What a reader counts after each mode's load of NEW over OLD: (rows, rows with v = 'B').
AFTER = {"insert": 7, "upsert": 5, "truncate_insert": 4, "swap": 4}


def _load(conn, t: TableRef, mode: str, hooks=()) -> None:
    df = NEW.with_columns(pl.col("id") + 10) if mode == "insert" else NEW  # insert: no key clash
    write_frame(conn, df, t, mode, primary_key=["id"], on_commit=hooks)


def _count(reader: psycopg.Connection, t: TableRef) -> int:
    return reader.execute(sql.SQL("SELECT count(*) FROM {}").format(t.ident)).fetchone()[0]


@pytest.mark.parametrize("mode", ["insert", "upsert", "truncate_insert", "swap"])
def test_read_committed_reader_sees_old_rows_then_new_never_an_empty_table(
    warehouse_dsn, conn, fresh_schema, mode
):
    """READ COMMITTED: before the commit, the old rows (insert/upsert without waiting; truncate_insert
    and swap make the reader wait on their ACCESS EXCLUSIVE lock); after it, the new rows."""
    t = TableRef(fresh_schema, "rc")
    write_frame(conn, OLD, t, "insert" if mode == "insert" else mode, primary_key=["id"])
    seen: dict[str, object] = {}

    def during(_c) -> None:
        with psycopg.connect(warehouse_dsn, autocommit=True) as reader:
            reader.execute("SET lock_timeout = '300ms'")
            try:
                seen["during"] = _count(reader, t)
            except psycopg.errors.LockNotAvailable:
                seen["during"] = "waits"
            # A reader that keeps waiting gets the new rows once the load commits.
            reader.execute("SET lock_timeout = 0")
            done = threading.Event()

            def wait_and_read() -> None:
                with psycopg.connect(warehouse_dsn, autocommit=True) as late:
                    seen["waited"] = _count(late, t)
                done.set()

            seen["thread"] = threading.Thread(target=wait_and_read)
            seen["thread"].start()
            done.wait(0.5)  # blocked (truncate_insert, swap) or already done (insert, upsert)

    _load(conn, t, mode, [during])
    seen["thread"].join(10)
    if mode in ("insert", "upsert"):
        assert seen["during"] == 3 and seen["waited"] == 3
    else:
        assert seen["during"] == "waits" and seen["waited"] == AFTER[mode]
    with psycopg.connect(warehouse_dsn, autocommit=True) as reader:
        assert _count(reader, t) == AFTER[mode]


@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "SERIALIZABLE"])
@pytest.mark.parametrize("mode", ["insert", "upsert", "truncate_insert", "swap"])
def test_snapshot_reader_opened_before_the_load(warehouse_dsn, conn, fresh_schema, mode, isolation):
    """REPEATABLE READ / SERIALIZABLE, snapshot taken before the load, table first read after its
    commit: insert and upsert show the old rows and values; truncate_insert and swap an EMPTY table
    (TRUNCATE and a swapped-in table are not MVCC-safe) until the reader's transaction ends."""
    t = TableRef(fresh_schema, "rr")
    write_frame(conn, OLD, t, "insert" if mode == "insert" else mode, primary_key=["id"])
    with psycopg.connect(warehouse_dsn) as reader:
        reader.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
        reader.execute("SELECT 1")  # the snapshot is taken here (no lock on the table yet)
        _load(conn, t, mode)
        expected = {"insert": 3, "upsert": 3, "truncate_insert": 0, "swap": 0}[mode]
        assert _count(reader, t) == expected
        if mode == "upsert":
            assert reader.execute(sql.SQL("SELECT v FROM {} WHERE id = 2").format(t.ident)).fetchone() == (
                "b",
            )
        reader.commit()
        assert _count(reader, t) == AFTER[mode]  # the next transaction sees the load


@pytest.mark.parametrize("mode", ["truncate_insert", "swap"])
def test_snapshot_reader_that_already_read_the_table_holds_the_load_off(
    warehouse_dsn, conn, fresh_schema, mode
):
    """A REPEATABLE READ reader that read the table before the load keeps its lock to its end: it
    goes on seeing the old rows; truncate_insert waits for it, swap gives up after its attempts."""
    t = TableRef(fresh_schema, "held")
    write_frame(conn, OLD, t, mode, primary_key=["id"])
    with psycopg.connect(warehouse_dsn) as reader:
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        assert _count(reader, t) == 3
        if mode == "swap":
            with pytest.raises(EtlError, match="Could not swap"):
                write_frame(
                    conn, NEW, t, "swap", primary_key=["id"], swap_lock_timeout="100ms", swap_attempts=2
                )
            assert _count(reader, t) == 3
            reader.commit()
        else:

            def load() -> None:
                with psycopg.connect(warehouse_dsn, autocommit=True) as other:
                    _load(other, t, mode)

            loader = threading.Thread(target=load)
            loader.start()
            loader.join(1.0)
            assert loader.is_alive(), "TRUNCATE must wait for the reader's lock"
            assert _count(reader, t) == 3
            reader.commit()
            loader.join(10)
            assert not loader.is_alive()
    with psycopg.connect(warehouse_dsn, autocommit=True) as reader:
        assert _count(reader, t) == (3 if mode == "swap" else AFTER[mode])


def test_partition_replace_is_mvcc_safe_for_snapshot_readers(warehouse_dsn, conn, fresh_schema):
    """truncate_insert of ONE partition deletes its window (no TRUNCATE): an older snapshot keeps
    seeing the old rows, never an empty table."""
    t = TableRef(fresh_schema, "parts")
    df = pl.DataFrame({"id": [1, 2, 3], "day": [1, 1, 2]})
    write_frame(conn, df, t, "insert")
    with psycopg.connect(warehouse_dsn) as reader:
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        reader.execute("SELECT 1")
        write_frame(
            conn,
            pl.DataFrame({"id": [9], "day": [1]}),
            t,
            "truncate_insert",
            partition=PartitionWindow("day", 1, 2),
        )
        assert _count(reader, t) == 3
    assert rows(conn, t) == [(3, 2), (9, 1)]


def test_column_widening_rewrite_shows_snapshot_readers_an_empty_table(warehouse_dsn, conn, fresh_schema):
    """A safe widening (integer -> bigint) rewrites the table in any mode: like TRUNCATE, an older
    snapshot then finds it empty."""
    t = TableRef(fresh_schema, "widened")
    write_frame(conn, pl.DataFrame({"id": pl.Series([1, 2], dtype=pl.Int32)}), t, "insert")
    with psycopg.connect(warehouse_dsn) as reader:
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        reader.execute("SELECT 1")
        r = write_frame(conn, pl.DataFrame({"id": pl.Series([2**40], dtype=pl.Int64)}), t, "insert")
        assert r.widened_columns == ["id"]
        assert _count(reader, t) == 0
    assert _count(conn, t) == 3


def test_a_load_that_adds_a_column_makes_read_committed_readers_wait(warehouse_dsn, conn, fresh_schema):
    """Schema evolution takes ACCESS EXCLUSIVE to the commit: even an insert then blocks readers."""
    t = TableRef(fresh_schema, "evolving")
    write_frame(conn, pl.DataFrame({"id": [1]}), t, "insert")
    seen = []

    def during(_c) -> None:
        with psycopg.connect(warehouse_dsn, autocommit=True) as reader:
            reader.execute("SET lock_timeout = '300ms'")
            with pytest.raises(psycopg.errors.LockNotAvailable):
                _count(reader, t)
            seen.append("waited")

    r = write_frame(conn, pl.DataFrame({"id": [2], "extra": ["x"]}), t, "insert", on_commit=[during])
    assert r.added_columns == ["extra"] and seen == ["waited"]
    assert rows(conn, t) == [(1, None), (2, "x")]
