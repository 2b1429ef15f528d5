"""The README's examples run as written: its files are saved, its Python example and every line of
its CLI block run against a real `taskherd up` started in that project directory.

Blocks are found by the marker comment above them (`<!-- readme-test: file PATH -->`, `python`,
`sh`), so an example that stops working, or a new line added to the CLI block, fails here. Only the
address differs from the README: the cluster listens on test ports, so the Python example's URL is
replaced and each CLI line gets `--config` naming them.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.local_up import Up, up_settings

README = Path(__file__).resolve().parents[2] / "README.md"
MARKED = re.compile(r"<!-- readme-test: (file (?P<path>\S+)|(?P<kind>python|sh)) -->\n```\w*\n(?P<body>.*?)```", re.DOTALL)
TASKHERD = str(Path(sys.executable).parent / "taskherd")
REFUSALS_SHOWN = {"task retry img-2"}
"""Lines that show a refusal in this sequence (img-2 has succeeded, so it is not a dead letter): exit 1
with one error line is their right answer."""


def blocks() -> list[tuple[str, str, str]]:
    """(kind, path or '', body) of every marked block, in README order."""
    return [("file", m["path"], m["body"]) if m["path"] else (m["kind"], "", m["body"])
            for m in MARKED.finditer(README.read_text())]


def test_the_readme_marks_its_examples() -> None:
    kinds = [kind for kind, _, _ in blocks()]
    assert kinds.count("python") >= 1 and kinds.count("sh") >= 1 and kinds.count("file") >= 2


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    for kind, path, body in blocks():
        if kind == "file":
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(body)
    return root


def test_the_readme_examples_run_as_written(project: Path, tmp_path: Path) -> None:
    cluster = Up([TASKHERD], up_settings(), tmp_path / "data", tmp_path, cwd=project)
    cluster.start()
    try:
        cluster.wait_ready()
        config = str(tmp_path / "up.toml")
        for kind, _, body in blocks():
            if kind == "python":
                code = body.replace("http://127.0.0.1:18080", cluster.url)
                done = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True,
                                      timeout=120)
                assert done.returncode == 0, done.stderr
                assert done.stdout.strip() == "1 succeeded"
            elif kind == "sh":
                for line in filter(None, (line.strip() for line in body.splitlines())):
                    _run_line(line, config, project)
        assert cluster.stop() == 0
    finally:
        cluster.kill()


def _run_line(line: str, config: str, cwd: Path) -> None:
    argv = shlex.split(line, comments=True)
    assert argv[0] == "taskherd", line
    done = subprocess.run([TASKHERD, "--config", config, *argv[1:]], cwd=cwd, capture_output=True, text=True,
                          timeout=120)
    assert "Traceback" not in done.stderr, f"{line}\n{done.stderr}"
    shown = " ".join(argv[1:])
    if shown in REFUSALS_SHOWN:
        assert done.returncode == 1 and done.stderr.startswith("error: 409"), f"{line}\n{done.stderr}"
    else:
        assert done.returncode == 0, f"{line}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
