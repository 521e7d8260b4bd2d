"""Steps on Celery workers: the executor the project's runs use when ``ETL_CELERY_BROKER`` is set,
and the Celery app ``etl-assets worker`` serves.

Why one module holds both sides: a step only reaches a worker when the run process and the worker
agree on the broker, the result backend, the queues and the task settings. Both build their Celery
app from :func:`celery_settings`, so they cannot drift apart.

- ``ETL_CELERY_BROKER`` (e.g. ``pyamqp://guest:guest@127.0.0.1:5672//``) switches every run of the
  project (``etl-assets run``, the UI, schedules and sensors) to :data:`dagster_celery.celery_executor`;
  unset, the Definitions keep Dagster's default executor and nothing needs a broker.
- ``ETL_CELERY_BACKEND`` is the result backend (default ``rpc://``: results travel back over the broker).
- Tasks are acknowledged late and rejected when their worker process is lost
  (``task_acks_late``, ``task_reject_on_worker_lost``): the broker hands a killed worker's step to
  another worker instead of dropping it. Re-running an extract step is safe by construction (the data
  and its cursor or checkpoint commit in one transaction).
- The broker URL reaches the executor as ``{"env": "ETL_CELERY_BROKER"}``: its password never lands in
  run config, logs or the UI.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from etl_assets.errors import ConfigError

BROKER_VAR = "ETL_CELERY_BROKER"
BACKEND_VAR = "ETL_CELERY_BACKEND"
DEFAULT_BACKEND = "rpc://"
QUEUE_VAR = "ETL_CELERY_QUEUE"
# dagster_celery's default queue (dagster_celery.defaults.task_default_queue). ETL_CELERY_QUEUE renames
# it: two projects (or two test sessions) sharing one broker then never take each other's steps.
DEFAULT_QUEUE = "dagster"
WORKER_NAME_PREFIX = "etl-assets"
# The op tag dagster-celery routes a step by (dagster_celery.tags.DAGSTER_CELERY_QUEUE_TAG).
QUEUE_TAG = "dagster-celery/queue"
SOURCE_QUEUE_PREFIX = "source-"

# Celery settings both sides use (the "new lowercase" names, passed as the executor's config_source).
TASK_SETTINGS: dict[str, Any] = {
    # A step's message is acknowledged after the step ran, not when a worker took it ...
    "task_acks_late": True,
    # ... and given back to the broker when the worker process running it dies (SIGKILL, OOM).
    "task_reject_on_worker_lost": True,
    # One step at a time per worker process: a long extract never holds a second step hostage.
    "worker_prefetch_multiplier": 1,
    # Survive a broker restart or a short network cut instead of failing the run at once.
    "broker_connection_retry_on_startup": True,
    "broker_connection_max_retries": 30,
}


def celery_enabled() -> bool:
    """Whether runs go to Celery workers (``ETL_CELERY_BROKER`` is set and not empty)."""
    return bool(os.environ.get(BROKER_VAR, "").strip())


def _require_celery() -> None:
    try:
        import dagster_celery  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"{BROKER_VAR} is set but dagster-celery is not installed; install the extra with "
            "`pip install -e '.[celery]'` or unset the variable to run steps in one process."
        ) from None


def default_queue() -> str:
    """The queue steps go to unless they name another (``ETL_CELERY_QUEUE``, default ``dagster``)."""
    return os.environ.get(QUEUE_VAR, "").strip() or DEFAULT_QUEUE


def task_settings() -> dict[str, Any]:
    return {**TASK_SETTINGS, "task_default_queue": default_queue()}


def executor_config() -> dict[str, Any]:
    """The Celery executor's config: secrets as ``{"env": ...}`` so Dagster resolves them itself."""
    backend: Any = {"env": BACKEND_VAR} if os.environ.get(BACKEND_VAR) else DEFAULT_BACKEND
    return {
        "broker": {"env": BROKER_VAR},
        "backend": backend,
        "config_source": task_settings(),
    }


def build_executor():
    """The executor for the project's Definitions when Celery is enabled, else None (Dagster's default)."""
    if not celery_enabled():
        return None
    _require_celery()
    from dagster_celery import celery_executor

    return celery_executor.configured(executor_config(), name="etl_celery")


