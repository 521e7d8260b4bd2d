"""The tables YAML fuzzed with Hypothesis: mutations of valid table entries (wrong types, unknown keys,
missing keys, odd names, nested junk) and raw text damage. Every document either loads into a
consistent :class:`PipelineConfig` or raises the module's one-line :class:`ConfigError` naming the
file; never another exception. Mutations that break a key's declared type must be refused."""

from __future__ import annotations

import math
from typing import Any

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from etl_assets.errors import ConfigError
from etl_assets.pipeline_config import (
    DELETE_MODES,
    EXTRACT_MODES,
    LATE_COMMITS,
    LOAD_MODES,
    TABLE_KEYS,
    PipelineConfig,
    parse_pipelines,
)

ORIGIN = "fuzz.yaml"

VALID_ENTRIES: list[dict[str, Any]] = [
    {"name": "shop.orders", "extract": "incremental", "primary_key": ["id"], "cursor": "updated_at",
     "lag": 3600, "load": "upsert", "chunk_size": 50000},
    {"name": "shop.categories", "extract": "full", "load": "truncate_insert", "primary_key": ["id"],
     "checks": [{"name": "has_rows", "kind": "row_count", "min": 1}]},
    {"name": "shop.customers", "extract": "cdc", "primary_key": ["id"], "sensitive": ["email"]},
    {"schema": "My.Schema", "table": 'Odd "Name"', "extract": "chunked", "primary_key": ["Id Col"],
     "target": 'raw."odd name"', "fast_path": True},
    {"name": "app.events", "extract": "full", "load": "swap", "target": "stage.events"},
    {"name": "app.log", "extract": "full", "load": "insert", "fast_path": False, "chunk_size": 1},
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["", " ", ".", "a.b.c", '"x', 'a."b.c"', "raw.\nx", "etl.t", "x" * 70, "shop.orders",
                     *EXTRACT_MODES, *LOAD_MODES, "id", "updated_at", "\x00", "ünï.cødé"]),
)
junk = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers(), st.booleans()), inner, max_size=4),
    ),
    max_leaves=12,
)


def _is_positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _is_names(v: Any) -> bool:
    if v is None or (isinstance(v, str) and v):
        return True
    return isinstance(v, list) and all(isinstance(x, str) and x for x in v) and len(set(v)) == len(v)


# key -> does this value have the declared type? (False means the document must be refused)
TYPE_OK = {
    "name": lambda v: isinstance(v, str) and bool(v.strip()),
    "schema": lambda v: isinstance(v, str) and bool(v),
    "table": lambda v: isinstance(v, str) and bool(v),
    "extract": lambda v: isinstance(v, str) and v in EXTRACT_MODES,
    "load": lambda v: v is None or (isinstance(v, str) and v in LOAD_MODES),
    "primary_key": _is_names,
    "sensitive": _is_names,
    "cursor": lambda v: v is None or (isinstance(v, str) and bool(v)),
    "target": lambda v: v is None or (isinstance(v, str) and bool(v.strip())),
    "chunk_size": _is_positive_int,
    "lag": lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0,
    "fast_path": lambda v: isinstance(v, bool),
    "checks": lambda v: v is None or isinstance(v, list),
    "cursor_time_zone": lambda v: isinstance(v, str) and bool(v.strip()),
    "late_commits": lambda v: v is None or v in LATE_COMMITS,
    "deletes": lambda v: v is False or v in DELETE_MODES,
    # parsed by etl_assets.automation (test_pipeline_config refuses their bad values one by one):
    # any value may load or be refused here, but never with another exception
    "automation": lambda v: True,
    "freshness": lambda v: True,
    # the fuzzed documents declare no sources: any named source is unknown
    "source": lambda v: v is None,
}
assert set(TYPE_OK) == set(TABLE_KEYS), "every table key has its type rule here"


def must_refuse(entry: Any) -> bool:
    """Whether a table entry breaks the declared shape or a key's type (so it can never load)."""
    if not isinstance(entry, dict):
        return True
    if any(key not in TABLE_KEYS for key in entry):
        return True
    if any(not TYPE_OK[key](value) for key, value in entry.items()):
        return True
    has_name, has_parts = "name" in entry, "schema" in entry or "table" in entry
    return has_name == has_parts or "extract" not in entry  # exactly one way to name the table


