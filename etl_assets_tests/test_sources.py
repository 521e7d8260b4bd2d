"""Several named source databases feeding one warehouse (``sources:`` and a table's ``source:``).

The contract is parsed and refused line by line; two real source databases feed one warehouse through
the real extract path (full and incremental) and through Dagster assets bound to their own resources;
the per-source cap (advisory-lock slots in the warehouse) is measured by timestamps; the Celery queues
of a named source are checked on the steps and in the worker's default queue list.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from etl_assets.errors import ConfigError
from etl_assets.pipeline_config import load_pipelines, parse_pipelines

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
    # queue); cdc stays on the default resource.
    assert [(t.label, t.source_name) for t in config.tables] == [
        ("crm.contacts", "crm"), ("shop.items", "shop"), ("shop.changes", None)]
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
     "bad.yaml: table #1 (a.b, line 2): key 'source': must be the name of a source declared under sources:"),
    ("sources:\n  crm: {dsn_env: CRM_DSN}\ntables:\n  - name: a.b\n    extract: cdc\n    primary_key: [id]\n"
     "    source: crm\n",
     "bad.yaml: table a.b (line 4): key 'source': extract: cdc reads only the source in ETL_SOURCE_DSN"),
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
