"""Garbage thrown at a running job: on both NSQ topics (straight to nsqd), and at the HTTP API."""

from __future__ import annotations

import json
import socket
import urllib.error
from collections import Counter

import httpx

from taskherd.config.settings import DEADLETTER_HEADROOM
from tests.faults.harness import FAULTS_TOKEN, nsq_read
from tests.helpers import nsqd_post, topic_depth, wait_until

N = 200
GARBAGE = {
    "binary": b"\xff\xfe\x00\x01 not utf-8",
    "text": b"hello, this is not JSON",
    "object": b'{"x": 1}',
    "array": b"[1, 2, 3]",
    "types": b'{"j": 1, "t": ["a"]}',
    "deep": b"[" * 100_000,
    "large": b"x" * 1_000_000,
    "large-binary": bytes(range(128, 256)) * 1600,
    "over-our-limit": b"x" * 1_048_577,
}
"""Message bodies nsqd accepts and no pod can use: each must be dead-lettered once, raw bytes kept.
`over-our-limit` is one byte over `nsq.max_message_bytes`: nsqd takes it (it allows headroom for
dead-letter envelopes), the pods refuse it."""


def _publish_garbage(settings) -> dict[str, int]:
    """Every GARBAGE body on both topics, then one body over nsqd's own size limit (ours plus the
    dead-letter headroom); returns nsqd's answers."""
    nsq = settings.nsq
    answers = {}
    for topic in (nsq.tasks_topic, nsq.results_topic):
        for name, body in GARBAGE.items():
            answers[f"{topic}/{name}"] = nsqd_post(settings, f"/pub?topic={topic}", body)
        try:
            answers[f"{topic}/oversize"] = nsqd_post(settings, f"/pub?topic={topic}",
                                                     b"x" * (nsq.max_message_bytes + DEADLETTER_HEADROOM + 1))
        except urllib.error.HTTPError as exc:
            answers[f"{topic}/oversize"] = exc.code
        except urllib.error.URLError:  # nsqd may cut the upload short instead of answering
            answers[f"{topic}/oversize"] = 413
    return answers


def _raw_post(api: str, path: str, headers: str, body: bytes) -> int:
    """A request httpx would not send: a Content-Length far beyond the body that follows."""
    host, port = api.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode() + body)
        return int(sock.recv(4096).split(b" ", 2)[1])


def _api_garbage(api: str, job: str, token: str | None = None) -> dict[str, int]:
    """Bad requests of every kind (with `token`, past auth to the validators); returns the status each got."""
    j = {"content-type": "application/json"}
    task = {"type": "work", "job": job, "payload": {}}
    requests = {
        "truncated JSON": ("POST", "/tasks", j, b'{"type": "work", "job": '),
        "not UTF-8": ("POST", "/tasks", j, b"\xff\xfe\x00"),
        "deep JSON": ("POST", "/tasks", j, b"[" * 100_000 + b"]" * 100_000),
        "text/plain": ("POST", "/tasks", {"content-type": "text/plain"}, json.dumps(task).encode()),
        "unknown field": ("POST", "/tasks", j, json.dumps({**task, "colour": "red"}).encode()),
        "bad task in batch": ("POST", "/tasks", j, json.dumps({"tasks": [
            {**task, "id": "api-garbage-0"}, {**task, "id": "api-garbage-1", "max_attempts": "many"}]}).encode()),
        "empty batch": ("POST", "/tasks", j, b'{"tasks": []}'),
        "bad job name": ("POST", "/tasks", j, json.dumps({**task, "job": "no spaces allowed"}).encode()),
        "huge payload": ("POST", "/tasks", j, json.dumps({**task, "payload": {"blob": "x" * 300_000}}).encode()),
        "conflicting id": ("POST", "/tasks", j, json.dumps({**task, "id": "h-0000", "payload": {"other": 1}}).encode()),
        "bad executor": ("PUT", "/executors/bad", j, b'{"kind": "rocket", "target": 7}'),
        "unknown route": ("DELETE", "/tasks", j, b""),
    }
    out = {}
    with httpx.Client(base_url=api, timeout=30, headers={"Authorization": f"Bearer {token}"} if token else {}) as http:
        for name, (method, path, headers, body) in requests.items():
            out[name] = wait_until(lambda: http.request(method, path, headers=headers, content=body).status_code,
                                   timeout=30, ignore=(httpx.TransportError,), message=f"the API answers {name}")
    out["Content-Length 2 GB"] = _raw_post(api, "/tasks", "Content-Type: application/json\r\n"
                                                          "Content-Length: 2000000000\r\n", b'{"type": ')
    return out


def test_11_garbage_on_topics_and_api(make_cluster, case):
    # Given a job of 200 short tasks mid-way
    cluster = make_cluster()
    settings = cluster.settings
    run = case.start(cluster)
    run.submit(run.healthy(N))
    run.wait_archived(0.3)

    # When garbage lands on both NSQ topics and bad requests hit the API
    run.fault()
    answers = _api_garbage(cluster.client.base_url, run.job, FAULTS_TOKEN if cluster.auth else None)
    published = _publish_garbage(settings)
    run.healed()

    # Then nsqd refuses only what is over its size limit, the API answers every bad request with a 4xx,
    expected = 2 * len(GARBAGE)
    case.check(all(v == 200 for k, v in published.items() if not k.endswith("oversize")), f"nsqd took: {published}")
    case.check(all(400 <= v < 500 for k, v in published.items() if k.endswith("oversize")),
               f"nsqd refused the oversize bodies: {published}")
    case.check(all(400 <= code < 500 for code in answers.values()), f"the API answered garbage with 4xx: {answers}")
    case.notes.append("API: " + ", ".join(f"{k} {v}" for k, v in answers.items()))
    # each usable-to-nobody message is dead-lettered once, with its raw bytes,
    topic = settings.nsq.deadletter_topic
    case.expect(lambda: topic_depth(settings, topic) == expected, timeout=30,
                message=f"{expected} messages on {topic}")
    depth = topic_depth(settings, topic)
    case.notes.append(f"dead letters: {depth} of {expected}")
    # the job completes with nothing lost or doubled, and no actor crashed
    history = case.finish()
    case.check(not case.crashes(), f"no actor crashed on garbage: {dict(case.crashes())}")
    case.check(not cluster.unexpected_exits(), "every pod still runs")
    case.check(httpx.get(f"{cluster.client.base_url}/healthz").status_code == 200, "the API still answers")
    case.check(history.status["total"] == N, f"the job still has {N} tasks: {history.status['total']}")
    if depth:
        letters = [b.split(b"\n", 1) for b in nsq_read(settings.nsq.nsqd_tcp_address, topic, "faults", depth)]
        raws = Counter(raw for head, raw in letters if json.loads(head)["size"] == len(raw))
        case.check(set(raws) <= set(GARBAGE.values()), "dead letters hold exactly the raw bytes published")
    else:
        raws = Counter()
    missing = sorted(name for name, body in GARBAGE.items() if raws[body] != 2)
    case.check(not missing, f"garbage not dead-lettered once from each topic: {missing}")
    case.assert_ok()
