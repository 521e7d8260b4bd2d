"""Capture management on real PostgreSQL: install/uninstall and their --dry-run SQL, status, prune
that never removes an unapplied change, and loud failures when the log has a gap."""

from __future__ import annotations

import secrets
import threading
import time

import psycopg
import pytest
from psycopg import sql

from etl_assets.cdc import capture, reader, sync
from etl_assets.cli import main
from etl_assets.errors import ConfigError
from etl_assets.extract.state import clear_state
from etl_assets.io.tables import TableRef
from etl_assets_tests.cdc_helpers import assert_equal, make_items, spec_for


def _run(spec, source_dsn, warehouse_dsn, **kw) -> sync.CdcReport:
    kw.setdefault("wait", 2)
    return sync.sync_table(
        spec,
        sync.dsn_connector(source_dsn, "source", "S"),
        sync.dsn_connector(warehouse_dsn, "warehouse", "W"),
        **kw,
    )


def _log_positions(conn: psycopg.Connection, cap: capture.Capture) -> list[int]:
    return [r[0] for r in conn.execute(sql.SQL("SELECT position FROM {} ORDER BY 1").format(cap.log_ident))]


_STATEMENT_TRIGGERS = sorted([*capture.STATEMENT_TRIGGERS.values(), capture.TRUNCATE_TRIGGER])


def _triggers(conn: psycopg.Connection, ref: TableRef) -> list[str]:
    return sorted(
        r[0]
        for r in conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND NOT tgisinternal",
            (ref.regclass_text,),
        )
    )


