"""Writing a frame into a warehouse table: one transaction, one lock per target, every write mode.

:func:`write_frame` is the entry point the IO manager and streaming callers use. Whatever the mode,
the write runs in ONE transaction on the caller's connection (a savepoint when the caller already
opened one), takes a transaction-scoped advisory lock per target so two writers of one table never
interleave, and calls the ``on_commit`` hooks inside that transaction after the data, so cursors,
checkpoints and dead letters commit atomically with it. A failure part-way rolls everything back:
the target is exactly as it was, and staging tables (temporary, ``ON COMMIT DROP``) vanish with it.

Modes:

* ``insert``: COPY into the target (append).
* ``truncate_insert``: ``TRUNCATE`` then COPY in one transaction. READ COMMITTED readers wait on
  TRUNCATE's ACCESS EXCLUSIVE lock until the commit, then see the new rows; but a REPEATABLE READ /
  SERIALIZABLE reader whose snapshot predates the commit sees the table EMPTY (TRUNCATE is not
  MVCC-safe; so is a swap). docs/load-modes.md states what readers see in each mode.
* ``upsert``: see :mod:`etl_assets.io.upsert`.
* ``swap``: see :mod:`etl_assets.io.swap`.
* with ``partition``: delete exactly the partition's window and COPY its rows (insert and
  truncate_insert), or upsert within it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Literal

import dagster as dg
import psycopg
from psycopg import sql

from etl_assets.errors import ConfigError, SchemaMismatch
from etl_assets.io import catalog
from etl_assets.io.batch import CommitHook
from etl_assets.io.bulk import copy_frame
from etl_assets.io.swap import ATTEMPTS, LOCK_TIMEOUT, build_and_swap
from etl_assets.io.tables import TableRef, lock_target
from etl_assets.io.target import TargetShape, ensure_target
from etl_assets.io.typemap import PgType, is_pandas, pg_type_for, to_polars
from etl_assets.io.upsert import upsert_frame
from etl_assets.migrations import ensure_control_tables

if TYPE_CHECKING:  # loaded where a frame is built, not when this module is imported
    import polars as pl

WriteMode = Literal["insert", "upsert", "truncate_insert", "swap"]
WRITE_MODES: tuple[str, ...] = ("insert", "upsert", "truncate_insert", "swap")


@dataclass(frozen=True)
class PartitionWindow:
    """The rows of one partition: ``column`` in ``[start, end)``, or ``column`` in ``values``."""

    column: str
    start: Any = None
    end: Any = None
    values: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        if self.values is None and (self.start is None or self.end is None):
            raise ConfigError(f"Partition on {self.column!r} needs start and end, or values.")

    @property
    def label(self) -> str:
        if self.values is not None:
            return ",".join(str(v) for v in self.values)
        return f"{self.start}..{self.end}"


@dataclass
class WriteResult:
    """What a write did; :meth:`metadata` turns it into materialization metadata."""

    target: TableRef
    mode: str
    rows: int
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    duplicates: int = 0
    table_rows: int | None = None
    seconds: float = 0.0
    schema: dg.TableSchema = field(default_factory=lambda: dg.TableSchema(columns=[]))
    partition: str | None = None
    added_columns: list[str] = field(default_factory=list)
    widened_columns: list[str] = field(default_factory=list)

    def metadata(self) -> dict[str, Any]:
        rps = self.rows / self.seconds if self.seconds > 0 else float(self.rows)
        meta: dict[str, Any] = {
            "dagster/table_name": str(self.target),
            "dagster/row_count": self.table_rows if self.table_rows is not None else self.rows,
            "dagster/column_schema": self.schema,
            "write_mode": self.mode,
            "rows_written": self.rows,
            "rows_inserted": self.inserted,
            "rows_updated": self.updated,
            "rows_unchanged": self.unchanged,
            "rows_deleted": self.deleted,
            "duplicate_keys_dropped": self.duplicates,
            "duration_seconds": round(self.seconds, 4),
            "rows_per_second": round(rps, 1),
        }
        if self.partition is not None:
            meta["partition_window"] = self.partition
        if self.added_columns:
            meta["columns_added"] = ", ".join(self.added_columns)
        if self.widened_columns:
            meta["columns_widened"] = ", ".join(self.widened_columns)
        return meta


# --------------------------------------------------------------------------------------------------
# Locks and tables
# --------------------------------------------------------------------------------------------------


def frame_types(frame: pl.DataFrame, hints: Mapping[str, PgType] | None = None) -> dict[str, PgType]:
    hints = hints or {}
    return {name: pg_type_for(name, dtype, hints.get(name)) for name, dtype in frame.schema.items()}


def ensure_table(
    conn: psycopg.Connection,
    frame: Any,
    target: TableRef,
    primary_key: Sequence[str] = (),
    *,
    hints: Mapping[str, PgType] | None = None,
    create_as: TableRef | None = None,
) -> TargetShape:
    """Create ``target`` for the frame's schema, or evolve it (:func:`etl_assets.io.target.ensure_target`:
    new columns added, safe widenings applied where the frame's values do not fit).

    ``create_as`` evolves a copy (the swap's new table) instead of the target itself.
    """
    import polars as pl

    if not isinstance(frame, pl.DataFrame):
        frame, more = to_polars(frame)
        hints = {**more, **(hints or {})}
    wanted = frame_types(frame, hints)
    missing = [k for k in primary_key if k not in wanted]
    if missing:
        raise ConfigError(f"Primary key column(s) {missing} of {target} are not in the frame {list(wanted)}.")
    values = {name: frame.get_column(name) for name in wanted}
    return ensure_target(conn, target, wanted, primary_key, values=values, create_as=create_as)


def truncate(conn: psycopg.Connection, target: TableRef) -> None:
    """``TRUNCATE`` (ACCESS EXCLUSIVE until commit); a table other tables reference gets a clear error."""
    try:
        with conn.transaction():
            conn.execute(sql.SQL("TRUNCATE TABLE ONLY {}").format(target.ident))
    except psycopg.errors.FeatureNotSupported as exc:
        raise SchemaMismatch(
            f"Cannot truncate {target}: {exc.diag.message_primary} ({exc.diag.message_detail or ''}). "
            "Use write_mode 'upsert' for a table that foreign keys reference."
        ) from exc


def table_schema(conn: psycopg.Connection, target: TableRef) -> dg.TableSchema:
    """The table's columns as a Dagster ``TableSchema`` (for ``dagster/column_schema``)."""
    cols = catalog.columns(conn, target)
    pk = set()
    row = conn.execute(
        """
        SELECT ARRAY(SELECT a.attname FROM unnest(x.indkey) k(attnum)
                     JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum)
        FROM pg_index x WHERE x.indrelid = to_regclass(%s) AND x.indisprimary
        """,
        (target.regclass_text,),
    ).fetchone()
    if row:
        pk = set(row[0])
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=c.name,
                type=c.type.sql(),
                constraints=dg.TableColumnConstraints(
                    nullable=not c.not_null, unique=c.name in pk and len(pk) == 1
                ),
            )
            for c in cols
        ]
    )


