"""The benchmark harness: every contender in its own process, timed, memory-measured and verified.

Why a process per contender: peak memory is a per-process figure, and a contender that imports
SQLAlchemy or dlt, or leaves a 1 GB heap behind, must not colour the next one. The child process
imports what it needs, prepares its input (reads the shared Parquet file, builds the frame), and
only then records its resident set size as the *baseline*. For each repetition it resets the
kernel's high-water mark (``/proc/self/clear_refs``), runs the contender, and reports the peak RSS
minus the baseline: the memory the operation itself needed, not the interpreter's or the input's.

Timing: one warm-up run (not counted; it warms imports, connections and the server's cache), then
the median of ``repeat`` runs. Work that only resets the stage between runs (emptying a target,
refilling it with the "before" data) is done in ``prepare`` and never timed.

Verification: after every measured run the contender's output (a table, a frame or a stream
digest) is reduced to a row count and a checksum over all columns and compared with the value the
parent computed from the reference data. A fast wrong answer is reported as ``verified: false`` and
never wins a ratio.

The protocol is tiny on purpose: a contender is ``module:function`` plus JSON parameters; the
function receives a :class:`BenchContext` and returns a :class:`Case`.
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------------


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mb() -> float:
    """Current resident set size of this process in MiB."""
    kb = _status_kb("VmRSS")
    if kb is None:  # not Linux: fall back to the peak, the best we have
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return kb / 1024


def peak_mb() -> float:
    """Peak resident set size since the last :func:`reset_peak` (or process start), in MiB."""
    kb = _status_kb("VmHWM")
    if kb is None:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return kb / 1024


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0). False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# the protocol between the parent and a contender
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Observed:
    """What a contender produced, reduced to numbers: row count and checksum over all columns."""

    rows: int
    checksum: str


@dataclass
class Contender:
    """One thing to measure at one size. ``func`` is ``"package.module:function"``."""

    name: str
    group: str  # load | extract | e2e | incremental
    rows: int
    func: str
    params: dict[str, Any] = field(default_factory=dict)
    frame: str = "-"  # pandas | polars | - (what the contender handles)
    repeat: int = 3
    warmup: bool = True
    expected: Observed | None = None
    role: str = "ours"  # ours | ceiling | baseline | peer
    gap: str | None = None  # set when the contender cannot run here (missing piece), with the reason
    timeout: float = 1800.0
    memory_warmup: bool = False  # warm up in the memory process too (heavy lazy set-up on first run)
    slow: bool = False  # expected > 20 s per run: runs after the other contenders of its size
    tags: dict[str, Any] = field(default_factory=dict)  # for the ratios: op, scenario, paging, ...


@dataclass
class BenchContext:
    """What a contender's factory gets: sizes, connections strings, the shared data folder."""

    rows: int
    params: dict[str, Any]
    source_dsn: str
    warehouse_dsn: str
    workdir: Path
    schema: str

    def data_path(self, name: str) -> Path:
        return self.workdir / f"{name}.parquet"

    def polars(self, name: str):
        import polars as pl

        return pl.read_parquet(self.data_path(name))

    def pandas(self, name: str):
        return self.polars(name).to_pandas()

    def frame(self, name: str, kind: str):
        return self.pandas(name) if kind == "pandas" else self.polars(name)


@dataclass
class Case:
    """A prepared contender: ``run`` is timed; ``prepare`` resets the stage; ``check`` verifies."""

    run: Callable[[], Any]
    check: Callable[[Any], Observed]
    prepare: Callable[[], None] = lambda: None
    close: Callable[[], None] = lambda: None
    note: str = ""
    # When the right answer depends on the run (e.g. "the target equals the source as it is now"),
    # the case computes it itself after each run; otherwise the parent's expected value is used.
    expect: Callable[[], Observed] | None = None


