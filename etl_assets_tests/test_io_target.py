"""ensure_target against real PostgreSQL: the one way extract, CDC and the IO manager shape a target."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from etl_assets.errors import ConfigError, SchemaMismatch
from etl_assets.io import catalog
from etl_assets.io.tables import TableRef
from etl_assets.io.target import LOADED_AT, ensure_target, with_bookkeeping
from etl_assets.io.typemap import PgType, warehouse_type


@pytest.fixture
def conn(warehouse_dsn: str):
    with psycopg.connect(warehouse_dsn, autocommit=True) as c:
        yield c


def _types(conn, t):
    return {c.name: (c.type.sql(), c.not_null) for c in catalog.columns(conn, t)}


def _cols(**kw: str) -> dict[str, PgType]:
    return {k: PgType.parse(v) for k, v in kw.items()}


def test_creates_with_types_key_and_bookkeeping(conn, fresh_schema):
    t = TableRef(fresh_schema, "Snap shots")
    cols = with_bookkeeping(_cols(id="integer", amount="numeric(12,2)", at="timestamp(3) with time zone"),
                            (LOADED_AT,))
    shape = ensure_target(conn, t, cols, ("id", LOADED_AT))
    assert shape.created and (shape.added, shape.widened, shape.kept) == ([], [], [])
    assert _types(conn, t) == {
        "id": ("integer", True),
        "amount": ("numeric(12,2)", False),
        "at": ("timestamp(3) with time zone", False),
        LOADED_AT: ("timestamp with time zone", True),
    }
    pk = conn.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass "
                      "AND contype = 'p'", (t.regclass_text,)).fetchone()[0]
    assert pk == f"PRIMARY KEY (id, {LOADED_AT})"


def test_evolves_adds_widens_and_keeps(conn, fresh_schema):
    t = TableRef(fresh_schema, "t")
    ensure_target(conn, t, _cols(id="integer", name="character varying(5)", gone="text"), ("id",))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'abc', 'x')").format(t.ident))
    shape = ensure_target(conn, t, _cols(id="bigint", name="character varying(5)", note="text"), ("id",))
    assert not shape.created
    assert (shape.added, shape.widened, shape.kept) == (["note"], ["id"], ["gone"])
    assert list(shape.types) == ["id", "name", "gone", "note"]
    assert _types(conn, t)["id"] == ("bigint", True)
    assert conn.execute(sql.SQL("SELECT id, name, gone, note FROM {}").format(t.ident)).fetchall() == [
        (1, "abc", "x", None)
    ]


def test_widen_false_only_adds(conn, fresh_schema):
    t = TableRef(fresh_schema, "t")
    ensure_target(conn, t, _cols(id="integer"), ("id",))
    shape = ensure_target(conn, t, _cols(id="bigint", v="text"), ("id",), widen=False)
    assert (shape.added, shape.widened) == (["v"], [])
    assert _types(conn, t)["id"] == ("integer", True)


def test_incompatible_change_refused_before_anything_changes(conn, fresh_schema):
    t = TableRef(fresh_schema, "t")
    ensure_target(conn, t, _cols(id="integer", at="date"), ("id",))
    with pytest.raises(SchemaMismatch, match="at"):
        ensure_target(conn, t, _cols(id="integer", at="integer", extra="text"), ("id",))
    assert list(_types(conn, t)) == ["id", "at"]


def test_key_outside_columns_is_a_config_error(conn, fresh_schema):
    with pytest.raises(ConfigError, match="Primary key column"):
        ensure_target(conn, TableRef(fresh_schema, "t"), _cols(id="integer"), ("nope",))


def test_warehouse_type_keeps_builtins_and_texts_user_types():
    assert warehouse_type("numeric(12,2)[]", True) == PgType("numeric", 12, 2, 1)
    assert warehouse_type("mood", False) == PgType("text")
