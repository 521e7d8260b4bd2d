"""Upsert: every type of the mapping compared exactly (a change of any one column is an update, the
same value is not), through the IO manager's frame path and both extract paths; keys that repeat in
the rows read are refused the same way on every extract path."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import polars as pl
import psycopg
import pytest
from psycopg import sql

from etl_assets.errors import DuplicateKeys
from etl_assets.io.tables import TableRef
from etl_assets.io.typemap import PgType
from etl_assets.io.upsert import upsert_frame
from etl_assets.io.writer import lock_target, write_frame
from etl_assets_tests.extract_helpers import assert_equal, execute, module_databases, run, scalar, spec_of
from etl_assets_tests.io_helpers import leftovers

UTC = dt.UTC


@pytest.fixture
def conn(warehouse_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(warehouse_dsn, autocommit=True) as c:
        yield c


@pytest.fixture(scope="module")
def dbs(pg_admin_dsn: str) -> Iterator[dict[str, str]]:
    yield from module_databases(pg_admin_dsn)


def _text_rows(conn: psycopg.Connection, t: TableRef) -> list[str]:
    """Every row as PostgreSQL's own text (exact: numeric scale, -0, interval fields all show)."""
    conn.execute("SET TimeZone = 'UTC'")
    return [r[0] for r in conn.execute(sql.SQL("SELECT x::text FROM {} x ORDER BY id").format(t.ident))]


