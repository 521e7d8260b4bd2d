"""The tables declaration (YAML): which source tables are extracted, how, and into which target.

The keys are a public contract (users' files must keep working as the project grows)::

    tables:
      - name: shop.orders        # or schema: + table: for names containing dots or quotes
        extract: incremental     # full | incremental | cdc | chunked
        primary_key: [id]        # required for incremental, cdc, chunked and for load: upsert
        cursor: updated_at       # incremental only
        load: upsert             # insert | upsert | truncate_insert | swap
        target: raw.orders       # optional; default raw.<table>
        chunk_size: 50000        # optional
        lag: 0                   # optional, incremental only: extra look-back in cursor units
        fast_path: false         # optional: COPY-to-COPY, no frame in Python
        sensitive: [email]       # optional: stored for masking (data-quality)
        checks: [...]            # optional: stored raw, parsed by the data-quality module
        automation: {interval: 30s}  # optional: {interval: ...} (incremental, cdc; default 30s),
                                 # {cron: "0 2 * * *"} (default for full, chunked; UTC) or off
        freshness: {warn: 2h, fail: 6h}  # optional; default derived from automation

The whole file is validated when the Definitions load, so a mistake stops ``dagster dev`` and
``etl-assets`` with one message naming the file, the table (and its line), the key and what is
allowed, instead of failing later inside a run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from etl_assets.automation.triggers import (
    Freshness,
    Trigger,
    TriggerError,
    default_freshness,
    parse_freshness,
    parse_trigger,
)
from etl_assets.errors import ConfigError
from etl_assets.io.tables import TableRef
from etl_assets.settings import PIPELINES_VAR

EXTRACT_MODES: tuple[str, ...] = ("full", "incremental", "cdc", "chunked")
LOAD_MODES: tuple[str, ...] = ("insert", "upsert", "truncate_insert", "swap")

# Extract modes declared in the contract whose implementation has not landed yet, with the reason
# shown to the user. (Empty: cdc is implemented in etl_assets/cdc.)
UNAVAILABLE_EXTRACTS: dict[str, str] = {}

DEFAULT_LOAD: dict[str, str] = {
    "full": "truncate_insert",
    "incremental": "upsert",
    "chunked": "upsert",
    "cdc": "upsert",
}
DEFAULT_CHUNK_SIZE = 50_000
DEFAULT_TARGET_SCHEMA = "raw"
CONTROL_SCHEMA = "etl"

TABLE_KEYS: tuple[str, ...] = (
    "name", "schema", "table", "extract", "primary_key", "cursor", "load", "target",
    "chunk_size", "lag", "fast_path", "checks", "sensitive", "automation", "freshness",
)
TOP_LEVEL_KEYS: tuple[str, ...] = ("tables",)
SHIPPED_DEMO = "demo.yaml"


@dataclass(frozen=True)
class TableSpec:
    """One declared table, validated. ``checks`` and ``sensitive`` are kept as written for the
    data-quality module, which owns their format."""

    source: TableRef
    extract: str
    load: str
    target: TableRef
    primary_key: tuple[str, ...] = ()
    cursor: str | None = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    lag: float = 0
    fast_path: bool = False
    sensitive: tuple[str, ...] = ()
    checks: tuple[Any, ...] = field(default=(), hash=False, compare=False)
    line: int | None = field(default=None, compare=False)
    automation: Trigger | None = None  # None: the extract mode's default (see .trigger)
    freshness: Freshness | None = None  # None: derived from the trigger

    @property
    def trigger(self) -> Trigger:
        """What starts this table's extract (etl_assets.automation): the declared ``automation:``
        or the mode's default (a 30 s sensor for incremental and cdc, daily 02:00 UTC otherwise)."""
        return self.automation or parse_trigger(None, self.extract)

    @property
    def freshness_windows(self) -> Freshness | None:
        """The declared ``freshness:``, else windows derived from the trigger (None when off)."""
        return self.freshness or default_freshness(self.trigger)

    @property
    def asset_key_path(self) -> list[str]:
        """``raw.orders`` -> ``["raw", "orders"]``: the target names the asset, so downstream code
        depends on where the data lands, not on how it is extracted."""
        return [self.target.schema, self.target.name]

    @property
    def label(self) -> str:
        return str(self.source)


@dataclass(frozen=True)
class PipelineConfig:
    """The validated declaration file."""

    path: str
    tables: tuple[TableSpec, ...]

    def by_target(self, target: TableRef | str) -> TableSpec | None:
        ref = TableRef.parse(target) if isinstance(target, str) else target
        return next((t for t in self.tables if t.target == ref), None)

    def by_source(self, source: TableRef | str) -> list[TableSpec]:
        ref = TableRef.parse(source) if isinstance(source, str) else source
        return [t for t in self.tables if t.source == ref]


