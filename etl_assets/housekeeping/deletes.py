"""Delete detection for extracts that cannot see deletes (``incremental``; ``chunked`` upsert).

An incremental extract reads rows whose cursor moved; a row deleted at the source moves nothing,
so it stays in the warehouse forever (dlt users ask for exactly this: dlt#3655). On a slow cadence
(daily, ``detect_source_deletes`` job) this module compares the keys of each such target with its
source and, per table (``deletes:`` in the tables YAML):

- ``delete`` (the default): deletes the warehouse rows whose key is gone from the source;
- ``flag``: keeps them and lists their keys in ``etl.source_deletes`` (replaced at each detection);
- ``off``: does nothing.

How, with bounded memory and without a race against the extract:

1. One warehouse transaction takes the target's advisory lock (``etl_assets.io.writer.lock_target``,
   the same lock every extract write takes), so no extract writes the target while we compare.
2. Only then is the source snapshot taken (REPEATABLE READ, read only). Every warehouse row was
   extracted before the lock, hence from a source state older than the snapshot: a key missing
   from the snapshot was really deleted (if it comes back later, the extract loads it again).
3. The warehouse keys are walked in primary-key order by keyset pagination (never OFFSET),
   ``chunk`` keys at a time. For each chunk ONE source query returns the keys that have no row
   (``unnest`` of the chunk's keys, ``NOT EXISTS`` through the source's primary-key index). Only
   one chunk of keys is in memory at a time.
4. The missing keys of the chunk are deleted (or flagged) in the same transaction, and at the end
   the extract's stored row count (``etl.state``, key ``table_rows``) is lowered by the number
   deleted, in that same transaction: data and count commit together.

Counts (keys compared, chunks, missing, deleted or flagged, a sample of keys) are reported in the
op's output metadata and as an ``AssetObservation`` of the target asset.
"""

# No `from __future__ import annotations`: Dagster inspects the op's context annotation at runtime.

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import psycopg
from psycopg import sql

from etl_assets.errors import MissingObject
from etl_assets.housekeeping.schedules import daily_schedule
from etl_assets.io.tables import TableRef
from etl_assets.pipeline_config import TableSpec, load_pipelines

DEFAULT_CHUNK = 50_000
SAMPLE_KEYS = 10
DELETE_DETECTION_CRON = "40 3 * * *"


@dataclass
class DeleteReport:
    target: TableRef
    mode: str
    keys_compared: int = 0
    chunks: int = 0
    missing: int = 0
    deleted: int = 0
    flagged: int = 0
    rows_after: int | None = None
    sample: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "target": dg.MetadataValue.text(str(self.target)),
            "mode": dg.MetadataValue.text(self.mode),
            "keys_compared": dg.MetadataValue.int(self.keys_compared),
            "chunks": dg.MetadataValue.int(self.chunks),
            "keys_gone_from_source": dg.MetadataValue.int(self.missing),
            "rows_deleted": dg.MetadataValue.int(self.deleted),
            "rows_flagged": dg.MetadataValue.int(self.flagged),
            "duration_seconds": dg.MetadataValue.float(round(self.seconds, 3)),
        }
        if self.rows_after is not None:
            meta["dagster/row_count"] = dg.MetadataValue.int(self.rows_after)
        if self.sample:
            meta["sample_keys"] = dg.MetadataValue.json(self.sample)
        return meta


def _types(conn: psycopg.Connection, table: TableRef, columns: Sequence[str], where: str) -> list[str]:
    """The SQL types of ``columns`` of ``table`` (so text keys cast back to them and use the index)."""
    rows = dict(
        conn.execute(
            """SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
               WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped""",
            (table.regclass_text,),
        ).fetchall()
    )
    if not rows:
        raise MissingObject(f"Delete detection: table {table} does not exist in the {where} database.")
    missing = [c for c in columns if c not in rows]
    if missing:
        raise MissingObject(
            f"Delete detection: {where} table {table} has no column(s) {', '.join(missing)} of the "
            "declared primary_key; correct the declaration."
        )
    return [rows[c] for c in columns]