def _one_change_per_row(
    columns: dict[str, tuple[Any, Any, pl.DataType]],
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Row 0 keeps every first value; row i changes only column i (so each comparison is tested
    on its own: a type whose change went unseen leaves its row un-updated)."""
    names = list(columns)
    n = len(names) + 1
    before = {"id": list(range(n))} | {c: [columns[c][0]] * n for c in names}
    after = {"id": list(range(n))} | {
        c: [columns[c][1] if i == names.index(c) + 1 else columns[c][0] for i in range(n)] for c in names
    }
    schema = {"id": pl.Int64} | {c: columns[c][2] for c in names}
    return pl.DataFrame(before, schema=schema), pl.DataFrame(after, schema=schema)


# (first value, changed value, dtype): every dtype of typemap.pg_type_for, with changes that a
# looser-than-identity equality would miss (float -0.0 = 0.0).
FRAME_TYPES: dict[str, tuple[Any, Any, pl.DataType]] = {
    "i8": (1, 2, pl.Int8),
    "i16": (1, 2, pl.Int16),
    "u8": (1, 2, pl.UInt8),
    "i32": (1, 2, pl.Int32),
    "u16": (1, 2, pl.UInt16),
    "i64": (1, 2, pl.Int64),
    "u32": (1, 2, pl.UInt32),
    "u64": (2**64 - 2, 2**64 - 1, pl.UInt64),
    "i128": (1, 2**100, pl.Int128),
    "f32": (0.0, -0.0, pl.Float32),
    "f64": (0.0, -0.0, pl.Float64),
    "dec": (Decimal("1.00"), Decimal("1.01"), pl.Decimal(10, 2)),
    "txt": ("a", "A", pl.String),
    "cat": ("a", "b", pl.Categorical),
    "flag": (True, False, pl.Boolean),
    "day": (dt.date(2024, 1, 1), dt.date(2024, 1, 2), pl.Date),
    "tod": (dt.time(12), dt.time(12, 0, 0, 1), pl.Time),
    "ts": (dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 1, 0, 0, 0, 1), pl.Datetime("us")),
    "tstz": (
        dt.datetime(2024, 1, 1, tzinfo=UTC),
        dt.datetime(2024, 1, 1, 1, tzinfo=UTC),
        pl.Datetime("us", "UTC"),
    ),
    "span": (dt.timedelta(seconds=1), dt.timedelta(seconds=2), pl.Duration("us")),
    "raw": (b"\x00", b"\x01", pl.Binary),
    "doc": ({"k": "v", "n": 1}, {"k": "v", "n": 2}, pl.Struct({"k": pl.String, "n": pl.Int64})),
    "ints": ([1, 2], [1, 2, 3], pl.List(pl.Int64)),
    "floats": ([0.0], [-0.0], pl.List(pl.Float64)),
    "words": (["a"], ["a", None], pl.List(pl.String)),
    "grid": ([[1]], [[1], [2]], pl.List(pl.List(pl.Int32))),
    "docs": ([{"k": "v"}], [{"k": "w"}], pl.List(pl.Struct({"k": pl.String}))),
}


def test_frame_path_detects_a_change_of_every_mapped_type(conn, fresh_schema):
    t = TableRef(fresh_schema, "every_type")
    before, after = _one_change_per_row(FRAME_TYPES)
    first = write_frame(conn, before, t, "upsert", primary_key=["id"])
    assert first.inserted == before.height
    again = write_frame(conn, before, t, "upsert", primary_key=["id"])
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, before.height)
    changed = write_frame(conn, after, t, "upsert", primary_key=["id"])
    assert (changed.inserted, changed.updated, changed.unchanged) == (0, len(FRAME_TYPES), 1)
    # Exactly the values of ``after``: the same frame written into a fresh table by COPY.
    expected = TableRef(fresh_schema, "expected")
    write_frame(conn, after, expected, "insert")
    assert _text_rows(conn, t) == _text_rows(conn, expected)
    same = write_frame(conn, after, t, "upsert", primary_key=["id"])
    assert (same.updated, same.unchanged) == (0, after.height)
    assert leftovers(conn) == []


# Types a frame cannot create but a target may have (created by hand, or by an extract from the
# source's types): no btree equality (json, xml, point, box), or one looser than identity.
TABLE_TYPES: dict[str, tuple[str, str, str]] = {
    "js": ("json", '{"a":1}', '{"a": 1}'),
    "jb": ("jsonb", '{"a": 1.0}', '{"a": 1.00}'),
    "x": ("xml", "<a>1</a>", "<a>2</a>"),
    "p": ("point", "(1,2)", "(1,2.0000001)"),  # ~= would call these the same point
    "bx": ("box", "(2,2),(0,0)", "(3,3),(1,1)"),  # box = compares areas: equal here
    "num": ("numeric", "1.0", "1.00"),
    "iv": ("interval", "1 day", "24:00:00"),
    "vc": ("varchar(10)", "a", "a "),
    "jsa": ("json[]", '{"{\\"a\\":1}"}', '{"{\\"a\\": 1}"}'),
}


def _on_this_server(conn: psycopg.Connection, types: dict[str, tuple[str, str, str]]
                    ) -> dict[str, tuple[str, str, str]]:
    """The types this server can hold: a build without libxml (the embedded server's) has no xml
    values, so the xml column is covered where the server has it (CI's second pass, PostgreSQL 15)."""
    try:
        conn.execute("SELECT '<a/>'::xml")
    except psycopg.errors.FeatureNotSupported:
        return {c: t for c, t in types.items() if t[0] != "xml"}
    return types


def test_frame_path_into_json_xml_point_columns(conn, fresh_schema):
    t = TableRef(fresh_schema, "odd_types")
    table_types = _on_this_server(conn, TABLE_TYPES)
    cols = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(typ)) for c, (typ, _, _) in table_types.items()
    )
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, {})").format(t.ident, cols))
    before, after = _one_change_per_row({c: (a, b, pl.String) for c, (_, a, b) in table_types.items()})
    assert write_frame(conn, before, t, "upsert", primary_key=["id"]).inserted == before.height
    again = write_frame(conn, before, t, "upsert", primary_key=["id"])
    assert (again.updated, again.unchanged) == (0, before.height)
    changed = write_frame(conn, after, t, "upsert", primary_key=["id"])
    assert (changed.inserted, changed.updated, changed.unchanged) == (0, len(table_types), 1)
    expected = TableRef(fresh_schema, "expected")
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(expected.ident, t.ident))
    write_frame(conn, after, expected, "insert")
    assert _text_rows(conn, t) == _text_rows(conn, expected)


