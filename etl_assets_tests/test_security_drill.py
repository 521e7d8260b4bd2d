"""Security drills, each running the shipped demo end to end through `etl-assets run` (a subprocess):

- secrets: every DSN (source, warehouse, Dagster storage) carries a password, each in another form
  (URI userinfo, key=value quoted with a space and a quote, URI ``?password=``); afterwards nothing the
  project produced holds it: console output, Dagster's run and event storage (every table, compressed
  snapshots included), compute logs and every other file under DAGSTER_HOME and ETL_HOME, every table
  of the warehouse and the source, `dlq list` and `metrics` output, and a failed run's error.
- least privilege: the roles of docs/roles.md, created exactly as documented (non-superusers), run
  the demo; a missing privilege gives a message naming the table and the privilege.

The machine's PostgreSQL may use trust authentication (then the password is carried but not
checked): the leak search is the point of the first drill.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from etl_assets.settings import PROJECT_ROOT, dagster_storage_url

pytestmark = pytest.mark.drill

DEMO_ROWS = 600


def etl(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "etl_assets.cli", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def server_of(admin_dsn: str) -> dict[str, str]:
    """host and port of the server under test (a socket directory for the embedded one)."""
    params = conninfo_to_dict(admin_dsn)
    return {k: str(params[k]) for k in ("host", "port") if params.get(k)}


def uri(
    server: dict[str, str], user: str, password: str | None, database: str, *, in_query: bool = False
) -> str:
    """A postgresql:// URI; the password in the userinfo, or in the query with ``in_query``."""
    host = server.get("host", "")
    query: list[str] = []
    if host.startswith("/"):
        query += [f"host={quote(host, safe='')}"] + ([f"port={server['port']}"] if "port" in server else [])
        netloc = ""
    else:
        netloc = host + (f":{server['port']}" if "port" in server else "")
    auth = quote(user, safe="")
    if password is not None and not in_query:
        auth += ":" + quote(password, safe="")
    if password is not None and in_query:
        query.append(f"password={quote(password, safe='')}")
    tail = "?" + "&".join(query) if query else ""
    return f"postgresql://{auth}@{netloc}/{quote(database, safe='')}{tail}"


def keyvalue(server: dict[str, str], user: str, password: str | None, database: str) -> str:
    params = {**server, "user": user, "dbname": database}
    if password is not None:
        params["password"] = password
    return make_conninfo("", **params)


class Cluster:
    """Roles and databases a drill creates on the server under test, all removed afterwards."""

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn
        self.server = server_of(admin_dsn)
        self.prefix = f"t{secrets.token_hex(4)}"
        self.roles: list[str] = []
        self.databases: list[str] = []

    def admin(self, statement: sql.Composable | str, database: str | None = None) -> None:
        dsn = self.admin_dsn if database is None else make_conninfo(self.admin_dsn, dbname=database)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(statement)

    def role(self, suffix: str, password: str | None = None, extra: str = "") -> str:
        name = f"{self.prefix}_{suffix}"
        secret = sql.SQL(" PASSWORD {}").format(sql.Literal(password)) if password else sql.SQL("")
        self.admin(
            sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE{}{}").format(
                sql.Identifier(name), secret, sql.SQL(extra)
            )
        )
        self.roles.append(name)
        return name

    def database(self, suffix: str, owner: str | None = None) -> str:
        name = f"{self.prefix}_{suffix}"
        owner_sql = sql.SQL(" OWNER {}").format(sql.Identifier(owner)) if owner else sql.SQL("")
        self.admin(sql.SQL("CREATE DATABASE {}{}").format(sql.Identifier(name), owner_sql))
        self.databases.append(name)
        return name

    def drop(self) -> None:
        for name in self.databases:
            self.admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        for name in reversed(self.roles):
            self.admin(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture
def cluster(pg_admin_dsn: str) -> Iterator[Cluster]:
    created = Cluster(pg_admin_dsn)
    try:
        yield created
    finally:
        created.drop()


def base_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_bytes((PROJECT_ROOT / "dagster.yaml").read_bytes())
    env = {k: v for k, v in os.environ.items() if k not in ("ETL_EMBEDDED", "ETL_PIPELINES")}
    env.update({"DAGSTER_HOME": str(home), "ETL_HOME": str(tmp_path / "etl_home")})
    return env


# --------------------------------------------------------------------------------------------------
# Where a secret could end up
# --------------------------------------------------------------------------------------------------


def _texts(value: object) -> list[str]:
    """What a stored value says as text; bytes also decompressed (Dagster zlib-compresses snapshots)."""
    if isinstance(value, memoryview | bytes | bytearray):
        raw = bytes(value)
        out = [raw.decode("utf-8", "replace")]
        with contextlib.suppress(zlib.error):
            out.append(zlib.decompress(raw).decode("utf-8", "replace"))
        return out
    return [str(value)]


def database_hits(dsn: str, needle: str) -> list[str]:
    """``schema.table`` (and a snippet) of every row of every user table in ``dsn`` holding ``needle``."""
    hits: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg_toast%%' ORDER BY 1, 2"
        ).fetchall()
        assert tables, f"no tables in {dsn}"
        for schema, table in tables:
            with conn.cursor(binary=False) as cur:
                cur.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(schema, table)))
                for row in cur:
                    for value in row:
                        for text in _texts(value):
                            if needle in text:
                                at = text.index(needle)
                                hits.append(f"{schema}.{table}: ...{text[max(0, at - 120):at + 40]}...")
    return hits


