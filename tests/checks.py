"""`python -m tests.checks`: ruff, mypy and import-linter, as `make test` runs them before the tests.

The card's top-level folders (actors/, supervisor/, config/, deploy/) install as subpackages of
`taskherd` (pyproject's `package-dir`), so mypy and import-linter, which find modules by walking a
package's folder, are pointed at a tree shaped as it installs: `.check/src/taskherd`, made of
symlinks to the real files (rebuilt on every run, so it never goes stale). Paths in their reports are
turned back into the repository's own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECK_DIR = ROOT / ".check"


def package_dirs() -> dict[str, Path]:
    """Installed package name -> the folder that holds it, from pyproject's `package-dir`."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {name: ROOT / folder for name, folder in config["tool"]["setuptools"]["package-dir"].items()}


def build_tree(dst: Path) -> Path:
    """A `taskherd` package tree under `dst` shaped as it installs; returns `dst`."""
    if dst.exists():
        shutil.rmtree(dst)
    dirs = package_dirs()
    for name, folder in sorted(dirs.items()):
        _mirror(folder, dst.joinpath(*name.split(".")))
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


def _real_paths(text: str, tree: Path) -> str:
    """Report paths inside the tree, as the repository's own paths."""
    for name, folder in sorted(package_dirs().items(), key=lambda kv: -len(kv[0])):
        text = text.replace(str(tree.joinpath(*name.split("."))) + "/", str(folder.relative_to(ROOT)) + "/")
        text = text.replace("/".join(name.split(".")) + "/", str(folder.relative_to(ROOT)) + "/")
    return text


def run_checks(tree: Path) -> int:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PYTHONPATH": str(tree)}
    steps = [
        ("ruff", [str(bin_dir / "ruff"), "check", "--quiet", "."], ROOT),
        ("mypy", [str(bin_dir / "mypy"), "--config-file", str(ROOT / "pyproject.toml"),
                  "--cache-dir", str(CHECK_DIR / "mypy_cache"), "--no-error-summary"], tree),
        ("import-linter", [str(bin_dir / "lint-imports"), "--no-cache", str(ROOT / "pyproject.toml")], tree),
    ]
    failed = []
    for name, argv, cwd in steps:
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            failed.append(name)
            print(f"--- {name} failed ---", file=sys.stderr)
            print(_real_paths(proc.stdout + proc.stderr, tree).strip(), file=sys.stderr)
    print(f"checks: {'failed: ' + ', '.join(failed) if failed else 'ruff, mypy, import-linter: ok'}",
          file=sys.stderr)
    return 1 if failed else 0


def main() -> int:
    return run_checks(build_tree(CHECK_DIR / "src"))


if __name__ == "__main__":
    sys.exit(main())
