"""Several named source databases feeding one warehouse (``sources:`` and a table's ``source:``).

The contract is parsed and refused line by line; two real source databases feed one warehouse through
the real extract path (full and incremental) and through Dagster assets bound to their own resources;
the per-source cap (advisory-lock slots in the warehouse) is measured by timestamps; the Celery queues
of a named source are checked on the steps and in the worker's default queue list.
"""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from etl_assets.db import connect
from etl_assets.errors import ConfigError
from etl_assets.extract.assets import build_assets
from etl_assets.extract.common import ExtractReport
from etl_assets.extract.runner import run_extract
from etl_assets.extract.sourcecap import slot_name
from etl_assets.io.tables import TableRef
from etl_assets.pipeline_config import PipelineConfig, load_pipelines, parse_pipelines
from etl_assets.resources import build_resources
from etl_assets_tests.conftest import create_database, drop_database
from etl_assets_tests.extract_helpers import checksum, execute, scalar

TWO_SOURCES = """sources:
  crm: {dsn_env: CRM_DSN, max_concurrent: 3}
  shop: {dsn_env: ETL_SOURCE_DSN}
tables:
  - name: crm.contacts
    extract: full
    source: crm
  - name: shop.items
    extract: full
  - name: shop.changes
    extract: cdc
    primary_key: [id]
"""


def test_sources_parse_and_tables_name_theirs() -> None:
    config = parse_pipelines(TWO_SOURCES, "two.yaml")
    assert [(s.name, s.dsn_env, s.max_concurrent, s.line) for s in config.sources] == [
        ("crm", "CRM_DSN", 3, 2), ("shop", "ETL_SOURCE_DSN", 2, 3)]
    # A table naming no source reads ETL_SOURCE_DSN: the declared source of that variable (its cap and
    # queue), cdc tables included.
    assert [(t.label, t.source_name) for t in config.tables] == [
        ("crm.contacts", "crm"), ("shop.items", "shop"), ("shop.changes", "shop")]
    assert config.source_named("crm").max_concurrent == 3 and config.source_named(None) is None
    plain = parse_pipelines("tables:\n  - name: a.b\n    extract: full\n", "plain.yaml")
    assert plain.sources == () and plain.tables[0].source_name is None


