"""Every rule kind passing and failing on a real table, thresholds, samples, masking, YAML parsing."""

from __future__ import annotations

import polars as pl
import psycopg
import pytest
from psycopg import sql

from etl_assets.errors import ConfigError, MissingObject
from etl_assets.io.tables import TableRef
from etl_assets.quality.rules import MASK, Rule, evaluate, parse_rules

# id, email, amount, status, future?, category_id, a, b, nick
ROWS = [
    (1, "ann@example.com", 10, "paid", False, 1, 1, 2, None),
    (2, "ben@example.com", 20, "paid", False, 2, 1, 1, None),
    (3, "bad-email", 30, "open", False, 3, 2, 1, "c"),
    (4, "dan@example.com", -5, "paid", False, 1, 2, 2, "d"),
    (5, "eve@example.com", 50, "weird", False, 2, 3, 1, "e"),
    (6, "fay@example.com", 60, "paid", True, 3, 3, 2, "f"),
    (7, None, 70, "open", False, 1, 4, 1, "g"),
    (8, "gus@example.com", 80, "paid", False, 99, 4, 2, "h"),
    (9, "hal@example.com", 2_000_000, "paid", False, 2, 5, 1, "i"),
    (10, "ivy@example.com", 100, "open", False, 3, 1, 1, "j"),
]


@pytest.fixture
def table(warehouse_conn: psycopg.Connection, fresh_schema: str) -> TableRef:
    ref = TableRef(fresh_schema, "Orders T")  # a name that needs quoting
    cats = TableRef(fresh_schema, "cats")
    warehouse_conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY)").format(cats.ident))
    warehouse_conn.execute(sql.SQL("INSERT INTO {} VALUES (1), (2), (3)").format(cats.ident))
    warehouse_conn.execute(
        sql.SQL(
            """CREATE TABLE {} (id int PRIMARY KEY, email text, amount numeric(12,2), status text,
               created_at timestamptz, category_id int, a int, b int, nick text)"""
        ).format(ref.ident)
    )
    with warehouse_conn.cursor() as cur:
        for r in ROWS:
            cur.execute(
                sql.SQL(
                    "INSERT INTO {} VALUES (%s, %s, %s, %s, now() - interval '1 day' + "
                    "CASE WHEN %s THEN interval '400 days' ELSE interval '0' END, %s, %s, %s, %s)"
                ).format(ref.ident),
                r,
            )
    return ref


def run(conn: psycopg.Connection, table: TableRef, rule: Rule, **kw):
    return evaluate(conn, rule, table, **kw)


def failing_ids(result) -> list[int]:
    return [row["id"] for row in result.sample]


