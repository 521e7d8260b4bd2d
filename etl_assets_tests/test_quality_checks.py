"""Rules as asset checks in REAL runs: an error check blocks downstream assets, a warning does not,
info passes with its measurement; every result carries counts, a sample and the rule."""

from __future__ import annotations

import dagster as dg
import polars
import psycopg
import pytest
from psycopg import sql

from etl_assets.db import PostgresResource
from etl_assets.io.tables import TableRef
from etl_assets.quality.checks import RuleSet, build_asset_checks
from etl_assets.quality.rules import MASK, Rule


def graph(schema: str, dsn: str):
    """``<schema>/src`` (a table with one NULL id and one bad e-mail) -> ``<schema>/down``."""
    src_key = dg.AssetKey([schema, "src"])
    down_key = dg.AssetKey([schema, "down"])

    @dg.asset(key=src_key)
    def src() -> dg.MaterializeResult:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, "src")))
            conn.execute(
                sql.SQL("CREATE TABLE {} (k int, id int, email text)").format(sql.Identifier(schema, "src"))
            )
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} VALUES (1, 1, 'a@x.io'), (2, NULL, 'b@x.io'), (3, 3, 'broken')"
                ).format(sql.Identifier(schema, "src"))
            )
        return dg.MaterializeResult()

    @dg.asset(key=down_key, deps=[src_key])
    def down() -> dg.MaterializeResult:
        return dg.MaterializeResult()

    return src, down, src_key, down_key


def materialized_keys(result: dg.ExecuteInProcessResult) -> set[dg.AssetKey]:
    return {
        e.event_specific_data.materialization.asset_key for e in result.get_asset_materialization_events()
    }


def evaluations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


@pytest.fixture
def warehouse(warehouse_dsn: str) -> PostgresResource:
    return PostgresResource(dsn=warehouse_dsn)


def test_failing_error_check_blocks_downstream_in_a_real_run(fresh_schema, warehouse_dsn, warehouse) -> None:
    src, down, src_key, down_key = graph(fresh_schema, warehouse_dsn)
    rules = RuleSet(
        src_key,
        (
            Rule(name="no_null_ids", kind="not_null", columns=["id"], severity="error"),
            Rule(name="valid_emails", kind="pattern", columns=["email"], regex="@", severity="warning"),
            Rule(name="ids_measured", kind="not_null", columns=["id"], severity="info"),
        ),
        keys=("k",),
        sensitive=("email",),
    )
    result, got = _materialize_with_rules(src, down, rules, warehouse)
    assert not result.success
    assert materialized_keys(result) == {src_key}  # down never ran
    down_step = down_key.to_python_identifier()
    assert [
        e for e in result.all_events if e.step_key == down_step and e.event_type_value == "STEP_START"
    ] == []
    assert any(
        "blocking asset check failed" in str(e.event_specific_data)
        and "no_null_ids" in str(e.event_specific_data)
        for e in result.all_events
        if e.event_type_value == "STEP_FAILURE"
    )
    assert set(got) == {"no_null_ids", "valid_emails", "ids_measured"}
    err = got["no_null_ids"]
    assert (err.passed, err.severity, err.blocking) == (False, dg.AssetCheckSeverity.ERROR, True)
    assert err.metadata["failing_rows"].value == 1
    assert err.metadata["failing_percent"].value == pytest.approx(100 / 3)
    assert err.metadata["sample"].value == [{"k": 2, "id": None}]
    assert err.metadata["rule"].value == {
        "name": "no_null_ids",
        "kind": "not_null",
        "severity": "error",
        "columns": ["id"],
    }
    warn = got["valid_emails"]
    assert (warn.passed, warn.severity) == (False, dg.AssetCheckSeverity.WARN)
    assert warn.metadata["sample"].value == [{"k": 3, "email": MASK}]
    info = got["ids_measured"]
    assert info.passed is True and info.metadata["failing_rows"].value == 1
    assert info.metadata["threshold_met"].value is False


