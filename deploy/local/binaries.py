"""Find the service binaries the local cluster runs, or say exactly how to get the missing one.

A plain `pip install` of taskherd must work without the source tree or Go, so a binary is looked up,
in order, on PATH, in the cache `python -m taskherd.deploy.local.setup` fills
(`${XDG_CACHE_HOME:-~/.cache}/taskherd/bin`, outside the source tree so it survives a fresh clone),
and in the sbin directories a non-root PATH usually lacks (Debian installs `mariadbd` in /usr/sbin).
Someone with NSQ's release binaries on PATH needs no Go at all.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from taskherd.errors import MissingBinary

_SETUP = "python -m taskherd.deploy.local.setup"
_NSQ_HINT = (f"{_SETUP} (builds NSQ v1.3.0 with Go), or put nsqd and nsqlookupd from NSQ's release "
             "tarball (https://nsq.io/deployment/installing.html) on PATH")
_APT = "apt-get install -y {package}  (as root; or run: " + _SETUP + ")"

INSTALL_HINTS: dict[str, str] = {
    "nsqd": _NSQ_HINT,
    "nsqlookupd": _NSQ_HINT,
    "redis-server": _APT.format(package="redis-server"),
    "redis-cli": _APT.format(package="redis-tools"),  # forms a local Redis Cluster (redis-server depends on it)
    "mariadbd": _APT.format(package="mariadb-server"),
    "mariadb-install-db": _APT.format(package="mariadb-server"),
}
"""Every binary the local cluster needs, with the command that installs it."""

_SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def cache_dir() -> Path:
    """Where setup builds nsqd/nsqlookupd; read from the environment at call time, never at import."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "taskherd" / "bin"


def find(name: str) -> str:
    """Absolute path of `name`; raises `MissingBinary` naming it and its install command."""
    search_path = os.pathsep.join([os.environ.get("PATH", ""), str(cache_dir()), *_SBIN_DIRS])
    found = shutil.which(name, path=search_path)
    if found is None:
        raise MissingBinary(name, INSTALL_HINTS.get(name, f"install {name}"))
    return os.path.abspath(found)


def find_all() -> dict[str, str]:
    """Every binary in `INSTALL_HINTS`; raises for the first missing one."""
    return {name: find(name) for name in INSTALL_HINTS}


def missing() -> list[str]:
    """Names of the binaries that `find` cannot locate (empty when the cluster can start)."""
    result = []
    for name in INSTALL_HINTS:
        try:
            find(name)
        except MissingBinary:
            result.append(name)
    return result
