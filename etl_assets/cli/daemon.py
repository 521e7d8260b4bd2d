"""``etl-assets daemon``: the Dagster daemon alone (sensors, schedules, automation, run queue).

Headless: no webserver. It resolves the same databases and ``DAGSTER_HOME`` as ``etl-assets dev``
(``ensure_environment``: the embedded server for any DSN left unset), so a daemon run as a service
and a UI started elsewhere on the same instance see the same runs, ticks and state. It stops with
every process it started on SIGTERM, SIGINT or SIGHUP (``etl_assets.processes.supervise``), which
is what a service manager expects. docs/operations-daemon.md has a systemd unit.
"""

from __future__ import annotations

import argparse
import os
import sys

from etl_assets.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "daemon",
        help="run the Dagster daemon alone (sensors, schedules, automation, run queue), headless",
        description="Run `dagster-daemon run` on the project's workspace and databases (the same as "
        "`etl-assets dev`, without the webserver). Stops with all its processes on SIGTERM/SIGINT.",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="the daemon's log level (default: info)",
    )
    p.set_defaults(handler=cmd_daemon)


def workspace_file():
    from etl_assets.settings import PROJECT_ROOT

    workspace = PROJECT_ROOT / "workspace.yaml"
    if not workspace.exists():
        raise ConfigError(
            f"{workspace} is missing; `etl-assets dev` and `etl-assets daemon` run from the project's "
            "repository (pip install -e .)."
        )
    return workspace


def service_environment() -> dict[str, str]:
    """The environment of ``dagster dev`` / ``dagster-daemon run`` started by us: the resolved tables
    declaration is pinned (``ETL_PIPELINES``), because the services run in ``DAGSTER_HOME``, not in
    the folder whose ``pyproject.toml`` may name it; and Dagster's notice that ``dagster dev`` is
    superseded by ``dg dev`` (a different project layout) is not repeated at every start."""
    from etl_assets.pipeline_config import pipelines_paths

    env = os.environ.copy()
    env.setdefault("ETL_PIPELINES", os.pathsep.join(str(p) for p in pipelines_paths()))
    quiet = "ignore:Function `dev_command` is superseded"
    env["PYTHONWARNINGS"] = ",".join(w for w in (env.get("PYTHONWARNINGS"), quiet) if w)
    return env


def daemon_command(workspace, log_level: str = "info") -> list[str]:
    return [sys.executable, "-m", "dagster._daemon", "run", "-w", str(workspace), "--log-level", log_level]


def cmd_daemon(args: argparse.Namespace) -> int:
    from etl_assets.environment import ensure_environment
    from etl_assets.processes import supervise

    env = ensure_environment()
    workspace = workspace_file()
    command = daemon_command(workspace, args.log_level)
    print(
        f"etl-assets daemon: dagster-daemon run -w {workspace} (DAGSTER_HOME={env.dagster_home}"
        + (f"; embedded PostgreSQL for {', '.join(env.embedded)}" if env.embedded else "")
        + ")",
        flush=True,
    )
    # In DAGSTER_HOME (it holds the instance's dagster.yaml): run from the repository, Dagster would
    # warn at every start that the dagster.yaml there is ignored.
    return supervise(command, cwd=env.dagster_home, env=service_environment())
