"""Errors of the bulk paths never quote row values: PostgreSQL's ``Key (email)=(...)``, ``Failing row
contains (...)``, ``invalid input syntax ...: "..."`` and COPY's ``line 2, column x: "..."`` are masked
in our message, and the psycopg error that quotes them is not chained (Dagster records causes)."""

from __future__ import annotations

import traceback
from collections.abc import Iterator

import polars as pl
import psycopg
import pytest
from psycopg import sql

from etl_assets.errors import SchemaMismatch
from etl_assets.io.tables import TableRef
from etl_assets.io.writer import write_frame
from etl_assets_tests.extract_helpers import execute, module_databases, run, scalar, spec_of

SECRET = "bob.secret@example.com"


@pytest.fixture
def conn(warehouse_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(warehouse_dsn, autocommit=True) as c:
        yield c


@pytest.fixture(scope="module")
def dbs(pg_admin_dsn: str) -> Iterator[dict[str, str]]:
    yield from module_databases(pg_admin_dsn)


def _everything_said(exc: BaseException) -> str:
    """The message and the whole printed traceback, causes and contexts included."""
    return str(exc) + "".join(traceback.format_exception(exc))


def _customers(conn: psycopg.Connection, schema: str) -> TableRef:
    t = TableRef(schema, "customers")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, email text UNIQUE, age int)").format(t.ident))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, 30)").format(t.ident), (SECRET,))
    return t


@pytest.mark.parametrize("mode", ["insert", "upsert", "truncate_insert", "swap"])
def test_unique_violation_on_a_sensitive_column_is_masked(conn, fresh_schema, mode):
    t = _customers(conn, fresh_schema)
    # insert/upsert collide with the stored row; truncate_insert/swap with the frame's own other row.
    ids = [2] if mode in ("insert", "upsert") else [1, 2]
    df = pl.DataFrame({"id": ids, "email": [SECRET] * len(ids), "age": [40] * len(ids)},
                      schema={"id": pl.Int32, "email": pl.String, "age": pl.Int32})
    with pytest.raises(SchemaMismatch) as err:
        write_frame(conn, df, t, mode, primary_key=["id"])
    said = _everything_said(err.value)
    assert SECRET not in said and "bob.secret" not in said
    assert "(email)=(***)" in str(err.value)
    assert str(t) in str(err.value)
    assert scalar_rows(conn, t) == [(1, SECRET, 30)]


def test_bad_value_is_masked_with_its_line_and_column(conn, fresh_schema):
    t = _customers(conn, fresh_schema)
    conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN age TYPE int").format(t.ident))
    df = pl.DataFrame({"id": [2], "email": ["x@example.com"], "age": ["42-secret-age"]})
    with pytest.raises(SchemaMismatch) as err:
        write_frame(conn, df, TableRef(fresh_schema, "customers"), "insert")
    said = _everything_said(err.value)
    assert "42-secret-age" not in said
    assert 'invalid input syntax for type integer: "***"' in str(err.value)
    assert "line 1, column age" in str(err.value)


def scalar_rows(conn: psycopg.Connection, t: TableRef) -> list[tuple]:
    return conn.execute(sql.SQL("SELECT * FROM {} ORDER BY id").format(t.ident)).fetchall()


@pytest.mark.parametrize("fast", [False, True], ids=["frame", "copy"])
@pytest.mark.parametrize("load", ["truncate_insert", "swap"])
def test_extract_unique_violation_is_masked_on_both_paths(dbs, fast, load):
    name = f"people_{load}_{'copy' if fast else 'frame'}"
    table = sql.Identifier("src", name)
    execute(dbs["source"], "CREATE SCHEMA IF NOT EXISTS src")
    execute(dbs["source"], sql.SQL("CREATE TABLE {} (email text, n int)").format(table))
    execute(dbs["source"], sql.SQL("INSERT INTO {} VALUES ('ann@example.com', 1)").format(table))
    spec = spec_of(
        f"tables:\n  - name: src.{name}\n    extract: full\n    load: {load}\n    primary_key: [email]\n"
        f"    fast_path: {'true' if fast else 'false'}\n    target: raw.{name}\n    sensitive: [email]\n")
    run(spec, dbs)  # the target (and for swap, the live table to swap with) exists
    execute(dbs["source"], sql.SQL("INSERT INTO {} VALUES (%s, 2), (%s, 3)").format(table), (SECRET, SECRET))
    with pytest.raises(SchemaMismatch) as err:
        run(spec, dbs)
    said = _everything_said(err.value)
    assert SECRET not in said and "bob.secret" not in said
    assert "(email)=(***)" in str(err.value)
    assert scalar(dbs["warehouse"], sql.SQL("SELECT string_agg(email, ',') FROM {}").format(
        spec.target.ident)) == "ann@example.com"
