"""``etl-assets cdc install|uninstall|status|prune``: change capture on source tables.

``install`` and ``uninstall`` change the source database (triggers on the named tables, objects in
schema ``etl_cdc``); with ``--dry-run`` they print the exact SQL instead, for a DBA to review or run
by hand. Without TABLE arguments they act on every table the declaration marks ``extract: cdc``.
``--source NAME`` acts on a named source of the declaration (``sources:``) instead of the database in
``ETL_SOURCE_DSN``.
"""

from __future__ import annotations

import argparse

from etl_assets.console import duration_text, plural
from etl_assets.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cdc", help="change data capture on source tables: install, uninstall, status, prune")
    cdc = p.add_subparsers(dest="cdc_command", metavar="ACTION", required=True)

    declared = "schema.table (default: every table declared with extract: cdc)"
    captured = "schema.table (default: all captured tables)"

    q = cdc.add_parser("install", help="install capture (change log + triggers) on source tables")
    _table_options(q, declared, lock_timeout=True)
    q.add_argument(
        "--key",
        nargs="+",
        metavar="COLUMN",
        help="key columns (default: the declared primary_key, else the table's primary key)",
    )
    q.set_defaults(handler=_install)

    q = cdc.add_parser("uninstall", help="remove capture (triggers, change log) from source tables")
    _table_options(q, declared, lock_timeout=True)
    q.set_defaults(handler=_uninstall)

    q = cdc.add_parser("status", help="per captured table: log size, pending changes, oldest unapplied one")
    q.add_argument("tables", nargs="*", metavar="TABLE", help=captured)
    _source_option(q)
    q.set_defaults(handler=_status)

    q = cdc.add_parser("prune", help="remove log entries every consumer has applied (never an unapplied one)")
    _table_options(q, captured, lock_timeout=False)
    q.set_defaults(handler=_prune)


def _table_options(q: argparse.ArgumentParser, tables_help: str, *, lock_timeout: bool) -> None:
    """The TABLE arguments and --dry-run shared by the commands that change the source."""
    q.add_argument("tables", nargs="*", metavar="TABLE", help=tables_help)
    q.add_argument("--dry-run", action="store_true", help="print the SQL instead of running it")
    _source_option(q)
    if lock_timeout:
        q.add_argument("--lock-timeout", default="5s", help="give up when a table stays busy this long (5s)")


def _source_option(q: argparse.ArgumentParser) -> None:
    q.add_argument("--source", metavar="NAME", default=None,
                   help="a named source of the tables declaration (default: the database in ETL_SOURCE_DSN)")


def _parse(texts: list[str]):
    from etl_assets.io.tables import TableRef

    refs = []
    for text in texts:
        if "." not in text.replace('""', ""):
            raise ConfigError(f"Table {text!r} must be written schema.table (e.g. shop.customers).")
        refs.append(TableRef.parse(text))
    return refs


def _variable(name: str | None) -> str:
    """The variable holding the DSN of source ``name`` (None: the default source)."""
    from etl_assets.pipeline_config import load_pipelines
    from etl_assets.settings import SOURCE_DSN_VAR

    if name is None:
        return SOURCE_DSN_VAR
    config = load_pipelines()
    declared = config.source_named(name)
    if declared is None:
        known = ", ".join(s.name for s in config.sources) or "none"
        raise ConfigError(f"--source {name}: no such source in the tables declaration ({config.path}); "
                          f"declared sources: {known}.")
    return declared.dsn_env


def _declared(name: str | None) -> list[tuple[object, tuple[str, ...]]]:
    """The cdc tables of source ``name``; for None, those reading the database in ETL_SOURCE_DSN."""
    from etl_assets.pipeline_config import load_pipelines

    config = load_pipelines()
    wanted = _variable(name)
    return [(s.source, s.primary_key) for s in config.tables if s.extract == "cdc"
            and (config.source_named(s.source_name).dsn_env if s.source_name else _variable(None)) == wanted]


def _targets(args: argparse.Namespace) -> list[tuple[object, tuple[str, ...] | None]]:
    if args.tables:
        key = tuple(args.key) if getattr(args, "key", None) else None
        return [(ref, key) for ref in _parse(args.tables)]
    declared = _declared(args.source)
    if not declared:
        which = f"source {args.source}" if args.source else "the default source"
        raise ConfigError(
            f"No TABLE given and the tables declaration has no table with extract: cdc in {which}; "
            "name the tables (schema.table)."
        )
    return [(ref, key or None) for ref, key in declared]


