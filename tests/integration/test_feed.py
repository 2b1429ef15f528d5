"""A consumer's own subscription (taskherd/nsq/feed.py) against a real nsqd and nsqlookupd: one message
in flight per slot, a batch in flight for the analyzer, requeues come back, a pause or a shed hands
back what nsqd already sent, discovery through nsqlookupd, and a reconnect after nsqd restarts."""

from __future__ import annotations

import os
import select
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field

import pytest

from taskherd.nsq.feed import Feed
from tests.helpers import Services, channel_stats, nsqd_post, wait_until

CHANNEL = "workers"


@dataclass
class Feeds:
    """Feeds of one test's own topic (nsqd keeps a topic's messages from one test to the next)."""

    services: Services
    topic: str = field(default_factory=lambda: f"feedtest-{uuid.uuid4().hex[:12]}")
    made: list[Feed] = field(default_factory=list)

    def __call__(self, name: str = "slot", ready: int = 1, **nsq: object) -> Feed:
        feed = Feed(self.services.settings.nsq.model_copy(update=nsq), self.topic, CHANNEL, name, ready)
        self.made.append(feed)
        return feed

    def publish(self, *bodies: bytes) -> None:
        for body in bodies:
            assert nsqd_post(self.services.settings, f"/pub?topic={self.topic}", body) == 200

    def in_flight(self) -> int:
        stats = channel_stats(self.services.settings, self.topic, CHANNEL)
        return int(stats["in_flight_count"]) if stats else -1


@pytest.fixture
def feeds(clean: Services):
    made = Feeds(clean)
    yield made
    for feed in made.made:
        feed.close()


def next_message(feed: Feed, timeout_s: float = 10.0):
    return wait_until(lambda: feed.next(0.2), timeout=timeout_s, message="a message from the feed")


def test_a_slot_holds_one_message_at_a_time_and_finishing_brings_the_next(clean, feeds):
    feed = feeds()
    feeds.publish(b"one", b"two", b"three")
    first = next_message(feed)
    assert first.body == b"one" and first.attempts == 1
    assert feed.next(0.3) is None  # RDY 1: nsqd sends nothing more while the first is unanswered
    assert feeds.in_flight() == 1
    first.finish()
    second = next_message(feed)
    assert second.body == b"two" and second.id != first.id


def test_a_requeued_message_comes_back_with_its_attempt_counted(clean, feeds):
    feed = feeds()
    feeds.publish(b"again")
    first = next_message(feed)
    first.requeue(0)
    first.finish()  # a second answer to one message is dropped, never sent
    again = next_message(feed)
    assert (again.id, again.body, again.attempts) == (first.id, b"again", 2)


def test_a_paused_feed_gives_back_what_nsqd_already_sent_it(clean, feeds):
    paused, other = feeds("paused"), feeds("other")
    feeds.publish(b"first")
    first = next_message(paused)
    feeds.publish(b"second")
    first.finish()  # nsqd now sends "second" to the same slot (RDY 1, nothing in flight)
    conn = next(iter(paused._conns.values()))
    assert select.select([conn.sock], [], [], 5)[0], "nsqd sent the next message"
    paused.pause()
    assert paused.next(0.2) is None
    second = next_message(other)
    assert second.body == b"second" and second.attempts == 2


def test_a_busy_slot_sheds_the_message_sent_behind_its_task_until_it_reads_again(clean, feeds):
    busy, idle = feeds("busy"), feeds("idle")
    feeds.publish(b"long")
    next_message(busy).finish()  # leased: the slot runs it, and nsqd may send the next one
    feeds.publish(b"behind", b"later")
    conn = next(iter(busy._conns.values()))
    assert select.select([conn.sock], [], [], 5)[0], "nsqd sent the busy slot the next message"
    busy.shed()  # the LeaseKeeper, a renewal tick into the long task
    first = next_message(idle)
    assert feeds.in_flight() == 1  # the busy slot was sent nothing more (RDY 0)
    first.finish()
    second = next_message(idle)
    second.finish()
    assert {(m.body, m.attempts) for m in (first, second)} == {(b"behind", 2), (b"later", 1)}
    idle.close()
    feeds.publish(b"when free")
    assert next_message(busy).body == b"when free"  # reading again: RDY 1 again


