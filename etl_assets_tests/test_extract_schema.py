"""Source schema changes (dropped and added columns) and hostile identifiers, on both paths."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from psycopg import sql

from etl_assets.io.tables import TableRef
from etl_assets_tests.extract_helpers import (
    assert_equal,
    checksum,
    execute,
    module_databases,
    run,
    scalar,
    spec_of,
)


@pytest.fixture(scope="module")
def dbs(pg_admin_dsn: str) -> Iterator[dict[str, str]]:
    yield from module_databases(pg_admin_dsn)


MODES = [
    ("full", "truncate_insert", ""),
    ("incremental", "upsert", "    cursor: updated_at\n"),
    ("chunked", "upsert", "    chunk_size: 7\n"),
    ("chunked", "truncate_insert", "    chunk_size: 7\n"),
]


@pytest.mark.parametrize("fast", [False, True], ids=["frame", "copy"])
@pytest.mark.parametrize(("extract", "load", "extra"), MODES, ids=[f"{e}-{m}" for e, m, _ in MODES])
def test_dropped_column_stays_and_added_column_arrives(dbs: dict[str, str], extract: str, load: str,
                                                       extra: str, fast: bool) -> None:
    schema = f"evo_{extract}_{load}_{int(fast)}"
    execute(dbs["source"], sql.SQL(
        "DROP SCHEMA IF EXISTS {s} CASCADE; CREATE SCHEMA {s};"
        "CREATE TABLE {s}.items (id int PRIMARY KEY, gone text, kept numeric(8,3),"
        " updated_at timestamptz NOT NULL DEFAULT now());"
        "INSERT INTO {s}.items (id, gone, kept) SELECT g, 'g' || g, g / 7.0 FROM generate_series(1, 20) g"
    ).format(s=sql.Identifier(schema)))
    spec = spec_of(f"tables:\n  - name: {schema}.items\n    extract: {extract}\n    load: {load}\n"
                   f"    primary_key: [id]\n    fast_path: {str(fast).lower()}\n" + extra)
    run(spec, dbs)
    assert_equal(dbs, spec)
    execute(dbs["source"], sql.SQL(
        "ALTER TABLE {s}.items DROP COLUMN gone; ALTER TABLE {s}.items ADD COLUMN added date;"
        "UPDATE {s}.items SET added = date '2024-02-29', updated_at = now() WHERE id <= 3;"
        "INSERT INTO {s}.items (id, kept, added) VALUES (21, 1.5, date '2025-01-01')"
    ).format(s=sql.Identifier(schema)))
    report = run(spec, dbs)
    assert report.columns_added == ["added"]
    assert any("gone" in w and "stay" in w for w in report.warnings)
    assert_equal(dbs, spec)  # compares the source's current columns, including the new one
    target = sql.Identifier("raw", "items")
    assert scalar(dbs["warehouse"], sql.SQL("SELECT gone FROM {} WHERE id = 21").format(target)) is None
    if load == "upsert":  # rows not rewritten keep their old value of the dropped column
        assert scalar(dbs["warehouse"], sql.SQL("SELECT gone FROM {} WHERE id = 20").format(target)) == "g20"
    execute(dbs["warehouse"], "DROP TABLE raw.items; DELETE FROM etl.state WHERE target = 'raw.items'")


HOSTILE_SCHEMA = 'Odd "Schema"'
HOSTILE_TABLE = 'My Table.v2'


@pytest.mark.parametrize("fast", [False, True], ids=["frame", "copy"])
@pytest.mark.parametrize(("extract", "load"), [("full", "truncate_insert"), ("incremental", "upsert"),
                                               ("chunked", "upsert"), ("full", "insert")])
def test_hostile_identifiers(dbs: dict[str, str], extract: str, load: str, fast: bool) -> None:
    source = TableRef(HOSTILE_SCHEMA, HOSTILE_TABLE)
    execute(dbs["source"], sql.SQL(
        "DROP SCHEMA IF EXISTS {s} CASCADE; CREATE SCHEMA {s};"
        "CREATE TABLE {t} ({id} int, {k2} text, {v} text, {c} timestamptz NOT NULL DEFAULT now(),"
        " PRIMARY KEY ({id}, {k2}));"
        "INSERT INTO {t} SELECT g, 'k' || (g % 3), 'it''s \"quoted\", ' || g, now()"
        " FROM generate_series(1, 25) g"
    ).format(s=sql.Identifier(HOSTILE_SCHEMA), t=source.ident, id=sql.Identifier("Id"),
             k2=sql.Identifier("key two"), v=sql.Identifier('we"ird, col'), c=sql.Identifier("Changed At")))
    cursor = '    cursor: "Changed At"\n' if extract == "incremental" else ""
    spec = spec_of(
        "tables:\n"
        f"  - schema: '{HOSTILE_SCHEMA}'\n"
        f"    table: '{HOSTILE_TABLE}'\n"
        f"    extract: {extract}\n    load: {load}\n"
        "    primary_key: [Id, key two]\n"
        f"    chunk_size: 4\n    fast_path: {str(fast).lower()}\n"
        f"    target: '\"Raw Zone\".\"{extract} {load} {int(fast)}\"'\n" + cursor
    )
    assert spec.target == TableRef("Raw Zone", f"{extract} {load} {int(fast)}")
    for _ in range(2):
        run(spec, dbs)
        execute(dbs["source"], sql.SQL("UPDATE {} SET {} = 'new', {} = now() WHERE {} = 5").format(
            source.ident, sql.Identifier('we"ird, col'), sql.Identifier("Changed At"), sql.Identifier("Id")))
    run(spec, dbs)
    if load == "insert":
        columns = ["Id", "key two", 'we"ird, col', "Changed At"]
        latest = sql.SQL("{l} = (SELECT max({l}) FROM {t})").format(l=sql.Identifier("_loaded_at"),
                                                                     t=spec.target.ident)
        assert checksum(dbs["warehouse"], spec.target, columns, spec.primary_key, latest) == checksum(
            dbs["source"], source, columns, spec.primary_key)
    else:
        assert_equal(dbs, spec)


@pytest.mark.parametrize("fast", [False, True], ids=["frame", "copy"])
@pytest.mark.parametrize(("extract", "load"), [("full", "truncate_insert"), ("incremental", "upsert"),
                                               ("chunked", "upsert")])
def test_types_round_trip_exactly(dbs: dict[str, str], extract: str, load: str, fast: bool) -> None:
    """The target keeps the source's column types, and every value compares equal as text."""
    schema = f"types_{extract}_{int(fast)}"
    execute(dbs["source"], sql.SQL(
        "DROP SCHEMA IF EXISTS {s} CASCADE; CREATE SCHEMA {s};"
        "CREATE TYPE {s}.mood AS ENUM ('sad', 'ok');"
        "CREATE TYPE {s}.pair AS (a int, b text); CREATE DOMAIN {s}.posint AS int CHECK (VALUE > 0);"
        "CREATE TABLE {s}.t (id bigint PRIMARY KEY, code varchar(20), amount numeric(12,2), f float8,"
        " flag boolean, d date, ts timestamp, tz timestamptz NOT NULL DEFAULT now(), span interval,"
        " u uuid, raw bytea, doc jsonb, nums int[], words text[], mood {s}.mood, moods {s}.mood[],"
        " p {s}.pair, pi {s}.posint, m money, r int4range, pt point, tsv tsvector, bits bit varying(8),"
        " ip inet);"
        "INSERT INTO {s}.t (id, code, amount, f, flag, d, ts, span, u, raw, doc, nums, words, mood, moods,"
        " p, pi, m, r, pt, tsv, bits, ip) VALUES"
        " (1, 'a,b', 12.30, 'NaN', true, '2024-02-29', '2024-01-01 10:00:00.123456', '1 day 02:03:04',"
        "  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff', '{{\"k\": [1, \"x\"]}}', '{{1,NULL,3}}',"
        "  '{{\"a b\",\"c,d\",\"\"}}', 'ok', '{{sad,ok}}', '(1,\"x, y\")', 5, 12.5, '[1,5)', '(1,2)',"
        "  'a:1 b:2', B'101', '10.0.0.1/8'),"
        " (2, '', -0.01, 'Infinity', false, 'infinity', '-infinity', '-3 months', NULL, '', '[]', '{{}}',"
        "  '{{}}', 'sad', '{{}}', '(,)', 1, -0.01, 'empty', '(-1.5,0)', '', B'', '::1'),"
        " (3, NULL, NULL, -1.5e300, NULL, NULL, NULL, NULL, NULL, NULL, 'null', NULL, NULL, NULL, NULL,"
        "  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
    ).format(s=sql.Identifier(schema)))
    cursor = "    cursor: tz\n" if extract == "incremental" else ""
    spec = spec_of(f"tables:\n  - name: {schema}.t\n    extract: {extract}\n    load: {load}\n"
                   f"    primary_key: [id]\n    fast_path: {str(fast).lower()}\n"
                   f"    target: raw.{schema}\n" + cursor)
    run(spec, dbs)
    run(spec, dbs)  # a second run upserts the same values: they must compare unchanged
    assert_equal(dbs, spec)
    types_sql = ("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                 "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped ORDER BY attnum")
    source_types = dict(_rows(dbs["source"], types_sql, [f'"{schema}".t']))
    target_types = dict(_rows(dbs["warehouse"], types_sql, [f"raw.{schema}"]))
    # user-defined types (enum, its array, composite, domain) land as text; built-in ones keep theirs
    assert target_types == {**source_types, "mood": "text", "moods": "text", "p": "text", "pi": "text"}


def _rows(dsn: str, query: str, params: list[str]) -> list[tuple]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()
