"""Swap loads and rollback against real PostgreSQL: views, grants, index names, a reader in the way."""

from __future__ import annotations

import secrets
import threading

import polars as pl
import psycopg
import pytest
from psycopg import sql

from etl_assets.errors import EtlError, MissingObject, SchemaMismatch
from etl_assets.io.swap import previous_table, rollback
from etl_assets.io.tables import TableRef
from etl_assets.io.writer import write_frame
from etl_assets_tests.io_helpers import FLAVOURS, frame, leftovers, rows


@pytest.fixture
def conn(warehouse_dsn: str):
    with psycopg.connect(warehouse_dsn, autocommit=True) as c:
        yield c


@pytest.fixture
def reader_role(warehouse_conn):
    name = f"reader_{secrets.token_hex(3)}"
    warehouse_conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(name)))
    yield name
    warehouse_conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
    warehouse_conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def _indexes(conn, t: TableRef) -> list[tuple[str, str]]:
    return conn.execute(
        "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
        "WHERE x.indrelid = to_regclass(%s) ORDER BY 1",
        (t.regclass_text,),
    ).fetchall()


def _constraints(conn, t: TableRef) -> list[tuple[str, str]]:
    return conn.execute(
        "SELECT conname, contype::text FROM pg_constraint "
        "WHERE conrelid = to_regclass(%s) AND contype <> 'n' "
        "ORDER BY 1",
        (t.regclass_text,),
    ).fetchall()


def _grants(conn, rel: TableRef) -> list[tuple]:
    return conn.execute(
        "SELECT pg_get_userbyid(a.grantee), a.privilege_type FROM pg_class c, aclexplode(c.relacl) a "
        "WHERE c.oid = to_regclass(%s) AND a.grantee <> c.relowner ORDER BY 1, 2",
        (rel.regclass_text,),
    ).fetchall()


def _setup(conn, schema: str, role: str, flavour: str = "polars") -> tuple[TableRef, TableRef, TableRef]:
    t = TableRef(schema, "Live Table")
    write_frame(conn, frame(flavour, {"id": [1, 2], "v": ["old1", "old2"]}), t, "swap", primary_key=["id"])
    conn.execute(sql.SQL("CREATE INDEX {} ON {} (v)").format(sql.Identifier("by v"), t.ident))
    conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT v_not_bad CHECK (v <> 'bad')").format(t.ident))
    view = TableRef(schema, "Live View")
    view2 = TableRef(schema, "view on view")
    conn.execute(
        sql.SQL("CREATE VIEW {} WITH (security_barrier) AS SELECT id, upper(v) AS uv FROM {}").format(
            view.ident, t.ident
        )
    )
    conn.execute(sql.SQL("CREATE VIEW {} AS SELECT count(*) AS n FROM {}").format(view2.ident, view.ident))
    conn.execute(sql.SQL("COMMENT ON VIEW {} IS 'upper values'").format(view.ident))
    for rel in (t, view, view2):
        conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(rel.ident, sql.Identifier(role)))
    return t, view, view2


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_swap_replaces_data_and_keeps_views_grants_indexes(conn, fresh_schema, reader_role, flavour):
    t, view, view2 = _setup(conn, fresh_schema, reader_role, flavour)
    indexes_before = _indexes(conn, t)
    constraints_before = _constraints(conn, t)
    r = write_frame(
        conn, frame(flavour, {"id": [3, 4, 5], "v": ["new3", "new4", "new5"]}), t, "swap", primary_key=["id"]
    )
    assert (r.rows, r.deleted, r.table_rows) == (3, 2, 3)
    assert rows(conn, t) == [(3, "new3"), (4, "new4"), (5, "new5")]
    assert rows(conn, view) == [(3, "NEW3"), (4, "NEW4"), (5, "NEW5")]
    assert conn.execute(sql.SQL("SELECT n FROM {}").format(view2.ident)).fetchone() == (3,)
    assert _indexes(conn, t) == indexes_before
    assert [n for n, _ in _indexes(conn, t)] == ["Live Table_pkey", "by v"]
    assert _constraints(conn, t) == constraints_before
    for rel in (t, view, view2):
        assert _grants(conn, rel) == [(reader_role, "SELECT")]
    assert conn.execute(
        "SELECT obj_description(to_regclass(%s), 'pg_class')", (view.regclass_text,)
    ).fetchone() == ("upper values",)
    assert conn.execute(
        "SELECT reloptions FROM pg_class WHERE oid = to_regclass(%s)", (view.regclass_text,)
    ).fetchone() == (["security_barrier=true"],)
    prev = previous_table(t)
    assert rows(conn, prev) == [(1, "old1"), (2, "old2")]
    assert leftovers(conn) == []
    # The check constraint came along: a bad value fails the next swap and changes nothing.
    with pytest.raises(SchemaMismatch, match="v_not_bad"):
        write_frame(conn, pl.DataFrame({"id": [9], "v": ["bad"]}), t, "swap", primary_key=["id"])
    assert rows(conn, t) == [(3, "new3"), (4, "new4"), (5, "new5")]
    assert rows(conn, prev) == [(1, "old1"), (2, "old2")]