# --------------------------------------------------------------------------------------------------
# Partitions
# --------------------------------------------------------------------------------------------------


def _bound(value: Any, typ: PgType) -> Any:
    """A window bound as the partition column's type (dates for date columns, naive for timestamp)."""
    if isinstance(value, datetime):
        if typ.base == "date":
            return value.date()
        if typ.base == "timestamp" and value.tzinfo is not None:
            return value.replace(tzinfo=None)
    if isinstance(value, date) and not isinstance(value, datetime) and typ.base == "timestamptz":
        return datetime(value.year, value.month, value.day)
    return value


def windows_of(partition: Any) -> tuple[PartitionWindow, ...]:
    """One window, or several (one per dimension of a multi-partitioned asset) ANDed together."""
    if partition is None:
        return ()
    if isinstance(partition, PartitionWindow):
        return (partition,)
    return tuple(partition)


def partition_label(partition: Any) -> str | None:
    ws = windows_of(partition)
    return " & ".join(f"{w.column}={w.label}" if len(ws) > 1 else w.label for w in ws) if ws else None


def partition_condition(partition: Any, types: Mapping[str, PgType]) -> tuple[sql.Composable, tuple]:
    """SQL selecting the rows of ``partition`` (a window or a sequence of windows, ANDed)."""
    ws = windows_of(partition)
    if len(ws) != 1:
        return sql.SQL(" AND ").join(sql.SQL("({})").format(_window_condition(w, types)[0]) for w in ws), ()
    return _window_condition(ws[0], types)