# The extract paths: a source table with every type family the extract keeps as it is.
SOURCE_TYPES: dict[str, tuple[str, str, str]] = {
    "i2": ("smallint", "1", "2"),
    "i4": ("integer", "1", "2"),
    "i8": ("bigint", "1", "2"),
    "num_t": ("numeric(12,3)", "1.5", "1.25"),
    "r4": ("real", "0", "-0"),
    "d8": ("double precision", "0", "-0"),
    "t": ("text", "a", "A"),
    "ch": ("char(3)", "a", "b"),
    "b": ("boolean", "true", "false"),
    "dt": ("date", "2024-01-01", "2024-01-02"),
    "tm": ("time", "12:00", "12:00:00.000001"),
    "tmtz": ("timetz", "12:00+00", "13:00+01"),
    "ts": ("timestamp", "2024-01-01 00:00", "2024-01-01 00:00:00.000001"),
    "tstz": ("timestamptz", "2024-01-01 00:00+00", "2024-01-01 00:00:00.000001+00"),
    "by": ("bytea", "\\x00", "\\x01"),
    "u": ("uuid", "00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002"),
    "ints": ("integer[]", "{1,2}", "{1,2,3}"),
    "nums": ("numeric[]", "{1.0}", "{1.00}"),
    "words": ("text[]", "{a}", "{a,NULL}"),
    **TABLE_TYPES,
}


def _seed_source(dsn: str, name: str, types: dict[str, tuple[str, str, str]]) -> None:
    cols = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(typ)) for c, (typ, _, _) in types.items()
    )
    table = sql.Identifier("src", name)
    execute(dsn, "CREATE SCHEMA IF NOT EXISTS src")
    execute(dsn, sql.SQL("CREATE TABLE {} (id integer PRIMARY KEY, {})").format(table, cols))
    firsts = sql.SQL(", ").join(
        sql.SQL("{}::{}").format(sql.Literal(a), sql.SQL(typ)) for typ, a, _ in types.values()
    )
    execute(dsn, sql.SQL("INSERT INTO {} SELECT g, {} FROM generate_series(0, {}) g").format(
        table, firsts, sql.Literal(len(types))))


@pytest.mark.parametrize("fast", [False, True], ids=["frame", "copy"])
@pytest.mark.parametrize("extract", ["full", "incremental"])
def test_extract_upsert_detects_a_change_of_every_type(dbs, fast, extract):
    name = f"types_{extract}_{'copy' if fast else 'frame'}"
    with psycopg.connect(dbs["source"], autocommit=True) as probe:
        source_types = _on_this_server(probe, SOURCE_TYPES)
    _seed_source(dbs["source"], name, source_types)
    cursor = ""
    if extract == "incremental":
        execute(dbs["source"], sql.SQL("ALTER TABLE {} ADD COLUMN seq bigint NOT NULL DEFAULT 0").format(
            sql.Identifier("src", name)))
        cursor = "    cursor: seq\n    lag: 0\n"
    spec = spec_of(
        f"tables:\n  - name: src.{name}\n    extract: {extract}\n    load: upsert\n    primary_key: [id]\n"
        f"    fast_path: {'true' if fast else 'false'}\n    target: raw.{name}\n" + cursor
    )
    rows = len(source_types) + 1
    first = run(spec, dbs, "r1")
    assert (first.inserted, first.updated) == (rows, 0)
    same = run(spec, dbs, "r2")
    assert (same.inserted, same.updated, same.unchanged) == (0, 0, same.rows_read)
    for i, (column, (typ, _, changed)) in enumerate(source_types.items(), start=1):
        execute(dbs["source"], sql.SQL("UPDATE {} SET {} = {}::{}{} WHERE id = {}").format(
            sql.Identifier("src", name), sql.Identifier(column), sql.Literal(changed), sql.SQL(typ),
            sql.SQL(", seq = 1" if cursor else ""), sql.Literal(i)))
    report = run(spec, dbs, "r3")
    assert (report.inserted, report.updated) == (0, len(source_types))
    assert report.unchanged == report.rows_read - len(source_types)
    assert_equal(dbs, spec)
    with psycopg.connect(dbs["warehouse"]) as wh:
        shown = [c for c in ("js", "x", "p", "bx", "iv", "num") if c in source_types]
        got = wh.execute(sql.SQL("SELECT {} FROM {} WHERE id > 0 ORDER BY id").format(
            sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in shown),
            spec.target.ident)).fetchall()
    order = list(source_types)
    picked = {c: got[order.index(c)][k] for k, c in enumerate(shown)}
    expected = {"js": '{"a": 1}', "x": "<a>2</a>", "p": "(1,2.0000001)", "bx": "(3,3),(1,1)",
                "iv": "24:00:00", "num": "1.00"}
    assert picked == {c: expected[c] for c in shown}


