"""The tables declaration (YAML): which source tables are extracted, how, and into which target.

The keys are a public contract (users' files must keep working as the project grows)::

    sources:                     # optional: named source databases (default: the one in ETL_SOURCE_DSN)
      crm: {dsn_env: CRM_DSN, max_concurrent: 3}   # max_concurrent: extracts at once (default 2)
    tables:
      - name: shop.orders        # or schema: + table: for names containing dots or quotes
        extract: incremental     # full | incremental | cdc | chunked
        primary_key: [id]        # required for incremental, cdc, chunked and for load: upsert
        cursor: updated_at       # incremental only
        load: upsert             # insert | upsert | truncate_insert | swap
        target: raw.orders       # optional; default raw.<table>
        chunk_size: 50000        # optional
        lag: 0                   # optional, incremental only: extra look-back in cursor units
        cursor_time_zone: UTC    # incremental, timestamp/date cursors: the zone writers stamp in
        late_commits: wait       # optional, incremental only: wait | ignore (docs/late-commits.md)
        fast_path: true          # optional (default): COPY-to-COPY; false: through polars frames
        sensitive: [email]       # optional: stored for masking (data-quality)
        checks: [...]            # optional: stored raw, parsed by the data-quality module
        deletes: delete          # optional, incremental / chunked upsert: delete | flag | off (see
                                 # docs/operations-daemon.md, "Delete detection")
        automation: {interval: 30s}  # optional: {interval: ...} (incremental, cdc; default 30s),
                                 # {cron: "0 2 * * *"} (default for full, chunked; UTC) or off
        freshness: {warn: 2h, fail: 6h}  # optional; default derived from automation
        source: crm              # optional: a name under sources: (default: the source in ETL_SOURCE_DSN)

The whole file is validated when the Definitions load, so a mistake stops ``dagster dev`` and
``etl-assets`` with one message naming the file, the table (and its line), the key and what is
allowed, instead of failing later inside a run.
"""

from __future__ import annotations

import functools
import math
import os
import re
import zoneinfo
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
from etl_assets.settings import PIPELINES_VAR, SOURCE_DSN_VAR

# libyaml's safe loader when PyYAML was built with it (the wheels are): the same documents, ~10x faster.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

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
    "chunk_size", "lag", "fast_path", "checks", "sensitive", "cursor_time_zone", "late_commits", "deletes",
    "automation", "freshness", "source",
)
LATE_COMMITS: tuple[str, ...] = ("wait", "ignore")
# A ``lag`` this long covers any difference between two time zones' clocks (UTC-12 .. UTC+14), so a
# ``timestamp``/``date`` cursor needs no ``cursor_time_zone`` with it (docs/late-commits.md).
ANY_ZONE_LAG_SECONDS = 26 * 3600
DELETE_MODES: tuple[str, ...] = ("delete", "flag", "off")
TOP_LEVEL_KEYS: tuple[str, ...] = ("tables", "sources")
SOURCE_KEYS: tuple[str, ...] = ("dsn_env", "max_concurrent")
DEFAULT_MAX_CONCURRENT = 2
DEFAULT_SOURCE_ENV = SOURCE_DSN_VAR  # tables naming no source read the database in this variable
_SOURCE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class SourceSpec:
    """A named source database (``sources:``): where its DSN comes from and how many extracts may read
    it at once (``etl_assets.extract.sourcecap``). Its name is used in resource keys
    (``source__<name>``) and Celery queues (``source-<name>``), hence letters, digits and ``_`` only."""

    name: str
    dsn_env: str
    max_concurrent: int = DEFAULT_MAX_CONCURRENT
    line: int | None = field(default=None, compare=False)
    origin: str | None = field(default=None, compare=False)
SHIPPED_DEMO = "demo.yaml"


