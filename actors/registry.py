"""Registry: this node's registration in Redis, kept alive by heartbeats, and the view of its peers.

A registration expires on its own (`taskherd.store.membership`), so a node that dies without saying
goodbye (SIGKILL, a lost machine) drops out within `node_ttl_s`: nothing has to notice it. A clean
stop deregisters at once.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import pykka

from taskherd import __version__
from taskherd.config.settings import RegistrySettings
from taskherd.errors import StoreError
from taskherd.store.membership import Membership
from taskherd.supervisor import Supervised, Ticker

log = logging.getLogger("taskherd.registry")


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

    @staticmethod
    def for_this_process(role: str, slots: int) -> NodeInfo:
        host = socket.gethostname()
        return NodeInfo(f"{role}-{host}-{os.getpid()}", role, host, os.getpid(), slots, __version__, time.time())


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Tell (from the ticker): refresh the registration and look at the peers."""


class Registry(Supervised, pykka.ThreadingActor):
    def __init__(self, members: Membership, info: NodeInfo, settings: RegistrySettings, **supervised: Any) -> None:
        super().__init__(**supervised)
        self.members, self.info, self.settings = members, info, settings
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
        live = self.members.beat(self.info.id, _fields(self.info), int(self.settings.node_ttl_s * 1000))
        for joined in sorted(live - self.peers - {self.info.id}):
            log.info("peer joined: %s", joined)
        for left in sorted(self.peers - live):
            log.info("peer left: %s", left)
        self.peers = live


def _fields(info: NodeInfo) -> dict[str, str]:
    return {f: str(getattr(info, f)) for f in NodeInfo.__dataclass_fields__}
