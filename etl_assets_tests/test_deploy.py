"""The Kubernetes deployment under deploy/, checked as far as this machine allows: the image's command
serves the Definitions over gRPC, the deployment's dagster.yaml is a valid instance configuration
(and, pointed at a real database, loads as an instance), every YAML file parses, and the Helm values
agree with the dagster.yaml they amount to."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict

from etl_assets.settings import PROJECT_ROOT
from etl_assets_tests.conftest import create_database, drop_database

DEPLOY = PROJECT_ROOT / "deploy"


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def _load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def test_every_yaml_file_parses() -> None:
    files = _yaml_files()
    assert {p.name for p in files} >= {"values.yaml", "dagster.yaml", "secrets.example.yaml"}
    for path in files:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert documents and all(isinstance(d, dict) for d in documents), path


def test_dagster_yaml_is_a_valid_instance_configuration() -> None:
    from dagster._core.instance.config import dagster_instance_config

    config, custom_class = dagster_instance_config(str(DEPLOY))
    assert custom_class is None
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["storage"]["postgres"]["postgres_db"]["password"] == {"env": "DAGSTER_PG_PASSWORD"}


def test_helm_values_amount_to_the_dagster_yaml() -> None:
    """The two files are written by hand: the settings they share must not drift apart."""
    values, instance = _load("values.yaml"), _load("dagster.yaml")
    pg, db = values["postgresql"], instance["storage"]["postgres"]["postgres_db"]
    assert pg["enabled"] is False and values["generatePostgresqlPasswordSecret"] is False
    assert (pg["postgresqlHost"], pg["postgresqlUsername"], pg["postgresqlDatabase"], pg["service"]["port"]) \
        == (db["hostname"], db["username"], db["db_name"], db["port"])
    assert pg["postgresqlParams"] == db["params"] and pg["postgresqlScheme"] == db["scheme"]
    [deployment] = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "etl_assets.definitions"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    secret_names = {s["name"] for s in launcher["envSecrets"]}
    assert secret_names == set(instance["run_launcher"]["config"]["env_secrets"]) == {"etl-assets-dsns"}
    assert {s["name"] for s in deployment["envSecrets"]} == secret_names
    assert values["global"]["postgresqlSecretName"] == instance["run_launcher"]["config"][
        "postgres_password_secret"]
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == instance["run_coordinator"]["class"]
    assert values["concurrency"]["runs"]["maxConcurrentRuns"] == instance["concurrency"]["runs"][
        "max_concurrent_runs"]
    assert values["concurrency"]["pools"]["defaultLimit"] == instance["concurrency"]["pools"]["default_limit"]
    # The secrets template holds the three DSNs the project reads.
    dsns = next(d for d in yaml.safe_load_all((DEPLOY / "secrets.example.yaml").read_text())
                if d["metadata"]["name"] == "etl-assets-dsns")
    assert set(dsns["stringData"]) == {"ETL_SOURCE_DSN", "ETL_WAREHOUSE_DSN", "DAGSTER_PG_URL"}
    # The image's default command serves the same module.
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert '"dagster", "api", "grpc", "-m", "etl_assets.definitions"' in dockerfile
    assert re.search(r"dagster-k8s==0\.29\.27", dockerfile)


def test_dagster_yaml_loads_as_an_instance_on_a_real_database(
    pg_admin_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deployment's instance configuration, with its database settings pointed at the test server
    (and without the run launcher, whose package dagster-k8s lives in the image only), is a working
    instance: storage on PostgreSQL, the queued run coordinator, pools."""
    config = _load("dagster.yaml")
    del config["run_launcher"]
    name = f"t{secrets.token_hex(4)}_deploy"  # its own storage: the session's holds other tests' runs
    parts = conninfo_to_dict(create_database(pg_admin_dsn, name))
    db = config["storage"]["postgres"]["postgres_db"]
    host = str(parts.get("host") or "127.0.0.1")
    db.update(username=str(parts.get("user") or "postgres"), db_name=str(parts["dbname"]),
              port=int(parts.get("port") or 5432), params={})
    if host.startswith("/"):  # the embedded server: a unix socket
        db.update(hostname="", params={"host": host})
    else:
        db["hostname"] = host
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", str(parts.get("password") or ""))
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    try:
        with dg.DagsterInstance.from_ref(dg._core.instance.ref.InstanceRef.from_dir(str(home))) as inst:
            assert inst.get_runs() == []
            assert type(inst.run_coordinator).__name__ == "QueuedRunCoordinator"
            assert inst.get_concurrency_config().pool_config.default_pool_limit == 2
            assert inst.get_concurrency_config().run_queue_config.max_concurrent_runs == 4
    finally:
        drop_database(pg_admin_dsn, name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_image_command_serves_the_definitions_over_grpc(etl_env: dict[str, str], tmp_path: Path) -> None:
    """The user-code image's command, run here with the test databases, passes the health check the
    chart's readiness probe runs."""
    dagster = shutil.which("dagster", path=os.path.dirname(sys.executable)) or "dagster"
    port = _free_port()
    log = (tmp_path / "grpc.log").open("wb")
    server = subprocess.Popen([dagster, "api", "grpc", "-m", "etl_assets.definitions", "-p", str(port)],
                              env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            check = subprocess.run([dagster, "api", "grpc-health-check", "-p", str(port)],
                                   capture_output=True, text=True, timeout=60)
            if check.returncode == 0:
                break
            assert server.poll() is None, (tmp_path / "grpc.log").read_text()[-3000:]
            assert time.monotonic() < deadline, check.stdout + check.stderr
            time.sleep(1)
        # A port nothing serves fails the same check: it can fail.
        assert subprocess.run([dagster, "api", "grpc-health-check", "-p", str(_free_port())],
                              capture_output=True, timeout=60).returncode != 0
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
