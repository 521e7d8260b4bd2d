"""The freshness policy of extracted tables, evaluated by Dagster's own freshness daemon code.

Freshness is evaluated by the daemon only, so the test runs the daemon's iteration against a real
instance (PostgreSQL storage) and a real code location, with the clock moved by Dagster's
``freeze_time``: no materialization is UNKNOWN, a fresh one PASSes, 13 hours later WARNs (warn
window 12 h), 25 hours later FAILs (fail window 24 h).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import dagster as dg
from dagster._core.definitions.freshness import FreshnessState
from dagster._core.test_utils import create_test_daemon_workspace_context, freeze_time
from dagster._core.workspace.load_target import PythonFileTarget
from dagster._daemon.freshness import FreshnessDaemon

from etl_assets.quality.defs import FRESHNESS
from etl_assets.settings import PROJECT_ROOT

PROBE = dg.AssetKey(["raw", "freshness_probe"])


def _state(instance: dg.DagsterInstance, ctx, daemon: FreshnessDaemon) -> FreshnessState:
    asyncio.run(daemon._evaluate_assets(ctx))
    records = instance.get_freshness_state_records([PROBE])
    return records[PROBE].freshness_state


def test_project_freshness_policy_is_evaluated_by_the_daemon(etl_env: dict[str, str]) -> None:
    assert FRESHNESS.warn_window.to_timedelta() == dt.timedelta(hours=12)
    assert FRESHNESS.fail_window.to_timedelta() == dt.timedelta(hours=24)
    from etl_assets_tests import freshness_defs

    target = PythonFileTarget(
        python_file=str(Path(freshness_defs.__file__)),
        attribute="defs",
        working_directory=str(PROJECT_ROOT),
        location_name="freshness_probe",
    )
    with (
        dg.DagsterInstance.get() as instance,
        create_test_daemon_workspace_context(target, instance) as ctx,
    ):
        daemon = FreshnessDaemon()
        assert _state(instance, ctx, daemon) == FreshnessState.UNKNOWN
        result = dg.materialize([freshness_defs.freshness_probe], instance=instance)
        assert result.success
        now = dt.datetime.now(dt.UTC)
        with freeze_time(now + dt.timedelta(minutes=5)):
            assert _state(instance, ctx, daemon) == FreshnessState.PASS
        with freeze_time(now + dt.timedelta(hours=13)):
            assert _state(instance, ctx, daemon) == FreshnessState.WARN
        with freeze_time(now + dt.timedelta(hours=25)):
            assert _state(instance, ctx, daemon) == FreshnessState.FAIL