def test_install_uninstall_and_dry_run(source_conn, etl_env, capsys) -> None:
    ref = make_items(source_conn, 3)
    # --dry-run prints the SQL and changes nothing.
    assert main(["cdc", "install", str(ref), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert (
        "CREATE TRIGGER" in out
        and "SECURITY DEFINER" in out
        and "CACHE 1" in out
        and out.count("COMMIT;") == 1
    )
    assert _triggers(source_conn, ref) == []
    assert capture.get_capture(source_conn, ref) is None

    assert main(["cdc", "install", str(ref)]) == 0
    assert "capture installed" in capsys.readouterr().out
    assert _triggers(source_conn, ref) == _STATEMENT_TRIGGERS
    cap = capture.get_capture(source_conn, ref)
    assert cap is not None and cap.key_columns == ("id",)
    # Installing again is a no-op that keeps the same log.
    assert main(["cdc", "install", str(ref)]) == 0
    assert "already installed" in capsys.readouterr().out
    assert capture.get_capture(source_conn, ref).log_id == cap.log_id

    # Changes by an application role without any privilege on etl_cdc are logged (SECURITY DEFINER).
    role = sql.Identifier(f"app_{secrets.token_hex(4)}")
    source_conn.execute(sql.SQL("CREATE ROLE {}").format(role))
    try:
        source_conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(ref.schema_ident, role))
        source_conn.execute(sql.SQL("GRANT SELECT, UPDATE, DELETE ON {} TO {}").format(ref.ident, role))
        with source_conn.transaction():
            source_conn.execute(sql.SQL("SET LOCAL ROLE {}").format(role))
            source_conn.execute(sql.SQL("UPDATE {} SET name = 'x' WHERE id = 1").format(ref.ident))
            source_conn.execute(sql.SQL("UPDATE {} SET id = 10 WHERE id = 2").format(ref.ident))
            source_conn.execute(sql.SQL("DELETE FROM {} WHERE id = 3").format(ref.ident))
            with pytest.raises(psycopg.errors.InsufficientPrivilege), source_conn.transaction():
                source_conn.execute(sql.SQL("SELECT * FROM {}").format(cap.log_ident))
    finally:
        source_conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
        source_conn.execute(sql.SQL("DROP ROLE {}").format(role))
    rows = source_conn.execute(
        sql.SQL("SELECT op, key, old_key, data->>'name' FROM {} ORDER BY position").format(cap.log_ident)
    ).fetchall()
    # The update that changed the key is logged as the delete of the old key and the insert of the
    # new one (one statement: their order among themselves does not matter, the keys differ).
    assert rows[0] == ("U", {"id": 1}, None, "x")
    assert sorted(rows[1:3], key=str) == [("D", {"id": 2}, None, None), ("I", {"id": 10}, None, "name 2")]
    assert rows[3] == ("D", {"id": 3}, None, None)

    assert main(["cdc", "status", str(ref)]) == 0
    out = capsys.readouterr().out
    assert "4 entries" in out and "no consumer yet" in out
    first = out.splitlines()[0]
    assert first.startswith(f"{ref}: log etl_cdc.")
    assert first.endswith(", 4 entries, positions 1..4, never pruned")
    assert "None" not in out

    assert main(["cdc", "uninstall", str(ref), "--dry-run"]) == 0
    assert "DROP TRIGGER" in capsys.readouterr().out
    assert _triggers(source_conn, ref) != []
    assert main(["cdc", "uninstall", str(ref)]) == 0
    assert _triggers(source_conn, ref) == []
    assert capture.get_capture(source_conn, ref) is None
    assert source_conn.execute("SELECT to_regclass(%s)", (f"etl_cdc.{cap.log_table}",)).fetchone()[0] is None


def test_install_refuses_tables_without_a_usable_key(source_conn) -> None:
    source_conn.execute("CREATE SCHEMA IF NOT EXISTS nokey")
    source_conn.execute("DROP TABLE IF EXISTS nokey.t, nokey.d")
    source_conn.execute("CREATE TABLE nokey.t (a int, b text)")
    source_conn.execute("CREATE TABLE nokey.d (a int, CONSTRAINT d_u UNIQUE (a) DEFERRABLE)")
    with pytest.raises(Exception, match="no primary key"):
        capture.install(source_conn, TableRef("nokey", "t"))
    with pytest.raises(Exception, match="deferrable"):
        capture.install(source_conn, TableRef("nokey", "d"), ["a"])
    with pytest.raises(Exception, match="does not exist"):
        capture.install(source_conn, TableRef("nokey", "missing"))


def test_prune_never_removes_an_unapplied_change(
    source_conn, warehouse_conn, source_dsn, warehouse_dsn, fresh_schema
) -> None:
    ref = make_items(source_conn, 50)
    cap, _ = capture.install(source_conn, ref)
    # No consumer yet: prune removes nothing.
    source_conn.execute(sql.SQL("UPDATE {} SET name = 'a' WHERE id <= 10").format(ref.ident))
    result, _ = capture.prune(source_conn, ref)
    assert result.removed == 0 and "no consumer" in result.reason
    assert len(_log_positions(source_conn, cap)) == 10

    fast, slow = spec_for(ref, fresh_schema, "fast"), spec_for(ref, fresh_schema, "slow")
    _run(fast, source_dsn, warehouse_dsn, prune_after=False)
    _run(slow, source_dsn, warehouse_dsn, prune_after=False)
    source_conn.execute(sql.SQL("UPDATE {} SET name = 'b' WHERE id <= 20").format(ref.ident))
    source_conn.execute(sql.SQL("DELETE FROM {} WHERE id > 45").format(ref.ident))
    report = _run(fast, source_dsn, warehouse_dsn, prune_after=False)
    assert report.changes == 25
    slow_position = warehouse_conn.execute(
        "SELECT (state->>'position')::bigint FROM etl.state WHERE target = %s", (str(slow.target),)
    ).fetchone()[0]
    before = _log_positions(source_conn, cap)
    unapplied_by_slow = [p for p in before if p > slow_position]
    assert len(unapplied_by_slow) == 25

    result, _ = capture.prune(source_conn, ref)
    after = _log_positions(source_conn, cap)
    assert set(unapplied_by_slow) <= set(after)  # every entry the slow consumer needs is still there
    assert all(p > slow_position for p in after)  # and only what every consumer applied went
    assert result.removed == len(before) - len(after)

    # The slow consumer catches up; then prune can remove everything.
    report = _run(slow, source_dsn, warehouse_dsn, prune_after=True)
    assert report.changes == 25
    assert_equal(source_conn, warehouse_conn, slow)
    assert_equal(source_conn, warehouse_conn, fast)
    assert _log_positions(source_conn, cap) == []


def test_gap_detection_fails_loudly_then_reset_recovers(
    source_conn, warehouse_conn, source_dsn, warehouse_dsn, fresh_schema
) -> None:
    ref = make_items(source_conn, 20)
    capture.install(source_conn, ref)
    spec = spec_for(ref, fresh_schema)
    _run(spec, source_dsn, warehouse_dsn)

    # 1. Entries pruned beyond what this target applied (another tool, or a consumer row lost).
    source_conn.execute(sql.SQL("UPDATE {} SET name = 'lost?' WHERE id <= 5").format(ref.ident))
    cap = capture.get_capture(source_conn, ref)
    source_conn.execute(sql.SQL("DELETE FROM {}").format(cap.log_ident))
    source_conn.execute(
        "UPDATE etl_cdc.capture SET pruned_through = 1000000 WHERE log_id = %s", (cap.log_id,)
    )
    with pytest.raises(reader.ChangeLogGap) as info:
        _run(spec, source_dsn, warehouse_dsn)
    assert "pruned through position 1000000" in str(info.value)
    assert f"etl-assets reset {spec.target}" in str(info.value)

    # 2. The log recreated (uninstall + install): a new log id.
    capture.uninstall(source_conn, ref)
    capture.install(source_conn, ref)
    with pytest.raises(reader.ChangeLogGap) as info:
        _run(spec, source_dsn, warehouse_dsn)
    assert "was recreated" in str(info.value) and f"etl-assets reset {spec.target}" in str(info.value)

    # 3. Capture removed: the message names the install command.
    capture.uninstall(source_conn, ref)
    with pytest.raises(capture.CaptureMissing, match=f"etl-assets cdc install {ref}"):
        _run(spec, source_dsn, warehouse_dsn)

    # `etl-assets reset` forgets the state: the next run takes a new snapshot and is exact again.
    capture.install(source_conn, ref)
    with psycopg.connect(warehouse_dsn) as conn:
        clear_state(conn, spec.target)
        conn.commit()
    report = _run(spec, source_dsn, warehouse_dsn)
    assert report.mode == "snapshot"
    assert_equal(source_conn, warehouse_conn, spec)


def test_status_and_prune_commands(source_conn, etl_env, capsys) -> None:
    ref = make_items(source_conn, 10)
    spec = spec_for(ref, "cdc_cli_target")
    assert main(["cdc", "install", str(ref)]) == 0
    _run(spec, etl_env["ETL_SOURCE_DSN"], etl_env["ETL_WAREHOUSE_DSN"])
    source_conn.execute(sql.SQL("DELETE FROM {} WHERE id <= 4").format(ref.ident))
    capsys.readouterr()
    assert main(["cdc", "status", str(ref)]) == 0
    out = capsys.readouterr().out
    assert "-> cdc_cli_target.items" in out and "4 pending" in out and "oldest unapplied" in out
    assert "  -> cdc_cli_target.items: applied through position 0, 4 pending, oldest unapplied #1 at " in out
    assert out.rstrip().endswith(" ago)") and "None" not in out
    assert main(["cdc", "prune", str(ref), "--dry-run"]) == 0
    assert "nothing applied beyond" in capsys.readouterr().out
    _run(spec, etl_env["ETL_SOURCE_DSN"], etl_env["ETL_WAREHOUSE_DSN"], prune_after=False)
    assert main(["cdc", "prune", str(ref), "--dry-run"]) == 0
    assert "DELETE FROM" in capsys.readouterr().out
    assert main(["cdc", "prune", str(ref)]) == 0
    assert "removed 4 applied entries" in capsys.readouterr().out
    assert main(["cdc", "status", str(ref)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].endswith(", 0 entries, empty, pruned through 4"), out
    assert "applied through position 4, 0 pending, up to date" in out
    assert main(["cdc", "status", "no_such.table"]) == 0
    assert main(["cdc", "install", "nodot"]) == 2


def test_dry_run_sql_run_by_a_dba_installs_working_capture(
    source_conn, warehouse_conn, source_dsn, warehouse_dsn, fresh_schema
) -> None:
    """The --dry-run script is complete: run as-is (as a DBA would with psql), capture works."""
    ref = make_items(source_conn, 30)
    statements, planned = capture.install_statements(source_conn, ref)
    script = capture.render(source_conn, statements)
    assert capture.get_capture(source_conn, ref) is None
    source_conn.execute(script)  # one multi-statement script: BEGIN; ...; COMMIT;
    cap = capture.get_capture(source_conn, ref)
    assert cap is not None and cap.log_id == planned.log_id and capture.health(source_conn, cap).intact
    spec = spec_for(ref, fresh_schema)
    _run(spec, source_dsn, warehouse_dsn)
    source_conn.execute(sql.SQL("UPDATE {} SET id = id + 100 WHERE id <= 3").format(ref.ident))
    # A key-changing update is logged as the delete of the old key and the insert of the new one.
    assert _run(spec, source_dsn, warehouse_dsn).applied == {"delete": 3, "insert": 3}
    assert_equal(source_conn, warehouse_conn, spec)


def test_automatic_retention_can_be_turned_off(
    source_conn, warehouse_conn, source_dsn, warehouse_dsn, fresh_schema, monkeypatch
) -> None:
    ref = make_items(source_conn, 10)
    cap, _ = capture.install(source_conn, ref)
    spec = spec_for(ref, fresh_schema)
    _run(spec, source_dsn, warehouse_dsn)
    source_conn.execute(sql.SQL("UPDATE {} SET name = 'k' WHERE id <= 4").format(ref.ident))
    monkeypatch.setenv(sync.AUTO_PRUNE_VAR, "0")
    _run(spec, source_dsn, warehouse_dsn)
    assert len(_log_positions(source_conn, cap)) == 4  # applied, kept
    monkeypatch.delenv(sync.AUTO_PRUNE_VAR)
    source_conn.execute(sql.SQL("DELETE FROM {} WHERE id = 9").format(ref.ident))
    _run(spec, source_dsn, warehouse_dsn)
    assert _log_positions(source_conn, cap) == []  # default: applied entries are pruned after each run
    assert_equal(source_conn, warehouse_conn, spec)


def test_declared_key_must_match_the_captured_key(
    source_conn, source_dsn, warehouse_dsn, fresh_schema
) -> None:
    ref = make_items(source_conn, 5)
    source_conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT name_u UNIQUE (name)").format(ref.ident))
    capture.install(source_conn, ref)  # the primary key: id
    spec = spec_for(ref, fresh_schema)
    spec = type(spec)(source=ref, extract="cdc", load="upsert", target=spec.target, primary_key=("name",))
    with pytest.raises(Exception, match=r"logs changes by key \['id'\].*primary_key \['name'\]"):
        _run(spec, source_dsn, warehouse_dsn)


def _partitioned_accounts(conn: psycopg.Connection) -> TableRef:
    """``p_xxxx.accounts`` partitioned by range of id into partitions 1..100 and 101..300; rows 1..200."""
    schema = f"p_{secrets.token_hex(4)}"
    ref = TableRef(schema, "accounts")
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    conn.execute(
        sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, v text) PARTITION BY RANGE (id)").format(ref.ident)
    )
    for name, lo, hi in (("accounts_a", 1, 101), ("accounts_b", 101, 301)):
        conn.execute(
            sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                sql.Identifier(schema, name), ref.ident, sql.Literal(lo), sql.Literal(hi)
            )
        )
    conn.execute(
        sql.SQL("INSERT INTO {} SELECT g, 'v' || g FROM generate_series(1, 200) g").format(ref.ident)
    )
    return ref


