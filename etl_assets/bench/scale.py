"""``etl-assets bench --only scale``: the same graph of many extracts three ways, and what each costs.

20 declared tables of 100,000 rows each (full extracts) are materialized

1. **in one process**: ``etl-assets run`` (Dagster's in-process execution);
2. **with the multiprocess executor**: the project's implicit asset job, reconstructable from
   ``etl_assets.definitions``, through ``dagster.execute_job`` (a process per step, as many at once
   as the machine has cores);
3. **on two Celery workers** (when RabbitMQ answers on 127.0.0.1:5672): two ``etl-assets worker``
   processes and ``etl-assets run`` with ``ETL_CELERY_BROKER`` set.

Each way writes into its own scratch warehouse (created next to the configured databases, with a
scratch Dagster storage, and dropped afterwards), and is timed wall-clock with the peak of the summed
resident memory of every process it started (sampled from /proc every 0.2 s: the run, its step
processes, the workers). Every target table is verified against the source (row count and an md5
over every row in key order). The point is that it works and how the cost grows, not a speed-up on
2 cores.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from etl_assets.bench.scratch import create_database, drop_database
from etl_assets.settings import PROJECT_ROOT, dagster_storage_url

SCHEMA = "bench_scale"
MULTIPROCESS = """
import sys
import dagster as dg
from dagster._core.definitions.assets.job.asset_job import IMPLICIT_ASSET_JOB_NAME
from dagster._core.definitions.reconstruct import ReconstructableRepository

recon = ReconstructableRepository.for_module("etl_assets.definitions", "defs",
                                             working_directory=sys.argv[1]).get_reconstructable_job(
    IMPLICIT_ASSET_JOB_NAME)
keys = [dg.AssetKey.from_user_string(k) for k in sys.argv[2:]]
with dg.DagsterInstance.get() as instance:
    result = dg.execute_job(recon, instance=instance, asset_selection=keys, raise_on_error=False)
sys.exit(0 if result.success else 1)
"""


def _seed(source: str, tables: int, rows: int) -> None:
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
        for i in range(tables):
            t = sql.Identifier(SCHEMA, f"t{i:02}")
            conn.execute(sql.SQL(
                "CREATE TABLE {} (id bigint PRIMARY KEY, amount numeric(12,2) NOT NULL, note text,"
                " updated_at timestamptz NOT NULL)").format(t))
            conn.execute(sql.SQL(
                "INSERT INTO {} SELECT g, (g %% 10000) / 100.0, 'row ' || g, "
                "timestamptz '2026-01-01' + g * interval '1 second' FROM generate_series(1, %s) g"
            ).format(t), (rows,))
        conn.execute("ANALYZE")


def _declaration(path: Path, tables: int) -> list[str]:
    lines = ["tables:"]
    keys = []
    for i in range(tables):
        lines += [f"  - name: {SCHEMA}.t{i:02}", "    extract: full", "    load: truncate_insert",
                  "    primary_key: [id]", f"    target: {SCHEMA}.t{i:02}"]
        keys.append(f"{SCHEMA}/t{i:02}")
    path.write_text("\n".join(lines) + "\n")
    return keys


def _digests(dsn: str, tables: int) -> dict[str, tuple[int, str]]:
    out = {}
    with psycopg.connect(dsn) as conn:
        for i in range(tables):
            t = sql.Identifier(SCHEMA, f"t{i:02}")
            out[f"t{i:02}"] = conn.execute(sql.SQL(
                "SELECT count(*), md5(coalesce(string_agg(concat_ws('|', id, amount, note, updated_at), ','"
                " ORDER BY id), '')) FROM {}").format(t)).fetchone()
    return out


def _tree_rss_mb(roots: list[int]) -> float:
    """Summed resident memory of ``roots`` and all their descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ppid, pages = int(fields[1]), int(fields[21])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = pages * os.sysconf("SC_PAGE_SIZE")
    total, stack, seen = 0, list(roots), set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total / 2**20


class _Sampler:
    """Peak of the summed RSS of a set of process trees, sampled in a thread."""

    def __init__(self) -> None:
        self.roots: list[int] = []
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            if self.roots:
                self.peak_mb = max(self.peak_mb, _tree_rss_mb(list(self.roots)))

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _broker_answers() -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


def _run(cmd: list[str], env: dict[str, str], sampler: _Sampler, timeout: float = 1800) -> tuple[int, str]:
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    sampler.roots.append(proc.pid)
    try:
        output, _ = proc.communicate(timeout=timeout)
    finally:
        sampler.roots.remove(proc.pid)
    return proc.returncode, output


