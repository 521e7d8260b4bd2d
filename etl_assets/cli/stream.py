"""``etl-assets stream install|uninstall|status|run``: the event queue in the source and its consumer.

``install`` and ``uninstall`` change the source database (schema ``etl_stream``); with ``--dry-run``
they print the exact SQL instead, for a DBA to review or run by hand. ``run`` is the long-running
consumer (see :mod:`etl_assets.stream.consumer`); it stops cleanly on SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stream", help="order event stream: install the queue, show its status, run the consumer"
    )
    st = p.add_subparsers(dest="stream_command", metavar="ACTION", required=True)

    q = st.add_parser("install", help="create the event queue (schema etl_stream) in the source database")
    q.add_argument("--dry-run", action="store_true", help="print the SQL instead of running it")
    q.set_defaults(handler=_install)

    q = st.add_parser("uninstall", help="drop the event queue and any message still in it")
    q.add_argument("--dry-run", action="store_true", help="print the SQL instead of running it")
    q.set_defaults(handler=_uninstall)

    q = st.add_parser("status", help="messages waiting, claimed, the oldest one; what the sink applied")
    q.set_defaults(handler=_status)

    q = st.add_parser("run", help="consume events into the warehouse until SIGTERM / Ctrl-C")
    q.add_argument("--max-events", type=int, default=1000, help="events per micro-batch at most (1000)")
    q.add_argument("--max-wait-ms", type=int, default=100, help="wait this long to fill a batch (100 ms)")
    q.add_argument("--poll-s", type=float, default=5.0, help="poll this often without notifications (5 s)")
    q.add_argument("--vt", type=float, default=30.0, help="visibility timeout of claimed events (30 s)")
    q.add_argument("--no-dagster", action="store_true", help="do not report progress to the Dagster instance")
    q.add_argument("--stop-when-idle", action="store_true", help="exit once the queue is empty")
    q.set_defaults(handler=_run)


def _source(autocommit: bool = True):
    from etl_assets.connections import connect
    from etl_assets.environment import ensure_environment
    from etl_assets.settings import SOURCE_DSN_VAR

    env = ensure_environment(seed_demo=False)
    return connect(env.source_dsn, role="source", env_var=SOURCE_DSN_VAR, autocommit=autocommit)


def _print_sql(statements: tuple[str, ...], title: str) -> None:
    print(f"-- {title}\nBEGIN;")
    for statement in statements:
        print(statement.strip() + ";")
    print("COMMIT;")


def _install(args: argparse.Namespace) -> int:
    from etl_assets.stream import queue

    if args.dry_run:
        _print_sql(queue.INSTALL_DDL, "install the event queue (schema etl_stream)")
        return 0
    with _source() as conn:
        created = queue.install(conn)
    print("stream queue etl_stream.events " + ("installed" if created else "already installed (left as is)"))
    return 0


def _uninstall(args: argparse.Namespace) -> int:
    from etl_assets.stream import queue

    if args.dry_run:
        _print_sql(queue.UNINSTALL_DDL, "remove the event queue and its messages")
        return 0
    with _source() as conn:
        removed = queue.uninstall(conn)
    print("stream queue " + ("removed" if removed else "was not installed"))
    return 0


def _status(args: argparse.Namespace) -> int:
    from etl_assets.stream import queue

    with _source() as conn:
        st = queue.status(conn)
    if not st.installed:
        print("stream queue: not installed (run `etl-assets stream install`)")
        return 3
    oldest = (
        f", oldest enqueued {st.oldest_enqueued_at:%Y-%m-%d %H:%M:%S %Z}" if st.oldest_enqueued_at else ""
    )
    print(f"stream queue etl_stream.events: {st.messages:,} messages ({st.invisible:,} claimed){oldest}")
    from etl_assets.connections import connect
    from etl_assets.environment import ensure_environment
    from etl_assets.settings import WAREHOUSE_DSN_VAR
    from etl_assets.stream import sink

    env = ensure_environment(seed_demo=False)
    with connect(env.warehouse_dsn, role="warehouse", env_var=WAREHOUSE_DSN_VAR) as wh:
        sink.ensure_tables(wh)
        rows = wh.execute(
            "SELECT outcome, count(*), max(processed_at) FROM stream.processed_events GROUP BY 1 ORDER BY 1"
        ).fetchall()
    for outcome, count, last in rows:
        print(f"  sink: {count:,} events {outcome} (last at {last:%Y-%m-%d %H:%M:%S %Z})")
    return 0


def _run(args: argparse.Namespace) -> int:
    from etl_assets.environment import ensure_environment
    from etl_assets.stream.consumer import ConsumerConfig, run

    env = ensure_environment(seed_demo=False)
    config = ConsumerConfig(
        max_events=args.max_events,
        max_wait_ms=args.max_wait_ms,
        poll_s=args.poll_s,
        vt=args.vt,
        report_to_dagster=not args.no_dagster,
        stop_when_idle=args.stop_when_idle,
    )
    stats = run(env.source_dsn, env.warehouse_dsn, config, out=lambda s: print(s, flush=True))
    print(
        f"stream run stopped: {stats.batches:,} batches, {stats.applied:,} applied, {stats.stale:,} stale, "
        f"{stats.duplicate:,} redelivered and skipped, {stats.dead:,} dead-lettered",
        flush=True,
    )
    return 0
