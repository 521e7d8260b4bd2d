"""Replaying dead letters through the current transform code, as a function and as a Dagster job.

For each pending dead letter of an asset with a :class:`~etl_assets.transforms.assets.ReplaySpec`:
the payloads are rebuilt into a frame and run through the asset's transform as it is now (after
someone fixed the code, or corrected a payload). In ONE transaction per asset:

- rows that pass are upserted into the asset's target by its primary key (so replaying twice adds
  nothing) and their entries marked ``replayed`` with the replaying run's id;
- rows that fail again stay ``pending`` with the new error and ``attempts + 1``.

Targets rebuilt on every run (truncate_insert, swap) re-derive all rows from their input at the next
regular run. A row fixed by a code change passes there too. A row whose payload was corrected in the
dead-letter table is carried forward: the regular run replaces its original row (same row hash) by
the correction (see :mod:`etl_assets.transforms.capture`), so it is not silently lost. When the
original row has left the input (fixed or deleted at the source), the correction no longer applies:
the source is the truth.

Entries are locked (``FOR UPDATE SKIP LOCKED``) so two replays never process one row twice.
"""

# No `from __future__ import annotations`: Dagster inspects the op's config annotation.

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import psycopg
from pydantic import Field

from etl_assets import dlq
from etl_assets.db import PostgresResource
from etl_assets.io import catalog
from etl_assets.io.typemap import polars_dtype_for
from etl_assets.io.writer import write_frame
from etl_assets.migrations import ensure_migrated
from etl_assets.transforms import capture


@dataclass
class AssetReplay:
    asset_key: str
    considered: int = 0
    replayed: int = 0
    failed_again: int = 0
    skipped: str | None = None  # why nothing was done (no replayer for this asset)
    by_class: dict[str, int] = field(default_factory=dict)


def _cast_to_target(conn: psycopg.Connection, frame: Any, target: Any) -> Any:
    """Cast the replayed rows to the target's column types so the write never alters the table."""
    frame = dlq.as_polars(frame)
    if catalog.table_oid(conn, target) is None:
        return frame
    types = {c.name: c.type for c in catalog.columns(conn, target)}
    casts = {name: polars_dtype_for(types[name]) for name in frame.columns if name in types}
    return frame.cast(casts, strict=False)


def replay(
    conn: psycopg.Connection,
    *,
    run_id: str,
    step: str | None = None,
    asset_key: str | None = None,
    ids: list[int] | None = None,
    limit: int | None = None,
    specs: dict[str, Any] | None = None,
) -> list[AssetReplay]:
    """Replay pending dead letters (all, one asset's, or the given ids); see the module docstring."""
    from etl_assets.transforms.assets import REPLAY

    specs = REPLAY if specs is None else specs
    ensure_migrated(conn)
    with conn.transaction():
        wanted = dlq.fetch(conn, asset_key=asset_key, status="pending", ids=ids, limit=limit)
    groups: dict[str, list[int]] = defaultdict(list)
    for letter in wanted:
        groups[letter.asset_key].append(letter.id)
    reports: list[AssetReplay] = []
    for key, letter_ids in groups.items():
        report = AssetReplay(key)
        reports.append(report)
        spec = specs.get(key)
        if spec is None and key == "stream/orders":  # events, not rows: the stream's own replayer
            from etl_assets.stream.replay import replay_letters

            with conn.transaction():
                replay_letters(conn, letter_ids, run_id=run_id, step=step, report=report)
            continue
        if spec is None:
            report.considered = len(letter_ids)
            report.skipped = "no replayer is registered for this asset"
            continue
        with conn.transaction():
            letters = dlq.fetch(conn, ids=letter_ids, status="pending", lock=True)
            report.considered = len(letters)
            by_shape: dict[str, list[dlq.DeadLetter]] = defaultdict(list)
            for letter in letters:
                by_shape[repr(sorted(letter.payload_types.items()))].append(letter)
            transform = spec.make_transform(conn)
            for shape in by_shape.values():
                frame = dlq.frame_from_payloads([x.payload for x in shape], shape[0].payload_types)
                outcome = capture.apply(transform, frame, identities=[x.row_hash for x in shape])
                failed_positions = dict(zip(outcome.positions, outcome.rejected, strict=True))
                again = [
                    dlq.FailedAgain(shape[pos].id, "replay:" + r.stage, r.error_class, r.error_message,
                                    r.error_trace)
                    for pos, r in failed_positions.items()
                ]
                passed = [x.id for pos, x in enumerate(shape) if pos not in failed_positions]
                hooks = [
                    lambda c, passed=passed: dlq.mark_replayed(c, passed, run_id),
                    lambda c, again=again: dlq.mark_failed_again(c, again, run_id, step),
                ]
                good = _cast_to_target(conn, outcome.frame, spec.target)
                if good.height:
                    write_frame(conn, good, spec.target, "upsert", primary_key=spec.primary_key,
                                on_commit=hooks, run_id=run_id)
                else:
                    for hook in hooks:
                        hook(conn)
                report.replayed += len(passed)
                report.failed_again += len(again)
                for r in outcome.rejected:
                    report.by_class[r.error_class] = report.by_class.get(r.error_class, 0) + 1
    return reports


class ReplayConfig(dg.Config):
    asset_key: str | None = Field(
        default=None, description="only this asset's dead letters, e.g. clean/customers"
    )
    ids: list[int] | None = Field(default=None, description="only these dead-letter ids")
    limit: int | None = Field(default=None, description="at most this many entries")


@dg.op(
    description="Replay pending dead letters through the current transform code (see README).",
    tags={"kind": "dead-letters"},
)
def replay_dead_letters(
    context: dg.OpExecutionContext, config: ReplayConfig, warehouse: PostgresResource
) -> None:
    with warehouse.connect() as conn:
        reports = replay(
            conn,
            run_id=context.run_id,
            step=context.get_step_execution_context().step.key,
            asset_key=config.asset_key,
            ids=config.ids,
            limit=config.limit,
        )
    for r in reports:
        context.log.info(
            f"{r.asset_key}: {r.considered} pending, {r.replayed} replayed, {r.failed_again} failed again"
            + (f" (skipped: {r.skipped})" if r.skipped else "")
        )
        context.log_event(
            dg.AssetObservation(
                asset_key=dg.AssetKey.from_user_string(r.asset_key),
                metadata={"dead_letters_replayed": r.replayed, "dead_letters_failed_again": r.failed_again},
            )
        )


@dg.job(description="Replay pending dead letters; run config ops.replay_dead_letters.config selects them.")
def dlq_replay() -> None:
    replay_dead_letters()
