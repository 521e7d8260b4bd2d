"""The console script's garbage-collection pauses (etl_assets/startup.py, etl_assets/cli console_main)."""

from __future__ import annotations

import gc
import subprocess
import sys

from etl_assets import startup
from etl_assets.cli import _command


def test_only_a_run_pauses_the_collector() -> None:
    assert _command(["run", "--select", "raw/orders"]) == "run"
    assert _command(["--pipelines", "run", "seed"]) == "seed"  # a file named "run" is not the command
    assert _command(["--pipelines=x.yaml", "run"]) == "run"
    assert _command(["stream", "run"]) == "stream"  # the long-lived consumer keeps its collector
    assert _command(["-h"]) is None


def test_resume_freezes_the_startup_heap_only_after_a_pause() -> None:
    frozen = gc.get_freeze_count()
    startup.resume_collection()  # not paused: nothing changes
    assert gc.isenabled() and gc.get_freeze_count() == frozen
    code = ("import gc; from etl_assets import startup; startup.pause_collection(); "
            "junk = [[i] for i in range(50_000)]; assert not gc.isenabled(); startup.resume_collection(); "
            "assert gc.isenabled() and gc.get_freeze_count() >= 50_000; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_the_console_script_runs_a_command_and_exits_with_its_status() -> None:
    """`python -m etl_assets.cli` goes through console_main: the exit status is main()'s."""
    ok = subprocess.run([sys.executable, "-m", "etl_assets.cli", "--help"], capture_output=True, text=True,
                        timeout=60)
    bad = subprocess.run([sys.executable, "-m", "etl_assets.cli", "no-such-command"], capture_output=True,
                         text=True, timeout=60)
    assert ok.returncode == 0 and "usage: etl-assets" in ok.stdout
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
