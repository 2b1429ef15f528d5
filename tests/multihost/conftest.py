"""Hosts as network namespaces need root and iproute2: without them these tests skip locally and
FAIL when the `CI` env var is set (as tests/conftest.py does for missing services), so CI can never
pass by skipping. Each case's figures are printed at the end of the session and written to
tests/multihost/last_run.md."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import pytest

from tests.hosts import have_root

FIGURES: list[tuple[str, dict[str, Any]]] = []
LAST_RUN = Path(__file__).with_name("last_run.md")
_STARTED = time.monotonic()


@pytest.fixture(scope="session")
def root(service_binaries: dict[str, str]) -> None:
    why = have_root()
    if why is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so the multihost tests cannot skip: {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> dict[str, Any]:
    """A test's figures, by name; printed and written with the session's summary."""
    found: dict[str, Any] = {}
    FIGURES.append((request.node.name, found))
    return found


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    lines = [f"- **{name}**: " + ", ".join(f"{k} {v}" for k, v in fig.items()) for name, fig in FIGURES]
    terminalreporter.write_sep("-", "multihost figures")
    for line in lines:
        terminalreporter.write_line(line)
    # Cases this session did not run keep their last line (a session may run one module alone).
    ran = {f"- **{name}**:" for name, _ in FIGURES}
    kept = [line for line in (LAST_RUN.read_text().splitlines() if LAST_RUN.exists() else [])
            if line.startswith("- **") and line.split(":", 1)[0] + ":" not in ran]
    LAST_RUN.write_text(f"# Multihost cases: last run\n\n{time.strftime('%Y-%m-%d %H:%M:%S')}, {platform.node()}, "
                        f"{time.monotonic() - _STARTED:.0f} s for the session (cases it did not run keep their "
                        "earlier line)\n\n" + "\n".join(kept + lines) + "\n")
