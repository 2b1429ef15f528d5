"""Registry: this node's registration in Redis, kept alive by heartbeats, and the view of its peers.

A registration expires on its own (`taskherd.store.membership`), so a node that dies without saying
goodbye (SIGKILL, a lost machine) drops out within `node_ttl_s`: nothing has to notice it. A clean
stop deregisters at once.

Each heartbeat also reads whether a system teardown (`taskherd teardown --all --stop`) asked this
registration to exit, and then calls `on_stop_asked` (the pod's stop: workers drain, then exit 0).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka
from prometheus_client import REGISTRY

from taskherd import __version__
from taskherd.config.settings import RegistrySettings
from taskherd.errors import StoreError
from taskherd.store.membership import Membership
from taskherd.supervisor import Supervised, Ticker

log = logging.getLogger("taskherd.registry")

SLOTS_METRIC = "taskherd_worker_slots"
"""The busy-slot gauge (`taskherd.metrics.SLOTS`) as Prometheus names it."""


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What a node says of itself when it registers."""

    id: str
    role: str
    host: str
    pid: int
    slots: int
    version: str
    started: float
    """Unix time the process started."""
    api_url: str = ""
    """Where a manager serves the API; empty for a worker."""
    metrics_url: str = ""
    """Where the pod serves Prometheus metrics (its /healthz and /readyz sit beside it)."""

    @staticmethod
    def for_this_process(role: str, slots: int, api: tuple[str, int] | None = None,
                         probes: tuple[str, int] | None = None) -> NodeInfo:
        """`api` and `probes` are the (host, port) the pod listens on for each, when it does."""
        host = socket.gethostname()
        api_url = _url(*api) if api else ""
        metrics_url = f"{api_url}/metrics" if api_url else (f"{_url(*probes)}/metrics" if probes else "")
        return NodeInfo(f"{role}-{host}-{os.getpid()}", role, host, os.getpid(), slots, __version__, time.time(),
                        api_url, metrics_url)


ADVERTISE_ENV = "TASKHERD_ADVERTISE_HOST"
"""The address other hosts reach this pod at (on Kubernetes: the pod IP, from the downward API)."""


def _url(host: str, port: int) -> str:
    """An http URL for what listens on host:port, as another host would reach it: the advertised
    address when set, else the listening address unless it is a wildcard, else this host's address."""
    shown = os.environ.get(ADVERTISE_ENV) or ("" if host in ("0.0.0.0", "::", "") else host)
    if not shown:
        try:
            shown = socket.gethostbyname(socket.gethostname())
        except OSError:
            shown = "127.0.0.1"
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Tell (from the ticker): refresh the registration and look at the peers."""


class Registry(Supervised, pykka.ThreadingActor):
    def __init__(self, members: Membership, info: NodeInfo, settings: RegistrySettings,
                 on_stop_asked: Callable[[], None] | None = None, **supervised: Any) -> None:
        super().__init__(**supervised)
        self.members, self.info, self.settings = members, info, settings
        self.on_stop_asked = on_stop_asked
        """Called (once per heartbeat that sees it) when a system teardown asks this pod to exit."""
        self.peers: set[str] = set()
        self._ticker: Ticker | None = None

    def on_start(self) -> None:
        try:
            self._beat()
        except StoreError as exc:  # a pod may start before Redis: heartbeats will retry
            log.warning("first registration failed (will retry): %s", exc)
        self._ticker = Ticker(self.actor_ref, Heartbeat(), self.settings.heartbeat_s).start()
        log.info("registered node %s (%s, %d slots)", self.info.id, self.info.role, self.info.slots)

    def on_stop(self) -> None:
        if self._ticker:
            self._ticker.stop()
        try:
            self.members.leave(self.info.id)
            log.info("deregistered node %s", self.info.id)
        except StoreError as exc:
            log.warning("could not deregister %s (its registration expires by itself): %s", self.info.id, exc)
        super().on_stop()

    def on_receive(self, message: Any) -> Any:
        match message:
            case Heartbeat():
                try:
                    self._beat()
                except StoreError as exc:
                    log.warning("heartbeat failed (will retry): %s", exc)
            case _:
                log.warning("registry: unknown message %r", message)

    def _beat(self) -> None:
        live = self.members.beat(self.info.id, {**_fields(self.info), **_now_fields()},
                                 int(self.settings.node_ttl_s * 1000))
        for joined in sorted(live - self.peers - {self.info.id}):
            log.info("peer joined: %s", joined)
        for left in sorted(self.peers - live):
            log.info("peer left: %s", left)
        self.peers = live
        if self.on_stop_asked is not None and self.members.asked_to_stop(self.info.id, _fields(self.info)["started"]):
            log.info("a system teardown asked node %s to stop: stopping", self.info.id)
            self.on_stop_asked()


def _fields(info: NodeInfo) -> dict[str, str]:
    return {f: str(getattr(info, f)) for f in NodeInfo.__dataclass_fields__}


def _now_fields() -> dict[str, str]:
    """What changes between heartbeats, for the dashboard: when this one was sent (Unix ms) and the
    worker slots running an executor now (this process's `taskherd_worker_slots{state="busy"}`)."""
    busy = REGISTRY.get_sample_value(SLOTS_METRIC, {"state": "busy"})
    return {"beat_ms": str(int(time.time() * 1000)), "busy": str(int(busy or 0))}
