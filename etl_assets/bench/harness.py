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


def _child(spec_path: str, result_path: str) -> int:
    """Run one contender inside this (fresh) process and write its :class:`Result` as JSON."""
    spec = json.loads(Path(spec_path).read_text())
    expected = Observed(**spec["expected"]) if spec.get("expected") else None
    result = Result(
        name=spec["name"], group=spec["group"], role=spec["role"], frame=spec["frame"], rows=spec["rows"],
        expected=asdict(expected) if expected else None,
    )
    case: Case | None = None
    try:
        module_name, func_name = spec["func"].split(":")
        factory = getattr(importlib.import_module(module_name), func_name)
        ctx = BenchContext(
            rows=spec["rows"], params=spec["params"], source_dsn=spec["source_dsn"],
            warehouse_dsn=spec["warehouse_dsn"], workdir=Path(spec["workdir"]), schema=spec["schema"],
        )
        case = factory(ctx)
        result.note = case.note
        if spec["warmup"]:
            case.prepare()
            case.run()
        verified = []
        for _ in range(max(1, spec["repeat"])):
            case.prepare()
            import gc

            gc.collect()
            baseline = rss_mb()
            result.peak_reset = reset_peak()
            if not result.peak_reset:
                baseline = min(baseline, peak_mb())
            start = time.perf_counter()
            output = case.run()
            elapsed = time.perf_counter() - start
            peak = peak_mb()
            result.seconds_runs.append(round(elapsed, 4))
            result.peak_mb_runs.append(round(max(0.0, peak - baseline), 1))
            result.baseline_mb = round(baseline, 1)
            observed = case.check(output)
            del output
            want = case.expect() if case.expect is not None else expected
            result.observed = asdict(observed)
            result.expected = asdict(want) if want is not None else None
            verified.append(want is not None and observed == want)
        result.verified = bool(verified) and all(verified)
        import resource

        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if children:  # a contender that forks workers (dlt's normalize can) shows it here
            result.children_peak_mb = round(children, 1)
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
    Path(result_path).write_text(json.dumps(result.as_dict()))
    return 0


def run_contender(
    contender: Contender, *, source_dsn: str, warehouse_dsn: str, workdir: Path, schema: str
) -> Result:
    """Run ``contender`` in a fresh Python process and return its result (never raises)."""
    base = Result(
        name=contender.name, group=contender.group, role=contender.role, frame=contender.frame,
        rows=contender.rows, expected=asdict(contender.expected) if contender.expected else None,
        tags=dict(contender.tags),
    )
    if contender.gap:
        base.gap = contender.gap
        return base
    spec = {
        "name": contender.name, "group": contender.group, "role": contender.role, "frame": contender.frame,
        "rows": contender.rows, "func": contender.func, "params": contender.params,
        "repeat": contender.repeat, "warmup": contender.warmup,
        "expected": asdict(contender.expected) if contender.expected else None,
        "source_dsn": source_dsn, "warehouse_dsn": warehouse_dsn, "workdir": str(workdir), "schema": schema,
    }
    with tempfile.TemporaryDirectory(prefix="etl-bench-") as tmp:
        spec_path = Path(tmp) / "spec.json"
        result_path = Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        env = dict(os.environ)
        # A contender's own progress output (dlt, SQLAlchemy warnings) must not interleave with ours.
        env.setdefault("RUNTIME__LOG_LEVEL", "WARNING")
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "etl_assets.bench.harness", str(spec_path), str(result_path)],
                env=env, capture_output=True, text=True, timeout=contender.timeout,
            )
        except subprocess.TimeoutExpired:
            base.error = f"timed out after {contender.timeout:.0f} s"
            return base
        wall = time.perf_counter() - start
        if not result_path.exists():
            base.error = f"the contender's process exited with {proc.returncode} and no result"
            base.note = (proc.stderr or "")[-3000:]
            return base
        data = json.loads(result_path.read_text())
    result = Result(**data)
    result.wall_seconds = round(wall, 2)
    result.tags = dict(contender.tags)
    if result.error and proc.stderr:
        result.note = (result.note + "\nstderr: " + proc.stderr[-1500:]).strip()
    return result


if __name__ == "__main__":
    # Run the imported module's _child, not this __main__ copy: the cases' Observed objects come
    # from etl_assets.bench.harness, and dataclass equality requires the very same class.
    from etl_assets.bench import harness as _harness

    sys.exit(_harness._child(sys.argv[1], sys.argv[2]))