def test_install_refuses_a_partitioned_table_with_one_line(source_conn, etl_env, capsys) -> None:
    ref = _partitioned_accounts(source_conn)
    assert main(["cdc", "install", str(ref)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert str(ref) in err and "is partitioned" in err and "extract: incremental" in err
    assert "accounts_a" in err and "accounts_b" in err
    assert capture.get_capture(source_conn, ref) is None and _triggers(source_conn, ref) == []
    # --dry-run refuses the same way, printing no SQL.
    assert main(["cdc", "install", str(ref), "--dry-run"]) == 2
    out = capsys.readouterr()
    assert "CREATE TRIGGER" not in out.out and "is partitioned" in out.err
    # Views and tables with inheritance children are refused too, each saying why.
    view = TableRef(ref.schema, "accounts_v")
    source_conn.execute(sql.SQL("CREATE VIEW {} AS SELECT * FROM {}").format(view.ident, ref.ident))
    with pytest.raises(ConfigError, match=r"is a view, not an ordinary table.*extract: incremental"):
        capture.install(source_conn, view)
    parent, child = TableRef(ref.schema, "parent"), TableRef(ref.schema, "child")
    source_conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY)").format(parent.ident))
    source_conn.execute(sql.SQL("CREATE TABLE {} () INHERITS ({})").format(child.ident, parent.ident))
    with pytest.raises(ConfigError, match=r"inheritance child tables \(.*child\)"):
        capture.install(source_conn, parent)


def test_a_partition_itself_is_captured_including_a_parent_truncate(
    source_conn, warehouse_conn, source_dsn, warehouse_dsn, fresh_schema
) -> None:
    """What stays supported: one partition as the source. Writes routed through the parent, a row
    moved out of it and TRUNCATE of the parent all fire the partition's own triggers."""
    parent = _partitioned_accounts(source_conn)
    part = TableRef(parent.schema, "accounts_a")
    capture.install(source_conn, part)
    spec = spec_for(part, fresh_schema)
    _run(spec, source_dsn, warehouse_dsn)
    source_conn.execute(sql.SQL("UPDATE {} SET v = 'x' WHERE id <= 10").format(parent.ident))
    moved = sql.SQL("UPDATE {} SET id = id + 200 WHERE id > 95 AND id < 101").format(parent.ident)
    source_conn.execute(moved)
    assert _run(spec, source_dsn, warehouse_dsn).applied == {"update": 10, "delete": 5}
    assert assert_equal(source_conn, warehouse_conn, spec) == 95
    source_conn.execute(sql.SQL("TRUNCATE {}").format(parent.ident))
    source_conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'after')").format(parent.ident))
    assert _run(spec, source_dsn, warehouse_dsn).applied == {"truncate": 1, "insert": 1}
    assert assert_equal(source_conn, warehouse_conn, spec) == 1


