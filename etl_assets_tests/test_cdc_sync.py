"""CDC end to end on real PostgreSQL: inserts, updates, key-changing updates, deletes and truncates
across several runs, each compared exactly with the source; the snapshot boundary under concurrent
writes; a transaction that commits out of order; the Dagster asset."""

from __future__ import annotations

import threading

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from etl_assets.cdc import capture, sync
from etl_assets.db import PostgresResource
from etl_assets_tests.cdc_helpers import assert_equal, make_items, rows_of, spec_for


def _run(spec, source_dsn, warehouse_dsn, **kw) -> sync.CdcReport:
    kw.setdefault("wait", 2)
    return sync.sync_table(
        spec,
        sync.dsn_connector(source_dsn, "source", "S"),
        sync.dsn_connector(warehouse_dsn, "warehouse", "W"),
        **kw,
    )


@pytest.fixture
def items(source_conn: psycopg.Connection):
    ref = make_items(source_conn, 300)
    capture.install(source_conn, ref)
    yield ref
    source_conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(ref.schema)))


def test_changes_across_runs_equal_source(
    items, source_conn, warehouse_conn, source_dsn, warehouse_dsn, fresh_schema
) -> None:
    spec = spec_for(items, fresh_schema)
    first = _run(spec, source_dsn, warehouse_dsn)
    assert first.mode == "snapshot" and first.rows_snapshot == 300
    assert assert_equal(source_conn, warehouse_conn, spec) == 300
    t = items.ident

    # Run 2: every kind of change, including a row changed several times and a key change.
    source_conn.execute(
        sql.SQL(
            "INSERT INTO {} (id, name, amount) SELECT g, 'new', g FROM generate_series(1001, 1010) g"
        ).format(t)
    )
    source_conn.execute(
        sql.SQL("UPDATE {} SET name = 'upd', doc = '{{\"a\": [1, 2]}}' WHERE id <= 20").format(t)
    )
    source_conn.execute(sql.SQL("UPDATE {} SET amount = amount + 1 WHERE id <= 5").format(t))
    source_conn.execute(sql.SQL("UPDATE {} SET id = id + 5000 WHERE id BETWEEN 30 AND 34").format(t))
    source_conn.execute(sql.SQL("DELETE FROM {} WHERE id BETWEEN 40 AND 59").format(t))
    source_conn.execute(sql.SQL("DELETE FROM {} WHERE id = 1001").format(t))
    report = _run(spec, source_dsn, warehouse_dsn)
    assert report.mode == "apply"
    # The 5 key changes are logged as deletes of the old keys and inserts of the new ones.
    assert report.applied == {"insert": 15, "update": 25, "delete": 26}
    assert report.position_after == report.position_before + 66
    assert report.pending == 0 and report.held_back_by is None
    assert assert_equal(source_conn, warehouse_conn, spec) == 300 + 10 - 21
    assert report.rows_total == 289 and report.metadata()["dagster/row_count"] == 289
    # Warehouse rows by what happened to them: 1002..1010 and the 5 moved keys are new, ids 1..20
    # rewritten, 40..59 and the 5 old keys gone (1001 came and went inside the window: not counted).
    assert (report.rows_inserted, report.rows_updated, report.rows_deleted) == (14, 20, 25)

    # Run 3: key moves chained inside one window (a -> free, b -> a's old key), a delete then a
    # re-insert of the same key, and an update of a row moved in run 2.
    with source_conn.transaction():
        source_conn.execute(sql.SQL("UPDATE {} SET id = 9000 WHERE id = 60").format(t))
        source_conn.execute(sql.SQL("UPDATE {} SET id = 60, name = 'was 61' WHERE id = 61").format(t))
        source_conn.execute(sql.SQL("DELETE FROM {} WHERE id = 62").format(t))
        source_conn.execute(sql.SQL("INSERT INTO {} (id, name) VALUES (62, 'again')").format(t))
        source_conn.execute(sql.SQL("UPDATE {} SET name = 'moved then updated' WHERE id = 5030").format(t))
    report = _run(spec, source_dsn, warehouse_dsn)
    assert report.applied == {"update": 1, "delete": 3, "insert": 3}
    assert assert_equal(source_conn, warehouse_conn, spec) == 289

    # Run 4: a truncate and new rows after it.
    source_conn.execute(sql.SQL("UPDATE {} SET name = 'before truncate' WHERE id = 70").format(t))
    source_conn.execute(sql.SQL("TRUNCATE {}").format(t))
    source_conn.execute(sql.SQL("INSERT INTO {} (id, name) VALUES (1, 'after'), (2, 'after')").format(t))
    report = _run(spec, source_dsn, warehouse_dsn)
    assert report.applied == {"update": 1, "truncate": 1, "insert": 2}
    assert assert_equal(source_conn, warehouse_conn, spec) == 2

    # Run 5: nothing changed: nothing applied, position unchanged.
    report = _run(spec, source_dsn, warehouse_dsn)
    assert report.changes == 0 and report.position_after == report.position_before


