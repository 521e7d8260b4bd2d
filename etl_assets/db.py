"""The one PostgreSQL resource of the Dagster definitions.

Everything that talks to PostgreSQL (assets, the IO manager, checks, sensors, the command line)
opens its connections through :class:`PostgresResource` or :func:`connect`, so that every connection
carries the same application name and timeouts, and every failure to connect says which database,
which variable configures it, and what to try. :func:`connect` and the error translation live in
:mod:`etl_assets.connections`, which does not import Dagster; they are re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from dagster import ConfigurableResource
from pydantic import Field

from etl_assets.connections import APPLICATION_NAME, connect, missing_privilege
from etl_assets.settings import redact_dsn

__all__ = ["APPLICATION_NAME", "PostgresResource", "connect", "missing_privilege"]


class PostgresResource(ConfigurableResource):
    """A PostgreSQL database (source or warehouse). Configure ``dsn`` with ``dagster.EnvVar``.

    The DSN is a secret: it is never logged or put into metadata; use :attr:`display_name` there.
    """

    dsn: str = Field(description="libpq connection string or URI; set it with EnvVar, never inline.")
    role: str = Field(default="warehouse", description="What this database is, for error messages.")
    env_var: str = Field(default="ETL_WAREHOUSE_DSN", description="Where the DSN comes from, for messages.")
    connect_timeout: int = Field(default=10, description="Seconds to wait for a connection.")

    @property
    def display_name(self) -> str:
        return redact_dsn(self.dsn)

    @contextmanager
    def connect(self, *, autocommit: bool = False) -> Iterator[psycopg.Connection]:
        with connect(
            self.dsn,
            role=self.role,
            env_var=self.env_var,
            autocommit=autocommit,
            connect_timeout=self.connect_timeout,
        ) as conn:
            yield conn