@dataclass
class Result:
    name: str
    group: str
    role: str
    frame: str
    rows: int
    seconds: float | None = None
    seconds_runs: list[float] = field(default_factory=list)
    rows_per_second: float | None = None
    peak_mb: float | None = None
    peak_mb_runs: list[float] = field(default_factory=list)
    baseline_mb: float | None = None
    peak_reset: bool = False
    peak_mb_warm_allocator: float | None = None  # peak measured in the timing process (allocator warm)
    children_peak_mb: float | None = None  # largest RSS of any child process the contender started
    verified: bool = False
    observed: dict[str, Any] | None = None
    expected: dict[str, Any] | None = None
    error: str | None = None
    gap: str | None = None
    note: str = ""
    wall_seconds: float | None = None
    tags: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# The memory-measuring process returns freed memory to the kernel at once, so that neither the
# input's set-up nor the warm-up run leaves pages behind that the measured run silently reuses:
# polars' jemalloc without decay, glibc without its dynamic mmap threshold, Arrow on the system heap.
MEMORY_ENV = {
    "_RJEM_MALLOC_CONF": "dirty_decay_ms:0,muzzy_decay_ms:0",
    "MALLOC_MMAP_THRESHOLD_": "131072",
    "MALLOC_TRIM_THRESHOLD_": "131072",
    "ARROW_DEFAULT_MEMORY_POOL": "system",
}


def _measure_once(
    case: Case, expected: Observed | None
) -> tuple[float, float, float, bool, Observed, Observed | None]:
    """prepare, then one run.

    Returns (seconds, peak MiB above baseline, baseline MiB, peak reset?, observed, wanted).
    """
    import gc

    case.prepare()
    gc.collect()
    baseline = rss_mb()
    was_reset = reset_peak()
    if not was_reset:
        baseline = min(baseline, peak_mb())
    start = time.perf_counter()
    output = case.run()
    elapsed = time.perf_counter() - start
    peak = peak_mb()
    observed = case.check(output)
    del output
    want = case.expect() if case.expect is not None else expected
    return elapsed, max(0.0, peak - baseline), baseline, was_reset, observed, want


def _child(spec_path: str, result_path: str) -> int:
    """Run the contender(s) of ``spec_path`` in this process and write the result(s) as JSON.

    One spec (a dict) is the real measurement: a fresh process per contender. A list of specs is a
    smoke run's batch: one process verifies several contenders in turn (each still with its own
    peak-RSS reset), because starting ~40 interpreters costs more than the 2,000-row runs.
    """
    specs = json.loads(Path(spec_path).read_text())
    if isinstance(specs, list):
        out = []
        for spec in specs:
            out.append(_run_spec(spec))
            Path(result_path).write_text(json.dumps(out))  # what finished survives a crash of the next
        return 0
    Path(result_path).write_text(json.dumps(_run_spec(specs)))
    return 0