def test_failing_warning_check_lets_downstream_run(fresh_schema, warehouse_dsn, warehouse) -> None:
    src, down, src_key, down_key = graph(fresh_schema, warehouse_dsn)
    rules = RuleSet(
        src_key,
        (
            Rule(name="no_null_ids", kind="not_null", columns=["id"], severity="warning"),
            Rule(name="rows", kind="row_count", min=1, severity="error"),  # passes: blocking but green
        ),
    )
    result, got = _materialize_with_rules(src, down, rules, warehouse)
    assert result.success
    assert materialized_keys(result) == {src_key, down_key}
    assert (got["no_null_ids"].passed, got["no_null_ids"].severity) == (False, dg.AssetCheckSeverity.WARN)
    assert got["rows"].passed is True and got["rows"].metadata["observed_row_count"].value == 3


def test_threshold_turns_a_blocking_failure_into_a_pass(fresh_schema, warehouse_dsn, warehouse) -> None:
    src, down, src_key, down_key = graph(fresh_schema, warehouse_dsn)
    rules = RuleSet(
        src_key, (Rule(name="no_null_ids", kind="not_null", columns=["id"], max_failing_percent=40),)
    )
    result, _ = _materialize_with_rules(src, down, rules, warehouse)
    assert result.success and materialized_keys(result) == {src_key, down_key}
    assert evaluations(result)["no_null_ids"].metadata["failing_rows"].value == 1


def _materialize_with_rules(src, down, rules, warehouse):
    """The two test assets and the rules' checks, materialized on a test instance: the result and the
    check evaluations by name."""
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [src, down, build_asset_checks(rules)],
            resources={"warehouse": warehouse},
            instance=instance,
            raise_on_error=False,
        )
        return result, evaluations(result)


def test_broken_rule_fails_with_reason_and_others_still_report(
    fresh_schema, warehouse_dsn, warehouse
) -> None:
    src, down, src_key, _ = graph(fresh_schema, warehouse_dsn)
    rules = RuleSet(
        src_key,
        (
            Rule(name="broken", kind="sql", expression="no_such_column > 0", severity="warning"),
            Rule(name="fine", kind="not_null", columns=["k"]),
        ),
        table=TableRef(fresh_schema, "src"),
    )
    result, got = _materialize_with_rules(src, down, rules, warehouse)
    assert got["broken"].passed is False
    assert "no_such_column" in got["broken"].metadata["error"].value
    assert got["fine"].passed is True
    assert result.success


def test_polars_rules_declared_as_functions_in_a_real_run(fresh_schema, warehouse_dsn, warehouse) -> None:
    """Built when the check step runs: the working one counts its failing row and records the built
    expression; the broken one fails with its reason, and the others still report."""
    src, down, src_key, _ = graph(fresh_schema, warehouse_dsn)
    rules = RuleSet(
        src_key,
        (
            Rule(name="emails", kind="polars", severity="warning",
                 expression=lambda pl: pl.col("email").str.contains("@")),
            Rule(name="broken", kind="polars", severity="warning", expression=lambda pl: pl.nope()),
            Rule(name="fine", kind="not_null", columns=["k"]),
        ),
        table=TableRef(fresh_schema, "src"),
    )
    result, got = _materialize_with_rules(src, down, rules, warehouse)
    assert got["emails"].passed is False
    assert got["emails"].metadata["failing_rows"].value == 1
    built = polars.col("email").str.contains("@")
    assert got["emails"].metadata["rule"].value["expression"] == str(built)
    assert got["broken"].passed is False
    assert "building its polars expression failed" in got["broken"].metadata["error"].value
    assert got["broken"].metadata["rule"].value["expression"].startswith("function ")
    assert got["fine"].passed is True
    assert result.success


