"""``etl-assets bench``: the benchmark (harness in :mod:`etl_assets.bench`), plus the write-mode table.

The flags are the harness's own (:func:`etl_assets.bench.__main__.add_arguments`); without
``--rows``/``--quick`` it measures 100,000 and 1,000,000 rows (``--large`` adds 5,000,000). After the
harness's report it prints each write mode next to the fastest plain bulk write of the same frame
measured in the same run (:mod:`etl_assets.bench.write_modes`). ``--only load`` measures just the loads.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from etl_assets.bench.__main__ import add_arguments

    p = sub.add_parser(
        "bench",
        help="benchmark loads, extracts, end to end (vs dlt) and incremental cost; JSON + PNG",
        description="Run every benchmark contender in its own process (warm-up, median of --repeat runs, "
        "row count and checksum verified) and print the results, the target ratios and each write mode "
        "next to the fastest plain bulk write. Default sizes: 100,000 and 1,000,000 rows.",
    )
    add_arguments(p)
    p.set_defaults(handler=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from etl_assets.bench.__main__ import run
    from etl_assets.bench.write_modes import format_mode_table, mode_ratios

    status = run(args)
    if getattr(args, "markdown", None) or (args.only and set(args.only) == {"stream"}):
        return status  # nothing measured here, or the stream's own report (stream.json)
    report = Path(args.out).resolve() / "bench.json"
    if report.exists():
        ratios = mode_ratios(json.loads(report.read_text())["results"])
        if ratios:
            print(
                "\nWrite modes vs the fastest plain bulk write of the same frame (same run; ratio = seconds "
                "/ plain seconds):"
            )
            print(format_mode_table(ratios))
    return status
