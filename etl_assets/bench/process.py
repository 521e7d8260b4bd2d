"""``etl-assets bench --only process``: whole processes, timed as a user times them.

The per-function benchmark times the extract in a warm process; a user times the command. Here every
job is a fresh process, timed wall-clock from spawn to exit, with its peak resident memory (the
``ru_maxrss`` that ``wait4`` reports for it and the children it waited for, as ``/usr/bin/time``
does), on one table of the benchmark shape (:mod:`etl_assets.bench.data`, a primary key and an
index on ``updated_at``):

* **floor**: a do-nothing Dagster asset materialized through ``execute_in_process`` on the same
  PostgreSQL-backed instance: what any Dagster run costs before it does any work;
* **etl-assets**: ``etl-assets run --select …`` of a declared table through the default settings:
  ``extract: full`` (full load), and ``extract: incremental, cursor: updated_at`` (after an untimed
  first load) with nothing changed and after 1 % of the rows changed;
* **Sling** (``sling-linux-amd64``'s binary): ``full-refresh``, and ``incremental`` with
  ``--primary-key id --update-key updated_at``;
* **dlt**: ``sql_database``/``sql_table`` with the pyarrow backend into postgres with the csv
  (COPY) loader, ``replace`` for the full load and ``merge`` with ``dlt.sources.incremental`` on
  ``updated_at`` for the incremental ones (its fastest documented settings);
* **COPY pipe**: ``psql \\copy (SELECT …) TO STDOUT (FORMAT binary)`` piped into ``psql \\copy …
  FROM STDIN (FORMAT binary)``: the ceiling for moving the bytes, no tool at all.

Each tool writes into its own scratch database (created next to the configured ones, dropped
afterwards); after every timed run the target is verified against the source (row count and an
order-independent checksum over every column cast to the source's types, :func:`table_checksum`).
Before each "1 % changed" run, 1 % of the rows (a different slice each time) get a new ``score`` and
``updated_at = clock_timestamp()``; every tool then picks up the same change. Medians of ``repeat``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from etl_assets.bench.data import ddl, table_checksum_dsn
from etl_assets.bench.harness import draw_safely
from etl_assets.bench.scratch import create_database, drop_database
from etl_assets.settings import PROJECT_ROOT, dagster_storage_url

SCHEMA = "bench_process"
TABLE = "t"
CHANGED_SHARE = 100  # 1 row in 100 changes before each "1 % changed" run

FLOOR = """
import dagster as dg

@dg.asset
def nothing() -> None:
    return None

with dg.DagsterInstance.get() as instance:
    result = dg.materialize([nothing], instance=instance)
raise SystemExit(0 if result.success else 1)
"""

DLT = """
import sys

import dlt
from dlt.sources.sql_database import sql_table

source_url, dest_url, schema, table, pipelines_dir, mode = sys.argv[1:7]
pipeline = dlt.pipeline(pipeline_name="etl_bench_process_" + mode, pipelines_dir=pipelines_dir,
                        destination=dlt.destinations.postgres(credentials=dest_url),
                        dataset_name=schema + "_" + mode)
if mode == "full":
    resource = sql_table(credentials=source_url, schema=schema, table=table, backend="pyarrow",
                         chunk_size=50_000)
    info = pipeline.run(resource, write_disposition="replace", loader_file_format="csv")
else:
    resource = sql_table(credentials=source_url, schema=schema, table=table, backend="pyarrow",
                         chunk_size=50_000, primary_key="id",
                         incremental=dlt.sources.incremental("updated_at"))
    info = pipeline.run(resource, write_disposition="merge", loader_file_format="csv")
