"""Delete detection: keys in the warehouse but gone from the source are deleted (or flagged)."""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from etl_assets.errors import ConfigError
from etl_assets.housekeeping.deletes import build_delete_job, detect_deletes
from etl_assets.pipeline_config import parse_pipelines
from etl_assets_tests.extract_helpers import checksum, execute, module_databases, run, scalar, spec_of


@pytest.fixture(scope="module")
def dbs(pg_admin_dsn: str) -> Iterator[dict[str, str]]:
    yield from module_databases(pg_admin_dsn)


def _source(dbs: dict[str, str], schema: str, rows: int, *, composite: bool = False) -> None:
    key = "PRIMARY KEY (region, id)" if composite else "PRIMARY KEY (id)"
    execute(dbs["source"], sql.SQL(
        "DROP SCHEMA IF EXISTS {s} CASCADE; CREATE SCHEMA {s};"
        "CREATE TABLE {s}.items (region text NOT NULL, id int NOT NULL, v text, "
        "updated_at timestamptz NOT NULL DEFAULT now(), " + key + ");"
        "CREATE INDEX ON {s}.items (updated_at);"
        "INSERT INTO {s}.items (region, id, v) SELECT CASE WHEN g % 2 = 0 THEN 'east' ELSE 'west' END, g, "
        "'v' || g FROM generate_series(1, {r}) g"
    ).format(s=sql.Identifier(schema), r=sql.Literal(rows)))


def _spec(schema: str, deletes: str | None = None, key: str = "[id]"):
    extra = f"    deletes: {deletes}\n" if deletes else ""
    return spec_of(f"tables:\n  - name: {schema}.items\n    extract: incremental\n    cursor: updated_at\n"
                   f"    primary_key: {key}\n    target: raw.{schema}_items\n{extra}")


def _detect(spec, dbs: dict[str, str], **kw):
    with psycopg.connect(dbs["source"]) as src, psycopg.connect(dbs["warehouse"]) as wh:
        return detect_deletes(spec, src, wh, **kw)


def _keys(dbs: dict[str, str], spec) -> set[int]:
    with psycopg.connect(dbs["warehouse"]) as conn:
        return {r[0] for r in conn.execute(sql.SQL("SELECT id FROM {}").format(spec.target.ident))}


def _stored_rows(dbs: dict[str, str], spec) -> int:
    return scalar(dbs["warehouse"], "SELECT (state->>'table_rows')::bigint FROM etl.state WHERE target = %s",
                  [str(spec.target)])


def test_deleted_source_rows_leave_the_warehouse_chunk_by_chunk(dbs: dict[str, str]) -> None:
    _source(dbs, "dd_del", 1000)
    spec = _spec("dd_del")
    assert spec.deletes == "delete"  # the default for incremental tables
    run(spec, dbs)
    execute(dbs["source"], "DELETE FROM dd_del.items WHERE id IN (3, 517, 1000)")
    report = _detect(spec, dbs, chunk=128, run_id="r1")
    assert (report.keys_compared, report.chunks) == (1000, 8)  # every key, in 8 keyset chunks
    assert (report.missing, report.deleted, report.flagged) == (3, 3, 0)
    assert sorted(int(k["id"]) for k in report.sample) == [3, 517, 1000]
    assert _keys(dbs, spec) == set(range(1, 1001)) - {3, 517, 1000}
    count = scalar(dbs["warehouse"], sql.SQL("SELECT count(*) FROM {}").format(spec.target.ident))
    assert count == 997 and _stored_rows(dbs, spec) == 997 and report.rows_after == 997
    meta = report.metadata()
    assert meta["rows_deleted"].value == 3 and meta["keys_gone_from_source"].value == 3
    # The warehouse equals the source again, and the next incremental run keeps the count exact.
    columns = ["region", "id", "v", "updated_at"]
    assert checksum(dbs["source"], spec.source, columns, ["id"]) == checksum(
        dbs["warehouse"], spec.target, columns, ["id"])
    execute(dbs["source"], "INSERT INTO dd_del.items (region, id, v) VALUES ('x', 5000, 'new')")
    assert run(spec, dbs).table_rows == 998 == _stored_rows(dbs, spec)
    again = _detect(spec, dbs)
    assert (again.missing, again.deleted) == (0, 0)


