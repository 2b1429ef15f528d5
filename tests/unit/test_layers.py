"""The house's boundaries hold: the layers contract passes on the repository (a bare `lint-imports`
at its root), fails on a scratch copy given one wrong import, and no module of taskherd takes part in
an import circle."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

from tests.checks import ROOT, build_tree


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    lint = Path(sys.executable).parent / "lint-imports"
    return subprocess.run([str(lint), "--no-cache", str(ROOT / "pyproject.toml")], cwd=tree, capture_output=True,
                          text=True, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}, timeout=120)


def test_the_contracts_hold_on_the_repository_as_it_is() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout


def test_a_store_module_importing_an_actor_breaks_the_layers_contract(tmp_path: Path) -> None:
    scratch = build_tree(tmp_path / "src")
    (scratch / "taskherd" / "store" / "scratch_wrong.py").write_text("from taskherd.actors import worker\n")
    result = _lint_imports(scratch)
    assert result.returncode != 0
    assert "taskherd.store.scratch_wrong -> taskherd.actors.worker" in result.stdout


def test_an_api_module_importing_redis_breaks_the_store_contract(tmp_path: Path) -> None:
    scratch = build_tree(tmp_path / "src")
    (scratch / "taskherd" / "api" / "scratch_redis.py").write_text("import redis\n")
    result = _lint_imports(scratch)
    assert result.returncode != 0
    assert "taskherd.api.scratch_redis -> redis" in result.stdout


def test_no_module_of_taskherd_is_in_an_import_circle() -> None:
    sys.path.insert(0, str(ROOT))
    try:
        graph = grimp.build_graph("taskherd", cache_dir=None)
    finally:
        sys.path.remove(str(ROOT))
    circles = [(a, b) for a in graph.modules for b in graph.find_modules_directly_imported_by(a)
               if a < b and graph.chain_exists(importer=b, imported=a)]
    assert circles == []
