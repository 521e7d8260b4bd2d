"""The process's databases resolved: every DSN set, the embedded server started for those unset.

Above :mod:`etl_assets.settings` (names, paths and DSN helpers) and :mod:`etl_assets.embedded`
(the server), which both stay free of this orchestration; :func:`ensure_environment` exports the
answer into ``os.environ`` so that every child process inherits it and Dagster resources read it
through ``dagster.EnvVar``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from etl_assets import embedded
from etl_assets.settings import (
    DAGSTER_URL_VAR,
    EMBEDDED_DATABASES,
    SOURCE_DSN_VAR,
    WAREHOUSE_DSN_VAR,
    dagster_home,
    dagster_storage_url,
)


@dataclass(frozen=True)
class Environment:
    """The resolved connection strings of one process."""

    source_dsn: str
    warehouse_dsn: str
    dagster_url: str
    dagster_home: Path
    embedded: tuple[str, ...]  # which of the variables point at the embedded server


def ensure_environment(*, seed_demo: bool = True) -> Environment:
    """Resolve every DSN, starting the embedded server for those that are unset, and export them.

    Idempotent and cheap once the variables are set: a process that inherited them from the
    command line does no work here.
    """
    missing = [var for var in EMBEDDED_DATABASES if not os.environ.get(var)]
    if missing:
        server = embedded.ensure_running()
        for var in missing:
            database = EMBEDDED_DATABASES[var]
            embedded.ensure_database(server, database)
            os.environ[var] = embedded.database_uri(server, database)
        os.environ.setdefault("ETL_EMBEDDED", ",".join(missing))
    os.environ[DAGSTER_URL_VAR] = dagster_storage_url(os.environ[DAGSTER_URL_VAR])
    home = dagster_home()
    os.environ["DAGSTER_HOME"] = str(home)
    env = Environment(
        source_dsn=os.environ[SOURCE_DSN_VAR],
        warehouse_dsn=os.environ[WAREHOUSE_DSN_VAR],
        dagster_url=os.environ[DAGSTER_URL_VAR],
        dagster_home=home,
        embedded=tuple(v for v in os.environ.get("ETL_EMBEDDED", "").split(",") if v),
    )
    if seed_demo and SOURCE_DSN_VAR in env.embedded:
        from etl_assets.demo.seed import ensure_seeded  # local: the seed's connect() imports dagster (~1.5 s)

        ensure_seeded(env.source_dsn)
    return env