def test_flag_mode_keeps_the_rows_and_lists_them(dbs: dict[str, str]) -> None:
    _source(dbs, "dd_flag", 300)
    spec = _spec("dd_flag", "flag")
    run(spec, dbs)
    execute(dbs["source"], "DELETE FROM dd_flag.items WHERE id IN (10, 20, 30)")
    report = _detect(spec, dbs, chunk=100, run_id="r2")
    assert (report.missing, report.deleted, report.flagged) == (3, 0, 3)
    assert _keys(dbs, spec) == set(range(1, 301))  # nothing deleted
    assert _stored_rows(dbs, spec) == 300
    with psycopg.connect(dbs["warehouse"]) as conn:
        flagged = conn.execute(
            "SELECT key ->> 'id', run_id FROM etl.source_deletes WHERE target = %s ORDER BY 1::int",
            (str(spec.target),)).fetchall()
    assert flagged == [("10", "r2"), ("20", "r2"), ("30", "r2")]
    # A key that comes back is no longer flagged at the next detection (the list is replaced).
    execute(dbs["source"], "INSERT INTO dd_flag.items (region, id, v) VALUES ('east', 20, 'back')")
    _detect(spec, dbs, run_id="r3")
    with psycopg.connect(dbs["warehouse"]) as conn:
        left = [r[0] for r in conn.execute(
            "SELECT key ->> 'id' FROM etl.source_deletes WHERE target = %s ORDER BY 1", (str(spec.target),))]
    assert left == ["10", "30"]


def test_composite_keys_and_off(dbs: dict[str, str]) -> None:
    _source(dbs, "dd_comp", 200, composite=True)
    spec = _spec("dd_comp", key="[region, id]")
    run(spec, dbs)
    execute(dbs["source"], "DELETE FROM dd_comp.items WHERE (region, id) IN (('east', 2), ('west', 199))")
    off = _detect(spec, dbs, mode="off")
    assert off.keys_compared == 0 and len(_keys(dbs, spec)) == 200
    report = _detect(spec, dbs, chunk=7)
    assert report.deleted == 2 and _keys(dbs, spec) == set(range(1, 201)) - {2, 199}
    assert _stored_rows(dbs, spec) == 198


def test_job_reports_counts_in_the_run_metadata(dbs: dict[str, str]) -> None:
    _source(dbs, "dd_job", 50)
    spec = _spec("dd_job")
    run(spec, dbs)
    execute(dbs["source"], "DELETE FROM dd_job.items WHERE id <= 3")
    from etl_assets.db import PostgresResource

    job = build_delete_job([spec])
    assert job is not None
    result = job.execute_in_process(resources={
        "source": PostgresResource(dsn=dbs["source"], role="source"),
        "warehouse": PostgresResource(dsn=dbs["warehouse"]),
    }, instance=dg.DagsterInstance.ephemeral())
    assert result.success
    (output,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    meta = output.event_specific_data.metadata
    assert meta["rows_deleted"].value == 3 and meta["keys_compared"].value == 50
    observations = [e for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"]
    assert observations[0].asset_key == dg.AssetKey(["raw", "dd_job_items"])
    assert _keys(dbs, spec) == set(range(4, 51))


@pytest.mark.parametrize(("text", "message"), [
    ("extract: incremental\n    cursor: updated_at\n    deletes: remove", "unknown mode 'remove'"),
    ("extract: full\n    deletes: delete", "only extract: incremental and chunked with load: upsert"),
    ("extract: cdc\n    deletes: flag", "cdc applies deletes itself"),
])
def test_deletes_key_is_validated_with_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_pipelines(f"tables:\n  - name: s.t\n    primary_key: [id]\n    {text}\n", "t.yaml")
    assert message in str(info.value) and "key 'deletes'" in str(info.value)
    assert "\n" not in str(info.value)


def test_deletes_defaults() -> None:
    specs = parse_pipelines(
        "tables:\n"
        "  - {name: s.a, extract: incremental, cursor: u, primary_key: [id]}\n"
        "  - {name: s.b, extract: chunked, primary_key: [id]}\n"
        "  - {name: s.c, extract: chunked, primary_key: [id], load: swap}\n"
        "  - {name: s.d, extract: full}\n"
        "  - {name: s.e, extract: incremental, cursor: u, primary_key: [id], deletes: off}\n",
        "t.yaml",
    ).tables
    assert [s.deletes for s in specs] == ["delete", "delete", "off", "off", "off"]
