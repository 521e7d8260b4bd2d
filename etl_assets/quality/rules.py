"""Data-quality rules: what a rule is, how it is declared, and how it is evaluated in the warehouse.

A :class:`Rule` names one expectation about one table (not null, unique, accepted values, range,
pattern, not in the future, references, row count bounds, a custom SQL predicate or query, a custom
polars expression), a severity (``error`` | ``warning`` | ``info``) and a tolerance (at most N failing
rows and/or P percent).

Every kind except ``polars`` is compiled to SQL and runs inside the warehouse: one statement counts
the table's rows and the failing rows (one scan for predicate kinds), a second fetches a small,
ordered sample of failing rows with the table's key columns. Nothing but the counts and the sample
crosses the wire, so a rule costs one scan of the table however big it is. The ``polars`` kind
streams only the columns it names (plus the keys) through a server-side cursor in bounded chunks and
evaluates the expression per chunk, so memory stays flat; its expression must be row-wise.

Why not dataframely or pandera: both validate frames in memory; our tables live in PostgreSQL, where
a set-based SQL predicate gives the failing rows, their count and a keyed sample without moving the
table. For the one in-memory kind a single polars expression ``frame.filter(~expr)`` already returns
exactly the failing rows (dataframely's ``filter`` would need a schema class per rule, pandera's
polars backend drops invalid rows without saying why), so no extra dependency earns its place.

Columns declared *sensitive* are masked (``***``) in samples and in the rule definition recorded in
metadata.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import math
import re
import sys
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from etl_assets.errors import ConfigError, MissingObject
from etl_assets.io.tables import TableRef

if TYPE_CHECKING:  # polars loads when a polars rule runs
    import polars as pl

SEVERITIES = ("error", "warning", "info")
MASK = "***"
DEFAULT_SAMPLE_SIZE = 5
POLARS_CHUNK_ROWS = 50_000
_NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")

# kind -> (required keys, optional keys) beyond the keys every rule accepts.
_COMMON_KEYS = {
    "name",
    "kind",
    "severity",
    "description",
    "max_failing_rows",
    "max_failing_percent",
    "sample_size",
}
KINDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "not_null": (frozenset({"columns"}), frozenset()),
    "unique": (frozenset({"columns"}), frozenset()),
    "accepted_values": (frozenset({"columns", "values"}), frozenset()),
    "range": (frozenset({"columns"}), frozenset({"min", "max"})),
    "pattern": (frozenset({"columns", "regex"}), frozenset()),
    "not_in_future": (frozenset({"columns"}), frozenset({"tolerance"})),
    "references": (frozenset({"columns", "to_table"}), frozenset({"to_columns"})),
    "row_count": (frozenset(), frozenset({"min", "max"})),
    "sql": (frozenset(), frozenset({"expression", "query"})),
    "polars": (frozenset({"expression"}), frozenset()),
}
_SINGLE_COLUMN_KINDS = {"accepted_values", "range", "pattern", "not_in_future"}
# Kinds whose failing rows can be moved to the dead-letter table (a SQL condition on one row).
ROUTABLE_KINDS = frozenset(
    {"not_null", "unique", "accepted_values", "range", "pattern", "not_in_future", "references", "sql"}
)


@dataclass(frozen=True, eq=False)  # eq=False: a polars Expr has no boolean equality
class Rule:
    """One data-quality expectation on one table.

    ``expression`` means, per kind: ``sql`` a SQL boolean predicate over the table's columns that is
    true for a *valid* row (rows where it is false or NULL fail); ``polars`` a polars expression
    (``pl.Expr``, or SQL text turned into one with ``polars.sql_expr``) true for a valid row, or a
    function that takes the polars module and returns that expression: it is built when the check
    runs, so declaring the rule does not load polars into every process that loads the Definitions.
    ``query`` (kind ``sql``) is a whole SELECT over the warehouse returning the failing rows.
    Thresholds: with neither set a single failing row fails the rule; otherwise every limit given
    must hold (``failing <= max_failing_rows`` and ``percent <= max_failing_percent``).
    """

    name: str
    kind: str
    columns: tuple[str, ...] = ()
    severity: str = "error"
    description: str = ""
    max_failing_rows: int | None = None
    max_failing_percent: float | None = None
    values: tuple[Any, ...] = ()
    min: Any = None
    max: Any = None
    regex: str | None = None
    tolerance: str | None = None
    to_table: str | None = None
    to_columns: tuple[str, ...] = ()
    expression: Any = None
    query: str | None = None
    sample_size: int = DEFAULT_SAMPLE_SIZE
    on_fail: str = "block"  # "block" | "dead_letter" (error rules on row-level kinds only)

    def __post_init__(self) -> None:
        # Normalise list-ish fields so Rule(columns=["id"]) and Rule(columns="id") both work.
        for name in ("columns", "to_columns", "values"):
            value = getattr(self, name)
            if isinstance(value, str) and name != "values":
                object.__setattr__(self, name, (value,))
            elif not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        problem = self._problem()
        if problem:
            raise ConfigError(f"Check {self.name!r}: {problem}")

    def _problem(self) -> str | None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            return "the name must be letters, digits and underscores (it becomes the Dagster check name)"
        if self.kind not in KINDS:
            return f"unknown kind {self.kind!r}; allowed: {', '.join(KINDS)}"
        if self.severity not in SEVERITIES:
            return f"unknown severity {self.severity!r}; allowed: {', '.join(SEVERITIES)}"
        if self.max_failing_rows is not None and (
            not isinstance(self.max_failing_rows, int)
            or isinstance(self.max_failing_rows, bool)
            or self.max_failing_rows < 0
        ):
            return "max_failing_rows must be a whole number >= 0"
        if self.max_failing_percent is not None and (
            not isinstance(self.max_failing_percent, int | float)
            or isinstance(self.max_failing_percent, bool)
            or not 0 <= self.max_failing_percent <= 100
        ):
            return "max_failing_percent must be a number between 0 and 100"
        if self.on_fail not in ("block", "dead_letter"):
            return f"unknown on_fail {self.on_fail!r}; allowed: block, dead_letter"
        if self.on_fail == "dead_letter" and (
            self.severity != "error" or self.kind not in ROUTABLE_KINDS or self.query is not None
        ):
            return (
                "on_fail: dead_letter needs severity error and a row-level kind "
                f"({', '.join(sorted(ROUTABLE_KINDS))}; kind sql with an expression)"
            )
        if not isinstance(self.sample_size, int) or not 0 <= self.sample_size <= 100:
            return "sample_size must be a whole number between 0 and 100"
        if any(not isinstance(c, str) or not c for c in self.columns + self.to_columns):
            return "column names must be non-empty strings"
        required, _ = KINDS[self.kind]
        if "columns" in required and not self.columns:
            return f"kind {self.kind} needs 'column' or 'columns'"
        if self.kind in _SINGLE_COLUMN_KINDS and len(self.columns) != 1:
            return f"kind {self.kind} takes exactly one column, got {list(self.columns)}"
        if self.kind == "accepted_values" and not self.values:
            return "kind accepted_values needs a non-empty 'values' list"
        if self.kind in ("range", "row_count") and self.min is None and self.max is None:
            return f"kind {self.kind} needs 'min', 'max' or both"
        if self.kind == "row_count" and any(
            v is not None and (not isinstance(v, int) or isinstance(v, bool)) for v in (self.min, self.max)
        ):
            return "row_count bounds must be whole numbers"
        if self.kind == "pattern" and (not isinstance(self.regex, str) or not self.regex):
            return "kind pattern needs a 'regex' (a PostgreSQL POSIX regular expression)"
        if self.kind == "references":
            if not isinstance(self.to_table, str) or not self.to_table:
                return "kind references needs 'to_table' (schema.table)"
            if self.to_columns and len(self.to_columns) != len(self.columns):
                return "'to_columns' must name as many columns as 'columns'"
        if self.kind == "sql" and (self.expression is None) == (self.query is None):
            return (
                "kind sql needs exactly one of 'expression' (true for a valid row) "
                "or 'query' (returns failing rows)"
            )
        if self.kind == "sql" and self.expression is not None and not isinstance(self.expression, str):
            return "'expression' of kind sql must be SQL text"
        if self.kind == "polars":
            if isinstance(self.expression, str):
                import polars as pl

                try:
                    object.__setattr__(self, "expression", pl.sql_expr(self.expression))
                except Exception as exc:
                    return f"'expression' is not a valid polars SQL expression: {exc}"
            elif not _is_polars_expr(self.expression) and not callable(self.expression):
                return (
                    "kind polars needs 'expression': a polars expression, SQL text for polars.sql_expr, "
                    "or a function taking the polars module and returning the expression"
                )
        if (
            self.kind == "not_in_future"
            and self.tolerance is not None
            and not isinstance(self.tolerance, str)
        ):
            return "'tolerance' must be an interval as text, e.g. '5 minutes'"
        return None

    def polars_expression(self) -> pl.Expr:
        """The expression of a ``polars`` rule, built now if it was declared as a function."""
        expression = self.expression
        if _is_polars_expr(expression) or not callable(expression):
            return expression
        import polars as pl

        try:
            built = expression(pl)
        except Exception as exc:
            raise ConfigError(f"Check {self.name!r}: building its polars expression failed: {exc}") from exc
        if not isinstance(built, pl.Expr):
            raise ConfigError(
                f"Check {self.name!r}: its expression function returned {type(built).__name__}, "
                "not a polars expression."
            )
        object.__setattr__(self, "expression", built)  # built once; later calls and metadata reuse it
        return built

    @property
    def blocking(self) -> bool:
        return self.severity == "error"

    def definition(self, sensitive: Iterable[str] = ()) -> dict[str, Any]:
        """The rule as plain JSON-able data for metadata; values of sensitive columns are masked."""
        hidden = set(sensitive)
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "severity": self.severity}
        if self.columns:
            out["columns"] = list(self.columns)
        for key in (
            "min",
            "max",
            "regex",
            "tolerance",
            "to_table",
            "query",
            "max_failing_rows",
            "max_failing_percent",
            "description",
        ):
            value = getattr(self, key)
            if value not in (None, ""):
                out[key] = _jsonable(value)
        if self.values:
            masked = self.kind == "accepted_values" and hidden & set(self.columns)
            out["values"] = MASK if masked else [_jsonable(v) for v in self.values]
        if self.to_columns:
            out["to_columns"] = list(self.to_columns)
        if self.on_fail != "block":
            out["on_fail"] = self.on_fail
        if self.expression is not None:
            expression = self.expression
            if self.kind == "polars" and callable(expression) and not _is_polars_expr(expression):
                try:
                    expression = self.polars_expression()
                except ConfigError:  # the check's result already says why; name the function here
                    expression = f"function {getattr(expression, '__qualname__', expression)!s}"
            out["expression"] = expression if isinstance(expression, str) else str(expression)
        if self.kind in ("range",) and hidden & set(self.columns):
            out.pop("min", None)
            out.pop("max", None)
            out["bounds"] = MASK
        return out

    def describe(self) -> str:
        """One line for the UI: the description or a summary of the definition."""
        if self.description:
            return self.description
        cols = ", ".join(self.columns)
        summary = {
            "not_null": f"{cols} is never NULL",
            "unique": f"({cols}) is unique",
            "accepted_values": f"{cols} is one of the accepted values",
            "range": f"{cols} {_bounds(self.min, self.max)}",
            "pattern": f"{cols} matches {self.regex}",
            "not_in_future": f"{cols} is not in the future",
            "references": f"({cols}) exists in {self.to_table}",
            "row_count": f"row count {_bounds(self.min, self.max)}",
            "sql": "custom SQL",
            "polars": "custom polars expression",
        }[self.kind]
        return f"{summary} ({self.severity})"


def _bounds(low: Any, high: Any) -> str:
    """``lies in [0, 100]``, ``is at least 0``, ``is at most 100``: never a ``None`` bound."""
    if low is not None and high is not None:
        return f"lies in [{low}, {high}]"
    if low is not None:
        return f"is at least {low}"
    if high is not None:
        return f"is at most {high}"
    return "is unbounded"


def _is_polars_expr(value: Any) -> bool:
    if "polars" not in sys.modules:  # no polars expression exists before polars is loaded
        return False
    import polars as pl

    return isinstance(value, pl.Expr)


# --------------------------------------------------------------------------------------------------
# Declaration: the ``checks:`` list of a table in the tables YAML.
# --------------------------------------------------------------------------------------------------


def parse_rules(
    table: str,
    items: Any,
    *,
    sensitive: Sequence[str] | None = None,
    origin: str | None = None,
    lines: Sequence[Any] = (),
) -> list[Rule]:
    """Validate a table's raw ``checks:`` list into rules; every mistake names table, check and key.

    ``column: x`` is accepted as a shorthand for ``columns: [x]`` (and ``to_column`` for
    ``to_columns``). Names must be unique per table. With ``origin`` (the declaring file) and
    ``lines`` (each check's lines, from :attr:`TableSpec.check_lines`), a message starts like the
    table errors do: ``tables.yaml: table shop.orders, check 'x' (line 12): …``, the line being the
    offending key's where there is one.
    """
    from etl_assets.pipeline_config import KeyLines  # local: the declaration module imports much

    if items is None:
        return []
    if not isinstance(items, list):
        raise ConfigError(f"Table {table}: 'checks' must be a list of checks, got {type(items).__name__}.")
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, item in enumerate(items, start=1):
        where = lines[index - 1] if index - 1 < len(lines) else KeyLines()
        head = f"{origin}: table {table}" if origin else f"Table {table}"

        def fail(message: str, key: str | None = None, label_of: str = f"check #{index}",
                 where: Any = where, head: str = head) -> ConfigError:
            line = where.of(key) if key else where.line
            return ConfigError(f"{head}, {label_of}{f' (line {line})' if line else ''}: {message}")

        label = f"check #{index}"
        if not isinstance(item, Mapping):
            raise fail("each check must be a mapping with at least 'name' and 'kind'.")
        name = item.get("name")
        if isinstance(name, str):
            label = f"check {name!r}"
        for key in ("name", "kind"):
            if key not in item:
                raise fail(f"missing required key '{key}'.", None, label)
        kind = item["kind"]
        if kind not in KINDS:
            raise fail(f"unknown kind {kind!r}; allowed: {', '.join(KINDS)}.", "kind", label)
        raw = dict(item)
        for short, long in (("column", "columns"), ("to_column", "to_columns")):
            if short in raw:
                if long in raw:
                    raise fail(f"give either '{short}' or '{long}', not both.", short, label)
                value = raw.pop(short)
                if not isinstance(value, str):
                    raise fail(f"'{short}' must be one column name; use '{long}' for a list.", short, label)
                raw[long] = [value]
        required, optional = KINDS[kind]
        allowed = _COMMON_KEYS | required | optional
        for key in raw:
            if key not in allowed:
                shown = sorted(
                    allowed
                    | ({"column"} if "columns" in allowed else set())
                    | ({"to_column"} if "to_columns" in allowed else set())
                )
                raise fail(f"unknown key '{key}' for kind {kind}; allowed: {', '.join(shown)}.", key, label)
        for key in required:
            if key not in raw:
                shown = "'column' or 'columns'" if key == "columns" else f"'{key}'"
                raise fail(f"kind {kind} needs {shown}.", None, label)
        for key in ("columns", "to_columns", "values"):
            if key in raw and not isinstance(raw[key], list):
                raise fail(f"'{key}' must be a list.", key, label)
        try:
            rule = Rule(**raw)
        except ConfigError as exc:
            # "Check 'x': problem" from Rule itself: keep its words, add where the check is
            text = str(exc)
            problem = text.split(": ", 1)[1] if text.startswith("Check ") and ": " in text else text
            raise fail(problem, None, label) from None
        except TypeError as exc:  # pragma: no cover - guarded by the key checks above
            raise fail(str(exc), None, label) from None
        if rule.name in seen:
            raise fail(f"two checks of this table share the name {rule.name!r}.", "name", label)
        seen.add(rule.name)
        rules.append(rule)
    if sensitive is not None:
        parse_sensitive(table, sensitive)
    return rules


def parse_sensitive(table: str, value: Any, *, origin: str | None = None, line: int | None = None
                    ) -> tuple[str, ...]:
    """Validate a table's ``sensitive:`` list of column names (``origin``/``line``: where it is written)."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        where = f"{origin}: table {table}, key 'sensitive'" if origin else f"Table {table}: 'sensitive'"
        raise ConfigError(f"{where}{f' (line {line})' if line else ''} must be a list of column names.")
    return tuple(value)


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------


@dataclass
class RuleResult:
    """The outcome of one rule on one table: counts, the verdict under the thresholds, a sample."""

    rule: Rule
    table: TableRef
    total_rows: int
    failing_rows: int
    passed: bool
    sample: list[dict[str, Any]] = field(default_factory=list)
    observed: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def failing_percent(self) -> float:
        if self.rule.kind == "row_count":
            return 0.0 if self.passed else 100.0
        return round(100.0 * self.failing_rows / self.total_rows, 6) if self.total_rows else 0.0


def primary_key(conn: psycopg.Connection, table: TableRef) -> list[str]:
    """The table's primary-key columns in key order (empty when it has none)."""
    rows = conn.execute(
        """SELECT a.attname FROM pg_index i
           JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, pos) ON true
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
           WHERE i.indrelid = to_regclass(%s) AND i.indisprimary ORDER BY k.pos""",
        (table.regclass_text,),
    ).fetchall()
    return [r[0] for r in rows]


def table_columns(conn: psycopg.Connection, table: TableRef) -> list[str]:
    """The table's columns in order; raises :class:`MissingObject` when the table does not exist."""
    rows = conn.execute(
        """SELECT a.attname FROM pg_attribute a
           WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped
           ORDER BY a.attnum""",
        (table.regclass_text,),
    ).fetchall()
    if not rows:
        raise MissingObject(
            f"Table {table} does not exist in the warehouse (or has no columns); "
            "materialize its asset before running its checks."
        )
    return [r[0] for r in rows]


def _cols(names: Sequence[str], alias: str = "t") -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(alias, n) for n in names)