def pipelines_path() -> Path:
    """``ETL_PIPELINES`` (set by ``etl-assets --pipelines FILE`` too), else the shipped demo file."""
    raw = os.environ.get(PIPELINES_VAR)
    if raw:
        return Path(raw).expanduser().resolve()
    return Path(str(resources.files("etl_assets.pipelines").joinpath(SHIPPED_DEMO)))


def load_pipelines(path: str | os.PathLike[str] | None = None) -> PipelineConfig:
    """Read and validate the declaration file (``path``, else :func:`pipelines_path`)."""
    file = Path(path) if path is not None else pipelines_path()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"The tables declaration {file} does not exist (set by {PIPELINES_VAR} or --pipelines); "
            "correct the path or unset it to use the shipped demo declaration."
        ) from None
    except OSError as exc:
        raise ConfigError(f"Cannot read the tables declaration {file}: {exc.strerror}.") from None
    return parse_pipelines(text, str(file))


def parse_pipelines(text: str, origin: str = "<pipelines>") -> PipelineConfig:
    """Validate the YAML ``text``; ``origin`` names it in messages."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"{origin}: malformed YAML{where}: {problem}. Fix the syntax there.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: malformed YAML: {exc}.") from None
    if data is None:
        raise ConfigError(f"{origin}: the file is empty; it needs a top-level 'tables:' list.")
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping with a 'tables:' list.")
    unknown = sorted(str(k) for k in data if k not in TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(
            f"{origin}: unknown top-level key(s) {', '.join(unknown)}; allowed: {', '.join(TOP_LEVEL_KEYS)}."
        )
    tables = data.get("tables")
    if not isinstance(tables, list):
        raise ConfigError(f"{origin}: 'tables' must be a list of table declarations (got {_kind(tables)}).")
    lines = _item_lines(root)
    specs: list[TableSpec] = []
    for index, item in enumerate(tables):
        line = lines[index] if index < len(lines) else None
        specs.append(_parse_table(item, index, line, origin))
    by_target: dict[TableRef, TableSpec] = {}
    for spec in specs:
        other = by_target.get(spec.target)
        if other is not None:
            raise ConfigError(
                f"{origin}: tables {other.label} (line {other.line}) and {spec.label} (line {spec.line}) "
                f"both have target {spec.target}; key 'target' must differ (each target is one asset)."
            )
        by_target[spec.target] = spec
    return PipelineConfig(path=origin, tables=tuple(specs))


def _item_lines(root: yaml.Node | None) -> list[int]:
    """1-based line of each item of the ``tables`` list, for messages."""
    if not isinstance(root, yaml.MappingNode):
        return []
    for key, value in root.value:
        is_tables = isinstance(key, yaml.ScalarNode) and key.value == "tables"
        if is_tables and isinstance(value, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    return []


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "text", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


class _Table:
    """Collects one table's messages with a consistent prefix."""

    def __init__(self, origin: str, index: int, line: int | None, item: dict[str, Any]) -> None:
        self.item = item
        name = item.get("name") or ".".join(str(item.get(k, "?")) for k in ("schema", "table"))
        where = f", line {line}" if line else ""
        self.prefix = f"{origin}: table #{index + 1} ({name}{where})"

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.prefix}: key '{key}': {message}")