def _way(name: str, env: dict[str, str], keys: list[str], source_digests: dict, warehouse: str,
         tables: int, log: Any) -> dict[str, Any]:
    workers: list[subprocess.Popen] = []
    began = time.monotonic()
    with _Sampler() as sampler:
        try:
            if name == "celery":
                for _ in range(2):
                    w = subprocess.Popen(
                        [sys.executable, "-m", "etl_assets.cli", "worker", "--concurrency", "1"],
                        cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                        start_new_session=True)
                    workers.append(w)
                    sampler.roots.append(w.pid)
                time.sleep(8)  # the workers connect to the broker
                began = time.monotonic()
            if name == "multiprocess":
                code, output = _run([sys.executable, "-c", MULTIPROCESS, str(PROJECT_ROOT), *keys], env,
                                    sampler)
            else:
                code, output = _run([sys.executable, "-m", "etl_assets.cli", "run", "--select",
                                     ",".join(keys)], env, sampler)
            seconds = time.monotonic() - began
        finally:
            for w in workers:
                if w.poll() is None:
                    os.killpg(w.pid, signal.SIGTERM)
            for w in workers:
                try:
                    w.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(w.pid, signal.SIGKILL)
    verified = code == 0 and _digests(warehouse, tables) == source_digests
    figures = {"way": name, "seconds": round(seconds, 1), "peak_mb": round(sampler.peak_mb), "exit": code,
               "verified": verified}
    log(f"  {name}: {figures['seconds']} s, peak {figures['peak_mb']} MB (every process it started), "
        f"{'verified' if verified else 'NOT VERIFIED: ' + output[-1500:]}")
    return figures


def run_scale_bench(admin_dsn: str, out: Path, *, tables: int = 20, rows: int = 100_000,
                    log: Any = print) -> int:
    """Measure the three ways; results to ``out/scale.json``. 0 when every way ran and verified."""
    prefix = f"etl_bench_scale_{secrets.token_hex(3)}"
    ways = ["in_process", "multiprocess"] + (["celery"] if _broker_answers() else [])
    names = {"source": f"{prefix}_source", **{w: f"{prefix}_{w}" for w in ways},
             **{f"dagster_{w}": f"{prefix}_dagster_{w}" for w in ways}}
    log(f"etl-assets bench --only scale: {tables} tables of {rows:,} rows; scratch databases {prefix}_*")
    if "celery" not in ways:
        log("  celery: skipped, no RabbitMQ answers on 127.0.0.1:5672")
    dsns = {role: create_database(admin_dsn, name) for role, name in names.items()}
    home = Path(tempfile.mkdtemp(prefix="etl-bench-scale-"))
    results: list[dict[str, Any]] = []
    try:
        began = time.monotonic()
        _seed(dsns["source"], tables, rows)
        log(f"  source: {tables} tables seeded in {time.monotonic() - began:.1f} s")
        source_digests = _digests(dsns["source"], tables)
        declaration = home / "tables.yaml"
        keys = _declaration(declaration, tables)
        for way in ways:
            dagster_home = home / f"dagster_{way}"
            dagster_home.mkdir()
            shutil.copyfile(PROJECT_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
            env = {k: v for k, v in os.environ.items() if k not in ("ETL_AUTOMATION", "ETL_CELERY_BROKER")}
            env.update({"ETL_SOURCE_DSN": dsns["source"], "ETL_WAREHOUSE_DSN": dsns[way],
                        "DAGSTER_PG_URL": dagster_storage_url(dsns[f"dagster_{way}"]),
                        "DAGSTER_HOME": str(dagster_home), "ETL_PIPELINES": str(declaration),
                        "ETL_PROGRESS": "off"})
            if way == "celery":
                env["ETL_CELERY_BROKER"] = "pyamqp://guest:guest@127.0.0.1:5672//"
                env["ETL_CELERY_QUEUE"] = f"{prefix}_queue"
            results.append(_way(way, env, keys, source_digests, dsns[way], tables, log))
    finally:
        for name in names.values():
            drop_database(admin_dsn, name)
        shutil.rmtree(home, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    report = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "tables": tables,
              "rows": rows, "results": results, "load_average": [round(x, 2) for x in os.getloadavg()]}
    (out / "scale.json").write_text(json.dumps(report, indent=2))
    log(f"results: {out / 'scale.json'}")
    return 0 if results and all(r["verified"] for r in results) else 1
