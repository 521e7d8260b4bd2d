"""Long-running commands stop with every process they started, on SIGTERM and on SIGINT.

Each test gives the command under test a unique environment variable; every process it starts
inherits it, so scanning ``/proc/*/environ`` for that variable finds all of them, even one that
left the process group.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from etl_assets.settings import PROJECT_ROOT

STOP_WITHIN = 20.0


def processes_with(var: str, value: str) -> list[tuple[int, str]]:
    """(pid, command line) of live processes whose environment has ``var=value``."""
    needle = f"{var}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes()
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in env.split(b"\0") and stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X"):
            found.append((int(entry.name), cmdline.strip()))
    return found


class Tail:
    """Collects a process's merged output in a thread so a test can wait for a line."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, proc: subprocess.Popen, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if proc.poll() is not None:
                output = "".join(self.lines)[-4000:]
                pytest.fail(f"exited ({proc.returncode}) before printing {text!r}:\n{output}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {text!r} within {timeout:.0f} s:\n{''.join(self.lines)[-4000:]}")
            time.sleep(0.2)


def _start(args: list[str], mark: str) -> tuple[subprocess.Popen, Tail]:
    env = {**os.environ, "ETL_TEST_MARK": mark, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=PROJECT_ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    return proc, Tail(proc)


def _stop_and_assert_clean(
    proc: subprocess.Popen, tail: Tail, mark: str, sig: int, expect_status: int
) -> None:
    started = time.monotonic()
    proc.send_signal(sig)  # to our command only, as a service manager or `kill PID` does
    try:
        status = proc.wait(timeout=STOP_WITHIN)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"still running {STOP_WITHIN:.0f} s after {signal.Signals(sig).name}")
    took = time.monotonic() - started
    left = processes_with("ETL_TEST_MARK", mark)
    for pid, _ in left:  # never leave them behind for the next test
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left after {signal.Signals(sig).name}: {left}\n{''.join(tail.lines)[-3000:]}"
    assert took < STOP_WITHIN
    assert status == expect_status, "".join(tail.lines)[-3000:]


# A child that starts a grandchild in its process group and a great-grandchild in a new session
# (outside the group), then prints "ready". With STUBBORN set, the child ignores SIGTERM.
_TREE = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    if os.environ.get("STUBBORN"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    subprocess.Popen(sleeper)
    subprocess.Popen(sleeper, start_new_session=True)
    print("ready", flush=True)
    time.sleep(600)
    """
)


@pytest.mark.parametrize("stubborn", [False, True], ids=["graceful", "ignores-sigterm"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_supervise_stops_the_whole_tree(sig: int, stubborn: bool, tmp_path: Path) -> None:
    script = tmp_path / "tree.py"
    script.write_text(_TREE)
    mark = secrets.token_hex(8)
    runner = (
        "import sys; from etl_assets.processes import supervise; "
        f"sys.exit(supervise([sys.executable, {str(script)!r}], grace=3))"
    )
    env_extra = {"STUBBORN": "1"} if stubborn else {}
    os.environ.update(env_extra)
    try:
        proc, tail = _start(["-c", runner], mark)
    finally:
        for key in env_extra:
            os.environ.pop(key)
    tail.wait_for("ready", proc, timeout=30)
    deadline = time.monotonic() + 10
    while len(processes_with("ETL_TEST_MARK", mark)) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(processes_with("ETL_TEST_MARK", mark)) == 4  # supervisor, child, two sleepers
    _stop_and_assert_clean(proc, tail, mark, sig, 128 + sig)


def test_supervise_returns_the_child_status_and_cleans_up_after_it(tmp_path: Path) -> None:
    script = tmp_path / "leaver.py"
    script.write_text(
        "import subprocess, sys\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True)\n"
        "sys.exit(7)\n"
    )
    mark = secrets.token_hex(8)
    runner = (
        "import sys; from etl_assets.processes import supervise; "
        f"sys.exit(supervise([sys.executable, {str(script)!r}], grace=3))"
    )
    proc, _tail = _start(["-c", runner], mark)
    assert proc.wait(timeout=30) == 7
    assert processes_with("ETL_TEST_MARK", mark) == []  # the orphan it left was stopped too


@pytest.mark.drill
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("command", ["daemon", "dev"])
def test_long_running_command_stops_with_everything_it_started(
    command: str, sig: int, etl_env: dict[str, str]
) -> None:
    """`etl-assets daemon` / `dev` on the test databases: once up, one signal stops all of it."""
    import socket

    mark = secrets.token_hex(8)
    args = ["-m", "etl_assets.cli", command]
    ready = "Instance is configured with the following daemons"
    if command == "dev":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        args += ["--port", str(port), "--host", "127.0.0.1"]
    proc, tail = _start(args, mark)
    try:
        tail.wait_for(ready, proc, timeout=240)
        if command == "dev":
            tail.wait_for("Serving dagster-webserver", proc, timeout=240)
        started = processes_with("ETL_TEST_MARK", mark)
        # etl-assets, the dagster daemon (and for dev: dagster dev, the webserver), code server(s)
        assert len(started) >= (3 if command == "daemon" else 5), started
        _stop_and_assert_clean(proc, tail, mark, sig, 128 + sig)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid, _ in processes_with("ETL_TEST_MARK", mark):
            os.kill(pid, signal.SIGKILL)
