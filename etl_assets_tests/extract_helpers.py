"""Helpers for the extract tests: own source/warehouse databases, specs, and equality by checksum."""

from __future__ import annotations

import functools
import secrets
from collections.abc import Iterator, Sequence

import psycopg
from psycopg import sql

from etl_assets.db import connect
from etl_assets.extract import run_extract
from etl_assets.extract.common import ExtractReport
from etl_assets.io.tables import TableRef
from etl_assets.pipeline_config import TableSpec, parse_pipelines
from etl_assets_tests.conftest import create_database, drop_database


def module_databases(pg_admin_dsn: str) -> Iterator[dict[str, str]]:
    """A source and a warehouse database for one test module (use in a module-scoped fixture)."""
    prefix = f"x{secrets.token_hex(4)}"
    names = {"source": f"{prefix}_src", "warehouse": f"{prefix}_wh"}
    dsns = {role: create_database(pg_admin_dsn, name) for role, name in names.items()}
    yield dsns
    for name in names.values():
        drop_database(pg_admin_dsn, name)


def spec_of(yaml_text: str) -> TableSpec:
    (spec,) = parse_pipelines(yaml_text, "test.yaml").tables
    return spec


def specs_of(yaml_text: str) -> tuple[TableSpec, ...]:
    return parse_pipelines(yaml_text, "test.yaml").tables


def run(spec: TableSpec, dbs: dict[str, str], run_id: str = "test") -> ExtractReport:
    return run_extract(spec, functools.partial(connect, dbs["source"]),
                       functools.partial(connect, dbs["warehouse"]), run_id)


def checksum(dsn: str, table: TableRef, columns: Sequence[str], key: Sequence[str],
             where: sql.Composable | None = None) -> tuple[int, str | None]:
    """(row count, md5 over every listed column of every row in key order) of a table."""
    cols = sql.SQL(", ").join(map(sql.Identifier, columns))
    order = sql.SQL(", ").join(map(sql.Identifier, key))
    query = sql.SQL("SELECT count(*), md5(string_agg(row({})::text, '|' ORDER BY {})) FROM {}").format(
        cols, order, table.ident)
    if where is not None:
        query = query + sql.SQL(" WHERE ") + where
    with psycopg.connect(dsn) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        count, digest = conn.execute(query).fetchone()
    return count, digest


def source_columns(dsn: str, table: TableRef) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 "
            "AND NOT attisdropped ORDER BY attnum", (table.regclass_text,)).fetchall()]


def assert_equal(dbs: dict[str, str], spec: TableSpec) -> tuple[int, str | None]:
    """The target holds exactly the source's rows, every column compared."""
    columns = source_columns(dbs["source"], spec.source)
    expected = checksum(dbs["source"], spec.source, columns, spec.primary_key)
    actual = checksum(dbs["warehouse"], spec.target, columns, spec.primary_key)
    assert actual == expected
    return actual


def execute(dsn: str, statement: str | sql.Composable, params: Sequence[object] | None = None) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement, params)


def scalar(dsn: str, statement: str | sql.Composable, params: Sequence[object] | None = None):
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(statement, params).fetchone()[0]