@dataclass(frozen=True)
class KeyLines:
    """Where a YAML mapping starts and where each of its keys is written (1-based lines)."""

    line: int | None = None
    keys: dict[str, int] = field(default_factory=dict, hash=False, compare=False)

    def of(self, key: str) -> int | None:
        """The line of ``key``, else the mapping's own line."""
        return self.keys.get(key, self.line)


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
    cursor_time_zone: str | None = None
    late_commits: str = "wait"
    fast_path: bool = True  # COPY to COPY; False: the frame path (docs/tables.md)
    sensitive: tuple[str, ...] = ()
    checks: tuple[Any, ...] = field(default=(), hash=False, compare=False)
    deletes: str = "off"  # delete detection (etl_assets.housekeeping.deletes): delete | flag | off
    line: int | None = field(default=None, compare=False)
    origin: str | None = field(default=None, compare=False)  # the file that declares it
    # Where each key is written (1-based lines), so later validation (the data-quality module's
    # ``checks:`` parser) can point at the line too: the table's keys, and per check its own line
    # and its keys' lines.
    key_lines: dict[str, int] = field(default_factory=dict, hash=False, compare=False)
    check_lines: tuple[KeyLines, ...] = field(default=(), hash=False, compare=False)
    automation: Trigger | None = None  # None: the extract mode's default (see .trigger)
    freshness: Freshness | None = None  # None: derived from the trigger
    # The named source it is read from (``source:``; ``sources:`` declares it); None: the database
    # in ETL_SOURCE_DSN. (Not ``source``: that field is the source table.)
    source_name: str | None = None

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
    sources: tuple[SourceSpec, ...] = ()

    def source_named(self, name: str | None) -> SourceSpec | None:
        """The declared source ``name`` (None for the default source, or when not declared)."""
        return next((s for s in self.sources if s.name == name), None) if name else None

    def by_target(self, target: TableRef | str) -> TableSpec | None:
        ref = TableRef.parse(target) if isinstance(target, str) else target
        return next((t for t in self.tables if t.target == ref), None)

    def by_source(self, source: TableRef | str) -> list[TableSpec]:
        ref = TableRef.parse(source) if isinstance(source, str) else source
        return [t for t in self.tables if t.source == ref]


DEMO_TOKEN = "demo"
"""In a list of tables paths, the shipped demo declaration (so a project can keep it beside its own)."""


def shipped_demo_path() -> Path:
    return Path(str(resources.files("etl_assets.pipelines").joinpath(SHIPPED_DEMO)))


def project_setting(start: Path | None = None) -> tuple[Path, list[str]] | None:
    """``[tool.etl-assets] pipelines`` of the nearest ``pyproject.toml`` from ``start`` (the current
    folder) upwards: its path and the entries it lists (a string or a list of strings)."""
    import tomllib

    folder = (start or Path.cwd()).resolve()
    for candidate in (folder, *folder.parents):
        file = candidate / "pyproject.toml"
        if not file.is_file():
            continue
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{file}: cannot read it as TOML ({exc}); fix the file.") from None
        setting = data.get("tool", {}).get("etl-assets", {}).get("pipelines")
        if setting is None:
            return None
        entries = [setting] if isinstance(setting, str) else setting
        if not isinstance(entries, list) or not entries or not all(isinstance(e, str) for e in entries):
            raise ConfigError(
                f"{file}: [tool.etl-assets] pipelines must be a path or a list of paths "
                "(YAML files or folders of them)."
            )
        return file, entries
    return None