def test_health_detects_a_partitioned_capture_and_new_inheritance_children(
    source_conn, warehouse_conn, source_dsn, warehouse_dsn, fresh_schema, etl_env, capsys, monkeypatch
) -> None:
    """The issue's repro: capture installed on a partitioned table (as install allowed before it
    refused them), then one partition truncated: 200 -> 100 rows in the source with no log entry.
    `cdc status` and the run both say the capture cannot be trusted, instead of applying nothing."""
    ref = _partitioned_accounts(source_conn)
    spec = spec_for(ref, fresh_schema)
    with monkeypatch.context() as m:
        m.setattr(capture, "unsupported_reason", lambda *a: None)  # an older version: no refusal
        cap, _ = capture.install(source_conn, ref)
        assert _run(spec, source_dsn, warehouse_dsn).rows_snapshot == 200
    source_conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(ref.schema, "accounts_b")))
    assert source_conn.execute(sql.SQL("SELECT count(*) FROM {}").format(ref.ident)).fetchone()[0] == 100
    assert _log_positions(source_conn, cap) == []  # the truncate left no trace in the log

    capsys.readouterr()
    assert main(["cdc", "status", str(ref)]) == 1
    out = capsys.readouterr().out
    assert f"BROKEN: Source table {ref} is partitioned (2 partitions" in out
    with pytest.raises(capture.CaptureMissing) as info:
        _run(spec, source_dsn, warehouse_dsn)
    assert "is partitioned" in str(info.value) and f"etl-assets cdc uninstall {ref}" in str(info.value)
    # The demo's automatic mode would reinstall: it is refused with the same reason.
    with pytest.raises(ConfigError, match="is partitioned"):
        _run(spec, source_dsn, warehouse_dsn, auto_install=True)

    # An ordinary captured table that later gets an inheritance child is reported the same way.
    items = make_items(source_conn, 5)
    capture.install(source_conn, items)
    assert main(["cdc", "status", str(items)]) == 0
    child = TableRef(items.schema, "items_2025")
    source_conn.execute(sql.SQL("CREATE TABLE {} () INHERITS ({})").format(child.ident, items.ident))
    capsys.readouterr()
    assert main(["cdc", "status", str(items)]) == 1
    assert f"inheritance child tables ({child}" in capsys.readouterr().out
    with pytest.raises(capture.CaptureMissing, match="inheritance child tables"):
        _run(spec_for(items, fresh_schema, "items2"), source_dsn, warehouse_dsn)


