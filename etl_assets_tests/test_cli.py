"""The ``etl-assets`` command line, run as a real subprocess against the test databases."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from etl_assets.cli import build_parser
from etl_assets.settings import PROJECT_ROOT


def etl(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "etl_assets.cli", *args],
        cwd=PROJECT_ROOT,
        env=env or os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_every_core_command_is_registered() -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"run", "dev", "seed", "simulate", "reset", "server", "env"} <= set(commands)
    args = parser.parse_args(
        ["run", "--select", "raw/orders", "--select", "group:mart", "--partition", "2025-01-02"]
    )
    assert (args.select, args.partition) == (["raw/orders", "group:mart"], "2025-01-02")
    assert parser.parse_args(["reset", "raw.orders", "raw.customers"]).targets == [
        "raw.orders",
        "raw.customers",
    ]
    assert parser.parse_args(["server", "status"]).action == "status"


def test_env_prints_exports_that_a_shell_can_eval(etl_env: dict[str, str]) -> None:
    result = etl("env")
    assert result.returncode == 0, result.stderr
    exported = {}
    for line in result.stdout.splitlines():
        assert line.startswith("export ")
        name, _, value = line[len("export ") :].partition("=")
        exported[name] = shlex.split(value)[0]
    assert exported["ETL_SOURCE_DSN"] == etl_env["ETL_SOURCE_DSN"]
    assert exported["ETL_WAREHOUSE_DSN"] == etl_env["ETL_WAREHOUSE_DSN"]
    assert exported["DAGSTER_PG_URL"] == etl_env["DAGSTER_PG_URL"]
    assert exported["DAGSTER_HOME"] == etl_env["DAGSTER_HOME"]
    # And a shell really can: the values survive eval unchanged.
    shell = subprocess.run(
        ["bash", "-c", 'eval "$1"; printf %s "$ETL_SOURCE_DSN"', "_", result.stdout],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shell.stdout == etl_env["ETL_SOURCE_DSN"]


def test_seed_and_simulate_commands(etl_env: dict[str, str], source_dsn: str) -> None:
    result = etl("seed", "--rows", "600", "--seed", "5", "--until", "2025-07-01")
    assert result.returncode == 0, result.stderr
    assert (
        "seeded 60 customers, 12 categories, 600 orders (created in the year before 2025-07-01)"
        in result.stdout
    )
    # not a terminal: plain progress lines instead of a bar, and no carriage returns anywhere
    lines = result.stdout.splitlines()
    assert lines[0].startswith("seeding the demo source (shop in ") and lines[0].endswith(
        "): 600 orders, seed 5, dirty share 0.02…"
    )
    assert lines[1:3] == ["  shop.customers: 60 of 660 rows", "  shop.orders: 660 of 660 rows"]
    assert "\r" not in result.stdout + result.stderr
    # ETL_PROGRESS=on draws tqdm's bar (on standard error) even here; the plain lines go away
    drawn = etl("seed", "--rows", "600", "--seed", "5", "--until", "2025-07-01",
                env={**os.environ, "ETL_PROGRESS": "on"})
    assert drawn.returncode == 0, drawn.stderr
    assert "seeding shop" in drawn.stderr and "660/660" in drawn.stderr
    assert "  shop.orders: 660 of 660 rows" not in drawn.stdout
    with psycopg.connect(source_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM shop.orders").fetchone()[0] == 600
    result = etl("simulate", "--changes", "100", "--seed", "2")
    assert result.returncode == 0, result.stderr
    assert "shop.orders: 50 inserted" in result.stdout
    with psycopg.connect(source_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM shop.orders WHERE id > 600").fetchone()[0] == 50
    bad = etl("seed", "--rows", "10", "--dirty-share", "2")
    assert bad.returncode == 2
    assert bad.stderr.startswith("etl-assets: error: ") and "dirty-share" in bad.stderr


def test_reset_forgets_named_targets_or_all(etl_env: dict[str, str], warehouse_dsn: str) -> None:
    from etl_assets.migrations import migrate

    with psycopg.connect(warehouse_dsn) as conn:
        migrate(conn)
        conn.execute("DELETE FROM etl.state")
        conn.execute(
            "INSERT INTO etl.state (target, kind, state) VALUES"
            " ('raw.orders', 'incremental', '{\"cursor\": 1}'), ('raw.customers', 'incremental', '{}'),"
            " ('raw.categories', 'chunked', '{}')"
        )
    result = etl("reset", "raw.orders", "raw.nothing")
    assert result.returncode == 0, result.stderr
    assert "reset raw.orders" in result.stdout and "no stored state for raw.nothing" in result.stdout
    with psycopg.connect(warehouse_dsn) as conn:
        left = [r[0] for r in conn.execute("SELECT target FROM etl.state ORDER BY target")]
    assert left == ["raw.categories", "raw.customers"]
    result = etl("reset")
    assert result.returncode == 0, result.stderr
    assert "reset 2 targets: raw.categories, raw.customers" in result.stdout
    with psycopg.connect(warehouse_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM etl.state").fetchone()[0] == 0


def test_run_prints_progress_and_summary(etl_env: dict[str, str], source_dsn: str) -> None:
    from etl_assets.demo.seed import seed

    seed(source_dsn, rows=500, seed=3)
    result = etl("run", "--select", "raw/categories")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "raw/categories: 12 rows" in result.stdout
    assert "materialized: 1 asset\n" in result.stdout
    assert "result: OK" in result.stdout
    assert "None" not in result.stdout + result.stderr


def _stored(stdout: str, asset: str) -> str:
    """The text after ``stored     <asset>: `` in ``etl-assets run`` output."""
    [line] = [ln for ln in stdout.splitlines() if f"] stored     {asset}: " in ln]
    return line.split(f"stored     {asset}: ", 1)[1]




def test_run_prints_what_each_extract_did(etl_env: dict[str, str], source_dsn: str, forget_state) -> None:
    """Per extract: rows read, inserted, updated, deleted, unchanged and where the cursor (or the
    change-log position) moved; the second run's counts are the simulated changes."""
    from etl_assets.demo.seed import seed

    seed(source_dsn, rows=500, seed=3)
    first = etl("run", "--select", "raw/orders", "--select", "raw/customers")
    assert first.returncode == 0, first.stdout + first.stderr
    orders = _stored(first.stdout, "raw/orders")
    assert orders.startswith(
        "500 rows; read 500, inserted 500, updated 0, deleted 0, unchanged 0; cursor first run → "
    ), orders
    cursor = orders.rsplit(" → ", 1)[1]
    customers = _stored(first.stdout, "raw/customers")
    assert customers.startswith(
        "50 rows; read 50, inserted 50, updated 0, deleted 0; snapshot at change-log position "
    ), customers
    position = customers.rsplit(" ", 1)[1]
    header = next(ln for ln in first.stdout.splitlines() if ln.strip().startswith("asset "))
    assert header.split() == ["asset", "rows", "read", "inserted", "updated", "deleted", "unchanged"]

    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute("UPDATE shop.customers SET first_name = first_name || ' jr' WHERE id <= 40")
        conn.execute("DELETE FROM shop.customers WHERE id BETWEEN 41 AND 43")
        conn.execute("UPDATE shop.orders SET status = 'refunded', updated_at = now() WHERE id <= 7")
    second = etl("run", "--select", "raw/orders", "--select", "raw/customers")
    assert second.returncode == 0, second.stdout + second.stderr
    orders = _stored(second.stdout, "raw/orders")
    # the look-back (lag: 3600) re-reads the last hour before the cursor: those rows are unchanged
    counts = re.fullmatch(rf"500 rows; read (\d+), inserted 0, updated 7, deleted 0, unchanged (\d+); "
                          rf"cursor {re.escape(cursor)} → \d{{4}}-.+", orders)
    assert counts and int(counts[1]) == 7 + int(counts[2]), orders
    customers = _stored(second.stdout, "raw/customers")
    assert customers.startswith(
        f"47 rows; read 43, inserted 0, updated 40, deleted 3; change-log position {position} → "
    ), customers
    [row] = [ln for ln in second.stdout.splitlines() if ln.strip().startswith("raw/customers ")]
    assert row.split() == ["raw/customers", "47", "43", "0", "40", "3", "-"]
    assert "None" not in second.stdout + second.stderr