CASES = [
    # (failing rule, expected failing ids, passing rule)
    (
        Rule(name="r", kind="not_null", columns=["nick"]),
        [1, 2],
        Rule(name="r", kind="not_null", columns=["id", "status"]),
    ),
    (
        Rule(name="r", kind="unique", columns=["a", "b"]),
        [2, 10],
        Rule(name="r", kind="unique", columns=["id"]),
    ),
    (
        Rule(name="r", kind="accepted_values", columns=["status"], values=["paid", "open"]),
        [5],
        Rule(name="r", kind="accepted_values", columns=["status"], values=["paid", "open", "weird"]),
    ),
    (
        Rule(name="r", kind="range", columns=["amount"], min=0, max=999_999.99),
        [4, 9],
        Rule(name="r", kind="range", columns=["amount"], min=-5, max=2_000_000),
    ),
    (
        Rule(name="r", kind="pattern", columns=["email"], regex=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"),
        [3],
        Rule(name="r", kind="pattern", columns=["email"], regex=r"^\S+$"),
    ),
    (
        Rule(name="r", kind="not_in_future", columns=["created_at"]),
        [6],
        Rule(name="r", kind="not_in_future", columns=["created_at"], tolerance="500 days"),
    ),
    (
        Rule(name="r", kind="sql", expression="status <> 'weird' AND amount < 1000"),
        [5, 9],
        Rule(name="r", kind="sql", expression="id > 0"),
    ),
    (
        Rule(name="r", kind="polars", expression=pl.col("amount") >= 0),
        [4],
        Rule(name="r", kind="polars", expression="amount > -10"),
    ),
]


@pytest.mark.parametrize("failing,ids,passing", CASES, ids=[c[0].kind for c in CASES])
def test_rule_kind_fails_and_passes(warehouse_conn, table, failing, ids, passing) -> None:
    bad = run(warehouse_conn, table, failing)
    assert (bad.passed, bad.total_rows, bad.failing_rows) == (False, 10, len(ids))
    assert failing_ids(bad) == ids
    assert bad.failing_percent == pytest.approx(100.0 * len(ids) / 10)
    good = run(warehouse_conn, table, passing)
    assert (good.passed, good.failing_rows, good.sample) == (True, 0, [])


def test_references_rule(warehouse_conn, table) -> None:
    ref = f"{table.schema}.cats"
    bad = run(
        warehouse_conn,
        table,
        Rule(name="r", kind="references", columns=["category_id"], to_table=ref, to_columns=["id"]),
    )
    assert (bad.passed, bad.failing_rows, failing_ids(bad)) == (False, 1, [8])
    assert bad.sample == [{"id": 8, "category_id": 99}]
    good = run(warehouse_conn, table, Rule(name="r", kind="references", columns=["id"], to_table=str(table)))
    assert (good.passed, good.failing_rows) == (True, 0)


def test_custom_sql_query_rule(warehouse_conn, table) -> None:
    query = (
        sql.SQL("SELECT id, amount FROM {} WHERE amount > 1000").format(table.ident).as_string(warehouse_conn)
    )
    bad = run(warehouse_conn, table, Rule(name="r", kind="sql", query=query))
    assert (bad.passed, bad.failing_rows) == (False, 1)
    assert bad.sample == [{"id": 9, "amount": 2_000_000.0}]
    good = run(warehouse_conn, table, Rule(name="r", kind="sql", query=query.replace("1000", "1e9")))
    assert (good.passed, good.failing_rows) == (True, 0)


def test_row_count_bounds(warehouse_conn, table) -> None:
    ok = run(warehouse_conn, table, Rule(name="r", kind="row_count", min=1, max=10))
    assert (ok.passed, ok.observed["row_count"], ok.failing_rows) == (True, 10, 0)
    low = run(warehouse_conn, table, Rule(name="r", kind="row_count", min=11))
    assert (low.passed, low.failing_rows, low.failing_percent) == (False, 1, 100.0)
    high = run(warehouse_conn, table, Rule(name="r", kind="row_count", max=7))
    assert (high.passed, high.failing_rows) == (False, 3)


@pytest.mark.parametrize(
    "limits,passed",
    [
        ({}, False),
        ({"max_failing_rows": 2}, True),
        ({"max_failing_rows": 1}, False),
        ({"max_failing_percent": 20}, True),
        ({"max_failing_percent": 19.9}, False),
        ({"max_failing_rows": 5, "max_failing_percent": 10}, False),  # every limit given must hold
    ],
)
def test_thresholds(warehouse_conn, table, limits, passed) -> None:
    result = run(warehouse_conn, table, Rule(name="r", kind="not_null", columns=["nick"], **limits))
    assert (result.failing_rows, result.failing_percent, result.passed) == (2, 20.0, passed)


def test_sample_size_keys_and_masking(warehouse_conn, table) -> None:
    rule = Rule(name="r", kind="range", columns=["amount"], min=1000, sample_size=3)
    result = run(warehouse_conn, table, rule, sensitive=["amount"])
    assert result.failing_rows == 9
    assert result.sample == [{"id": 1, "amount": MASK}, {"id": 2, "amount": MASK}, {"id": 3, "amount": MASK}]
    definition = rule.definition(["amount"])
    assert "min" not in definition and definition["bounds"] == MASK
    # keys can be chosen explicitly (a table without a primary key, or a natural key)
    other = run(
        warehouse_conn,
        table,
        Rule(name="r", kind="pattern", columns=["email"], regex="@"),
        keys=["a", "b"],
        sensitive=["email"],
    )
    assert other.sample == [{"a": 2, "b": 1, "email": MASK}]


def test_polars_rule_masks_and_streams(warehouse_conn, table, monkeypatch) -> None:
    from etl_assets.quality import rules as rules_module

    monkeypatch.setattr(rules_module, "POLARS_CHUNK_ROWS", 3)  # several chunks over 10 rows
    rule = Rule(name="r", kind="polars", expression=pl.col("email").str.contains("@"))
    result = run(warehouse_conn, table, rule, sensitive=["email"])
    assert (result.total_rows, result.failing_rows) == (10, 2)  # the malformed one and the NULL one
    assert result.sample == [{"id": 3, "email": MASK}, {"id": 7, "email": None}]


def test_polars_rule_declared_as_a_function_is_built_when_it_runs(warehouse_conn, table) -> None:
    """The function form (what the demo uses, so that declaring it does not load polars) gives the same
    result and the same recorded definition as the expression itself; a function that does not give
    an expression fails the check with a message naming it."""
    calls = []

    def amount_not_negative(polars):
        calls.append(polars)
        return polars.col("amount") >= 0

    lazy = Rule(name="r", kind="polars", expression=amount_not_negative)
    assert calls == []  # declaring builds nothing
    built = run(warehouse_conn, table, lazy)
    direct = run(warehouse_conn, table, Rule(name="r", kind="polars", expression=pl.col("amount") >= 0))
    assert (built.passed, built.total_rows, built.failing_rows) == (False, 10, 1)
    assert failing_ids(built) == failing_ids(direct) == [4]
    assert lazy.definition()["expression"] == direct.rule.definition()["expression"]
    assert calls == [pl]  # built once, with the polars module

    with pytest.raises(ConfigError, match="kind polars needs 'expression'"):
        Rule(name="r", kind="polars", expression=42)
    with pytest.raises(ConfigError, match="'bad': its expression function returned str, not a polars"):
        run(warehouse_conn, table, Rule(name="bad", kind="polars", expression=lambda p: "x"))
    boom = Rule(name="boom", kind="polars", expression=lambda p: p.nope())
    with pytest.raises(ConfigError, match=r"'boom': building its polars expression failed: .*nope"):
        run(warehouse_conn, table, boom)
    # the failed check's recorded definition names the function instead of failing in turn
    assert boom.definition()["expression"].startswith("function ")
    assert "<lambda>" in boom.definition()["expression"]


def test_missing_column_is_named(warehouse_conn, table) -> None:
    with pytest.raises(MissingObject, match="nope"):
        run(warehouse_conn, table, Rule(name="r", kind="not_null", columns=["nope"]))


def test_parse_rules_from_yaml_items() -> None:
    rules = parse_rules(
        "shop.orders",
        [
            {"name": "no_null_ids", "kind": "not_null", "column": "id"},
            {
                "name": "amounts",
                "kind": "range",
                "column": "amount",
                "min": 0,
                "severity": "warning",
                "max_failing_percent": 5,
            },
            {
                "name": "fk",
                "kind": "references",
                "column": "category_id",
                "to_table": "raw.categories",
                "to_column": "id",
                "severity": "info",
            },
            {"name": "custom", "kind": "polars", "expression": "amount >= 0"},
        ],
    )
    assert [(r.name, r.kind, r.columns, r.severity) for r in rules] == [
        ("no_null_ids", "not_null", ("id",), "error"),
        ("amounts", "range", ("amount",), "warning"),
        ("fk", "references", ("category_id",), "info"),
        ("custom", "polars", (), "error"),
    ]
    assert rules[1].max_failing_percent == 5 and rules[2].to_columns == ("id",)


@pytest.mark.parametrize(
    "item,message",
    [
        ({"name": "x", "kind": "not_null", "column": "id", "colour": 1}, "check 'x': unknown key 'colour'"),
        ({"name": "x", "kind": "nonsense"}, "check 'x': unknown kind 'nonsense'"),
        ({"name": "x", "kind": "pattern", "column": "email"}, "check 'x': kind pattern needs 'regex'"),
        ({"name": "x", "kind": "range", "column": "a"}, "needs 'min', 'max' or both"),
        ({"name": "x", "kind": "not_null", "column": "id", "severity": "fatal"}, "unknown severity 'fatal'"),
        (
            {"name": "x", "kind": "not_null", "column": "id", "max_failing_percent": 120},
            "max_failing_percent",
        ),
        ({"kind": "not_null", "column": "id"}, "check #1: missing required key 'name'"),
        ({"name": "bad name", "kind": "not_null", "column": "id"}, "letters, digits and underscores"),
        ({"name": "x", "kind": "sql"}, "exactly one of 'expression'"),
        ({"name": "x", "kind": "not_null", "columns": "id"}, "'columns' must be a list"),
        ("not_null", "each check must be a mapping"),
    ],
)
def test_parse_rules_errors_name_table_check_and_key(item, message) -> None:
    with pytest.raises(ConfigError) as err:
        parse_rules("shop.orders", [item])
    assert "Table shop.orders" in str(err.value)
    assert message in str(err.value)


def test_parse_rules_rejects_duplicate_names() -> None:
    item = {"name": "x", "kind": "not_null", "column": "id"}
    with pytest.raises(ConfigError, match="share the name 'x'"):
        parse_rules("shop.orders", [item, item])


def test_accepted_values_with_null_in_list_and_date_range(warehouse_conn, table) -> None:
    values = run(
        warehouse_conn,
        table,
        Rule(name="r", kind="accepted_values", columns=["status"], values=[None, "paid", "open"]),
    )
    assert (values.failing_rows, failing_ids(values)) == (1, [5])
    dates = run(
        warehouse_conn,
        table,
        Rule(name="r", kind="range", columns=["created_at"], min="2000-01-01", max="2999-12-31"),
    )
    assert (dates.passed, dates.failing_rows) == (True, 0)


@pytest.mark.parametrize(
    ("item", "text"),
    [
        ({"name": "r", "kind": "range", "column": "a", "min": 0, "max": 9}, "a lies in [0, 9] (error)"),
        ({"name": "r", "kind": "range", "column": "a", "min": 0}, "a is at least 0 (error)"),
        ({"name": "r", "kind": "range", "column": "a", "max": 9}, "a is at most 9 (error)"),
        ({"name": "r", "kind": "row_count", "min": 1}, "row count is at least 1 (error)"),
    ],
)
def test_describe_never_shows_a_missing_bound_as_none(item, text) -> None:
    (rule,) = parse_rules("shop.orders", [item])
    assert rule.describe() == text and "None" not in rule.describe()