def test_statement_triggers_log_set_based_key_moves(
    source_conn, warehouse_conn, source_dsn, warehouse_dsn, fresh_schema
) -> None:
    """One statement whose new keys overlap its old ones (every row moves down one key): OLD and NEW
    are matched by key, so 2..4 are updates carrying the rows that moved into them, 5 a delete and
    1 an insert; replayed, the target equals the source. A statement changing no row logs nothing
    and takes no transaction id."""
    ref = make_items(source_conn, 10)
    cap, _ = capture.install(source_conn, ref)
    spec = spec_for(ref, fresh_schema)
    _run(spec, source_dsn, warehouse_dsn)
    t = ref.ident
    source_conn.execute(sql.SQL("DELETE FROM {} WHERE id = 1").format(t))
    before = len(_log_positions(source_conn, cap))
    source_conn.execute(sql.SQL("UPDATE {} SET id = id - 1 WHERE id BETWEEN 2 AND 5").format(t))
    logged = source_conn.execute(
        sql.SQL("SELECT op, (key->>'id')::int, data->>'name' FROM {} ORDER BY 2 OFFSET %s").format(
            cap.log_ident
        ),
        (before,),
    ).fetchall()
    ops = sorted(logged)
    assert ops == [
        ("D", 5, None),
        ("I", 1, "name 2"),
        ("U", 2, "name 3"),
        ("U", 3, "name 4"),
        ("U", 4, "name 5"),
    ]
    with source_conn.transaction():
        source_conn.execute(sql.SQL("UPDATE {} SET name = 'none' WHERE false").format(t))
        source_conn.execute(sql.SQL("DELETE FROM {} WHERE id < 0").format(t))
        assert source_conn.execute("SELECT pg_current_xact_id_if_assigned()").fetchone()[0] is None
    assert len(_log_positions(source_conn, cap)) == before + 5
    assert _run(spec, source_dsn, warehouse_dsn).applied == {"delete": 2, "insert": 1, "update": 3}
    assert assert_equal(source_conn, warehouse_conn, spec) == 9