@pytest.mark.parametrize(("text", "message"), [
    ("sources: 1\ntables: []\n", "bad.yaml: 'sources' must be a mapping of names to {dsn_env: VARIABLE}"),
    ("sources: {crm: CRM_DSN}\ntables: []\n", "bad.yaml: source crm (line 1): must be a mapping such as"),
    ("sources:\n  crm: {dsn_env: 3}\ntables: []\n",
     "bad.yaml: source crm (line 2): key 'dsn_env' must name the environment variable"),
    ("sources:\n  crm: {}\ntables: []\n", "bad.yaml: source crm (line 2): key 'dsn_env' must name"),
    ("sources:\n  crm: {dsn_env: X, max_concurrent: 0}\ntables: []\n",
     "bad.yaml: source crm (line 2): key 'max_concurrent' must be a whole number >= 1"),
    ("sources:\n  crm: {dsn_env: X, max_concurrent: true}\ntables: []\n", "key 'max_concurrent' must be"),
    ("sources:\n  crm: {dsn_env: X, pool: 2}\ntables: []\n",
     "bad.yaml: source crm (line 2): unknown key 'pool'; allowed: dsn_env, max_concurrent."),
    ("sources:\n  crm-eu: {dsn_env: X}\ntables: []\n",
     "bad.yaml: source crm-eu (line 2): a source name is letters, digits and _"),
    ("sources:\n  a: {dsn_env: X}\n  b: {dsn_env: X}\ntables: []\n",
     "bad.yaml: sources a (line 2) and b (line 3) both read X; one name per database"),
    ("sources:\n  crm: {dsn_env: CRM_DSN}\ntables:\n  - name: a.b\n    extract: full\n    source: crn\n",
     "bad.yaml: table a.b (line 4): key 'source': unknown source 'crn'; declared sources: crm. Declare it "
     "under sources:"),
    ("tables:\n  - name: a.b\n    extract: full\n    source: crm\n",
     "bad.yaml: table a.b (line 2): key 'source': unknown source 'crm'; declared sources: none"),
    ("tables:\n  - name: a.b\n    extract: full\n    source: [crm]\n",
     "bad.yaml: table #1 (a.b, line 2): key 'source' (line 4): must be the name of a source declared "
     "under sources:"),
])
def test_every_mistake_is_one_line_naming_file_and_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_pipelines(text, "bad.yaml")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_table_may_name_a_source_declared_in_another_file(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a_sources.yaml").write_text("sources:\n  crm: {dsn_env: CRM_DSN}\ntables: []\n")
    (tmp_path / "b_tables.yaml").write_text("tables:\n  - name: crm.contacts\n    extract: full\n"
                                            "    source: crm\n")
    monkeypatch.setenv("ETL_PIPELINES", str(tmp_path))
    config = load_pipelines()
    assert [s.name for s in config.sources] == ["crm"]
    assert config.tables[0].source_name == "crm"
    (tmp_path / "c_again.yaml").write_text("sources:\n  crm: {dsn_env: OTHER_DSN}\ntables: []\n")
    with pytest.raises(ConfigError, match=r"c_again.yaml: source crm \(line 2\) differs from its declaration "
                       r"in .*a_sources.yaml \(line 2\)"):
        load_pipelines()
    (tmp_path / "c_again.yaml").write_text("tables:\n  - name: x.y\n    extract: full\n    source: nope\n")
    with pytest.raises(ConfigError, match=r"c_again.yaml: table x.y \(line 2\): key 'source': unknown source "
                       r"'nope'; declared sources: crm"):
        load_pipelines()


# --- two source databases feeding one warehouse -------------------------------------------------------

PEOPLE = ("CREATE SCHEMA app;"
          "CREATE TABLE app.people (id int PRIMARY KEY, name text NOT NULL, "
          "updated_at timestamptz NOT NULL DEFAULT now());"
          "CREATE INDEX ON app.people (updated_at);")


@pytest.fixture(scope="module")
def source_dbs(pg_admin_dsn: str) -> Iterator[dict[str, str]]:
    """Two source databases (crm, shop), each with its own ``app.people`` (same name, other rows)."""
    prefix = f"x{secrets.token_hex(4)}"
    names = {"crm": f"{prefix}_crm", "shop": f"{prefix}_shop"}
    dsns = {name: create_database(pg_admin_dsn, db) for name, db in names.items()}
    execute(dsns["crm"], PEOPLE + "INSERT INTO app.people (id, name, updated_at) SELECT g, 'crm ' || g, "
            "now() - make_interval(secs => 1000 - g) FROM generate_series(1, 300) g")
    execute(dsns["shop"], PEOPLE + "INSERT INTO app.people (id, name, updated_at) SELECT g, 'shop ' || g, "
            "now() - make_interval(secs => 1000 - g) FROM generate_series(1, 500) g")
    yield dsns
    for db in names.values():
        drop_database(pg_admin_dsn, db)


@pytest.fixture
def env_two(etl_env: dict[str, str], source_dbs: dict[str, str], monkeypatch: pytest.MonkeyPatch
            ) -> dict[str, str]:
    monkeypatch.setenv("CRM_DSN", source_dbs["crm"])
    monkeypatch.setenv("SHOP_DSN", source_dbs["shop"])
    return {**etl_env, **source_dbs}


def _declare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> PipelineConfig:
    file = tmp_path / "sources.yaml"
    file.write_text(text)
    monkeypatch.setenv("ETL_PIPELINES", str(file))
    return load_pipelines()


def _people(tag: str, *, crm_cap: int = 2) -> str:
    """crm's app.people fully, shop's incrementally, into targets named by ``tag``."""
    return f"""sources:
  crm: {{dsn_env: CRM_DSN, max_concurrent: {crm_cap}}}
  shop: {{dsn_env: SHOP_DSN}}
tables:
  - name: app.people
    source: crm
    extract: full
    primary_key: [id]
    target: raw.{tag}_crm_people
  - name: app.people
    source: shop
    extract: incremental
    primary_key: [id]
    cursor: updated_at
    target: raw.{tag}_shop_people
"""


def _parity(source_dsn: str, warehouse_dsn: str, target: str) -> tuple[int, str | None]:
    columns, key = ["id", "name", "updated_at"], ["id"]
    expected = checksum(source_dsn, TableRef("app", "people"), columns, key)
    actual = checksum(warehouse_dsn, TableRef.parse(target), columns, key)
    assert actual == expected
    return actual


def test_two_sources_feed_one_warehouse_through_their_assets(env_two: dict[str, str], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    tag = f"two{secrets.token_hex(3)}"
    config = _declare(tmp_path, monkeypatch, _people(tag))
    assets = build_assets(config)
    resources = build_resources(config)
    assert {"source__crm", "source__shop"} <= set(resources)
    by_target = {a.key.path[-1]: a for a in assets}
    assert by_target[f"{tag}_crm_people"].required_resource_keys >= {"source__crm", "warehouse"}
    assert "source" not in by_target[f"{tag}_shop_people"].required_resource_keys

    result = dg.materialize(assets, resources=resources)
    assert result.success
    read = {e.asset_key.path[-1]: e.materialization.metadata
            for e in result.get_asset_materialization_events()}
    assert read[f"{tag}_crm_people"]["rows_read"].value == 300
    assert read[f"{tag}_shop_people"]["rows_read"].value == 500
    assert read[f"{tag}_crm_people"]["source_name"].text == "crm"
    wh = env_two["ETL_WAREHOUSE_DSN"]
    assert _parity(env_two["crm"], wh, f"raw.{tag}_crm_people")[0] == 300
    assert _parity(env_two["shop"], wh, f"raw.{tag}_shop_people")[0] == 500
    assert scalar(wh, f"SELECT min(name) FROM raw.{tag}_crm_people") == "crm 1"

    # Incremental from shop: only its changed rows are read; crm's identically named table is untouched.
    execute(env_two["shop"], "UPDATE app.people SET name = name || ' v2', updated_at = now() WHERE id <= 7; "
            "INSERT INTO app.people (id, name) VALUES (501, 'shop 501')")
    shop_asset = by_target[f"{tag}_shop_people"]
    again = dg.materialize([shop_asset], resources=resources)
    assert again.success
    (event,) = again.get_asset_materialization_events()
    meta = event.materialization.metadata
    assert (meta["rows_inserted"].value, meta["rows_updated"].value) == (1, 7)
    assert meta["rows_read"].value <= 9  # the changed rows (and the row at the previous mark)
    assert _parity(env_two["shop"], wh, f"raw.{tag}_shop_people")[0] == 501
    assert _parity(env_two["crm"], wh, f"raw.{tag}_crm_people")[0] == 300


def test_a_named_source_variable_unset_stops_loading(env_two: dict[str, str], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    config = _declare(tmp_path, monkeypatch, _people("unset"))
    monkeypatch.delenv("SHOP_DSN")
    with pytest.raises(ConfigError) as err:
        build_resources(config)
    message = str(err.value)
    assert message.startswith(f"Source shop ({tmp_path / 'sources.yaml'}, line 3) reads its connection "
                              "string from SHOP_DSN, which is not set; export SHOP_DSN=")
    assert "\n" not in message
    with pytest.raises(ConfigError, match=r"Source shop .* SHOP_DSN, which is not set"):
        # Importing the module builds the Definitions (as dagster dev and workers do); if a test
        # imported it earlier, building them again is the same code path.
        from etl_assets import definitions

        definitions.build_definitions()


def test_an_unreachable_named_source_is_named_and_its_password_hidden(
        env_two: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tag = f"down{secrets.token_hex(3)}"
    config = _declare(tmp_path, monkeypatch, _people(tag))
    monkeypatch.setenv("CRM_DSN", "postgresql://crm_reader:s3cr3t-pw@127.0.0.1:1/crm")
    crm_asset = next(a for a in build_assets(config) if a.key.path[-1] == f"{tag}_crm_people")
    result = dg.materialize([crm_asset], resources=build_resources(config), raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    error = failure.step_failure_data.error
    message = (error.cause or error).message  # Dagster wraps the step's own error
    assert "DatabaseUnreachable" in (error.cause or error).cls_name
    assert ("Cannot connect to the crm source database at postgresql://crm_reader:***@127.0.0.1:1/crm"
            in message)
    assert "The connection string comes from CRM_DSN" in message
    assert "s3cr3t" not in error.to_string()


# --- the per-source cap: advisory-lock slots in the warehouse ------------------------------------------

def _run_pair(config: PipelineConfig, env: dict[str, str], tag: str, hold: float,
              monkeypatch: pytest.MonkeyPatch) -> tuple[list[ExtractReport], list[str]]:
    """Both crm tables extracted at once (two threads, the real extract path), each holding its run
    for ``hold`` seconds (ETL_TEST_EXTRACT_HOLD); returns their reports and the log lines."""
    monkeypatch.setenv("ETL_TEST_EXTRACT_HOLD", str(hold))
    specs = [s for s in config.tables if s.source_name == "crm"]
    cap = config.source_named("crm").max_concurrent
    lines: list[str] = []
    warehouse = functools.partial(connect, env["ETL_WAREHOUSE_DSN"])
    source = functools.partial(connect, env["crm"])
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(run_extract, spec, source, warehouse, f"run-{i}", log=lines.append,
                               source_cap=("crm", cap)) for i, spec in enumerate(specs)]
        reports = [f.result(timeout=120) for f in futures]
    return reports, lines


def _two_crm_tables(tag: str, cap: int) -> str:
    return f"""sources:
  crm: {{dsn_env: CRM_DSN, max_concurrent: {cap}}}
tables:
  - name: app.people
    source: crm
    extract: full
    primary_key: [id]
    target: raw.{tag}_a
  - name: app.people
    source: crm
    extract: full
    primary_key: [id]
    target: raw.{tag}_b
"""


def test_max_concurrent_one_makes_the_second_extract_wait(env_two: dict[str, str], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    tag = f"cap{secrets.token_hex(3)}"
    config = _declare(tmp_path, monkeypatch, _two_crm_tables(tag, 1))
    (first, second), lines = _run_pair(config, env_two, tag, 1.5, monkeypatch)
    early, late = sorted([first, second], key=lambda r: r.source_acquired_at)
    # Measured: the second took its slot only after the first let it go; it waited about a hold long.
    assert late.source_acquired_at >= early.source_released_at
    assert late.source_waited_seconds >= 1.0 and early.source_waited_seconds < 1.0
    assert late.metadata()["source_wait_seconds"] >= 1.0 and late.metadata()["source_name"] == "crm"
    waiting = [line for line in lines if "slot(s) of source crm are taken" in line]
    assert len(waiting) == 1 and "all 1 slot(s)" in waiting[0]
    assert f"slot 1: crm: raw.{tag}_" in waiting[0]  # names what the holder extracts
    for target in (f"raw.{tag}_a", f"raw.{tag}_b"):
        assert _parity(env_two["crm"], env_two["ETL_WAREHOUSE_DSN"], target)[0] == 300
    # The run lock is taken inside the slot and released before it.
    for report in (first, second):
        assert report.source_acquired_at <= report.lock_acquired_at
        assert report.lock_released_at <= report.source_released_at


def test_max_concurrent_two_lets_both_run_at_once(env_two: dict[str, str], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    tag = f"two{secrets.token_hex(3)}"
    config = _declare(tmp_path, monkeypatch, _two_crm_tables(tag, 2))
    (first, second), lines = _run_pair(config, env_two, tag, 1.0, monkeypatch)
    early, late = sorted([first, second], key=lambda r: r.source_acquired_at)
    assert late.source_acquired_at < early.source_released_at  # they overlapped
    assert max(first.source_waited_seconds, second.source_waited_seconds) < 0.5
    assert not [line for line in lines if "are taken" in line]


def test_a_slot_held_by_a_session_that_ends_is_freed(env_two: dict[str, str], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A holder that dies (its warehouse session ends without unlocking) frees its slot."""
    tag = f"gone{secrets.token_hex(3)}"
    config = _declare(tmp_path, monkeypatch, _two_crm_tables(tag, 1))
    spec = config.tables[0]
    holder = psycopg.connect(env_two["ETL_WAREHOUSE_DSN"], autocommit=True,
                             application_name="etl-assets slot crm: a crashed extract")
    holder.execute("SELECT pg_advisory_lock(hashtext(%s), 1)", (slot_name("crm"),))
    lines: list[str] = []
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(run_extract, spec, functools.partial(connect, env_two["crm"]),
                             functools.partial(connect, env_two["ETL_WAREHOUSE_DSN"]), "after-crash",
                             log=lines.append, source_cap=("crm", 1))
        time.sleep(1.0)
        assert not future.done()
        holder.close()  # the session ends: its advisory locks go with it
        report = future.result(timeout=60)
    assert report.source_waited_seconds >= 0.8 and report.rows_read == 300  # the holder lived ~1 s
    assert "slot 1: crm: a crashed extract" in lines[0]


# --- Celery queues, sensors and delete detection per source ----------------------------------------------

def test_named_source_steps_go_to_their_queue_and_the_worker_takes_every_queue(
        env_two: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("dagster_celery")
    from dagster._core.execution.api import create_execution_plan
    from dagster_celery.tags import DAGSTER_CELERY_QUEUE_TAG

    from etl_assets.celery_executor import BROKER_VAR, QUEUE_TAG, make_worker_app, project_queues

    assert QUEUE_TAG == DAGSTER_CELERY_QUEUE_TAG
    text = _people("q") + "  - name: app.defaulted\n    extract: full\n    target: raw.q_defaulted\n"
    config = _declare(tmp_path, monkeypatch, text)
    defs = dg.Definitions(assets=build_assets(config), resources=build_resources(config))
    plan = create_execution_plan(defs.resolve_implicit_global_asset_job_def())
    queues = {step.key: step.tags.get(DAGSTER_CELERY_QUEUE_TAG) for step in plan.steps}
    assert queues == {"extract__raw__q_crm_people": "source-crm",
                      "extract__raw__q_shop_people": "source-shop",
                      "extract__raw__q_defaulted": None}  # the default source: the default queue

    # `etl-assets worker` without --queue serves the default queue and every named source's.
    monkeypatch.delenv("ETL_CELERY_QUEUE", raising=False)
    assert project_queues() == ["dagster", "source-crm", "source-shop"]
    monkeypatch.setenv(BROKER_VAR, "pyamqp://guest:guest@127.0.0.1:1//")  # never contacted
    app = make_worker_app()
    assert [q.name for q in app.conf.task_queues] == ["dagster", "source-crm", "source-shop"]
    assert [q.routing_key for q in app.conf.task_queues][1] == "source-crm.#"


def test_the_sensor_probes_each_table_in_its_own_source(env_two: dict[str, str], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from etl_assets.automation import sensors

    tag = f"sn{secrets.token_hex(3)}"
    execute(env_two["crm"], f"CREATE TABLE app.{tag} (id int PRIMARY KEY, updated_at timestamptz NOT NULL "
            f"DEFAULT now()); CREATE INDEX ON app.{tag} (updated_at); INSERT INTO app.{tag} VALUES (1)")
    config = _declare(tmp_path, monkeypatch, f"""sources:
  crm: {{dsn_env: CRM_DSN}}
  shop: {{dsn_env: SHOP_DSN}}
tables:
  - name: app.{tag}
    source: crm
    extract: incremental
    primary_key: [id]
    cursor: updated_at
    target: raw.{tag}
  - name: app.people
    source: shop
    extract: incremental
    primary_key: [id]
    cursor: updated_at
    target: raw.{tag}_shop
""")
    sensor, job = sensors.build_source_sensor(30, list(config.tables))
    assert sensor.required_resource_keys == {"warehouse", "source__crm", "source__shop"}
    resources = {k: v for k, v in build_resources(config).items() if k in sensor.required_resource_keys}
    defs = dg.Definitions(assets=build_assets(config), sensors=[sensor], jobs=[job], resources=resources)
    with dg.DagsterInstance.get() as instance:
        # As the daemon evaluates it (resources from the context, none as arguments) ...
        context = dg.build_sensor_context(instance=instance, definitions=defs, resources=resources)
        data = sensor.evaluate_tick(context)
        (request,) = data.run_requests
        assert {k.path[-1] for k in request.asset_selection} == {tag, f"{tag}_shop"}
        # ... and called directly: the crm-only table is found in crm, not in the default source.
        result = sensor(dg.build_sensor_context(instance=instance, definitions=defs, resources=resources))
        assert len(result.run_requests) == 1


def test_delete_detection_compares_with_the_tables_own_source(env_two: dict[str, str], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from etl_assets.housekeeping.deletes import build_delete_job

    tag = f"del{secrets.token_hex(3)}"
    execute(env_two["crm"], f"CREATE TABLE app.{tag} (id int PRIMARY KEY, updated_at timestamptz NOT NULL "
            f"DEFAULT now()); INSERT INTO app.{tag} (id) SELECT generate_series(1, 50)")
    config = _declare(tmp_path, monkeypatch, f"""sources:
  crm: {{dsn_env: CRM_DSN}}
tables:
  - name: app.{tag}
    source: crm
    extract: incremental
    primary_key: [id]
    cursor: updated_at
    target: raw.{tag}
""")
    resources = build_resources(config)
    assert dg.materialize(build_assets(config), resources=resources).success
    execute(env_two["crm"], f"DELETE FROM app.{tag} WHERE id > 45")
    job = build_delete_job(config.tables)
    result = job.execute_in_process(resources={k: resources[k] for k in ("source__crm", "warehouse")})
    assert result.success
    wh = env_two["ETL_WAREHOUSE_DSN"]
    assert scalar(wh, f"SELECT count(*) FROM raw.{tag}") == 45
    assert scalar(wh, f"SELECT max(id) FROM raw.{tag}") == 45


@pytest.mark.drill
def test_a_worker_on_a_source_queue_takes_that_sources_extracts(pg_admin_dsn: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Real RabbitMQ: one worker serves only ``source-<name>``, another only the default queue; a run of
    a declaration with a named-source table and a default-source table puts each extract on its own
    worker, and both targets equal their sources."""
    from etl_assets_tests.celery_helpers import BROKER_URL, Worker, broker_answers
    from etl_assets_tests.test_celery_executor import Site, etl_run, steps_ran_on

    if not broker_answers():
        pytest.skip("no RabbitMQ answers on 127.0.0.1:5672 (.ci/rabbitmq starts one)")
    site = Site(pg_admin_dsn, tmp_path)
    try:
        name = f"crm_{secrets.token_hex(3)}"  # its own queue name on the shared broker
        crm = site.database("crm")
        warehouse = site.database("wh")
        execute(crm, PEOPLE + "INSERT INTO app.people (id, name) SELECT g, 'crm ' || g "
                "FROM generate_series(1, 40) g")
        execute(site.source, PEOPLE + "INSERT INTO app.people (id, name) SELECT g, 'dflt ' || g "
                "FROM generate_series(1, 60) g")
        file = tmp_path / "two.yaml"
        file.write_text(f"""sources:
  {name}: {{dsn_env: CRM_TEST_DSN}}
tables:
  - name: app.people
    source: {name}
    extract: full
    primary_key: [id]
    target: raw.crm_people
  - name: app.people
    extract: full
    primary_key: [id]
    target: raw.default_people
""")
        env = {**site.env(warehouse, BROKER_URL), "ETL_PIPELINES": str(file), "CRM_TEST_DSN": crm}
        near = Worker(env, tmp_path / "near.log", "--queue", f"source-{name}")
        rest = Worker(env, tmp_path / "rest.log", "--queue", site.queue)
        try:
            near_node, rest_node = near.wait_ready(), rest.wait_ready()
            assert f"queues source-{name}" in near.output()
            result = etl_run(env)
            assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        finally:
            assert near.terminate() == 0 and rest.terminate() == 0
        places = steps_ran_on(result.stdout)
        assert places["extract__raw__crm_people"][1] == near_node
        assert places["extract__raw__default_people"][1] == rest_node
        assert {node for _pid, node in places.values()} == {near_node, rest_node}
        assert _parity(crm, warehouse, "raw.crm_people")[0] == 40
        assert _parity(site.source, warehouse, "raw.default_people")[0] == 60
    finally:
        site.drop()


def test_cdc_from_a_named_source(env_two: dict[str, str], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Capture installed in the named source with ``etl-assets cdc install --source``, the change log
    applied through the table's own resource, inserts, updates and deletes included."""
    from etl_assets.cli import main

    tag = f"cdc{secrets.token_hex(3)}"
    execute(env_two["crm"], f"CREATE TABLE app.{tag} (id int PRIMARY KEY, v text); "
            f"INSERT INTO app.{tag} SELECT g, 'v' || g FROM generate_series(1, 30) g")
    config = _declare(tmp_path, monkeypatch, f"""sources:
  crm: {{dsn_env: CRM_DSN, max_concurrent: 1}}
tables:
  - name: app.{tag}
    source: crm
    extract: cdc
    primary_key: [id]
    target: raw.{tag}
""")
    (asset,) = build_assets(config)
    assert asset.required_resource_keys >= {"source__crm", "warehouse"}
    assert asset.op.tags["dagster-celery/queue"] == "source-crm"
    resources = build_resources(config)
    # Not installed yet: the message names the command with the source.
    failed = dg.materialize([asset], resources=resources, raise_on_error=False)
    assert not failed.success
    (failure,) = [e for e in failed.all_events if e.event_type_value == "STEP_FAILURE"]
    error = failure.step_failure_data.error
    assert f"`etl-assets cdc install --source crm app.{tag}`" in (error.cause or error).message

    assert main(["cdc", "install", "--source", "nope"]) == 2  # an unknown source is refused by name
    assert "--source nope: no such source in the tables declaration" in capsys.readouterr().err
    assert main(["cdc", "install", "--source", "crm"]) == 0
    assert f"app.{tag}: capture installed" in capsys.readouterr().out
    from etl_assets.cdc.capture import get_capture

    for dsn, installed in ((env_two["crm"], True), (env_two["ETL_SOURCE_DSN"], False)):  # in crm only
        with psycopg.connect(dsn, autocommit=True) as conn:
            exists = conn.execute("SELECT to_regnamespace('etl_cdc') IS NOT NULL").fetchone()[0]
            assert (exists and get_capture(conn, TableRef("app", tag)) is not None) == installed

    assert dg.materialize([asset], resources=resources).success  # the snapshot
    execute(env_two["crm"], f"UPDATE app.{tag} SET v = 'changed' WHERE id <= 3; DELETE FROM app.{tag} "
            f"WHERE id > 25; INSERT INTO app.{tag} VALUES (31, 'new')")
    assert dg.materialize([asset], resources=resources).success  # the changes
    columns, key = ["id", "v"], ["id"]
    expected = checksum(env_two["crm"], TableRef("app", tag), columns, key)
    assert checksum(env_two["ETL_WAREHOUSE_DSN"], TableRef("raw", tag), columns, key) == expected
    assert expected[0] == 26



@pytest.mark.parametrize("source", ["crm", "f"])  # hashtext('etl-assets source: f') is negative
def test_a_waiting_extract_names_the_holders_whatever_the_key(source: str, env_two: dict[str, str]) -> None:
    from etl_assets.extract.sourcecap import source_slot

    warehouse = functools.partial(connect, env_two["ETL_WAREHOUSE_DSN"])
    lines: list[str] = []
    def second() -> float:
        with source_slot(source, 1, warehouse, "raw.second", log=lines.append) as held:
            return held.acquired_at

    pool = ThreadPoolExecutor(1)
    try:
        with source_slot(source, 1, warehouse, "raw.first") as first:
            future = pool.submit(second)
            time.sleep(0.5)
            assert not future.done()  # waits while the slot is held ...
        acquired = future.result(timeout=30)  # ... and takes it once let go
    finally:
        pool.shutdown(wait=True)
    assert acquired >= first.released_at
    assert lines == [f"raw.second: all 1 slot(s) of source {source} are taken (max_concurrent); waiting "
                     f"(0 s so far) for one of: slot 1: {source}: raw.first"]


def test_etl_assets_run_with_one_source_down_loads_the_others(env_two: dict[str, str], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """``etl-assets run``: the unreachable source's extract fails with its one line (progress and
    summary), its password nowhere in the output; the other source's table is loaded."""
    import os
    import subprocess
    import sys

    tag = f"run{secrets.token_hex(3)}"
    file = tmp_path / "run.yaml"
    file.write_text(_people(tag))
    env = {**os.environ, "ETL_PIPELINES": str(file), "CRM_DSN": "postgresql://reader:t0psecret@127.0.0.1:1/crm"}
    result = subprocess.run([sys.executable, "-m", "etl_assets.cli", "run", "--select",
                             f"raw/{tag}_crm_people,raw/{tag}_shop_people"],
                            env=env, capture_output=True, text=True, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode != 0 and "t0psecret" not in out
    line = (f"raw/{tag}_crm_people: etl_assets.errors.DatabaseUnreachable: Cannot connect to the crm source "
            "database at postgresql://reader:***@127.0.0.1:1/crm: ")
    assert f"FAILED     {line}" in result.stdout  # the progress line
    summary = result.stdout.split("failed steps:", 1)[1]
    assert line in summary and "The connection string comes from CRM_DSN" in summary
    assert _parity(env_two["shop"], env_two["ETL_WAREHOUSE_DSN"], f"raw.{tag}_shop_people")[0] >= 500


def test_a_missing_table_names_its_source(env_two: dict[str, str]) -> None:
    from etl_assets.errors import MissingObject

    config = parse_pipelines("sources:\n  crm: {dsn_env: CRM_DSN}\ntables:\n  - name: app.nope\n"
                             "    source: crm\n    extract: full\n", "mine.yaml")
    with pytest.raises(MissingObject) as err:
        run_extract(config.tables[0], functools.partial(connect, env_two["crm"]),
                    functools.partial(connect, env_two["ETL_WAREHOUSE_DSN"]), "missing",
                    source_cap=("crm", 2))
    assert str(err.value).startswith("Source table app.nope does not exist in the crm source database "
                                     "(declared at line 4); ")