def pipelines_paths() -> list[Path]:
    """The tables declaration files, by one order of precedence: ``etl-assets --pipelines`` (which sets
    ``ETL_PIPELINES``), then ``ETL_PIPELINES`` (paths separated by ``os.pathsep``), then
    ``[tool.etl-assets] pipelines`` in the project's ``pyproject.toml``, then the shipped demo.
    A folder stands for its ``*.yaml``/``*.yml`` files in name order; ``demo`` for the shipped demo."""
    raw = os.environ.get(PIPELINES_VAR)
    if raw:
        base, entries, named_by = Path.cwd(), [e for e in raw.split(os.pathsep) if e.strip()], PIPELINES_VAR
    else:
        setting = project_setting()
        if setting is None:
            return [shipped_demo_path()]
        file, entries = setting
        base, named_by = file.parent, f"[tool.etl-assets] pipelines in {file}"
    files: list[Path] = []
    for entry in entries:
        if entry.strip() == DEMO_TOKEN:
            files.append(shipped_demo_path())
            continue
        path = (base / Path(entry.strip()).expanduser()).resolve()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
            if not found:
                raise ConfigError(
                    f"The tables folder {path} (named by {named_by}) holds no .yaml file; "
                    "add your table declarations there or name another path."
                )
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise ConfigError(
                f"The tables declaration {path} does not exist (named by {named_by}); "
                "correct the path, or unset it to use the shipped demo declaration."
            )
    return files


def pipelines_path() -> Path:
    """The first declaration file (see :func:`pipelines_paths`)."""
    return pipelines_paths()[0]


def load_pipelines(path: str | os.PathLike[str] | None = None) -> PipelineConfig:
    """Read and validate the declaration (``path``, else every file of :func:`pipelines_paths`,
    merged: one target may be declared once across all of them)."""
    files = [Path(path)] if path is not None else pipelines_paths()
    if len(files) == 1:
        return _load_file(files[0])
    configs = [_load_file(file, resolve=False) for file in files]
    sources = _merge_sources(configs)
    seen: dict[TableRef, tuple[str, TableSpec]] = {}
    for config in configs:
        for spec in config.tables:
            if spec.target in seen:
                other_file, other = seen[spec.target]
                raise ConfigError(
                    f"{config.path}: table {spec.label} (line {spec.line}) has target {spec.target}, "
                    f"already declared by {other.label} in {other_file} (line {other.line}); "
                    "key 'target' must differ across files (each target is one asset)."
                )
            seen[spec.target] = (config.path, spec)
    tables = resolve_sources([spec for c in configs for spec in c.tables], sources)
    return PipelineConfig(path=", ".join(c.path for c in configs), tables=tables, sources=sources)


def _merge_sources(configs: list[PipelineConfig]) -> tuple[SourceSpec, ...]:
    """Every file's ``sources:``; a name declared in two files must be declared alike."""
    merged: dict[str, SourceSpec] = {}
    for config in configs:
        for src in config.sources:
            other = merged.get(src.name)
            if other is not None and other != src:
                raise ConfigError(
                    f"{src.origin}: source {src.name} (line {src.line}) differs from its declaration in "
                    f"{other.origin} (line {other.line}); declare a source once, or alike in every file."
                )
            merged.setdefault(src.name, src)
    _distinct_variables(tuple(merged.values()))
    return tuple(merged.values())


def _load_file(file: Path, *, resolve: bool = True) -> PipelineConfig:
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"The tables declaration {file} does not exist (set by {PIPELINES_VAR} or --pipelines); "
            "correct the path or unset it to use the shipped demo declaration."
        ) from None
    except OSError as exc:
        raise ConfigError(f"Cannot read the tables declaration {file}: {exc.strerror}.") from None
    return parse_pipelines(text, str(file), resolve=resolve)


@functools.lru_cache(maxsize=32)
def parse_pipelines(text: str, origin: str = "<pipelines>", *, resolve: bool = True) -> PipelineConfig:
    """Validate the YAML ``text``; ``origin`` names it in messages (always one line).

    ``resolve=False`` leaves the tables' ``source:`` names unchecked (a file read with others, whose
    ``sources:`` may declare them): :func:`load_pipelines` checks them once all are read.

    Cached by text: building the Definitions asks for the declaration from several domains, and a
    run's process must not parse the same file again each time (the result is immutable)."""
    try:
        config = _parse_pipelines(text, origin)
        if resolve:
            config = PipelineConfig(config.path, resolve_sources(config.tables, config.sources),
                                    config.sources)
        return config
    except ConfigError as exc:
        message = str(exc)
        if message.isprintable():
            raise
        raise ConfigError(_printable(message)) from None


