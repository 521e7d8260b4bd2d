"""The ``etl-assets`` command line.

Each group of subcommands lives in its own module under ``etl_assets/cli/`` exposing
``register(subparsers)``; :data:`COMMAND_MODULES` lists them. Every command resolves the database
environment first (starting the embedded server where no DSN is set) and prints an
:class:`~etl_assets.errors.EtlError` as one clear message with exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from etl_assets.errors import EtlError

COMMAND_MODULES: tuple[str, ...] = (
    "etl_assets.cli.core",
    "etl_assets.cli.metrics",
    "etl_assets.cli.dlq",
    "etl_assets.cli.cdc",
    "etl_assets.cli.bench",
    "etl_assets.cli.rollback",
    "etl_assets.cli.worker",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="etl-assets",
        description="PostgreSQL-to-PostgreSQL ELT as Dagster assets.",
    )
    parser.add_argument(
        "--pipelines",
        metavar="FILE",
        help="tables YAML to use instead of the shipped demo declaration (same as ETL_PIPELINES)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.pipelines:
        os.environ["ETL_PIPELINES"] = os.path.abspath(args.pipelines)
    try:
        return int(args.handler(args) or 0)
    except EtlError as exc:
        print(f"etl-assets: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("etl-assets: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
