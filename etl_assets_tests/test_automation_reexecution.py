"""Re-execution from failure: what succeeded is skipped, a chunked extract resumes after its last
committed chunk.

The run is the project's own implicit asset job (reconstructable from ``etl_assets.definitions``, as
the daemon and the UI launch it) over two declared tables: a full extract that succeeds and a chunked
extract whose third chunk is refused by the warehouse (a CHECK constraint the test puts on the
target). After the constraint is dropped, Dagster's "re-execute from failure" runs the chunked step
alone, and it reads only the rows after its checkpoint.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator

import dagster as dg
import psycopg
import pytest
from dagster._core.definitions.assets.job.asset_job import IMPLICIT_ASSET_JOB_NAME
from dagster._core.definitions.reconstruct import ReconstructableRepository

import etl_assets.definitions as etl_definitions
from etl_assets.settings import PROJECT_ROOT

pytestmark = [pytest.mark.drill, pytest.mark.timeout(600)]

TABLES = """\
tables:
  - name: shop.categories
    extract: full
    load: truncate_insert
    primary_key: [id]
  - name: shop.orders
    extract: chunked
    load: insert
    primary_key: [id]
    chunk_size: 500
    target: raw.orders_chunked
"""


def _step_keys(instance: dg.DagsterInstance, run_id: str) -> dict[str, str]:
    return {s.step_key: s.status.value for s in instance.get_run_step_stats(run_id)}


def _materialization(instance: dg.DagsterInstance, run_id: str, key: str) -> dict:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    for record in records:
        event = record.event_log_entry.dagster_event.event_specific_data.materialization
        if event.asset_key.to_user_string() == key:
            return {k: getattr(v, "value", v) for k, v in event.metadata.items()}
    raise AssertionError(f"no materialization of {key} in run {run_id}")


@pytest.fixture
def project_env(fresh_project: dict[str, str], tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """``fresh_project`` with TABLES declared, in this process too: the job is planned here from
    ``etl_assets.definitions``, which is rebuilt for it and rebuilt again afterwards (the module is
    shared with the other tests of this worker)."""
    tables = tmp_path / "tables.yaml"
    tables.write_text(TABLES)
    for key, value in {**fresh_project, "ETL_PIPELINES": str(tables)}.items():
        if os.environ.get(key) != value:
            monkeypatch.setenv(key, value)
    importlib.reload(etl_definitions)
    yield fresh_project
    monkeypatch.undo()
    importlib.reload(etl_definitions)


def test_reexecution_from_failure_skips_what_succeeded_and_resumes_the_chunks(
    project_env: dict[str, str],
) -> None:
    fresh_project = project_env
    source, warehouse = fresh_project["ETL_SOURCE_DSN"], fresh_project["ETL_WAREHOUSE_DSN"]
    with psycopg.connect(source) as conn:
        total, third_chunk_first = conn.execute(
            "SELECT count(*), (SELECT id FROM shop.orders ORDER BY id OFFSET 1000 LIMIT 1) FROM shop.orders"
        ).fetchone()
    assert total == 2000
    with psycopg.connect(warehouse) as conn:  # the target as the extract would create it, plus a trap
        conn.execute(
            "CREATE SCHEMA raw; CREATE TABLE raw.orders_chunked (id bigint NOT NULL, user_id bigint NOT NULL,"
            " category_id integer NOT NULL, amount numeric(12,2) NOT NULL, status text NOT NULL,"
            " created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL)"
        )
        conn.execute(f"ALTER TABLE raw.orders_chunked ADD CONSTRAINT trap CHECK (id < {third_chunk_first})")

    recon = ReconstructableRepository.for_module(
        "etl_assets.definitions", "defs", working_directory=str(PROJECT_ROOT)
    ).get_reconstructable_job(IMPLICIT_ASSET_JOB_NAME)
    selection = [dg.AssetKey(["raw", "categories"]), dg.AssetKey(["raw", "orders_chunked"])]
    with dg.DagsterInstance.get() as instance:
        first = dg.execute_job(recon, instance=instance, asset_selection=selection, raise_on_error=False)
        assert not first.success
        steps = _step_keys(instance, first.run_id)
        assert steps["extract__raw__categories"] == "SUCCESS", steps
        assert steps["extract__raw__orders_chunked"] == "FAILURE", steps
        with psycopg.connect(warehouse) as conn:
            assert conn.execute("SELECT count(*) FROM raw.orders_chunked").fetchone()[0] == 1000
            conn.execute("ALTER TABLE raw.orders_chunked DROP CONSTRAINT trap")

        again = dg.execute_job(
            recon, instance=instance, raise_on_error=False,
            reexecution_options=dg.ReexecutionOptions.from_failure(first.run_id, instance),
        )
        assert again.success
        steps = _step_keys(instance, again.run_id)
        assert "extract__raw__categories" not in steps, steps  # it succeeded: not run again
        assert steps.get("extract__raw__orders_chunked") == "SUCCESS", steps
        meta = _materialization(instance, again.run_id, "raw/orders_chunked")
    assert meta["rows_read"] == 1000, meta  # the two committed chunks were not read again
    with psycopg.connect(source) as src, psycopg.connect(warehouse) as wh:
        expected = src.execute("SELECT id, amount, updated_at FROM shop.orders ORDER BY id").fetchall()
        got = wh.execute("SELECT id, amount, updated_at FROM raw.orders_chunked ORDER BY id").fetchall()
    assert got == expected  # every row once