def one_table_run_config() -> dict:
    """The run config of an automated run of one table: its steps (the extract and its checks) in the
    run's own process. Dagster's default executor starts a process per step, each importing Dagster
    and the Definitions again (seconds per step) to gain nothing when a single extract runs; with
    Celery the steps go to the workers as configured (empty config)."""
    if celery_enabled():
        return {}
    return {"execution": {"config": {"in_process": {}}}}


def source_queue(name: str) -> str:
    """The queue of a named source's extracts (``source-<name>``): a worker near that database takes
    them with ``etl-assets worker --queue source-<name>``."""
    return f"{SOURCE_QUEUE_PREFIX}{name}"


def project_queues(config=None) -> list[str]:
    """Every queue the project's steps are sent to: the default one, and ``source-<name>`` for each
    named source a table reads (its extract steps carry the ``dagster-celery/queue`` op tag)."""
    from etl_assets.pipeline_config import load_pipelines

    config = config or load_pipelines()
    named = sorted({spec.source_name for spec in config.tables if spec.source_name is not None})
    return [default_queue(), *(source_queue(name) for name in named)]


def make_worker_app(queues: Sequence[str] | None = None):
    """The Celery app of a worker: the executor's settings, the step task, and ``queues`` declared
    exactly as the run process declares them."""
    _require_celery()
    from dagster._core.execution.retries import RetryMode
    from dagster_celery.executor import CeleryExecutor
    from dagster_celery.make_app import make_app
    from dagster_celery.tasks import create_task

    broker = os.environ.get(BROKER_VAR, "").strip()
    if not broker:
        raise ConfigError(
            f"{BROKER_VAR} is not set; a worker needs the broker URL the runs use, e.g. "
            f"export {BROKER_VAR}=pyamqp://guest:guest@127.0.0.1:5672//"
        )
    executor = CeleryExecutor(
        retries=RetryMode(RetryMode.DISABLED),
        broker=broker,
        backend=os.environ.get(BACKEND_VAR) or DEFAULT_BACKEND,
        config_source=task_settings(),
    )
    app = make_app(executor.app_args())
    declare_queues(app, queues or project_queues())
    create_task(app)
    return app


def declare_queues(app, queues: Sequence[str]) -> None:
    """Declare ``queues`` the way dagster_celery declares its default one (routing key
    ``<queue>.#``, priorities up to 10), so a step sent to any of them is routed to it."""
    from kombu import Queue

    app.conf.task_queues = [
        Queue(q, routing_key=f"{q}.#", queue_arguments={"x-max-priority": 10}) for q in queues
    ]


def worker_node_name() -> str:
    """``etl-assets.<pid>@<host>``: the Celery node name, which the run summary shows per step."""
    return f"{WORKER_NAME_PREFIX}.{os.getpid()}@{socket.gethostname()}"


def _die_with_parent() -> None:
    """Make this (pool child) process die with its parent worker.

    A worker killed with SIGKILL would otherwise leave its pool children running their steps while
    the broker, seeing the connection drop, hands the same steps to another worker: two copies of one
    extract at once. Linux only (prctl PR_SET_PDEATHSIG); elsewhere a no-op.
    """
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def run_worker(
    *, concurrency: int | None = None, queues: Sequence[str] | None = None, loglevel: str = "INFO",
    out=print,
) -> int:
    """Serve steps until SIGTERM (warm shutdown: running steps finish first) or SIGINT.

    The worker runs in this process (the Celery CLI is not looked up on PATH); its pool children
    import the project's Definitions from the same installed code and read the same DSNs from the
    environment, which :func:`etl_assets.environment.ensure_environment` has exported.
    """
    from celery import signals

    chosen = list(dict.fromkeys(queues)) if queues else project_queues()
    app = make_worker_app(chosen)
    name = worker_node_name()

    @signals.worker_process_init.connect(weak=False)
    def _child_init(**_kwargs: Mapping[str, Any]) -> None:
        _die_with_parent()

    @signals.worker_ready.connect(weak=False)
    def _ready(**_kwargs: Mapping[str, Any]) -> None:
        out(f"etl-assets worker {name}: ready, queues {', '.join(chosen)}")

    @signals.worker_shutdown.connect(weak=False)
    def _stopped(**_kwargs: Mapping[str, Any]) -> None:
        out(f"etl-assets worker {name}: stopped")

    argv = ["worker", "-n", name, "-Q", ",".join(chosen), "--loglevel", loglevel, "--without-gossip",
            "--without-mingle"]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    app.worker_main(argv)
    return 0