def file_hits(roots: list[Path], needle: str) -> list[str]:
    hits = []
    encoded = needle.encode()
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                if encoded in data:
                    hits.append(str(path))
    return hits


def test_no_password_leaks_anywhere_after_a_demo_run(cluster: Cluster, tmp_path: Path) -> None:
    token = secrets.token_hex(8)  # every form of the password (quoted, percent-encoded) contains it
    password = f"S3 cr'{token}"
    owner = cluster.role("pw", password)
    names = {db: cluster.database(db, owner=owner) for db in ("source", "warehouse", "dagster")}
    source_dsn = keyvalue(cluster.server, owner, password, names["source"])  # quoted, with spaces
    warehouse_dsn = uri(cluster.server, owner, password, names["warehouse"])  # userinfo
    dagster_dsn = uri(cluster.server, owner, password, names["dagster"], in_query=True)  # ?password=
    assert "'" in source_dsn and "password=" in dagster_dsn  # each form is what it says
    for dsn in (source_dsn, warehouse_dsn, dagster_dsn):
        assert conninfo_to_dict(dsn)["password"] == password

    env = base_env(tmp_path)
    env.update({
        "ETL_SOURCE_DSN": source_dsn,
        "ETL_WAREHOUSE_DSN": warehouse_dsn,
        "DAGSTER_PG_URL": dagster_storage_url(dagster_dsn),
    })
    outputs: dict[str, str] = {}
    seeded = etl("seed", "--rows", str(DEMO_ROWS), "--seed", "7", env=env)  # as the owner of the tables
    outputs["etl-assets seed"] = seeded.stdout + seeded.stderr
    assert seeded.returncode == 0 and "seeding the demo source" in seeded.stdout, outputs["etl-assets seed"]
    run = etl("run", env=env)
    outputs["etl-assets run"] = run.stdout + run.stderr
    assert "result:" in run.stdout, outputs["etl-assets run"][-3000:]
    assert f"raw/orders: {DEMO_ROWS:,} rows" in run.stdout or "raw/orders" in run.stdout
    with psycopg.connect(warehouse_dsn) as conn:  # the run really loaded through these DSNs
        assert conn.execute("SELECT count(*) FROM raw.orders").fetchone()[0] == DEMO_ROWS
    for args in (("dlq", "list"), ("metrics",)):
        result = etl(*args, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        outputs["etl-assets " + " ".join(args)] = result.stdout + result.stderr
    assert outputs["etl-assets metrics"].strip()
    # A failed step: its error and stack trace are stored in the event log.
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE shop.categories RENAME TO categories_gone")
    failed = etl("run", "--select", "raw/categories", env=env)
    outputs["etl-assets run (failing)"] = failed.stdout + failed.stderr
    assert failed.returncode != 0 and "categories" in failed.stdout + failed.stderr
    # A database that cannot be reached: the message names it without the password.
    missing_db = keyvalue(cluster.server, owner, password, names["source"] + "_missing")
    unreachable = dict(env, ETL_SOURCE_DSN=missing_db)
    refused = etl("run", env=unreachable)
    outputs["etl-assets run (unreachable)"] = refused.stdout + refused.stderr
    assert refused.returncode == 2 and "Cannot connect to the source database" in refused.stderr

    leaks = [f"console output of {name}" for name, text in outputs.items() if token in text]
    for role, dsn in (("source", source_dsn), ("warehouse", warehouse_dsn), ("dagster", dagster_dsn)):
        leaks += [f"{role} database: {hit}" for hit in database_hits(dsn, token)]
    leaks += [f"file {hit}" for hit in file_hits([Path(env["DAGSTER_HOME"]), Path(env["ETL_HOME"])], token)]
    assert not leaks, "the password appears in:\n" + "\n".join(leaks)
    # The search is not vacuous: the Dagster storage holds the run's events, metadata and snapshots.
    with psycopg.connect(dagster_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM event_logs").fetchone()[0] > 50
        assert conn.execute("SELECT count(*) FROM snapshots").fetchone()[0] > 0
    assert any(Path(env["DAGSTER_HOME"]).rglob("*.out")) or any(Path(env["DAGSTER_HOME"]).rglob("*.err"))


# --------------------------------------------------------------------------------------------------
# Least privilege: the roles of docs/roles.md, created exactly as documented
# --------------------------------------------------------------------------------------------------

# the demo's (one per target schema in general; stream and serve for the stream and Lambda assets)
WAREHOUSE_SCHEMAS = ("etl", "raw", "clean", "mart", "ref", "stream", "serve")


def grant_source_role(admin_source_dsn: str, role: str, database: str) -> None:
    """docs/roles.md, "Source role": read the declared tables, see other sessions' transactions."""
    r = sql.Identifier(role)
    with psycopg.connect(admin_source_dsn, autocommit=True) as conn:
        for statement in (
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), r),
            sql.SQL("GRANT USAGE ON SCHEMA shop TO {}").format(r),
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA shop TO {}").format(r),
            sql.SQL("GRANT pg_read_all_stats TO {}").format(r),
        ):
            conn.execute(statement)


