"""Running http executors: POST the payload as JSON, a 2xx JSON object is the result.

One `httpx.Client` per runner keeps connections to an executor service open between tasks. It is made
at the runner's first call: its TLS context (the CA bundle, 22-32 ms of CPU) is not paid by every
slot of a pod that never runs an http executor.
Retryability follows HTTP's own meaning: 5xx, 408, 429, time-outs and connection errors may pass;
any other 4xx says the request itself is wrong and will be wrong again. Redirects are not followed
(a POST that is redirected is a misconfigured URL, better reported than silently re-sent).

The deadline bounds each network wait by the time left, and the body is read in chunks against the
deadline, so a server that drips bytes cannot hold a slot past it. `kill()` cannot interrupt a
socket wait in another thread; it takes effect at the next chunk, or when the request ends (at its
time-out at the latest), and the call then reports status "killed".

The body is streamed against a bound too: a 2xx body longer than `max_result_bytes` plus RESULT_SLACK
(by its Content-Length, or once that much has come) fails the call naming both sizes, and the
connection is dropped unread; of another status's body only what the outcome keeps is read.
"""

from __future__ import annotations

import threading
import time

import httpx

from taskherd.config.settings import MAX_RESULT_BYTES
from taskherd.runners.outcome import (
    RESULT_SLACK,
    TAIL_BYTES,
    Outcome,
    Payload,
    bounded,
    encode_payload,
    failed,
    head,
    killed,
    oversize,
    parse_object,
    since,
    timed_out,
)
from taskherd.specs import RunnerSpec

RETRYABLE_4XX = frozenset({408, 429})


class _DeadlinePassed(Exception):
    pass


class _Killed(Exception):
    pass


class _TooLarge(Exception):
    def __init__(self, size: int, more_than: bool) -> None:
        super().__init__(size)
        self.size, self.more_than = size, more_than


class HttpRunner:
    """Runs URL targets over one pooled client. Not thread-safe, except `kill()`."""

    def __init__(self, client: httpx.Client | None = None, max_result_bytes: int = MAX_RESULT_BYTES) -> None:
        self._max_result_bytes = max_result_bytes
        self._client = client
        self._owns_client = client is None
        self._in_call = False
        self._kill = threading.Event()

    def run(self, spec: RunnerSpec, payload: Payload, timeout_s: float) -> Outcome:
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
        if self._owns_client and self._client is not None:
            self._client.close()

    def _post(self, spec: RunnerSpec, body: bytes, timeout_s: float, started: float) -> Outcome:
        headers = {"content-type": "application/json", "accept": "application/json", **dict(spec.headers)}
        if self._client is None:
            self._client = httpx.Client(follow_redirects=False)
        try:
            with self._client.stream("POST", str(spec.target), content=body, headers=headers,
                                     timeout=httpx.Timeout(timeout_s)) as response:
                raw = self._read_body(response, started + timeout_s)
        except (httpx.TimeoutException, _DeadlinePassed):
            return self._unless_killed(timed_out(timeout_s, since(started)), started)
        except _Killed:
            return killed(since(started))
        except _TooLarge as big:
            return oversize(big.size, self._max_result_bytes, since(started), more_than=big.more_than)
        except httpx.TransportError as exc:
            error = f"POST {spec.target}: {type(exc).__name__}: {exc}"
            return self._unless_killed(failed(error, since(started), retryable=True), started)
        except httpx.HTTPError as exc:
            return failed(f"POST {spec.target}: {type(exc).__name__}: {exc}", since(started), retryable=False)
        return self._unless_killed(_judge(response, raw, since(started), self._max_result_bytes), started)

    def _read_body(self, response: httpx.Response, deadline: float) -> bytes:
        """The body, or as much of a non-2xx body as an outcome keeps; _TooLarge past the bound."""
        limit = self._max_result_bytes + RESULT_SLACK if response.is_success else TAIL_BYTES
        declared = "" if "content-encoding" in response.headers else response.headers.get("content-length", "")
        if response.is_success and declared.isdigit() and int(declared) > limit:
            raise _TooLarge(int(declared), more_than=False)
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():  # decoded: a small gzip body may unpack into gigabytes
            if self._kill.is_set():
                raise _Killed()
            if time.monotonic() > deadline:
                raise _DeadlinePassed()
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                if response.is_success:
                    raise _TooLarge(size, more_than=True)
                break
        return b"".join(chunks)

    def _unless_killed(self, outcome: Outcome, started: float) -> Outcome:
        return killed(since(started)) if self._kill.is_set() else outcome


def _judge(response: httpx.Response, raw: bytes, duration: float, max_result_bytes: int) -> Outcome:
    status = response.status_code
    if 200 <= status < 300:
        result, problem = parse_object(raw, "response body")
        if problem or result is None:
            return failed(f"HTTP {status}: {problem}", duration, retryable=False, detail=head(raw))
        return bounded(result, max_result_bytes, duration)
    retryable = status >= 500 or status in RETRYABLE_4XX
    error = f"HTTP {status} {response.reason_phrase}".rstrip()
    if 300 <= status < 400:
        error += f" (redirect to {response.headers.get('location', '?')} not followed)"
    return failed(error, duration, retryable=retryable, detail=head(raw))

