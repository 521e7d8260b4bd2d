"""``etl-assets worker``: a Celery worker running the project's steps (see etl_assets.celery_executor)."""

from __future__ import annotations

import argparse
import os
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker",
        help="run steps sent by runs with ETL_CELERY_BROKER set (a Celery worker on the same databases)",
        description="Start a Celery worker that runs the steps of the project's runs. It uses the same "
        "databases (ETL_SOURCE_DSN, ETL_WAREHOUSE_DSN, DAGSTER_PG_URL, and the variable of each named "
        "source) and the same tables declaration (ETL_PIPELINES) as the process that starts the runs, and "
        "the broker in ETL_CELERY_BROKER. "
        "SIGTERM stops it cleanly: running steps finish first.",
    )
    p.add_argument(
        "--concurrency", "-c", type=int, default=None, metavar="N",
        help="steps run at once by this worker (default: the number of CPUs)",
    )
    p.add_argument(
        "--queue", "-Q", action="append", metavar="QUEUE", dest="queues",
        help="a queue to take steps from; repeatable (default: every queue the project uses: the default "
        "one and source-<name> for each named source)",
    )
    p.add_argument("--loglevel", default="INFO", help="Celery log level (default INFO)")
    p.set_defaults(handler=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    from etl_assets.celery_executor import BROKER_VAR, celery_enabled, run_worker
    from etl_assets.environment import ensure_environment
    from etl_assets.errors import ConfigError
    from etl_assets.migrations import ensure_migrated
    from etl_assets.settings import WAREHOUSE_DSN_VAR

    if args.concurrency is not None and args.concurrency < 1:
        raise ConfigError("--concurrency must be at least 1.")
    if not celery_enabled():
        raise ConfigError(
            f"{BROKER_VAR} is not set; a worker needs the broker URL the runs use, e.g. "
            f"export {BROKER_VAR}=pyamqp://guest:guest@127.0.0.1:5672//"
        )
    env = ensure_environment()
    # Tools a step may start by name (dagster, celery) come from this interpreter's environment.
    bin_dir = os.path.dirname(sys.executable)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    from etl_assets.connections import connect

    with connect(env.warehouse_dsn, role="warehouse", env_var=WAREHOUSE_DSN_VAR) as conn:
        ensure_migrated(conn)  # reachable, and the control schema is current before the first step
    # The Definitions load here once, so a bad tables declaration stops the worker with its message
    # instead of failing every step it takes.
    import etl_assets.definitions  # noqa: F401

    return run_worker(
        concurrency=args.concurrency, queues=args.queues, loglevel=args.loglevel,
        out=lambda s: print(s, flush=True),
    )