def test_snapshot_boundary_under_concurrent_writes(
    items, source_conn, warehouse_conn, source_dsn, warehouse_dsn, fresh_schema
) -> None:
    """Writers commit before, during and after the snapshot (one held open across it): afterwards
    the target equals the source, and the changes applied after the snapshot are exactly the log
    entries the snapshot did not contain (none twice, none lost)."""
    spec = spec_for(items, fresh_schema)
    t = items.ident
    cap = capture.get_capture(source_conn, items)
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        with psycopg.connect(source_dsn, autocommit=True) as conn:
            i = 0
            while not stop.is_set() or i < 50:
                i += 1
                conn.execute(
                    sql.SQL("UPDATE {} SET amount = amount + 1, name = %s WHERE id = %s").format(t),
                    (f"w{i}", i % 300 + 1),
                )
                conn.execute(sql.SQL("INSERT INTO {} (id, name) VALUES (%s, 'w')").format(t), (100000 + i,))
                if i % 3 == 0:
                    conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(t), (100000 + i - 1,))
                written[0] = i

    with psycopg.connect(source_dsn) as held:
        held.execute(sql.SQL("UPDATE {} SET name = 'held across the snapshot' WHERE id = 150").format(t))
        thread = threading.Thread(target=writer)
        thread.start()
        first = _run(spec, source_dsn, warehouse_dsn, prune_after=False)
        assert first.mode == "snapshot"
        held.commit()
    stop.set()
    thread.join()
    snap = warehouse_conn.execute(
        "SELECT state->>'snapshot' FROM etl.state WHERE target = %s", (str(spec.target),)
    ).fetchone()[0]
    assert snap is not None  # changes were in flight: later windows must skip what it contains
    report = _run(spec, source_dsn, warehouse_dsn, prune_after=False)
    assert report.pending == 0 and written[0] >= 50
    assert_equal(source_conn, warehouse_conn, spec)
    # The entries the snapshot did not contain are exactly the ones applied afterwards.
    total, outside = source_conn.execute(
        sql.SQL(
            "SELECT count(*), count(*) FILTER (WHERE NOT pg_visible_in_snapshot(txid, %s::pg_snapshot)) "
            "FROM {}"
        ).format(cap.log_ident),
        (snap,),
    ).fetchone()
    assert outside == report.changes
    assert total > outside  # some changes were in the snapshot and were not applied again


def test_out_of_order_commit_is_applied(
    items, source_conn, warehouse_conn, source_dsn, warehouse_dsn, fresh_schema
) -> None:
    """A transaction takes an early position and stays open; a later one commits; a run reads while
    the first is open; then the first commits: the next run must still apply it."""
    spec = spec_for(items, fresh_schema)
    t = items.ident
    _run(spec, source_dsn, warehouse_dsn)
    with psycopg.connect(source_dsn) as early:
        early.execute(sql.SQL("UPDATE {} SET name = 'early position, late commit' WHERE id = 7").format(t))
        source_conn.execute(
            sql.SQL("UPDATE {} SET name = 'later position, early commit' WHERE id = 8").format(t)
        )
        source_conn.execute(sql.SQL("DELETE FROM {} WHERE id = 9").format(t))
        cap = capture.get_capture(source_conn, items)
        positions = source_conn.execute(
            sql.SQL("SELECT position FROM {} ORDER BY position").format(cap.log_ident)
        )
        visible = [r[0] for r in positions]
        assert len(visible) == 2  # the early transaction's entry is not visible yet, but it exists below them
        held = _run(spec, source_dsn, warehouse_dsn, wait=0)
        # A reader of "position > last" would have taken both visible entries and moved past the
        # early one; this reader stops below the open transaction and says so.
        assert held.changes == 0 and held.held_back_by is not None
        assert str(early.info.backend_pid) in held.held_back_by  # names the transaction holding it back
        assert held.position_after == held.position_before
        early.commit()
    report = _run(spec, source_dsn, warehouse_dsn)
    assert report.applied == {"update": 2, "delete": 1}
    rows = dict(
        warehouse_conn.execute(
            sql.SQL("SELECT id, name FROM {} WHERE id IN (7, 8, 9)").format(spec.target.ident)
        ).fetchall()
    )
    assert rows == {7: "early position, late commit", 8: "later position, early commit"}
    assert_equal(source_conn, warehouse_conn, spec)