def test_checks_run_read_only_with_a_statement_timeout(
    fresh_schema, warehouse_dsn, warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    """User SQL in a check cannot write (directly, through a function, or with nextval): the rule fails
    with a message saying so and nothing changes; a slow one is cancelled by the statement timeout."""
    src, down, src_key, _ = graph(fresh_schema, warehouse_dsn)
    audit = sql.Identifier(fresh_schema, "audit")
    seq = sql.Identifier(fresh_schema, "ticket")
    with psycopg.connect(warehouse_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (note text)").format(audit))
        conn.execute(sql.SQL("CREATE SEQUENCE {}").format(seq))
        conn.execute(
            sql.SQL(
                "CREATE FUNCTION {}(k int) RETURNS boolean LANGUAGE plpgsql AS "
                "$$ BEGIN INSERT INTO {} VALUES ('checked ' || k); RETURN true; END $$"
            ).format(sql.Identifier(fresh_schema, "noisy"), audit)
        )
    noisy = f'"{fresh_schema}".noisy(k)'
    rules = RuleSet(
        src_key,
        (
            Rule(name="writes_via_function", kind="sql", expression=noisy, severity="warning"),
            Rule(name="takes_a_ticket", kind="sql", expression=f"nextval('\"{fresh_schema}\".ticket') > 0",
                 severity="warning"),
            Rule(name="slow", kind="sql", expression="pg_sleep(2) IS NOT NULL", severity="warning"),
            Rule(  # tries to end the read-only transaction and write in a second statement
                name="smuggles",
                kind="sql",
                query=f"SELECT 1) f); COMMIT; INSERT INTO \"{fresh_schema}\".audit VALUES ('smuggled'); "
                "SELECT (SELECT count(*) FROM (SELECT 1",
                severity="warning",
            ),
            Rule(name="fine", kind="sql", expression="k > 0"),
        ),
        table=TableRef(fresh_schema, "src"),
    )
    monkeypatch.setenv("ETL_CHECK_STATEMENT_TIMEOUT", "500ms")
    result, _ = _materialize_with_rules(src, down, rules, warehouse)
    got = evaluations(result)
    assert result.success  # the failing rules are warnings; the read-only rule passes
    assert got["fine"].passed is True and got["fine"].metadata["failing_rows"].value == 0
    for name, what in (("writes_via_function", "INSERT"), ("takes_a_ticket", "nextval()")):
        error = got[name].metadata["error"].value
        assert got[name].passed is False
        assert error.startswith(
            f"ReadOnlySqlTransaction: check '{name}' on {fresh_schema}.src tried to write"
        )
        assert f"cannot execute {what} in a read-only transaction" in error
        assert "nothing was changed" in error and "\n" not in error
    smuggled = got["smuggles"].metadata["error"].value
    assert got["smuggles"].passed is False
    assert smuggled == "SyntaxError: cannot insert multiple commands into a prepared statement"
    slow = got["slow"].metadata["error"].value
    assert slow.startswith(f"QueryCanceled: check 'slow' on {fresh_schema}.src ran longer than the "
                           "statement timeout 500ms") and "ETL_CHECK_STATEMENT_TIMEOUT" in slow
    with psycopg.connect(warehouse_dsn, autocommit=True) as conn:
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(audit)).fetchone()[0] == 0
        ticket = conn.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(seq)).fetchone()
        assert ticket == (1, False)  # nextval never advanced it


def test_check_statement_timeout_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from etl_assets.errors import ConfigError
    from etl_assets.quality.checks import check_statement_timeout

    monkeypatch.delenv("ETL_CHECK_STATEMENT_TIMEOUT", raising=False)
    assert check_statement_timeout() == "5min"
    monkeypatch.setenv("ETL_CHECK_STATEMENT_TIMEOUT", "30s")
    assert check_statement_timeout() == "30s"
    monkeypatch.setenv("ETL_CHECK_STATEMENT_TIMEOUT", "5 minutes'; DROP")
    with pytest.raises(ConfigError, match=r"ETL_CHECK_STATEMENT_TIMEOUT=.*is not a duration"):
        check_statement_timeout()


def test_rules_for_uses_the_assets_target_table(fresh_schema, warehouse_dsn, warehouse, etl_env) -> None:
    """Python rules on an asset whose IO-manager ``target`` differs from its key run on the target."""
    from etl_assets.quality.checks import rules_for
    from etl_assets.quality.defs import apply_quality

    key = dg.AssetKey(["qa_target", fresh_schema])

    @dg.asset(key=key, metadata={"target": f"{fresh_schema}.real_table"})
    def stored() -> dg.MaterializeResult:
        with psycopg.connect(warehouse_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(fresh_schema, "real_table"))
            )
            conn.execute(
                sql.SQL("INSERT INTO {} VALUES (1), (NULL)").format(
                    sql.Identifier(fresh_schema, "real_table")
                )
            )
        return dg.MaterializeResult()

    rules_for(key, [Rule(name="ids_present", kind="not_null", columns=["id"], severity="warning")])
    defs = apply_quality(dg.Definitions(assets=[stored]))
    checks = [c for c in defs.asset_checks if any(k.name == "ids_present" for k in c.check_keys)]
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [*defs.assets, *checks], resources={"warehouse": warehouse}, instance=instance
        )
        got = evaluations(result)["ids_present"]
    assert got.metadata["table"].value == f"{fresh_schema}.real_table"
    assert (got.passed, got.metadata["failing_rows"].value) == (False, 1)


