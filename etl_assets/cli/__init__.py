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
import warnings

from etl_assets.errors import EtlError

COMMAND_MODULES: tuple[str, ...] = (
    "etl_assets.cli.core",
    "etl_assets.cli.daemon",
    "etl_assets.cli.metrics",
    "etl_assets.cli.dlq",
    "etl_assets.cli.cdc",
    "etl_assets.cli.bench",
    "etl_assets.cli.rollback",
    "etl_assets.cli.sql",
    "etl_assets.cli.stream",
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


def console_main() -> int:
    """The ``etl-assets`` console script (and ``python -m etl_assets.cli``): :func:`main` with the
    garbage collector kept off the start-up heap and the final pass (etl_assets/startup.py)."""
    from etl_assets import startup

    if _command(sys.argv[1:]) == "run":
        startup.pause_collection()  # the runner resumes it when the run's Definitions are ready
    try:
        return main()
    finally:
        startup.resume_collection()
        startup.skip_final_collection()


def _command(argv: list[str]) -> str | None:
    """The subcommand of ``argv`` (its first word after the global options), without parsing."""
    words = iter(argv)
    for word in words:
        if word == "--pipelines":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.pipelines:
        os.environ["ETL_PIPELINES"] = os.path.abspath(args.pipelines)
    from etl_assets.console import enable_announcements

    enable_announcements()  # "starting the embedded PostgreSQL under …" on standard error
    # Dagster warns at every start that the project uses a beta parameter (backfill_policy on the
    # daily aggregate): a deliberate choice, not news for whoever runs a command.
    warnings.filterwarnings("ignore", message=r"Parameter `\w+` of \w+ `\w+` is currently in beta")
    try:
        return int(args.handler(args) or 0)
    except EtlError as exc:
        from etl_assets.settings import redact_environment

        # A last guard: whatever an error quotes, the configured DSNs' passwords never reach the terminal.
        print(f"etl-assets: error: {redact_environment(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("etl-assets: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line on the console, the traceback in a file
        path = _write_traceback(args.command)
        from etl_assets.settings import redact_environment

        first = redact_environment(str(exc).strip().splitlines()[0] if str(exc).strip() else "")
        print(f"etl-assets: error: {type(exc).__name__}: {first} (traceback: {path})", file=sys.stderr)
        return 1


def _write_traceback(command: str) -> str:
    """Write the current exception's traceback (secrets masked) under ``ETL_HOME/logs``."""
    import time
    import traceback

    from etl_assets.settings import etl_home, redact_environment

    folder = etl_home() / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"etl-assets-{command}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"
    path.write_text(redact_environment(traceback.format_exc()), encoding="utf-8")
    return str(path)


if __name__ == "__main__":
    sys.exit(main())