def test_dagster_asset_applies_changes(
    items, source_conn, warehouse_conn, source_dsn, warehouse_dsn, fresh_schema
) -> None:
    from etl_assets.cdc.asset import build_cdc_asset

    spec = spec_for(items, fresh_schema)
    asset = build_cdc_asset(spec, "user.yaml")
    resources = {
        "source": PostgresResource(dsn=source_dsn, role="source", env_var="ETL_SOURCE_DSN"),
        "warehouse": PostgresResource(dsn=warehouse_dsn),
    }
    result = dg.materialize([asset], resources=resources)
    assert result.success
    source_conn.execute(sql.SQL("DELETE FROM {} WHERE id <= 10").format(items.ident))
    result = dg.materialize([asset], resources=resources)
    assert result.success
    meta = result.asset_materializations_for_node(asset.node_def.name)[0].metadata
    assert meta["changes_delete"].value == 10
    assert meta["pending_changes"].value == 0
    assert {"position_before", "position_after", "lag_seconds", "duration_seconds"} <= set(meta)
    assert_equal(source_conn, warehouse_conn, spec)


def test_updates_are_not_called_deletes(
    items, source_conn, warehouse_conn, source_dsn, warehouse_dsn, fresh_schema
) -> None:
    """40 updates and 7 deletes read as 40 updated and 7 deleted rows, in the report, its metadata and
    its summary line (the apply deletes and reinserts updated keys internally: not a delete)."""
    spec = spec_for(items, fresh_schema)
    first = _run(spec, source_dsn, warehouse_dsn)
    assert (first.rows_inserted, first.rows_updated, first.rows_deleted) == (300, 0, 0)
    assert first.metadata()["rows_replaced"] == 0
    t = items.ident
    source_conn.execute(sql.SQL("UPDATE {} SET name = 'forty' WHERE id BETWEEN 1 AND 40").format(t))
    source_conn.execute(sql.SQL("DELETE FROM {} WHERE id BETWEEN 101 AND 107").format(t))
    report = _run(spec, source_dsn, warehouse_dsn)
    assert report.applied == {"update": 40, "delete": 7}
    assert (report.rows_inserted, report.rows_updated, report.rows_deleted) == (0, 40, 7)
    meta = report.metadata()
    assert (meta["rows_inserted"], meta["rows_updated"], meta["rows_deleted"], meta["rows_written"]) == (
        0, 40, 7, 40
    )
    assert "rows 0 inserted, 40 updated, 7 deleted" in report.summary()
    assert f"position {first.position_after} -> {report.position_after}" in report.summary()
    assert "None" not in first.summary() and "position none -> " in first.summary()
    assert report.rows_total == 293 and assert_equal(source_conn, warehouse_conn, spec) == 293


def test_missing_capture_names_the_command(source_conn, source_dsn, warehouse_dsn, fresh_schema) -> None:
    ref = make_items(source_conn, 5)
    spec = spec_for(ref, fresh_schema)
    with pytest.raises(capture.CaptureMissing) as info:
        _run(spec, source_dsn, warehouse_dsn)
    assert f"etl-assets cdc install {ref}" in str(info.value)
    # The demo's automatic mode installs it and snapshots.
    report = _run(spec, source_dsn, warehouse_dsn, auto_install=True)
    assert report.mode == "snapshot" and report.rows_snapshot == 5


def test_batches_commit_separately_and_add_up(
    items, source_conn, warehouse_conn, source_dsn, warehouse_dsn, fresh_schema, monkeypatch
) -> None:
    spec = spec_for(items, fresh_schema)
    _run(spec, source_dsn, warehouse_dsn)
    t = items.ident
    source_conn.execute(sql.SQL("UPDATE {} SET name = 'b' WHERE id <= 20").format(t))
    source_conn.execute(sql.SQL("UPDATE {} SET id = id + 7000 WHERE id <= 5").format(t))
    source_conn.execute(sql.SQL("DELETE FROM {} WHERE id BETWEEN 6 AND 10").format(t))
    monkeypatch.setenv(sync.BATCH_VAR, "7")
    report = _run(spec, source_dsn, warehouse_dsn)
    assert report.applied == {"update": 20, "delete": 10, "insert": 5}
    assert report.rows_total == 295
    assert assert_equal(source_conn, warehouse_conn, spec) == 295
    # 35 log entries in three statements (20, 10, 5 entries), batches of 7: a batch ends only between
    # source transactions, so each holds one whole statement here.
    assert report.batches == 3


