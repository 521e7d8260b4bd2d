"""The control schema's migrations: applied once, safe concurrently and repeatedly."""

from __future__ import annotations

import threading

import psycopg

from etl_assets import migrations


def test_migrate_applies_all_then_nothing(warehouse_dsn: str) -> None:
    with psycopg.connect(warehouse_dsn) as conn:
        migrations.migrate(conn)
        again = migrations.migrate(conn)
        rows = conn.execute("SELECT version FROM etl.schema_migrations ORDER BY version").fetchall()
    assert again == []
    assert [r[0] for r in rows] == [m.version for m in migrations.available()]


def test_migrate_concurrently(pg_admin_dsn: str) -> None:
    from etl_assets_tests.conftest import create_database, drop_database

    name = "t_migr_concurrent"
    drop_database(pg_admin_dsn, name)
    dsn = create_database(pg_admin_dsn, name)
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with psycopg.connect(dsn) as conn:
                results.append(migrations.migrate(conn))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        applied = sorted(v for r in results for v in r)
        assert applied == [m.version for m in migrations.available()]  # each version exactly once
    finally:
        drop_database(pg_admin_dsn, name)
