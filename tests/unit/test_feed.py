"""The parts of a slot's feed called from another thread, on their own: stand-in connections record
what would go to nsqd. The feed against a real nsqd: tests/integration/test_feed.py."""

from __future__ import annotations

import threading
import time

from nsq import protocol

from taskherd.config import from_dict
from taskherd.nsq import feed as feed_module
from taskherd.nsq.feed import Feed, FeedDelivery


class Conn:
    """Stands in for a subscribed connection: records the commands sent."""

    def __init__(self, quiet_s: float = 0.0) -> None:
        self.lock = threading.Lock()
        self.sent: list[bytes] = []
        self.last_sent = time.monotonic() - quiet_s
        self.rank, self.expecting = 0, False

    def send(self, command: bytes) -> None:
        with self.lock:
            self.send_locked(command)

    def send_locked(self, command: bytes) -> None:
        self.sent.append(command)


def test_a_quiet_connection_gets_a_nop_so_nsqd_keeps_it():
    f = Feed(from_dict({}, source="<test>").nsq, "tasks", "workers", "slot")
    quiet, busy = Conn(quiet_s=feed_module.HEARTBEAT_MS / 1000), Conn()
    f._conns = {"a": quiet, "b": busy}
    f.keep_alive()
    assert quiet.sent == [protocol.nop()] and busy.sent == []


def test_only_the_first_answer_to_a_message_reaches_nsqd():
    conn = Conn()
    d = FeedDelivery(conn, b"m" * 16, 1, b"{}")
    d.finish()
    d.requeue(1.0)
    assert conn.sent == [protocol.finish(b"m" * 16)] and d.answered