def test_hostile_identifiers(source_conn, warehouse_conn, source_dsn, warehouse_dsn, fresh_schema) -> None:
    """Capitals, spaces, dots and quotes in schema, table and column names, and a two-column key."""
    from etl_assets.io.tables import TableRef

    ref = TableRef('Src "Q". x', "My Items.v1")
    source_conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(ref.schema_ident))
    source_conn.execute(sql.SQL("CREATE SCHEMA {}").format(ref.schema_ident))
    source_conn.execute(
        sql.SQL(
            'CREATE TABLE {} ("Key A" int, "key.b" text, "Val ""q""" text, PRIMARY KEY ("Key A", "key.b"))'
        ).format(ref.ident)
    )
    source_conn.execute(
        sql.SQL("INSERT INTO {} SELECT g, 'k' || g, 'v' FROM generate_series(1, 20) g").format(ref.ident)
    )
    capture.install(source_conn, ref)
    spec = spec_for(ref, fresh_schema, 'Target "T"')
    spec = type(spec)(
        source=ref, extract="cdc", load="upsert", target=spec.target, primary_key=("Key A", "key.b")
    )
    _run(spec, source_dsn, warehouse_dsn)
    source_conn.execute(sql.SQL('UPDATE {} SET "Val ""q""" = \'w\' WHERE "Key A" < 5').format(ref.ident))
    source_conn.execute(sql.SQL('UPDATE {} SET "key.b" = \'moved\' WHERE "Key A" = 7').format(ref.ident))
    source_conn.execute(sql.SQL('DELETE FROM {} WHERE "Key A" > 15').format(ref.ident))
    report = _run(spec, source_dsn, warehouse_dsn)
    assert report.applied == {"update": 4, "delete": 6, "insert": 1}
    src = rows_of(source_conn, ref, "Key A")
    dst = rows_of(warehouse_conn, spec.target, "Key A")
    assert src == dst and len(dst) == 15
    capture.uninstall(source_conn, ref)
    source_conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(ref.schema_ident))


def test_long_transaction_of_another_database_does_not_hold_back(
    items, source_conn, warehouse_conn, source_dsn, warehouse_dsn, fresh_schema
) -> None:
    """pg_snapshot_xmin is server-wide; a writer open in another database (here the warehouse)
    cannot write this source's logs, so it must not stop the apply."""
    spec = spec_for(items, fresh_schema)
    _run(spec, source_dsn, warehouse_dsn)
    with psycopg.connect(warehouse_dsn) as other:
        other.execute("SELECT pg_current_xact_id()")  # an open transaction with an id, elsewhere
        source_conn.execute(sql.SQL("UPDATE {} SET name = 'z' WHERE id <= 3").format(items.ident))
        report = _run(spec, source_dsn, warehouse_dsn, wait=3)  # waits out brief ones (autoanalyze)
        assert report.held_back_by is None and report.applied == {"update": 3}
        other.rollback()
    assert_equal(source_conn, warehouse_conn, spec)


def test_source_columns_added_and_dropped(
    items, source_conn, warehouse_conn, source_dsn, warehouse_dsn, fresh_schema
) -> None:
    spec = spec_for(items, fresh_schema)
    _run(spec, source_dsn, warehouse_dsn)
    t = items.ident
    source_conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN note varchar(20)").format(t))
    source_conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN blob").format(t))
    source_conn.execute(sql.SQL("UPDATE {} SET note = 'n' || id WHERE id <= 4").format(t))
    source_conn.execute(sql.SQL("INSERT INTO {} (id, name, note) VALUES (999, 'new', 'x')").format(t))
    report = _run(spec, source_dsn, warehouse_dsn)
    assert any("columns added: note" in n for n in report.notes)
    assert any("no longer in the source" in n and "blob" in n for n in report.notes)
    typ = warehouse_conn.execute(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass "
        "AND attname = 'note'",
        (spec.target.regclass_text,),
    ).fetchone()[0]
    assert typ == "character varying(20)"
    rows = warehouse_conn.execute(
        sql.SQL("SELECT id, note, blob IS NULL FROM {} WHERE id IN (1, 4, 5, 999) ORDER BY id").format(
            spec.target.ident
        )
    ).fetchall()
    # Rows written after the drop have NULL in the dropped column; untouched rows keep their value.
    assert rows == [(1, "n1", True), (4, "n4", True), (5, None, False), (999, "x", True)]