def test_error_rule_can_route_failing_rows_to_the_dead_letter_table(
    fresh_schema, warehouse_dsn, warehouse, warehouse_conn
) -> None:
    src, down, src_key, down_key = graph(fresh_schema, warehouse_dsn)
    rules = RuleSet(
        src_key,
        (
            Rule(name="no_null_ids", kind="not_null", columns=["id"], on_fail="dead_letter"),
            Rule(name="valid_emails", kind="pattern", columns=["email"], regex="@", severity="warning"),
        ),
    )
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [src, down, build_asset_checks(rules)], resources={"warehouse": warehouse}, instance=instance
        )
        got = evaluations(result)
    assert result.success and materialized_keys(result) == {src_key, down_key}  # not blocked
    check = got["no_null_ids"]
    assert check.passed is True
    assert (check.metadata["failing_rows"].value, check.metadata["observed_dead_lettered"].value) == (1, 1)
    assert check.metadata["rule"].value["on_fail"] == "dead_letter"
    remaining = warehouse_conn.execute(
        sql.SQL("SELECT k FROM {} ORDER BY k").format(sql.Identifier(fresh_schema, "src"))
    ).fetchall()
    assert remaining == [(1,), (3,)]
    letters = warehouse_conn.execute(
        "SELECT stage, error_class, payload, status, target FROM etl.dead_letters WHERE asset_key = %s",
        (src_key.to_user_string(),),
    ).fetchall()
    assert letters == [
        (
            "quality:no_null_ids",
            "QualityRuleFailed",
            {"k": 2, "id": None, "email": "b@x.io"},
            "pending",
            f"{fresh_schema}.src",
        )
    ]


def test_dead_letter_routing_needs_an_error_rule() -> None:
    from etl_assets.errors import ConfigError

    with pytest.raises(ConfigError, match="on_fail: dead_letter needs severity error"):
        Rule(name="x", kind="not_null", columns=["id"], severity="warning", on_fail="dead_letter")
    with pytest.raises(ConfigError, match="on_fail: dead_letter needs severity error"):
        Rule(name="x", kind="row_count", min=1, on_fail="dead_letter")


def test_rules_on_a_partitioned_asset_look_at_its_partition(fresh_schema, warehouse_dsn, warehouse) -> None:
    """A bad row on day 1 fails day 1's check only; day 2's run checks day 2's rows."""
    table = sql.Identifier(fresh_schema, "daily")
    with psycopg.connect(warehouse_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int, day date, amount int)").format(table))
        conn.execute(
            sql.SQL(
                "INSERT INTO {} VALUES (1, '2026-01-01', -5), (2, '2026-01-01', 5), (3, '2026-01-02', 7)"
            ).format(table)
        )
    key = dg.AssetKey([fresh_schema, "daily"])

    @dg.asset(
        key=key, partitions_def=dg.DailyPartitionsDefinition(start_date="2026-01-01", end_date="2026-01-03")
    )
    def daily() -> dg.MaterializeResult:
        return dg.MaterializeResult()

    rules = RuleSet(
        key,
        (Rule(name="positive", kind="range", columns=["amount"], min=0),),
        keys=("id",),
        partition_expr="day",
    )
    with dg.instance_for_test() as instance:
        outcome = {}
        for day in ("2026-01-01", "2026-01-02"):
            result = dg.materialize(
                [daily, build_asset_checks(rules)],
                resources={"warehouse": warehouse},
                instance=instance,
                partition_key=day,
                raise_on_error=False,
            )
            check = evaluations(result)["positive"]
            outcome[day] = (
                check.passed,
                check.metadata["total_rows"].value,
                check.metadata["failing_rows"].value,
                check.metadata["partition"].value,
            )
    assert outcome == {"2026-01-01": (False, 2, 1, "2026-01-01"), "2026-01-02": (True, 1, 0, "2026-01-02")}
