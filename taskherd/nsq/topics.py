"""Topics: taskherd's topics on every nsqd, for a system teardown: find each nsqd (the configured
HTTP addresses and every nsqd registered with nsqlookupd, from its `/nodes`), delete the topics there
(nsqd's `POST /topic/delete` deletes a topic with its channels and messages), then delete their
registrations on each nsqlookupd, which would otherwise hand the topic's old channels back to an nsqd
that creates the topic again. `left` reads nsqd's `/stats` to prove none is there.

A topic with a consumer still connected is emptied, not deleted (`keep_subscribed`, a teardown
that leaves the pods running): deleting it would close the consumer's connection, and a consumer
subscribing again while nsqd still deletes the topic is left on a channel of the deleted topic,
receiving nothing for ever (seen: the analyzer of a running manager never heard a doorbell again).
Only a teardown that stops the pods (`--stop`) leaves nsqd with no taskherd topic at all.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from taskherd.config.settings import NsqSettings
from taskherd.specs import DEFAULT_PRIORITY, PRIORITIES

log = logging.getLogger("taskherd.nsq")

TIMEOUT_S = 5.0


def plain_http(timeout: float, **options: Any) -> httpx.Client:
    """An httpx client for nsqd's and nsqlookupd's HTTP APIs, which taskherd reaches over plain HTTP
    only (its addresses are host:port, its URLs http://). `verify=False` spares building a TLS
    context no request uses: loading the CA bundle took 22-32 ms of CPU per client, 100-190 ms of a
    worker pod's start on two busy cores, and a Feed made one per nsqlookupd request."""
    return httpx.Client(timeout=timeout, verify=False, **options)


@dataclass(slots=True)
class Deleted:
    """What a deletion did: `deleted` lists `ADDRESS/TOPIC` where a topic was; `errors` what failed."""

    deleted: list[str] = field(default_factory=list)
    emptied: list[str] = field(default_factory=list)
    """`ADDRESS/TOPIC` kept, with its messages dropped, because a consumer is subscribed to it."""
    errors: list[str] = field(default_factory=list)


def names(settings: NsqSettings) -> tuple[str, ...]:
    """taskherd's topics: tasks (one per priority), results, dead letters."""
    return *task_topics(settings), settings.results_topic, settings.deadletter_topic


def task_topic(settings: NsqSettings, priority: int) -> str:
    """The tasks topic of one priority. NSQ has no priorities, so each has its own topic, which every
    slot reads highest first (`taskherd.nsq.feed`). The default priority keeps the plain tasks topic, so
    a herd that never sets one uses one topic, as before, and KEDA's scaler watches the topic it knew.

    Why topics rather than an order kept in Redis: a herd-wide order would be one key every lease
    touches (one Redis Cluster slot for all jobs, and a round trip to pick the next task), while a
    topic per priority leaves the lease path as it was. The order is strict: a lower priority waits
    while a higher one is ready, with no ageing (as RabbitMQ's and asynq's strict priorities); a class
    of work that must not wait behind another gets a priority of its own, or a rate limit on the other."""
    return settings.tasks_topic if priority == DEFAULT_PRIORITY else f"{settings.tasks_topic}.p{priority}"


def task_topics(settings: NsqSettings) -> list[str]:
    """Every priority's tasks topic, the most urgent (9) first."""
    return [task_topic(settings, p) for p in reversed(PRIORITIES)]


def nsqd_addresses(settings: NsqSettings, errors: list[str] | None = None) -> list[str]:
    """Every nsqd's HTTP address: the configured ones, then those registered with nsqlookupd."""
    found = dict.fromkeys(settings.nsqd_http_addresses)
    with plain_http(TIMEOUT_S) as http:
        for lookupd in settings.lookupd_http_addresses:
            try:
                nodes = http.get(f"http://{lookupd}/nodes").json().get("producers") or []
                found.update(dict.fromkeys(f"{n['broadcast_address']}:{n['http_port']}" for n in nodes))
            except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
                _note(errors, f"nsqlookupd {lookupd}: cannot list nsqd: {exc}")
    return list(found)


def delete(settings: NsqSettings, topics: Iterable[str] | None = None, keep_subscribed: bool = False) -> Deleted:
    """Delete `topics` (taskherd's, by default) on every nsqd, then on every nsqlookupd; with
    `keep_subscribed`, a topic a consumer is connected to is emptied instead (and stays registered)."""
    topics = list(topics or names(settings))
    done = Deleted()
    kept: set[str] = set()
    with plain_http(TIMEOUT_S) as http:
        for addr in nsqd_addresses(settings, done.errors):
            for topic in topics:
                channels = _subscribed(http, addr, topic) if keep_subscribed else []
                if channels:
                    _empty(http, addr, topic, channels, done)
                    kept.add(topic)
                else:
                    _delete(http, addr, topic, done, "nsqd")
        for lookupd in settings.lookupd_http_addresses:
            for topic in topics:
                if topic not in kept:
                    _delete(http, lookupd, topic, done, "nsqlookupd")
    return done


def _subscribed(http: httpx.Client, addr: str, topic: str) -> list[str]:
    """The topic's channels on nsqd `addr` that have a consumer connected."""
    try:
        stats: dict[str, Any] = http.get(f"http://{addr}/stats", params={"format": "json", "topic": topic}).json()
    except (httpx.HTTPError, ValueError):
        return []
    return [ch["channel_name"] for t in stats.get("topics") or [] if t.get("topic_name") == topic
            for ch in t.get("channels") or [] if ch.get("client_count", len(ch.get("clients") or []))]


def _empty(http: httpx.Client, addr: str, topic: str, channels: list[str], done: Deleted) -> None:
    try:
        http.post(f"http://{addr}/topic/empty", params={"topic": topic})
        for channel in channels:
            http.post(f"http://{addr}/channel/empty", params={"topic": topic, "channel": channel})
    except httpx.HTTPError as exc:
        _note(done.errors, f"nsqd {addr}: cannot empty topic {topic}: {exc}")
        return
    done.emptied.append(f"{addr}/{topic}")


def _delete(http: httpx.Client, addr: str, topic: str, done: Deleted, what: str) -> None:
    """POST /topic/delete; a 404 means there was no such topic."""
    try:
        r = http.post(f"http://{addr}/topic/delete", params={"topic": topic})
    except httpx.HTTPError as exc:
        _note(done.errors, f"{what} {addr}: cannot delete topic {topic}: {exc}")
        return
    if r.status_code == 200 and what == "nsqd":
        done.deleted.append(f"{addr}/{topic}")
    elif r.status_code not in (200, 404):
        _note(done.errors, f"{what} {addr}: deleting topic {topic}: HTTP {r.status_code} {r.text.strip()}")


def left(settings: NsqSettings, topics: Iterable[str] | None = None) -> list[str]:
    """`ADDRESS/TOPIC` for each of `topics` (taskherd's, by default) that an nsqd still has, by its /stats;
    an nsqd that does not answer is listed as `ADDRESS: error`."""
    wanted = set(topics or names(settings))
    found: list[str] = []
    with plain_http(TIMEOUT_S) as http:
        for addr in nsqd_addresses(settings, found):
            try:
                stats: dict[str, Any] = http.get(f"http://{addr}/stats", params={"format": "json"}).json()
            except (httpx.HTTPError, ValueError) as exc:
                found.append(f"{addr}: cannot read /stats: {exc}")
                continue
            found += [f"{addr}/{t['topic_name']}" for t in stats.get("topics") or [] if t.get("topic_name") in wanted]
    return found


def _note(errors: list[str] | None, line: str) -> None:
    log.warning("%s", line)
    if errors is not None:
        errors.append(line)
