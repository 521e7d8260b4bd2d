"""The console helpers: durations, plurals, tables with headers, progress bars only on terminals."""

from __future__ import annotations

import datetime as dt
import io

import pytest

from etl_assets import console


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (dt.timedelta(days=7), "7 days"),
        (dt.timedelta(days=1, hours=2, minutes=5), "1 day 2 h"),
        (dt.timedelta(minutes=2, seconds=5), "2 min 5 s"),
        (dt.timedelta(hours=3), "3 h"),
        (125, "2 min 5 s"),
        (1.234, "1.2 s"),
        (42, "42 s"),
        (0, "0 s"),
        (None, "none"),
    ],
)
def test_duration_text(value, text: str) -> None:
    assert console.duration_text(value) == text
    assert "0:00" not in console.duration_text(value)


def test_plural_and_value_text() -> None:
    assert console.plural(1, "asset") == "1 asset"
    assert console.plural(2, "asset") == "2 assets"
    assert console.plural(0, "entry", "entries") == "0 entries"
    assert console.plural(1_000, "row") == "1,000 rows"
    assert console.value_text(None) == "none"
    assert console.value_text(None, "first run") == "first run"
    assert console.value_text(dt.timedelta(days=7)) == "7 days"
    assert console.value_text(12) == "12"


def test_table_has_headers_and_aligns() -> None:
    lines = console.format_table(
        ["asset", "rows", "note"], [["raw/orders", 100_000, None], ["raw/x", 5, "ok"]], right=[1], indent="  "
    )
    assert lines == [
        "  asset          rows  note",
        "  raw/orders  100,000  -",
        "  raw/x             5  ok",
    ]
    assert console.format_table(["a", "b"], []) == ["a  b"]  # the header even without rows


def test_progress_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(console.PROGRESS_VAR, raising=False)
    assert console.bar_enabled(_Tty()) and not console.bar_enabled(io.StringIO())
    monkeypatch.setenv(console.PROGRESS_VAR, "off")
    assert not console.bar_enabled(_Tty())
    monkeypatch.setenv(console.PROGRESS_VAR, "on")
    assert console.bar_enabled(io.StringIO())
    monkeypatch.setenv(console.PROGRESS_VAR, "banana")  # unknown: auto
    assert console.progress_mode() == "auto"


def test_progress_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(console.PROGRESS_VAR, raising=False)
    tty, lines = _Tty(), []
    with console.progress(200, "seeding shop", stream=tty, lines=True, out=lines.append) as bar:
        assert bar.drawn
        bar.update(50, "shop.customers")
        bar.update(150, "shop.orders")
    assert "200/200" in tty.getvalue() and "shop.orders" in tty.getvalue()
    assert lines == []  # the bar replaces the plain lines


def test_progress_write_prints_log_lines_above_the_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    """Work that logs its own lines (the benchmark, a backfill's runs) writes them through the bar:
    above it on a terminal, straight to ``out`` elsewhere."""
    monkeypatch.delenv(console.PROGRESS_VAR, raising=False)
    tty, lines = _Tty(), []
    with console.progress(2, "runs", unit="runs", stream=tty, out=lines.append) as bar:
        bar.write("run 1 (etl_run__daily): 1 asset, partition 2026-11-30")
        bar.update(1)
        bar.write("run 2 (etl_run__daily): 1 asset, partition 2026-12-01")
        bar.update(1)
    shown = tty.getvalue()
    assert lines == [] and "2/2" in shown
    assert shown.index("partition 2026-11-30") < shown.index("partition 2026-12-01")
    pipe, lines = io.StringIO(), []
    with console.progress(2, "runs", unit="runs", stream=pipe, out=lines.append) as bar:
        bar.write("run 1")
        bar.update(1)
    assert lines == ["run 1"] and pipe.getvalue() == ""


def test_progress_plain_lines_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(console.PROGRESS_VAR, raising=False)
    pipe, lines = io.StringIO(), []
    with console.progress(200, "seeding shop", stream=pipe, lines=True, out=lines.append) as bar:
        assert not bar.drawn
        bar.update(50, "shop.customers")
        bar.update(150)
    assert pipe.getvalue() == ""
    assert lines == ["  shop.customers: 50 of 200 rows", "  seeding shop: 200 of 200 rows"]
    quiet: list[str] = []
    with console.progress(None, "extract", stream=pipe, out=quiet.append) as bar:
        bar.update(10)
    assert quiet == [] and bar.count == 10


def test_announce_only_when_enabled() -> None:
    out = io.StringIO()
    console.enable_announcements(False)
    console.announce("starting", stream=out)
    assert out.getvalue() == ""
    console.enable_announcements(True)
    try:
        console.announce("starting the embedded PostgreSQL under /x…", stream=out)
    finally:
        console.enable_announcements(False)
    assert out.getvalue() == "starting the embedded PostgreSQL under /x…\n"


def test_run_metrics_summary_names_its_window_in_words() -> None:
    from etl_assets.quality.metrics import summary_markdown

    text = summary_markdown([], dt.timedelta(days=7))
    assert text.splitlines()[0] == "Run metrics over the last 7 days (etl.run_metrics)"
    assert "0:00:00" not in text


def test_command_progress_only_in_a_command_line_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bars deep inside a run (chunked extracts) are drawn by `etl-assets run` only: a Dagster code
    server or daemon never draws one, even with ETL_PROGRESS=on."""
    monkeypatch.setenv(console.PROGRESS_VAR, "on")
    quiet = io.StringIO()
    console.enable_announcements(False)
    with console.command_progress(4, "shop.big", unit="chunks", stream=quiet) as bar:
        bar.update(1)
    assert not bar.drawn and quiet.getvalue() == ""
    drawn = io.StringIO()
    console.enable_announcements(True)
    try:
        with console.command_progress(4, "shop.big", unit="chunks", stream=drawn, initial=1) as bar:
            assert bar.drawn
            bar.update(3)
    finally:
        console.enable_announcements(False)
    assert "shop.big" in drawn.getvalue() and "1/4" in drawn.getvalue() and bar.count == 4
    assert drawn.getvalue().endswith("\r")  # erased when done: the run's stored line follows
