"""What starts a table's extract (a sensor interval, a cron schedule, or nothing) and how fresh it
must stay: the values of the ``automation:`` and ``freshness:`` keys of the tables declaration.

Pure parsing and arithmetic (no Dagster import), so the declaration parser can use it.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from dataclasses import dataclass

DEFAULT_INTERVAL = 30.0  # seconds, for incremental and cdc tables
DEFAULT_CRON = "0 2 * * *"  # daily 02:00 UTC, for full and chunked tables
MIN_INTERVAL = 5.0  # below this a sensor's own evaluation cost dominates
SENSOR_MODES = ("incremental", "cdc")  # the modes a cheap probe exists for

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)?\s*$")
_UNITS = {None: 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


class TriggerError(ValueError):
    """A value of ``automation:`` or ``freshness:`` that cannot be used; the message says why."""


@dataclass(frozen=True)
class Trigger:
    """``kind`` is ``sensor`` (poll the source every ``interval`` seconds), ``schedule`` (``cron``,
    UTC) or ``off`` (only manual runs)."""

    kind: str
    interval: float | None = None
    cron: str | None = None

    @property
    def label(self) -> str:
        """A name part people understand: ``every_30s``, ``daily_0200``, ``cron_...``."""
        if self.kind == "sensor":
            return f"every_{format_duration(self.interval or 0)}"
        if self.kind == "schedule":
            return cron_label(self.cron or "")
        return "off"


@dataclass(frozen=True)
class Freshness:
    """Seconds since the last materialization (or "checked, no change" observation) after which the
    table is WARN / FAIL."""

    warn: float | None
    fail: float


def parse_duration(value: object) -> float:
    """``30s``, ``5m``, ``2h``, ``1d`` or a bare number of seconds."""
    if isinstance(value, bool):
        raise TriggerError(f"must be a duration such as 30s, 5m, 2h or 1d, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value)) if isinstance(value, str) else None
        if not match:
            raise TriggerError(f"must be a duration such as 30s, 5m, 2h or 1d, got {value!r}")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise TriggerError(f"must be a positive duration, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact form: 30s, 5m, 2h, 1d (90s stays 90s)."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def parse_cron(value: object) -> str:
    """A five-field cron expression (evaluated in UTC), valid by the rules of Dagster's own cron
    evaluator, the one that runs the schedule (no separate cron library to disagree with it)."""
    from dagster._utils.schedules import is_valid_cron_string

    if not isinstance(value, str) or len(value.split()) != 5 or not is_valid_cron_string(value):
        raise TriggerError(
            f"must be a five-field cron expression such as \"0 2 * * *\" (daily 02:00 UTC), got {value!r}"
        )
    return " ".join(value.split())


def cron_label(cron: str) -> str:
    """``0 2 * * *`` -> ``daily_0200``, ``15 * * * *`` -> ``hourly_at_15``; otherwise the fields."""
    fields = cron.split()
    minute, hour, dom, month, dow = fields
    if minute.isdigit() and hour.isdigit() and (dom, month, dow) == ("*", "*", "*"):
        return f"daily_{int(hour):02d}{int(minute):02d}"
    if minute.isdigit() and (hour, dom, month, dow) == ("*", "*", "*", "*"):
        return f"hourly_at_{int(minute):02d}"
    cleaned = re.sub(r"[^0-9A-Za-z]+", "_", "_".join(fields)).strip("_")
    return f"cron_{cleaned}"


def cron_period(cron: str) -> float:
    """The longest gap between consecutive ticks over the next few weeks, in seconds (Dagster's own
    cron evaluator, as for the schedule)."""
    from dagster._utils.schedules import cron_string_iterator

    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp()
    ticks = list(itertools.islice(cron_string_iterator(start, cron, "UTC"), 60))
    return max((b - a).total_seconds() for a, b in itertools.pairwise(ticks))


def default_trigger(extract: str) -> Trigger:
    if extract in SENSOR_MODES:
        return Trigger("sensor", interval=DEFAULT_INTERVAL)
    return Trigger("schedule", cron=DEFAULT_CRON)


def parse_trigger(value: object, extract: str) -> Trigger:
    """The ``automation:`` value: absent (None) for the mode's default, ``off``, ``{interval: 30s}``
    (incremental and cdc only) or ``{cron: "0 2 * * *"}``."""
    if value is None:
        return default_trigger(extract)
    if value is False or (isinstance(value, str) and value.strip().lower() == "off"):
        return Trigger("off")
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in ("interval", "cron"):
        raise TriggerError(
            f"must be off, {{interval: 30s}} or {{cron: \"0 2 * * *\"}} (exactly one of interval, cron), "
            f"got {value!r}"
        )
    if "interval" in value:
        if extract not in SENSOR_MODES:
            raise TriggerError(
                f"interval (a sensor that probes the source) needs extract: incremental or cdc; a {extract} "
                "table has no cheap change probe: use {cron: \"...\"}"
            )
        try:
            seconds = parse_duration(value["interval"])
        except TriggerError as exc:
            raise TriggerError(f"interval {exc}") from None
        if seconds < MIN_INTERVAL:
            raise TriggerError(f"interval must be at least {MIN_INTERVAL:g}s, got {value['interval']!r}")
        return Trigger("sensor", interval=seconds)
    try:
        return Trigger("schedule", cron=parse_cron(value["cron"]))
    except TriggerError as exc:
        raise TriggerError(f"cron {exc}") from None


def default_freshness(trigger: Trigger) -> Freshness | None:
    """Windows derived from the trigger: a sensor table WARNs after 3 intervals (at least 5 min: a
    run takes tens of seconds to start) and FAILs after 10 (at least 15 min); a scheduled table after
    one cron period plus an hour of margin (WARN) or two periods plus an hour (FAIL). ``off``: None
    (the project-wide default applies)."""
    if trigger.kind == "sensor":
        interval = trigger.interval or DEFAULT_INTERVAL
        return Freshness(warn=max(3 * interval, 300.0), fail=max(10 * interval, 900.0))
    if trigger.kind == "schedule":
        period = cron_period(trigger.cron or DEFAULT_CRON)
        return Freshness(warn=period + 3600.0, fail=2 * period + 3600.0)
    return None


def parse_freshness(value: object) -> Freshness:
    """The ``freshness:`` value: ``{warn: 2h, fail: 6h}`` (fail required, warn optional, warn < fail)."""
    if not isinstance(value, dict) or "fail" not in value or set(value) - {"warn", "fail"}:
        raise TriggerError(f"must be a mapping {{warn: 2h, fail: 6h}} (fail required, warn optional), "
                           f"got {value!r}")
    try:
        fail = parse_duration(value["fail"])
    except TriggerError as exc:
        raise TriggerError(f"fail {exc}") from None
    warn = None
    if value.get("warn") is not None:
        try:
            warn = parse_duration(value["warn"])
        except TriggerError as exc:
            raise TriggerError(f"warn {exc}") from None
        if warn >= fail:
            raise TriggerError(f"warn ({value['warn']}) must be shorter than fail ({value['fail']})")
    if fail < 60:
        raise TriggerError(f"fail must be at least 1m (Dagster evaluates freshness about once a minute), "
                           f"got {value['fail']!r}")
    return Freshness(warn=warn, fail=fail)