def _run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one contender in this process.

    ``mode`` "time": warm-up, then ``repeat`` timed runs. "memory": one run (after a warm-up only for
    contenders that ask for one) whose peak RSS above the baseline is the contender's memory.
    "both" (smoke runs): a single run for both. Every run, warm-up included, is verified.
    """
    expected = Observed(**spec["expected"]) if spec.get("expected") else None
    mode = spec.get("mode", "both")
    result = Result(
        name=spec["name"],
        group=spec["group"],
        role=spec["role"],
        frame=spec["frame"],
        rows=spec["rows"],
        expected=asdict(expected) if expected else None,
    )
    case: Case | None = None
    try:
        module_name, func_name = spec["func"].split(":")
        factory = getattr(importlib.import_module(module_name), func_name)
        ctx = BenchContext(
            rows=spec["rows"],
            params=spec["params"],
            source_dsn=spec["source_dsn"],
            warehouse_dsn=spec["warehouse_dsn"],
            workdir=Path(spec["workdir"]),
            schema=spec["schema"],
        )
        case = factory(ctx)
        result.note = case.note
        import resource

        # Imports may have run helper processes (dagster does); only a larger child started by the
        # contender's runs is the contender's.
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        measured = 1 if mode in ("memory", "both") else max(1, spec["repeat"])
        if mode == "time":
            warmups = 1 if spec["warmup"] else 0
        else:  # the memory run is cold unless the contender initialises heavily on its first run
            warmups = 1 if mode == "memory" and spec.get("memory_warmup") else 0
        verified = []
        for i in range(warmups + measured):
            elapsed, peak, baseline, was_reset, observed, want = _measure_once(case, expected)
            result.observed = asdict(observed)
            result.expected = asdict(want) if want is not None else None
            verified.append(want is not None and observed == want)
            if i < warmups:
                continue
            result.seconds_runs.append(round(elapsed, 4))
            result.peak_mb_runs.append(round(peak, 1))
            result.baseline_mb = round(baseline, 1)
            result.peak_reset = was_reset
        result.verified = bool(verified) and all(verified)
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if children > children_before:  # a contender that forks workers shows it here
            result.children_peak_mb = round(children / 1024, 1)
        result.seconds = round(statistics.median(result.seconds_runs), 4)
        result.peak_mb = round(statistics.median(result.peak_mb_runs), 1)
        if result.seconds > 0:
            result.rows_per_second = round(spec["rows"] / result.seconds)
    except Exception as exc:  # report, never crash the whole benchmark
        result.error = f"{type(exc).__name__}: {exc}".strip()[:2000]
        result.note = (result.note + "\n" + traceback.format_exc()[-3000:]).strip()
    finally:
        if case is not None:
            try:
                case.close()
            except Exception as exc:
                result.note += f"\nclose failed: {exc}"
    return result.as_dict()


def _spawn(
    spec: dict[str, Any], env: dict[str, str], timeout: float
) -> tuple[dict[str, Any] | None, str, float]:
    """Run one child; (its result dict or None, an explanation when None, wall seconds)."""
    with tempfile.TemporaryDirectory(prefix="etl-bench-") as tmp:
        spec_path = Path(tmp) / "spec.json"
        result_path = Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "etl_assets.bench.harness", str(spec_path), str(result_path)],
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return None, f"timed out after {timeout:.0f} s", time.perf_counter() - start
        wall = time.perf_counter() - start
        if not result_path.exists():
            return (
                None,
                (
                    f"the contender's process exited with {proc.returncode} and no result: "
                    f"{(proc.stderr or '')[-2000:]}"
                ),
                wall,
            )
        data = json.loads(result_path.read_text())
        if data.get("error") and proc.stderr:
            data["note"] = (data.get("note", "") + "\nstderr: " + proc.stderr[-1500:]).strip()
        return data, "", wall


def _spec(
    contender: Contender, source_dsn: str, warehouse_dsn: str, workdir: Path, schema: str, mode: str
) -> dict[str, Any]:
    return {
        "name": contender.name,
        "group": contender.group,
        "role": contender.role,
        "frame": contender.frame,
        "rows": contender.rows,
        "func": contender.func,
        "params": contender.params,
        "repeat": contender.repeat,
        "warmup": contender.warmup,
        "memory_warmup": contender.memory_warmup,
        "expected": asdict(contender.expected) if contender.expected else None,
        "source_dsn": source_dsn,
        "warehouse_dsn": warehouse_dsn,
        "workdir": str(workdir),
        "schema": schema,
        "mode": mode,
    }


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # A contender's own progress output (dlt, SQLAlchemy warnings) must not interleave with ours.
    env.setdefault("RUNTIME__LOG_LEVEL", "WARNING")
    return env


def _gap_result(contender: Contender) -> Result:
    return Result(
        name=contender.name,
        group=contender.group,
        role=contender.role,
        frame=contender.frame,
        rows=contender.rows,
        expected=asdict(contender.expected) if contender.expected else None,
        tags=dict(contender.tags),
        gap=contender.gap,
    )


def run_batch(
    contenders: list[Contender], *, source_dsn: str, warehouse_dsn: str, workdir: Path, schema: str
) -> list[Result]:
    """Smoke runs only: verify several contenders in ONE fresh process, one run each (mode "both")."""
    runnable = [c for c in contenders if not c.gap]
    specs = [_spec(c, source_dsn, warehouse_dsn, workdir, schema, "both") for c in runnable]
    done: list[dict[str, Any]] = []
    why = ""
    if specs:
        with tempfile.TemporaryDirectory(prefix="etl-bench-") as tmp:
            spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
            spec_path.write_text(json.dumps(specs))
            try:
                proc = subprocess.run(
                    [sys.executable, "-m", "etl_assets.bench.harness", str(spec_path), str(result_path)],
                    env=_child_env(),
                    capture_output=True,
                    text=True,
                    timeout=sum(c.timeout for c in runnable),
                )
                why = f"the batch process exited with {proc.returncode}: {(proc.stderr or '')[-1500:]}"
            except subprocess.TimeoutExpired:
                why = "the batch process timed out"
            if result_path.exists():
                done = json.loads(result_path.read_text())
    results: list[Result] = []
    by_spec = iter(done)
    for c in contenders:
        if c.gap:
            results.append(_gap_result(c))
            continue
        data = next(by_spec, None)
        if data is None:
            r = _gap_result(c)
            r.gap, r.error = None, why or "no result"
        else:
            r = Result(**data)
            r.tags = dict(c.tags)
        results.append(r)
    return results


def run_contender(
    contender: Contender,
    *,
    source_dsn: str,
    warehouse_dsn: str,
    workdir: Path,
    schema: str,
    separate_memory_run: bool = True,
) -> Result:
    """Run ``contender`` in fresh Python processes and return its result (never raises).

    With ``separate_memory_run`` (the real measurement) the timing runs and the memory run happen
    in two processes: the memory process returns freed pages to the kernel at once (MEMORY_ENV),
    which is right for measuring and wrong for timing. Without it (smoke runs) one process and one
    run give both figures.
    """
    base = _gap_result(contender)
    if contender.gap:
        return base
    spec = _spec(
        contender, source_dsn, warehouse_dsn, workdir, schema, "time" if separate_memory_run else "both"
    )
    env = _child_env()
    data, why, wall = _spawn(spec, env, contender.timeout)
    if data is None:
        base.error = why
        return base
    result = Result(**data)
    result.tags = dict(contender.tags)
    if separate_memory_run and not result.error:
        mem, why, mem_wall = _spawn({**spec, "mode": "memory"}, {**env, **MEMORY_ENV}, contender.timeout)
        wall += mem_wall
        if mem is None or mem.get("error"):
            result.error = "memory run: " + (why if mem is None else mem["error"])
        else:
            result.peak_mb_warm_allocator = result.peak_mb  # same process as the timing runs, for reference
            result.peak_mb = mem["peak_mb"]
            result.baseline_mb = mem["baseline_mb"]
            result.children_peak_mb = mem.get("children_peak_mb")
            result.verified = result.verified and mem["verified"]
    result.wall_seconds = round(wall, 2)
    return result


if __name__ == "__main__":
    # Run the imported module's _child, not this __main__ copy: the cases' Observed objects come
    # from etl_assets.bench.harness, and dataclass equality requires the very same class.
    from etl_assets.bench import harness as _harness

    sys.exit(_harness._child(sys.argv[1], sys.argv[2]))


def draw_safely(draw: Any, log: Any) -> bool:
    """Call ``draw()`` (a chart): True when drawn; a failure is logged, never raised, so that a chart
    never loses the measured results (False also when matplotlib is missing)."""
    try:
        return bool(draw())
    except Exception as exc:
        log(f"chart not drawn: {type(exc).__name__}: {exc}")
        return False