info.raise_on_failed_jobs()
"""


@dataclass
class Timing:
    seconds: float
    peak_mb: float
    exit: int
    verified: bool
    output: str = ""


@dataclass
class JobResult:
    """One job of one tool: the median of its timed runs."""

    job: str  # floor | full | incremental_unchanged | incremental_1pct
    tool: str  # floor | etl-assets | sling | dlt | copy-pipe
    rows: int
    seconds: float | None = None
    peak_mb: float | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    verified: bool = False
    gap: str | None = None


# A process forked from a big one inherits its resident pages, and Linux's ru_maxrss keeps that mark
# across exec: timing ``etl-assets run`` as a child of the (big) benchmark process would report the
# benchmark's own size. So every job starts from this small launcher (a fresh interpreter, ~10 MB),
# which times the job and reports the job's ru_maxrss (with its waited children) in a file.
LAUNCHER = """
import os, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
began = time.monotonic()
pid = os.posix_spawnp(cmd[0], cmd, os.environ)
_, status, usage = os.wait4(pid, 0)
seconds = time.monotonic() - began
with open(out, "w") as f:
    f.write(f"{seconds} {usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}")
"""


def timed(cmd: list[str], env: dict[str, str], *, timeout: float = 3600) -> Timing:
    """Run ``cmd`` to its end: wall-clock seconds and peak RSS (MB) of it and its waited children,
    as ``/usr/bin/time`` reports them (through :data:`LAUNCHER`)."""
    with tempfile.NamedTemporaryFile(prefix="etl-bench-timed-", suffix=".txt") as report:
        proc = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, report.name, *cmd], cwd=PROJECT_ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        output = proc.stdout.decode(errors="replace")
        text = Path(report.name).read_text().split()
    if len(text) != 3:  # the launcher itself failed (cannot start the command)
        return Timing(seconds=0.0, peak_mb=0.0, exit=proc.returncode or 127, verified=False, output=output)
    seconds, maxrss_kb, code = float(text[0]), int(text[1]), int(text[2])
    return Timing(seconds=seconds, peak_mb=maxrss_kb / 1024, exit=code, verified=False, output=output)


def _seed(dsn: str, rows: int) -> None:
    """The source table: the benchmark shape, values derived from the id (as bench/data.py's)."""
    t = sql.Identifier(SCHEMA, TABLE)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
        conn.execute(ddl(t))
        conn.execute(sql.SQL(
            "INSERT INTO {} SELECT g, (g * 7919) %% 100000 + 1, ((g * 104729) %% 10000000) / 100.0, "
            "((g * 2654435761) %% 1000003) / 997.0, (ARRAY['new','paid','shipped','delivered','returned'])"
            "[g %% 5 + 1], CASE WHEN g %% 10 = 0 THEN NULL ELSE 'note ' || g %% 1000 || ' v0' END, "
            "g %% 3 <> 0, "
            "timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second', "
            "timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second' + (g %% 86400) * interval '1 ms' "
            "FROM generate_series(1::bigint, %s) g").format(t), (rows,))
        conn.execute(sql.SQL("CREATE INDEX ON {} (updated_at)").format(t))
        conn.execute(sql.SQL("ANALYZE {}").format(t))


def _change(dsn: str, slice_no: int) -> int:
    """Give 1 % of the rows (slice ``slice_no``) a new score and ``updated_at = clock_timestamp()``."""
    t = sql.Identifier(SCHEMA, TABLE)
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql.SQL(
            "UPDATE {} SET score = score + 1, updated_at = clock_timestamp() WHERE id %% %s = %s").format(t),
            (CHANGED_SHARE, slice_no % CHANGED_SHARE)).rowcount


def _sling_binary() -> str | None:
    try:
        import sling_linux_amd64  # type: ignore[import-not-found]
    except ImportError:
        return shutil.which("sling")
    binary = Path(sling_linux_amd64.__file__).parent / "bin" / "sling-linux-amd64"
    return str(binary) if binary.exists() else None


def _sling_url(dsn: str) -> str:
    """Sling's connection URL for ``dsn``: host and port in the URL, or, for a unix socket (the
    embedded server), no host in the URL and the socket folder as the ``host`` parameter (a
    placeholder host there would make Sling connect over TCP to whatever listens on that port)."""
    from urllib.parse import quote, urlencode

    from psycopg.conninfo import conninfo_to_dict

    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
    user = quote(params.pop("user", "postgres"), safe="")
    password = params.pop("password", None)
    auth = user + (f":{quote(password, safe='')}" if password else "")
    database = quote(params.pop("dbname", "postgres"), safe="")
    host, port = params.pop("host", "localhost"), params.pop("port", "5432")
    params.setdefault("sslmode", "disable")
    if host.startswith("/"):
        return f"postgresql://{auth}@/{database}?" + urlencode({"host": host, "port": port, **params})
    return f"postgresql://{auth}@{host}:{port}/{database}?" + urlencode(params)