@st.composite
def mutated_documents(draw: st.DrawFn) -> tuple[Any, bool | None]:
    """A document and whether it must be refused (True: a mutation broke a key's type or the shape),
    must load (False: no mutation at all) or may do either (None: a well-typed mutation)."""
    entries: list[Any] = [
        dict(e) for e in draw(st.lists(st.sampled_from(VALID_ENTRIES), min_size=1, max_size=3,
                                       unique_by=lambda e: repr(e)))
    ]
    mutations = draw(st.integers(min_value=0, max_value=3))
    for _ in range(mutations):
        index = draw(st.integers(min_value=0, max_value=len(entries) - 1))
        entry = entries[index]
        if not isinstance(entry, dict):
            continue
        action = draw(st.sampled_from(["set", "set", "delete", "unknown", "replace_entry"]))
        if action == "set":
            entry[draw(st.sampled_from(TABLE_KEYS))] = draw(junk)
        elif action == "delete" and entry:
            del entry[draw(st.sampled_from(list(entry)))]
        elif action == "unknown":
            key = draw(st.one_of(st.text(min_size=1, max_size=10), st.integers(), st.booleans()))
            entry[key] = draw(junk)
        elif action == "replace_entry":
            entries[index] = draw(st.one_of(scalars, st.lists(junk, max_size=3)))
    must_fail: bool | None = any(must_refuse(e) for e in entries) or (None if mutations else False)
    shape = draw(st.sampled_from(["normal"] * 8 + ["not_a_list", "extra_top_key", "bare_list"]))
    if shape == "not_a_list":
        tables = draw(st.one_of(scalars, st.dictionaries(st.text(max_size=5), junk, max_size=3)))
        return {"tables": tables}, True
    if shape == "extra_top_key":
        extra = draw(st.text(min_size=1, max_size=8).filter(lambda k: k != "tables"))
        return {"tables": entries, extra: 1}, True
    if shape == "bare_list":
        return entries, True
    return {"tables": entries}, must_fail


def _assert_consistent(config: PipelineConfig) -> None:
    for t in config.tables:
        assert t.extract in EXTRACT_MODES and t.load in LOAD_MODES
        assert t.source.schema and t.source.name and t.target.schema and t.target.name
        assert t.target.schema != "etl"
        assert t.chunk_size >= 1 and math.isfinite(t.lag) and t.lag >= 0
        assert isinstance(t.fast_path, bool)
        assert all(isinstance(c, str) and c for c in (*t.primary_key, *t.sensitive))
        if t.extract in ("incremental", "cdc", "chunked") or t.load == "upsert":
            assert t.primary_key
        assert (t.cursor is not None) == (t.extract == "incremental")
    assert len({t.target for t in config.tables}) == len(config.tables)


def _parse(text: str) -> PipelineConfig | ConfigError:
    try:
        return parse_pipelines(text, ORIGIN)
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith(f"{ORIGIN}: "), message
        assert "\n" not in message and "\r" not in message, repr(message)
        assert "Traceback" not in message
        return exc


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


INCREMENTAL = VALID_ENTRIES[0]


@FUZZ
@given(mutated_documents())
@example(({"tables": [{**INCREMENTAL, "lag": math.nan}]}, True))  # found by this test: nan loaded
@example(({"tables": [{**INCREMENTAL, "lag": math.inf}]}, True))
@example(({"tables": [{"name": "a\nb.c.d", "extract": "full"}]}, True))  # a two-line message
@example(({"tables": [{"schema": "a\rb", "table": "t", "extract": "nope"}]}, True))
def test_mutated_documents_load_or_give_one_config_error(case: tuple[Any, bool | None]) -> None:
    document, must_fail = case
    text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    outcome = _parse(text)
    if must_fail is False:
        assert isinstance(outcome, PipelineConfig), f"refused a valid document: {outcome}\n{text}"
    if isinstance(outcome, PipelineConfig):
        assert not must_fail, f"accepted an invalid document:\n{text}"
        _assert_consistent(outcome)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(VALID_ENTRIES),
    st.integers(min_value=0, max_value=400),
    st.text(alphabet=st.sampled_from(list(":-[]{}&*!|>'\"%@`#,?\n\t \\x.0")), min_size=1, max_size=6),
)
def test_damaged_yaml_text_gives_one_config_error(entry: dict, position: int, damage: str) -> None:
    text = yaml.safe_dump({"tables": [entry]}, sort_keys=False)
    position = min(position, len(text))
    outcome = _parse(text[:position] + damage + text[position:])
    if isinstance(outcome, PipelineConfig):
        _assert_consistent(outcome)


def test_every_unmutated_valid_entry_loads() -> None:
    config = parse_pipelines(yaml.safe_dump({"tables": VALID_ENTRIES}, sort_keys=False), ORIGIN)
    assert len(config.tables) == len(VALID_ENTRIES)
    _assert_consistent(config)