def grant_cdc_reader(admin_source_dsn: str, role: str) -> None:
    """docs/roles.md, "Change data capture": after `etl-assets cdc install` ran once as the owner."""
    r = sql.Identifier(role)
    with psycopg.connect(admin_source_dsn, autocommit=True) as conn:
        for statement in (
            sql.SQL("GRANT USAGE ON SCHEMA etl_cdc TO {}").format(r),
            sql.SQL("GRANT SELECT, DELETE ON ALL TABLES IN SCHEMA etl_cdc TO {}").format(r),
            sql.SQL("GRANT SELECT ON ALL SEQUENCES IN SCHEMA etl_cdc TO {}").format(r),
            sql.SQL("GRANT INSERT, UPDATE ON etl_cdc.consumer TO {}").format(r),
            sql.SQL("GRANT UPDATE (pruned_through) ON etl_cdc.capture TO {}").format(r),
        ):
            conn.execute(statement)


def grant_warehouse_role(admin_warehouse_dsn: str, role: str) -> None:
    """docs/roles.md, "Warehouse role": it owns its schemas and nothing else (no CREATE on the database)."""
    with psycopg.connect(admin_warehouse_dsn, autocommit=True) as conn:
        for schema in WAREHOUSE_SCHEMAS:
            conn.execute(
                sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
                    sql.Identifier(schema), sql.Identifier(role)
                )
            )


