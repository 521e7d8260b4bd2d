"""``etl-assets metrics``: success rate and duration per asset over a window, from ``etl.run_metrics``."""

from __future__ import annotations

import argparse
import json

from etl_assets.console import print_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "metrics",
        help="success rate and duration per asset over a window (from etl.run_metrics)",
        description="Summarise the run metrics recorded by every run (etl-assets run, the UI, the "
        "daemon): per asset the runs, success rate (skipped assets excluded), failures, average / p95 / "
        "max duration and records processed and failed.",
    )
    p.add_argument("--window", default="7d", help="how far back: 30m, 24h, 7d, 2w (default 7d)")
    p.add_argument("--asset", default=None, metavar="KEY", help="only this asset (e.g. raw/orders)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=cmd_metrics)


def cmd_metrics(args: argparse.Namespace) -> int:
    from etl_assets.connections import connect
    from etl_assets.environment import ensure_environment
    from etl_assets.quality.metrics import parse_window, run_outcomes, summarize
    from etl_assets.settings import WAREHOUSE_DSN_VAR

    window = parse_window(args.window)
    env = ensure_environment()
    with connect(env.warehouse_dsn, role="warehouse", env_var=WAREHOUSE_DSN_VAR) as conn:
        rows = summarize(conn, window, args.asset)
        runs = run_outcomes(conn, window)
    if args.json:
        assets = [
            {**r.__dict__, "last_started": r.last_started.isoformat() if r.last_started else None}
            for r in rows
        ]
        print(json.dumps({"window": args.window, "assets": assets, "runs_not_succeeding": runs}, indent=2))
        return 0
    if not rows:
        print(f"No asset runs recorded in the last {args.window}.")
        return 0
    failed_runs = ", ".join(f"{n} {status}" for status, n in sorted(runs.items())) or "none"
    header = ("asset", "runs", "success", "failures", "avg s", "p95 s", "max s", "records", "failed", "last")
    table = [
        (
            r.asset,
            str(r.runs),
            f"{r.success_rate:.1%}",
            str(r.failures),
            *(("" if v is None else f"{v:.2f}") for v in (r.avg_seconds, r.p95_seconds, r.max_seconds)),
            str(r.records_processed),
            str(r.records_failed),
            r.last_status,
        )
        for r in rows
    ]
    print(f"Run metrics over the last {args.window} (runs not succeeding: {failed_runs}):")
    print_table(header, table, right=range(1, len(header) - 1))
    return 0
