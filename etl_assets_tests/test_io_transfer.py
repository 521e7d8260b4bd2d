"""The text-format settings, the COPY pump and the binary-compatibility check against real PostgreSQL."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from etl_assets.errors import SchemaMismatch
from etl_assets.io.tables import TableRef
from etl_assets.io.transfer import TEXT_FORMAT, binary_compatible, set_text_format, stream_copy
from etl_assets.io.typemap import PgType

SHOW = (
    "SELECT current_setting('TimeZone'), current_setting('DateStyle'), current_setting('IntervalStyle'), "
    "current_setting('extra_float_digits'), current_setting('bytea_output')"
)


@pytest.fixture
def conn(warehouse_dsn: str):
    with psycopg.connect(warehouse_dsn, autocommit=True) as c:
        c.execute("SET TimeZone = 'America/New_York'")
        c.execute("SET DateStyle = 'SQL, DMY'")
        c.execute("SET IntervalStyle = 'sql_standard'")
        c.execute("SET extra_float_digits = 0")
        c.execute("SET bytea_output = 'escape'")
        yield c


def test_session_settings_fix_text_output(conn):
    set_text_format(conn)
    assert conn.execute(SHOW).fetchone() == ("UTC", "ISO, YMD", "postgres", "3", "hex")
    rendered = conn.execute(
        "SELECT '2024-03-01 12:00+02'::timestamptz::text, '1 day -2 hours'::interval::text, "
        "'\\x01'::bytea::text"
    ).fetchone()
    assert rendered == ("2024-03-01 10:00:00+00", "1 day -02:00:00", "\\x01")
    assert [name for name, _ in TEXT_FORMAT] == [
        "TimeZone", "DateStyle", "IntervalStyle", "extra_float_digits", "bytea_output"]


def test_local_settings_end_with_the_transaction(conn):
    before = conn.execute(SHOW).fetchone()
    with conn.transaction():
        set_text_format(conn, local=True)
        assert conn.execute(SHOW).fetchone() == ("UTC", "ISO, YMD", "postgres", "3", "hex")
    assert before == ("America/New_York", "SQL, DMY", "sql_standard", "0", "escape")
    assert conn.execute(SHOW).fetchone() == before


STREAMED = {"id": PgType("integer"), "amount": PgType("numeric", 12, 2), "at": PgType("timestamptz")}


@pytest.fixture
def pair(warehouse_dsn: str, fresh_schema: str):
    """Two connections (the pump's source and warehouse sides; one database is enough) and a source
    table of three rows."""
    with psycopg.connect(warehouse_dsn) as src, psycopg.connect(warehouse_dsn) as wh:
        source = TableRef(fresh_schema, "src")
        src.execute(sql.SQL("CREATE TABLE {} (id integer, amount numeric(12,2), at timestamptz)").format(
            source.ident))
        src.execute(sql.SQL("INSERT INTO {} VALUES (1, 1.50, '2024-01-01 00:00+00'), (2, NULL, NULL), "
                            "(3, -0.01, '1999-12-31 23:59:59.5+05')").format(source.ident))
        src.commit()
        yield src, wh, source


def _target(wh, ref: TableRef, amount: str) -> None:
    wh.execute(sql.SQL("CREATE TABLE {} (id integer PRIMARY KEY, amount {}, at timestamptz)").format(
        ref.ident, sql.SQL(amount)))


def _rows(conn, ref: TableRef):
    query = sql.SQL("SELECT id, amount::text, at FROM {} ORDER BY id").format(ref.ident)
    return conn.execute(query).fetchall()


@pytest.mark.parametrize("amount,binary", [("numeric(12,2)", True), ("numeric(14,2)", False)])
def test_pump_copies_exact_rows_binary_only_for_identical_types(pair, amount, binary):
    src, wh, source = pair
    target = TableRef(source.schema, "dst")
    _target(wh, target, amount)
    assert binary_compatible(wh, target, STREAMED) is binary
    if not binary:
        for conn in (src, wh):
            set_text_format(conn, local=True)
    query = sql.SQL("SELECT id, amount, at FROM {}").format(source.ident)
    assert stream_copy(src, wh, query, (), target.ident, list(STREAMED), binary) == 3
    wh.commit()
    assert _rows(wh, target) == _rows(src, source)


def test_binary_refused_for_a_column_the_target_lacks(pair):
    _, wh, source = pair
    target = TableRef(source.schema, "dst")
    wh.execute(sql.SQL("CREATE TABLE {} (id integer, amount numeric(12,2))").format(target.ident))
    assert not binary_compatible(wh, target, STREAMED)


def test_pump_rejection_names_the_table_and_masks_values(pair):
    src, wh, source = pair
    target = TableRef(source.schema, "dst")
    _target(wh, target, "numeric(3,2)")  # 1.50 fits, -0.01 fits; make one value overflow
    wh.commit()
    src.execute(sql.SQL("UPDATE {} SET amount = 12345.67 WHERE id = 3").format(source.ident))
    src.commit()
    query = sql.SQL("SELECT id, amount, at FROM {}").format(source.ident)
    with pytest.raises(SchemaMismatch, match="PostgreSQL rejected the data for") as err:
        stream_copy(src, wh, query, (), target.ident, list(STREAMED), False)
    assert "12345.67" not in str(err.value) and err.value.__cause__ is None
    wh.rollback()
    assert _rows(wh, target) == []