def _window_condition(
    partition: PartitionWindow, types: Mapping[str, PgType]
) -> tuple[sql.Composable, tuple]:
    if partition.column not in types:
        raise ConfigError(
            f"Partition column {partition.column!r} is not a column of the table ({list(types)})."
        )
    typ = types[partition.column]
    col = sql.Identifier(partition.column)
    # Values are rendered as quoted literals cast to the column's type, not bound as parameters: a
    # table or column name containing '%' would otherwise be taken for a placeholder.
    cast = sql.SQL(typ.element.sql())
    if partition.values is not None:
        items = sql.SQL(", ").join(
            sql.SQL("{}::{}").format(sql.Literal(_literal(_bound(v, typ))), cast) for v in partition.values
        )
        return sql.SQL("{} IN ({})").format(col, items), ()
    return sql.SQL("{} >= {}::{} AND {} < {}::{}").format(
        col,
        sql.Literal(_literal(_bound(partition.start, typ))),
        cast,
        col,
        sql.Literal(_literal(_bound(partition.end, typ))),
        cast,
    ), ()


def _literal(value: Any) -> Any:
    """Dates and times as ISO text (cast by the caller), so their literal carries no competing type."""
    if isinstance(value, date | datetime):
        return value.isoformat()
    return str(value) if not isinstance(value, str) else value


def _check_frame_in_window(
    conn: psycopg.Connection,
    frame: pl.DataFrame,
    target: TableRef,
    partition: PartitionWindow,
    types: Mapping[str, PgType],
) -> None:
    """Refuse rows outside the partition window: they would survive the next replace of their own."""
    if partition.column not in frame.columns:
        raise ConfigError(
            f"The frame for {target} has no partition column {partition.column!r} (partition_expr); "
            f"its columns are {frame.columns}."
        )
    col = frame.get_column(partition.column)
    if col.null_count():
        raise SchemaMismatch(
            f"{col.null_count()} row(s) for {target} have NULL in partition column {partition.column!r}; "
            f"partition {partition.label} must contain only its own rows."
        )
    if partition.values is not None or frame.height == 0:
        # An empty frame has no row outside the window: writing it clears the partition's rows.
        return
    lo, hi = col.min(), col.max()
    cond, _ = _window_condition(partition, types)
    typ = types[partition.column].sql()
    ok = conn.execute(
        sql.SQL("SELECT bool_and({}) FROM (VALUES ({}::{t}), ({}::{t})) v({})").format(
            cond,
            sql.Literal(_literal(lo)),
            sql.Literal(_literal(hi)),
            sql.Identifier(partition.column),
            t=sql.SQL(typ),
        )
    ).fetchone()[0]
    if not ok:
        raise SchemaMismatch(
            f"Rows for {target} partition {partition.label} have {partition.column!r} from {lo} to {hi}, "
            "outside the partition's window; filter the frame to its partition."
        )


def swap_write(
    conn: psycopg.Connection,
    df: pl.DataFrame,
    target: TableRef,
    *,
    primary_key: Sequence[str],
    hints: Mapping[str, PgType],
    run_id: str | None,
    lock_timeout: str = LOCK_TIMEOUT,
    attempts: int = ATTEMPTS,
):
    """Swap ``df`` in as ``target`` (called by write_frame inside its transaction, lock held)."""
    oid = catalog.table_oid(conn, target)
    if oid is None:  # first load: nothing to swap with
        shape = ensure_table(conn, df, target, primary_key, hints=hints)
        copy_frame(conn, df, target, targets=shape.types)
        return WriteResult(
            target=target, mode="swap", rows=df.height, inserted=df.height, table_rows=df.height
        )
    built: dict[str, Any] = {}

    def evolve(new: TableRef) -> None:
        built["shape"] = ensure_table(conn, df, target, primary_key, hints=hints, create_as=new)

    def fill(new: TableRef) -> int:
        return copy_frame(conn, df, new, targets=built["shape"].types)

    _rows, deleted = build_and_swap(
        conn, target, fill, run_id=run_id, prepare=evolve, lock_timeout=lock_timeout, attempts=attempts
    )
    shape = built["shape"]
    return WriteResult(
        target=target,
        mode="swap",
        rows=df.height,
        inserted=df.height,
        deleted=deleted,
        table_rows=df.height,
        added_columns=shape.added,
        widened_columns=shape.widened,
    )


# --------------------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------------------


