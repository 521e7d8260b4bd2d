"""The HTTP source against a real loopback server that fails, throttles and hangs on command.

Waits are recorded by a fake ``sleep`` instead of slept, so nothing here depends on timing; the
"hang" case uses a short socket timeout and a handler that blocks on an event until the test ends.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from etl_assets.http_source import (
    FX_URL_VAR,
    FxRatesSource,
    SourceFormatError,
    http_get_json,
    redact_url,
    snapshot_rates,
)
from etl_assets.retry import Backoff, HttpStatusError

DOCUMENT = {"base": "USD", "date": "2026-11-20", "rates": {"EUR": 0.9, "GBP": 0.8}}


class Script:
    """What the server answers, request by request; the last step repeats."""

    def __init__(self, steps: list[str]) -> None:
        self.steps = steps
        self.requests = 0
        self.lock = threading.Lock()
        self.release = threading.Event()

    def next(self) -> str:
        with self.lock:
            step = self.steps[min(self.requests, len(self.steps) - 1)]
            self.requests += 1
            return step


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script(["ok"])

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:
            step = script.next()
            if step == "hang":
                script.release.wait(30)
                return
            if step == "ok":
                body = json.dumps(DOCUMENT).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
            elif step == "notjson":
                body = b"<html>maintenance</html>"
                self.send_response(200)
            else:
                status, _, retry_after = step.partition(":")
                body = b"{}"
                self.send_response(int(status))
                if retry_after:
                    self.send_header("Retry-After", retry_after)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/latest?api_key=SECRET"
    yield url, script
    script.release.set()
    httpd.shutdown()
    httpd.server_close()


BACKOFF = Backoff(max_attempts=5, base=0.5, max_wait=4.0, max_total=60.0)


def test_fails_n_times_then_succeeds_with_bounded_waits(server: tuple[str, Script]) -> None:
    url, script = server
    script.steps = ["503", "500", "502", "ok"]
    waits: list[float] = []
    assert http_get_json(url, backoff=BACKOFF, sleep=waits.append, timeout=5) == DOCUMENT
    assert script.requests == 4
    assert len(waits) == 3
    for n, wait in enumerate(waits, start=1):  # full jitter: uniform in [0, min(cap, base * 2^(n-1))]
        assert 0.0 <= wait <= min(BACKOFF.max_wait, BACKOFF.base * 2 ** (n - 1))


def test_429_retry_after_is_honoured_and_capped(server: tuple[str, Script]) -> None:
    url, script = server
    script.steps = ["429:3", "429:120", "ok"]
    waits: list[float] = []
    assert http_get_json(url, backoff=BACKOFF, sleep=waits.append, timeout=5) == DOCUMENT
    assert script.requests == 3
    assert waits == [3.0, BACKOFF.max_wait]


def test_hanging_server_times_out_and_is_retried(server: tuple[str, Script]) -> None:
    url, script = server
    script.steps = ["hang", "ok"]
    waits: list[float] = []
    assert http_get_json(url, backoff=BACKOFF, sleep=waits.append, timeout=0.5) == DOCUMENT
    assert script.requests == 2
    assert len(waits) == 1


def test_always_failing_stops_after_max_attempts_without_a_last_sleep(
    server: tuple[str, Script], caplog: pytest.LogCaptureFixture
) -> None:
    url, script = server
    script.steps = ["503"]
    waits: list[float] = []
    with caplog.at_level(logging.WARNING, logger="etl_assets.retry"), pytest.raises(HttpStatusError) as info:
        http_get_json(url, backoff=BACKOFF, sleep=waits.append, timeout=5)
    assert info.value.status == 503
    assert script.requests == BACKOFF.max_attempts
    assert len(waits) == BACKOFF.max_attempts - 1  # no sleep after the last attempt
    lines = [r.getMessage() for r in caplog.records]
    assert sum("retrying in" in line for line in lines) == BACKOFF.max_attempts - 1
    assert sum("giving up after 5 attempts" in line for line in lines) == 1
    assert not any("SECRET" in line for line in lines)  # the query string (API key) is never logged


def test_total_time_cap_stops_early(server: tuple[str, Script]) -> None:
    url, script = server
    script.steps = ["429:3"]
    waits: list[float] = []
    capped = Backoff(max_attempts=10, base=0.5, max_wait=4.0, max_total=7.0)
    with pytest.raises(HttpStatusError):
        http_get_json(url, backoff=capped, sleep=waits.append, timeout=5)
    assert waits == [3.0, 3.0]  # a third wait would make 9 s > 7 s
    assert script.requests == 3


@pytest.mark.parametrize("status", ["400", "401", "403", "404"])
def test_permanent_http_errors_are_not_retried(server: tuple[str, Script], status: str) -> None:
    url, script = server
    script.steps = [status, "ok"]
    waits: list[float] = []
    with pytest.raises(HttpStatusError) as info:
        http_get_json(url, backoff=BACKOFF, sleep=waits.append, timeout=5)
    assert info.value.status == int(status)
    assert "SECRET" not in str(info.value)
    assert script.requests == 1
    assert waits == []


def test_a_wrong_document_is_permanent(server: tuple[str, Script]) -> None:
    url, script = server
    script.steps = ["notjson", "ok"]
    waits: list[float] = []
    with pytest.raises(SourceFormatError, match="did not return JSON"):
        http_get_json(url, backoff=BACKOFF, sleep=waits.append, timeout=5)
    assert script.requests == 1 and waits == []


def test_refused_connection_is_transient() -> None:
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago: nobody listens on it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    waits: list[float] = []
    with pytest.raises(OSError):
        http_get_json(
            f"http://127.0.0.1:{port}/", backoff=Backoff(max_attempts=3), sleep=waits.append, timeout=2
        )
    assert len(waits) == 2


def test_resource_reads_url_from_env_else_snapshot(
    server: tuple[str, Script], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, script = server
    monkeypatch.delenv(FX_URL_VAR, raising=False)
    offline = FxRatesSource().fetch()
    assert offline.source == "snapshot" and offline == snapshot_rates()
    assert offline.rate("EUR") == 0.9487 and offline.frame().height == 8

    monkeypatch.setenv(FX_URL_VAR, url)
    script.steps = ["503", "ok"]
    online = FxRatesSource(max_wait_seconds=0.0).fetch()
    assert script.requests == 2
    assert online.rates == {"EUR": 0.9, "GBP": 0.8}
    assert online.source == redact_url(url) and "SECRET" not in online.source
    assert online.frame().to_dicts()[0]["currency"] == "EUR"


def test_asset_fails_at_once_on_a_permanent_error_and_loads_after_a_transient_one(
    server: tuple[str, Script], monkeypatch: pytest.MonkeyPatch
) -> None:
    import dagster as dg

    from etl_assets.transforms.assets import fx_rates

    url, script = server
    monkeypatch.delenv(FX_URL_VAR, raising=False)
    source = FxRatesSource(url=url, max_wait_seconds=0.0)
    script.steps = ["404"]
    failed = dg.materialize([fx_rates], resources={"fx_source": source}, raise_on_error=False)
    assert not failed.success and script.requests == 1
    events = [e.event_type_value for e in failed.all_events]
    assert "STEP_UP_FOR_RETRY" not in events  # Failure(allow_retries=False): the step policy stays out
    [failure] = [e for e in failed.all_events if e.is_step_failure]
    assert "HTTP 404" in failure.step_failure_data.error.message
    assert "SECRET" not in str(failed.all_events)

    script.requests, script.steps = 0, ["503", "ok"]
    ok = dg.materialize([fx_rates], resources={"fx_source": source}, raise_on_error=False)
    assert ok.success and script.requests == 2
    [mat] = ok.asset_materializations_for_node("ref__fx_rates")
    assert mat.metadata["currencies"].value == 2 and "SECRET" not in mat.metadata["source"].value