def _source(name: str | None = None):
    """A connection to the default source, or to the named source ``name`` (``--source``)."""
    import os

    from etl_assets.connections import connect
    from etl_assets.environment import ensure_environment
    from etl_assets.settings import SOURCE_DSN_VAR

    env = ensure_environment(seed_demo=False)
    if name is None:
        return connect(env.source_dsn, role="source", env_var=SOURCE_DSN_VAR, autocommit=True)
    variable = _variable(name)
    dsn = os.environ.get(variable, "").strip()
    if not dsn:
        raise ConfigError(f"Source {name} reads its connection string from {variable}, which is not set; "
                          f"export {variable}=postgresql://user:password@host/database.")
    return connect(dsn, role=f"{name} source", env_var=variable, autocommit=True)


def _install(args: argparse.Namespace) -> int:
    from etl_assets.cdc import capture

    with _source(args.source) as conn:
        for ref, key in _targets(args):
            if args.dry_run:
                statements, cap = capture.install_statements(conn, ref, key, lock_timeout=args.lock_timeout)
                if not statements:
                    print(f"-- {ref}: capture already installed (log {cap.log_id}); nothing to do")
                else:
                    print(f"-- install capture on {ref}\n{capture.render(conn, statements)}\n")
                continue
            cap, changed = capture.install(conn, ref, key, lock_timeout=args.lock_timeout)
            word = "installed" if changed else "already installed"
            print(
                f"{ref}: capture {word}; log {capture.SCHEMA}.{cap.log_table} (id {cap.log_id}), "
                f"key {', '.join(cap.key_columns)}"
            )
    return 0


def _uninstall(args: argparse.Namespace) -> int:
    from etl_assets.cdc import capture

    with _source(args.source) as conn:
        for ref, _ in _targets(args):
            if args.dry_run:
                statements = capture.uninstall_statements(conn, ref, lock_timeout=args.lock_timeout)
                print(
                    f"-- remove capture from {ref}\n"
                    f"{capture.render(conn, statements) or '-- not installed'}\n"
                )
                continue
            removed = capture.uninstall(conn, ref, lock_timeout=args.lock_timeout)
            print(f"{ref}: capture {'removed' if removed else 'was not installed'}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from etl_assets.cdc import capture

    with _source(args.source) as conn:
        rows = capture.status(conn, _parse(args.tables))
    if not rows:
        print("no table has capture installed" + (" among those named" if args.tables else ""))
        return 0
    broken = 0
    for st in rows:
        c = st.capture
        span = (
            f"positions {st.min_position}..{st.max_position}" if st.min_position is not None else "empty"
        )
        pruned = f"pruned through {c.pruned_through}" if c.pruned_through else "never pruned"
        print(
            f"{c.source}: log {capture.SCHEMA}.{c.log_table} (id {c.log_id}), "
            f"{plural(st.entries, 'entry', 'entries')}, {span}, {pruned}"
        )
        for problem in st.problems:
            broken += 1
            print(f"  BROKEN: {problem}")
        if not st.consumers:
            print("  no consumer yet (the first run of its extract takes a snapshot)")
        for cs in st.consumers:
            oldest = (
                f"oldest unapplied #{cs.oldest_pending_position} at "
                f"{cs.oldest_pending_at:%Y-%m-%d %H:%M:%S %Z}"
                f" ({duration_text(cs.lag_seconds)} ago)"
                if cs.oldest_pending_position is not None
                else "up to date"
            )
            applied = (
                "nothing applied yet" if cs.applied_position is None
                else f"applied through position {cs.applied_position}"
            )
            print(f"  -> {cs.target}: {applied}, {cs.pending:,} pending, {oldest}")
    return 1 if broken else 0


def _prune(args: argparse.Namespace) -> int:
    from etl_assets.cdc import capture

    with _source(args.source) as conn:
        refs = _parse(args.tables) or [c.source for c in capture.list_captures(conn)]
        for ref in refs:
            result, script = capture.prune(conn, ref, dry_run=args.dry_run)
            if args.dry_run:
                print(f"-- prune {ref}\n{script or '-- ' + result.reason}\n")
            elif result.through is None:
                print(f"{ref}: nothing pruned ({result.reason})")
            else:
                print(f"{ref}: removed {plural(result.removed, 'applied entry', 'applied entries')} "
                      f"(through position {result.through})")
    return 0