def _converted(
    conn: psycopg.Connection, frame: Any, target: TableRef, order_by: str | None, *, known: bool
) -> tuple[pl.DataFrame, dict[str, PgType]]:
    """``frame`` as polars (:func:`to_polars`), with its ``order_by`` column checked.

    ``known``: pass the target's ``numeric(p,s)`` column types, so that pandas ``Decimal`` columns
    are converted straight to them (one typed Arrow conversion each) instead of to the smallest
    type their values need. Asked inside the write's transaction: outside it the query would open
    one on a connection that is not in autocommit.
    """
    numeric = None
    if known:
        numeric = {c.name: c.type for c in catalog.columns(conn, target) if c.type.base == "numeric"}
    df, hints = to_polars(frame, numeric)
    if order_by is not None and order_by not in df.columns:
        raise ConfigError(f"order_by column {order_by!r} is not in the frame for {target} ({df.columns}).")
    return df, hints


def write_frame(
    conn: psycopg.Connection,
    frame: Any,
    target: TableRef,
    mode: str,
    *,
    primary_key: Sequence[str] = (),
    order_by: str | None = None,
    partition: PartitionWindow | Sequence[PartitionWindow] | None = None,
    on_commit: Iterable[CommitHook] = (),
    run_id: str | None = None,
    count_rows: bool = True,
    swap_lock_timeout: str | None = None,
    swap_attempts: int | None = None,
) -> WriteResult:
    """Write ``frame`` (pandas or polars) into ``target`` with ``mode``; see the module docstring."""
    started = time.perf_counter()
    if mode not in WRITE_MODES:
        raise ConfigError(f"Unknown write_mode {mode!r} for {target}; use one of {', '.join(WRITE_MODES)}.")
    primary_key = tuple(primary_key or ())
    if mode == "upsert" and not primary_key:
        raise ConfigError(
            f"write_mode 'upsert' for {target} needs primary_key (the columns that identify a row)."
        )
    if mode == "swap" and partition is not None:
        raise ConfigError(f"write_mode 'swap' replaces all of {target}; it cannot write one partition.")
    from_pandas = is_pandas(frame)
    if not from_pandas:
        df, hints = _converted(conn, frame, target, order_by, known=False)
    hooks = list(on_commit)
    if mode == "swap":
        ensure_control_tables(conn)  # etl.swap_history records the previous version for rollback
    with conn.transaction():
        lock_target(conn, target)
        if from_pandas:  # converted to the target's numeric types, read in this transaction
            df, hints = _converted(conn, frame, target, order_by, known=True)
        if mode == "swap":
            result = swap_write(
                conn,
                df,
                target,
                primary_key=primary_key,
                hints=hints,
                run_id=run_id,
                lock_timeout=swap_lock_timeout or LOCK_TIMEOUT,
                attempts=swap_attempts or ATTEMPTS,
            )
        else:
            shape = ensure_table(conn, df, target, primary_key, hints=hints)
            result = WriteResult(
                target=target,
                mode=mode,
                rows=df.height,
                added_columns=shape.added,
                widened_columns=shape.widened,
            )
            if partition is not None:
                result.partition = partition_label(partition)
                for window in windows_of(partition):
                    _check_frame_in_window(conn, df, target, window, shape.types)
            if mode == "upsert":
                counts = upsert_frame(
                    conn,
                    df,
                    target,
                    primary_key,
                    order_by,
                    shape.types,
                    run_id=run_id,
                    partition=partition_label(partition),
                )
                result.inserted, result.updated, result.unchanged, result.duplicates = counts
            else:
                if partition is not None:
                    cond, params = partition_condition(partition, shape.types)
                    cur = conn.execute(
                        sql.SQL("DELETE FROM {} WHERE ").format(target.ident) + cond, params or None
                    )
                    result.deleted = cur.rowcount
                elif mode == "truncate_insert":
                    result.deleted = conn.execute(
                        sql.SQL("SELECT count(*) FROM {}").format(target.ident)
                    ).fetchone()[0]
                    truncate(conn, target)
                copy_frame(conn, df, target, targets=shape.types)
                result.inserted = df.height
            if count_rows:
                if partition is not None:
                    cond, params = partition_condition(partition, shape.types)
                    result.table_rows = conn.execute(
                        sql.SQL("SELECT count(*) FROM {} WHERE ").format(target.ident) + cond, params or None
                    ).fetchone()[0]
                elif mode == "truncate_insert":
                    result.table_rows = df.height
                else:
                    result.table_rows = conn.execute(
                        sql.SQL("SELECT count(*) FROM {}").format(target.ident)
                    ).fetchone()[0]
        result.schema = table_schema(conn, target)
        for hook in hooks:
            hook(conn)
    result.seconds = time.perf_counter() - started
    return result