def _parse_table(item: object, index: int, line: int | None, origin: str) -> TableSpec:
    if not isinstance(item, dict):
        where = f" (line {line})" if line else ""
        raise ConfigError(
            f"{origin}: table #{index + 1}{where} must be a mapping with keys such as name, extract, "
            f"primary_key (got {_kind(item)})."
        )
    t = _Table(origin, index, line, item)
    unknown = [str(k) for k in item if k not in TABLE_KEYS]
    if unknown:
        raise t.error(unknown[0], f"unknown key; allowed keys: {', '.join(TABLE_KEYS)}.")

    source = _source(t)
    extract = _choice(t, "extract", EXTRACT_MODES, required=True)
    if extract in UNAVAILABLE_EXTRACTS:
        raise t.error("extract", UNAVAILABLE_EXTRACTS[extract] + ".")
    load = _choice(t, "load", LOAD_MODES, required=False) or DEFAULT_LOAD[extract]
    primary_key = _names(t, "primary_key")
    cursor = _text(t, "cursor")
    sensitive = _names(t, "sensitive")

    needs_key = extract in ("incremental", "cdc", "chunked") or load == "upsert"
    if needs_key and not primary_key:
        why = f"extract: {extract}" if extract != "full" else f"load: {load}"
        raise t.error("primary_key", f"missing; required for {why} (a list of column names, e.g. [id]).")
    if extract == "incremental":
        if cursor is None:
            raise t.error("cursor", "missing; required for extract: incremental (a timestamp or "
                          "ever-increasing column, e.g. updated_at).")
        if load != "upsert":
            raise t.error("load", f"extract: incremental cannot use load: {load}; it re-reads rows at the "
                          "high-water mark and reads only changed rows, so only load: upsert keeps the "
                          "target equal to the source. Use load: upsert, or extract: full for "
                          f"{load}.")
    elif extract == "cdc" and load != "upsert":
        raise t.error("load", f"extract: cdc cannot use load: {load}; it applies changes (inserts, updates, "
                      "deletes) to the rows already in the target, which is load: upsert (the default).")
    if extract != "incremental" and cursor is not None:
        raise t.error("cursor", "only extract: incremental uses a cursor (this table has extract: "
                      f"{extract}); remove it or use extract: incremental.")
    chunk_size = _positive_int(t, "chunk_size", DEFAULT_CHUNK_SIZE)
    lag = item.get("lag", 0)
    if "lag" in item:
        if extract != "incremental":
            raise t.error("lag", f"only extract: incremental uses lag (this table has extract: {extract}).")
        if isinstance(lag, bool) or not isinstance(lag, int | float) or lag < 0:
            raise t.error("lag", f"must be a number >= 0 (seconds for a timestamp cursor, units for a "
                          f"numeric one), got {lag!r}.")
    fast_path = item.get("fast_path", False)
    if not isinstance(fast_path, bool):
        raise t.error("fast_path", f"must be true or false, got {fast_path!r}.")
    checks = item.get("checks", [])
    if checks is None:
        checks = []
    if not isinstance(checks, list):
        raise t.error("checks", f"must be a list of rules, got {_kind(checks)}.")

    automation = None
    if "automation" in item:
        try:
            automation = parse_trigger(item["automation"], extract)
        except TriggerError as exc:
            raise t.error("automation", f"{exc}.") from None
    freshness = None
    if item.get("freshness") is not None:
        try:
            freshness = parse_freshness(item["freshness"])
        except TriggerError as exc:
            raise t.error("freshness", f"{exc}.") from None

    target = _target(t, source)
    return TableSpec(
        source=source, extract=extract, load=load, target=target, primary_key=primary_key,
        cursor=cursor, chunk_size=chunk_size, lag=float(lag), fast_path=fast_path,
        sensitive=sensitive, checks=tuple(checks), line=line, automation=automation, freshness=freshness,
    )


def _source(t: _Table) -> TableRef:
    item = t.item
    has_name = "name" in item
    has_parts = "schema" in item or "table" in item
    if has_name and has_parts:
        raise t.error("name", "give either name: schema.table or schema: and table:, not both.")
    if has_name:
        name = item["name"]
        if not isinstance(name, str) or not name.strip():
            raise t.error("name", f"must be text 'schema.table', got {_kind(name)}.")
        try:
            ref = TableRef.parse(name, default_schema="")
        except ConfigError as exc:
            raise t.error("name", f"{exc} Names containing dots or quotes: use schema: and table:.") from None
        except ValueError:
            raise t.error("name", "must be 'schema.table'.") from None
        return ref
    if not has_parts:
        raise t.error("name", "missing; every table needs name: schema.table (or schema: and table:).")
    schema, table = item.get("schema"), item.get("table")
    for key, value in (("schema", schema), ("table", table)):
        if not isinstance(value, str) or not value:
            raise t.error(key, f"missing or not text; schema: and table: go together (got {_kind(value)}).")
    try:
        return TableRef(schema, table)
    except ConfigError as exc:
        raise t.error("table", str(exc)) from None


def _target(t: _Table, source: TableRef) -> TableRef:
    raw = t.item.get("target")
    if raw is None:
        ref = TableRef(DEFAULT_TARGET_SCHEMA, source.name)
    else:
        if not isinstance(raw, str) or not raw.strip():
            raise t.error("target", f"must be text 'schema.table', got {_kind(raw)}.")
        try:
            ref = TableRef.parse(raw, default_schema=DEFAULT_TARGET_SCHEMA)
        except ConfigError as exc:
            raise t.error("target", str(exc)) from None
    if ref.schema == CONTROL_SCHEMA:
        raise t.error("target", f"schema {CONTROL_SCHEMA} holds the project's own state; "
                      "choose another schema.")
    return ref


def _choice(t: _Table, key: str, allowed: tuple[str, ...], *, required: bool) -> str | None:
    value = t.item.get(key)
    if value is None:
        if required:
            raise t.error(key, f"missing; allowed: {', '.join(allowed)}.")
        return None
    if value not in allowed:
        raise t.error(key, f"unknown mode {value!r}; allowed: {', '.join(allowed)}.")
    return value


def _text(t: _Table, key: str) -> str | None:
    value = t.item.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise t.error(key, f"must be a column name (text), got {_kind(value)}.")
    return value


def _names(t: _Table, key: str) -> tuple[str, ...]:
    value = t.item.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise t.error(key, f"must be a list of column names, e.g. [id], got {value!r}.")
    if len(set(value)) != len(value):
        raise t.error(key, f"lists a column twice: {value!r}.")
    return tuple(value)


def _positive_int(t: _Table, key: str, default: int) -> int:
    value = t.item.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise t.error(key, f"must be a whole number >= 1, got {value!r}.")
    return value
