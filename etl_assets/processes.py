"""Long-running commands (``etl-assets dev``, ``etl-assets daemon``) and every process they start.

Why this module exists: ``etl-assets dev`` used to ``Popen`` ``dagster dev`` and die on SIGTERM with
Python's default handler, leaving ``dagster dev``, its webserver, its daemon and their code servers
running under PID 1. :func:`supervise` fixes that for every long-running command:

- the child starts in its own session (so its own process group): a terminal's Ctrl-C reaches only
  us, and we decide what the children get;
- every child (and everything *they* start, e.g. code servers and run workers) carries the
  environment marker :data:`MARKER_VAR` naming this supervisor, so :func:`marked_processes` finds
  them by scanning ``/proc/*/environ`` even if one left the process group;
- on SIGTERM, SIGINT or SIGHUP the group gets SIGTERM (Dagster maps it to its graceful interrupt);
  after :data:`GRACE_SECONDS` what is left of the group gets SIGKILL, then any marked straggler
  too. The whole stop stays well under 20 s.

The embedded PostgreSQL is started (detached, see ``etl_assets.embedded``) by the parent before the
child exists, so it carries no marker and outlives the command by design.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

MARKER_VAR = "ETL_SUPERVISOR_ID"
GRACE_SECONDS = 12.0  # graceful stop of the group before SIGKILL
KILL_WAIT_SECONDS = 3.0  # after SIGKILL, how long to wait for the processes to disappear
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Never touched by the sweep: the embedded server is detached by design.
_SPARED_COMMANDS = frozenset({"postgres", "postmaster", "pg_ctl"})


def _environ(pid: int) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # gone, or not ours to read
        return None


def _command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def marked_processes(marker: str) -> list[int]:
    """PIDs of live processes whose environment holds ``MARKER_VAR=marker`` (zombies excluded)."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        env = _environ(pid)
        if env is None or needle not in env.split(b"\0"):
            continue
        if _command_name(pid) in _SPARED_COMMANDS or _is_zombie(pid):
            continue
        found.append(pid)
    return sorted(found)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def _signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _wait_gone(marker: str, deadline: float) -> list[int]:
    left = marked_processes(marker)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = marked_processes(marker)
    return left


def stop_tree(proc: subprocess.Popen, marker: str, *, grace: float = GRACE_SECONDS,
              log: Callable[[str], None] | None = None) -> int:
    """Stop ``proc``, its process group and every marked process; return ``proc``'s exit status."""
    say = log or (lambda _s: None)
    pgid = proc.pid  # start_new_session=True: the child leads its own group
    _killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        say(f"pid {proc.pid} did not stop within {grace:.0f} s: killing its process group")
    left = _wait_gone(marker, deadline)
    if left or proc.poll() is None:
        _killpg(pgid, signal.SIGKILL)
        _signal_all(left, signal.SIGKILL)
        if left:
            say(f"killed {len(left)} process(es) left after the grace period: {left}")
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=KILL_WAIT_SECONDS)
    left = _wait_gone(marker, time.monotonic() + KILL_WAIT_SECONDS)
    if left:
        say(f"processes still present after SIGKILL: {left}")
    return proc.returncode if proc.returncode is not None else -signal.SIGKILL


def supervise(command: Sequence[str], *, cwd: str | os.PathLike[str] | None = None,
              env: dict[str, str] | None = None, grace: float = GRACE_SECONDS) -> int:
    """Run ``command`` until it exits or we get SIGTERM / SIGINT / SIGHUP; then stop everything it
    started (see the module docstring). Returns the exit status for the command line: the child's,
    or 128 + the signal number when we were told to stop."""
    marker = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    child_env = dict(os.environ if env is None else env)
    child_env[MARKER_VAR] = marker
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in _STOP_SIGNALS}
    try:
        proc = subprocess.Popen(list(command), cwd=cwd, env=child_env, start_new_session=True)
        try:
            while not received and proc.poll() is None:
                # a short sleep; a signal interrupts it and the loop sees `received`
                time.sleep(0.2)
        finally:
            if received:
                name = signal.Signals(received[0]).name
                print(f"etl-assets: {name} received; stopping {proc.pid} and what it started",
                      file=sys.stderr, flush=True)
            status = stop_tree(proc, marker, grace=grace,
                               log=lambda s: print(f"etl-assets: {s}", file=sys.stderr, flush=True))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        return 128 + received[0]
    return status
