"""Running http executors: POST the payload as JSON, a 2xx JSON object is the result.

One `httpx.Client` per runner keeps connections to an executor service open between tasks.
Retryability follows HTTP's own meaning: 5xx, 408, 429, time-outs and connection errors may pass;
any other 4xx says the request itself is wrong and will be wrong again. Redirects are not followed
(a POST that is redirected is a misconfigured URL, better reported than silently re-sent).

The deadline bounds each network wait by the time left, and the body is read in chunks against the
deadline, so a server that drips bytes cannot hold a slot past it. `kill()` cannot interrupt a
socket wait in another thread; it takes effect at the next chunk, or when the request ends (at its
time-out at the latest), and the call then reports status "killed".
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

from taskherd.runners.outcome import (
    Outcome,
    encode_payload,
    failed,
    head,
    killed,
    parse_object,
    since,
    succeeded,
    timed_out,
)
from taskherd.specs import RunnerSpec

RETRYABLE_4XX = frozenset({408, 429})


class _DeadlinePassed(Exception):
    pass


class _Killed(Exception):
    pass


class HttpRunner:
    """Runs URL targets over one pooled client. Not thread-safe, except `kill()`."""

    def __init__(self, client: httpx.Client | None = None) -> None:
        self._client = client or httpx.Client(follow_redirects=False)
        self._owns_client = client is None
        self._in_call = False
        self._kill = threading.Event()

    def run(self, spec: RunnerSpec, payload: dict[str, Any], timeout_s: float) -> Outcome:
        """POST `payload` to `spec.target` and judge the answer; the deadline covers connect to last byte."""
        started = time.monotonic()
        body, problem = encode_payload(payload)
        if problem:
            return failed(problem, since(started), retryable=False)
        if timeout_s <= 0:
            return timed_out(timeout_s, 0.0)
        self._kill.clear()
        self._in_call = True
        try:
            return self._post(spec, body, timeout_s, started)
        finally:
            self._in_call = False

    def kill(self) -> bool:
        """Ask the call in flight to stop (see the module docstring for when); False if none."""
        if not self._in_call:
            return False
        self._kill.set()
        return True

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def _post(self, spec: RunnerSpec, body: bytes, timeout_s: float, started: float) -> Outcome:
        headers = {"content-type": "application/json", "accept": "application/json", **dict(spec.headers)}
        try:
            with self._client.stream("POST", str(spec.target), content=body, headers=headers,
                                     timeout=httpx.Timeout(timeout_s)) as response:
                raw = self._read_body(response, started + timeout_s)
        except (httpx.TimeoutException, _DeadlinePassed):
            return self._unless_killed(timed_out(timeout_s, since(started)), started)
        except _Killed:
            return killed(since(started))
        except httpx.TransportError as exc:
            error = f"POST {spec.target}: {type(exc).__name__}: {exc}"
            return self._unless_killed(failed(error, since(started), retryable=True), started)
        except httpx.HTTPError as exc:
            return failed(f"POST {spec.target}: {type(exc).__name__}: {exc}", since(started), retryable=False)
        return self._unless_killed(_judge(response, raw, since(started)), started)

    def _read_body(self, response: httpx.Response, deadline: float) -> bytes:
        chunks: list[bytes] = []
        for chunk in response.iter_bytes():
            if self._kill.is_set():
                raise _Killed()
            if time.monotonic() > deadline:
                raise _DeadlinePassed()
            chunks.append(chunk)
        return b"".join(chunks)

    def _unless_killed(self, outcome: Outcome, started: float) -> Outcome:
        return killed(since(started)) if self._kill.is_set() else outcome


def _judge(response: httpx.Response, raw: bytes, duration: float) -> Outcome:
    status = response.status_code
    if 200 <= status < 300:
        result, problem = parse_object(raw, "response body")
        if problem or result is None:
            return failed(f"HTTP {status}: {problem}", duration, retryable=False, detail=head(raw))
        return succeeded(result, duration)
    retryable = status >= 500 or status in RETRYABLE_4XX
    error = f"HTTP {status} {response.reason_phrase}".rstrip()
    if 300 <= status < 400:
        error += f" (redirect to {response.headers.get('location', '?')} not followed)"
    return failed(error, duration, retryable=retryable, detail=head(raw))