def _keyset_query(target: TableRef, key: Sequence[str], types: Sequence[str], first: bool) -> sql.Composed:
    # Qualified names: an unqualified ORDER BY "id" would sort by the text output column "id".
    cols = sql.SQL(", ").join(sql.Identifier("t", c) for c in key)
    as_text = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier("t", c)) for c in key)
    after = sql.SQL("")
    if not first:
        bound = sql.SQL(", ").join(sql.SQL("%s::{}").format(sql.SQL(t)) for t in types)
        after = sql.SQL(" WHERE ({}) > ({})").format(cols, bound)
    return sql.SQL("SELECT {txt} FROM {t} t{after} ORDER BY {cols} LIMIT %s").format(
        txt=as_text, t=target.ident, after=after, cols=cols
    )


def _missing_query(source: TableRef, key: Sequence[str], types: Sequence[str]) -> sql.Composed:
    """The ordinals of the chunk's keys that have no row in the source."""
    names = [sql.Identifier(f"k{i}") for i in range(len(key))]
    unnest = sql.SQL(", ").join(sql.SQL("%s::text[]") for _ in key)
    match = sql.SQL(" AND ").join(
        sql.SQL("s.{c} = k.{k}::{t}").format(c=sql.Identifier(c), k=k, t=sql.SQL(t))
        for c, k, t in zip(key, names, types, strict=True)
    )
    return sql.SQL(
        "SELECT k.ord FROM unnest({u}) WITH ORDINALITY AS k({ks}, ord) "
        "WHERE NOT EXISTS (SELECT 1 FROM {src} s WHERE {m}) ORDER BY k.ord"
    ).format(u=unnest, ks=sql.SQL(", ").join(names), src=source.ident, m=match)


def _delete_query(target: TableRef, key: Sequence[str], types: Sequence[str]) -> sql.Composed:
    names = [sql.Identifier(f"k{i}") for i in range(len(key))]
    unnest = sql.SQL(", ").join(sql.SQL("%s::text[]") for _ in key)
    match = sql.SQL(" AND ").join(
        sql.SQL("t.{c} = k.{k}::{t}").format(c=sql.Identifier(c), k=k, t=sql.SQL(t))
        for c, k, t in zip(key, names, types, strict=True)
    )
    return sql.SQL("DELETE FROM {t} t USING unnest({u}) AS k({ks}) WHERE {m}").format(
        t=target.ident, u=unnest, ks=sql.SQL(", ").join(names), m=match
    )


def detect_deletes(
    spec: TableSpec,
    source: psycopg.Connection,
    warehouse: psycopg.Connection,
    *,
    mode: str | None = None,
    chunk: int = DEFAULT_CHUNK,
    run_id: str | None = None,
) -> DeleteReport:
    """Find (and delete or flag) the target's keys gone from the source; see the module docstring.

    ``source`` and ``warehouse`` are connections with autocommit off and no open transaction.
    """
    from etl_assets.extract.common import ROWS_KEY
    from etl_assets.io.writer import lock_target
    from etl_assets.migrations import ensure_migrated

    mode = mode or spec.deletes
    report = DeleteReport(spec.target, mode)
    if mode == "off":
        return report
    started = time.perf_counter()
    key = list(spec.primary_key)
    if not key:
        raise MissingObject(f"Delete detection on {spec.target} needs a primary_key in the declaration.")
    ensure_migrated(warehouse)
    warehouse.commit()
    with warehouse.transaction():
        lock_target(warehouse, spec.target)
        wh_types = _types(warehouse, spec.target, key, "warehouse")
        with source.transaction():
            source.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            src_types = _types(source, spec.source, key, "source")
            if mode == "flag":
                warehouse.execute("DELETE FROM etl.source_deletes WHERE target = %s", (str(spec.target),))
            missing_q = _missing_query(spec.source, key, src_types)
            delete_q = _delete_query(spec.target, key, wh_types)
            last: tuple[str, ...] | None = None
            while True:
                query = _keyset_query(spec.target, key, wh_types, first=last is None)
                params = [*(last or ()), chunk]
                rows = warehouse.execute(query, params).fetchall()
                if not rows:
                    break
                report.chunks += 1
                report.keys_compared += len(rows)
                last = rows[-1]
                columns = [list(col) for col in zip(*rows, strict=True)]
                gone = [rows[o - 1] for (o,) in source.execute(missing_q, columns).fetchall()]
                if gone:
                    report.missing += len(gone)
                    for k in gone[: SAMPLE_KEYS - len(report.sample)]:
                        report.sample.append(dict(zip(key, k, strict=True)))
                    gone_columns = [list(col) for col in zip(*gone, strict=True)]
                    if mode == "delete":
                        report.deleted += warehouse.execute(delete_q, gone_columns).rowcount
                    else:
                        with warehouse.cursor() as cur:
                            cur.executemany(
                                "INSERT INTO etl.source_deletes (target, key, run_id) VALUES (%s, %s, %s) "
                                "ON CONFLICT (target, key) DO UPDATE SET detected_at = now(), "
                                "run_id = EXCLUDED.run_id",
                                [(str(spec.target), json.dumps(dict(zip(key, k, strict=True))), run_id)
                                 for k in gone],
                            )
                        report.flagged += len(gone)
                if len(rows) < chunk:
                    break
        if report.deleted:
            # The extract keeps the target's exact row count in its state row; move it with the data.
            row = warehouse.execute(
                "UPDATE etl.state SET state = jsonb_set(state, ARRAY[%s], "
                "to_jsonb((state ->> %s)::bigint - %s)) "
                "WHERE target = %s AND jsonb_typeof(state -> %s) = 'number' RETURNING (state ->> %s)::bigint",
                (ROWS_KEY, ROWS_KEY, report.deleted, str(spec.target), ROWS_KEY, ROWS_KEY),
            ).fetchone()
            report.rows_after = int(row[0]) if row else None
    report.seconds = time.perf_counter() - started
    return report


