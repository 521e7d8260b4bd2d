"""Settings: DSN helpers, DAGSTER_HOME, and ensure_environment with every DSN set (no embedded server)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from etl_assets import embedded, environment, settings
from etl_assets.errors import ConfigError


def test_redact_dsn_hides_passwords_only() -> None:
    assert settings.redact_dsn("postgresql://bob:s3cret@db:5432/wh") == "postgresql://bob:***@db:5432/wh"
    assert conninfo_to_dict(settings.redact_dsn("host=db user=bob password=s3cret dbname=wh")) == {
        "host": "db", "user": "bob", "password": "***", "dbname": "wh"
    }
    assert settings.redact_dsn("postgresql://bob@db/wh") == "postgresql://bob@db/wh"
    socket_uri = "postgresql://postgres@/source?host=/tmp/x&port=5432"
    assert settings.redact_dsn(socket_uri) == socket_uri
    assert settings.redact_dsn("host=db dbname=wh") == "host=db dbname=wh"
    assert settings.redact_dsn("host=db password='unterminated") == "<unparseable DSN>"


# Every form libpq accepts a password in; the password is "s3 cr'et" or a plain word, and each case
# lists what must survive the redaction (libpq's reading of the redacted DSN).
REDACT_CASES = [
    ("postgresql://u:s3cret@h:5432/db", "s3cret"),
    ("postgres://u:s3cret@h/db?sslmode=disable", "s3cret"),
    ("postgresql+psycopg2://u:s3cret@h:5432/db", "s3cret"),
    ("postgresql://u:s3%20cr%27et@h/db", "s3 cr'et"),
    ("postgresql://u@h/db?password=s3cret", "s3cret"),
    ("postgresql://u@h/db?sslmode=disable&password=s3cret&application_name=x", "s3cret"),
    ("postgresql://u@h/db?password=s3%20cr%27et", "s3 cr'et"),
    ("postgresql://u:s3cret@h1:5432,h2:5433/db?target_session_attrs=any", "s3cret"),
    ("postgresql://u@/db?host=/tmp/sock&password=s3cret", "s3cret"),
    ("host=h user=u password=s3cret dbname=db", "s3cret"),
    ("host=h user=u password = s3cret dbname=db", "s3cret"),
    ("host=h user=u password= s3cret dbname=db", "s3cret"),
    ("host=h user=u password='s3 cret' dbname=db", "s3 cret"),
    ("host=h user=u password = 's3 cret' dbname=db", "s3 cret"),
    (r"host=h user=u password='s3 cr\'et' dbname=db", "s3 cr'et"),
    (r"host=h user=u password=s3cr\'et dbname=db", "s3cr'et"),
    ("host=h1,h2 port=5432,5433 user=u password=s3cret dbname=db", "s3cret"),
    ("password=s3cret", "s3cret"),
]


@pytest.mark.parametrize(("dsn", "password"), REDACT_CASES)
def test_redact_dsn_masks_every_form_libpq_reads(dsn: str, password: str) -> None:
    assert conninfo_to_dict(settings.libpq_dsn(dsn))["password"] == password  # the case is what it says
    assert settings.dsn_password(dsn) == password
    redacted = settings.redact_dsn(dsn)
    for fragment in {password, *password.split(), "s3", "cret"}:
        assert fragment not in redacted, redacted
    # Everything else is kept: libpq reads the same connection with the password masked.
    expected = {k: v for k, v in conninfo_to_dict(settings.libpq_dsn(dsn)).items() if k != "password"}
    params = conninfo_to_dict(settings.libpq_dsn(redacted))
    assert params.pop("password") == "***"
    assert params == expected
    assert redacted.split("://")[0] == dsn.split("://")[0] or "://" not in dsn
    # A message that quotes the DSN (or only its password, decoded or percent-encoded) is masked too.
    message = f"could not connect with {dsn}: server said {password!r} / {quote(password, safe='')}"
    masked = settings.redact_text(message, dsn)
    assert password not in masked and quote(password, safe="") not in masked and "s3" not in masked
    assert masked.startswith("could not connect with ") and "server said" in masked


def test_with_database_and_urls() -> None:
    assert settings.with_database("postgresql://u:p@h:1/a?sslmode=require", "b") == (
        "postgresql://u:p@h:1/b?sslmode=require"
    )
    assert "dbname=b" in settings.with_database("host=h user=u dbname=a", "b")
    assert settings.as_url("host=/tmp/sock port=5433 user=u dbname=d") == (
        "postgresql://u@/d?host=%2Ftmp%2Fsock&port=5433"
    )
    assert settings.as_url("host=h port=5 user=u password=p@ss dbname=d") == "postgresql://u:p%40ss@h:5/d"
    # dagster-postgres needs the psycopg2 driver named (SQLAlchemy 2.1 defaults to psycopg 3).
    assert settings.dagster_storage_url("postgresql://u@h/d") == "postgresql+psycopg2://u@h/d"
    assert settings.dagster_storage_url("postgres://u@h/d") == "postgresql+psycopg2://u@h/d"
    assert settings.dagster_storage_url("postgresql+psycopg2://u@h/d") == "postgresql+psycopg2://u@h/d"
    assert settings.dagster_storage_url("host=h user=u dbname=d") == "postgresql+psycopg2://u@h/d"


def test_ensure_environment_with_every_dsn_set_starts_nothing(
    etl_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "fresh_home"
    monkeypatch.setenv("ETL_HOME", str(home))
    monkeypatch.delenv("DAGSTER_HOME")
    plain_url = etl_env["DAGSTER_PG_URL"].replace("postgresql+psycopg2://", "postgresql://")
    monkeypatch.setenv("DAGSTER_PG_URL", plain_url)
    env = environment.ensure_environment()
    assert env.embedded == ()
    assert env.source_dsn == etl_env["ETL_SOURCE_DSN"]
    assert env.dagster_url == etl_env["DAGSTER_PG_URL"]  # normalised to the psycopg2 driver
    assert embedded.status(home) is None and not (home / "pgdata").exists()
    # DAGSTER_HOME defaults to $ETL_HOME/dagster with the project's dagster.yaml in it.
    assert env.dagster_home == home.resolve() / "dagster"
    assert (env.dagster_home / "dagster.yaml").read_bytes() == (
        settings.PROJECT_ROOT / "dagster.yaml"
    ).read_bytes()
    # An external source is never seeded automatically.
    with psycopg.connect(env.source_dsn) as conn:
        conn.execute("DROP SCHEMA IF EXISTS shop CASCADE")
        conn.commit()
    environment.ensure_environment()
    with psycopg.connect(env.source_dsn) as conn:
        assert conn.execute("SELECT to_regnamespace('shop')").fetchone()[0] is None


def test_explicit_dagster_home_keeps_its_own_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "dh"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    assert settings.dagster_home() == home.resolve()
    assert (home / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"
    empty = tmp_path / "empty"
    monkeypatch.setenv("DAGSTER_HOME", str(empty))
    settings.dagster_home()
    assert (empty / "dagster.yaml").read_bytes() == (settings.PROJECT_ROOT / "dagster.yaml").read_bytes()


def test_demo_rows_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from etl_assets.demo import seed

    monkeypatch.delenv("ETL_DEMO_ROWS", raising=False)
    assert seed.default_rows() == seed.DEFAULT_ROWS
    monkeypatch.setenv("ETL_DEMO_ROWS", "2_500")
    assert seed.default_rows() == 2500
    monkeypatch.setenv("ETL_DEMO_ROWS", "lots")
    with pytest.raises(ConfigError, match="ETL_DEMO_ROWS"):
        seed.default_rows()