def _parse_pipelines(text: str, origin: str) -> PipelineConfig:
    try:
        root = yaml.compose(text, Loader=_LOADER)
        data = yaml.load(text, Loader=_LOADER)  # a safe loader
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
    sources = _parse_sources(data.get("sources"), root, origin) if "sources" in data else ()
    tables = data.get("tables")
    if not isinstance(tables, list):
        raise ConfigError(f"{origin}: 'tables' must be a list of table declarations (got {_kind(tables)}).")
    nodes = _item_nodes(root)
    specs: list[TableSpec] = []
    for index, item in enumerate(tables):
        node = nodes[index] if index < len(nodes) else None
        specs.append(_parse_table(item, index, node, origin))
    by_target: dict[TableRef, TableSpec] = {}
    for spec in specs:
        other = by_target.get(spec.target)
        if other is not None:
            raise ConfigError(
                f"{origin}: tables {other.label} (line {other.line}) and {spec.label} (line {spec.line}) "
                f"both have target {spec.target}; key 'target' must differ (each target is one asset)."
            )
        by_target[spec.target] = spec
    return PipelineConfig(path=origin, tables=tuple(specs), sources=sources)


def _parse_sources(raw: object, root: yaml.Node | None, origin: str) -> tuple[SourceSpec, ...]:
    """``sources: {name: {dsn_env: VAR, max_concurrent: N}}``, each checked with its line."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: 'sources' must be a mapping of names to {{dsn_env: VARIABLE}} "
                          f"(got {_kind(raw)}), e.g. sources: {{crm: {{dsn_env: CRM_DSN}}}}.")
    lines = _mapping_lines(root, "sources")
    out: list[SourceSpec] = []
    for name, body in raw.items():
        line = lines.get(str(name))
        where = f"{origin}: source {_printable(str(name))}" + (f" (line {line})" if line else "")
        if not isinstance(name, str) or not _SOURCE_NAME.fullmatch(name):
            raise ConfigError(f"{where}: a source name is letters, digits and _ (at most 40, not starting "
                              "with a digit); it names a resource key and a Celery queue. Rename it.")
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: must be a mapping such as {{dsn_env: CRM_DSN}} (got {_kind(body)}).")
        unknown = [str(k) for k in body if k not in SOURCE_KEYS]
        if unknown:
            raise ConfigError(f"{where}: unknown key '{unknown[0]}'; allowed: {', '.join(SOURCE_KEYS)}.")
        env = body.get("dsn_env")
        if not isinstance(env, str) or not _ENV_NAME.fullmatch(env):
            raise ConfigError(f"{where}: key 'dsn_env' must name the environment variable holding its "
                              f"connection string, e.g. dsn_env: CRM_DSN (got {_kind(env)}).")
        cap = body.get("max_concurrent", DEFAULT_MAX_CONCURRENT)
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise ConfigError(f"{where}: key 'max_concurrent' must be a whole number >= 1 (extracts "
                              f"reading this source at once), got {cap!r}.")
        out.append(SourceSpec(name, env, cap, line, origin))
    _distinct_variables(tuple(out))
    return tuple(out)


def _distinct_variables(sources: tuple[SourceSpec, ...]) -> None:
    """Two names for one variable would split its cap in two: refused."""
    seen: dict[str, SourceSpec] = {}
    for src in sources:
        other = seen.setdefault(src.dsn_env, src)
        if other is not src:
            raise ConfigError(
                f"{src.origin}: sources {other.name} (line {other.line}) and {src.name} (line {src.line}) "
                f"both read {src.dsn_env}; one name per database: remove one of them."
            )


def resolve_sources(specs: list[TableSpec] | tuple[TableSpec, ...], sources: tuple[SourceSpec, ...]
                    ) -> tuple[TableSpec, ...]:
    """Check each table's ``source:`` against ``sources``; a table naming none reads the default
    source, which is the declared one whose ``dsn_env`` is ETL_SOURCE_DSN when there is one (so its
    cap and queue apply to every table reading that database)."""
    import dataclasses

    names = {s.name for s in sources}
    default = next((s.name for s in sources if s.dsn_env == DEFAULT_SOURCE_ENV), None)
    out = []
    for spec in specs:
        if spec.source_name is None:
            out.append(dataclasses.replace(spec, source_name=default) if default else spec)
            continue
        if spec.source_name not in names:
            known = ", ".join(sorted(names)) if names else "none (the file has no sources: key)"
            raise ConfigError(
                f"{spec.origin}: table {spec.label}{f' (line {spec.line})' if spec.line else ''}: key "
                f"'source': unknown source {spec.source_name!r}; declared sources: {known}. Declare it "
                "under sources: (e.g. sources: {" + spec.source_name + ": {dsn_env: VARIABLE}}) or "
                "correct the name."
            )
        out.append(spec)
    return tuple(out)


def _mapping_lines(root: yaml.Node | None, key_name: str) -> dict[str, int]:
    """1-based line of each key of the top-level mapping ``key_name``, for messages."""
    if not isinstance(root, yaml.MappingNode):
        return {}
    for key, value in root.value:
        if isinstance(key, yaml.ScalarNode) and key.value == key_name and isinstance(value, yaml.MappingNode):
            return {k.value: k.start_mark.line + 1 for k, _v in value.value if isinstance(k, yaml.ScalarNode)}
    return {}


def _item_nodes(root: yaml.Node | None) -> list[yaml.Node]:
    """The YAML nodes of the ``tables`` list's items (their lines go into messages)."""
    if not isinstance(root, yaml.MappingNode):
        return []
    for key, value in root.value:
        is_tables = isinstance(key, yaml.ScalarNode) and key.value == "tables"
        if is_tables and isinstance(value, yaml.SequenceNode):
            return list(value.value)
    return []