def _row(names: Sequence[str], alias: str = "t") -> sql.Composable:
    return sql.SQL("({})").format(_cols(names, alias))


def _predicate(rule: Rule) -> tuple[sql.Composable, list[Any]] | None:
    """A SQL condition over alias ``t`` that is TRUE for a failing row (None for non-row kinds)."""
    cols = [sql.Identifier("t", c) for c in rule.columns]
    if rule.kind == "not_null":
        return sql.SQL(" OR ").join(sql.SQL("{} IS NULL").format(c) for c in cols), []
    if rule.kind == "accepted_values":
        # NULLs are never "not accepted" (use not_null for that), and a NULL in the array would make
        # `x = ANY(...)` NULL instead of false for every other value, hiding the failures.
        values = [str(v) for v in rule.values if v is not None]
        return sql.SQL("{c} IS NOT NULL AND NOT ({c}::text = ANY(%s::text[]))").format(c=cols[0]), [values]
    if rule.kind == "range":
        parts, params = [], []
        if rule.min is not None:
            parts.append(sql.SQL("{} < %s").format(cols[0]))
            params.append(rule.min)
        if rule.max is not None:
            parts.append(sql.SQL("{} > %s").format(cols[0]))
            params.append(rule.max)
        return sql.SQL("({})").format(sql.SQL(" OR ").join(parts)), params
    if rule.kind == "pattern":
        return sql.SQL("{c} IS NOT NULL AND {c}::text !~ %s").format(c=cols[0]), [rule.regex]
    if rule.kind == "not_in_future":
        return sql.SQL("{} > now() + %s::interval").format(cols[0]), [rule.tolerance or "0 seconds"]
    if rule.kind == "references":
        target = TableRef.parse(rule.to_table or "")
        to_cols = list(rule.to_columns or rule.columns)
        joins = sql.SQL(" AND ").join(
            sql.SQL("{} = {}").format(sql.Identifier("r", tc), sql.Identifier("t", c))
            for c, tc in zip(rule.columns, to_cols, strict=True)
        )
        not_null = sql.SQL(" AND ").join(sql.SQL("{} IS NOT NULL").format(c) for c in cols)
        return (
            sql.SQL("{nn} AND NOT EXISTS (SELECT 1 FROM {ref} r WHERE {j})").format(
                nn=not_null, ref=target.ident, j=joins
            ),
            [],
        )
    if rule.kind == "sql" and rule.expression is not None:
        # Custom SQL is trusted configuration, like a dbt test: it is composed as SQL on purpose.
        return sql.SQL("({}) IS NOT TRUE").format(sql.SQL(rule.expression)), []  # type: ignore[arg-type]
    return None


