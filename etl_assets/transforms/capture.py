"""Running a transform with error capture: good rows go on, rejected rows become dead letters.

A transform is a function ``frame -> TransformResult``: the output frame of the rows that passed and a
:class:`RowFailure` for each input row that did not, by its position in the input. This module turns
that into an :class:`Outcome` that

- reconciles (rows in = rows out + rows dead-lettered, or it raises: a transform that loses or
  invents rows is a bug, not a data problem),
- enforces the asset's failure-rate threshold (above it nothing is written: the dead-letter table is
  not a place to hide a broken transform),
- carries operator corrections forward: a replayed dead letter whose payload was corrected replaces
  its original row whenever that row appears in the input again, so a target rebuilt every run
  (truncate_insert, swap) keeps the corrected row,
- and gives the ``on_commit`` hook that records the dead letters in the data's own transaction and
  the materialization metadata (counts only; never payloads or messages).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from etl_assets import dlq
from etl_assets.io.typemap import is_pandas, is_polars


@dataclass(frozen=True)
class RowFailure:
    """Input row ``position`` failed at ``stage``: with the exception raised, or a class and message."""

    position: int
    stage: str
    error: BaseException | None = None
    error_class: str | None = None
    message: str | None = field(default=None, repr=False)


@dataclass
class TransformResult:
    frame: Any  # pandas or polars: the rows that passed, transformed
    failures: list[RowFailure]


Transform = Callable[[Any], TransformResult]


class ReconciliationError(AssertionError):
    """A transform returned a number of rows that does not add up: a bug in the transform."""


class FailureRateExceeded(Exception):
    """More rows failed than the asset's threshold allows; nothing was written."""


def _height(frame: Any) -> int:
    return frame.height if is_polars(frame) else len(frame)


@dataclass
class Outcome:
    frame: Any
    rejected: list[dlq.Rejected]
    rows_in: int
    corrections_applied: int = 0
    positions: list[int] = field(default_factory=list)  # input position of each rejected row

    @property
    def rows_out(self) -> int:
        return _height(self.frame)

    @property
    def failure_rate(self) -> float:
        return len(self.rejected) / self.rows_in if self.rows_in else 0.0

    def by_class(self) -> dict[str, int]:
        return dict(Counter(f"{r.stage}:{r.error_class}" for r in self.rejected).most_common())

    def metadata(self) -> dict[str, Any]:
        """Numbers only (the UI plots them), plus counts per stage and error class."""
        return {
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "dead_letters": len(self.rejected),
            "success_rate": round(1.0 - self.failure_rate, 6),
            "corrections_applied": self.corrections_applied,
            "dead_letters_by_class": self.by_class(),
        }

    def check_rate(self, asset: str, max_failure_rate: float) -> None:
        if self.rows_in and self.failure_rate > max_failure_rate:
            classes = ", ".join(f"{k}: {v}" for k, v in self.by_class().items())
            raise FailureRateExceeded(
                f"{asset} rejected {len(self.rejected)} of {self.rows_in} rows "
                f"({self.failure_rate:.1%}), above its max_failure_rate of {max_failure_rate:.1%}; "
                f"nothing was written. Rejections by stage:class: {classes}. Fix the transform or its "
                "input, or raise max_failure_rate in the asset's config if this rate is expected."
            )

    def hook(self, origin: dlq.Origin) -> Callable[[psycopg.Connection], None]:
        """The ``on_commit`` callable that records this outcome's dead letters in the data's transaction."""
        rejected = self.rejected

        def record_dead_letters(conn: psycopg.Connection) -> None:
            dlq.record(conn, origin, rejected)

        return record_dead_letters


def _substitute(frame: Any, corrections: dict[str, dlq.DeadLetter]) -> tuple[Any, list[str] | None, int]:
    """Replace input rows that have a corrected dead letter by the correction.

    Returns the frame to transform, the identity (original row hash) of each of its rows when any row
    was replaced (else None), and how many were replaced.
    """
    if not corrections:
        return frame, None, 0
    payloads, types = dlq.frame_payloads(frame)
    identities = [dlq.row_hash(p) for p in payloads]
    positions = [i for i, h in enumerate(identities) if h in corrections]
    if not positions:
        return frame, identities, 0
    for i in positions:
        corrected = corrections[identities[i]].payload
        payloads[i] = {name: corrected.get(name) for name in types}
    rebuilt = dlq.frame_from_payloads(payloads, types)
    source = dlq.as_polars(frame)
    rebuilt = rebuilt.cast(dict(source.schema), strict=False)
    if is_pandas(frame):
        rebuilt_pd = rebuilt.to_pandas()
        rebuilt_pd.index = frame.index
        rebuilt_pd = rebuilt_pd.astype(frame.dtypes.to_dict(), errors="ignore")
        rebuilt_pd.attrs = dict(frame.attrs)  # e.g. the numeric(p,s) the reader recorded
        return rebuilt_pd, identities, len(positions)
    return rebuilt, identities, len(positions)


def edited_corrections(letters: dict[str, dlq.DeadLetter]) -> dict[str, dlq.DeadLetter]:
    """The replayed entries whose payload differs from their original row (an operator corrected it)."""
    return {h: letter for h, letter in letters.items() if dlq.row_hash(letter.payload) != h}


def apply(
    transform: Transform,
    frame: Any,
    *,
    corrections: dict[str, dlq.DeadLetter] | None = None,
    identities: Sequence[str] | None = None,
) -> Outcome:
    """Run ``transform`` on ``frame`` with error capture; see the module docstring.

    ``corrections``: replayed, corrected dead letters of this asset by original row hash (from
    :func:`etl_assets.dlq.corrections` filtered by :func:`edited_corrections`).
    ``identities``: the original row hash of each input row when the caller knows it (a replay).
    """
    rows_in = _height(frame)
    frame, found, applied = _substitute(frame, corrections or {})
    identities = list(identities) if identities is not None else found
    result = transform(frame)
    failures = result.failures
    positions = [f.position for f in failures]
    if len(set(positions)) != len(positions) or any(not 0 <= p < rows_in for p in positions):
        raise ReconciliationError("the transform reported a row twice or a position outside its input")
    rows_out = _height(result.frame)
    if rows_out + len(failures) != rows_in:
        raise ReconciliationError(
            f"rows in ({rows_in}) != rows out ({rows_out}) + rows rejected ({len(failures)}): "
            "the transform loses or invents rows"
        )
    rejected: list[dlq.Rejected] = []
    if failures:
        source = dlq.as_polars(frame)
        types = {name: dlq.type_code(dtype) for name, dtype in source.schema.items()}
        for failure in failures:
            row = source.row(failure.position, named=True)
            rejected.append(
                dlq.Rejected.of(
                    row,
                    types,
                    stage=failure.stage,
                    error=failure.error,
                    error_class=failure.error_class,
                    message=failure.message,
                    identity=identities[failure.position] if identities is not None else None,
                )
            )
    return Outcome(result.frame, rejected, rows_in, applied, [f.position for f in failures])
