"""The core commands: run, dev, seed, simulate, reset, server, env."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from etl_assets import console
from etl_assets.errors import ConfigError, ServerError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="materialize the whole graph once, headless, and print a summary",
        description="Materialize the selected assets (default: all) in this process through the Dagster "
        "instance; runs and check results show up in the UI afterwards. Exit status 1 when a step or an "
        "ERROR-severity check failed; failed WARN checks are listed but keep exit status 0.",
    )
    p.add_argument(
        "--select",
        action="append",
        metavar="SELECTION",
        help="asset key (raw/orders) or Dagster selection (key:raw/orders+, group:mart); repeatable",
    )
    p.add_argument(
        "--partition",
        metavar="KEY",
        help="partition key for partitioned assets (default: the latest complete time window, "
        "or every partition of a non-time partitioning)",
    )
    p.add_argument(
        "--partition-range",
        metavar="FROM..TO",
        help="run partitioned assets for every partition from FROM to TO (both included) in one run, "
        "e.g. 2026-11-01..2026-11-14 (a backfill)",
    )
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("dev", help="start the Dagster UI and daemon (dagster dev) on the same databases")
    p.add_argument(
        "--port", "-p", type=int, default=None, help="webserver port (dagster dev's default: 3000)"
    )
    p.add_argument(
        "--host",
        default=None,
        help="webserver host (default: 127.0.0.1, this machine only; the UI has no authentication, "
        "see docs/security.md before binding to another interface)",
    )
    p.set_defaults(handler=cmd_dev)

    p = sub.add_parser("seed", help="(re)create the demo source schema shop")
    p.add_argument(
        "--rows", type=int, default=None, help="number of orders (default 100,000); customers: a tenth"
    )
    p.add_argument(
        "--seed", type=int, default=None, help="random seed: the same seed gives the same rows (default 42)"
    )
    p.add_argument("--dirty-share", type=float, default=None, help="share of dirty rows, 0..1 (default 0.02)")
    p.add_argument(
        "--until",
        type=_iso_date,
        default=None,
        metavar="YYYY-MM-DD",
        help="orders are created in the 365 days before this date (default: today, UTC)",
    )
    p.set_defaults(handler=cmd_seed)

    p = sub.add_parser("simulate", help="apply a batch of inserts, updates and deletes to the demo source")
    p.add_argument("--changes", type=int, default=1000, help="number of changed rows (default 1000)")
    p.add_argument("--seed", type=int, default=None, help="make the choice of rows reproducible")
    p.add_argument(
        "--events", type=int, default=None,
        help="instead: write this many order events (outbox: change and event in one transaction; "
        "needs `etl-assets stream install`)",
    )
    p.add_argument(
        "--rate", type=float, default=None, help="with --events: events per second (default: flat out)"
    )
    p.set_defaults(handler=cmd_simulate)

    p = sub.add_parser(
        "reset",
        help="forget the stored state (cursors, checkpoints) of targets so they fully reload",
    )
    p.add_argument(
        "targets", nargs="*", metavar="TARGET", help="warehouse tables, e.g. raw.orders (default: all)"
    )
    p.set_defaults(handler=cmd_reset)

    p = sub.add_parser("server", help="manage the embedded PostgreSQL server")
    p.add_argument("action", choices=("start", "stop", "status"))
    p.set_defaults(handler=cmd_server)

    p = sub.add_parser("env", help="print export lines for the databases and DAGSTER_HOME (eval them)")
    p.set_defaults(handler=cmd_env)


def _iso_date(text: str):
    from datetime import date

    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def cmd_run(args: argparse.Namespace) -> int:
    from etl_assets import runner
    from etl_assets.environment import ensure_environment

    env = ensure_environment()
    print(
        f"etl-assets run: DAGSTER_HOME={env.dagster_home}"
        + (f" (embedded PostgreSQL for {', '.join(env.embedded)})" if env.embedded else ""),
        flush=True,
    )
    runner.preflight(env.source_dsn, env.warehouse_dsn, env.dagster_url)
    summary = runner.run(select=args.select, partition=args.partition, partition_range=args.partition_range,
                         out=lambda s: print(s, flush=True))
    print(runner.format_summary(summary), flush=True)
    return summary.exit_code


DEFAULT_DEV_HOST = "127.0.0.1"


def dev_command(args: argparse.Namespace, workspace: os.PathLike | str) -> list[str]:
    """The ``dagster dev`` command line for ``etl-assets dev`` with ``args``.

    The webserver has no authentication: it listens on the loopback interface unless ``--host`` says
    otherwise (see docs/security.md for a proxy in front of it).
    """
    command = [sys.executable, "-m", "dagster", "dev", "-w", str(workspace)]
    if args.port:
        command += ["--port", str(args.port)]
    command += ["-h", args.host or DEFAULT_DEV_HOST]
    return command


def cmd_dev(args: argparse.Namespace) -> int:
    from etl_assets.cli.daemon import service_environment, workspace_file
    from etl_assets.environment import ensure_environment
    from etl_assets.processes import supervise

    env = ensure_environment()
    workspace = workspace_file()
    command = dev_command(args, workspace)
    print(f"etl-assets dev: {' '.join(command[2:])} (DAGSTER_HOME={os.environ['DAGSTER_HOME']})", flush=True)
    # dagster dev in its own process group; SIGTERM/SIGINT stop it, its webserver, daemon and code
    # servers, then anything left of them (etl_assets.processes).
    # From DAGSTER_HOME, which holds the instance's dagster.yaml (see etl_assets.cli.daemon).
    return supervise(command, cwd=env.dagster_home, env=service_environment())


def cmd_seed(args: argparse.Namespace) -> int:
    from etl_assets.demo import seed as demo
    from etl_assets.environment import ensure_environment
    from etl_assets.settings import redact_dsn

    env = ensure_environment(seed_demo=False)
    rows = demo.DEFAULT_ROWS if args.rows is None else args.rows
    seed_value = demo.DEFAULT_SEED if args.seed is None else args.seed
    share = demo.DEFAULT_DIRTY_SHARE if args.dirty_share is None else args.dirty_share
    if rows < 0 or not 0 <= share <= 1:
        raise ConfigError("--rows must be >= 0 and --dirty-share between 0 and 1.")
    print(
        f"seeding the demo source (shop in {redact_dsn(env.source_dsn)}): {rows:,} orders, "
        f"seed {seed_value}, dirty share {share}…",
        flush=True,
    )
    # A bar on a terminal; elsewhere a plain line per statement (ETL_PROGRESS, etl_assets.console).
    with console.progress(rows + demo.customer_count(rows), "seeding shop", unit="rows", lines=True) as bar:
        result = demo.seed(
            env.source_dsn, rows=rows, seed=seed_value, dirty_share=share, progress=bar.update,
            until=args.until,
        )
    print(
        f"seeded {result.customers:,} customers, {result.categories} categories, {result.orders:,} orders "
        f"(created in the year before {result.until}) in {console.duration_text(result.seconds)}"
    )
    print("incremental extracts keep their cursors: run `etl-assets reset` for a full reload of the new demo")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from etl_assets.demo import seed as demo
    from etl_assets.environment import ensure_environment

    env = ensure_environment()
    if args.events is not None:
        return _simulate_events(env.source_dsn, args)
    if args.changes < 0:
        raise ConfigError("--changes must be >= 0.")
    result = demo.simulate(env.source_dsn, changes=args.changes, seed=args.seed)
    for table in ("customers", "orders"):
        print(
            f"shop.{table}: {result.inserted.get(table, 0):,} inserted, "
            f"{result.updated.get(table, 0):,} updated, "
            f"{result.deleted.get(table, 0):,} deleted"
        )
    return 0


def _simulate_events(source_dsn: str, args: argparse.Namespace) -> int:
    from etl_assets.stream.producer import produce

    if args.events < 0 or (args.rate is not None and args.rate <= 0):
        raise ConfigError("--events must be >= 0 and --rate > 0.")
    result = produce(source_dsn, args.events, rate=args.rate, seed=args.seed)
    kinds = ", ".join(f"{n:,} {kind}" for kind, n in sorted(result.by_kind.items()))
    ids = f"; event ids {result.first_id}..{result.last_id}" if result.first_id is not None else ""
    print(
        f"wrote {console.plural(result.events, 'order event')}" + (f" ({kinds})" if kinds else "")
        + f" in {console.plural(result.batches, 'transaction')}, {console.duration_text(result.seconds)}{ids}"
    )
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    from etl_assets import state as target_state
    from etl_assets.environment import ensure_environment

    env = ensure_environment(seed_demo=False)
    removed, unknown = target_state.reset(env.warehouse_dsn, args.targets)
    if args.targets:
        for target in removed:
            print(f"reset {target}: its next run is a full reload")
        for target in unknown:
            print(f"no stored state for {target} (nothing to reset)")
    else:
        print(f"reset {console.plural(len(removed), 'target')}: "
              + (", ".join(removed) if removed else "none had state"))
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    from etl_assets import embedded
    from etl_assets.settings import EMBEDDED_DATABASES, etl_home

    home = etl_home()
    if args.action == "start":
        server = embedded.ensure_running(home)
        for database in EMBEDDED_DATABASES.values():
            embedded.ensure_database(server, database)
        print(
            f"embedded PostgreSQL running: pid {server.pid}, socket {server.socket_dir}, data {server.pgdata}"
        )
        return 0
    if args.action == "stop":
        stopped = embedded.stop(home)
        print(
            "embedded PostgreSQL stopped" if stopped else f"no embedded PostgreSQL was running under {home}"
        )
        return 0
    server = embedded.status(home)
    if server is None:
        print(f"embedded PostgreSQL: not running (data under {embedded.pgdata_dir(home)})")
        return 3
    print(f"embedded PostgreSQL: running, pid {server.pid}, socket {server.socket_dir}, data {server.pgdata}")
    used = [var for var in EMBEDDED_DATABASES if not os.environ.get(var)]
    print("used for: " + (", ".join(used) if used else "nothing (every DSN variable is set)"))
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    from etl_assets.environment import ensure_environment
    from etl_assets.settings import DAGSTER_URL_VAR, HOME_VAR, SOURCE_DSN_VAR, WAREHOUSE_DSN_VAR, etl_home

    try:
        env = ensure_environment()
    except ServerError:
        raise
    values = {
        HOME_VAR: str(etl_home()),
        SOURCE_DSN_VAR: env.source_dsn,
        WAREHOUSE_DSN_VAR: env.warehouse_dsn,
        DAGSTER_URL_VAR: env.dagster_url,
        "DAGSTER_HOME": str(env.dagster_home),
    }
    for name, value in values.items():
        print(f"export {name}={shlex.quote(value)}")
    return 0