def partition_scope(
    column: str, *, start: Any = None, end: Any = None, values: Sequence[Any] = ()
) -> sql.Composable:
    """The condition selecting one partition's rows: ``column`` in ``[start, end)`` or in ``values``.

    Built with literals (not parameters) so it can be spliced into any of the rule statements.
    """
    col = sql.Identifier(column)
    if values:
        return sql.SQL("{}::text IN ({})").format(
            col, sql.SQL(", ").join(sql.Literal(str(v)) for v in values)
        )
    return sql.SQL("{c} >= {s} AND {c} < {e}").format(c=col, s=sql.Literal(start), e=sql.Literal(end))


def _source(table: TableRef, scope: sql.Composable | None) -> sql.Composable:
    """The table, or only its rows in ``scope`` (a partition) as a subquery usable in FROM."""
    if scope is None:
        return table.ident
    return sql.SQL("(SELECT * FROM {} WHERE {})").format(table.ident, scope)


def failing_condition(
    rule: Rule, table: TableRef, scope: sql.Composable | None = None, *, across_table: bool = False
) -> tuple[sql.Composable, list[Any]]:
    """A condition over alias ``t`` of ``table`` that is TRUE for a failing row (row-level kinds).

    ``across_table`` (``unique`` with a scope of new rows): a scoped row fails when its value occurs
    in any other row of the whole table, not only among the scoped rows (one index probe per row).
    """
    pred = _predicate(rule)
    if pred is not None:
        return pred
    if rule.kind == "unique" and across_table and scope is not None:
        not_null = sql.SQL(" AND ").join(
            sql.SQL("{} IS NOT NULL").format(sql.Identifier("t", c)) for c in rule.columns
        )
        same = sql.SQL(" AND ").join(
            sql.SQL("o.{c} = t.{c}").format(c=sql.Identifier(c)) for c in rule.columns
        )
        others = sql.SQL("(SELECT count(*) FROM (SELECT 1 FROM {tbl} o WHERE {same} LIMIT 2) d)").format(
            tbl=table.ident, same=same
        )
        return sql.SQL("{nn} AND {others} > 1").format(nn=not_null, others=others), []
    if rule.kind == "unique":
        not_null = sql.SQL(" AND ").join(
            sql.SQL("{} IS NOT NULL").format(sql.Identifier(c)) for c in rule.columns
        )
        dup = sql.SQL("SELECT {c} FROM {tbl} WHERE {nn} GROUP BY {c} HAVING count(*) > 1").format(
            c=sql.SQL(", ").join(map(sql.Identifier, rule.columns)), tbl=_source(table, scope), nn=not_null
        )
        return sql.SQL("{row} IN ({dup})").format(row=_row(rule.columns), dup=dup), []
    raise ConfigError(f"Check {rule.name!r}: kind {rule.kind} has no row-level condition")