def test_timestamptz_key_written_from_different_time_zones(
    source_conn, warehouse_conn, source_dsn, warehouse_dsn, fresh_schema
) -> None:
    from etl_assets.io.tables import TableRef

    ref = TableRef(f"tz_{fresh_schema}", "events")
    source_conn.execute(sql.SQL("CREATE SCHEMA {}").format(ref.schema_ident))
    source_conn.execute(sql.SQL("CREATE TABLE {} (at timestamptz PRIMARY KEY, v int)").format(ref.ident))
    source_conn.execute(sql.SQL("INSERT INTO {} VALUES ('2025-01-01 10:00+00', 1)").format(ref.ident))
    capture.install(source_conn, ref)
    spec = type(spec_for(ref, fresh_schema))(
        source=ref, extract="cdc", load="upsert", target=TableRef(fresh_schema, "events"), primary_key=("at",)
    )
    _run(spec, source_dsn, warehouse_dsn)
    with source_conn.transaction():
        source_conn.execute("SET LOCAL TimeZone = 'Asia/Tokyo'")
        source_conn.execute(sql.SQL("UPDATE {} SET v = 2").format(ref.ident))
    with source_conn.transaction():
        source_conn.execute("SET LOCAL TimeZone = 'America/New_York'")
        source_conn.execute(sql.SQL("DELETE FROM {}").format(ref.ident))
    report = _run(spec, source_dsn, warehouse_dsn)
    assert report.applied == {"update": 1, "delete": 1}
    assert rows_of(warehouse_conn, spec.target, "at") == [] == rows_of(source_conn, ref, "at")
    source_conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(ref.schema_ident))


def test_snapshot_into_an_existing_wider_target(
    items, source_conn, warehouse_conn, source_dsn, warehouse_dsn, fresh_schema
) -> None:
    """A target created earlier with wider types (numeric for bigint, text for numeric) is loaded
    through text COPY, then kept up to date."""
    spec = spec_for(items, fresh_schema)
    warehouse_conn.execute(
        sql.SQL(
            "CREATE TABLE {} (id numeric PRIMARY KEY, name text, amount text, tags text[], doc jsonb, "
            "seen_at timestamptz, blob bytea)"
        ).format(spec.target.ident)
    )
    assert _run(spec, source_dsn, warehouse_dsn).rows_snapshot == 300
    source_conn.execute(sql.SQL("UPDATE {} SET amount = 7.5 WHERE id = 1").format(items.ident))
    _run(spec, source_dsn, warehouse_dsn)
    got = warehouse_conn.execute(
        sql.SQL("SELECT count(*), sum(id), max(amount) FILTER (WHERE id = 1) FROM {}").format(
            spec.target.ident
        )
    ).fetchone()
    assert got == (300, 45150, "7.50")


def test_snapshot_value_the_target_rejects_is_named_masked_and_writes_nothing(
    items, source_conn, warehouse_conn, source_dsn, warehouse_dsn, fresh_schema
) -> None:
    """The snapshot's COPY is the extract fast path's (io/transfer.stream_copy): a value an existing
    target cannot hold fails as one SchemaMismatch naming the target, with the value masked."""
    from etl_assets.errors import SchemaMismatch

    spec = spec_for(items, fresh_schema)
    warehouse_conn.execute(
        sql.SQL(
            "CREATE TABLE {} (id bigint PRIMARY KEY, name text, amount numeric(4,2), tags text[], doc jsonb, "
            "seen_at timestamptz, blob bytea)"
        ).format(spec.target.ident)
    )
    source_conn.execute(sql.SQL("UPDATE {} SET amount = 98765.43 WHERE id = 7").format(items.ident))
    with pytest.raises(SchemaMismatch, match="PostgreSQL rejected the data for") as err:
        _run(spec, source_dsn, warehouse_dsn)
    assert "98765.43" not in str(err.value) and err.value.__cause__ is None
    count = sql.SQL("SELECT count(*) FROM {}").format(spec.target.ident)
    assert warehouse_conn.execute(count).fetchone()[0] == 0