def key_lines(node: yaml.Node | None) -> KeyLines:
    """Where ``node`` starts and, for a mapping, the line of each of its (text) keys."""
    if node is None:
        return KeyLines()
    keys: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode):
                keys.setdefault(str(key.value), key.start_mark.line + 1)
    return KeyLines(node.start_mark.line + 1, keys)


def _check_lines(node: yaml.Node | None) -> tuple[KeyLines, ...]:
    """:class:`KeyLines` of each item of a table node's ``checks:`` list."""
    if not isinstance(node, yaml.MappingNode):
        return ()
    for key, value in node.value:
        is_checks = isinstance(key, yaml.ScalarNode) and key.value == "checks"
        if is_checks and isinstance(value, yaml.SequenceNode):
            return tuple(key_lines(item) for item in value.value)
    return ()


def _printable(text: str) -> str:
    """``text`` with control characters (a newline in a quoted name) escaped: messages stay one line."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "text", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


class _Table:
    """Collects one table's messages with a consistent prefix."""

    def __init__(self, origin: str, index: int, lines: KeyLines, item: dict[str, Any]) -> None:
        self.item = item
        self.lines = lines
        name = item.get("name") or ".".join(str(item.get(k, "?")) for k in ("schema", "table"))
        where = f", line {lines.line}" if lines.line else ""
        self.prefix = f"{origin}: table #{index + 1} ({_printable(str(name))}{where})"

    def error(self, key: str, message: str) -> ConfigError:
        """The message names the offending key and the line it is written on."""
        line = self.lines.keys.get(key)
        where = f" (line {line})" if line is not None and line != self.lines.line else ""
        return ConfigError(f"{self.prefix}: key '{key}'{where}: {message}")


