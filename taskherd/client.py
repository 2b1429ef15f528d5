"""A small synchronous client for taskherd's HTTP API.

    from taskherd.client import Client

    with Client("http://127.0.0.1:18080") as th:
        th.add_executor("fetch", {"kind": "python", "target": "mypkg.tasks:fetch"})
        th.submit({"type": "fetch", "job": "crawl-1", "payload": {"url": "https://example.org"}})
        th.wait("crawl-1", timeout=600)

Every answer other than success raises `ClientError`, carrying the HTTP status and the server's JSON
body (`{"errors": [{"field", "message", "service"}]}`); a server that cannot be reached raises
`ApiUnreachable`, whose message names the URL. A submit the herd refuses as full (429) is sent again
after the server's Retry-After, with jitter, until `submit_deadline` has passed (`SubmitTimeout`), so
a producer faster than the herd slows down to its pace instead of failing.

It speaks HTTP/1.1 through the standard library's `http.client`, one keep-alive connection per
thread: measured against the API on this project's bench machine, a one-task submit took 0.5-1 ms
less than through httpx, whose request and response models cost more than the round trip itself.
"""

from __future__ import annotations

import http.client
import json as _json
import os
import random
import select
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from taskherd.errors import TaskherdError
from taskherd.states import FINAL_STATES, RESULT_STATES, TaskState


class ClientError(TaskherdError):
    """The API answered with an error; `status` is the HTTP status, `detail` the JSON body."""

    def __init__(self, status: int | None, detail: Any) -> None:
        self.status = status
        self.detail = detail
        errors = detail.get("errors") if isinstance(detail, dict) else None
        self.errors: list[dict[str, Any]] = errors or [{"field": None, "message": str(detail)}]
        super().__init__(self.describe())

    @property
    def field(self) -> str | None:
        return self.errors[0].get("field")

    @property
    def message(self) -> str:
        return str(self.errors[0].get("message", ""))

    def describe(self) -> str:
        """`409 id: task 'a' already exists ...`, one line per error (`503 redis unavailable: ...` when
        no field is to blame)."""
        status = "" if self.status is None else f"{self.status} "
        return "\n".join(f"{status}{e['field'] + ': ' if e.get('field') else ''}{e.get('message', '')}"
                         for e in self.errors)


class ApiUnreachable(ClientError):
    """No HTTP answer at all: nothing listens at the URL, or it did not answer in time."""

    def __init__(self, url: str, why: str) -> None:
        self.url = url
        super().__init__(None, {"errors": [{"field": None, "message": f"cannot reach the taskherd API at {url}: "
                                            f"{why} (is the manager running? see --api)"}]})

    def describe(self) -> str:
        return self.message


class SubmitTimeout(ClientError):
    """The herd stayed full (429) for the whole `submit_deadline`; nothing of the refused request was
    created (requests before it were). `detail` is the last refusal."""

    def __init__(self, detail: Any, deadline: float) -> None:
        self.deadline = deadline
        super().__init__(429, detail)

    def describe(self) -> str:
        return (f"{super().describe()}\ngave up after {self.deadline:g} s of retries "
                f"(Client(submit_deadline=...), taskherd submit --submit-deadline)")


class TaskFailed(TaskherdError):
    """`result()` of a task whose executor failed, or that ended failed or cancelled; `task` is its
    GET /tasks/{id} view."""

    def __init__(self, task: Mapping[str, Any]) -> None:
        self.task = dict(task)
        super().__init__(f"task {task.get('id')!r} {task.get('state')}: {task.get('error') or 'no error recorded'}")


class TaskTimeout(TaskherdError):
    """A wait for one task passed its timeout before the task's result was recorded."""


TASK_WAIT_S = 55.0
"""Longest long-poll of one request on a task: under the client's 60 s socket timeout."""


class WaitTimeout(TaskherdError):
    """`Client.wait` gave up; `status` is the job as last seen."""

    def __init__(self, job: str, timeout: float, status: dict[str, Any]) -> None:
        done, total = progress(status)
        super().__init__(f"job {job!r} not done after {timeout:g} s ({done}/{total} tasks done)")
        self.status = status