# --------------------------------------------------------------------------------------------------
# Declared keys that are not unique: refused alike by the frame and the COPY path
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fast", [False, True], ids=["frame", "copy"])
@pytest.mark.parametrize("sensitive", [False, True], ids=["plain", "sensitive"])
def test_extract_refuses_duplicate_declared_keys(dbs, fast, sensitive):
    name = f"dups_{'copy' if fast else 'frame'}_{'s' if sensitive else 'p'}"
    table = sql.Identifier("src", name)
    execute(dbs["source"], "CREATE SCHEMA IF NOT EXISTS src")
    execute(dbs["source"], sql.SQL("CREATE TABLE {} (email text, n int)").format(table))
    execute(dbs["source"], sql.SQL(
        "INSERT INTO {} VALUES ('ann@example.com', 1), ('bob.secret@example.com', 2), "
        "('bob.secret@example.com', 3), ('cy@example.com', 4)").format(table))
    spec = spec_of(
        f"tables:\n  - name: src.{name}\n    extract: full\n    load: upsert\n    primary_key: [email]\n"
        f"    fast_path: {'true' if fast else 'false'}\n    target: raw.{name}\n"
        + ("    sensitive: [email]\n" if sensitive else "")
    )
    with pytest.raises(DuplicateKeys) as err:
        run(spec, dbs)
    message = str(err.value)
    assert f"raw.{name}" in message and "(email)" in message
    assert "1 key value(s) occur more than once" in message and "2 times" in message
    if sensitive:
        assert "bob.secret" not in message and "(email) = (***)" in message
    else:
        assert "(email) = (bob.secret@example.com)" in message
    # Nothing was written, and the stored state did not move.
    assert scalar(dbs["warehouse"], sql.SQL("SELECT count(*) FROM {}").format(spec.target.ident)) == 0
    state = "SELECT count(*) FROM etl.state WHERE target = %s"
    assert scalar(dbs["warehouse"], state, (str(spec.target),)) == 0
    # Once the key is unique, both paths load every row.
    execute(dbs["source"], sql.SQL("DELETE FROM {} WHERE n = 3").format(table))
    assert run(spec, dbs).inserted == 3


@pytest.mark.parametrize("fast", [False, True], ids=["frame", "copy"])
def test_extract_refuses_duplicate_keys_into_a_loaded_target(dbs, fast):
    """The second run (non-empty target: staging on both paths) refuses too, naming the count."""
    name = f"dups_later_{'copy' if fast else 'frame'}"
    table = sql.Identifier("src", name)
    execute(dbs["source"], "CREATE SCHEMA IF NOT EXISTS src")
    execute(dbs["source"], sql.SQL("CREATE TABLE {} (k int, v text)").format(table))
    execute(dbs["source"], sql.SQL("INSERT INTO {} SELECT g, 'v' FROM generate_series(1, 5) g").format(table))
    spec = spec_of(
        f"tables:\n  - name: src.{name}\n    extract: full\n    load: upsert\n    primary_key: [k]\n"
        f"    fast_path: {'true' if fast else 'false'}\n    target: raw.{name}\n")
    run(spec, dbs)
    execute(dbs["source"], sql.SQL("INSERT INTO {} VALUES (2, 'x'), (4, 'y'), (4, 'z')").format(table))
    refused = r"2 key value\(s\) occur more than once, e.g. \(k\) = \(4\) 3 times"
    with pytest.raises(DuplicateKeys, match=refused):
        run(spec, dbs)
    got = scalar(dbs["warehouse"], sql.SQL("SELECT string_agg(k || v, ',' ORDER BY k) FROM {}").format(
        spec.target.ident))
    assert got == "1v,2v,3v,4v,5v"