def test_install_upgrades_row_trigger_capture_without_losing_a_change(
    source_conn, warehouse_conn, source_dsn, warehouse_dsn, fresh_schema
) -> None:
    """A capture installed by an earlier version (one row trigger) is upgraded by `cdc install` while
    a writer keeps changing the table: same log, statement triggers, and every change applied."""
    ref = make_items(source_conn, 200)
    old, _ = capture.install(source_conn, ref, row_level=True)
    assert _triggers(source_conn, ref) == [capture.ROW_TRIGGER, capture.TRUNCATE_TRIGGER]
    assert capture.health(source_conn, old).row_level
    spec = spec_for(ref, fresh_schema)
    _run(spec, source_dsn, warehouse_dsn)
    stop = threading.Event()
    written = [0]
    update = sql.SQL("UPDATE {} SET name = %s WHERE id = %s").format(ref.ident)
    insert = sql.SQL("INSERT INTO {} (id, name) VALUES (%s, 'w')").format(ref.ident)
    move = sql.SQL("UPDATE {} SET id = id + 50000 WHERE id = %s").format(ref.ident)

    def writer() -> None:
        with psycopg.connect(source_dsn, autocommit=True) as conn:
            while not stop.is_set() or written[0] < 100:
                i = written[0]
                conn.execute(update, (f"w{i}", i % 200 + 1))
                conn.execute(insert, (10_000 + i,))
                if i % 7 == 0:
                    conn.execute(move, (10_000 + i,))
                written[0] = i + 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while written[0] < 30:
            time.sleep(0.01)
        new, changed = capture.install(source_conn, ref)
        at_upgrade = written[0]
    finally:
        stop.set()
        thread.join()
    assert changed and new.log_id == old.log_id and written[0] > at_upgrade
    assert _triggers(source_conn, ref) == _STATEMENT_TRIGGERS
    assert not capture.health(source_conn, new).row_level
    report = _run(spec, source_dsn, warehouse_dsn)
    assert report.mode == "apply" and report.pending == 0
    assert assert_equal(source_conn, warehouse_conn, spec) == 200 + written[0]
    assert capture.install(source_conn, ref)[1] is False  # nothing left to upgrade


def test_a_captured_table_attached_as_a_partition_is_reported(
    source_conn, warehouse_conn, source_dsn, warehouse_dsn, fresh_schema, etl_env, capsys
) -> None:
    """Statement triggers of a partition do not fire for rows written through its parent: a table
    captured with them and later attached as a partition is reported broken; reinstalling captures
    it with row triggers (which do fire), and a new snapshot makes the target exact again."""
    parent = _partitioned_accounts(source_conn)
    table = TableRef(parent.schema, "accounts_c")
    source_conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, v text)").format(table.ident))
    source_conn.execute(sql.SQL("INSERT INTO {} VALUES (301, 'c')").format(table.ident))
    capture.install(source_conn, table)
    attach = sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM (301) TO (401)")
    source_conn.execute(attach.format(parent.ident, table.ident))
    source_conn.execute(sql.SQL("INSERT INTO {} VALUES (302, 'through the parent')").format(parent.ident))
    capsys.readouterr()
    assert main(["cdc", "status", str(table)]) == 1
    assert f"became a partition of {parent}" in capsys.readouterr().out
    spec = spec_for(table, fresh_schema)
    with pytest.raises(capture.CaptureMissing, match="became a partition"):
        _run(spec, source_dsn, warehouse_dsn)
    cap, changed = capture.install(source_conn, table)  # a new log, row triggers
    assert changed and capture.health(source_conn, cap).row_level
    _run(spec, source_dsn, warehouse_dsn)
    source_conn.execute(sql.SQL("UPDATE {} SET v = 'x' WHERE id > 300").format(parent.ident))
    assert _run(spec, source_dsn, warehouse_dsn).applied == {"update": 2}
    assert assert_equal(source_conn, warehouse_conn, spec) == 2


def test_merge_and_upsert_statements(
    source_conn, warehouse_conn, source_dsn, warehouse_dsn, fresh_schema
) -> None:
    """MERGE fires the statement triggers of its actions in the order delete, update, insert, so a
    key deleted and inserted again by one MERGE is logged delete first: the target keeps the row."""
    ref = make_items(source_conn, 5)
    capture.install(source_conn, ref)
    spec = spec_for(ref, fresh_schema)
    _run(spec, source_dsn, warehouse_dsn)
    source_conn.execute(
        sql.SQL(
            """MERGE INTO {t} t
               USING (VALUES (1, 'name 1', 'gone'), (1, 'no match', 'reinserted'), (2, 'name 2', 'kept'))
                     AS s(id, name, note) ON t.name = s.name
               WHEN MATCHED AND s.note = 'gone' THEN DELETE
               WHEN MATCHED THEN UPDATE SET name = s.note
               WHEN NOT MATCHED THEN INSERT (id, name) VALUES (s.id, s.note)"""
        ).format(t=ref.ident)
    )
    assert _run(spec, source_dsn, warehouse_dsn).applied == {"delete": 1, "update": 1, "insert": 1}
    assert assert_equal(source_conn, warehouse_conn, spec) == 5
    query = sql.SQL("SELECT id, name FROM {} WHERE id <= 2").format(spec.target.ident)
    names = dict(warehouse_conn.execute(query))
    assert names == {1: "reinserted", 2: "kept"}
    # INSERT … ON CONFLICT DO UPDATE fires the update and the insert statement triggers.
    source_conn.execute(
        sql.SQL(
            "INSERT INTO {} (id, name) VALUES (2, 'upserted'), (9, 'new') "
            "ON CONFLICT (id) DO UPDATE SET name = excluded.name"
        ).format(ref.ident)
    )
    assert _run(spec, source_dsn, warehouse_dsn).applied == {"update": 1, "insert": 1}
    assert assert_equal(source_conn, warehouse_conn, spec) == 6


