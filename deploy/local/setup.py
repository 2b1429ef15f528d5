"""`python -m taskherd.deploy.local.setup`: get every service binary the local cluster needs.

Idempotent and fast when nothing is missing, so `make test` and `make demo` can call it every time:
- nsqd and nsqlookupd v1.3.0 are built with Go into the cache (see `binaries.cache_dir`) unless
  already found. `go install …@v1.3.0` refuses NSQ's `replace` directive, so we `go build` from the
  small wrapper module shipped beside this file (`nsq-build/`), copied to a temporary directory
  first because an installed package may be read-only. CGO is off so no C compiler is needed.
- redis-server and mariadb-server are installed with apt-get unless their binaries are found. The
  packages' own system services are never started: while apt runs, a `policy-rc.d` that denies
  service starts is put in place if none exists. The local cluster runs private instances only.
- chromium and chromedriver (Debian's `chromium`, `chromium-driver`) likewise, for the dashboard's
  browser tests only; without root they are named and skipped, not an error.

Every outcome is one line on stdout; a failure exits 1 with the reason, never a traceback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

from taskherd.deploy.local import binaries
from taskherd.errors import MissingBinary, TaskherdError

NSQ_VERSION = "v1.3.0"
_NSQ_PACKAGES = ("github.com/nsqio/nsq/apps/nsqd", "github.com/nsqio/nsq/apps/nsqlookupd")
_APT_PACKAGES = {"redis-server": "redis-server", "redis-cli": "redis-tools", "mariadbd": "mariadb-server",
                 "mariadb-install-db": "mariadb-server"}
_BROWSER = {"chromium": "chromium", "chromedriver": "chromium-driver"}
"""Binaries of the dashboard's browser tests, and the Debian packages holding them."""
_POLICY_RC = Path("/usr/sbin/policy-rc.d")
_GO_FALLBACKS = ("/usr/local/go/bin/go", "/usr/lib/go/bin/go")


class SetupError(TaskherdError):
    """A setup step failed; the message says which and what to do."""


def say(message: str) -> None:
    print(f"taskherd setup: {message}", flush=True)


def main() -> int:
    try:
        ensure_nsq()
        ensure_apt_services()
        ensure_browser()
    except TaskherdError as exc:
        say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    say("all service binaries present")
    return 0


# --- NSQ ------------------------------------------------------------------------------------------

def ensure_nsq() -> None:
    """Build nsqd and nsqlookupd into the cache unless both are already found."""
    try:
        found = [binaries.find(name) for name in ("nsqd", "nsqlookupd")]
    except MissingBinary:
        pass
    else:
        say(f"nsqd, nsqlookupd: found ({', '.join(found)})")
        return
    go = _find_go()
    out = binaries.cache_dir()
    say(f"building nsqd and nsqlookupd {NSQ_VERSION} with {go} into {out} (about 30 s, needs network)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="taskherd-nsq-build-") as tmp:
        module = Path(tmp) / "nsq-build"
        _copy_build_module(module)
        build_out = Path(tmp) / "out"
        build_out.mkdir()
        _run_go_build(go, module, build_out)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("nsqd", "nsqlookupd"):
            # Copy beside the target, then rename: a half-copied binary is never picked up.
            staged = out / f".{name}.partial"
            shutil.copy2(build_out / name, staged)
            os.replace(staged, out / name)
    say(f"nsqd, nsqlookupd: built in {time.monotonic() - started:.0f} s")


def _find_go() -> str:
    go = shutil.which("go") or next((p for p in _GO_FALLBACKS if os.access(p, os.X_OK)), None)
    if go is None:
        raise SetupError(
            "nsqd/nsqlookupd are missing and Go is not installed: install Go >= 1.17 "
            "(https://go.dev/dl/) and rerun, or put nsqd and nsqlookupd from NSQ's v1.3.0 release "
            "tarball (https://nsq.io/deployment/installing.html) on PATH")
    return go


def _copy_build_module(dest: Path) -> None:
    source = resources.files("taskherd.deploy.local") / "nsq-build"
    dest.mkdir()
    for name in ("go.mod", "go.sum", "tools.go"):
        entry = source / name
        if not entry.is_file():
            raise SetupError(f"packaged Go build module is incomplete: {name} missing in {source}")
        (dest / name).write_bytes(entry.read_bytes())


def _run_go_build(go: str, module: Path, out: Path) -> None:
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS=(os.environ.get("GOFLAGS", "") + " -mod=mod").strip())
    cmd = [go, "build", "-trimpath", "-o", str(out), *_NSQ_PACKAGES]
    result = subprocess.run(cmd, cwd=module, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, check=False)
    if result.returncode != 0:
        raise SetupError(f"go build of NSQ {NSQ_VERSION} failed (exit {result.returncode}): "
                         f"{_tail(result.stdout)}")


