"""`taskherd up` as a child process of a test: ports of its own, its output in a file, its process
tree recorded, and a small HTTP helper for the API it serves.

Ports: a block of the test ports shifted by an amount that is not a multiple of 1000 (test sessions
take those, see tests/helpers.py), with every port free when chosen and below the kernel's ephemeral
range; each `up` takes its own block.
The config file names only those ports and a few timings, so a taskherd installed from another tree
than the one running the test reads it too.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from taskherd.config import Settings, from_dict
from tests.helpers import free_block_shift, settings_for_tests, wait_until

REPO = Path(__file__).resolve().parents[1]
"""The repository root: `up` runs with it as its working directory, as a developer would run it."""
ECHO = ["-c", "import json,sys; print(json.dumps(json.load(sys.stdin)))"]
"""Arguments of a Python `exe` executor that answers its payload."""


def up_settings() -> Settings:
    """Test settings on a free block of ports (never a test session's), with a short drain."""
    data = settings_for_tests(free_block_shift()).model_dump()
    data["worker"].update(SHORT["worker"])
    data["registry"].update(SHORT["registry"])
    return from_dict(data)


SHORT = {"worker": {"slots": 1, "drain_grace_s": 5.0}, "registry": {"heartbeat_s": 0.5, "node_ttl_s": 1.0}}
"""Timings for a quick start and stop."""


def config_toml(settings: Settings) -> str:
    """The ports and database of `settings`, and the `SHORT` timings, as a config file."""
    nsq = settings.nsq
    lines = ["[nsq]", f'nsqd_tcp_address = "{nsq.nsqd_tcp_address}"',
             f'nsqd_http_addresses = ["{nsq.nsqd_http_addresses[0]}"]',
             f'lookupd_tcp_address = "{nsq.lookupd_tcp_address}"',
             f'lookupd_http_addresses = ["{nsq.lookupd_http_addresses[0]}"]',
             "[redis]", f"port = {settings.redis.port}",
             *([f"cluster_nodes = {json.dumps(list(settings.redis.cluster_nodes))}"] if settings.redis.cluster_nodes else []),
             "[mysql]", f"port = {settings.mysql.port}", f'database = "{settings.mysql.database}"',
             "[api]", f"port = {settings.api.port}"]
    sections = {**SHORT, "worker": {**SHORT["worker"], "http_port": settings.worker.http_port}}
    for section, values in sections.items():
        lines += [f"[{section}]", *(f"{key} = {value}" for key, value in values.items())]
    return "\n".join(lines) + "\n"


def tgkill(pid: int, tid: int, sig: int) -> None:
    """Send `sig` to thread `tid` of process `pid` (the main thread of `up` when tid == pid)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.tgkill(pid, tid, sig) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


@dataclass
class Up:
    """One `taskherd up` process (`command` is how to run taskherd, e.g. [python, "-m", "taskherd"])."""

    command: list[str]
    settings: Settings
    data_dir: Path
    workdir: Path
    workers: int = 1
    cwd: Path = REPO
    extra_toml: str = ""
    """Appended to the config file (sections `config_toml` does not write, e.g. `[auth]`)."""
    options: tuple[str, ...] = ()
    """More options of `taskherd up` (e.g. `--redis-cluster`)."""
    proc: subprocess.Popen[bytes] | None = None
    recorded: list[tuple[int, float, str]] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        return self.workdir / "up.log"

    @property
    def url(self) -> str:
        return f"http://{self.settings.api.host}:{self.settings.api.port}"

    def start(self) -> None:
        config = self.workdir / "up.toml"
        config.write_text(config_toml(self.settings) + self.extra_toml)
        argv = [*self.command, "--config", str(config), "up", "--workers", str(self.workers),
                "--data-dir", str(self.data_dir), *self.options]
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.cwd,
                                         start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"taskherd up exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 180) -> None:
        """Until the API answers and `up` itself says the cluster is ready (it then tends it)."""
        wait_until(lambda: self.ready() and "[up] cluster ready" in self.log(), timeout=timeout, interval=0.2,
                   message="taskherd up: GET /readyz answers 200 and `up` says the cluster is ready")
        self.record()

    def record(self) -> None:
        """Remember every process below `up` now (pid, start time, command), to check none outlives it."""
        assert self.proc is not None
        for proc in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                self.recorded.append((proc.pid, proc.create_time(), " ".join(proc.cmdline()[:3])))
            except psutil.NoSuchProcess:
                pass

    def child_pid(self, name: str) -> int | None:
        """Pid of the live (not zombie) process called `name` below `up`."""
        assert self.proc is not None
        for proc in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if proc.name() == name and proc.status() != psutil.STATUS_ZOMBIE:
                    return proc.pid
            except psutil.NoSuchProcess:
                pass
        return None

    def still_running(self) -> list[str]:
        """Recorded processes that still run (same pid and start time, not a zombie)."""
        alive = []
        for pid, created, name in self.recorded:
            try:
                proc = psutil.Process(pid)
                if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{pid} {name}")
            except psutil.NoSuchProcess:
                pass
        return alive

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 90) -> int:
        """`sig` to the main thread of `up` (as a terminal's Ctrl-C or a service manager would send
        it), and its exit code."""
        assert self.proc is not None
        self.record()
        tgkill(self.proc.pid, self.proc.pid, sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """Last resort for a failed test: nothing of this cluster may outlive it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for proc in [*psutil.Process(self.proc.pid).children(recursive=True), psutil.Process(self.proc.pid)]:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        self.proc.wait(10)


def api(up: Up, method: str, path: str, body: Any = None, timeout: float = 10) -> Any:
    """One API call; the JSON answer, raising on a status of 400 or more."""
    resp = httpx.request(method, f"{up.url}{path}", json=body, timeout=timeout, trust_env=False)
    resp.raise_for_status()
    return resp.json()


def run_one_echo_task(up: Up, python: str, job: str, timeout: float = 60) -> dict[str, Any]:
    """Register an `exe` echo executor (idempotent), submit one task in `job`, return the job once
    done (long-polls of GET /jobs/{job}?wait_s=)."""
    api(up, "PUT", "/executors/echo", {"kind": "exe", "target": [python, *ECHO]})
    api(up, "POST", "/tasks", {"id": f"{job}-1", "type": "echo", "job": job, "payload": {"n": 1}})
    return wait_until(lambda: _done(api(up, "GET", f"/jobs/{job}?wait_s=5", timeout=15)), timeout=timeout,
                      message=f"job {job} done")


def _done(status: dict[str, Any]) -> dict[str, Any] | None:
    return status if status.get("done") else None