def _psql() -> str | None:
    from etl_assets.cli.sql import find_psql

    return find_psql()


class Tools:
    """The commands of every tool, against the scratch databases of this run."""

    def __init__(self, dsns: dict[str, str], home: Path) -> None:
        self.dsns, self.home = dsns, home
        self.sling = _sling_binary()
        self.psql = _psql()
        self.has_dlt = _importable("dlt")
        dagster_home = home / "dagster"
        dagster_home.mkdir()
        shutil.copyfile(PROJECT_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
        self.declaration = home / "tables.yaml"
        self.declaration.write_text(
            "tables:\n"
            f"  - name: {SCHEMA}.{TABLE}\n    extract: full\n    primary_key: [id]\n"
            f"    target: {SCHEMA}.full\n"
            f"  - name: {SCHEMA}.{TABLE}\n    extract: incremental\n    cursor: updated_at\n"
            f"    primary_key: [id]\n    target: {SCHEMA}.incremental\n")
        base = {k: v for k, v in os.environ.items()
                if k not in ("ETL_AUTOMATION", "ETL_CELERY_BROKER", "ETL_PIPELINES")}
        self.ours_env = {**base, "ETL_SOURCE_DSN": dsns["source"], "ETL_WAREHOUSE_DSN": dsns["ours"],
                         "DAGSTER_PG_URL": dagster_storage_url(dsns["dagster"]),
                         "DAGSTER_HOME": str(dagster_home), "ETL_PIPELINES": str(self.declaration),
                         "ETL_PROGRESS": "off"}
        self.plain_env = dict(base)

    def floor(self) -> Timing:
        return timed([sys.executable, "-c", FLOOR], self.ours_env)

    def ours(self, job: str) -> Timing:
        target = "full" if job == "full" else "incremental"
        return timed([sys.executable, "-m", "etl_assets.cli", "run", "--select", f"{SCHEMA}/{target}"],
                     self.ours_env)

    def sling_run(self, job: str) -> Timing:
        assert self.sling
        mode = ["--mode", "full-refresh"] if job == "full" else \
            ["--mode", "incremental", "--primary-key", "id", "--update-key", "updated_at"]
        env = {**self.plain_env, "BENCH_SRC": _sling_url(self.dsns["source"]),
               "BENCH_TGT": _sling_url(self.dsns["sling"]), "SLING_HOME_DIR": str(self.home / "sling"),
               "SLING_DISABLE_TELEMETRY": "true"}
        return timed([self.sling, "run", "--src-conn", "BENCH_SRC", "--src-stream", f"{SCHEMA}.{TABLE}",
                      "--tgt-conn", "BENCH_TGT", "--tgt-object", f"{SCHEMA}.{job_table(job)}", *mode],
                     env)

    def dlt_run(self, job: str) -> Timing:
        from etl_assets.bench.peer_dlt import _dlt_destination_url
        from etl_assets.settings import as_url

        mode = "full" if job == "full" else "incremental"
        return timed([sys.executable, "-c", DLT, as_url(self.dsns["source"]),
                      _dlt_destination_url(self.dsns["dlt"]), SCHEMA, TABLE, str(self.home / "dlt"), mode],
                     self.plain_env)

    def pipe(self) -> Timing:
        assert self.psql
        out = f"\\copy (SELECT * FROM {SCHEMA}.{TABLE}) TO STDOUT (FORMAT binary)"
        into = f"\\copy {SCHEMA}.{TABLE} FROM STDIN (FORMAT binary)"
        script = (f"{self.psql} -X -q -d \"$BENCH_SRC\" -c '{out}' | "
                  f"{self.psql} -X -q -v ON_ERROR_STOP=1 -d \"$BENCH_TGT\" -c '{into}'; "
                  "exit ${PIPESTATUS[0]}${PIPESTATUS[1]#0}")
        env = {**self.plain_env, "BENCH_SRC": self.dsns["source"], "BENCH_TGT": self.dsns["pipe"]}
        return timed(["bash", "-o", "pipefail", "-c", script], env)


def job_table(job: str) -> str:
    return "full" if job == "full" else "incremental"


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _target(tool: str, job: str) -> tuple[str, sql.Composable]:
    """The database role and table a tool's job writes."""
    if tool == "etl-assets":
        return "ours", sql.Identifier(SCHEMA, job_table(job))
    if tool == "sling":
        return "sling", sql.Identifier(SCHEMA, job_table(job))
    if tool == "dlt":
        return "dlt", sql.Identifier(f"{SCHEMA}_{'full' if job == 'full' else 'incremental'}", TABLE)
    return "pipe", sql.Identifier(SCHEMA, TABLE)


def run_process_bench(admin_dsn: str, out: Path, *, rows: int = 1_000_000, repeat: int = 3,
                      log: Callable[[str], None] = print) -> int:
    """Measure every job of every tool; results to ``out/process.json``. 0 when all ran verified."""
    prefix = f"etl_bench_proc_{secrets.token_hex(3)}"
    roles = ("source", "ours", "dagster", "sling", "dlt", "pipe")
    log(f"etl-assets bench --only process: {rows:,} rows, medians of {repeat}; scratch databases {prefix}_*")
    dsns = {role: create_database(admin_dsn, f"{prefix}_{role}") for role in roles}
    home = Path(tempfile.mkdtemp(prefix="etl-bench-process-"))
    results: list[JobResult] = []
    try:
        began = time.monotonic()
        _seed(dsns["source"], rows)
        log(f"  source: {rows:,} rows seeded in {time.monotonic() - began:.1f} s")
        with psycopg.connect(dsns["pipe"], autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
            conn.execute(ddl(sql.Identifier(SCHEMA, TABLE)))
        tools = Tools(dsns, home)
        results = _measure(tools, dsns, rows, repeat, log)
    finally:
        for role in roles:
            drop_database(admin_dsn, f"{prefix}_{role}")
        shutil.rmtree(home, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    report = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows,
              "repeat": repeat, "results": [asdict(r) for r in results],
              "ratios": ratios(results), "load_average": [round(x, 2) for x in os.getloadavg()]}
    (out / "process.json").write_text(json.dumps(report, indent=2))
    log("")
    log(format_process_table(report))
    drew = draw_safely(lambda: draw_process_chart(report, out / "process.png"), log)
    log(f"results: {out / 'process.json'}" + (f"; chart: {out / 'process.png'}" if drew else ""))
    ran = [r for r in results if not r.gap]
    return 0 if ran and all(r.verified for r in ran) else 1


def _measure(tools: Tools, dsns: dict[str, str], rows: int, repeat: int,
             log: Callable[[str], None]) -> list[JobResult]:
    sling_gap = None if tools.sling else "Sling is not installed: pip install -e '.[bench]' (linux x86_64)"
    dlt_gap = None if tools.has_dlt else "dlt is not installed: pip install -e '.[bench]'"
    pipe_gap = None if tools.psql else "no psql on the PATH or in the embedded server's wheel"
    results: list[JobResult] = []

    def source_sum() -> Any:
        return table_checksum_dsn(dsns["source"], sql.Identifier(SCHEMA, TABLE))

    def timed_run(job: str, tool: str, run: Callable[[], Timing], expected: Any, label: str,
                  note: str = "") -> Timing:
        """One timed run, verified against ``expected`` (None: verified by its exit status alone)."""
        t = run()
        if t.exit == 0 and expected is None:
            t.verified = True
        elif t.exit == 0:
            role, table = _target(tool, job)
            t.verified = table_checksum_dsn(dsns[role], table) == expected
        log(f"  {job} {tool} [{label}]{note}: {t.seconds:.2f} s, peak {t.peak_mb:.0f} MB, {_status(t)}")
        return t

    def add(job: str, tool: str, gap: str | None, timings: list[Timing]) -> None:
        result = JobResult(job=job, tool=tool, rows=rows, gap=gap)
        if gap:
            log(f"  {job} {tool}: GAP {gap}")
        elif timings:
            _summarize(result, timings)
        results.append(result)

    def measure(job: str, tool: str, run: Callable[[], Timing], gap: str | None = None,
                before: Callable[[], None] | None = None, verify: bool = True) -> None:
        timings = []
        for i in range(0 if gap else repeat):
            if before is not None:
                before()
            timings.append(timed_run(job, tool, run, source_sum() if verify else None, f"{i + 1}/{repeat}"))
        add(job, tool, gap, timings)

    # Untimed: the Dagster storage's and the warehouse's schemas are created once (a deployment has
    # them), and every incremental target gets its first load.
    warm = tools.floor()
    log(f"  warm-up (creates the Dagster storage): {warm.seconds:.2f} s (untimed)")
    first = {"etl-assets": lambda: tools.ours("incremental"),
             "sling": lambda: tools.sling_run("incremental"), "dlt": lambda: tools.dlt_run("incremental")}
    gaps = {"etl-assets": None, "sling": sling_gap, "dlt": dlt_gap}
    ready = {tool: run for tool, run in first.items() if not gaps[tool]}
    for tool, run in ready.items():
        t = run()
        log(f"  first incremental load {tool}: {t.seconds:.2f} s (untimed)"
            + ("" if t.exit == 0 else f", FAILED: {t.output[-2000:]}"))

    measure("floor", "floor", tools.floor, verify=False)

    def empty_pipe() -> None:
        with psycopg.connect(dsns["pipe"], autocommit=True) as conn:
            conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(SCHEMA, TABLE)))

    measure("full", "copy-pipe", tools.pipe, pipe_gap, before=empty_pipe)
    measure("full", "etl-assets", lambda: tools.ours("full"))
    measure("full", "sling", lambda: tools.sling_run("full"), sling_gap)
    measure("full", "dlt", lambda: tools.dlt_run("full"), dlt_gap)

    for tool, run in first.items():
        measure("incremental_unchanged", tool, run, gaps[tool])

    # Every tool picks up the same change: it happens once per repeat (another 1 % each time).
    changed_runs: dict[str, list[Timing]] = {tool: [] for tool in ready}
    for i in range(repeat):
        changed = _change(dsns["source"], i + 1)
        expected = source_sum()
        for tool, run in ready.items():
            changed_runs[tool].append(timed_run("incremental_1pct", tool, run, expected, f"{i + 1}/{repeat}",
                                                f" ({changed:,} changed)"))
    for tool in first:
        add("incremental_1pct", tool, gaps[tool], changed_runs.get(tool, []))
    return results


