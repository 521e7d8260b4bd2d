"""The tables declaration: the shipped demo file, and a message for each kind of mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from etl_assets.errors import ConfigError
from etl_assets.io.tables import TableRef
from etl_assets.pipeline_config import load_pipelines, parse_pipelines, pipelines_path


def test_shipped_demo_declares_the_three_demo_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ETL_PIPELINES", raising=False)
    config = load_pipelines()
    assert [str(t.source) for t in config.tables] == ["shop.customers", "shop.categories", "shop.orders"]
    assert [t.asset_key_path for t in config.tables] == [["raw", "customers"], ["raw", "categories"],
                                                         ["raw", "orders"]]
    orders = config.by_target("raw.orders")
    assert orders is not None
    assert (orders.extract, orders.load, orders.primary_key, orders.cursor) == (
        "incremental", "upsert", ("id",), "updated_at")


def test_env_var_selects_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "mine.yaml"
    file.write_text("tables:\n  - name: app.users\n    extract: full\n")
    monkeypatch.setenv("ETL_PIPELINES", str(file))
    assert pipelines_path() == file.resolve()
    (spec,) = load_pipelines().tables
    assert spec.target == TableRef("raw", "users")
    assert spec.load == "truncate_insert"


def test_schema_and_table_keys_allow_dots_and_quotes() -> None:
    text = (
        "tables:\n"
        "  - schema: 'My.Schema'\n"
        "    table: 'Odd \"Name\"'\n"
        "    extract: chunked\n"
        "    primary_key: [Id Col]\n"
        "    target: 'raw.\"odd name\"'\n"
        "    checks: [{not_null: id}]\n"
        "    sensitive: [email]\n"
    )
    (spec,) = parse_pipelines(text).tables
    assert spec.source == TableRef("My.Schema", 'Odd "Name"')
    assert spec.target == TableRef("raw", "odd name")
    assert spec.load == "upsert" and spec.primary_key == ("Id Col",)
    assert spec.checks == ({"not_null": "id"},) and spec.sensitive == ("email",)


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_pipelines(text, "f.yaml")
    return str(info.value)


BASE = "tables:\n  - name: shop.orders\n"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # unknown key
        ("    extract: full\n    primry_key: [id]\n",
         ["f.yaml", "shop.orders", "line 2", "'primry_key'", "unknown key", "primary_key"]),
        # unknown modes
        ("    extract: fulll\n", ["'extract'", "unknown mode 'fulll'", "full, incremental, cdc, chunked"]),
        ("    extract: full\n    load: merge\n",
         ["'load'", "unknown mode 'merge'", "insert, upsert, truncate_insert, swap"]),
        # missing required keys
        ("    load: upsert\n", ["'extract'", "missing", "full, incremental, cdc, chunked"]),
        ("    extract: incremental\n    cursor: updated_at\n",
         ["'primary_key'", "missing", "extract: incremental"]),
        ("    extract: incremental\n    primary_key: [id]\n", ["'cursor'", "missing", "incremental"]),
        ("    extract: full\n    load: upsert\n", ["'primary_key'", "load: upsert"]),
        ("    extract: chunked\n", ["'primary_key'", "extract: chunked"]),
        # combinations that cannot work
        ("    extract: incremental\n    primary_key: [id]\n    cursor: u\n    load: swap\n",
         ["'load'", "incremental cannot use load: swap", "upsert"]),
        ("    extract: full\n    cursor: updated_at\n", ["'cursor'", "only extract: incremental"]),
        ("    extract: full\n    lag: 5\n", ["'lag'", "only extract: incremental"]),
        ("    extract: full\n    cursor_time_zone: UTC\n",
         ["line 2", "'cursor_time_zone'", "only extract: incremental"]),
        ("    extract: full\n    late_commits: ignore\n", ["'late_commits'", "only extract: incremental"]),
        ("    extract: incremental\n    primary_key: [id]\n    cursor: u\n    cursor_time_zone: Mars/Base\n",
         ["'cursor_time_zone'", "unknown time zone 'Mars/Base'", "America/Los_Angeles"]),
        ("    extract: incremental\n    primary_key: [id]\n    cursor: u\n    cursor_time_zone: [UTC]\n",
         ["'cursor_time_zone'", "must be a time zone name"]),
        ("    extract: incremental\n    primary_key: [id]\n    cursor: u\n    late_commits: skip\n",
         ["'late_commits'", "'skip'", "wait, ignore"]),
        # bad values
        ("    extract: chunked\n    primary_key: [id]\n    chunk_size: 0\n", ["'chunk_size'", ">= 1"]),
        ("    extract: full\n    primary_key: id, x\n    load: upsert\n    fast_path: yes please\n",
         ["'fast_path'", "true or false"]),
        ("    extract: full\n    target: etl.orders\n", ["'target'", "schema etl"]),
        # cdc needs a key and applies changes, so only load: upsert
        ("    extract: cdc\n", ["'primary_key'", "extract: cdc"]),
        ("    extract: cdc\n    primary_key: [id]\n    load: swap\n",
         ["'load'", "cdc cannot use load: swap"]),
        # automation and freshness (etl_assets.automation.triggers)
        ("    extract: full\n    automation: {interval: 30s}\n",
         ["'automation'", "line 2", "needs extract: incremental or cdc", "cron"]),
        ("    extract: cdc\n    primary_key: [id]\n    automation: {interval: soon}\n",
         ["'automation'", "interval must be a duration", "30s, 5m"]),
        ("    extract: cdc\n    primary_key: [id]\n    automation: {interval: 1s}\n",
         ["'automation'", "at least 5s"]),
        ("    extract: full\n    automation: {cron: \"every day\"}\n",
         ["'automation'", "five-field cron", "'every day'"]),
        ("    extract: full\n    automation: {cron: \"61 2 * * *\"}\n", ["'automation'", "five-field cron"]),
        ("    extract: full\n    automation: on\n", ["'automation'", "must be off", "True"]),
        ("    extract: full\n    automation: {cron: \"0 2 * * *\", interval: 30s}\n",
         ["'automation'", "exactly one of interval, cron"]),
        ("    extract: full\n    freshness: {warn: 6h, fail: 2h}\n",
         ["'freshness'", "warn (6h) must be shorter than fail (2h)"]),
        ("    extract: full\n    freshness: {warn: 2h}\n", ["'freshness'", "fail required"]),
        ("    extract: full\n    freshness: {fail: 2 weeks}\n", ["'freshness'", "fail must be a duration"]),
        ("    extract: full\n    freshness: {fail: 10s}\n", ["'freshness'", "at least 1m"]),
    ],
)
def test_each_mistake_names_table_key_and_allowed(body: str, expected: list[str]) -> None:
    message = _error(BASE + body)
    for part in expected:
        assert part in message, (part, message)


def test_late_commit_keys_are_kept() -> None:
    (spec,) = parse_pipelines(BASE + "    extract: incremental\n    primary_key: [id]\n    cursor: u\n"
                              "    cursor_time_zone: America/Los_Angeles\n    late_commits: ignore\n").tables
    assert (spec.cursor_time_zone, spec.late_commits) == ("America/Los_Angeles", "ignore")
    (default,) = parse_pipelines(BASE + "    extract: incremental\n    primary_key: [id]\n"
                                 "    cursor: u\n").tables
    assert (default.cursor_time_zone, default.late_commits) == (None, "wait")


def test_name_must_be_schema_qualified() -> None:
    message = _error("tables:\n  - name: orders\n    extract: full\n")
    assert "'name'" in message and "schema" in message


def test_name_and_parts_are_exclusive_and_parts_go_together() -> None:
    assert "not both" in _error("tables:\n  - name: a.b\n    schema: a\n    table: b\n    extract: full\n")
    assert "'table'" in _error("tables:\n  - schema: a\n    extract: full\n")


def test_two_tables_with_one_target() -> None:
    message = _error(
        "tables:\n"
        "  - name: shop.orders\n    extract: full\n"
        "  - name: archive.orders\n    extract: full\n"
    )
    assert "shop.orders (line 2)" in message and "archive.orders (line 4)" in message
    assert "raw.orders" in message and "'target'" in message


def test_malformed_yaml_names_the_line() -> None:
    message = _error("tables:\n  - name: shop.orders\n    extract: [full\n  - name: x\n")
    assert "malformed YAML" in message and "line" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty"),
        ("- a\n", "top level must be a mapping"),
        ("tables: 3\n", "'tables' must be a list"),
        ("tables: []\nextras: 1\n", "unknown top-level key(s) extras"),
        ("tables:\n  - just text\n", "table #1 (line 2) must be a mapping"),
    ],
)
def test_file_shape_errors(text: str, expected: str) -> None:
    assert expected in _error(text)


def test_missing_file_says_which_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ETL_PIPELINES"):
        load_pipelines(tmp_path / "nope.yaml")


ONE = "tables:\n  - name: app.{name}\n    extract: full\n"


def test_a_folder_of_files_is_merged_in_name_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "b.yaml").write_text(ONE.format(name="invoices"))
    (folder / "a.yml").write_text(ONE.format(name="users"))
    (folder / "notes.txt").write_text("not a declaration")
    monkeypatch.setenv("ETL_PIPELINES", str(folder))
    config = load_pipelines()
    assert [str(t.source) for t in config.tables] == ["app.users", "app.invoices"]
    assert [Path(t.origin).name for t in config.tables] == ["a.yml", "b.yaml"]


def test_one_target_in_two_files_names_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.yaml").write_text(ONE.format(name="users"))
    (tmp_path / "b.yaml").write_text(ONE.format(name="users"))
    monkeypatch.setenv("ETL_PIPELINES", str(tmp_path))
    with pytest.raises(ConfigError) as info:
        load_pipelines()
    message = str(info.value)
    assert "a.yaml" in message and "b.yaml" in message and "raw.users" in message


def test_pyproject_setting_is_read_relative_to_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.etl-assets]\npipelines = ["tables/", "demo"]\n')
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "mine.yaml").write_text(ONE.format(name="users"))
    work = tmp_path / "sub" / "folder"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)  # found from a subfolder too, like git finds its repository
    monkeypatch.delenv("ETL_PIPELINES", raising=False)
    sources = [str(t.source) for t in load_pipelines().tables]
    assert sources == ["app.users", "shop.customers", "shop.categories", "shop.orders"]


def test_the_environment_wins_over_the_project_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.etl-assets]\npipelines = "tables.yaml"\n')
    (tmp_path / "tables.yaml").write_text(ONE.format(name="users"))
    other = tmp_path / "other.yaml"
    other.write_text(ONE.format(name="invoices"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ETL_PIPELINES", raising=False)
    assert [str(t.source) for t in load_pipelines().tables] == ["app.users"]
    monkeypatch.setenv("ETL_PIPELINES", str(other))
    assert [str(t.source) for t in load_pipelines().tables] == ["app.invoices"]


def test_without_any_setting_the_shipped_demo_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ETL_PIPELINES", raising=False)
    assert [t.target.name for t in load_pipelines().tables] == ["customers", "categories", "orders"]


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ('pipelines = 3', "must be a path or a list of paths"),
        ('pipelines = ["missing.yaml"]', "missing.yaml does not exist"),
        ('pipelines = ["empty/"]', "holds no .yaml file"),
    ],
)
def test_bad_project_settings_say_what_to_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str, expected: str
) -> None:
    (tmp_path / "pyproject.toml").write_text(f"[tool.etl-assets]\n{setting}\n")
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ETL_PIPELINES", raising=False)
    with pytest.raises(ConfigError) as info:
        load_pipelines()
    assert expected in str(info.value)
    assert "pyproject.toml" in str(info.value)


def _one(body: str):
    return parse_pipelines(BASE + body, "f.yaml").tables[0]


def test_automation_defaults_per_mode_and_derived_freshness() -> None:
    inc = _one("    extract: incremental\n    primary_key: [id]\n    cursor: u\n")
    assert (inc.trigger.kind, inc.trigger.interval, inc.trigger.label) == ("sensor", 30.0, "every_30s")
    assert inc.automation is None and inc.freshness is None
    assert (inc.freshness_windows.warn, inc.freshness_windows.fail) == (300.0, 900.0)
    full = _one("    extract: full\n")
    assert (full.trigger.kind, full.trigger.cron) == ("schedule", "0 2 * * *")
    assert full.trigger.label == "daily_0200"
    # daily: WARN one day plus an hour after the last run, FAIL two days plus an hour
    assert (full.freshness_windows.warn, full.freshness_windows.fail) == (25 * 3600.0, 49 * 3600.0)
    chunked = _one("    extract: chunked\n    primary_key: [id]\n")
    assert chunked.trigger.cron == "0 2 * * *"
    cdc = _one("    extract: cdc\n    primary_key: [id]\n")
    assert cdc.trigger.interval == 30.0


def test_automation_and_freshness_keys_are_read() -> None:
    spec = _one("    extract: cdc\n    primary_key: [id]\n    automation: {interval: 2m}\n"
                "    freshness: {warn: 2h, fail: 6h}\n")
    assert (spec.trigger.kind, spec.trigger.interval, spec.trigger.label) == ("sensor", 120.0, "every_2m")
    assert (spec.freshness_windows.warn, spec.freshness_windows.fail) == (7200.0, 21600.0)
    hourly = _one("    extract: full\n    automation: {cron: \"15  * * * *\"}\n")
    assert (hourly.trigger.cron, hourly.trigger.label) == ("15 * * * *", "hourly_at_15")
    assert hourly.freshness_windows.warn == 2 * 3600.0
    weekly = _one("    extract: full\n    automation: {cron: \"0 3 * * 1\"}\n")
    assert weekly.trigger.label == "cron_0_3_1"
    for off in ("off", "'off'", "false"):
        spec = _one(f"    extract: incremental\n    primary_key: [id]\n    cursor: u\n"
                    f"    automation: {off}\n")
        assert spec.trigger.kind == "off" and spec.freshness_windows is None, off
    # freshness alone on a table whose trigger is off
    spec = _one("    extract: full\n    automation: off\n    freshness: {fail: 1d}\n")
    assert spec.freshness_windows.fail == 86400.0 and spec.freshness_windows.warn is None


def test_a_table_error_points_at_the_offending_keys_line() -> None:
    text = BASE + "    extract: incremental\n    primary_key: [id]\n    cursor: updated_at\n    lag: -5\n"
    message = _error(text)
    assert message.startswith("f.yaml: table #1 (shop.orders, line 2): key 'lag' (line 6): "), message
    message = _error(BASE + "    extract: full\n\n\n    primry_key: [id]\n")
    assert "key 'primry_key' (line 6): unknown key" in message


def test_check_errors_give_the_file_and_line_like_table_errors() -> None:
    """The data-quality module validates ``checks:`` later (when the Definitions load); its messages
    still name the file, the table and the check's (or the offending key's) line."""
    from etl_assets.quality.defs import declared_rule_sets

    text = (BASE + "    extract: full\n    checks:\n"
            "      - {name: ok, kind: not_null, column: id}\n"
            "      - name: bad\n"
            "        kind: not_null\n"
            "        colour: red\n")
    config = parse_pipelines(text, "f.yaml")
    assert config.tables[0].check_lines[1].line == 6
    with pytest.raises(ConfigError) as info:
        declared_rule_sets(config)
    assert str(info.value).startswith(
        "f.yaml: table shop.orders, check 'bad' (line 8): unknown key 'colour' for kind not_null"
    ), info.value
    missing = parse_pipelines(BASE + "    extract: full\n    checks:\n      - {kind: not_null}\n", "f.yaml")
    expected = r"^f\.yaml: table shop\.orders, check #1 \(line 5\): missing required key 'name'"
    with pytest.raises(ConfigError, match=expected):
        declared_rule_sets(missing)
    sensitive = parse_pipelines(BASE + "    extract: full\n    sensitive: [email]\n", "f.yaml")
    assert sensitive.tables[0].key_lines["sensitive"] == 4