def test_bad_selection_is_one_clear_line(etl_env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    from etl_assets.cli import main

    assert main(["run", "--select", "raw/nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("etl-assets: error: --select raw/nope: no asset has that key")
    assert "Traceback" not in err


def test_unreachable_database_is_one_clear_line(etl_env: dict[str, str]) -> None:
    env = os.environ.copy()
    env["ETL_WAREHOUSE_DSN"] = "postgresql://nobody:secret@127.0.0.1:1/nowhere?connect_timeout=2"
    result = etl("reset", env=env)
    assert result.returncode == 2
    assert "Cannot connect to the warehouse database" in result.stderr
    assert "ETL_WAREHOUSE_DSN" in result.stderr
    assert "secret" not in result.stderr and "Traceback" not in result.stderr


def test_run_checks_the_databases_first(
    etl_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from etl_assets.cli import main

    monkeypatch.setenv("ETL_SOURCE_DSN", "postgresql://nobody:secret@127.0.0.1:1/src?connect_timeout=2")
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("etl-assets: error: Cannot connect to the source database")
    assert "ETL_SOURCE_DSN" in err and "secret" not in err


def test_run_checks_the_dagster_storage_first(
    etl_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from etl_assets.cli import main

    url = "postgresql+psycopg2://nobody@127.0.0.1:1/dg?password=s3cr3t&connect_timeout=2"
    monkeypatch.setenv("DAGSTER_PG_URL", url)
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("etl-assets: error: Cannot connect to the Dagster storage database at ")
    assert "DAGSTER_PG_URL" in err and "s3cr3t" not in err and "Traceback" not in err


def test_server_status_without_a_server(etl_env: dict[str, str], tmp_path: Path) -> None:
    env = os.environ.copy()
    env["ETL_HOME"] = str(tmp_path / "empty_home")
    result = etl("server", "status", env=env)
    assert result.returncode == 3
    assert "not running" in result.stdout
    result = etl("server", "stop", env=env)
    assert result.returncode == 0
    assert "no embedded PostgreSQL was running" in result.stdout


@pytest.mark.parametrize("command", ["run", "dev", "seed", "simulate", "reset", "server", "env"])
def test_help_of_each_command(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: etl-assets {command}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "host"),
    [
        (["dev"], "127.0.0.1"),
        (["dev", "--port", "3111"], "127.0.0.1"),
        (["dev", "--host", "0.0.0.0"], "0.0.0.0"),
    ],
)
def test_dev_binds_the_webserver_to_loopback_unless_told(
    argv: list[str], host: str, etl_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`etl-assets dev` hands dagster dev `-h 127.0.0.1` unless --host is given; the command line is
    captured where it would start the server (the UI has no authentication: docs/security.md)."""
    from etl_assets.cli import main

    if host != "127.0.0.1":  # once: dagster dev itself reads -h as the webserver's host
        help_text = subprocess.run(
            [sys.executable, "-m", "dagster", "dev", "--help"], capture_output=True, text=True, check=True
        ).stdout
        assert "-h, --host" in help_text
    started: list[list[str]] = []

    def not_started(command: list[str], **kwargs: object) -> int:
        started.append(list(command))
        return 0

    import etl_assets.processes

    monkeypatch.setattr(etl_assets.processes, "supervise", not_started)
    assert main(argv) == 0
    [command] = started
    assert command[1:4] == ["-m", "dagster", "dev"]
    assert command[command.index("-h") + 1] == host
    assert command.count("-h") == 1 and "--host" not in command
    assert ("--port" in command) == ("--port" in argv)


def test_an_unexpected_error_is_one_line_with_the_traceback_in_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import etl_assets.cli.core as core
    from etl_assets.cli import main

    monkeypatch.setenv("ETL_HOME", str(tmp_path))
    monkeypatch.setenv("ETL_SOURCE_DSN", "postgresql://u:s3cret@127.0.0.1:1/db")

    def explode(args) -> int:
        raise RuntimeError("deep inside a library: postgresql://u:s3cret@127.0.0.1:1/db\nsecond line")

    monkeypatch.setattr(core, "cmd_env", explode)
    assert main(["env"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("etl-assets: error: RuntimeError: deep inside a library") and "s3cret" not in err
    logged = Path(err.rsplit("traceback: ", 1)[1].rstrip(")\n")).read_text(encoding="utf-8")
    assert "Traceback (most recent call last)" in logged and "explode" in logged
    assert "s3cret" not in logged


def test_chunked_extract_draws_a_bar_of_chunks(
    etl_env: dict[str, str], source_dsn: str, tmp_path: Path, forget_state
) -> None:
    """`etl-assets run` on a terminal (forced here with ETL_PROGRESS=on) shows chunks done of the
    planner's estimate during a chunked extract; the stored line then says what it did."""
    from etl_assets.demo.seed import seed

    seed(source_dsn, rows=500, seed=3)
    tables = tmp_path / "chunked.yaml"
    tables.write_text(
        "tables:\n  - name: shop.orders\n    extract: chunked\n    primary_key: [id]\n"
        "    chunk_size: 100\n    target: chunky.orders\n"
    )
    result = etl("--pipelines", str(tables), "run", "--select", "chunky/orders",
                 env={**os.environ, "ETL_PROGRESS": "on"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "shop.orders:   0%" in result.stderr and "0/5 [" in result.stderr, result.stderr
    assert "BetaWarning" not in result.stderr  # the project's own deliberate beta use is not news
    stored = _stored(result.stdout, "chunky/orders")
    assert stored == "500 rows; read 500, inserted 500, updated 0, deleted 0, unchanged 0; 5 chunks", stored
