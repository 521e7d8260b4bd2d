"""The write-mode table: each of our write modes next to the fastest plain bulk write, same run.

"Plain bulk write" means the fastest verified ceiling contender (``role == "ceiling"``: ADBC ingest,
a CSV COPY stream) loading the same frame into an empty table of the same shape, at the same size
and from the same frame type, measured in the same run. The ratio is mode seconds / ceiling
seconds: 1.0 means the mode costs nothing over a bare COPY; what is above 1.0 is the price of the
mode's guarantees (one transaction, dedup, unchanged rows left alone, indexes built, views kept).

Reusable: :func:`mode_ratios` takes the harness's result dicts (``bench.json`` ``results``), so
other reports (the benchmarks issue) can print or assert on the same figures.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModeRatio:
    mode: str
    frame: str
    rows: int
    seconds: float | None
    rows_per_second: float | None
    ceiling: str | None
    ceiling_seconds: float | None
    verified: bool

    @property
    def ratio(self) -> float | None:
        if self.seconds is None or not self.ceiling_seconds:
            return None
        return self.seconds / self.ceiling_seconds


def _get(r: Any, key: str) -> Any:
    return r.get(key) if isinstance(r, Mapping) else getattr(r, key, None)


def mode_ratios(results: Iterable[Any]) -> list[ModeRatio]:
    """Pair every ``ours`` load result with the fastest verified ceiling of its size and frame type."""
    results = list(results)
    best: dict[tuple[int, str], tuple[float, str]] = {}
    for r in results:
        if _get(r, "group") == "load" and _get(r, "role") == "ceiling" and _get(r, "verified"):
            key = (_get(r, "rows"), _get(r, "frame"))
            secs = _get(r, "seconds")
            if secs is not None and (key not in best or secs < best[key][0]):
                best[key] = (secs, _get(r, "name"))
    out: list[ModeRatio] = []
    for r in results:
        if _get(r, "group") != "load" or _get(r, "role") != "ours":
            continue
        ceiling = best.get((_get(r, "rows"), _get(r, "frame")))
        out.append(
            ModeRatio(
                mode=_get(r, "name"),
                frame=_get(r, "frame"),
                rows=_get(r, "rows"),
                seconds=_get(r, "seconds"),
                rows_per_second=_get(r, "rows_per_second"),
                ceiling=ceiling[1] if ceiling else None,
                ceiling_seconds=ceiling[0] if ceiling else None,
                verified=bool(_get(r, "verified")),
            )
        )
    return out


def format_mode_table(ratios: Iterable[ModeRatio]) -> str:
    """A plain-text table: mode, frame, rows, seconds, rows/s, ceiling seconds, ratio."""
    header = (
        f"{'write mode':<34} {'frame':<7} {'rows':>10} {'seconds':>8} {'rows/s':>11} "
        f"{'plain bulk write (fastest)':<30} {'seconds':>8} {'ratio':>6}"
    )
    lines = [header, "-" * len(header)]
    for m in ratios:
        secs = "-" if m.seconds is None else f"{m.seconds:.2f}"
        rps = "-" if m.rows_per_second is None else f"{m.rows_per_second:,.0f}"
        csecs = "-" if m.ceiling_seconds is None else f"{m.ceiling_seconds:.2f}"
        ratio = "-" if m.ratio is None else f"{m.ratio:.2f}x"
        flag = "" if m.verified else "  (NOT verified)"
        lines.append(
            f"{m.mode[:34]:<34} {m.frame:<7} {m.rows:>10,} {secs:>8} {rps:>11} "
            f"{(m.ceiling or '-')[:30]:<30} {csecs:>8} {ratio:>6}{flag}"
        )
    return "\n".join(lines)
