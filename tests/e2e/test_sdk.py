"""The decorator SDK end to end: a project written with `taskherd.App` (tests/e2e/sdk_project) is
copied to a temp dir, `taskherd up` is started there (its pods import the project's module from
that directory), and a script registers, submits, waits for results and the job; a module the pods
cannot import is refused at `register()` with a message saying how code reaches the pods."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.local_up import Up, up_settings

PROJECT = Path(__file__).parent / "sdk_project"
TASKHERD = str(Path(sys.executable).parent / "taskherd")

LONELY = '''
import taskherd
app = taskherd.App(URL)

@app.executor("lonely")
def lonely(payload: dict) -> dict:
    return {}
'''
REGISTER_LONELY = '''
import lonely
try:
    lonely.app.register()
except Exception as exc:
    print(type(exc).__name__, exc)
'''


def test_a_project_written_with_the_sdk_runs_end_to_end(tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(PROJECT, project, ignore=shutil.ignore_patterns("__pycache__"))
    elsewhere = tmp_path / "elsewhere"  # a module only the user's machine has, not the pods' directory
    elsewhere.mkdir()
    cluster = Up([TASKHERD], up_settings(), tmp_path / "data", tmp_path, cwd=project)
    (elsewhere / "lonely.py").write_text(LONELY.replace("URL", repr(cluster.url)))
    (elsewhere / "register_lonely.py").write_text(REGISTER_LONELY)
    cluster.start()
    try:
        cluster.wait_ready()
        env = {**os.environ, "TASKHERD_URL": cluster.url, "PYTHONPATH": ""}
        done = subprocess.run([sys.executable, "use_sdk.py"], cwd=project, env=env, capture_output=True,
                              text=True, timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.strip() == "sdk ok"

        refused = subprocess.run([sys.executable, "register_lonely.py"], cwd=elsewhere, env=env,
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode == 0, refused.stderr
        assert refused.stdout.startswith("AppError executor 'lonely' (lonely:lonely): the manager cannot find it:")
        assert "start `taskherd up` in the directory that holds your package" in refused.stdout
        assert cluster.stop() == 0
    finally:
        cluster.kill()