def test_rollback_swaps_back_and_can_be_undone(conn, fresh_schema, reader_role):
    t, view, _ = _setup(conn, fresh_schema, reader_role)
    with pytest.raises(MissingObject, match="no previous version"):
        rollback(conn, t)
    write_frame(conn, pl.DataFrame({"id": [7], "v": ["seven"]}), t, "swap", primary_key=["id"])
    index_names = [n for n, _ in _indexes(conn, t)]
    rollback(conn, t)
    assert rows(conn, t) == [(1, "old1"), (2, "old2")]
    assert rows(conn, view) == [(1, "OLD1"), (2, "OLD2")]
    assert rows(conn, previous_table(t)) == [(7, "seven")]
    assert [n for n, _ in _indexes(conn, t)] == index_names
    assert _grants(conn, t) == [(reader_role, "SELECT")] and _grants(conn, view) == [(reader_role, "SELECT")]
    rollback(conn, t)
    assert rows(conn, t) == [(7, "seven")]
    assert rows(conn, view) == [(7, "SEVEN")]
    assert [n for n, _ in _indexes(conn, t)] == index_names
    history = conn.execute(
        "SELECT action FROM etl.swap_history WHERE target_schema = %s ORDER BY id", (fresh_schema,)
    ).fetchall()
    assert [h[0] for h in history] == ["swap", "rollback", "rollback"]


def test_swap_waits_for_a_reader_and_retries(warehouse_dsn, conn, fresh_schema, reader_role):
    """A reader holds the table in an open transaction: the swap's lock request times out and retries
    (seen in pg_locks) without blocking; when the reader commits, the swap completes."""
    t, view, _ = _setup(conn, fresh_schema, reader_role)
    result: list = []
    with psycopg.connect(warehouse_dsn) as reader:
        assert rows(reader, view) == [(1, "OLD1"), (2, "OLD2")]  # reader's transaction holds ACCESS SHARE

        def swapper():
            with psycopg.connect(warehouse_dsn, autocommit=True) as c:
                try:
                    result.append(
                        write_frame(
                            c,
                            pl.DataFrame({"id": [10], "v": ["ten"]}),
                            t,
                            "swap",
                            primary_key=["id"],
                            swap_lock_timeout="100ms",
                            swap_attempts=600,
                        )
                    )
                except BaseException as exc:  # pragma: no cover
                    result.append(exc)

        th = threading.Thread(target=swapper)
        th.start()
        seen_waiting = 0
        for _ in range(6000):
            waiting = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE relation = to_regclass(%s) AND NOT granted "
                "AND mode = 'AccessExclusiveLock' "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                (t.regclass_text,),
            ).fetchone()[0]
            if waiting:
                seen_waiting += 1
                if seen_waiting >= 2:
                    break
            conn.execute("SELECT pg_sleep(0.01)")
        assert seen_waiting >= 1, "the swap never asked for the lock"
        assert th.is_alive()
        assert rows(reader, t) == [(1, "old1"), (2, "old2")]  # the reader still reads the old data
        reader.commit()
    th.join(60)
    assert not isinstance(result[0], BaseException), result
    assert rows(conn, t) == [(10, "ten")]
    assert rows(conn, view) == [(10, "TEN")]


def test_swap_refuses_materialized_view_before_touching_anything(conn, fresh_schema):
    t = TableRef(fresh_schema, "base")
    write_frame(conn, pl.DataFrame({"id": [1]}), t, "swap")
    mv = TableRef(fresh_schema, "Snap Shot")
    conn.execute(sql.SQL("CREATE MATERIALIZED VIEW {} AS SELECT * FROM {}").format(mv.ident, t.ident))
    with pytest.raises(SchemaMismatch, match=rf"materialized view {fresh_schema}\.Snap Shot"):
        write_frame(conn, pl.DataFrame({"id": [2]}), t, "swap")
    assert rows(conn, t) == [(1,)]
    assert leftovers(conn) == []


def test_swap_gives_up_after_its_attempts_naming_the_holder(warehouse_dsn, conn, fresh_schema):
    t = TableRef(fresh_schema, "busy")
    write_frame(conn, pl.DataFrame({"id": [1]}), t, "swap", primary_key=["id"])
    with psycopg.connect(warehouse_dsn) as reader:
        reader.execute("SET application_name = 'long report'")
        assert rows(reader, t) == [(1,)]  # holds ACCESS SHARE until commit
        with pytest.raises(EtlError, match=r"Could not swap .*busy.*2 attempts of 50ms.*long report"):
            write_frame(
                conn,
                pl.DataFrame({"id": [2]}),
                t,
                "swap",
                primary_key=["id"],
                swap_lock_timeout="50ms",
                swap_attempts=2,
            )
        reader.commit()
    assert rows(conn, t) == [(1,)]
    assert leftovers(conn) == []
