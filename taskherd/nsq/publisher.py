"""Publisher: publishing to NSQ, the doorbell that tells workers and the manager there is work.

Publishing is synchronous and callable from any thread: an OK from nsqd means nsqd holds the
message. It speaks nsqd's TCP protocol (PUB/MPUB, encoded by pynsq's
`nsq.protocol`) on one blocking connection per thread, because pynsq's Writer is asynchronous and bound
to an IOLoop, and nsqd's HTTP /pub cost 1.4 ms a message through httpx against 0.08 ms over TCP (the
worker publishes once per task). When the TCP nsqd fails, it falls back to the HTTP addresses (which
may be other nsqds). Consuming is each consumer's own `Feed` (taskherd/nsq/feed.py). NSQ is never the
source of truth: Redis is, and the TimeoutWatcher republishes anything NSQ loses.

An empty `nsqd_tcp_address` (as on Kubernetes) means: find nsqd through nsqlookupd, for publishers as
for consumers. Its `/nodes` lists every nsqd registered with it (a topic need not exist yet), and
the publisher uses the first by address, asking again every `lookupd_poll_interval_s` and after a
failure; with none found, it publishes over the HTTP addresses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import struct
import threading
import time
from typing import TYPE_CHECKING, Any

import httpx
from nsq import protocol

from taskherd.config.settings import NsqSettings
from taskherd.errors import QueueError
from taskherd.metrics import SERVICE_ERRORS

if TYPE_CHECKING:
    from taskherd.nsq.feed import FeedDelivery

log = logging.getLogger("taskherd.nsq")


class Publisher:
    """Publishes to nsqd over TCP, else to the first nsqd HTTP address that answers. Thread-safe."""

    def __init__(self, settings: NsqSettings) -> None:
        self.settings = settings
        self._addresses = list(settings.nsqd_http_addresses)
        self._http = httpx.Client(timeout=10.0, limits=httpx.Limits(max_keepalive_connections=16))
        self._lock = threading.Lock()
        self._local = threading.local()
        self._found: tuple[float, list[str]] = (-1e9, [])
        """(when nsqlookupd was last asked, the TCP addresses of the nsqds it knew)."""

    def publish(self, topic: str, bodies: list[bytes]) -> None:
        """Put every body on `topic`, or raise QueueError; chunks keep each MPUB under nsqd's limit."""
        for chunk in _chunks(bodies, 5000):
            try:
                self._tcp_publish(topic, chunk)
            except (OSError, QueueError):
                self._drop_tcp()
                self._post(f"/mpub?topic={topic}" if len(chunk) > 1 else f"/pub?topic={topic}", b"\n".join(chunk))

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

    def _tcp_publish(self, topic: str, chunk: list[bytes]) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = _TcpProducer(self._tcp_address())
        conn.publish(topic, chunk)

    def _tcp_address(self) -> str:
        """The configured nsqd, or the first nsqlookupd knows of; QueueError when there is none."""
        if self.settings.nsqd_tcp_address:
            return self.settings.nsqd_tcp_address
        found = self._discover()
        if not found:
            raise QueueError("no nsqd registered with nsqlookupd " + ", ".join(self.settings.lookupd_http_addresses))
        return found[0]

    def _discover(self) -> list[str]:
        asked_at, found = self._found
        now = time.monotonic()
        if found and now - asked_at < self.settings.lookupd_poll_interval_s:
            return found
        addresses: set[str] = set()
        for lookupd in self.settings.lookupd_http_addresses:
            try:
                nodes = self._http.get(f"http://{lookupd}/nodes", timeout=2.0).json().get("producers") or []
                addresses |= {f"{n['broadcast_address']}:{n['tcp_port']}" for n in nodes}
            except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
                log.warning("nsqlookupd %s: cannot list nsqd: %s", lookupd, exc)
        self._found = (now, sorted(addresses))
        return self._found[1]

    def _drop_tcp(self) -> None:
        conn, self._local.conn = getattr(self._local, "conn", None), None
        if conn is not None:
            conn.close()
            if not self.settings.nsqd_tcp_address:
                self._found = (-1e9, [])  # that nsqd failed us: ask nsqlookupd again next time

    def _post(self, path: str, content: bytes) -> None:
        errors = []
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
        with self._lock:
            return list(self._addresses)

    def _demote(self, addr: str) -> None:
        """Try an nsqd that refused us last, so one dead nsqd costs one failure, not one per message."""
        with self._lock:
            if addr in self._addresses and len(self._addresses) > 1:
                self._addresses.remove(addr)
                self._addresses.append(addr)

    def backlog(self, topic: str) -> int | None:
        """Messages held by nsqd for `topic` (topic depth plus, per channel, depth, in flight and deferred);
        None when no nsqd answers. The TimeoutWatcher compares it with Redis to find lost messages."""
        total, answered = 0, False
        for addr in self._order():
            try:
                r = self._http.get(f"http://{addr}/stats", params={"format": "json", "topic": topic})
                stats: dict[str, Any] = r.json()
            except (httpx.HTTPError, ValueError):
                continue
            answered = True
            for t in stats.get("topics") or []:
                if t.get("topic_name") != topic:
                    continue
                total += int(t.get("depth", 0))
                for ch in t.get("channels") or []:
                    total += int(ch.get("depth", 0)) + int(ch.get("in_flight_count", 0)) + int(ch.get("deferred_count", 0))
        return total if answered else None

    def close(self) -> None:
        self._http.close()


class _TcpProducer:
    """One blocking producer connection to nsqd: send PUB/MPUB, read frames until the response."""

    def __init__(self, address: str, timeout_s: float = 10.0) -> None:
        host, port = address.rsplit(":", 1)
        self._sock = socket.create_connection((host, int(port)), timeout=timeout_s)
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


def _chunks(items: list[bytes], n: int) -> list[list[bytes]]:
    return [items[i:i + n] for i in range(0, len(items), n)]