def _failing_relation(
    rule: Rule, table: TableRef, scope: sql.Composable | None = None, *, across_table: bool = False
) -> tuple[sql.Composable, list[Any]]:
    """A SELECT yielding the failing rows (all the table's columns, alias-free)."""
    pred = _predicate(rule)
    if pred is not None:
        cond, params = pred
        return sql.SQL("SELECT t.* FROM {tbl} t WHERE {cond}").format(
            tbl=_source(table, scope), cond=cond
        ), params
    if rule.kind == "unique":
        cond, params = failing_condition(rule, table, scope, across_table=across_table)
        return sql.SQL("SELECT t.* FROM {tbl} t WHERE {cond}").format(
            tbl=_source(table, scope), cond=cond
        ), params
    if rule.kind == "sql" and rule.query is not None:
        return sql.SQL(rule.query.strip().rstrip(";")), []  # type: ignore[arg-type]
    raise AssertionError(f"no failing relation for kind {rule.kind}")  # pragma: no cover


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else str(value)
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID | _dt.timedelta):
        return str(value)
    if isinstance(value, bytes | memoryview):
        return f"<{len(bytes(value))} bytes>"
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def mask_row(row: Mapping[str, Any], sensitive: Iterable[str]) -> dict[str, Any]:
    """A JSON-able copy of ``row`` with the values of sensitive columns replaced by ``***``."""
    hidden = set(sensitive)
    return {k: (MASK if k in hidden and v is not None else _jsonable(v)) for k, v in row.items()}


