"""``etl-assets rollback TARGET``: put back the version of a table that the last swap replaced.

A swap load (``write_mode: swap``) keeps the replaced table as ``<name>__etl_prev`` until the next
swap. Rolling back exchanges the two the same way the swap did (dependent views recreated, index
names, grants and owner kept), so running it twice returns to where you started.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rollback",
        help="swap a table back to the version its last swap load replaced",
        description="Exchange TARGET (schema.table, as the asset's target) with the previous version kept "
        "by its last swap load. Views on it are recreated, index names and grants stay. Running it again "
        "undoes the rollback.",
    )
    p.add_argument("target", metavar="TARGET", help="schema.table, e.g. mart.daily_revenue")
    p.add_argument(
        "--lock-timeout", default="2s", help="how long each attempt waits for readers (default 2s)"
    )
    p.add_argument("--attempts", type=int, default=5, help="attempts before giving up (default 5)")
    p.set_defaults(handler=cmd_rollback)


def cmd_rollback(args: argparse.Namespace) -> int:
    from psycopg import sql  # here, not at the top: `etl-assets --help` imports every command module

    from etl_assets.connections import connect
    from etl_assets.environment import ensure_environment
    from etl_assets.io.swap import rollback
    from etl_assets.io.tables import TableRef
    from etl_assets.settings import WAREHOUSE_DSN_VAR

    env = ensure_environment(seed_demo=False)
    target = TableRef.parse(args.target)
    with connect(env.warehouse_dsn, role="warehouse", env_var=WAREHOUSE_DSN_VAR) as conn:
        kept = rollback(conn, target, lock_timeout=args.lock_timeout, attempts=args.attempts)
        count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(target.ident)).fetchone()[0]
    print(
        f"rolled back {target}: it now holds the version the last swap replaced ({count:,} rows); "
        f"the version it held before is kept as {kept} (run rollback again to undo)"
    )
    return 0
