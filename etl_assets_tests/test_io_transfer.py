"""The text-format settings, the COPY pump and the binary-compatibility check against real PostgreSQL."""

from __future__ import annotations

import psycopg
import pytest

from etl_assets.io.transfer import TEXT_FORMAT, set_text_format

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
