"""The PostgreSQL resource and connect(): working connections, and clear errors without secrets."""

from __future__ import annotations

import psycopg
import pytest

from etl_assets.db import APPLICATION_NAME, PostgresResource, connect
from etl_assets.errors import DatabaseUnreachable
from etl_assets.settings import with_database


def test_resource_connects_and_commits_on_success(warehouse_dsn: str) -> None:
    resource = PostgresResource(dsn=warehouse_dsn)
    with resource.connect() as conn:
        assert conn.execute("SELECT current_setting('application_name')").fetchone()[0] == APPLICATION_NAME
        conn.execute("CREATE TABLE IF NOT EXISTS public.t_db_resource (x int)")
        conn.execute("INSERT INTO public.t_db_resource VALUES (1)")
    with pytest.raises(ZeroDivisionError), resource.connect() as conn:
        conn.execute("INSERT INTO public.t_db_resource VALUES (2)")
        raise ZeroDivisionError  # leaves the block with an exception: rolled back
    with resource.connect(autocommit=True) as conn:
        assert conn.execute("SELECT array_agg(x) FROM public.t_db_resource").fetchone()[0] == [1]
        conn.execute("DROP TABLE public.t_db_resource")


def test_unreachable_server_names_the_variable_without_the_password() -> None:
    dsn = "postgresql://bob:hunter2@127.0.0.1:1/wh"
    with (
        pytest.raises(DatabaseUnreachable) as err,
        connect(dsn, role="warehouse", env_var="ETL_WAREHOUSE_DSN", connect_timeout=2),
    ):
        pass
    text = str(err.value)
    assert "Cannot connect to the warehouse database at postgresql://bob:***@127.0.0.1:1/wh" in text
    assert "ETL_WAREHOUSE_DSN" in text and "hunter2" not in text


def test_missing_database_says_to_create_it(pg_admin_dsn: str) -> None:
    resource = PostgresResource(
        dsn=with_database(pg_admin_dsn, "no_such_db_here"), role="source", env_var="ETL_SOURCE_DSN"
    )
    with (
        pytest.raises(DatabaseUnreachable, match="create the database or correct the name"),
        resource.connect(),
    ):
        pass


def test_a_malformed_connection_string_is_a_config_error_without_its_password() -> None:
    """libpq quotes the text around a parse error; the message masks the password anyway."""
    from etl_assets.db import connect
    from etl_assets.errors import ConfigError

    for dsn in (
        "host=127.0.0.1 password='s3 cr3t",
        "host=127.0.0.1 password=s3 cr3t",  # libpq: missing "=" after "cr3t"
        "host=127.0.0.1 password=s3cr3t bogus_option=1",
        "postgresql://u:s3cr3t@127.0.0.1/db?bogus=1",
        "postgresql://u@127.0.0.1/db?password=s3cr3t&x",
    ):
        with pytest.raises(ConfigError) as info, connect(dsn, role="source", env_var="ETL_SOURCE_DSN"):
            pass
        message = str(info.value)
        assert message.startswith("The source connection string in ETL_SOURCE_DSN is not valid: ")
        assert "s3" not in message and "cr3t" not in message


def test_missing_privileges_name_the_role_object_and_fix(pg_admin_dsn: str, warehouse_dsn: str) -> None:
    """A plain role: a schema it owns is used without CREATE on the database, a missing one is named with
    the statement to run, SELECT denied on a source table names table and privilege, and any other
    permission error names the role and the database's variable."""
    import secrets

    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from etl_assets.errors import MissingObject, MissingPrivilege
    from etl_assets.extract.source import describe
    from etl_assets.io.catalog import ensure_schema
    from etl_assets.pipeline_config import parse_pipelines
    from etl_assets.settings import with_database

    role = f"plain_{secrets.token_hex(4)}"
    schema = f"own_{secrets.token_hex(4)}"
    database = conninfo_to_dict(warehouse_dsn)["dbname"]
    with psycopg.connect(warehouse_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        admin.execute(
            sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(sql.Identifier(schema), sql.Identifier(role))
        )
        admin.execute(sql.SQL("CREATE TABLE {}.hidden (id int, secret text)").format(sql.Identifier(schema)))
    plain = make_conninfo(with_database(pg_admin_dsn, database), user=role)
    try:
        with connect(plain, role="source", env_var="ETL_SOURCE_DSN", autocommit=True) as conn:
            ensure_schema(conn, schema)  # exists and is its own: no CREATE on the database needed
            with pytest.raises(MissingObject) as missing:
                ensure_schema(conn, "nowhere")
            assert 'lacks the CREATE privilege on the database to create it' in str(missing.value)
            assert f'CREATE SCHEMA "nowhere" AUTHORIZATION "{role}"' in str(missing.value)
            (spec,) = parse_pipelines(f"tables:\n  - {{name: {schema}.hidden, extract: full}}").tables
            with pytest.raises(MissingPrivilege) as denied:
                describe(conn, spec)
            assert str(denied.value).startswith(
                f"Role {role} lacks the SELECT privilege on source table {schema}.hidden"
            )
            assert f'GRANT SELECT ON "{schema}"."hidden" TO {role}' in str(denied.value)
        with pytest.raises(MissingPrivilege) as other, connect(
            plain, role="source", env_var="ETL_SOURCE_DSN", autocommit=True
        ) as conn:
            conn.execute(sql.SQL("SELECT * FROM {}.hidden").format(sql.Identifier(schema)))
        assert str(other.value) == (
            f"Role {role} lacks a privilege in the source database (ETL_SOURCE_DSN): permission denied for "
            "table hidden. Grant it what docs/roles.md lists for the source role."
        )
        # An error of the outer connection passing through an inner one's block keeps its own role.
        with pytest.raises(MissingPrivilege) as outer_error, connect(
            plain, role="warehouse", env_var="ETL_WAREHOUSE_DSN", autocommit=True
        ) as outer, connect(plain, role="source", env_var="ETL_SOURCE_DSN", autocommit=True):
            outer.execute(sql.SQL("SELECT * FROM {}.hidden").format(sql.Identifier(schema)))
        assert "in the warehouse database (ETL_WAREHOUSE_DSN)" in str(outer_error.value)
    finally:
        with psycopg.connect(warehouse_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_two_sessions_create_one_new_schema_at_once(warehouse_dsn: str) -> None:
    """Two extracts into one new schema at once (the multiprocess executor): the second CREATE SCHEMA
    IF NOT EXISTS waits for the first and then hits the unique index; it must count as created."""
    import secrets
    import threading
    import time

    from etl_assets.io.catalog import ensure_schema

    name = f"race_{secrets.token_hex(4)}"
    errors: list[BaseException] = []

    def second() -> None:
        try:
            with psycopg.connect(warehouse_dsn) as b:
                ensure_schema(b, name)
                b.commit()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    with psycopg.connect(warehouse_dsn) as a:
        ensure_schema(a, name)  # created, not committed yet
        other = threading.Thread(target=second)
        other.start()
        time.sleep(0.5)  # the second session is now waiting on the first one's catalog row
        a.commit()
        other.join(timeout=30)
        assert not other.is_alive() and errors == [], errors
        assert a.execute("SELECT to_regnamespace(%s) IS NOT NULL", (name,)).fetchone()[0]
        a.execute(f'DROP SCHEMA "{name}"')
        a.commit()
