"""The dead-letter table itself: payloads round-trip every type, hashes are stable across engines,
entries commit or roll back with the data, repeats bump attempts, statuses move as documented,
payloads stay out of reprs and the CLI, and PUBLIC cannot read the table."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pandas as pd
import polars as pl
import psycopg
import pytest

from etl_assets import dlq
from etl_assets.cli import main
from etl_assets.io.tables import TableRef
from etl_assets.io.writer import write_frame

UTC = dt.UTC


@pytest.fixture
def wh(module_warehouse: str) -> str:
    """The module's warehouse with an empty dead-letter table and no clean schema."""
    with psycopg.connect(module_warehouse) as conn:
        conn.execute("DROP SCHEMA IF EXISTS clean CASCADE")
        conn.execute("TRUNCATE etl.dead_letters")
    return module_warehouse


def typed_frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": [1, 2, 3],
            "score": [1.5, float("nan"), float("-inf")],
            "price": [Decimal("10.50"), None, Decimal("-0.01")],
            "name": ["Zoë", None, ""],
            "ok": [True, False, None],
            "day": [dt.date(2025, 1, 2), None, dt.date(1999, 12, 31)],
            "at": [
                dt.datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
                None,
                dt.datetime(2030, 1, 1, tzinfo=UTC),
            ],
            "naive": [dt.datetime(2025, 1, 2, 3, 4, 5), None, dt.datetime(2000, 2, 29)],
            "clock": [dt.time(12, 30, 1), None, dt.time(0, 0)],
            "took": [dt.timedelta(seconds=90), None, dt.timedelta(microseconds=1)],
            "blob": [b"\x00\xff", None, b""],
        },
        schema_overrides={"price": pl.Decimal(12, 2)},
    )


def test_payloads_round_trip_every_type() -> None:
    frame = typed_frame()
    payloads, types = dlq.frame_payloads(frame)
    assert types["at"] == "datetime[UTC]" and types["naive"] == "datetime" and types["price"] == "decimal"
    assert payloads[1]["score"] == "nan" and payloads[0]["price"] == "10.50"
    back = dlq.frame_from_payloads(payloads, types)
    assert back.cast(frame.schema).equals(frame)  # NaN, infinity, NULL vs "", microseconds all survive


def test_hash_is_stable_and_the_same_for_pandas_and_polars() -> None:
    frame = typed_frame().drop("clock", "took", "blob")
    polars_hashes = [dlq.row_hash(p) for p in dlq.frame_payloads(frame)[0]]
    arrow_backed = frame.to_pandas(use_pyarrow_extension_array=True)
    assert [dlq.row_hash(p) for p in dlq.frame_payloads(arrow_backed)[0]] == polars_hashes
    # numpy-backed pandas, as the IO manager loads it: dates as objects; NaN and NULL are one value there
    numpy_backed = frame.drop("score").to_pandas()
    numpy_backed["day"] = pd.Series(frame.get_column("day").to_list(), dtype=object)
    expected = [dlq.row_hash(p) for p in dlq.frame_payloads(frame.drop("score"))[0]]
    assert [dlq.row_hash(p) for p in dlq.frame_payloads(numpy_backed)[0]] == expected
    assert len(set(polars_hashes)) == 3
    assert dlq.row_hash({"b": 1, "a": "x"}) == dlq.row_hash({"a": "x", "b": 1})  # key order is irrelevant


def rejected(row_id: int, email: str, cls: str = "InvalidEmail") -> dlq.Rejected:
    row = {"id": row_id, "email": email}
    return dlq.Rejected.of(
        row,
        {"id": "int", "email": "str"},
        stage="transform",
        error_class=cls,
        message="email is not of the form local@domain.tld",
    )


def test_dead_letters_commit_and_roll_back_with_the_data(wh: str, fresh_schema: str) -> None:
    target = TableRef("public", f"t_{fresh_schema}")
    origin = dlq.Origin("demo/people", run_id="run-1", step="demo__people", target=str(target))
    good = pl.DataFrame({"id": [1, 2], "email": ["a@b.co", "c@d.co"]})
    hook = lambda conn: dlq.record(conn, origin, [rejected(3, "bad at mail")])  # noqa: E731
    with psycopg.connect(wh) as conn:
        with pytest.raises(RuntimeError), conn.transaction():
            write_frame(conn, good, target, "truncate_insert", primary_key=["id"], on_commit=[hook])
            raise RuntimeError("the run dies before the commit")
        assert conn.execute("SELECT count(*) FROM etl.dead_letters").fetchone()[0] == 0
        assert conn.execute("SELECT to_regclass(%s)", (str(target),)).fetchone()[0] is None
        write_frame(conn, good, target, "truncate_insert", primary_key=["id"], on_commit=[hook])
        conn.commit()
        assert conn.execute(f"SELECT count(*) FROM {target}").fetchone()[0] == 2
        [letter] = dlq.fetch(conn, asset_key="demo/people")
        assert (letter.payload, letter.run_id, letter.step, letter.target) == (
            {"id": 3, "email": "bad at mail"},
            "run-1",
            "demo__people",
            str(target),
        )


