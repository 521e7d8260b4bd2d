"""Streaming a source COPY into frames: record boundaries with quoted newlines, exact values."""

from __future__ import annotations

from collections.abc import Iterator

import polars as pl
import psycopg
import pytest
from psycopg import sql

from etl_assets.extract.source import _record_boundary, iter_copy_frames, prepare_session
from etl_assets_tests.extract_helpers import execute, module_databases


@pytest.fixture(scope="module")
def dbs(pg_admin_dsn: str) -> Iterator[dict[str, str]]:
    yield from module_databases(pg_admin_dsn)


def test_record_boundary_ignores_newlines_inside_quotes() -> None:
    assert _record_boundary(bytearray(b'1,"a\nb"\n2,"c')) == len(b'1,"a\nb"\n')
    assert _record_boundary(bytearray(b'1,"a\n')) == 0
    assert _record_boundary(bytearray(b'1,x\n2,"q""\n""r"\n')) == len(b'1,x\n2,"q""\n""r"\n')


def test_streamed_pieces_hold_every_row_exactly(dbs: dict[str, str]) -> None:
    execute(dbs["source"], "DROP TABLE IF EXISTS s; CREATE TABLE s (id int PRIMARY KEY, t text);"
            "INSERT INTO s SELECT g, CASE g % 4 WHEN 0 THEN NULL WHEN 1 THEN '' "
            "WHEN 2 THEN E'line\\n\"two\", ' || g ELSE 'plain ' || g END FROM generate_series(1, 3000) g")
    with psycopg.connect(dbs["source"], autocommit=True) as conn:
        prepare_session(conn)
        query = sql.SQL("SELECT id, t FROM s ORDER BY id")
        frames = list(iter_copy_frames(conn, query, (), ["id", "t"], piece_bytes=4096))
        expected = conn.execute("SELECT id::text AS i, t FROM s ORDER BY s.id").fetchall()
    assert len(frames) > 5  # really streamed in pieces
    got = pl.concat(frames).rows()
    assert got == expected  # NULL stays NULL, '' stays '', quoted newlines survive


def test_empty_result_gives_one_empty_frame(dbs: dict[str, str]) -> None:
    with psycopg.connect(dbs["source"], autocommit=True) as conn:
        frames = list(iter_copy_frames(conn, sql.SQL("SELECT 1 AS a WHERE false"), (), ["a"]))
    assert len(frames) == 1 and frames[0].height == 0 and frames[0].columns == ["a"]
