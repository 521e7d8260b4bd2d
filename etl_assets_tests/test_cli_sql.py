"""``etl-assets sql``: psql on the project's databases as every other command resolves them."""

from __future__ import annotations

import subprocess
import sys

import psycopg


def test_sql_runs_a_command_on_the_warehouse(etl_env: dict[str, str], warehouse_dsn: str) -> None:
    with psycopg.connect(warehouse_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS public.sql_probe (n int)")
        conn.execute("TRUNCATE public.sql_probe")
        conn.execute("INSERT INTO public.sql_probe VALUES (41), (1)")
    done = subprocess.run(
        [sys.executable, "-m", "etl_assets.cli", "sql", "warehouse", "-c",
         "SELECT sum(n) FROM public.sql_probe"],
        capture_output=True, text=True, timeout=120, env=None,
    )
    assert done.returncode == 0, done.stderr
    assert "42" in done.stdout


def test_sql_print_gives_the_resolved_dsn(etl_env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "etl_assets.cli", "sql", "dagster", "--print"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == etl_env["DAGSTER_PG_URL"].replace("postgresql+psycopg2://", "postgresql://")


def test_an_unknown_database_is_a_usage_error() -> None:
    done = subprocess.run([sys.executable, "-m", "etl_assets.cli", "sql", "crm"],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert "invalid choice: 'crm'" in done.stderr
