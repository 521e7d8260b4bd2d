"""Alerts for failed runs: a JSON message posted to ``ETL_ALERT_URL`` (Slack-compatible).

Every failed run, whether automation, a schedule or a person launched it, is

- recorded in ``etl.run_metrics`` by the run-status sensor of ``etl_assets.quality.metrics``
  (``etl_run_metrics_failed_runs``; step hooks record the failed step during the run already), and
- announced by :data:`failed_run_alert` when ``ETL_ALERT_URL`` is set: one POST whose body is
  ``{"text": ...}`` (what a Slack incoming webhook shows) plus structured fields (``run_id``,
  ``job``, ``assets``, ``error``, ``url``) for any other receiver.

What never goes out: DSNs and passwords. The error's first line passes through :func:`redact` (every
URL through ``etl_assets.settings.redact_dsn``, ``password=...`` pairs masked, and the configured
DSNs replaced by their redacted form). Posting is best effort: a refused connection, a timeout
(bounded by ``ETL_ALERT_TIMEOUT``, default 5 s) or an HTTP error is logged by the sensor and never
makes the sensor fail, so a broken webhook cannot stop the recording of later failures.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

import dagster as dg

from etl_assets.settings import EMBEDDED_DATABASES, redact_dsn

ALERT_URL_VAR = "ETL_ALERT_URL"
UI_URL_VAR = "ETL_UI_URL"
TIMEOUT_VAR = "ETL_ALERT_TIMEOUT"
DEFAULT_UI_URL = "http://127.0.0.1:3000"
DEFAULT_TIMEOUT = 5.0
MAX_TIMEOUT = 30.0
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_PASSWORD = re.compile(r"(?i)\b(password|passwd|pwd)\s*=\s*('[^']*'|\"[^\"]*\"|\S+)")


def redact(text: str) -> str:
    """``text`` without secrets: URLs with passwords redacted, ``password=`` values masked, and the
    project's configured DSNs replaced by their redacted form wherever they appear."""
    for var in EMBEDDED_DATABASES:
        dsn = os.environ.get(var)
        if dsn and dsn in text:
            text = text.replace(dsn, redact_dsn(dsn))
    text = _URL.sub(lambda m: redact_dsn(m.group(0)), text)
    return _PASSWORD.sub(lambda m: f"{m.group(1)}=***", text)


def ui_url() -> str:
    return (os.environ.get(UI_URL_VAR) or DEFAULT_UI_URL).rstrip("/")


def timeout_seconds() -> float:
    """``ETL_ALERT_TIMEOUT`` clamped to (0, 30] s; a bad value falls back to the default."""
    try:
        value = float(os.environ.get(TIMEOUT_VAR, DEFAULT_TIMEOUT))
    except ValueError:
        return DEFAULT_TIMEOUT
    return DEFAULT_TIMEOUT if value <= 0 else min(value, MAX_TIMEOUT)


@dataclass(frozen=True)
class Alert:
    run_id: str
    job: str
    assets: tuple[str, ...]
    error: str
    url: str
    launched_by: str

    def payload(self) -> dict[str, Any]:
        what = ", ".join(self.assets) if self.assets else self.job
        text = f":red_circle: etl-assets run failed: {what}\n{self.error}\n<{self.url}|run {self.run_id[:8]}>"
        return {
            "text": text,
            "status": "FAILURE",
            "run_id": self.run_id,
            "job": self.job,
            "assets": list(self.assets),
            "error": self.error,
            "url": self.url,
            "launched_by": self.launched_by,
        }


def _launched_by(run: dg.DagsterRun) -> str:
    tags = run.tags or {}
    for tag, label in (
        ("dagster/sensor_name", "sensor"),
        ("dagster/schedule_name", "schedule"),
        ("dagster/backfill", "backfill"),
    ):
        if tag in tags:
            return f"{label} {tags[tag]}"
    if tags.get("dagster/from_automation_condition") or tags.get("dagster/auto_materialize"):
        return "automation"
    return "manual"


def build_alert(instance: dg.DagsterInstance, run: dg.DagsterRun) -> Alert:
    """The alert of a failed run: the assets that failed (else those it planned), the first line
    of the root error, and the run's page in the UI."""
    from etl_assets.quality.metrics import _run_error, rows_for_run

    rows = rows_for_run(instance, run, recorded_by="alert")
    failed = tuple(r.asset for r in rows if r.asset and r.status == "failed")
    planned = tuple(r.asset for r in rows if r.asset)
    assets = failed or planned or tuple(k.to_user_string() for k in (run.asset_selection or ()))
    error = _run_error(instance, run.run_id) or "(no error message recorded)"
    first = redact(error.strip().splitlines()[0] if error.strip() else error)
    return Alert(
        run_id=run.run_id,
        job=run.job_name,
        assets=tuple(dict.fromkeys(assets)),
        error=first[:500],
        url=f"{ui_url()}/runs/{run.run_id}",
        launched_by=_launched_by(run),
    )


def post(url: str, payload: dict[str, Any], timeout: float | None = None) -> str | None:
    """POST ``payload`` as JSON; ``None`` on a 2xx answer, else what went wrong (never raises)."""
    body = json.dumps(payload).encode()
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout or timeout_seconds()) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} {exc.reason}"
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"{type(exc).__name__}: {reason}"
    return None if 200 <= status < 300 else f"HTTP {status}"


@dg.run_failure_sensor(
    name="etl_failed_run_alerts",
    description=f"Posts a JSON alert (Slack-compatible) to {ALERT_URL_VAR} for every failed run; "
    "does nothing while it is unset.",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)
def failed_run_alert(context: dg.RunFailureSensorContext) -> dg.SkipReason:
    url = os.environ.get(ALERT_URL_VAR)
    run = context.dagster_run
    if not url:
        return dg.SkipReason(f"{ALERT_URL_VAR} is not set: no alert for run {run.run_id}")
    try:
        alert = build_alert(context.instance, run)
    except Exception as exc:  # the alert must not be lost for a detail: send what we know
        context.log.warning(f"alert details of run {run.run_id} incomplete: {type(exc).__name__}: {exc}")
        alert = Alert(run.run_id, run.job_name, (), "(error unavailable)", f"{ui_url()}/runs/{run.run_id}",
                      _launched_by(run))
    problem = post(url, alert.payload())
    target = urllib.parse.urlsplit(url).hostname or "?"  # webhook paths hold tokens: host only
    if problem:
        context.log.warning(f"alert for failed run {run.run_id} not delivered to {target}: {problem}")
        return dg.SkipReason(f"alert for run {run.run_id} not delivered: {problem}")
    context.log.info(f"alert for failed run {run.run_id} posted to {target}")
    return dg.SkipReason(f"alert for run {run.run_id} posted")


def build_defs() -> dg.Definitions:
    return dg.Definitions(sensors=[failed_run_alert])
