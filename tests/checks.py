"""`python -m tests.checks`: ruff, mypy and import-linter, as `make test` runs them before the tests.

The card's top-level folders (actors/, supervisor/, config/, deploy/) install as subpackages of
`taskherd` (pyproject's `package-dir`); `taskherd/` holds a symlink to each, so every tool that finds
modules by walking a package's folder (mypy, import-linter, grimp) sees the package as it installs,
run here or bare at the repository's root. `build_tree` makes a scratch copy of that package for
tests that break a contract on purpose.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECK_DIR = ROOT / ".check"


def build_tree(dst: Path) -> Path:
    """A scratch `taskherd` package under `dst` (real folders, symlinks to the files); returns `dst`."""
    if dst.exists():
        shutil.rmtree(dst)
    _mirror(ROOT / "taskherd", dst / "taskherd")
    return dst


def _mirror(folder: Path, target: Path) -> None:
    """Real folders holding symlinks to the files: a file added to the tree never lands in the repository."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in folder.iterdir():
        if entry.name == "__pycache__" or (target / entry.name).exists():
            continue
        if entry.is_dir():
            _mirror(entry, target / entry.name)
        else:
            (target / entry.name).symlink_to(entry)


def run_checks() -> int:
    bin_dir = Path(sys.executable).parent
    steps = [
        ("ruff", [str(bin_dir / "ruff"), "check", "--quiet", "."]),
        ("mypy", [str(bin_dir / "mypy"), "--config-file", "pyproject.toml",
                  "--cache-dir", str(CHECK_DIR / "mypy_cache"), "--no-error-summary"]),
        ("import-linter", [str(bin_dir / "lint-imports"), "--no-cache"]),
    ]
    failed = []
    for name, argv in steps:
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            failed.append(name)
            print(f"--- {name} failed ---", file=sys.stderr)
            print((proc.stdout + proc.stderr).strip(), file=sys.stderr)
    print(f"checks: {'failed: ' + ', '.join(failed) if failed else 'ruff, mypy, import-linter: ok'}",
          file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_checks())
