"""Feed: a subscription to one topic whose owner reads nsqd's connection(s) in its own thread: a
worker slot (the tasks topics, RDY 1, or a batch's worth: `want`) or the ResultAnalyzer (the results topic, RDY one batch).

Why the owner reads its own connection instead of sharing a pynsq Reader on an IOLoop thread: through
the Reader a task crossed threads four times (IOLoop -> slot, the FIN back to the IOLoop, "slot free"
back to the IOLoop) and the IOLoop was 28 % of a worker pod's CPU. Here the owner blocks on its
socket, takes a message, and FINs it on the same socket: no thread hop, no RDY traffic (RDY is set
once), and nsqd's in-flight count on the connection is exactly what the owner holds. Commands are
encoded and frames decoded by pynsq's protocol module.

A slot finishes a message once it holds the task's lease, so nsqd sends its next message while the
executor runs: it is there the moment the slot is free. Behind a long task that message would wait:
the LeaseKeeper's renewal tick `shed`s it (back to nsqd for an idle slot, RDY 0 until the slot reads
again), so a pod never holds work behind a long task for more than a tick.

With a static `nsqd_tcp_address` the feed connects there; otherwise it asks nsqlookupd which nsqds
hold the topic (every `lookupd_poll_interval_s`) and keeps RDY on each (a slot may so be sent one
message per nsqd at once: the extra ones wait in `_ready`, and are shed the same way).

Priorities (a slot's feed of the tasks topics): NSQ has none, so each priority has its own topic
(`taskherd.nsq.topics.task_topic`) and a slot subscribes to all of them, RDY 1 (or its batch) on each,
highest first.
Of the messages it holds, `next` hands out the highest priority's first, and before it hands out a
lower one it waits a moment (`GRACE_S`) on each higher topic's connection that may still be sending
one (`_Conn.expecting`: RDY was sent, or a message was answered, since the last one came): nsqd sends
the next message of a topic ~0.5 ms after the previous one's FIN, so without the wait a slot that has
just finished a high-priority task would take a low one that happened to be read first. A connection
that sends nothing within the wait has nothing; it expects again only after its next RDY or answer,
so a feed whose higher topics are empty pays the wait once, not per message. `better` lets the slot
swap a task leased ahead for a higher one that came meanwhile.
"""

from __future__ import annotations

import logging
import selectors
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Sequence

import httpx
from nsq import protocol

from taskherd.config.settings import NsqSettings
from taskherd.metrics import SERVICE_ERRORS
from taskherd.nsq.topics import plain_http

log = logging.getLogger("taskherd.feed")

SOCKET_TIMEOUT_S = 5.0
"""For sends, and for the rest of a frame that has begun to arrive; waiting for messages is select's."""
GRACE_S = 0.02
"""How long a lower priority's message waits for a higher topic's connection that may be sending one."""
HEARTBEAT_MS = 30_000
"""nsqd closes a connection that sends nothing for two heartbeat intervals: an idle owner answers each
heartbeat, and a busy one sends a NOP (`keep_alive`; the LeaseKeeper does it for a slot)."""


class FeedDelivery:
    """One message, acknowledged from any thread (the owner, or the LeaseKeeper handing back). Only the
    first finish or requeue goes to nsqd."""

    __slots__ = ("_conn", "body", "attempts", "id", "answered", "rank")

    def __init__(self, conn: _Conn, msg_id: bytes, attempts: int, body: bytes) -> None:
        self._conn, self.id, self.attempts, self.body = conn, msg_id, attempts, body
        self.answered = False
        self.rank = conn.rank
        """The position of its topic in the feed's topics: 0 is the most urgent (the highest priority)."""

    def finish(self) -> None:
        self._answer(protocol.finish(self.id))

    def requeue(self, delay_s: float = 0.0) -> None:
        self._answer(protocol.requeue(self.id, int(delay_s * 1000)))

    def _answer(self, command: bytes) -> None:
        with self._conn.lock:
            if not self.answered:
                self.answered = True
                self._conn.expecting = True  # with RDY 1, nsqd may now send this topic's next message
                self._conn.send_locked(command)