def test_the_demo_runs_with_the_documented_least_privilege_roles(cluster: Cluster, tmp_path: Path) -> None:
    source_role, warehouse_role, dagster_role = (cluster.role(r) for r in ("src", "wh", "dg"))
    source_db, warehouse_db = cluster.database("source"), cluster.database("warehouse")
    dagster_db = cluster.database("dagster", owner=dagster_role)  # the Dagster role owns its database
    admin_source = make_conninfo(cluster.admin_dsn, dbname=source_db)
    admin_warehouse = make_conninfo(cluster.admin_dsn, dbname=warehouse_db)

    env = base_env(tmp_path)
    env.update({
        "ETL_SOURCE_DSN": admin_source,
        "ETL_WAREHOUSE_DSN": admin_warehouse,
        "DAGSTER_PG_URL": dagster_storage_url(uri(cluster.server, dagster_role, None, dagster_db)),
    })
    seeded = etl("seed", "--rows", str(DEMO_ROWS), "--seed", "3", env=env)  # the application's tables
    assert seeded.returncode == 0, seeded.stderr
    installed = etl("cdc", "install", "shop.customers", env=env)  # once, as the tables' owner
    assert installed.returncode == 0, installed.stdout + installed.stderr
    grant_source_role(admin_source, source_role, source_db)
    grant_cdc_reader(admin_source, source_role)
    grant_warehouse_role(admin_warehouse, warehouse_role)

    source_dsn = uri(cluster.server, source_role, None, source_db)
    env.update({"ETL_SOURCE_DSN": source_dsn, "ETL_WAREHOUSE_DSN": uri(cluster.server, warehouse_role, None,
                                                                       warehouse_db)})
    with psycopg.connect(source_dsn) as conn:  # the roles really are plain roles
        assert conn.execute(
            "SELECT rolsuper OR rolcreatedb OR rolcreaterole FROM pg_roles WHERE rolname = current_user"
        ).fetchone() == (False,)
    run = etl("run", env=env)
    assert run.returncode == 0 and "result: OK" in run.stdout, (run.stdout + run.stderr)[-4000:]
    with psycopg.connect(admin_warehouse) as conn:
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM raw.orders), (SELECT count(*) FROM raw.customers), "
            "(SELECT count(*) FROM raw.categories)"
        ).fetchone()
        owners = conn.execute(
            "SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p')",
            (list(WAREHOUSE_SCHEMAS),),
        ).fetchall()
        schemas = {r[0] for r in conn.execute(
            "SELECT nspname FROM pg_namespace WHERE pg_get_userbyid(nspowner) = %s", (warehouse_role,)
        )}
    assert counts == (DEMO_ROWS, DEMO_ROWS // 10, 12)
    assert owners == [(warehouse_role,)] and schemas == set(WAREHOUSE_SCHEMAS)
    # Again, after changes at the source: incremental and CDC read with the same privileges.
    env_admin = dict(env, ETL_SOURCE_DSN=admin_source)
    assert etl("simulate", "--changes", "50", "--seed", "1", env=env_admin).returncode == 0
    again = etl("run", env=env)
    assert again.returncode == 0 and "result: OK" in again.stdout, (again.stdout + again.stderr)[-4000:]
    with psycopg.connect(admin_source) as src, psycopg.connect(admin_warehouse) as wh:
        def rows(conn: psycopg.Connection, schema: str, table: str) -> set[tuple]:
            return set(conn.execute(f"SELECT id, updated_at FROM {schema}.{table}").fetchall())

        # CDC: the same rows, deletes included; incremental: every source row in its current version
        # (rows deleted at the source stay in the target: incremental extracts cannot see deletes)
        assert rows(src, "shop", "customers") == rows(wh, "raw", "customers")
        assert rows(src, "shop", "orders") <= rows(wh, "raw", "orders")

    # A missing privilege names the table and the privilege.
    with psycopg.connect(admin_source, autocommit=True) as conn:
        conn.execute(sql.SQL("REVOKE SELECT ON shop.categories FROM {}").format(sql.Identifier(source_role)))
    denied = etl("run", "--select", "raw/categories", env=env)
    output = denied.stdout + denied.stderr
    assert denied.returncode != 0
    assert (
        f"Role {source_role} lacks the SELECT privilege on source table shop.categories" in output
    ), output[-4000:]
