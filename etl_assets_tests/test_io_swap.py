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


# --------------------------------------------------------------------------------------------------
# What CREATE TABLE ... (LIKE ...) does not copy: carried over by the swap, or refused
# --------------------------------------------------------------------------------------------------


def _carried(conn, t: TableRef) -> dict:
    """Column grants, storage options, persistence, replica identity, column statistics settings
    and extended statistics of ``t`` (names and definitions), as the catalog shows them."""
    oid = conn.execute("SELECT to_regclass(%s)::oid", (t.regclass_text,)).fetchone()[0]
    return {
        "column_privileges": conn.execute(
            "SELECT grantee, column_name, privilege_type, is_grantable "
            "FROM information_schema.column_privileges "
            "WHERE table_schema = %s AND table_name = %s AND grantee NOT IN (current_user, 'postgres') "
            "ORDER BY 1, 2, 3",
            (t.schema, t.name),
        ).fetchall(),
        "class": conn.execute(
            "SELECT c.reloptions, tt.reloptions, c.relpersistence, c.relreplident FROM pg_class c "
            "LEFT JOIN pg_class tt ON tt.oid = c.reltoastrelid WHERE c.oid = %s",
            (oid,),
        ).fetchone(),
        "identity_index": conn.execute(
            "SELECT i.relname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
            "WHERE x.indrelid = %s AND x.indisreplident",
            (oid,),
        ).fetchall(),
        "columns": conn.execute(
            # (attoptions other than the planner's n_distinct are the server's own: not compared)
            "SELECT attname, attstattarget, "
            "ARRAY(SELECT o FROM unnest(attoptions) o WHERE o LIKE 'n_distinct%%') "
            "FROM pg_attribute WHERE attrelid = %s AND attnum > 0 "
            "AND NOT attisdropped ORDER BY attnum",
            (oid,),
        ).fetchall(),
        "statistics": conn.execute(
            "SELECT stxnamespace::regnamespace::text, stxname, stxkind::text, stxstattarget, "
            "obj_description(oid, 'pg_statistic_ext') FROM pg_statistic_ext WHERE stxrelid = %s ORDER BY 2",
            (oid,),
        ).fetchall(),
    }


def _decorate(conn, t: TableRef, role: str) -> None:
    """Everything LIKE leaves behind, on the live table."""
    ident, r = t.ident, sql.Identifier(role)
    for stmt in (
        sql.SQL("GRANT SELECT (id, v), UPDATE (v) ON {} TO {}").format(ident, r),
        sql.SQL("GRANT INSERT (w) ON {} TO {} WITH GRANT OPTION").format(ident, r),
        sql.SQL("ALTER TABLE {} SET (fillfactor = 70, autovacuum_enabled = false)").format(ident),
        sql.SQL("ALTER TABLE {} SET (toast.autovacuum_enabled = false)").format(ident),
        sql.SQL("ALTER TABLE {} SET UNLOGGED").format(ident),
        sql.SQL("CREATE UNIQUE INDEX {} ON {} (w)").format(sql.Identifier(f"{t.name} w key"), ident),
        sql.SQL("ALTER TABLE {} ALTER COLUMN w SET NOT NULL").format(ident),
        sql.SQL("ALTER TABLE {} REPLICA IDENTITY USING INDEX {}").format(
            ident, sql.Identifier(f"{t.name} w key")
        ),
        sql.SQL("ALTER TABLE {} ALTER COLUMN v SET STATISTICS 500").format(ident),
        sql.SQL("ALTER TABLE {} ALTER COLUMN v SET (n_distinct = -0.5)").format(ident),
        sql.SQL("CREATE STATISTICS {} (ndistinct, dependencies) ON v, w FROM {}").format(
            sql.Identifier(t.schema, "v w stats"), ident
        ),
        sql.SQL("ALTER STATISTICS {} SET STATISTICS 321").format(sql.Identifier(t.schema, "v w stats")),
        sql.SQL("COMMENT ON STATISTICS {} IS 'v and w move together'").format(
            sql.Identifier(t.schema, "v w stats")
        ),
        sql.SQL("CREATE STATISTICS {} ON (lower(v)), id FROM {}").format(
            sql.Identifier(t.schema, "expr"), ident
        ),
    ):
        conn.execute(stmt)


