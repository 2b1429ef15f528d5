"""A plain, non-editable `pip install` of taskherd runs `taskherd up` from the source checkout.

The installed package is assembled from several top-level folders (pyproject maps `config/` to
`taskherd.config`, `actors/` to `taskherd.actors` ...), so the source folder `taskherd/` alone is not
importable as taskherd. A pod started as `python -m taskherd` in the checkout would import it anyway
(the working directory comes first on `sys.path`) and die; `up` starts pods with `python -P`.

Nothing is downloaded: the new venv sees the project's dependencies through a .pth line naming
.venv's site-packages (.pth files inside that directory are not processed, so .venv's editable
finder for taskherd is not picked up), and pip (.venv's) builds with .venv's setuptools and wheel.
"""

from __future__ import annotations

import importlib.util
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.local_up import REPO, Up, run_one_echo_task, up_settings

COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", ".taskherd", "build", "*.egg-info", "__pycache__",
                                     ".pytest_cache", ".peers-venv", "results")


def _run(argv: list[str], cwd: Path, timeout: float = 300) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _site_dirs() -> list[str]:
    """The site-packages directories this test runs with: where the dependencies, pip, setuptools
    and wheel are."""
    return [path for path in sys.path
            if Path(path).name in ("site-packages", "dist-packages") and Path(path).is_dir()]


@pytest.fixture(scope="module")
def installed(service_binaries: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with taskherd pip-installed (not editable) from a copy of this checkout; its bin dir."""
    missing = [name for name in ("setuptools", "wheel") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not importable from {sys.prefix} (pyproject's build "
                    f"requirements): {sys.executable} -m pip install 'setuptools>=68' wheel", pytrace=False)
    root = tmp_path_factory.mktemp("install")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root)
    python = venv / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(_run([str(python), "-c", purelib], cwd=root).strip())
    (site / "taskherd-test-deps.pth").write_text("".join(f"{path}\n" for path in _site_dirs()))
    source = root / "source"
    shutil.copytree(REPO, source, ignore=COPY_IGNORE)  # pip builds in the tree; keep the checkout clean
    _run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
          "--no-deps", "--no-build-isolation", str(source)], cwd=root)
    where = _run([str(python), "-c", "import taskherd.config, taskherd.cli; print(taskherd.__file__)"],
                 cwd=root).strip()
    assert Path(where).is_relative_to(venv), f"taskherd imported from {where}, not from {venv}"
    return venv / "bin"


@pytest.fixture
def up(installed: Path, tmp_path: Path) -> Iterator[Up]:
    cluster = Up([str(installed / "taskherd")], up_settings(), tmp_path / "data", tmp_path, cwd=REPO)
    try:
        yield cluster
    finally:
        cluster.kill()
        sys.stderr.write(cluster.log())


def test_a_pip_installed_taskherd_up_started_in_the_checkout_runs_a_task_and_stops_clean(up: Up) -> None:
    # Given taskherd pip-installed into a venv of its own, started with the checkout as working directory
    up.start()
    # When its cluster is ready, Then it runs a task
    up.wait_ready()
    status = run_one_echo_task(up, sys.executable, "installed")
    assert status["counts"].get("succeeded") == 1, status
    # And SIGTERM stops it, leaving no process behind
    assert up.stop(signal.SIGTERM) == 0, up.log()
    assert up.still_running() == []
    assert "No module named 'taskherd.config'" not in up.log()


def test_a_pip_installed_taskherd_carries_the_dashboard_assets(installed: Path) -> None:
    # the dashboard's page, script and style sheet are package data: a wheel without them serves a 500 at /ui
    script = ("from importlib import resources; s = resources.files('taskherd.api.ui') / 'static'; "
              "print(*(len((s / n).read_bytes()) for n in ('index.html', 'app.js', 'app.css')))")
    sizes = _run([str(installed / "python"), "-c", script], cwd=installed)
    assert all(int(n) > 500 for n in sizes.split()), sizes
