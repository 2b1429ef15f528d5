"""The bench-only environment of the peers: `bench/.peers-venv`, with Celery, Dramatiq and RQ.

Never taskherd's dependencies: the harness (taskherd's venv) runs the peers' driver with this venv's
python. Made on first use with `python3 -m venv` and pip; a later run reuses it as it is (delete the
folder to upgrade). The installed versions are read back and written into the results.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from bench.common import ROOT, BenchError, log

VENV = ROOT / "bench" / ".peers-venv"
PYTHON = VENV / "bin" / "python"
REQUIREMENTS = ["celery[redis]>=5.3,<6", "dramatiq[redis]>=1.15,<3", "rq>=1.15,<4", "psutil>=5.9"]
DISTRIBUTIONS = ["celery", "kombu", "billiard", "dramatiq", "rq", "redis", "psutil"]
_STAMP = VENV / ".bench-installed"


def ensure() -> Path:
    """The peers venv's python, making the venv first if it is missing or half made."""
    if _STAMP.exists() and PYTHON.exists() and _STAMP.read_text().strip() == json.dumps(REQUIREMENTS):
        return PYTHON
    base = shutil.which("python3") or sys.executable
    log(f"peers: creating {VENV} with {base} and installing {' '.join(REQUIREMENTS)}")
    if not PYTHON.exists():
        _run([base, "-m", "venv", str(VENV)], 300)
    _run([str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *REQUIREMENTS], 900)
    _STAMP.write_text(json.dumps(REQUIREMENTS))
    return PYTHON


def versions() -> dict[str, str]:
    code = ("import json, importlib.metadata as m, platform; d = {'python': platform.python_version()}\n"
            f"for n in {DISTRIBUTIONS!r}:\n"
            "    try: d[n] = m.version(n)\n"
            "    except m.PackageNotFoundError: d[n] = None\n"
            "print(json.dumps(d))")
    out = subprocess.run([str(PYTHON), "-c", code], capture_output=True, text=True, timeout=60)
    if out.returncode:
        raise BenchError(f"peers venv: cannot read versions: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout)


def _run(argv: list[str], timeout: float) -> None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"peers venv: {' '.join(argv[:4])} timed out after {timeout:.0f} s") from exc
    if out.returncode:
        raise BenchError(f"peers venv: {' '.join(argv[:4])} failed ({out.returncode}):\n{out.stderr.strip()[-2000:]}")