def test_swap_carries_column_grants_storage_options_and_extended_statistics(conn, fresh_schema, reader_role):
    t = TableRef(fresh_schema, "Decorated")
    write_frame(
        conn, pl.DataFrame({"id": [1, 2], "v": ["a", "b"], "w": [10, 20]}), t, "swap", primary_key=["id"]
    )
    _decorate(conn, t, reader_role)
    before = _carried(conn, t)
    assert len(before["column_privileges"]) == 4 and before["class"][0] and before["class"][2] == "u"
    assert [s[1] for s in before["statistics"]] == ["expr", "v w stats"]
    r = write_frame(conn, pl.DataFrame({"id": [3], "v": ["c"], "w": [30]}), t, "swap", primary_key=["id"])
    assert (r.inserted, r.deleted) == (1, 2)
    assert rows(conn, t) == [(3, "c", 30)]
    after = _carried(conn, t)
    assert after == before
    assert sorted(after["class"][0]) == ["autovacuum_enabled=false", "fillfactor=70"]
    assert after["class"][1] == ["autovacuum_enabled=false"]
    assert (
        role_can := conn.execute(
            "SELECT has_column_privilege(%s, to_regclass(%s), 'v', 'UPDATE'), "
            "has_column_privilege(%s, to_regclass(%s), 'w', 'UPDATE')",
            (reader_role, t.regclass_text, reader_role, t.regclass_text),
        ).fetchone()
    ) == (True, False), role_can
    # The kept previous version has the old statistics under the derived names, and ANALYZE fills
    # the live ones.
    prev = previous_table(t)
    assert [s[1] for s in _carried(conn, prev)["statistics"]] == ["expr__etl_prev", "v w stats__etl_prev"]
    conn.execute(sql.SQL("ANALYZE {}").format(t.ident))
    # Rolling back carries them the other way, and the swap after that again.
    rollback(conn, t)
    assert rows(conn, t) == [(1, "a", 10), (2, "b", 20)]
    assert _carried(conn, t) == before
    write_frame(conn, pl.DataFrame({"id": [4], "v": ["d"], "w": [40]}), t, "swap", primary_key=["id"])
    assert _carried(conn, t) == before
    assert leftovers(conn) == []


@pytest.mark.parametrize("member", ["TABLE", "TABLES IN SCHEMA"])
def test_swap_refuses_a_published_table_naming_the_publication(conn, fresh_schema, member):
    t = TableRef(fresh_schema, "published")
    write_frame(conn, pl.DataFrame({"id": [1]}), t, "swap", primary_key=["id"])
    pub = f"pub_{secrets.token_hex(3)}"
    what = t.ident if member == "TABLE" else sql.Identifier(fresh_schema)
    conn.execute(
        sql.SQL("CREATE PUBLICATION {} FOR {} {}").format(sql.Identifier(pub), sql.SQL(member), what)
    )
    try:
        with pytest.raises(
            SchemaMismatch, match=rf"Cannot swap .*published: it is in publication\(s\) {pub}"
        ):
            write_frame(conn, pl.DataFrame({"id": [2]}), t, "swap", primary_key=["id"])
        assert rows(conn, t) == [(1,)]
        assert conn.execute(
            "SELECT count(*) FROM pg_publication_tables WHERE pubname = %s AND schemaname = %s "
            "AND tablename = 'published'",
            (pub, fresh_schema),
        ).fetchone() == (1,)
        assert leftovers(conn) == []
        # truncate_insert keeps the table (and its membership): the way to load a published table.
        write_frame(conn, pl.DataFrame({"id": [2]}), t, "truncate_insert", primary_key=["id"])
        assert rows(conn, t) == [(2,)]
    finally:
        conn.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(pub)))
