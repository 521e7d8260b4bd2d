"""``python -m etl_assets.bench`` / ``etl-assets bench``: the whole benchmark in one run.

Steps: resolve the databases (the embedded server unless DSNs are set); generate the data set once
per size (Parquet files every contender reads, so all see identical rows); load the reference
tables and compute the expected checksums; run every contender in its own process
(:mod:`etl_assets.bench.harness`); print a table with the target ratios; write ``bench.json`` and
``bench.png`` into ``--out``.

Contenders come from :data:`CONTENDER_MODULES`: each module exposes ``contenders(plan)`` returning a
list of :class:`~etl_assets.bench.harness.Contender`. A module that is missing (a piece of the
project not built yet) becomes a named gap in the report instead of an error.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from etl_assets import console
from etl_assets.bench.harness import Contender, Observed, Result, draw_safely, run_batch, run_contender

DEFAULT_SIZES = (100_000, 1_000_000)
LARGE_SIZE = 5_000_000
QUICK_SIZE = 2_000
SCHEMA = "etl_bench"

# Contender modules, in the order they run. Each exposes contenders(plan) -> list[Contender].
CONTENDER_MODULES: tuple[str, ...] = (
    "etl_assets.bench.baselines",
    "etl_assets.bench.ours",
    "etl_assets.bench.peer_dlt",
    "etl_assets.bench.incremental",
    "etl_assets.bench.asset_run",
)


@dataclass
class Plan:
    """What one run measures, and the expected answers every contender is checked against."""

    sizes: tuple[int, ...]
    repeat: int
    quick: bool
    large: bool
    workdir: Path
    schema: str = SCHEMA
    source_dsn: str = ""
    warehouse_dsn: str = ""
    expected: dict[str, Observed] = field(default_factory=dict)

    def table(self, dataset: str, rows: int) -> Observed:
        """Expected (rows, checksum) of a table holding ``dataset`` (base, changed, halfres) at ``rows``."""
        return self.expected[f"table:{dataset}:{rows}"]

    def frame(self, dataset: str, rows: int) -> Observed:
        """Expected (rows, digest) of a frame or chunk stream holding ``dataset`` at ``rows``."""
        return self.expected[f"frame:{dataset}:{rows}"]

    def repeat_for(self, rows: int, *, seconds_per_million: float) -> int:
        """Fewer repetitions for slow contenders at big sizes (announced in the results): one run,
        and no full-size warm-up, where a single run is expected to take more than 20 s."""
        if self.quick:
            return 1
        estimate = seconds_per_million * rows / 1_000_000
        return 1 if estimate > 20 else self.repeat

    def slow(self, rows: int, *, seconds_per_million: float) -> dict[str, Any]:
        """``repeat`` and ``warmup`` for a contender that takes ``seconds_per_million``."""
        repeat = self.repeat_for(rows, seconds_per_million=seconds_per_million)
        slow = repeat == 1 and self.repeat > 1
        return {"repeat": repeat, "warmup": repeat > 1 or self.repeat == 1, "slow": slow}


# ---------------------------------------------------------------------------------------------
# the data set
# ---------------------------------------------------------------------------------------------


def prepare_data(plan: Plan, log=print) -> None:
    """Write the Parquet files, load the reference tables, compute every expected checksum."""
    import psycopg
    from psycopg import sql

    from etl_assets.bench.data import copy_frame_csv, frame_digest, make_frame, recreate_table, table_checksum

    with (
        psycopg.connect(plan.warehouse_dsn, autocommit=True) as wh,
        psycopg.connect(plan.source_dsn, autocommit=True) as src,
    ):
        for conn in (wh, src):
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(plan.schema)))
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(plan.schema)))
        for n in plan.sizes:
            start = time.perf_counter()
            half = n // 2
            frames = {
                "base": make_frame(1, n + 1, 0),
                "changed": make_frame(1, n + 1, 1),
                "half": make_frame(half + 1, half + n + 1, 1),
            }
            for name, frame in frames.items():
                frame.write_parquet(plan.workdir / f"{name}_{n}.parquet")
            plan.expected[f"frame:base:{n}"] = frame_digest(frames["base"])
            plan.expected[f"frame:changed:{n}"] = frame_digest(frames["changed"])
            refs = {
                "base": [frames["base"]],
                "changed": [frames["changed"]],
                "halfres": [frames["base"].slice(0, half), frames["half"]],
            }
            with wh.transaction():
                for name, parts in refs.items():
                    ident = sql.Identifier(plan.schema, f"ref_{name}_{n}")
                    recreate_table(wh, ident)
                    for part in parts:
                        copy_frame_csv(wh, ident, part)
            for name in refs:
                plan.expected[f"table:{name}:{n}"] = table_checksum(
                    wh, sql.Identifier(plan.schema, f"ref_{name}_{n}")
                )
            src_ident = sql.Identifier(plan.schema, f"src_{n}")
            with src.transaction():
                recreate_table(src, src_ident)
                copy_frame_csv(src, src_ident, frames["base"])
                src.execute(sql.SQL("CREATE INDEX ON {} (updated_at)").format(src_ident))
            src.execute(sql.SQL("VACUUM ANALYZE {}").format(src_ident))
            wh.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(plan.schema, f"ref_base_{n}")))
            if table_checksum(src, src_ident) != plan.table("base", n):
                raise RuntimeError("the source copy of the benchmark data does not match its reference")
            del frames, refs
            log(f"  data: {n:,} rows ready in {time.perf_counter() - start:.1f} s")


def drop_data(plan: Plan) -> None:
    import psycopg
    from psycopg import sql

    for dsn in (plan.warehouse_dsn, plan.source_dsn):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(plan.schema)))
            for (schema,) in conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (plan.schema + "\\_%",)
            ).fetchall():
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


# ---------------------------------------------------------------------------------------------
# contenders and ratios
# ---------------------------------------------------------------------------------------------


def collect_contenders(plan: Plan) -> list[Contender]:
    found: list[Contender] = []
    for name in CONTENDER_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            found.append(
                Contender(
                    name=name.rsplit(".", 1)[-1],
                    group="missing",
                    rows=0,
                    func="",
                    role="ours",
                    gap=f"module {name} could not be imported: {exc}",
                )
            )
            continue
        found.extend(module.contenders(plan))
    return found


def _pick(results: list[Result], **want: Any) -> list[Result]:
    out = []
    for r in results:
        if all(
            (r.tags.get(k) if k not in ("rows", "role", "frame", "group") else getattr(r, k)) == v
            for k, v in want.items()
        ):
            out.append(r)
    return out


def _fastest(results: list[Result]) -> Result | None:
    ok = [r for r in results if r.verified and r.seconds]
    return min(ok, key=lambda r: r.seconds) if ok else None


@dataclass
class Ratio:
    target: str
    what: str
    value: float | None
    goal: str
    met: bool | None
    detail: str = ""


def compute_ratios(plan: Plan, results: list[Result]) -> list[Ratio]:
    """The issue's targets, each computed from results of this same run."""
    ratios: list[Ratio] = []
    for n in plan.sizes:
        for kind in ("pandas", "polars"):
            ceiling = _fastest(_pick(results, group="load", role="ceiling", rows=n, frame=kind))
            to_sql = _fastest(_pick(results, group="load", rows=n, op="to_sql", method="default"))
            for r in _pick(results, group="load", role="ours", rows=n, frame=kind, op="upsert"):
                scen = r.tags.get("scenario")
                label = f"upsert ({scen}) {kind} {n:,}"
                if not r.verified or not r.seconds:
                    ratios.append(
                        Ratio(
                            "upsert >= 0.5x ceiling",
                            label,
                            None,
                            ">= 0.5",
                            None,
                            r.gap or r.error or "not verified",
                        )
                    )
                    continue
                if ceiling:
                    v = ceiling.seconds / r.seconds
                    ratios.append(
                        Ratio(
                            "upsert >= 0.5x ceiling",
                            label,
                            round(v, 2),
                            ">= 0.5",
                            v >= 0.5,
                            f"ceiling = {ceiling.name} {ceiling.seconds:.2f} s",
                        )
                    )
                if to_sql:
                    v = to_sql.seconds / r.seconds
                    ratios.append(
                        Ratio(
                            "upsert >= 5x pandas to_sql",
                            label,
                            round(v, 2),
                            ">= 5",
                            v >= 5,
                            f"to_sql {to_sql.seconds:.2f} s",
                        )
                    )
    # chunked extract memory: biggest size against 1,000,000 (or the two largest sizes measured)
    chunked = [r for r in _pick(results, group="extract", role="ours", op="chunked") if r.verified]
    sizes = sorted({r.rows for r in chunked})
    if len(sizes) >= 2:
        big = sizes[-1]
        ref = 1_000_000 if 1_000_000 in sizes and big != 1_000_000 else sizes[-2]
        for name in sorted({r.name for r in chunked}):
            b = [r for r in chunked if r.rows == big and r.name == name]
            s = [r for r in chunked if r.rows == ref and r.name == name]
            if b and s and s[0].peak_mb:
                v = b[0].peak_mb / max(s[0].peak_mb, 1.0)
                ratios.append(
                    Ratio(
                        f"chunked extract peak memory {big:,} <= 1.2x {ref:,}",
                        name,
                        round(v, 2),
                        "<= 1.2",
                        v <= 1.2,
                        f"{b[0].peak_mb:.0f} MB vs {s[0].peak_mb:.0f} MB",
                    )
                )
    # end to end against dlt
    for n in plan.sizes:
        dlt = _fastest(_pick(results, group="e2e", role="peer", rows=n))
        for r in _pick(results, group="e2e", role="ours", rows=n):
            if not (dlt and r.verified and r.seconds):
                ratios.append(
                    Ratio(
                        "end to end faster than dlt, less memory",
                        f"{r.name} {n:,}",
                        None,
                        "> 1 and less memory",
                        None,
                        r.gap or r.error or "no verified dlt run",
                    )
                )
                continue
            v = dlt.seconds / r.seconds
            less = (r.peak_mb or 0) < (dlt.peak_mb or 0)
            ratios.append(
                Ratio(
                    "end to end faster than dlt, less memory",
                    f"{r.name} {n:,}",
                    round(v, 2),
                    "> 1 and less memory",
                    v > 1 and less,
                    f"dlt {dlt.seconds:.2f} s {dlt.peak_mb:.0f} MB; ours {r.seconds:.2f} s "
                    f"{r.peak_mb:.0f} MB",
                )
            )
    # incremental: biggest table against the smallest
    inc = [r for r in _pick(results, group="incremental", role="ours") if r.verified and r.seconds]
    names = sorted({r.tags.get("variant", r.name) for r in inc})
    for variant in names:
        rs = sorted((r for r in inc if r.tags.get("variant", r.name) == variant), key=lambda r: r.rows)
        if len(rs) >= 2:
            v = rs[-1].seconds / rs[0].seconds
            ratios.append(
                Ratio(
                    f"incremental cost {rs[-1].rows:,} <= 1.5x {rs[0].rows:,}",
                    variant,
                    round(v, 2),
                    "<= 1.5",
                    v <= 1.5,
                    f"{rs[-1].seconds:.3f} s vs {rs[0].seconds:.3f} s",
                )
            )
    return ratios


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):  # not Linux: keep platform.processor()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    with contextlib.suppress(OSError):
        info["load_average_at_start"] = os.getloadavg()
    return info


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(results: list[Result]) -> str:
    header = (
        f"{'group':<12} {'contender':<44} {'frame':<7} {'rows':>10} {'seconds':>9} {'rows/s':>11} "
        f"{'peak MB':>8} {'runs':>4} verified"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        status = "yes" if r.verified else ("GAP" if r.gap else ("ERROR" if r.error else "NO"))
        lines.append(
            f"{r.group:<12} {r.name[:44]:<44} {r.frame:<7} {r.rows:>10,} {_fmt(r.seconds, '9.2f')} "
            f"{_fmt(r.rows_per_second, '11,.0f')} {_fmt(r.peak_mb, '8.0f')} {len(r.seconds_runs):>4} {status}"
        )
        if r.gap:
            lines.append(f"{'':<12}   gap: {r.gap}")
        elif r.error:
            lines.append(f"{'':<12}   error: {r.error[:300]}")
    return "\n".join(lines)


def format_ratios(ratios: list[Ratio]) -> str:
    lines = []
    for r in ratios:
        verdict = "met" if r.met else ("MISSED" if r.met is False else "n/a")
        lines.append(
            f"{r.target:<44} {r.what:<36} {_fmt(r.value, '7.2f')} (goal {r.goal}) {verdict}  {r.detail}"
        )
    return "\n".join(lines)


def format_markdown(report: dict[str, Any]) -> str:
    """A ``bench.json`` as the Markdown README shows: the machine, every result, the targets."""
    m = report["machine"]
    load = m.get("load_average_at_start")
    lines = [
        f"Taken {report['started_at']} on {m['cpus']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, "
        f"PostgreSQL {report['server_version']}, Python {m['python']}"
        + (f"; load average at start {load[0]:.1f}" if load else "")
        + f"; median of {report['repeat']} runs after a warm-up"
        + ("" if report.get("complete", True) else "; PARTIAL (the run was stopped early)")
        + ".",
        "",
        "| group | contender | frame | rows | seconds | rows/s | peak MB | verified |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in report["results"]:
        if r.get("gap"):
            status = "not run: " + r["gap"]
        elif r.get("error"):
            status = "error: " + r["error"].splitlines()[0][:120]
        else:
            status = "yes" if r["verified"] else "**NO**"
        lines.append(
            f"| {r['group']} | {r['name']} | {r['frame']} | {r['rows']:,} | "
            f"{_fmt(r.get('seconds'), '.2f')} | {_fmt(r.get('rows_per_second'), ',.0f')} | "
            f"{_fmt(r.get('peak_mb'), '.0f')} | {status} |"
        )
    if not report.get("ratios") and report["results"]:  # a partial file: compute what its results allow
        plan = Plan(
            sizes=tuple(report["sizes"]),
            repeat=report["repeat"],
            quick=report["quick"],
            large=False,
            workdir=Path("."),
        )
        ratios = compute_ratios(plan, [Result(**r) for r in report["results"]])
        report = {**report, "ratios": [asdict(r) for r in ratios]}
    if report.get("ratios"):
        lines += ["", "| target | what | value | goal | met | detail |", "|---|---|---:|---|---|---|"]
        for r in report["ratios"]:
            met = "yes" if r["met"] else ("**no**" if r["met"] is False else "n/a")
            lines.append(
                f"| {r['target']} | {r['what']} | {_fmt(r['value'], '.2f')} | {r['goal']} | {met} | "
                f"{r['detail']} |"
            )
    return "\n".join(lines)


def draw_chart(results: list[Result], path: Path) -> bool:
    """Rows per second and peak memory per contender and size. False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    groups = [
        g
        for g in ("load", "extract", "e2e", "incremental")
        if any(r.group == g and r.seconds for r in results)
    ]
    if not groups:
        return False
    heights = [max(2.0, 0.28 * len([r for r in results if r.group == g and r.seconds]) + 1) for g in groups]
    fig, axes = plt.subplots(
        len(groups), 2, figsize=(16, sum(heights)), squeeze=False, gridspec_kw={"height_ratios": heights}
    )
    for row, group in enumerate(groups):
        rs = [r for r in results if r.group == group and r.seconds]
        labels = [f"{r.name} [{r.frame}] {r.rows:,}" + ("" if r.verified else " (UNVERIFIED)") for r in rs]
        colors = [
            "tab:red"
            if not r.verified
            else {"ours": "tab:blue", "ceiling": "tab:green", "peer": "tab:purple"}.get(r.role, "tab:gray")
            for r in rs
        ]
        y = range(len(rs))
        ax = axes[row][0]
        if group == "incremental":  # the table size is not what is read: show the time itself
            ax.barh(list(y), [r.seconds or 0 for r in rs], color=colors)
            ax.set_title(f"{group}: seconds to pick up the changed rows (lower is better)", fontsize=9)
        else:
            ax.barh(list(y), [r.rows_per_second or 0 for r in rs], color=colors)
            ax.set_title(
                f"{group}: rows per second, log (blue ours, green ceiling, gray baselines, purple peer)",
                fontsize=9,
            )
            ax.set_xscale("log")
        ax.set_yticks(list(y), labels, fontsize=7)
        ax.invert_yaxis()
        ax = axes[row][1]
        ax.barh(list(y), [r.peak_mb or 0 for r in rs], color=colors)
        ax.set_yticks(list(y), [""] * len(rs))
        ax.invert_yaxis()
        ax.set_title(f"{group}: peak RSS above baseline, MB", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``etl-assets bench`` / ``python -m etl_assets.bench`` (one definition for both)."""
    parser.add_argument(
        "--rows",
        type=lambda s: int(s.replace(",", "").replace("_", "")),
        action="append",
        metavar="N",
        help="table size to measure (repeatable; default 100,000 and 1,000,000)",
    )
    parser.add_argument("--large", action="store_true", help=f"also measure {LARGE_SIZE:,} rows")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test: {QUICK_SIZE:,} rows, one run per contender, no warm-up",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="measured runs per contender (median; default 3)"
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        default="bench-results",
        help="folder for bench.json and bench.png (default ./bench-results)",
    )
    parser.add_argument(
        "--only",
        metavar="TEXT",
        action="append",
        help="run only contenders whose group or name contains TEXT (repeatable); "
        "`--only stream` measures the event stream's latency and drain rate instead, `--only scale` "
        "20 extracts in one process, with the multiprocess executor and on two Celery workers; "
        "`--only process` whole `etl-assets run` processes beside Sling, dlt and a psql COPY pipe "
        "(one --rows size); `--only cdc` CDC apply (--rows changes) and the capture triggers' cost "
        "(2x --rows-row writes)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the etl_bench schemas afterwards")
    parser.add_argument(
        "--markdown",
        metavar="JSON",
        help="measure nothing: print an earlier bench.json as the Markdown tables README shows",
    )


def run(args: argparse.Namespace, log=print) -> int:
    """Run the benchmark; exit status 0 when every contender that ran was verified, else 1."""
    from etl_assets.environment import ensure_environment

    if getattr(args, "markdown", None):
        log(format_markdown(json.loads(Path(args.markdown).read_text())))
        return 0
    env = ensure_environment(seed_demo=False)
    if threading.current_thread() is threading.main_thread():
        # `kill` of a long run still drops its tables (and the running contender's process).
        signal.signal(signal.SIGTERM, _interrupt)
    if args.only and set(args.only) == {"scale"}:  # many extracts three ways: its own measurement
        from etl_assets.bench.scale import run_scale_bench

        return run_scale_bench(env.warehouse_dsn, Path(args.out).resolve(), tables=5 if args.quick else 20,
                               rows=10_000 if args.quick else 100_000, log=log)
    if args.only and set(args.only) == {"process"}:  # whole processes, timed as a user times them
        from etl_assets.bench.process import run_process_bench

        rows = (args.rows or [20_000 if args.quick else 1_000_000])[0]
        return run_process_bench(env.warehouse_dsn, Path(args.out).resolve(), rows=rows,
                                 repeat=1 if args.quick else max(1, args.repeat), log=log)
    if args.only and set(args.only) == {"cdc"}:  # change capture: apply rate and the triggers' cost
        from etl_assets.bench.cdc import run_cdc_bench
        from etl_assets.settings import with_database

        rows = (args.rows or [2_000 if args.quick else 100_000])[0]
        repeat = 1 if args.quick else max(1, args.repeat)
        admin = with_database(env.source_dsn, "postgres")
        applied = run_cdc_bench(admin, rows, rows, repeat, log=log)
        return run_cdc_bench(admin, 2 * rows, 0, repeat, triggers=True, log=log) or applied
    if args.only and set(args.only) == {"stream"}:  # the stream has its own measurement, not contenders
        from etl_assets.bench.stream import run_stream_bench

        quick = bool(args.quick)
        return run_stream_bench(
            env.source_dsn, Path(args.out).resolve(), seconds=5 if quick else 60,
            backlog=5_000 if quick else 100_000, queues=not quick, log=log,
        )
    sizes: tuple[int, ...] = tuple(args.rows or ((QUICK_SIZE,) if args.quick else DEFAULT_SIZES))
    if args.large and LARGE_SIZE not in sizes:
        sizes = (*sizes, LARGE_SIZE)
    sizes = tuple(sorted(set(sizes)))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    machine_info = machine()
    json_path = out / "bench.json"
    partial_path = out / "bench.partial.json"
    with tempfile.TemporaryDirectory(prefix="etl-bench-data-") as tmp:
        plan = Plan(
            sizes=sizes,
            repeat=max(1, args.repeat),
            quick=bool(args.quick),
            large=bool(args.large),
            workdir=Path(tmp),
            source_dsn=env.source_dsn,
            warehouse_dsn=env.warehouse_dsn,
        )
        log(f"etl-assets bench: sizes {', '.join(f'{n:,}' for n in sizes)}; data in {tmp}")
        prepare_data(plan, log)
        contenders = collect_contenders(plan)
        if args.only:
            contenders = [c for c in contenders if any(t in c.group or t in c.name for t in args.only)]
        # Every contender of the smallest size first, the slow baselines last within a size: a run
        # stopped early still has whole sizes, and the most of the next one.
        contenders.sort(key=lambda c: (c.rows, c.slow))
        results: list[Result] = []
        # A bar of results on a terminal (ETL_PROGRESS); the per-result lines print above it.
        bar = console.progress(len(contenders), "bench", unit="results", out=log)

        def report(r: Result) -> None:
            results.append(r)
            bar.update(1, note=f"{r.group} {r.name[:40]} {r.rows:,}")
            partial = _report_dict(started, machine_info, plan, results, [])
            partial_path.write_text(json.dumps({**partial, "complete": False}, indent=2))
            status = (
                "verified"
                if r.verified
                else ("GAP " + (r.gap or "") if r.gap else "ERROR " + (r.error or "wrong result"))
            )
            bar.write(
                f"  [{len(results)}/{len(contenders)}] {r.group} {r.name} [{r.frame}] {r.rows:,}: "
                f"{_fmt(r.seconds, '.2f')} s, {_fmt(r.rows_per_second, ',.0f')} rows/s, "
                f"+{_fmt(r.peak_mb, '.0f')} MB, {status[:200]}"
            )

        where = {
            "source_dsn": plan.source_dsn,
            "warehouse_dsn": plan.warehouse_dsn,
            "workdir": plan.workdir,
            "schema": plan.schema,
        }
        try:
            if plan.quick:  # a smoke run verifies; one process per contender module is enough
                batches: dict[str, list[Contender]] = {}
                for c in contenders:
                    c.warmup, c.repeat = False, 1
                    batches.setdefault(c.func.split(":")[0], []).append(c)
                for batch in batches.values():
                    for r in run_batch(batch, **where):
                        report(r)
            else:
                for c in contenders:
                    report(run_contender(c, **where))
        finally:
            bar.close()
            if not args.keep:
                drop_data(plan)
    ratios = compute_ratios(plan, results)
    log("")
    log(format_table(results))
    log("")
    log("Targets (ratios from this run):")
    log(format_ratios(ratios) or "  (none computable: see gaps)")
    report = {**_report_dict(started, machine_info, plan, results, ratios), "complete": True}
    json_path.write_text(json.dumps(report, indent=2))
    partial_path.unlink(missing_ok=True)
    png = out / "bench.png"
    drew = draw_safely(lambda: draw_chart(results, png), log)
    log(f"\nresults: {json_path}" + (f"; chart: {png}" if drew else " (no chart: pip install -e '.[bench]')"))
    ran = [r for r in results if not r.gap]
    return 0 if ran and all(r.verified for r in ran) else 1


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _report_dict(
    started: float, machine_info: dict[str, Any], plan: Plan, results: list[Result], ratios: list[Ratio]
) -> dict[str, Any]:
    info = dict(machine_info)
    with contextlib.suppress(OSError):
        info["load_average_now"] = os.getloadavg()
    return {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "machine": info,
        "server_version": _server_version(plan.warehouse_dsn),
        "sizes": list(plan.sizes),
        "repeat": plan.repeat,
        "quick": plan.quick,
        "results": [r.as_dict() for r in results],
        "ratios": [asdict(r) for r in ratios],
    }


def _server_version(dsn: str) -> str:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return str(conn.execute("SHOW server_version").fetchone()[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m etl_assets.bench", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
