"""The fault suite's exe executor: payload JSON on stdin, result JSON on stdout.

With `"grandchild": true` it works through `sh -c 'sleep S & wait'` (a shell and its background
job: the process tree a time-out must kill whole) and logs their pids before waiting.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.faults.funcs import CallLog


def _grandchildren(shell: subprocess.Popen[bytes], deadline: float) -> list[int]:
    """The shell's pid and its background job's, once the job has started."""
    children = Path(f"/proc/{shell.pid}/task/{shell.pid}/children")
    while time.monotonic() < deadline:
        pids = [int(p) for p in children.read_text().split()] if children.exists() else []
        if pids:
            return [shell.pid, *pids]
        time.sleep(0.005)
    return [shell.pid]


def main() -> int:
    payload = json.load(sys.stdin)
    sleep_s = float(payload["sleep_s"])
    with CallLog(payload, "exe") as call:
        if payload.get("grandchild"):
            shell = subprocess.Popen(["sh", "-c", f"sleep {sleep_s} & wait"])
            call.note(pids=_grandchildren(shell, time.monotonic() + 5))
            shell.wait()
        else:
            time.sleep(sleep_s)
    print(json.dumps({"id": payload["id"], "pid": os.getpid()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