def test_one_row_updates_after_a_large_one_and_composite_keys(
    source_conn, warehouse_conn, source_dsn, warehouse_dsn, fresh_schema
) -> None:
    """The UPDATE trigger logs a one-row statement with its own statement and a many-row one through
    ``EXECUTE``: in one session, a many-row update, then one-row updates (one moving its key), then a
    many-row key move again are each logged exactly (U for a kept key, D + I for a moved one) and
    replay to the source. A composite key is matched column by column."""
    ref = make_items(source_conn, 300)
    cap, _ = capture.install(source_conn, ref)
    spec = spec_for(ref, fresh_schema)
    _run(spec, source_dsn, warehouse_dsn)
    t = ref.ident
    before = len(_log_positions(source_conn, cap))
    source_conn.execute(sql.SQL("UPDATE {} SET amount = amount + 1").format(t))
    source_conn.execute(sql.SQL("UPDATE {} SET name = 'one' WHERE id = 7").format(t))
    source_conn.execute(sql.SQL("UPDATE {} SET id = 1007 WHERE id = 8").format(t))
    source_conn.execute(sql.SQL("UPDATE {} SET id = id + 2000 WHERE id BETWEEN 291 AND 300").format(t))
    logged = source_conn.execute(
        sql.SQL("SELECT op, (key->>'id')::int, data->>'name' FROM {} ORDER BY position OFFSET %s").format(
            cap.log_ident
        ),
        (before,),
    ).fetchall()
    assert len(logged) == 300 + 1 + 2 + 20
    assert all(op == "U" for op, _, _ in logged[:300])
    assert logged[300] == ("U", 7, "one")
    assert sorted(logged[301:303]) == [("D", 8, None), ("I", 1007, "name 8")]
    moved = sorted(logged[303:])
    assert moved == [("D", i, None) for i in range(291, 301)] + [
        ("I", 2000 + i, f"name {i}") for i in range(291, 301)
    ]
    report = _run(spec, source_dsn, warehouse_dsn)
    assert report.applied == {"update": 301, "delete": 11, "insert": 11}
    assert assert_equal(source_conn, warehouse_conn, spec) == 300

    pair = TableRef(ref.schema, "pairs")
    source_conn.execute(
        sql.SQL("CREATE TABLE {} (a int, b text, v text, PRIMARY KEY (a, b))").format(pair.ident)
    )
    source_conn.execute(
        sql.SQL("INSERT INTO {} SELECT g % 3, 'k' || g, 'v' FROM generate_series(1, 9) g").format(pair.ident)
    )
    pcap, _ = capture.install(source_conn, pair)
    source_conn.execute(sql.SQL("UPDATE {} SET v = 'w', a = a + 10 WHERE a = 0").format(pair.ident))
    source_conn.execute(sql.SQL("UPDATE {} SET v = 'x' WHERE a = 1").format(pair.ident))
    source_conn.execute(sql.SQL("UPDATE {} SET b = b || '!' WHERE b = 'k2'").format(pair.ident))
    rows = source_conn.execute(
        sql.SQL("SELECT op, (key->>'a')::int, key->>'b' FROM {} ORDER BY position").format(pcap.log_ident)
    ).fetchall()
    assert sorted(rows[:6]) == sorted(
        [("D", 0, f"k{g}") for g in (3, 6, 9)] + [("I", 10, f"k{g}") for g in (3, 6, 9)]
    )
    assert sorted(rows[6:9]) == [("U", 1, f"k{g}") for g in (1, 4, 7)]
    assert sorted(rows[9:]) == [("D", 2, "k2"), ("I", 2, "k2!")]