def progress(status: Mapping[str, Any]) -> tuple[int, int]:
    """(tasks done, tasks known so far) of a job status: done counts succeeded, failed and cancelled."""
    counts = status.get("counts", {})
    return sum(int(counts.get(s, 0)) for s in FINAL_STATES), int(status.get("total", 0))


Transport = Callable[[str, str, "bytes | None"], "tuple[int, bytes]"]
"""(method, path with query, JSON body or None) -> (HTTP status, body): how a Client reaches the API."""


TOKEN_ENV = "TASKHERD_TOKEN"
"""Where a Client (and the CLI) finds its API token when none is given."""


class Client:
    def __init__(self, base_url: str, timeout: float = 60.0, transport: Transport | None = None,
                 token: str | None = None, submit_deadline: float = 300.0) -> None:
        """`transport` replaces the HTTP connection (a test's stand-in API).
        `token`: the API's bearer token (`[auth]`), else $TASKHERD_TOKEN, else none ("" forces none).
        `submit_deadline`: how long one submit request is sent again while the herd answers that it
        is full (429)."""
        self.submit_deadline = submit_deadline
        self.base_url = base_url.rstrip("/")
        token = os.environ.get(TOKEN_ENV) if token is None else token
        if token and not all("!" <= c <= "~" for c in token):  # never echoed: it is a secret
            raise ValueError("token: holds a space, a control or a non-ASCII character, which a bearer token cannot")
        self._http = _Connections(self.base_url, timeout, token or None)
        self._send: Transport = transport or self._http.request

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- executors and analyzers --------------------------------------------------------------------
    def add_executor(self, task_type: str, spec: Mapping[str, Any], replace: bool = False,
                     check: bool = True) -> dict[str, Any]:
        """Register; returns `{task_type, status, spec}` (status created, unchanged or replaced).
        A different spec already registered raises ClientError 409 unless `replace`; a target that
        cannot run on the manager's host (no such module or program) a 409 unless `check` is False."""
        return self._put_spec("executors", task_type, spec, replace, check)

    def add_analyzer(self, task_type: str, spec: Mapping[str, Any], replace: bool = False,
                     check: bool = True) -> dict[str, Any]:
        return self._put_spec("analyzers", task_type, spec, replace, check)

    def executors(self) -> dict[str, Any]:
        return self._request("GET", "/executors")["executors"]

    def analyzers(self) -> dict[str, Any]:
        return self._request("GET", "/analyzers")["analyzers"]

    def _put_spec(self, kind: str, task_type: str, spec: Mapping[str, Any], replace: bool,
                  check: bool) -> dict[str, Any]:
        return self._request("PUT", f"/{kind}/{_seg(task_type)}", json=dict(spec),
                             params={"replace": "true" if replace else "false", "check": "true" if check else "false"})

    # --- tasks --------------------------------------------------------------------------------------
    def submit(self, tasks: Mapping[str, Any] | Iterable[Mapping[str, Any]],
               chunk: int = 1000) -> dict[str, Any] | list[dict[str, Any]]:
        """One task (a mapping) → `{id, status}`, raising ClientError 409 on a conflict. A task may carry
        `delay_s` or `run_at` (epoch seconds or RFC 3339): it is `scheduled` until then (`task()` shows
        its `run_at_ms`).
        Many tasks → a list of `{id, status}` in order, conflicts included; sent `chunk` at a time,
        each chunk accepted all or nothing. A chunk refused because the herd is full (429) is sent
        again after Retry-After (plus up to half as much again, at random), for at most
        `submit_deadline` seconds per chunk; then SubmitTimeout."""
        if isinstance(tasks, Mapping):
            return self._submit(dict(tasks))
        items, out = [dict(t) for t in tasks], []
        for i in range(0, len(items), chunk):
            out += self._submit({"tasks": items[i:i + chunk]})["tasks"]
        return out

    def run(self, task: Mapping[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Submit one task and wait for its result in the same request (`POST /tasks/run`): the
        executor's result the moment it is recorded; TaskFailed or TaskTimeout as `result` says. One
        request where `submit` + `result` make two; a task already submitted with this id (the same
        payload) is waited for as it is."""
        deadline = None if timeout is None else time.monotonic() + timeout
        step = TASK_WAIT_S if timeout is None else min(TASK_WAIT_S, timeout)
        answer = self._submit(dict(task), "/tasks/run", {"wait_s": f"{step:g}"})
        view = answer["task"]
        if view["state"] not in RESULT_STATES:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            view = self.wait_task(answer["id"], left)
        return _result_of(view)

    def _submit(self, body: dict[str, Any], path: str = "/tasks", params: dict[str, str] | None = None) -> Any:
        deadline = time.monotonic() + self.submit_deadline
        while True:
            try:
                return self._request("POST", path, json=body, params=params)
            except ClientError as exc:
                if exc.status != 429:
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SubmitTimeout(exc.detail, self.submit_deadline) from None
                time.sleep(min(left, _retry_after(exc.detail) * random.uniform(1.0, 1.5)))

    def task(self, task_id: str, wait_s: float = 0.0) -> dict[str, Any]:
        """GET /tasks/{id}; with `wait_s` (at most 60), as soon as its result is recorded or it is final."""
        params = {"wait_s": f"{min(wait_s, 60.0):g}"} if wait_s > 0 else None
        return self._request("GET", f"/tasks/{_seg(task_id)}", params=params)

    def wait_task(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The task's view the moment its result is recorded (state `analyzing`: the executor's outcome
        is in, the analysis follows) or it is final; TaskTimeout past `timeout`. Long-polls, so it
        answers within milliseconds of the result, not after the archive."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = TASK_WAIT_S if deadline is None else min(TASK_WAIT_S, max(0.0, deadline - time.monotonic()))
            task = self.task(task_id, wait_s=step)
            if task["state"] in RESULT_STATES:
                return task
            if deadline is not None and time.monotonic() >= deadline:
                raise TaskTimeout(f"task {task_id!r} still {task['state']} after {timeout:g} s")

    def result(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The executor's result, the moment it is recorded; TaskFailed if the executor failed or the task
        ended failed or cancelled, TaskTimeout past `timeout`. The analysis runs after: a task whose
        analyzer then fails it still gave this result (`wait_task` and the job show the final state)."""
        return _result_of(self.wait_task(task_id, timeout))

    # --- jobs ---------------------------------------------------------------------------------------
    def job(self, job: str, wait_s: float = 0.0) -> dict[str, Any]:
        """The job's status; with `wait_s`, as soon as it is done or after `wait_s` s (at most 60)."""
        params = {"wait_s": f"{min(wait_s, 60.0):g}"} if wait_s > 0 else None
        return self._request("GET", f"/jobs/{_seg(job)}", params=params)

    def jobs(self, state: str = "open", limit: int = 100, cursor: str | None = None
             ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of jobs (`open` or `done`) with their statuses, and the next cursor (None on the last)."""
        page = self._request("GET", "/jobs", params={"state": state, "limit": limit, **({"cursor": cursor} if cursor else {})})
        return page["jobs"], page["next_cursor"]

    def job_tasks(self, job: str, state: str, limit: int = 100,
                  cursor: str | None = None) -> tuple[list[str], str | None]:
        """One page of task ids in `state`, and the cursor of the next page (None on the last)."""
        params = {"state": state, "limit": limit, **({"cursor": cursor} if cursor else {})}
        page = self._request("GET", f"/jobs/{_seg(job)}/tasks", params=params)
        return page["ids"], page["next_cursor"]

    def teardown(self, job: str, cancel: bool = False) -> dict[str, Any]:
        """`{job, leftovers: []}`; leftovers raise ClientError 500 whose detail lists them. A job with
        open tasks is refused (ClientError 409 naming them) unless `cancel`: then the job is cancelled,
        and torn down once its cancelled tasks are killed and archived (409 if that takes over 30 s)."""
        return self._request("POST", f"/jobs/{_seg(job)}/teardown", params={"cancel": "true"} if cancel else None)

    def teardown_all(self, cancel_open: bool = False, stop: bool = False) -> dict[str, Any]:
        """Tear the whole system down (`POST /system/teardown`): every job, taskherd's NSQ topics;
        `{jobs, cancelled, topics_deleted, leftovers: [], stopping, not_stopped}`. Leftovers raise
        ClientError 500 whose detail lists them; an open job is refused (409 naming it) unless
        `cancel_open`; `stop` asks every pod to exit (workers drain first)."""
        params = {k: "true" for k, on in (("cancel_open", cancel_open), ("stop", stop)) if on}
        return self._request("POST", "/system/teardown", params=params or None)

    def wait(self, job: str, timeout: float | None = None,
             on_progress: Callable[[dict[str, Any]], None] | None = None, interval: float = 0.5) -> dict[str, Any]:
        """Wait until the job is done and return its status; raise WaitTimeout past `timeout`. Each
        request is a long-poll that answers the moment the job is done, or after `interval` seconds
        with its progress (for `on_progress`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic()))
            status = self.job(job, wait_s=step)
            if on_progress is not None:
                on_progress(status)
            if status.get("done"):
                return status
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(job, timeout or 0.0, status)

    # --- schedules ----------------------------------------------------------------------------------
    def put_schedule(self, name: str, schedule: Mapping[str, Any]) -> dict[str, Any]:
        """Create or replace a schedule: `{"cron": "30 2 * * *"}` or `{"every_s": N}`, `timezone`
        (IANA, default UTC), `catch_up_s`, `fire_time_key` and `task` (`{type, payload, job?, priority?}`).
        Returns `{name, status, schedule}` (status created, replaced or unchanged). Each tick submits
        one task, id `sched-NAME-20261206T143000Z`, exactly once."""
        return self._request("PUT", f"/schedules/{_seg(name)}", json=dict(schedule))

    def schedules(self) -> list[dict[str, Any]]:
        """Every schedule with `next_fire_at`, `last_fired_at` and `last_task_id`, by name."""
        return self._request("GET", "/schedules")["schedules"]

    def schedule(self, name: str) -> dict[str, Any]:
        return self._request("GET", f"/schedules/{_seg(name)}")

    def delete_schedule(self, name: str) -> dict[str, Any]:
        """It fires no more (a tick being fired at that moment may still go out); 404 if none."""
        return self._request("DELETE", f"/schedules/{_seg(name)}")

    # --- operations ---------------------------------------------------------------------------------
    def nodes(self) -> list[dict[str, Any]]:
        """Live pods: `{id, role, host, pid, slots, version, started}` (pid and slots integers,
        started a Unix time), oldest first."""
        return self._request("GET", "/nodes")

    def ready(self) -> dict[str, Any]:
        return self._request("GET", "/readyz")

    # --- control ------------------------------------------------------------------------------------
    def cancel(self, task_id: str) -> dict[str, Any]:
        """`{id, was, cancelled}`: a running task is killed within one lease renewal."""
        return self._request("POST", f"/tasks/{_seg(task_id)}/cancel")

    def cancel_job(self, job: str) -> dict[str, Any]:
        return self._request("POST", f"/jobs/{_seg(job)}/cancel")

    def retry(self, task_id: str) -> dict[str, Any]:
        """Requeue a failed or cancelled task with fresh attempts."""
        return self._request("POST", f"/tasks/{_seg(task_id)}/retry")

    def retry_job(self, job: str) -> dict[str, Any]:
        return self._request("POST", f"/jobs/{_seg(job)}/retry")

    def tasks(self, state: str, job: str | None = None, limit: int = 100,
              cursor: str | None = None) -> tuple[list[str], str | None]:
        """Archived task ids in a final state (`failed`: the dead letters), and the next cursor."""
        params = {"state": state, "limit": limit, **({"job": job} if job else {}), **({"cursor": cursor} if cursor else {})}
        page = self._request("GET", "/tasks", params=params)
        return page["ids"], page["next_cursor"]

    def _request(self, method: str, path: str, json: Any = None, params: Mapping[str, Any] | None = None) -> Any:
        target = f"{path}?{urlencode(params)}" if params else path
        body = None if json is None else _json.dumps(json, separators=(",", ":")).encode()
        try:
            status, content = self._send(method, target, body)
        except ConnectionRefusedError as exc:
            raise ApiUnreachable(self.base_url, f"connection refused ({exc})") from None
        except TimeoutError:
            raise ApiUnreachable(self.base_url, "no answer in time") from None
        except http.client.RemoteDisconnected:
            raise ApiUnreachable(self.base_url, "the connection was closed without an HTTP answer") from None
        except http.client.HTTPException as exc:  # raw bytes of another protocol: shown escaped, on one line
            raise ApiUnreachable(self.base_url, f"the server there does not speak HTTP ({type(exc).__name__}: "
                                                f"{_excerpt(str(exc))})") from None
        except OSError as exc:
            raise ApiUnreachable(self.base_url, f"{type(exc).__name__}: {exc}") from None
        if status >= 400:
            raise ClientError(status, _detail(status, content))
        return _json.loads(content) if content else None


class _Connections:
    """One keep-alive connection per thread to the API (http.client connections are not thread-safe).

    A request is never sent twice: a connection the server has closed while idle (uvicorn closes
    them after 5 s) is seen before it is used, and a new one is made instead."""

    def __init__(self, base_url: str, timeout: float, token: str | None = None) -> None:
        self._headers = {"Accept": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"API URL: expected http://host:port or https://host:port, got {base_url!r}")
        self._kind = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        self._host, self._port, self._prefix = url.hostname, url.port, url.path.rstrip("/")
        self._timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[http.client.HTTPConnection] = []

    def request(self, method: str, target: str, body: bytes | None) -> tuple[int, bytes]:
        conn = self._conn()
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, self._prefix + target, body=body, headers=headers)
            response = conn.getresponse()
            content = response.read()
        except BaseException:
            self._drop(conn)
            raise
        if response.will_close:
            self._drop(conn)
        return response.status, content

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and conn.sock is not None and select.select([conn.sock], [], [], 0)[0]:
            self._drop(conn)  # readable while idle: the server closed it (or sent what we never asked)
            conn = None
        if conn is None:
            conn = self._local.conn = self._kind(self._host, self._port, timeout=self._timeout)
            with self._lock:
                self._all.append(conn)
        return conn

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        with self._lock:
            if conn in self._all:
                self._all.remove(conn)

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()


def _result_of(task: Mapping[str, Any]) -> dict[str, Any]:
    """A task view with a result (`wait_task`'s answer): the executor's result, or TaskFailed."""
    if task["state"] == TaskState.SUCCEEDED or (task["state"] == TaskState.ANALYZING and task.get("outcome") == "ok"):
        return dict(task.get("result") or {})
    raise TaskFailed(dict(task))


def _retry_after(detail: Any) -> float:
    """The seconds a 429 asks to wait (its body's `retry_after_s`, as its Retry-After header), 1 if unsaid."""
    given = detail.get("retry_after_s") if isinstance(detail, dict) else None
    return float(given) if isinstance(given, (int, float)) and given > 0 else 1.0


def _seg(value: str) -> str:
    """One path segment, every reserved character escaped (task ids may be URLs)."""
    return quote(value, safe="")


def _excerpt(text: str, limit: int = 40) -> str:
    """The start of what a server sent, escaped so that it prints as one line."""
    shown = repr(text[:limit])
    return shown + ("..." if len(text) > limit else "")


def _detail(status: int, content: bytes) -> Any:
    try:
        return _json.loads(content)
    except ValueError:
        text = content.decode("utf-8", "replace").strip()[:200] or http.client.responses.get(status, "")
        return {"errors": [{"field": None, "message": text}]}
