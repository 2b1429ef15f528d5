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


def test_a_batch_of_fins_goes_in_one_write_per_connection_and_answers_each_message_once():
    a, b = Conn(), Conn()
    first, second, other, done = (FeedDelivery(conn, bytes([65 + i]) * 16, 1, b"{}")
                                  for i, conn in enumerate((a, a, b, a)))
    done.finish()
    feed_module.finish_all([first, other, second, done])
    assert a.sent == [protocol.finish(done.id), protocol.finish(first.id) + protocol.finish(second.id)]
    assert b.sent == [protocol.finish(other.id)] and a.expecting and b.expecting
    first.requeue(1.0)  # answered: nothing more goes out
    assert len(a.sent) == 2 and all(d.answered for d in (first, second, other, done))
