"""``etl-assets dlq list | replay | discard``: the dead-letter queue from the command line.

``list`` shows entries without their payloads (whole rows stay in the table, readable only by the
roles allowed to read ``etl.dead_letters``; see README). ``replay`` runs the Dagster job
``dlq_replay`` in this process through the instance, so the replay is a recorded run and its id is
what the replayed entries are marked with. ``discard`` marks pending entries as not to be replayed.
"""

from __future__ import annotations

import argparse
import getpass

from etl_assets.console import plural, print_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dlq", help="list, replay or discard dead-lettered rows")
    dsub = p.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)

    q = dsub.add_parser("list", help="show dead letters (no payloads) and counts per asset and status")
    q.add_argument("--asset", metavar="KEY", help="only this asset, e.g. clean/customers")
    q.add_argument(
        "--status", default="pending", choices=("pending", "replayed", "discarded", "all"),
        help="entries of this status (default: pending)",
    )
    q.add_argument("--limit", type=int, default=50, help="at most this many entries (default 50)")
    q.set_defaults(handler=cmd_list)

    q = dsub.add_parser("replay", help="run pending dead letters through the current transform code")
    q.add_argument("--asset", metavar="KEY", help="only this asset's dead letters")
    q.add_argument(
        "--id", dest="ids", type=int, action="append", metavar="ID", help="only this id; repeatable"
    )
    q.add_argument("--limit", type=int, default=None, help="at most this many entries")
    q.set_defaults(handler=cmd_replay)

    q = dsub.add_parser("discard", help="mark pending dead letters as discarded (never replayed)")
    q.add_argument("--asset", metavar="KEY", help="every pending entry of this asset")
    q.add_argument("--id", dest="ids", type=int, action="append", metavar="ID", help="this id; repeatable")
    q.set_defaults(handler=cmd_discard)


def _warehouse():  # a context manager yielding a connection
    from etl_assets.connections import connect
    from etl_assets.environment import ensure_environment
    from etl_assets.settings import WAREHOUSE_DSN_VAR

    env = ensure_environment(seed_demo=False)
    return connect(env.warehouse_dsn, role="warehouse", env_var=WAREHOUSE_DSN_VAR)


def cmd_list(args: argparse.Namespace) -> int:
    from etl_assets import dlq
    from etl_assets.migrations import ensure_migrated

    status = None if args.status == "all" else args.status
    with _warehouse() as conn:
        ensure_migrated(conn)
        letters = dlq.fetch(conn, asset_key=args.asset, status=status, limit=args.limit)
        totals = dlq.counts(conn, asset_key=args.asset)
    if not totals:
        print("no dead letters")
        return 0
    print_table(["asset", "status", "rows"], [(a, st, n) for (a, st), n in sorted(totals.items())], right=[2])
    if letters:
        print()
        print_table(
            ["id", "asset", "partition", "stage", "error", "tries", "last failed", "status"],
            [
                (x.id, x.asset_key, x.partition_key or "-", x.stage, x.error_class, x.attempts,
                 f"{x.last_failed_at:%Y-%m-%d %H:%M:%S}", x.status)
                for x in letters
            ],
            right=[0, 5],
        )
        shown = sum(n for (_, st), n in totals.items() if status is None or st == status)
        if shown > len(letters):
            print(f"... {shown - len(letters)} more (--limit)")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    import dagster as dg

    from etl_assets.environment import ensure_environment
    from etl_assets.resources import warehouse_resource
    from etl_assets.transforms.replay import dlq_replay

    ensure_environment(seed_demo=False)
    # The job needs only the warehouse; the same job is in the project's Definitions for the UI.
    defs = dg.Definitions(jobs=[dlq_replay], resources={"warehouse": warehouse_resource()})
    job = defs.resolve_job_def("dlq_replay")
    config = {"asset_key": args.asset, "ids": args.ids, "limit": args.limit}
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            run_config={"ops": {"replay_dead_letters": {"config": config}}},
            instance=instance,
            raise_on_error=False,
        )
    observed = [
        e.asset_observation_data.asset_observation
        for e in result.all_events
        if e.event_type_value == "ASSET_OBSERVATION"
    ]
    for obs in observed:
        meta = {k: v.value for k, v in obs.metadata.items()}
        print(
            f"{obs.asset_key.to_user_string()}: {meta.get('dead_letters_replayed', 0)} replayed, "
            f"{meta.get('dead_letters_failed_again', 0)} failed again"
        )
    if not observed and result.success:
        print("nothing to replay")
    print(f"run {result.run_id}: {'success' if result.success else 'FAILED'}")
    if not result.success:
        for event in result.all_events:
            if event.is_step_failure and event.step_failure_data:
                print(event.step_failure_data.error.message.strip() if event.step_failure_data.error else "")
    return 0 if result.success else 1


def cmd_discard(args: argparse.Namespace) -> int:
    from etl_assets import dlq
    from etl_assets.migrations import ensure_migrated

    with _warehouse() as conn:
        ensure_migrated(conn)
        with conn.transaction():
            n = dlq.discard(conn, ids=args.ids, asset_key=args.asset, by=f"cli:{getpass.getuser()}")
    print(f"discarded {plural(n, 'dead letter')}")
    return 0