def _verdict(rule: Rule, failing: int, total: int) -> bool:
    percent = 100.0 * failing / total if total else 0.0
    if rule.max_failing_rows is None and rule.max_failing_percent is None:
        return failing == 0
    ok = True
    if rule.max_failing_rows is not None:
        ok = ok and failing <= rule.max_failing_rows
    if rule.max_failing_percent is not None:
        ok = ok and percent <= rule.max_failing_percent
    return ok


def evaluate(
    conn: psycopg.Connection,
    rule: Rule,
    table: TableRef,
    *,
    keys: Sequence[str] | None = None,
    sensitive: Iterable[str] = (),
    scope: sql.Composable | None = None,
    across_table: bool = False,
) -> RuleResult:
    """Run ``rule`` against ``table`` in the warehouse and return counts, verdict and a masked sample.

    ``keys`` are the columns that identify a row in the sample (default: the table's primary key).
    ``scope`` (see :func:`partition_scope`) limits the rule to one partition's rows (a custom
    ``query`` is the user's own and is not limited). ``across_table``: the scope is a run's new
    rows (``etl_assets.quality.scope``), and ``unique`` compares them with the whole table. Runs
    read-only statements on ``conn``; the caller owns the transaction.
    """
    sensitive = tuple(sensitive)
    columns = table_columns(conn, table)
    missing = [c for c in (*rule.columns,) if c not in columns]
    if missing:
        raise MissingObject(
            f"Check {rule.name!r} on {table}: column(s) {', '.join(missing)} do not exist "
            f"(columns: {', '.join(columns)})."
        )
    key_cols = list(keys) if keys is not None else primary_key(conn, table)
    if rule.kind == "row_count":
        total = conn.execute(sql.SQL("SELECT count(*) FROM {} t").format(_source(table, scope))).fetchone()[0]
        below = rule.min is not None and total < rule.min
        above = rule.max is not None and total > rule.max
        outside = (rule.min - total) if below else (total - rule.max) if above else 0
        return RuleResult(
            rule,
            table,
            total,
            outside,
            not (below or above),
            observed={"row_count": total, "min": rule.min, "max": rule.max},
        )
    if rule.kind == "polars":
        return _evaluate_polars(conn, rule, table, key_cols, columns, sensitive, scope)

    relation, params = _failing_relation(rule, table, scope, across_table=across_table)
    pred = _predicate(rule)
    if pred is not None:
        cond, pparams = pred
        total, failing = conn.execute(
            sql.SQL("SELECT count(*), count(*) FILTER (WHERE {cond}) FROM {tbl} t").format(
                cond=cond, tbl=_source(table, scope)
            ),
            pparams,
        ).fetchone()
    else:
        total, failing = conn.execute(
            sql.SQL("SELECT (SELECT count(*) FROM {tbl} t), (SELECT count(*) FROM ({rel}) f)").format(
                tbl=_source(table, scope), rel=relation
            ),
            params,
        ).fetchone()
    sample: list[dict[str, Any]] = []
    if failing and rule.sample_size:
        if rule.kind == "sql" and rule.query is not None:
            show = sql.SQL("f.*")
            order = sql.SQL("")
        else:
            wanted = list(dict.fromkeys([*key_cols, *rule.columns]))
            if not wanted:
                wanted = columns[: min(len(columns), 6)]
            show = _cols(wanted, "f")
            order = sql.SQL(" ORDER BY {}").format(_cols(wanted, "f"))
        cur = conn.execute(
            sql.SQL("SELECT {show} FROM ({rel}) f{order} LIMIT {n}").format(
                show=show, rel=relation, order=order, n=sql.Literal(rule.sample_size)
            ),
            params,
        )
        names = [d.name for d in cur.description or []]
        sample = [mask_row(dict(zip(names, r, strict=True)), sensitive) for r in cur.fetchall()]
    return RuleResult(rule, table, int(total), int(failing), _verdict(rule, int(failing), int(total)), sample)