def test_keys_repeated_across_frames_of_one_transaction_are_refused(conn, fresh_schema):
    """A large extract's frame path writes several frames in one transaction: a key of a later frame
    that an earlier frame already carried is refused, not silently overwritten, also when the earlier
    frame's row left the stored row unchanged (so that row was not rewritten by this transaction)."""
    t = TableRef(fresh_schema, "frames")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v text)").format(t.ident))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'a')").format(t.ident))
    types = {"id": PgType("integer"), "v": PgType("text")}
    one = pl.DataFrame({"id": [1, 2, 3], "v": ["a", "b", "c"]})  # 1 unchanged, 2 and 3 new
    for two in (pl.DataFrame({"id": [4, 1], "v": ["d", "A"]}), pl.DataFrame({"id": [2], "v": ["B"]})):
        refused = r"at least 1 key value\(s\) .* \(id\) = \(\d\) at least 2 times"
        with pytest.raises(DuplicateKeys, match=refused), conn.transaction():
            lock_target(conn, t)
            upsert_frame(conn, one, t, ["id"], None, types, duplicates="refuse")
            upsert_frame(conn, two, t, ["id"], None, types, duplicates="refuse")
        assert conn.execute(sql.SQL("SELECT id, v FROM {}").format(t.ident)).fetchall() == [(1, "a")]
    # Separate transactions (separate runs): the second frame is an ordinary update.
    with conn.transaction():
        assert upsert_frame(conn, one, t, ["id"], None, types, duplicates="refuse") == (2, 0, 1, 0)
    with conn.transaction():
        two = pl.DataFrame({"id": [4, 1], "v": ["d", "A"]})
        assert upsert_frame(conn, two, t, ["id"], None, types, duplicates="refuse") == (1, 1, 0, 0)
    # A source that guarantees unique keys skips the cross-frame bookkeeping.
    with conn.transaction():
        upsert_frame(conn, one, t, ["id"], None, types, duplicates="refuse", keys_unique=True)
        mine = "SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema() AND relname ~ '^etl_k'"
        assert conn.execute(mine).fetchone() == (0,)


def scalar_of(conn: psycopg.Connection, t: TableRef) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(t.ident)).fetchone()[0]


def test_io_manager_upsert_keeps_last_row_per_key_and_counts_the_others(conn, fresh_schema):
    """The IO manager's documented choice (order_by picks the winner) is unchanged and counted."""
    t = TableRef(fresh_schema, "kept")
    df = pl.DataFrame({"id": [1, 1, 2], "v": ["x", "y", "z"]})
    r = write_frame(conn, df, t, "upsert", primary_key=["id"])
    assert (r.inserted, r.duplicates) == (2, 1) and r.metadata()["duplicate_keys_dropped"] == 1


@pytest.mark.parametrize("fast", [False, True], ids=["frame", "copy"])
def test_key_only_table_duplicates_refused_and_reruns_unchanged(dbs, fast):
    """A table that is all key (ON CONFLICT DO NOTHING would skip a repeated key silently)."""
    name = f"keys_only_{'copy' if fast else 'frame'}"
    table = sql.Identifier("src", name)
    execute(dbs["source"], "CREATE SCHEMA IF NOT EXISTS src")
    execute(dbs["source"], sql.SQL("CREATE TABLE {} (a int, b int)").format(table))
    execute(dbs["source"], sql.SQL("INSERT INTO {} VALUES (1, 1), (1, 2)").format(table))
    spec = spec_of(
        f"tables:\n  - name: src.{name}\n    extract: full\n    load: upsert\n    primary_key: [a, b]\n"
        f"    fast_path: {'true' if fast else 'false'}\n    target: raw.{name}\n")
    assert run(spec, dbs).inserted == 2
    again = run(spec, dbs)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 2)
    execute(dbs["source"], sql.SQL("INSERT INTO {} VALUES (1, 2), (3, 3)").format(table))
    with pytest.raises(DuplicateKeys, match=r"\(a, b\) = \(1, 2\) 2 times"):
        run(spec, dbs)
    assert scalar(dbs["warehouse"], sql.SQL("SELECT count(*) FROM {}").format(spec.target.ident)) == 2


def test_repeated_keys_are_found_with_one_or_several_key_columns_and_nulls():
    from etl_assets.io.upsert import has_repeated_keys

    one = pl.DataFrame({"k": [1, 2, None, 3], "v": [1, 1, 1, 1]})
    assert not has_repeated_keys(one, ["k"])
    assert has_repeated_keys(one.vstack(pl.DataFrame({"k": [None], "v": [2]})), ["k"])  # NULLs group
    assert has_repeated_keys(one.vstack(pl.DataFrame({"k": [2], "v": [2]})), ["k"])
    two = pl.DataFrame({"a": [1, 1, None, None], "b": ["x", "y", "x", None]})
    assert not has_repeated_keys(two, ["a", "b"])
    assert has_repeated_keys(two.vstack(pl.DataFrame({"a": [None], "b": [None]})), ["a", "b"])
    assert not has_repeated_keys(two.head(1), ["a", "b"]) and not has_repeated_keys(two.head(0), ["a"])