def test_install_replaces_an_earlier_statement_function_keeping_pending_changes(
    source_conn, warehouse_conn, source_dsn, warehouse_dsn, fresh_schema
) -> None:
    """A statement capture whose function has an earlier body (here: one that logs updates as
    updates of the new key only) gets this version's function from `cdc install`: same log id and
    triggers, changes logged before the replacement still applied, later ones logged correctly."""
    ref = make_items(source_conn, 20)
    cap, _ = capture.install(source_conn, ref)
    spec = spec_for(ref, fresh_schema)
    _run(spec, source_dsn, warehouse_dsn)
    source_conn.execute(
        sql.SQL(
            "CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER "
            "SET search_path = pg_catalog, pg_temp AS $f$ BEGIN "
            "IF TG_OP = 'UPDATE' THEN INSERT INTO {log} (op, key, data, txid) "
            "SELECT 'U', jsonb_build_object('id', n.id), to_jsonb(n), pg_current_xact_id() FROM new_rows n; "
            "ELSIF TG_OP = 'INSERT' THEN INSERT INTO {log} (op, key, data, txid) "
            "SELECT 'I', jsonb_build_object('id', n.id), to_jsonb(n), pg_current_xact_id() FROM new_rows n; "
            "END IF; RETURN NULL; END $f$"
        ).format(fn=cap.function_ident, log=cap.log_ident)
    )
    source_conn.execute(sql.SQL("UPDATE {} SET name = 'pending' WHERE id <= 5").format(ref.ident))
    source_conn.execute(sql.SQL("INSERT INTO {} (id, name) VALUES (100, 'pending')").format(ref.ident))
    assert capture.health(source_conn, cap).intact
    statements, _ = capture.install_statements(source_conn, ref)
    assert statements[-1].as_string(source_conn).startswith("CREATE OR REPLACE FUNCTION")
    new, changed = capture.install(source_conn, ref)
    assert changed and new.log_id == cap.log_id
    assert _triggers(source_conn, ref) == _STATEMENT_TRIGGERS
    assert capture.install(source_conn, ref)[1] is False
    source_conn.execute(sql.SQL("UPDATE {} SET id = id + 1000 WHERE id BETWEEN 6 AND 8").format(ref.ident))
    source_conn.execute(sql.SQL("DELETE FROM {} WHERE id = 9").format(ref.ident))
    report = _run(spec, source_dsn, warehouse_dsn)
    assert report.applied == {"update": 5, "insert": 4, "delete": 4}
    assert assert_equal(source_conn, warehouse_conn, spec) == 20


def test_case_insensitive_key_moved_to_another_case_reaches_the_warehouse(
    source_conn, warehouse_conn, source_dsn, warehouse_dsn, fresh_schema
) -> None:
    """Under a nondeterministic (case-insensitive) collation 'a' and 'A' are one key to the source's
    unique index but two in the warehouse: the UPDATE trigger then matches OLD and NEW on the logged
    jsonb keys, so changing a key's case is logged as delete + insert and the warehouse follows.
    Keys of built-in types with deterministic collations are matched on the typed columns."""
    items = make_items(source_conn, 3)
    items_cap, _ = capture.install(source_conn, items)
    assert capture._typed_key_join(source_conn, items_cap.relid, items_cap.key_columns)
    schema = f"ci_{fresh_schema}"
    ref = TableRef(schema, "names")
    source_conn.execute(sql.SQL("CREATE SCHEMA {}").format(ref.schema_ident))
    ci = sql.Identifier(schema, "ci")
    collation = "CREATE COLLATION {} (provider = icu, locale = 'und-u-ks-level2', deterministic = false)"
    try:
        source_conn.execute(sql.SQL(collation).format(ci))
    except psycopg.errors.FeatureNotSupported:
        pytest.skip("this PostgreSQL build has no ICU: no nondeterministic collation can exist on it")
    table = "CREATE TABLE {} (k text COLLATE {} PRIMARY KEY, v int)"
    source_conn.execute(sql.SQL(table).format(ref.ident, ci))
    source_conn.execute(sql.SQL("INSERT INTO {} VALUES ('a', 1), ('b', 2), ('c', 3)").format(ref.ident))
    cap, _ = capture.install(source_conn, ref)
    assert not capture._typed_key_join(source_conn, cap.relid, cap.key_columns)
    spec = type(spec_for(ref, fresh_schema))(
        source=ref, extract="cdc", load="upsert", target=TableRef(fresh_schema, "names"), primary_key=("k",)
    )
    _run(spec, source_dsn, warehouse_dsn)
    source_conn.execute(sql.SQL("UPDATE {} SET k = upper(k) WHERE k IN ('a', 'b')").format(ref.ident))
    source_conn.execute(sql.SQL("UPDATE {} SET k = 'C', v = 30 WHERE k = 'c'").format(ref.ident))
    logged = source_conn.execute(
        sql.SQL("SELECT op, key->>'k' FROM {} ORDER BY position").format(cap.log_ident)
    ).fetchall()
    assert sorted(logged[:4]) == [("D", "a"), ("D", "b"), ("I", "A"), ("I", "B")]
    assert sorted(logged[4:]) == [("D", "c"), ("I", "C")]
    _run(spec, source_dsn, warehouse_dsn)
    query = sql.SQL("SELECT k::text, v FROM {} ORDER BY 1")
    final = [("A", 1), ("B", 2), ("C", 30)]
    assert warehouse_conn.execute(query.format(spec.target.ident)).fetchall() == final
    assert source_conn.execute(query.format(ref.ident)).fetchall() == final
