"""What the command line prints, in one place: start messages, progress bars, durations, tables.

Why a module of its own: the console is read by people, and the same small rules apply everywhere —
never a Python ``None`` or a ``timedelta`` repr, "1 asset" but "2 assets", a header on every table,
and a progress bar only where a person watches a terminal. Progress bars are tqdm's (a well-kept
library: it handles terminal width, rates and remaining time); when the bar's stream is not a
terminal, or ``ETL_PROGRESS=off``, the bar is replaced by a few plain lines (or nothing), so logs
and pipes never fill with carriage returns.

Start messages (:func:`announce`) go to standard error, so that commands whose standard output is
meant for a program (``etl-assets env``) stay clean; they are printed only once the command line
has called :func:`enable_announcements` (library use — a Dagster code server, a test — stays quiet).
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

PROGRESS_VAR = "ETL_PROGRESS"  # "on", "off" or "auto" (default: a bar when the stream is a terminal)
_announce = False


def enable_announcements(on: bool = True) -> None:
    """Let :func:`announce` print (the command line turns this on; libraries stay quiet)."""
    global _announce
    _announce = on


def announce(text: str, stream: IO[str] | None = None) -> None:
    """Say what is happening now ("starting the embedded PostgreSQL under …"), on standard error."""
    if _announce:
        print(text, file=stream or sys.stderr, flush=True)


def progress_mode() -> str:
    """``on``, ``off`` or ``auto`` from ``ETL_PROGRESS`` (anything unknown counts as ``auto``)."""
    raw = os.environ.get(PROGRESS_VAR, "auto").strip().lower()
    if raw in ("0", "off", "no", "false", "none"):
        return "off"
    if raw in ("1", "on", "yes", "true", "always"):
        return "on"
    return "auto"


def bar_enabled(stream: IO[str] | None = None) -> bool:
    """Whether a progress bar is drawn on ``stream`` (default standard error)."""
    mode = progress_mode()
    if mode != "auto":
        return mode == "on"
    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real file
        return False


class Progress:
    """A progress bar (tqdm) on a terminal; plain lines, or nothing, elsewhere.

    ``lines`` prints a plain line per :meth:`update` when no bar is drawn (for long work whose log
    should still show it advancing); ``out`` is where those lines go. ``quiet`` shows nothing at all;
    ``leave=False`` erases the bar when done; ``initial`` counts work done before (a resumed pass).
    """

    def __init__(
        self,
        total: int | None,
        description: str,
        *,
        unit: str = "rows",
        lines: bool = False,
        out: Callable[[str], None] | None = None,
        stream: IO[str] | None = None,
        quiet: bool = False,
        leave: bool = True,
        initial: int = 0,
    ) -> None:
        self.total = total
        self.description = description
        self.unit = unit
        self.count = initial
        self.lines = lines and not quiet
        self.out = out or (lambda s: print(s, flush=True))
        self._bar: Any = None
        if not quiet and bar_enabled(stream):
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, desc=description, unit=f" {unit}", unit_scale=unit == "rows",
                file=stream or sys.stderr,
                leave=leave, dynamic_ncols=True, initial=initial,
            )

    @property
    def drawn(self) -> bool:
        """Whether a bar is shown (else plain lines or nothing)."""
        return self._bar is not None

    def update(self, n: int, note: str | None = None) -> None:
        """Count ``n`` more units done; ``note`` replaces the bar's description or names the line."""
        self.count += n
        if self._bar is not None:
            if note:
                self._bar.set_description_str(note, refresh=False)
            self._bar.update(n)
        elif self.lines:
            of = f" of {self.total:,}" if self.total is not None else ""
            self.out(f"  {note or self.description}: {self.count:,}{of} {self.unit}")

    def write(self, text: str) -> None:
        """Print a line of the work's own log above the bar (tqdm keeps the bar below it), or
        through ``out`` when no bar is drawn."""
        if self._bar is not None:
            self._bar.write(text, file=self._bar.fp)
        else:
            self.out(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(total: int | None, description: str, **kwargs: Any) -> Progress:
    """A :class:`Progress` for ``total`` units of work (None: unknown)."""
    return Progress(total, description, **kwargs)


def command_progress(total: int | None, description: str, **kwargs: Any) -> Progress:
    """A :class:`Progress` for work deep inside a run (a chunked extract): drawn only in a command
    line process (see :func:`enable_announcements`), never in a Dagster code server or daemon,
    whatever ``ETL_PROGRESS`` says. The bar disappears when done; the run's own line follows."""
    return Progress(total, description, quiet=not _announce, leave=False, **kwargs)


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 asset``, ``2 assets``, ``1,000 entries`` (with ``nouns`` for irregular plurals)."""
    return f"{count:,} {noun if count == 1 else (nouns or noun + 's')}"


def duration_text(value: float | _dt.timedelta | None) -> str:
    """A duration as people write it: ``7 days``, ``1 day 2 h``, ``2 min 5 s``, ``1.2 s``.

    Never ``7 days, 0:00:00``; None (no duration) reads ``none``.
    """
    if value is None:
        return "none"
    seconds = value.total_seconds() if isinstance(value, _dt.timedelta) else float(value)
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds < 60:
        text = f"{seconds:.1f} s" if seconds < 10 and seconds != int(seconds) else f"{seconds:.0f} s"
        return sign + text
    whole = round(seconds)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    parts: list[str] = []
    if days:
        parts.append(plural(days, "day"))
    if hours:
        parts.append(f"{hours} h")
    if minutes and not days:
        parts.append(f"{minutes} min")
    if secs and not days and not hours:
        parts.append(f"{secs} s")
    return sign + " ".join(parts)


def value_text(value: object, none: str = "none") -> str:
    """A value for a message: ``none`` (or the caller's word) instead of Python's ``None``."""
    if value is None:
        return none
    if isinstance(value, _dt.timedelta):
        return duration_text(value)
    return str(value)


def format_table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], *, right: Iterable[int] = (), indent: str = ""
) -> list[str]:
    """Lines of a table with a header row; ``right`` names the columns aligned right (numbers).

    Cells that are None print as ``-``; numbers get thousands separators.
    """

    def cell(v: object) -> str:
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, int):
            return f"{v:,}"
        return value_text(v)

    body = [[cell(v) for v in row] for row in rows]
    table = [list(headers), *body]
    widths = [max(len(r[i]) for r in table) for i in range(len(headers))]
    right = set(right)
    lines = []
    for r in table:
        text = "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        lines.append(indent + text.rstrip())
    return lines


def print_table(headers: Sequence[str], rows: Iterable[Sequence[object]], **kwargs: Any) -> None:
    """Print :func:`format_table`'s lines on standard output."""
    for line in format_table(headers, rows, **kwargs):
        print(line)