def _status(t: Timing) -> str:
    return "verified" if t.verified else f"NOT VERIFIED (exit {t.exit}): {t.output[-2000:]}"


def _summarize(result: JobResult, timings: list[Timing]) -> None:
    """Medians of the timed runs into ``result``; verified only when every run was."""
    result.runs = [{"seconds": round(t.seconds, 3), "peak_mb": round(t.peak_mb, 1), "verified": t.verified}
                   for t in timings]
    result.seconds = round(statistics.median(t.seconds for t in timings), 3)
    result.peak_mb = round(statistics.median(t.peak_mb for t in timings), 1)
    result.verified = all(t.verified for t in timings)


def _find(results: list[JobResult], job: str, tool: str) -> JobResult | None:
    for r in results:
        if r.job == job and r.tool == tool and r.seconds is not None and r.verified:
            return r
    return None


def ratios(results: list[JobResult] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's goals, computed from this run's own figures (None where a figure is missing)."""
    rs = [r if isinstance(r, JobResult) else JobResult(**r) for r in results]
    floor = _find(rs, "floor", "floor")
    out: list[dict[str, Any]] = []

    def goal(name: str, value: float | None, limit: float | None, unit: str) -> None:
        met = None if value is None or limit is None else value <= limit
        out.append({"goal": name, "value": value, "limit": limit, "unit": unit, "met": met})

    def seconds(job: str, tool: str) -> float | None:
        r = _find(rs, job, tool)
        return r.seconds if r else None

    def mb(job: str, tool: str) -> float | None:
        r = _find(rs, job, tool)
        return r.peak_mb if r else None

    fs, fm = (floor.seconds, floor.peak_mb) if floor else (None, None)

    def add(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round(a + b, 3)

    goal("incremental, nothing changed: seconds <= floor + 0.5 s",
         seconds("incremental_unchanged", "etl-assets"), add(fs, 0.5), "s")
    goal("incremental, 1 % changed: seconds <= floor + Sling's", seconds("incremental_1pct", "etl-assets"),
         add(fs, seconds("incremental_1pct", "sling")), "s")
    goal("incremental, 1 % changed: peak memory < dlt's", mb("incremental_1pct", "etl-assets"),
         mb("incremental_1pct", "dlt"), "MB")
    goal("full load: seconds < Sling's", seconds("full", "etl-assets"), seconds("full", "sling"), "s")
    goal("full load: peak memory <= floor + 64 MB", mb("full", "etl-assets"), add(fm, 64), "MB")
    return out


def format_process_table(report: dict[str, Any]) -> str:
    """The whole-process table (seconds / peak MB, and etl-assets' ratio to each peer)."""
    rs = [JobResult(**r) for r in report["results"]]
    tools = ["copy-pipe", "etl-assets", "sling", "dlt"]
    jobs = [("full", "full load"), ("incremental_unchanged", "incremental, nothing changed"),
            ("incremental_1pct", "incremental, 1 % changed")]
    floor = _find(rs, "floor", "floor")
    lines = [f"Whole processes, {report['rows']:,} rows (median of {report['repeat']}; seconds, peak MB):",
             "floor (a do-nothing Dagster asset run): "
             + (f"{floor.seconds:.2f} s, {floor.peak_mb:.0f} MB" if floor else "not measured"),
             "| job | " + " | ".join(tools) + " | etl-assets vs Sling | vs dlt |",
             "|---|" + "---|" * (len(tools) + 2)]
    for job, label in jobs:
        cells = []
        for tool in tools:
            r = next((x for x in rs if x.job == job and x.tool == tool), None)
            if r is None or r.seconds is None:
                cells.append("—" if r is None else "gap")
            else:
                mark = "" if r.verified else " (NOT VERIFIED)"
                cells.append(f"{r.seconds:.2f} s, {r.peak_mb:.0f} MB{mark}")
        ours = _find(rs, job, "etl-assets")

        def ratio(peer: str, ours: JobResult | None = ours, job: str = job) -> str:
            p = _find(rs, job, peer)
            return f"{p.seconds / ours.seconds:.2f}× as fast" if p and ours else "—"

        lines.append(f"| {label} | " + " | ".join(cells) + f" | {ratio('sling')} | {ratio('dlt')} |")
    lines.append("Goals (from this run's figures):")
    for g in report.get("ratios") or ratios(rs):
        state = "n/a" if g["met"] is None else ("met" if g["met"] else "MISSED")
        lines.append(f"  {g['goal']}: {g['value']} {g['unit']} (limit {g['limit']}): {state}")
    return "\n".join(lines)


def draw_process_chart(report: dict[str, Any], path: Path) -> bool:
    """Seconds and peak memory per job and tool, the floor as a line. False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rs = [JobResult(**r) for r in report["results"]]
    jobs = [("full", "full load"), ("incremental_unchanged", "incremental,\nnothing changed"),
            ("incremental_1pct", "incremental,\n1 % changed")]
    tools = [("copy-pipe", "tab:green"), ("etl-assets", "tab:blue"), ("sling", "tab:orange"),
             ("dlt", "tab:purple")]
    floor = _find(rs, "floor", "floor")
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    width = 0.2
    for col, (field_name, title) in enumerate([("seconds", "seconds per process (lower is better)"),
                                               ("peak_mb", "peak resident memory, MB")]):
        ax = axes[col]
        for i, (tool, color) in enumerate(tools):
            values = []
            for job, _ in jobs:
                r = _find(rs, job, tool)
                values.append(getattr(r, field_name) if r else 0)
            ax.bar([j + (i - 1.5) * width for j in range(len(jobs))], values, width, label=tool, color=color)
        if floor is not None:
            ax.axhline(getattr(floor, field_name), color="black", linestyle="--", linewidth=1,
                       label="floor: a do-nothing Dagster run")
        ax.set_xticks(range(len(jobs)), [label for _, label in jobs])
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(f"Whole processes, {report['rows']:,} rows (median of {report['repeat']})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