def _op_name(target: TableRef) -> str:
    import hashlib
    import re

    text = f"{target.schema}__{target.name}"
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", text)
    if cleaned != text:
        cleaned = f"{cleaned}_{hashlib.sha1(text.encode()).hexdigest()[:6]}"
    return f"detect_deletes__{cleaned}"


def build_delete_op(spec: TableSpec) -> dg.OpDefinition:
    """The op comparing one target with its source."""
    from etl_assets.extract.assets import source_op_tags
    from etl_assets.resources import source_key

    asset_key = dg.AssetKey(spec.asset_key_path)
    # The table's own source (a named source's resource): comparing with another database would
    # take every key for deleted.
    source = source_key(spec)

    @dg.op(
        name=_op_name(spec.target),
        required_resource_keys={source, "warehouse"},
        tags=source_op_tags(spec),
        description=f"Keys of {spec.target} gone from {spec.source}: deletes: {spec.deletes}.",
        pool="warehouse",  # the same pool as every other warehouse writer
    )
    def _detect(context: dg.OpExecutionContext) -> dg.Output[int]:
        with getattr(context.resources, source).connect() as src, context.resources.warehouse.connect() as wh:
            report = detect_deletes(spec, src, wh, run_id=context.run_id)
        context.log.info(
            f"{spec.target}: compared {report.keys_compared:,} keys in {report.chunks} chunk(s); "
            f"{report.missing} gone from {spec.source}: {report.deleted} deleted, {report.flagged} flagged"
        )
        context.log_event(
            dg.AssetObservation(asset_key=asset_key, metadata={
                k: v for k, v in report.metadata().items() if k != "dagster/row_count"
            })
        )
        return dg.Output(report.missing, metadata=report.metadata())

    return _detect


def delete_detection_specs(config: Any = None) -> list[TableSpec]:
    config = config or load_pipelines()
    return [s for s in config.tables if s.deletes != "off"]


def build_delete_job(specs: Sequence[TableSpec]) -> dg.JobDefinition | None:
    if not specs:
        return None
    ops = [build_delete_op(s) for s in specs]

    @dg.job(
        name="detect_source_deletes",
        description="Delete detection: keys present in the warehouse but gone from the source, per table "
        "deleted or flagged (deletes: in the tables YAML).",
    )
    def _job() -> None:
        for op in ops:
            op()

    return _job


def build_defs() -> dg.Definitions:
    job = build_delete_job(delete_detection_specs())
    if job is None:
        return dg.Definitions()
    schedule = daily_schedule(
        "detect_source_deletes_daily", job, DELETE_DETECTION_CRON,
        "Daily: find warehouse rows whose key is gone from the source; delete or flag them.",
    )
    return dg.Definitions(jobs=[job], schedules=[schedule])