def _evaluate_polars(
    conn: psycopg.Connection,
    rule: Rule,
    table: TableRef,
    key_cols: list[str],
    columns: list[str],
    sensitive: tuple[str, ...],
    scope: sql.Composable | None = None,
) -> RuleResult:
    """Stream the needed columns in chunks and evaluate a row-wise polars expression on each chunk."""
    import polars as pl

    expr = rule.polars_expression()
    needed = list(expr.meta.root_names())
    missing = [c for c in needed if c not in columns]
    if missing:
        raise MissingObject(
            f"Check {rule.name!r} on {table}: the expression uses column(s) {', '.join(missing)} "
            f"that do not exist (columns: {', '.join(columns)})."
        )
    wanted = list(dict.fromkeys([*key_cols, *needed]))
    total = failing = 0
    sample: list[dict[str, Any]] = []
    order = sql.SQL(" ORDER BY {}").format(_cols(key_cols, "t")) if key_cols else sql.SQL("")
    # A server-side cursor lives in a transaction (a savepoint when the caller already has one).
    with conn.transaction(), conn.cursor(name=f"etl_quality_{uuid.uuid4().hex[:12]}") as cur:
        cur.execute(
            sql.SQL("SELECT {c} FROM {tbl} t{o}").format(c=_cols(wanted), tbl=_source(table, scope), o=order)
        )
        while True:
            rows = cur.fetchmany(POLARS_CHUNK_ROWS)
            if not rows:
                break
            frame = pl.DataFrame(rows, schema=wanted, orient="row", infer_schema_length=None)
            try:
                ok = frame.select(expr.fill_null(False).alias("__ok")).to_series()
            except Exception as exc:
                raise ConfigError(
                    f"Check {rule.name!r} on {table}: the polars expression failed: {exc}"
                ) from None
            if ok.len() != frame.height or ok.dtype != pl.Boolean:
                raise ConfigError(
                    f"Check {rule.name!r} on {table}: the polars expression must give one boolean per row "
                    f"(got {ok.len()} values of type {ok.dtype} for {frame.height} rows); aggregations are "
                    "not supported, use kind sql with a query for those."
                )
            bad = frame.filter(~ok)
            total += frame.height
            failing += bad.height
            room = rule.sample_size - len(sample)
            if room > 0 and bad.height:
                sample.extend(mask_row(r, sensitive) for r in bad.head(room).iter_rows(named=True))
    return RuleResult(rule, table, total, failing, _verdict(rule, failing, total), sample)