def finish_all(deliveries: list[FeedDelivery]) -> None:
    """FIN several messages in one write per connection (what `finish` does for each): the FINs of a
    slot's batch go together as its last task starts, one write for nsqd to read, not one per task."""
    by_conn: dict[_Conn, list[FeedDelivery]] = {}
    for delivery in deliveries:
        by_conn.setdefault(delivery._conn, []).append(delivery)
    for conn, ours in by_conn.items():
        with conn.lock:
            commands = [protocol.finish(d.id) for d in ours if not d.answered]
            for delivery in ours:
                delivery.answered = True
            if commands:
                conn.expecting = True
                conn.send_locked(b"".join(commands))


class _Conn:
    """A subscribed connection to one nsqd. Reads happen in the owner's thread only; sends from any
    thread, under `lock`. A failed send marks it broken: nsqd requeues what it had in flight on it."""

    def __init__(self, address: str, topic: str, channel: str, settings: NsqSettings, name: str, ready: int,
                 rank: int = 0, most: int = 1) -> None:
        host, port = address.rsplit(":", 1)
        self.address, self.topic, self.rank = address, topic, rank
        self.key = (address, topic)
        self.expecting = True
        """RDY was sent or a message answered since the last message came: nsqd may be sending one."""
        self.lock = threading.Lock()
        self.broken = False
        self.last_sent = time.monotonic()
        self._buf = bytearray()
        self.sock = socket.create_connection((host, int(port)), timeout=SOCKET_TIMEOUT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        identify = {"client_id": name, "hostname": socket.gethostname(), "user_agent": "taskherd",
                    "feature_negotiation": False, "heartbeat_interval": HEARTBEAT_MS,
                    "msg_timeout": int(settings.msg_timeout_s * 1000)}
        # At RDY 1 nsqd's output buffer stays on: it flushes as soon as the one message is out, and a
        # whole frame goes in one write (unbuffered, size and body are separate writes). With room for
        # more, nsqd would hold a lone message in its buffer for output_buffer_timeout (250 ms); `most`
        # is the highest RDY this connection will be set to.
        if max(ready, most) > 1:
            identify["output_buffer_size"] = -1
        self.sock.sendall(protocol.MAGIC_V2 + protocol.identify(identify))
        self._expect_ok("IDENTIFY")
        self.sock.sendall(protocol.subscribe(topic, channel))
        self._expect_ok("SUB")
        self.sock.sendall(protocol.ready(ready))

    def _expect_ok(self, what: str) -> None:
        deadline = time.monotonic() + SOCKET_TIMEOUT_S
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            self.fill()
            for kind, data in self.frames():
                if kind == protocol.FRAME_TYPE_RESPONSE and data == b"OK":
                    return
                if kind == protocol.FRAME_TYPE_ERROR:
                    raise ConnectionError(f"nsqd {self.address} refused {what}: {data[:200]!r}")
        raise ConnectionError(f"nsqd {self.address} did not answer {what}")

    def fill(self) -> None:
        """Read what the socket has (blocking up to the socket's timeout for the first bytes)."""
        part = self.sock.recv(65536)
        if not part:
            raise ConnectionError(f"nsqd {self.address} closed the connection")
        self._buf += part

    def frames(self) -> list[tuple[int, bytes]]:
        out = []
        while len(self._buf) >= 4:
            size = struct.unpack_from(">l", self._buf)[0]
            if len(self._buf) < 4 + size:
                break
            out.append(protocol.unpack_response(bytes(self._buf[4:4 + size])))
            del self._buf[:4 + size]
        return out

    def partial(self) -> bool:
        return bool(self._buf)

    def send(self, command: bytes) -> None:
        with self.lock:
            self.send_locked(command)

    def send_locked(self, command: bytes) -> None:
        if self.broken:
            return
        try:
            self.sock.sendall(command)
            self.last_sent = time.monotonic()
        except OSError as exc:
            self.broken = True
            log.warning("nsqd %s: send failed, reconnecting: %s", self.address, exc)

    def close(self) -> None:
        with self.lock:
            self.broken = True
            try:
                self.sock.close()
            except OSError:
                pass


class Feed:
    def __init__(self, settings: NsqSettings, topic: str | Sequence[str], channel: str, name: str,
                 ready: int = 1, most: int = 1) -> None:
        """`topic`: one topic, or several, most urgent first (a slot's tasks topics, one per priority).
        `ready`: RDY on each connection; `most`: the highest the owner may raise it to (`want`)."""
        self.topics = [topic] if isinstance(topic, str) else list(topic)
        self.settings, self.topic, self.channel, self.name, self.ready = settings, self.topics[0], channel, name, ready
        self.most = max(ready, most)
        self._conns: dict[tuple[str, str], _Conn] = {}
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._reading = threading.Lock()
        """Held by whoever reads the sockets: the owner, or the LeaseKeeper shedding while a slot runs."""
        self._ready: deque[FeedDelivery] = deque()
        """Messages read but not yet handed to the owner (a slot: with several nsqds, one from each)."""
        self._paused = False
        self._shed = False
        self._addresses: list[tuple[str, str]] = []
        self._looked_up_at = -1e9
        self._lookups: httpx.Client | None = None
        """nsqlookupd's HTTP client, made at the first lookup (a static nsqd needs none)."""
        self._retry_at = 0.0
        self._failures = 0

    # --- the owner's thread ---------------------------------------------------------------------------
    def next(self, timeout_s: float, wake_fd: int | None = None) -> FeedDelivery | None:
        """The next message, or None after `timeout_s` (so the owner's mailbox is read), or as soon
        as `wake_fd` is readable. With 0, only what nsqd has already sent."""
        deadline = time.monotonic() + timeout_s
        with self._reading:
            if wake_fd is None:
                return self._next(deadline)
            self._selector.register(wake_fd, selectors.EVENT_READ, None)
            try:
                return self._next(deadline)
            finally:
                self._selector.unregister(wake_fd)

    def _next(self, deadline: float) -> FeedDelivery | None:
        if self._shed:  # the LeaseKeeper paused us while we ran a long task: ready again
            self._shed = False
            for conn in list(self._conns.values()):
                conn.expecting = True
                conn.send(protocol.ready(self.ready))
        grace_until: float | None = None
        while True:
            with self._lock:
                best = _best(self._ready)
            if best is not None:
                higher = [c for c in self._conns.values() if c.rank < best.rank and c.expecting and not c.broken]
                now = time.monotonic()
                if higher and grace_until is None:
                    grace_until = now + GRACE_S
                if not higher or (grace_until is not None and now >= grace_until):
                    for conn in higher:
                        conn.expecting = False  # it had nothing to send: no wait for it again until it may
                    with self._lock:
                        self._ready.remove(best)
                    return best
                deadline = max(deadline, grace_until or now)
            if self._paused:
                return None
            self._connect()
            left = deadline - time.monotonic()
            if not self._conns:
                if left <= 0:
                    return None
                time.sleep(min(left, max(0.01, self._retry_at - time.monotonic())))
                continue
            if grace_until is not None:
                left = min(left, max(0.0, grace_until - time.monotonic()))
            events = self._selector.select(max(0.0, left))
            for key, _ in events:
                if key.data is not None:
                    self._read(key.data)
            if any(key.data is None for key, _ in events):  # woken: what arrived meanwhile, or nothing
                with self._lock:
                    best = _best(self._ready)
                    if best is not None:
                        self._ready.remove(best)
                    return best
            if not events and left <= 0 and grace_until is None:
                return None

    def want(self, ready: int) -> None:
        """RDY `ready` (at most `most`) on each connection from now on: a slot leasing short tasks in
        batches has nsqd send a batch's worth while it runs the one before."""
        ready = max(1, min(ready, self.most))
        if ready == self.ready:
            return
        with self._reading:  # not while the LeaseKeeper sheds (RDY 0 until the owner reads again)
            self.ready = ready
            if not self._shed and not self._paused:
                for conn in list(self._conns.values()):
                    conn.send(protocol.ready(ready))

    def more(self, n: int, rank: int) -> list[FeedDelivery]:
        """Up to `n` messages of topic rank `rank` that nsqd has already sent, in its order, now the
        owner's (the rest of a batch the slot leases in one round trip); no waiting."""
        with self._reading:
            self._read_arrived()
            with self._lock:
                out = [d for d in self._ready if d.rank == rank][:n]
                for delivery in out:
                    self._ready.remove(delivery)
                return out

    def unread(self, deliveries: list[FeedDelivery]) -> None:
        """Messages the owner took and does not want yet, back in front of what it holds."""
        with self._lock:
            self._ready.extendleft(reversed(deliveries))

    def better(self, rank: int) -> FeedDelivery | None:
        """A message more urgent than `rank` that nsqd has already sent, if any, now the owner's (the
        slot swaps the task it leased ahead for it)."""
        if rank == 0:
            return None
        with self._reading:
            self._read_arrived()
            with self._lock:
                best = _best(self._ready)
                if best is None or best.rank >= rank:
                    return None
                self._ready.remove(best)
                return best

    def _read_arrived(self) -> None:
        """Read what nsqd has already sent on every connection, without waiting (under `_reading`)."""
        for key, _ in self._selector.select(0):
            if key.data is not None:
                self._read(key.data)

    def pause(self) -> None:
        """RDY 0 everywhere; what was already sent to us goes back to nsqd (drain, shutdown)."""
        self._paused = True
        with self._reading:
            self._give_back_all()

    def close(self) -> None:
        for conn in list(self._conns.values()):
            self._drop(conn)
        self._selector.close()
        if self._lookups is not None:
            self._lookups.close()

    def _give_back_all(self) -> None:
        """RDY 0, read what nsqd already sent, and give every message held here back to nsqd."""
        for conn in list(self._conns.values()):
            conn.send(protocol.ready(0))
            if conn.broken:
                continue
            conn.sock.settimeout(0)  # read what has already arrived...
            try:
                self._read(conn, keep=False)
            finally:
                if not conn.broken:  # _read drops and closes a connection nsqd has closed (nsqd died)
                    conn.sock.settimeout(SOCKET_TIMEOUT_S)  # ...and the rest of a frame that has begun to
            while conn.partial() and not conn.broken:
                self._read(conn, keep=False)
        with self._lock:
            waiting, self._ready = list(self._ready), deque()
        for delivery in waiting:
            delivery.requeue(0)

    def _read(self, conn: _Conn, keep: bool = True) -> None:
        try:
            conn.fill()
            frames = conn.frames()
        except BlockingIOError:
            return
        except (OSError, ConnectionError) as exc:
            log.warning("nsqd %s: %s; reconnecting", conn.address, exc)
            self._drop(conn)
            return
        for kind, data in frames:
            if kind == protocol.FRAME_TYPE_MESSAGE:
                conn.expecting = False
                attempts, msg_id, body = _decode(data)
                delivery = FeedDelivery(conn, msg_id, attempts, body)
                if not keep:
                    delivery.requeue(0)
                else:
                    with self._lock:
                        self._ready.append(delivery)
            elif kind == protocol.FRAME_TYPE_RESPONSE and data == b"_heartbeat_":
                conn.send(protocol.nop())
            elif kind == protocol.FRAME_TYPE_ERROR:
                log.debug("nsqd %s: %r", conn.address, data[:200])  # e.g. E_FIN_FAILED after a requeue won
        if conn.broken:
            self._drop(conn)

    def _connect(self) -> None:
        """Connect to every nsqd that holds the topic and we are not connected to (with backoff)."""
        for conn in [c for c in self._conns.values() if c.broken]:
            self._drop(conn)
        now = time.monotonic()
        if now < self._retry_at:
            return
        for address, topic in self._discover(now):
            if (address, topic) in self._conns:
                continue
            try:
                conn = _Conn(address, topic, self.channel, self.settings, self.name, self.ready,
                             self.topics.index(topic), self.most)
            except (OSError, ConnectionError) as exc:
                SERVICE_ERRORS.labels("nsqd").inc()
                self._failures += 1
                self._retry_at = now + min(5.0, 0.1 * 2 ** self._failures)
                log.warning("nsqd %s: cannot subscribe (%s); retrying", address, exc)
                continue
            self._failures = 0
            conn.sock.settimeout(SOCKET_TIMEOUT_S)
            self._conns[conn.key] = conn
            self._selector.register(conn.sock, selectors.EVENT_READ, conn)

    def _discover(self, now: float) -> list[tuple[str, str]]:
        """(nsqd address, topic) pairs to subscribe to: with a static nsqd, every topic there; else each
        topic on the nsqds nsqlookupd lists it on (a priority's topic exists once something used it)."""
        s = self.settings
        if s.nsqd_tcp_address:
            return [(s.nsqd_tcp_address, topic) for topic in self.topics]
        if now - self._looked_up_at >= s.lookupd_poll_interval_s:
            self._looked_up_at = now
            found: list[tuple[str, str]] = []
            if self._lookups is None:
                self._lookups = plain_http(2.0)
            for lookupd in s.lookupd_http_addresses:
                for topic in self.topics:
                    try:
                        r = self._lookups.get(f"http://{lookupd}/lookup", params={"topic": topic})
                        if r.status_code == 200:
                            found += [(f"{p['broadcast_address']}:{p['tcp_port']}", topic)
                                      for p in r.json().get("producers", [])]
                    except (httpx.HTTPError, ValueError, KeyError) as exc:
                        log.warning("nsqlookupd %s: %s", lookupd, exc)
            if found or not self._addresses:
                self._addresses = sorted(set(found))
        return self._addresses

    def _drop(self, conn: _Conn) -> None:
        if self._conns.get(conn.key) is conn:
            del self._conns[conn.key]
            try:
                self._selector.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        conn.close()

    # --- the LeaseKeeper's thread ----------------------------------------------------------------------
    def shed(self) -> None:
        """The slot runs a long task (and so reads nothing): the message nsqd sent it meanwhile goes
        back for an idle slot, and RDY stays 0 until the slot reads again. Skipped if the slot is
        reading (it has just finished)."""
        if not self._reading.acquire(blocking=False):
            return
        try:
            if self._conns and not self._paused:
                self._shed = True
                self._give_back_all()
        finally:
            self._reading.release()

    def keep_alive(self) -> None:
        """NOP on a connection quiet for a third of nsqd's read deadline (the owner is busy: a slot runs
        a long task, the analyzer a long batch)."""
        for conn in list(self._conns.values()):
            if time.monotonic() - conn.last_sent > HEARTBEAT_MS / 1000 * 2 / 3:
                conn.send(protocol.nop())


def _best(ready: deque[FeedDelivery]) -> FeedDelivery | None:
    """The most urgent message held (the first of its rank: nsqd's order within a topic)."""
    best = None
    for delivery in ready:
        if best is None or delivery.rank < best.rank:
            best = delivery
            if best.rank == 0:
                break
    return best


def _decode(data: bytes) -> tuple[int, bytes, bytes]:
    """nsqd's message frame: 8-byte timestamp, 2-byte attempts, 16-byte id, body."""
    return struct.unpack_from(">H", data, 8)[0], data[10:26], data[26:]