# --- Redis and MariaDB ----------------------------------------------------------------------------

def ensure_apt_services() -> None:
    """apt-get install the Debian packages whose binaries are missing; nothing when all are found."""
    absent = binaries.missing()
    missing = [name for name in _APT_PACKAGES if name in absent]
    if not missing:
        say(f"{', '.join(_APT_PACKAGES)}: found")
        return
    packages = sorted({_APT_PACKAGES[name] for name in missing})
    command = f"apt-get install -y {' '.join(packages)}"
    if shutil.which("apt-get") is None:
        raise SetupError(f"{', '.join(missing)} missing and apt-get is not available: install "
                         f"{' and '.join(packages)} with your system's package manager")
    if os.geteuid() != 0:
        raise SetupError(f"{', '.join(missing)} missing; as root run: {command}")
    say(f"{', '.join(missing)} missing: running {command} (about a minute)")
    with _services_not_started():
        result = _apt_install(packages)
        if result.returncode != 0:
            say("apt-get install failed; running apt-get update and retrying")
            _apt(["update"])
            result = _apt_install(packages)
    if result.returncode != 0:
        raise SetupError(f"{command} failed (exit {result.returncode}): {_tail(result.stdout)}")
    absent = binaries.missing()
    still = [name for name in missing if name in absent]
    if still:
        raise SetupError(f"{' '.join(packages)} installed but {', '.join(still)} still not found")
    say(f"{' and '.join(packages)}: installed")


# --- a browser for the dashboard's tests -----------------------------------------------------------

def ensure_browser() -> None:
    """Debian's chromium and its chromedriver, for tests/e2e/test_ui.py (Selenium drives them
    headless). Not needed to run taskherd: without root or apt-get this says so and goes on, and the
    dashboard's tests skip locally (they fail under CI)."""
    missing = [name for name in _BROWSER if shutil.which(name) is None]
    if not missing:
        say("chromium, chromedriver: found")
        return
    packages = sorted({_BROWSER[name] for name in missing})
    command = f"apt-get install -y {' '.join(packages)}"
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        say(f"{', '.join(missing)} missing (only the dashboard's browser tests need them); as root run: {command}")
        return
    say(f"{', '.join(missing)} missing: running {command} (a minute or two)")
    with _services_not_started():
        result = _apt_install(packages)
        if result.returncode != 0:
            _apt(["update"])
            result = _apt_install(packages)
    if result.returncode != 0:
        raise SetupError(f"{command} failed (exit {result.returncode}): {_tail(result.stdout)}")
    say(f"{' and '.join(packages)}: installed")


def _apt_install(packages: list[str]) -> subprocess.CompletedProcess[str]:
    return _apt(["install", "-y", *packages])


def _apt(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(["apt-get", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, check=False)


class _services_not_started:
    """Deny service starts during apt (exit 101 is "action forbidden by policy") if no policy exists.

    Debian packages start their system instance on install; ours must never run (it would take the
    package's default port and data directory, which the local cluster does not use).
    """

    def __enter__(self) -> None:
        self.created = False
        if not _POLICY_RC.exists():
            _POLICY_RC.write_text("#!/bin/sh\n# taskherd setup: no service starts during install\nexit 101\n")
            _POLICY_RC.chmod(0o755)
            self.created = True

    def __exit__(self, *exc: object) -> None:
        if self.created:
            _POLICY_RC.unlink(missing_ok=True)


def _tail(output: str, lines: int = 12) -> str:
    kept = [line for line in output.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept) if kept else "(no output)"


if __name__ == "__main__":
    sys.exit(main())