def _parse_table(item: object, index: int, node: yaml.Node | None, origin: str) -> TableSpec:
    lines = key_lines(node)
    line = lines.line
    if not isinstance(item, dict):
        where = f" (line {line})" if line else ""
        raise ConfigError(
            f"{origin}: table #{index + 1}{where} must be a mapping with keys such as name, extract, "
            f"primary_key (got {_kind(item)})."
        )
    t = _Table(origin, index, lines, item)
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
        if isinstance(lag, bool) or not isinstance(lag, int | float) or not math.isfinite(lag) or lag < 0:
            raise t.error("lag", f"must be a number >= 0 (seconds for a timestamp cursor, units for a "
                          f"numeric one), got {lag!r}.")
    cursor_time_zone = _time_zone(t, extract)
    late_commits = _choice(t, "late_commits", LATE_COMMITS, required=False) or "wait"
    if "late_commits" in item and extract != "incremental":
        raise t.error("late_commits", f"only extract: incremental uses late_commits (this table has extract: "
                      f"{extract}).")
    fast_path = item.get("fast_path", True)
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
    deletes = _deletes(t, extract, load)
    source_name = _source_name(t)
    return TableSpec(
        source=source, extract=extract, load=load, target=target, primary_key=primary_key,
        cursor=cursor, chunk_size=chunk_size, lag=float(lag), cursor_time_zone=cursor_time_zone,
        late_commits=late_commits, fast_path=fast_path, sensitive=sensitive, checks=tuple(checks),
        deletes=deletes, line=line, origin=origin, automation=automation, freshness=freshness,
        key_lines=dict(lines.keys), check_lines=_check_lines(node), source_name=source_name,
    )


def _source_name(t: _Table) -> str | None:
    """``source:``: the name of a declared source (checked against ``sources:`` by
    :func:`resolve_sources`); absent or null: the default source."""
    value = t.item.get("source")
    if value is None:
        return None
    if not isinstance(value, str) or not _SOURCE_NAME.fullmatch(value):
        raise t.error("source", f"must be the name of a source declared under sources: (letters, digits, "
                      f"_), got {_kind(value) if not isinstance(value, str) else repr(value)}.")
    return value


def _time_zone(t: _Table, extract: str) -> str | None:
    """``cursor_time_zone``: an IANA zone name (checked against the system's zone database, the
    same names PostgreSQL knows), for incremental extracts only."""
    if "cursor_time_zone" not in t.item:
        return None
    value = t.item["cursor_time_zone"]
    if extract != "incremental":
        raise t.error("cursor_time_zone", "only extract: incremental uses cursor_time_zone (this table has "
                      f"extract: {extract}).")
    if not isinstance(value, str) or not value.strip():
        raise t.error("cursor_time_zone", f"must be a time zone name such as UTC or America/Los_Angeles, "
                      f"got {_kind(value)}.")
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise t.error("cursor_time_zone", f"unknown time zone {value!r}; use an IANA name such as UTC or "
                      "America/Los_Angeles (the zone the writers' sessions stamp the cursor in).") from None
    return value


def _deletes(t: _Table, extract: str, load: str) -> str:
    """``deletes:``: what the delete-detection job does with keys gone from the source. Only the
    modes that cannot see deletes themselves take it (incremental; chunked with load: upsert), and
    for them it defaults to ``delete``, so the warehouse ends equal to the source."""
    blind = extract == "incremental" or (extract == "chunked" and load == "upsert")
    if "deletes" not in t.item:
        return "delete" if blind else "off"
    value = t.item["deletes"]
    if value is False:  # YAML reads a bare `off` as false
        value = "off"
    if value not in DELETE_MODES:
        raise t.error("deletes", f"unknown mode {value!r}; allowed: {', '.join(DELETE_MODES)}.")
    if value != "off" and not blind:
        why = ("cdc applies deletes itself" if extract == "cdc"
               else f"extract: {extract} with load: {load} reloads the whole table, so deletes reach it")
        raise t.error("deletes", f"only extract: incremental and chunked with load: upsert use delete "
                      f"detection ({why}); remove the key or set it to off.")
    return value


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