def test_repeats_bump_attempts_and_statuses_move_as_documented(wh: str) -> None:
    a = dlq.Origin("demo/people", run_id="run-1")
    b = dlq.Origin("demo/people", run_id="run-2")
    with psycopg.connect(wh) as conn:
        # two identical rows in one batch are one entry
        assert dlq.record(conn, a, [rejected(1, "x"), rejected(1, "x"), rejected(2, "y")]) == 2
        assert dlq.record(conn, b, [rejected(1, "x", "Other"), rejected(2, "y")]) == 2
        conn.commit()
        by_id = {x.payload["id"]: x for x in dlq.fetch(conn, asset_key="demo/people")}
        assert {(i, x.attempts, x.run_id, x.error_class) for i, x in by_id.items()} == {
            (1, 2, "run-2", "Other"),
            (2, 2, "run-2", "InvalidEmail"),
        }
        assert "bad" not in repr(by_id[1]) and "payload" not in repr(by_id[1])  # reprs never show payloads

        assert dlq.discard(conn, ids=[by_id[1].id], by="tester") == 1
        assert dlq.mark_replayed(conn, [by_id[2].id], "replay-run") == 1
        conn.commit()
        assert dlq.counts(conn, "demo/people") == {
            ("demo/people", "discarded"): 1,
            ("demo/people", "replayed"): 1,
        }
        # failing again: a discarded row stays discarded, a replayed one is re-opened
        dlq.record(conn, b, [rejected(1, "x"), rejected(2, "y")])
        conn.commit()
        by_id = {x.payload["id"]: x for x in dlq.fetch(conn, asset_key="demo/people", status=None)}
        assert (by_id[1].status, by_id[1].attempts, by_id[1].resolved_run_id) == ("discarded", 3, "tester")
        assert (by_id[2].status, by_id[2].attempts, by_id[2].resolved_run_id) == ("pending", 3, None)

        dlq.mark_failed_again(
            conn, [dlq.FailedAgain(by_id[2].id, "replay:transform", "Still", "no")], "r3", "s"
        )
        conn.commit()
        [again] = dlq.fetch(conn, ids=[by_id[2].id])
        assert (again.attempts, again.error_class, again.stage, again.run_id) == (
            4,
            "Still",
            "replay:transform",
            "r3",
        )


def test_public_cannot_read_the_table_but_the_counts_view_has_no_payloads(wh: str) -> None:
    with psycopg.connect(wh, autocommit=True) as conn:
        acl = conn.execute(
            "SELECT relacl::text FROM pg_class WHERE oid = 'etl.dead_letters'::regclass"
        ).fetchone()[0]
        assert acl is None or "=r" not in acl.replace("}", ",").split(",")[0]
        assert not conn.execute(
            "SELECT has_table_privilege('public', 'etl.dead_letters', 'SELECT')"
        ).fetchone()[0]
        view_columns = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = 'etl' AND table_name = 'dead_letter_counts'"
            )
        }
        assert (
            "payload" not in view_columns and "error_message" not in view_columns and "rows" in view_columns
        )


def test_cli_lists_without_payloads_discards_and_replays(
    wh: str, etl_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ETL_WAREHOUSE_DSN", wh)
    now = dt.datetime(2025, 5, 1, tzinfo=UTC)
    types = {
        "id": "int",
        "first_name": "str",
        "last_name": "str",
        "email": "str",
        "created_at": "datetime[UTC]",
        "updated_at": "datetime[UTC]",
    }
    fixed = {
        "id": 5,
        "first_name": "Ann",
        "last_name": "Lee",
        "email": "ann@example.com",
        "created_at": now,
        "updated_at": now,
    }
    broken = {**fixed, "id": 6, "email": "ann.secret at example.com"}
    with psycopg.connect(wh) as conn:
        origin = dlq.Origin("clean/customers", run_id="run-1", target="clean.customers")
        dlq.record(
            conn,
            origin,
            [
                dlq.Rejected.of(fixed, types, stage="transform", error_class="Flaky", message="was broken"),
                dlq.Rejected.of(
                    broken, types, stage="transform", error_class="InvalidEmail", message="bad email"
                ),
                dlq.Rejected.of(
                    {**broken, "id": 7}, types, stage="transform", error_class="InvalidEmail", message="m"
                ),
            ],
        )
        conn.commit()
        ids = {x.payload["id"]: x.id for x in dlq.fetch(conn, asset_key="clean/customers")}

    assert main(["dlq", "list"]) == 0
    out = capsys.readouterr().out
    assert "clean/customers" in out and "pending" in out and "InvalidEmail" in out
    lines = out.splitlines()
    assert lines[0].split() == ["asset", "status", "rows"]  # every table has its header
    assert lines[1].split() == ["clean/customers", "pending", "3"]
    assert lines[3].split() == [
        "id", "asset", "partition", "stage", "error", "tries", "last", "failed", "status"
    ]
    assert lines[4].split()[-1] == "pending" and "None" not in out
    assert "ann.secret" not in out and "was broken" not in out  # neither payloads nor messages

    assert main(["dlq", "discard", "--id", str(ids[7])]) == 0
    assert "discarded 1 dead letter\n" in capsys.readouterr().out

    assert main(["dlq", "replay", "--asset", "clean/customers"]) == 0
    out = capsys.readouterr().out
    assert "clean/customers: 1 replayed, 1 failed again" in out
    with psycopg.connect(wh, autocommit=True) as conn:
        status = {x.payload["id"]: (x.status, x.attempts) for x in dlq.fetch(conn, status=None)}
        assert status == {5: ("replayed", 1), 6: ("pending", 2), 7: ("discarded", 1)}
        [run_id] = conn.execute(
            "SELECT resolved_run_id FROM etl.dead_letters WHERE status = 'replayed'"
        ).fetchone()
        assert run_id in out  # the replaying run's id, a real Dagster run
        assert conn.execute("SELECT id, email_domain FROM clean.customers").fetchall() == [(5, "example.com")]

    assert main(["dlq", "replay", "--asset", "clean/customers"]) == 0  # twice: nothing more is loaded
    assert "clean/customers: 0 replayed, 1 failed again" in capsys.readouterr().out
    with psycopg.connect(wh, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM clean.customers").fetchone()[0] == 1
