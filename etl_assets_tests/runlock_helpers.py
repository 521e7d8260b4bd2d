"""Extract runs in separate processes, for the run-lock tests (test_extract_runlock.py).

Each child imports the project, says ``ready``, waits for ``go`` on stdin (so that two children
start their extract within milliseconds of each other, whatever their import times), then calls
``run_extract`` (the function the asset calls) and prints one JSON line: its report or its error.
Log lines (whom it waits for) go to stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from etl_assets.settings import PROJECT_ROOT

_CHILD = "from etl_assets_tests.runlock_helpers import main; main()"
REPORT_FIELDS = ("rows_read", "inserted", "updated", "unchanged", "deleted", "chunks", "resumed_after",
                 "cursor_before", "cursor_after", "table_rows", "lock_waited_seconds", "lock_acquired_at",
                 "lock_released_at")


def main() -> None:
    """The child: ``argv[1]`` is JSON with ``yaml``, ``dbs``, ``run_id`` and ``wait``."""
    import functools

    from etl_assets.db import connect
    from etl_assets.errors import EtlError
    from etl_assets.extract.runner import run_extract
    from etl_assets_tests.extract_helpers import spec_of

    args = json.loads(sys.argv[1])
    spec = spec_of(args["yaml"])
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        report = run_extract(spec, functools.partial(connect, args["dbs"]["source"]),
                             functools.partial(connect, args["dbs"]["warehouse"]), args["run_id"],
                             wait=args["wait"], log=lambda text: print(f"LOG {text}", file=sys.stderr,
                                                                      flush=True))
        result: dict[str, Any] = {"ok": True, **{f: getattr(report, f) for f in REPORT_FIELDS}}
    except EtlError as exc:
        result = {"ok": False, "error": type(exc).__name__, "message": str(exc)}
    print(json.dumps(result), flush=True)


@dataclass
class Child:
    proc: subprocess.Popen
    run_id: str

    def go(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def result(self, timeout: float = 300) -> tuple[dict[str, Any], str]:
        out, err = self.proc.communicate(timeout=timeout)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        assert lines, f"child {self.run_id} printed no result (exit {self.proc.returncode}):\n{out}\n{err}"
        return json.loads(lines[-1]), err


def start(yaml_text: str, dbs: dict[str, str], run_id: str, *, wait: float = 0.0, hold: float = 0.0
          ) -> Child:
    """A child process importing the project; :func:`start_together` lets it run."""
    env = {**os.environ, "ETL_TEST_EXTRACT_HOLD": str(hold)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, json.dumps({"yaml": yaml_text, "dbs": dbs, "run_id": run_id,
                                                  "wait": wait})],
        cwd=PROJECT_ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    return Child(proc, run_id)


def start_together(*children: Child) -> None:
    """Wait until every child is ready, then let them all go at once."""
    for child in children:
        line = child.proc.stdout.readline().strip()
        assert line == "ready", f"child {child.run_id}: {line!r} {child.proc.stderr.read()}"
    for child in children:
        child.go()