def test_only_the_shipped_demo_declaration_installs_capture_itself(tmp_path, monkeypatch) -> None:
    from etl_assets.cdc.asset import is_shipped_demo
    from etl_assets.pipeline_config import load_pipelines, pipelines_path

    monkeypatch.delenv("ETL_PIPELINES", raising=False)
    shipped = load_pipelines(pipelines_path())
    assert is_shipped_demo(shipped.path)
    assert [str(t.source) for t in shipped.tables if t.extract == "cdc"] == ["shop.customers"]
    copy = tmp_path / "mine.yaml"
    copy.write_text(pipelines_path().read_text())
    assert not is_shipped_demo(str(copy))


def test_keys_and_columns_of_every_kind_of_type(
    source_conn, warehouse_conn, source_dsn, warehouse_dsn, fresh_schema
) -> None:
    """The net effect is typed on the source: a key of an array (read back with
    jsonb_populate_record), a uuid and an enum (a user-defined type: text in the warehouse), and
    data columns of interval, numeric, jsonb and the enum, through inserts, updates, key moves,
    deletes and a re-insert of a deleted key, replay exactly."""
    from etl_assets.io.tables import TableRef

    ref = TableRef(f"kinds_{fresh_schema}", "things")
    t = ref.ident
    mood = sql.Identifier(ref.schema, "mood")
    source_conn.execute(sql.SQL("CREATE SCHEMA {}").format(ref.schema_ident))
    source_conn.execute(sql.SQL("CREATE TYPE {} AS ENUM ('sad', 'ok', 'happy')").format(mood))
    source_conn.execute(
        sql.SQL(
            "CREATE TABLE {t} (tags text[], u uuid, m {mood}, span interval, n numeric, doc jsonb, "
            "feel {mood}, PRIMARY KEY (tags, u, m))"
        ).format(t=t, mood=mood)
    )
    source_conn.execute(
        sql.SQL(
            "INSERT INTO {} SELECT ARRAY['a' || g, 'b'], md5(g::text)::uuid, 'ok', g * interval '1 hour', "
            "g / 3.0, jsonb_build_object('g', g), 'sad' FROM generate_series(1, 30) g"
        ).format(t)
    )
    cap, _ = capture.install(source_conn, ref)
    # The enum key column is user-defined: the UPDATE trigger matches OLD and NEW on the jsonb keys.
    assert not capture._typed_key_join(source_conn, cap.relid, cap.key_columns)
    spec = type(spec_for(ref, fresh_schema))(
        source=ref, extract="cdc", load="upsert", target=TableRef(fresh_schema, "things"),
        primary_key=("tags", "u", "m"),
    )
    _run(spec, source_dsn, warehouse_dsn)
    source_conn.execute(sql.SQL("UPDATE {} SET feel = 'happy', span = span * 2 WHERE n < 3").format(t))
    source_conn.execute(sql.SQL("UPDATE {} SET tags = tags || 'moved'::text WHERE n > 9").format(t))
    source_conn.execute(sql.SQL("UPDATE {} SET m = 'happy' WHERE tags[1] = 'a5'").format(t))
    source_conn.execute(sql.SQL("DELETE FROM {} WHERE tags[1] IN ('a6', 'a7')").format(t))
    with source_conn.transaction():
        source_conn.execute(sql.SQL("DELETE FROM {} WHERE tags[1] = 'a8'").format(t))
        source_conn.execute(
            sql.SQL(
                "INSERT INTO {} VALUES (ARRAY['a8', 'b'], md5('8')::uuid, 'ok', '1 day', 8, '[1]', 'happy')"
            ).format(t)
        )
    report = _run(spec, source_dsn, warehouse_dsn)
    assert report.applied == {"update": 8, "delete": 7, "insert": 5}

    def rows(conn: psycopg.Connection, table: TableRef) -> list[tuple]:
        conn.execute("SET TimeZone = 'UTC'")
        query = sql.SQL(
            "SELECT tags, u, m::text, span, n, doc, feel::text FROM {} ORDER BY tags, u, m::text"
        ).format(table.ident)
        return conn.execute(query).fetchall()

    assert rows(source_conn, ref) == rows(warehouse_conn, spec.target)
    assert len(rows(warehouse_conn, spec.target)) == 28
    capture.uninstall(source_conn, ref)
    source_conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(ref.schema_ident))
