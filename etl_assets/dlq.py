"""THE dead-letter queue: writing rejected rows to ``etl.dead_letters`` and reading them back.

Every asset that can reject rows records them here, through the connection and transaction that
writes its data (an ``on_commit`` hook of the IO layer), so a row is either in the target or in the
dead-letter table, never in both and never in neither. Each distinct rejected row is one entry,
identified by the asset, the partition and a stable hash of the original row; failing again bumps
``attempts`` and ``last_failed_at`` instead of adding a copy.

The table holds whole rows (so they can be replayed). Nothing in this module logs a payload or an
error message (messages can quote row values); :class:`DeadLetter` keeps them out of its ``repr``.
Frames of either engine are handled through polars, so pandas and polars rows hash alike.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import math
import traceback
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from etl_assets.errors import ConfigError

if TYPE_CHECKING:  # loaded where a frame is built, not when this module is imported
    import polars as pl

STATUSES = ("pending", "replayed", "discarded")
TABLE = sql.Identifier("etl", "dead_letters")

# ---------------------------------------------------------------------------------------------
# Rows <-> JSON payloads. A payload must rebuild the exact frame row for a replay, so each column's
# type is kept beside it as a short code.
# ---------------------------------------------------------------------------------------------


def type_code(dtype: pl.DataType) -> str:
    """A short, stable code for a polars dtype (stored with each payload)."""
    import polars as pl

    if dtype.is_integer():
        return "int"
    if dtype.is_float():
        return "float"
    if isinstance(dtype, pl.Decimal):
        return "decimal"
    if dtype == pl.Boolean:
        return "bool"
    if dtype in (pl.String, pl.Categorical, pl.Enum) or isinstance(dtype, (pl.Categorical, pl.Enum)):
        return "str"
    if dtype == pl.Date:
        return "date"
    if isinstance(dtype, pl.Datetime):
        return f"datetime[{dtype.time_zone}]" if dtype.time_zone else "datetime"
    if dtype == pl.Time:
        return "time"
    if isinstance(dtype, pl.Duration):
        return "duration"
    if dtype == pl.Binary:
        return "binary"
    return "json"


def _encode(value: Any, code: str) -> Any:
    if value is None:
        return None
    if code == "float":
        f = float(value)
        return f if math.isfinite(f) else str(f)  # "nan", "inf", "-inf": JSON has no such numbers
    if code == "decimal":
        return str(value)
    if code in ("date", "time") or code.startswith("datetime"):
        return value.isoformat()
    if code == "duration":
        return value.total_seconds()
    if code == "binary":
        return base64.b64encode(bytes(value)).decode("ascii")
    if code == "json":
        return _json_safe(value)
    return value


def _json_safe(value: Any) -> Any:
    import polars as pl

    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, pl.Series)):
        return [_json_safe(v) for v in value]
    return str(value)


def _decode(value: Any, code: str) -> Any:
    if value is None:
        return None
    if code == "float":
        return float(value)
    if code == "decimal":
        return Decimal(value)
    if code == "date":
        return dt.date.fromisoformat(value)
    if code == "time":
        return dt.time.fromisoformat(value)
    if code.startswith("datetime"):
        return dt.datetime.fromisoformat(value)
    if code == "duration":
        return dt.timedelta(seconds=value)
    if code == "binary":
        return base64.b64decode(value)
    return value


def _dtype_for(code: str, values: list[Any]) -> pl.DataType | None:
    import polars as pl

    if code == "int":
        return pl.Int64()
    if code == "float":
        return pl.Float64()
    if code == "bool":
        return pl.Boolean()
    if code == "str":
        return pl.String()
    if code == "date":
        return pl.Date()
    if code == "time":
        return pl.Time()
    if code == "duration":
        return pl.Duration("us")
    if code == "binary":
        return pl.Binary()
    if code == "datetime":
        return pl.Datetime("us")
    if code.startswith("datetime["):
        return pl.Datetime("us", code[len("datetime[") : -1])
    if code == "decimal":
        scale = max((-v.as_tuple().exponent for v in values if v is not None and v.is_finite()), default=0)
        return pl.Decimal(38, max(scale, 0))
    return None  # json: let polars infer


def frame_types(frame: Any) -> dict[str, str]:
    """Column -> type code of a pandas or polars frame."""
    return {name: type_code(dtype) for name, dtype in as_polars(frame).schema.items()}


def as_polars(frame: Any) -> pl.DataFrame:
    """The frame as polars (pandas frames are converted; both engines then hash alike)."""
    import polars as pl

    if isinstance(frame, pl.DataFrame):
        return frame
    return pl.from_pandas(frame)


def encode_row(row: dict[str, Any], types: dict[str, str]) -> dict[str, Any]:
    """A JSON-safe payload for one row (values as produced by ``polars.DataFrame.iter_rows``)."""
    return {name: _encode(row.get(name), types.get(name, "json")) for name in types}


def row_hash(payload: dict[str, Any]) -> str:
    """The stable identity of a row: sha256 of its canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def frame_payloads(frame: Any) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Every row of a frame as a JSON-safe payload, and the column type codes."""
    pl_frame = as_polars(frame)
    types = {name: type_code(dtype) for name, dtype in pl_frame.schema.items()}
    return [encode_row(row, types) for row in pl_frame.iter_rows(named=True)], types


def frame_from_payloads(payloads: Sequence[dict[str, Any]], types: dict[str, str]) -> pl.DataFrame:
    """Rebuild a polars frame from payloads of one shape (the inverse of :func:`frame_payloads`)."""
    import polars as pl

    columns: dict[str, pl.Series] = {}
    for name, code in types.items():
        values = [_decode(p.get(name), code) for p in payloads]
        columns[name] = pl.Series(name, values, dtype=_dtype_for(code, values), strict=False)
    return pl.DataFrame(columns, height=len(payloads)) if columns else pl.DataFrame(height=len(payloads))


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    """Where rejected rows come from: the asset, its partition, its target table, the run and step."""

    asset_key: str
    run_id: str
    step: str | None = None
    partition_key: str | None = None
    target: str | None = None


@dataclass(frozen=True)
class Rejected:
    """One rejected row, ready to record. ``payload`` is JSON-safe; ``row_hash`` its identity."""

    payload: dict[str, Any] = field(repr=False)
    types: dict[str, str] = field(repr=False)
    row_hash: str
    stage: str
    error_class: str
    error_message: str = field(repr=False)
    error_trace: str | None = field(default=None, repr=False)

    @classmethod
    def of(
        cls,
        row: dict[str, Any],
        types: dict[str, str],
        *,
        stage: str,
        error: BaseException | None = None,
        error_class: str | None = None,
        message: str | None = None,
        identity: str | None = None,
    ) -> Rejected:
        """Build from a raw row and either an exception (its trace is kept) or a class and message.

        ``identity`` overrides the row hash: a corrected payload keeps its original row's identity.
        """
        payload = encode_row(row, types)
        trace = None
        if error is not None:
            error_class = error_class or type(error).__name__
            message = message or (str(error) or type(error).__name__)
            trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        if not error_class or message is None:
            raise ValueError("a rejection needs an exception or an error class and a message")
        return cls(payload, types, identity or row_hash(payload), stage, error_class, message, trace)


_STAGE_COLUMNS = (
    "row_hash", "stage", "error_class", "error_message", "error_trace", "payload", "payload_types",
)


def record(conn: psycopg.Connection, origin: Origin, rejected: Iterable[Rejected]) -> int:
    """Record rejected rows in the caller's transaction; returns the number of distinct entries.

    Call it inside the transaction that writes the asset's data (the IO layer's ``on_commit`` hook),
    so the data and its dead letters commit or roll back together. Rows go to a temporary staging
    table by COPY, then into ``etl.dead_letters`` in one statement: a row seen before keeps its
    payload and first failure, and gets the new error, ``attempts + 1`` and ``status = 'pending'``
    (a discarded row stays discarded).
    """
    items = list(rejected)
    if not items:
        return 0
    stage_table = sql.Identifier(f"_dlq_stage_{uuid.uuid4().hex[:12]}")
    with conn.transaction():
        conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE {} (row_hash text, stage text, error_class text, error_message text, "
                "error_trace text, payload jsonb, payload_types jsonb) ON COMMIT DROP"
            ).format(stage_table)
        )
        with conn.cursor() as cur:
            copy_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(
                stage_table, sql.SQL(", ").join(map(sql.Identifier, _STAGE_COLUMNS))
            )
            with cur.copy(copy_sql) as copy:
                for item in items:
                    copy.write_row(
                        (
                            item.row_hash, item.stage, item.error_class, item.error_message,
                            item.error_trace, Jsonb(item.payload), Jsonb(item.types),
                        )
                    )
        result = conn.execute(
            sql.SQL(
                """
                INSERT INTO {table} AS d (asset_key, partition_key, target, run_id, first_run_id, step,
                    stage, error_class, error_message, error_trace, payload, payload_types, row_hash)
                SELECT DISTINCT ON (row_hash) %(asset)s, %(partition)s, %(target)s, %(run)s, %(run)s,
                       %(step)s, stage, error_class, error_message, error_trace, payload, payload_types,
                       row_hash
                FROM {stage}
                ORDER BY row_hash
                ON CONFLICT ON CONSTRAINT dead_letters_row DO UPDATE SET
                    run_id = EXCLUDED.run_id,
                    step = EXCLUDED.step,
                    target = COALESCE(EXCLUDED.target, d.target),
                    stage = EXCLUDED.stage,
                    error_class = EXCLUDED.error_class,
                    error_message = EXCLUDED.error_message,
                    error_trace = EXCLUDED.error_trace,
                    last_failed_at = now(),
                    attempts = d.attempts + 1,
                    status = CASE WHEN d.status = 'discarded' THEN 'discarded' ELSE 'pending' END,
                    resolved_run_id = CASE WHEN d.status = 'discarded' THEN d.resolved_run_id END,
                    resolved_at = CASE WHEN d.status = 'discarded' THEN d.resolved_at END
                """
            ).format(table=TABLE, stage=stage_table),
            {
                "asset": origin.asset_key,
                "partition": origin.partition_key,
                "target": origin.target,
                "run": origin.run_id,
                "step": origin.step,
            },
        )
        return result.rowcount


# ---------------------------------------------------------------------------------------------
# Reading and resolving
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetter:
    """One entry of ``etl.dead_letters``. Payload and message stay out of ``repr`` (and so out of logs)."""

    id: int
    asset_key: str
    partition_key: str | None
    target: str | None
    status: str
    stage: str
    error_class: str
    attempts: int
    row_hash: str
    run_id: str
    step: str | None
    first_failed_at: dt.datetime
    last_failed_at: dt.datetime
    resolved_run_id: str | None
    error_message: str = field(repr=False)
    payload: dict[str, Any] = field(repr=False)
    payload_types: dict[str, str] = field(repr=False)


_COLUMNS = (
    "id", "asset_key", "partition_key", "target", "status", "stage", "error_class", "attempts",
    "row_hash", "run_id", "step", "first_failed_at", "last_failed_at", "resolved_run_id", "error_message",
    "payload", "payload_types",
)
_UNSET = object()


def _where(
    *, asset_key: str | None, status: str | None, ids: Sequence[int] | None, partition_key: Any
) -> tuple[sql.Composable, list[Any]]:
    clauses: list[sql.Composable] = []
    params: list[Any] = []
    if status is not None:
        if status not in STATUSES:
            raise ConfigError(f"Unknown dead-letter status {status!r}; use one of {', '.join(STATUSES)}.")
        clauses.append(sql.SQL("status = %s"))
        params.append(status)
    if asset_key is not None:
        clauses.append(sql.SQL("asset_key = %s"))
        params.append(asset_key)
    if ids is not None:
        clauses.append(sql.SQL("id = ANY(%s)"))
        params.append(list(ids))
    if partition_key is not _UNSET:
        clauses.append(sql.SQL("partition_key IS NOT DISTINCT FROM %s"))
        params.append(partition_key)
    where = sql.SQL(" AND ").join(clauses) if clauses else sql.SQL("TRUE")
    return where, params


def fetch(
    conn: psycopg.Connection,
    *,
    asset_key: str | None = None,
    status: str | None = "pending",
    ids: Sequence[int] | None = None,
    partition_key: Any = _UNSET,
    limit: int | None = None,
    lock: bool = False,
) -> list[DeadLetter]:
    """Entries in id order. ``lock=True`` takes row locks (SKIP LOCKED) so two replays never share rows."""
    where, params = _where(asset_key=asset_key, status=status, ids=ids, partition_key=partition_key)
    query = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY id").format(
        sql.SQL(", ").join(map(sql.Identifier, _COLUMNS)), TABLE, where
    )
    if limit is not None:
        query = sql.SQL("{} LIMIT {}").format(query, sql.Literal(int(limit)))
    if lock:
        query = sql.SQL("{} FOR UPDATE SKIP LOCKED").format(query)
    with conn.cursor() as cur:
        cur.execute(query, params)
        return [DeadLetter(*row) for row in cur.fetchall()]


def corrections(conn: psycopg.Connection, asset_key: str, partition_key: str | None) -> dict[str, DeadLetter]:
    """Replayed entries of an asset (and partition) by row hash: the rows a rebuild must carry forward."""
    letters = fetch(conn, asset_key=asset_key, status="replayed", partition_key=partition_key)
    return {letter.row_hash: letter for letter in letters}


def mark_replayed(conn: psycopg.Connection, ids: Sequence[int], run_id: str) -> int:
    """Mark entries replayed by ``run_id`` (in the transaction that loaded them into the target)."""
    if not ids:
        return 0
    return conn.execute(
        sql.SQL(
            "UPDATE {} SET status = 'replayed', resolved_run_id = %s, resolved_at = now() "
            "WHERE id = ANY(%s)"
        ).format(TABLE),
        (run_id, list(ids)),
    ).rowcount


@dataclass(frozen=True)
class FailedAgain:
    """A replayed entry that failed again: its id and the new error."""

    id: int
    stage: str
    error_class: str
    error_message: str = field(repr=False)
    error_trace: str | None = field(default=None, repr=False)


def mark_failed_again(
    conn: psycopg.Connection, failures: Sequence[FailedAgain], run_id: str, step: str | None
) -> int:
    """Keep each entry pending with its new error, ``attempts + 1`` and the failing run."""
    if not failures:
        return 0
    payload = [
        {"id": f.id, "stage": f.stage, "cls": f.error_class, "msg": f.error_message, "trace": f.error_trace}
        for f in failures
    ]
    return conn.execute(
        sql.SQL(
            """
            UPDATE {} AS d SET stage = f.stage, error_class = f.cls, error_message = f.msg,
                error_trace = f.trace, attempts = d.attempts + 1, last_failed_at = now(),
                run_id = %s, step = %s, status = 'pending', resolved_run_id = NULL, resolved_at = NULL
            FROM jsonb_to_recordset(%s) AS f(id bigint, stage text, cls text, msg text, trace text)
            WHERE d.id = f.id
            """
        ).format(TABLE),
        (run_id, step, Jsonb(payload)),
    ).rowcount


def discard(
    conn: psycopg.Connection,
    *,
    ids: Sequence[int] | None = None,
    asset_key: str | None = None,
    by: str,
) -> int:
    """Mark pending entries discarded (kept for the record, never replayed); returns how many."""
    if ids is None and asset_key is None:
        raise ConfigError("Name the dead letters to discard: give ids or an asset key.")
    where, params = _where(asset_key=asset_key, status="pending", ids=ids, partition_key=_UNSET)
    return conn.execute(
        sql.SQL(
            "UPDATE {} SET status = 'discarded', resolved_run_id = %s, resolved_at = now() WHERE {}"
        ).format(TABLE, where),
        [by, *params],
    ).rowcount


def counts(conn: psycopg.Connection, asset_key: str | None = None) -> dict[tuple[str, str], int]:
    """(asset key, status) -> number of entries."""
    where, params = _where(asset_key=asset_key, status=None, ids=None, partition_key=_UNSET)
    rows = conn.execute(
        sql.SQL("SELECT asset_key, status, count(*) FROM {} WHERE {} GROUP BY 1, 2").format(TABLE, where),
        params,
    ).fetchall()
    return {(a, s): n for a, s, n in rows}


RESOLVED_STATUSES = ("replayed", "discarded")


def purge_resolved(conn: psycopg.Connection, older_than: Any, *, batch: int = 10_000) -> int:
    """Delete resolved entries (replayed or discarded) resolved more than ``older_than`` ago.

    ``older_than`` is a ``timedelta``. Pending entries are never touched, however old: a row that
    was neither loaded nor discarded must stay until someone decides. Deletes in batches of
    ``batch`` rows, each its own transaction when ``conn`` is in autocommit, so a large backlog
    never holds one long lock. Returns the number of entries removed.
    """
    stmt = sql.SQL(
        "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE status = ANY(%s) "
        "AND resolved_at < now() - %s::interval ORDER BY id LIMIT %s)"
    ).format(t=TABLE)
    removed = 0
    while True:
        with conn.transaction():
            n = conn.execute(stmt, (list(RESOLVED_STATUSES), older_than, batch)).rowcount
        removed += n
        if n < batch:
            return removed
