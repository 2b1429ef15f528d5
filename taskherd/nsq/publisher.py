"""Publisher: publishing to NSQ, the doorbell that tells workers and the manager there is work.

Publishing is synchronous and callable from any thread: an OK from nsqd means nsqd holds the
message. It speaks nsqd's TCP protocol (PUB/MPUB, encoded by pynsq's
`nsq.protocol`) on one blocking connection per thread, because pynsq's Writer is asynchronous and bound
to an IOLoop, and nsqd's HTTP /pub cost 1.4 ms a message through httpx against 0.08 ms over TCP (the
worker publishes once per task). Consuming is each consumer's own `Feed` (taskherd/nsq/feed.py). NSQ is
never the source of truth: Redis is, and the TimeoutWatcher republishes anything NSQ loses.

Several nsqd, NSQ's own topology (one nsqd beside each producer): a publisher publishes to its **own**
nsqd, which is `own` (a pod's `--nsqd`), else `nsqd_tcp_address`, else (empty, as on Kubernetes) one
that nsqlookupd lists on this host (by its broadcast address; several on this host: one chosen by pid,
so a host's pods spread over them), else any it lists. When its own nsqd fails, the publish goes to the
next nsqd nsqlookupd lists (`/nodes`: every registered nsqd, whether or not it has the topic yet), and
last to the HTTP addresses; a failed nsqd is tried last for `FAILED_BACKOFF_S`, then its own is tried
first again. nsqlookupd is asked at most every `lookupd_poll_interval_s`, and again after a failure.

`backlog` counts a topic's messages on every nsqd, the configured HTTP addresses and nsqlookupd's
list together, each nsqd once (known by its broadcast address and TCP port, from nsqlookupd or its
own `/info`): the TimeoutWatcher compares it with Redis to find messages an nsqd lost.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import httpx
import psutil
from nsq import protocol

from taskherd.config.settings import NsqSettings
from taskherd.errors import QueueError
from taskherd.metrics import SERVICE_ERRORS
from taskherd.nsq.messages import TaskRef
from taskherd.nsq.topics import plain_http, task_topic

if TYPE_CHECKING:
    from taskherd.nsq.feed import FeedDelivery

log = logging.getLogger("taskherd.nsq")


FAILED_BACKOFF_S = 5.0
"""How long an nsqd that failed a publish is tried last (its own nsqd included)."""


class Nsqd(NamedTuple):
    """One nsqd as nsqlookupd lists it."""

    tcp: str
    http: str
    host: str
    """Its broadcast address."""


class Publisher:
    """Publishes to its own nsqd over TCP, else another nsqd, else an HTTP address. Thread-safe."""

    def __init__(self, settings: NsqSettings, own: str = "") -> None:
        self.settings = settings
        self.own = own or settings.nsqd_tcp_address
        """This publisher's own nsqd (TCP address); "" = found through nsqlookupd (see the module doc)."""
        self._addresses = list(settings.nsqd_http_addresses)
        self._http = plain_http(10.0, limits=httpx.Limits(max_keepalive_connections=16))
        self._lock = threading.Lock()
        self._local = threading.local()
        self._found: tuple[float, list[Nsqd]] = (-1e9, [])
        """(when nsqlookupd was last asked, the nsqds it listed)."""
        self._failed: dict[str, float] = {}
        """nsqd TCP address -> until when it is tried last."""
        self._silent: dict[str, float] = {}
        """nsqd HTTP address -> until when `backlog` skips it (it did not answer: a cut-off host's nsqd
        would otherwise cost every TimeoutWatcher sweep its time-out, twice, and the watcher its lease)."""
        self._identities: dict[str, tuple[float, str]] = {}
        """A configured HTTP address -> (until when known, the "host:tcp_port" its /info gave)."""
        self._this_host: set[str] | None = None

    def publish(self, topic: str, bodies: list[bytes]) -> None:
        """Put every body on `topic`, or raise QueueError; chunks keep each MPUB under nsqd's limit."""
        for chunk in _chunks(bodies, 5000):
            errors = self._tcp_publish(topic, chunk)
            if errors:
                path = f"/mpub?topic={topic}" if len(chunk) > 1 else f"/pub?topic={topic}"
                self._post(path, b"\n".join(chunk), errors)

    def publish_tasks(self, refs: list[TaskRef]) -> None:
        """Task refs, each on its priority's tasks topic (`topics.task_topic`); raises QueueError."""
        by_topic: dict[str, list[bytes]] = {}
        for ref in refs:
            by_topic.setdefault(task_topic(self.settings, ref.priority), []).append(ref.encode())
        for topic, bodies in by_topic.items():
            self.publish(topic, bodies)

    def publish_deferred(self, topic: str, body: bytes, delay_ms: int) -> None:
        """Put `body` on `topic` after `delay_ms`. nsqd keeps deferred messages in memory only: use it
        for a wake-up that something else repeats should it be lost, never for the only copy."""
        self._post(f"/pub?topic={topic}&defer={max(0, int(delay_ms))}", body)

    def dead_letter(self, delivery: FeedDelivery, why: str) -> None:
        """A message nobody can use: keep it on the dead-letter topic, never requeue it.

        A dead letter is one JSON line saying why (and the size and sha256 of the original), a newline,
        then the original bytes unchanged, so it can be inspected or republished as it came. nsqd
        allows `DEADLETTER_HEADROOM` bytes (config/settings.py) over the largest message we accept, so
        the envelope always fits.
        """
        log.error("dead-lettering a message: %s", why)
        raw = delivery.body
        head = {"why": why, "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
        try:
            self.publish(self.settings.deadletter_topic, [json.dumps(head).encode() + b"\n" + raw])
        except QueueError as exc:
            log.error("dead-letter publish failed; the message is dropped: %s", exc)
        delivery.finish()

    def _tcp_publish(self, topic: str, chunk: list[bytes]) -> list[str]:
        """Publish over this thread's connection, else to each nsqd in turn (`_targets`); [] once one
        holds the chunk, else what each said."""
        errors: list[str] = []
        conn: _TcpProducer | None = getattr(self._local, "conn", None)
        if conn is not None and self.own and conn.address != self.own and not self._backing_off(self.own):
            self._drop_tcp()  # on a fallback while our own nsqd's back-off is over: try our own again
            conn = None
        tried: set[str] = set()
        if conn is not None:
            tried.add(conn.address)
            if self._try(conn, topic, chunk, errors):
                return []
        for address in self._targets():
            if address in tried:
                continue
            tried.add(address)
            try:
                conn = self._local.conn = _TcpProducer(address)
            except OSError as exc:
                errors.append(f"{address}: {exc}")
                self._fail(address)
                continue
            if self._try(conn, topic, chunk, errors):
                if errors:
                    log.warning("published to nsqd %s instead: %s", address, "; ".join(errors))
                return []
        return errors or ["no nsqd registered with nsqlookupd " + ", ".join(self.settings.lookupd_http_addresses)]

    def _try(self, conn: _TcpProducer, topic: str, chunk: list[bytes], errors: list[str]) -> bool:
        try:
            conn.publish(topic, chunk)
            return True
        except (OSError, QueueError) as exc:
            errors.append(f"{conn.address}: {exc}")
            self._drop_tcp()
            if not isinstance(exc, QueueError):  # a refusal (bad topic, too big) is not the nsqd's fault
                self._fail(conn.address)
            return False

    def _targets(self) -> Iterator[str]:
        """TCP addresses to publish to, in order: our own nsqd, then every other nsqd nsqlookupd lists;
        one that failed within `FAILED_BACKOFF_S` last. nsqlookupd is asked only if our own fails."""
        own = self.own
        if own and not self._backing_off(own):
            yield own
        found = self._discover()
        mine = own or self._same_host(found)
        rest = sorted((n.tcp for n in found if n.tcp != mine), key=self._backing_off)
        yield from ([mine] if mine and not self._backing_off(mine) else []) + rest + ([mine] if mine else [])

    def _same_host(self, found: list[Nsqd]) -> str:
        """An nsqd nsqlookupd lists on this host (one by our pid among several), else ""."""
        here = [n.tcp for n in found if n.host in self._host_addresses()]
        return here[os.getpid() % len(here)] if here else ""

    def _host_addresses(self) -> set[str]:
        """This host's names and addresses: its hostname, the advertised address, every interface's."""
        if self._this_host is None:
            names = {socket.gethostname(), os.environ.get("TASKHERD_ADVERTISE_HOST", "")} - {""}
            try:
                names |= {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs
                          if a.family in (socket.AF_INET, socket.AF_INET6)}
            except OSError as exc:
                log.warning("cannot list this host's addresses: %s", exc)
            self._this_host = names
        return self._this_host

    def _backing_off(self, address: str) -> bool:
        return self._failed.get(address, 0.0) > time.monotonic()

    def _fail(self, address: str) -> None:
        with self._lock:
            self._failed[address] = time.monotonic() + FAILED_BACKOFF_S
            self._found = (-1e9, self._found[1])  # ask nsqlookupd again: it may have dropped that nsqd

    def _discover(self) -> list[Nsqd]:
        """Every nsqd registered with nsqlookupd (asked at most every `lookupd_poll_interval_s`)."""
        asked_at, found = self._found
        now = time.monotonic()
        if now - asked_at < self.settings.lookupd_poll_interval_s:
            return found
        nodes: set[Nsqd] = set()
        answered = False
        for lookupd in self.settings.lookupd_http_addresses:
            try:
                producers = self._http.get(f"http://{lookupd}/nodes", timeout=2.0).json().get("producers") or []
                nodes |= {Nsqd(_join(p["broadcast_address"], p["tcp_port"]), _join(p["broadcast_address"], p["http_port"]),
                               p["broadcast_address"]) for p in producers}
                answered = True
            except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
                log.warning("nsqlookupd %s: cannot list nsqd: %s", lookupd, exc)
        with self._lock:
            self._found = (now, sorted(nodes) if answered or not found else found)
            return self._found[1]

    def _drop_tcp(self) -> None:
        conn, self._local.conn = getattr(self._local, "conn", None), None
        if conn is not None:
            conn.close()

    def _post(self, path: str, content: bytes, errors: list[str] | None = None) -> None:
        errors = list(errors or [])
        for addr in self._order():
            try:
                r = self._http.post(f"http://{addr}{path}", content=content)
                if r.status_code == 200:
                    return
                errors.append(f"{addr}: HTTP {r.status_code} {r.text.strip()}")
            except httpx.HTTPError as exc:
                errors.append(f"{addr}: {exc}")
                self._demote(addr)
        SERVICE_ERRORS.labels("nsqd").inc()
        raise QueueError(f"nsqd publish {path.split('?')[0]} failed: " + "; ".join(errors))

    def _order(self) -> list[str]:
        """HTTP addresses to post to: our own nsqd's first, then the configured ones, then every other
        nsqd nsqlookupd lists (once our own, or the configured, failed: nsqlookupd is asked then)."""
        found = self._found[1]
        own = [n.http for n in found if n.tcp == self.own]
        with self._lock:
            configured = list(self._addresses)
        return list(dict.fromkeys(own + configured + [n.http for n in found]))

    def _demote(self, addr: str) -> None:
        """Try an nsqd that refused us last, so one dead nsqd costs one failure, not one per message."""
        with self._lock:
            if addr in self._addresses and len(self._addresses) > 1:
                self._addresses.remove(addr)
                self._addresses.append(addr)
            self._found = (-1e9, self._found[1])

    def backlog(self, topic: str | Sequence[str]) -> int | None:
        """Messages held for `topic` (or several topics: the tasks topics of every priority) by every
        nsqd, each nsqd counted once; None when no nsqd answers (`backlogs`)."""
        depths = self.backlogs([topic] if isinstance(topic, str) else topic)
        return None if depths is None else sum(depths.values())

    def backlogs(self, topics: Sequence[str]) -> dict[str, int] | None:
        """Per topic, the messages every nsqd holds for it (topic depth plus, per channel, depth, in
        flight and deferred), each nsqd counted once, in one /stats request to each; None when no
        nsqd answers. The TimeoutWatcher compares them with Redis to find lost messages."""
        totals, answered = dict.fromkeys(topics, 0), False
        params = {"format": "json", **({"topic": topics[0]} if len(topics) == 1 else {})}
        for addr in self._each_nsqd():
            try:
                r = self._http.get(f"http://{addr}/stats", params=params, timeout=2.0)
                stats: dict[str, Any] = r.json()
            except (httpx.HTTPError, ValueError):
                self._hush(addr)
                continue
            answered = True
            for t in stats.get("topics") or []:
                name = t.get("topic_name")
                if name not in totals:
                    continue
                totals[name] += int(t.get("depth", 0)) + sum(
                    int(ch.get("depth", 0)) + int(ch.get("in_flight_count", 0)) + int(ch.get("deferred_count", 0))
                    for ch in t.get("channels") or [])
        return totals if answered else None

    def _each_nsqd(self) -> list[str]:
        """An HTTP address of every nsqd, once each: the configured ones (that answer /info), then those
        nsqlookupd lists that are none of them; none that was silent within FAILED_BACKOFF_S."""
        seen: set[str] = set()
        out: list[str] = []
        now = time.monotonic()
        for addr in self._order_configured():
            if self._silent.get(addr, 0.0) > now:
                continue
            ident = self._identity(addr)
            if ident is not None and ident not in seen:
                seen.add(ident)
                out.append(addr)
        for n in self._discover():
            if n.tcp not in seen and self._silent.get(n.http, 0.0) <= now:
                seen.add(n.tcp)
                out.append(n.http)
        return out

    def _order_configured(self) -> list[str]:
        with self._lock:
            return list(self._addresses)

    def _identity(self, addr: str) -> str | None:
        """"broadcast address:TCP port" of the nsqd at HTTP `addr` (its /info, kept for
        `lookupd_poll_interval_s`); None when it does not answer."""
        until, ident = self._identities.get(addr, (0.0, ""))
        now = time.monotonic()
        if until > now:
            return ident
        try:
            info = self._http.get(f"http://{addr}/info", timeout=2.0).json()
            ident = _join(info["broadcast_address"], info["tcp_port"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            log.debug("nsqd %s: no /info: %s", addr, exc)
            self._identities.pop(addr, None)
            self._hush(addr)
            return None
        self._identities[addr] = (now + self.settings.lookupd_poll_interval_s, ident)
        return ident

    def _hush(self, addr: str) -> None:
        """`backlog` skips the nsqd at HTTP `addr` for FAILED_BACKOFF_S: it did not answer."""
        self._silent[addr] = time.monotonic() + FAILED_BACKOFF_S

    def close(self) -> None:
        self._http.close()


class _TcpProducer:
    """One blocking producer connection to nsqd: send PUB/MPUB, read frames until the response."""

    def __init__(self, address: str, timeout_s: float = 10.0, connect_timeout_s: float = 2.0) -> None:
        host, port = address.rsplit(":", 1)
        self.address = address
        self._sock = socket.create_connection((host.strip("[]"), int(port)), timeout=connect_timeout_s)
        self._sock.settimeout(timeout_s)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.sendall(protocol.MAGIC_V2)

    def publish(self, topic: str, bodies: list[bytes]) -> None:
        self._sock.sendall(protocol.mpub(topic, bodies) if len(bodies) > 1 else protocol.pub(topic, bodies[0]))
        while True:
            frame, data = protocol.unpack_response(self._read(struct.unpack(">l", self._read(4))[0]))
            if frame == protocol.FRAME_TYPE_RESPONSE and data == b"_heartbeat_":
                self._sock.sendall(protocol.nop())
                continue
            if frame == protocol.FRAME_TYPE_ERROR or data != b"OK":
                raise QueueError(f"nsqd refused a publish to {topic}: {data[:200]!r}")
            return

    def _read(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            part = self._sock.recv(n - len(buf))
            if not part:
                raise ConnectionError("nsqd closed the connection")
            buf += part
        return bytes(buf)

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _chunks(items: list[bytes], n: int) -> list[list[bytes]]:
    return [items[i:i + n] for i in range(0, len(items), n)]
