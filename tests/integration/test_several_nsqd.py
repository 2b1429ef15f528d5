"""Several nsqd (NSQ's own topology) against two real nsqd and one nsqlookupd: a publisher publishes
to its own nsqd and falls back to another one nsqlookupd lists when its own fails, and `backlog` counts
a topic's messages on every nsqd, each once, however many names the configuration gives it."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from taskherd.config import Settings
from taskherd.deploy.local.services import ServiceManager
from taskherd.nsq.publisher import Publisher
from tests.helpers import wait_until
from tests.local_up import up_settings


@pytest.fixture(scope="module")
def two(service_binaries: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceManager]:
    """nsqlookupd and two nsqd (`nsqd`, `nsqd-2`) on a free block of ports."""
    manager = ServiceManager(up_settings(), tmp_path_factory.mktemp("nsq2"), nsqd=2)
    try:
        manager._start(["nsqlookupd", "nsqd", "nsqd-2"])
        yield manager
    finally:
        manager.stop()


def nsq_settings(services: ServiceManager, **update: object) -> Settings:
    nsq = services.settings.nsq.model_copy(update=update)
    return services.settings.model_copy(update={"nsq": nsq})


def depth(http: str, topic: str) -> int:
    stats = httpx.get(f"http://{http}/stats", params={"format": "json", "topic": topic}, timeout=5,
                      trust_env=False).json()
    return sum(int(t["depth"]) for t in stats.get("topics") or [] if t["topic_name"] == topic)


def registered(services: ServiceManager) -> int:
    lookupd = services.settings.nsq.lookupd_http_addresses[0]
    return len(httpx.get(f"http://{lookupd}/nodes", timeout=5, trust_env=False).json()["producers"])


def test_each_publisher_publishes_to_its_own_nsqd(two: ServiceManager) -> None:
    # Given two nsqd, and a publisher for each naming it as its own
    (tcp1, http1), (tcp2, http2) = two.nsqd
    topic = f"own-{uuid.uuid4().hex[:8]}"
    first, second = (Publisher(nsq_settings(two, nsqd_tcp_address="").nsq, own=tcp) for tcp in (tcp1, tcp2))
    # When each publishes
    first.publish(topic, [b"a", b"b", b"c"])
    second.publish(topic, [b"d", b"e"])
    # Then each message is on the publisher's own nsqd
    assert (depth(http1, topic), depth(http2, topic)) == (3, 2)


@pytest.mark.parametrize("configured", ["none", "first", "both", "both-twice-by-other-names"])
def test_backlog_counts_every_nsqd_once(two: ServiceManager, configured: str) -> None:
    # Given 3 messages on nsqd 1 and 2 on nsqd 2, of one topic
    (tcp1, http1), (tcp2, http2) = two.nsqd
    topic, other = f"backlog-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"
    Publisher(nsq_settings(two).nsq, own=tcp1).publish(topic, [b"1", b"2", b"3"])
    Publisher(nsq_settings(two).nsq, own=tcp2).publish(topic, [b"4", b"5"])
    Publisher(nsq_settings(two).nsq, own=tcp2).publish(other, [b"6"])
    wait_until(lambda: registered(two) == 2, message="both nsqd registered with nsqlookupd")
    # When a publisher configured with no, one, both nsqd HTTP addresses (or each under two names)
    # counts the topic's backlog (the others it finds through nsqlookupd)
    alias = {http1: http1.replace("127.0.0.1", "localhost"), http2: http2.replace("127.0.0.1", "localhost")}
    addresses = {"none": (), "first": (http1,), "both": (http1, http2),
                 "both-twice-by-other-names": (http1, alias[http1], http2, alias[http2])}[configured]
    publisher = Publisher(nsq_settings(two, nsqd_tcp_address="", nsqd_http_addresses=addresses).nsq)
    # Then each message counts once, by topic when several are asked at once (the watcher's sweep)
    assert publisher.backlog(topic) == 5
    assert publisher.backlogs([topic, other, "never-published"]) == {topic: 5, other: 1, "never-published": 0}
    assert publisher.backlog([topic, other]) == 6


def test_backlog_skips_an_nsqd_that_did_not_answer_for_a_while(two: ServiceManager) -> None:
    # Given 3 messages on nsqd 1, and a configured nsqd address that accepts connections and never
    # answers (a cut-off host's: each ask costs the whole time-out)
    (tcp1, http1), _ = two.nsqd
    topic = f"silent-{uuid.uuid4().hex[:8]}"
    Publisher(nsq_settings(two).nsq, own=tcp1).publish(topic, [b"1", b"2", b"3"])
    silent = socket.create_server(("127.0.0.1", 0))
    asked: list[socket.socket] = []
    threading.Thread(target=lambda: [asked.append(silent.accept()[0]) for _ in range(10)], daemon=True).start()
    addr = f"127.0.0.1:{silent.getsockname()[1]}"
    publisher = Publisher(nsq_settings(two, nsqd_tcp_address="", nsqd_http_addresses=(addr, http1)).nsq)
    try:
        # When the backlog is counted twice in a row (the TimeoutWatcher's sweep and the pod's readiness)
        assert publisher.backlog(topic) == 3
        assert len(asked) == 1
        assert publisher.backlog(topic) == 3
        # Then the silent nsqd was asked once, not again within its back-off
        assert len(asked) == 1
        # And once the back-off is over, it is asked again
        publisher._silent.clear()
        assert publisher.backlog(topic) == 3
        wait_until(lambda: len(asked) == 2, timeout=5, message="the silent nsqd asked again")
    finally:
        silent.close()
        for conn in asked:
            conn.close()


def test_a_publisher_whose_nsqd_is_killed_publishes_to_another_and_back_once_it_returns(two: ServiceManager) -> None:
    # Given a publisher whose own nsqd is nsqd 2, holding a connection to it
    (_, http1), (tcp2, http2) = two.nsqd
    topic = f"fallback-{uuid.uuid4().hex[:8]}"
    publisher = Publisher(nsq_settings(two, nsqd_tcp_address="", nsqd_http_addresses=(http2,)).nsq, own=tcp2)
    publisher.publish(topic, [b"before"])
    assert depth(http2, topic) == 1
    try:
        # When nsqd 2 is SIGKILLed
        two.kill_one("nsqd-2")
        # Then the next publishes go to nsqd 1, which nsqlookupd lists
        publisher.publish(topic, [b"during-1"])
        publisher.publish(topic, [b"during-2", b"during-3"])
        assert depth(http1, topic) == 3
        # And the backlog counts what nsqd 1 holds (nsqd 2 lost its message with its memory)
        assert publisher.backlog(topic) == 3
    finally:
        two.start_one("nsqd-2")
    # And once nsqd 2 is back and its back-off is over, the publisher returns to it
    publisher._failed.clear()
    publisher.publish(topic, [b"after"])
    assert depth(http2, topic) == 1 and depth(http1, topic) == 3


def test_an_empty_address_publishes_to_an_nsqd_on_this_host(two: ServiceManager, tmp_path: Path) -> None:
    # Given a publisher with no nsqd of its own, and both nsqd on this host (loopback)
    topic = f"host-{uuid.uuid4().hex[:8]}"
    publisher = Publisher(nsq_settings(two, nsqd_tcp_address="", nsqd_http_addresses=()).nsq)
    # When it publishes
    publisher.publish(topic, [b"x"] * 4)
    # Then all of it goes to one of them, over TCP (no HTTP address is configured)
    assert sorted(depth(http, topic) for _, http in two.nsqd) == [0, 4]