def test_a_feed_finds_nsqd_through_nsqlookupd(clean, feeds):
    feeds.publish(b"found")  # creates the topic, which nsqd registers with nsqlookupd
    feed = feeds(nsqd_tcp_address="", lookupd_poll_interval_s=0.2)
    assert next_message(feed).body == b"found"


def test_a_feed_reconnects_after_nsqd_restarts(clean, feeds):
    feed = feeds()
    feeds.publish(b"before")
    next_message(feed).finish()
    wait_until(lambda: feeds.in_flight() == 0, message="nsqd saw the FIN")  # or it keeps the message
    clean.manager.stop_one("nsqd")
    clean.manager.start_one("nsqd")
    feeds.publish(b"after")
    assert next_message(feed, timeout_s=15).body == b"after"


def test_a_busy_slot_sheds_without_failing_when_its_nsqd_has_died(clean, feeds):
    """The lease keeper sheds a busy slot's feed every tick; when the nsqd it reads had just died, the
    shed found the connection closed under it and raised (EBADF), which killed the lease keeper, so
    no lease was renewed and no executor killed itself while it restarted: two executions at once
    (found by the nemesis soak). Now the dead connection is dropped, and the feed reconnects."""
    feed = feeds()
    feeds.publish(b"running", b"waiting")
    next_message(feed).finish()  # the slot's task runs; nsqd sends the next message behind it
    wait_until(lambda: feeds.in_flight() == 1, message="the next message in flight to the busy slot")
    clean.manager.stop_one("nsqd", signal.SIGKILL)
    try:
        feed.shed()  # must not raise
    finally:
        clean.manager.start_one("nsqd")
    feeds.publish(b"after")
    bodies = {next_message(feed, timeout_s=30).body for _ in range(2)}  # a reconnect after backoff, on a loaded machine
    assert b"after" in bodies


def test_a_feed_with_room_for_a_batch_gets_every_message_at_once_and_requeues_come_back(clean, feeds):
    """The analyzer's feed: RDY = a batch, so doorbells gather while it works on the last batch."""
    feed = feeds("analyzer", ready=10)
    feeds.publish(b"one", b"two", b"three")
    got = [next_message(feed)]
    got += [wait_until(lambda: feed.next(0.2), timeout=10, message="the rest, unanswered") for _ in range(2)]
    assert sorted(d.body for d in got) == [b"one", b"three", b"two"] and {d.attempts for d in got} == {1}
    assert feeds.in_flight() == 3
    again = next(d for d in got if d.body == b"two")
    again.requeue()
    for d in got:
        if d is not again:
            d.finish()
    back = next_message(feed)
    assert (back.body, back.attempts) == (b"two", 2)
    back.finish()
    wait_until(lambda: feeds.in_flight() == 0, timeout=10, message="every message finished on nsqd")


def test_a_wait_for_the_next_message_ends_when_the_wake_fd_turns_readable(clean, feeds):
    """A slot waits for nsqd's next message while its executor runs, and not past the executor's end."""
    feed = feeds()
    feeds.publish(b"first")
    next_message(feed).finish()
    r, w = os.pipe()
    try:
        threading.Timer(0.2, os.write, (w, b"x")).start()  # the executor's reply arrives
        started = time.monotonic()
        assert feed.next(60.0, wake_fd=r) is None
        assert time.monotonic() - started < 30  # woken, not timed out
        os.read(r, 1)
        feeds.publish(b"second")  # a message that comes while the executor still runs is taken
        got = feed.next(60.0, wake_fd=r)
        assert got is not None and got.body == b"second"
        got.finish()
    finally:
        os.close(r)
        os.close(w)
