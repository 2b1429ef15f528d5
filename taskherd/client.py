"""A small synchronous client for taskherd's HTTP API.

    from taskherd.client import Client

    with Client("http://127.0.0.1:18080") as th:
        th.add_executor("fetch", {"kind": "python", "target": "mypkg.tasks:fetch"})
        th.submit({"type": "fetch", "job": "crawl-1", "payload": {"url": "https://example.org"}})
        th.wait("crawl-1", timeout=600)

Every answer other than success raises `ClientError`, carrying the HTTP status and the server's JSON
body (`{"errors": [{"field", "message", "service"}]}`); a server that cannot be reached raises
`ApiUnreachable`, whose message names the URL.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from taskherd.errors import TaskherdError

FINAL_STATES = ("succeeded", "failed", "cancelled")


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
        """`409 id: task 'a' already exists ...`, one line per error."""
        status = "" if self.status is None else f"{self.status} "
        return "\n".join(f"{status}{e.get('field') or '-'}: {e.get('message', '')}" for e in self.errors)


class ApiUnreachable(ClientError):
    """No HTTP answer at all: nothing listens at the URL, or it did not answer in time."""

    def __init__(self, url: str, why: str) -> None:
        self.url = url
        super().__init__(None, {"errors": [{"field": None, "message": f"cannot reach the taskherd API at {url}: "
                                            f"{why} (is the manager running? see --api)"}]})

    def describe(self) -> str:
        return self.message


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


class Client:
    def __init__(self, base_url: str, timeout: float = 60.0, http: httpx.Client | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = http or httpx.Client(base_url=self.base_url, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- executors and analyzers --------------------------------------------------------------------
    def add_executor(self, task_type: str, spec: Mapping[str, Any], replace: bool = False) -> dict[str, Any]:
        """Register; returns `{task_type, status, spec}` (status created, unchanged or replaced).
        A different spec already registered raises ClientError 409 unless `replace`."""
        return self._put_spec("executors", task_type, spec, replace)

    def add_analyzer(self, task_type: str, spec: Mapping[str, Any], replace: bool = False) -> dict[str, Any]:
        return self._put_spec("analyzers", task_type, spec, replace)

    def executors(self) -> dict[str, Any]:
        return self._request("GET", "/executors")["executors"]

    def analyzers(self) -> dict[str, Any]:
        return self._request("GET", "/analyzers")["analyzers"]

    def _put_spec(self, kind: str, task_type: str, spec: Mapping[str, Any], replace: bool) -> dict[str, Any]:
        return self._request("PUT", f"/{kind}/{_seg(task_type)}", json=dict(spec),
                             params={"replace": "true" if replace else "false"})

    # --- tasks --------------------------------------------------------------------------------------
    def submit(self, tasks: Mapping[str, Any] | Iterable[Mapping[str, Any]],
               chunk: int = 1000) -> dict[str, Any] | list[dict[str, Any]]:
        """One task (a mapping) → `{id, status}`, raising ClientError 409 on a conflict.
        Many tasks → a list of `{id, status}` in order, conflicts included; sent `chunk` at a time,
        each chunk accepted all or nothing."""
        if isinstance(tasks, Mapping):
            return self._request("POST", "/tasks", json=dict(tasks))
        items, out = [dict(t) for t in tasks], []
        for i in range(0, len(items), chunk):
            out += self._request("POST", "/tasks", json={"tasks": items[i:i + chunk]})["tasks"]
        return out

    def task(self, task_id: str) -> dict[str, Any]:
        return self._request("GET", f"/tasks/{_seg(task_id)}")

    # --- jobs ---------------------------------------------------------------------------------------
    def job(self, job: str, wait_s: float = 0.0) -> dict[str, Any]:
        """The job's status; with `wait_s`, as soon as it is done or after `wait_s` s (at most 60)."""
        params = {"wait_s": f"{min(wait_s, 60.0):g}"} if wait_s > 0 else None
        return self._request("GET", f"/jobs/{_seg(job)}", params=params)

    def job_tasks(self, job: str, state: str, limit: int = 100,
                  cursor: str | None = None) -> tuple[list[str], str | None]:
        """One page of task ids in `state`, and the cursor of the next page (None on the last)."""
        params = {"state": state, "limit": limit, **({"cursor": cursor} if cursor else {})}
        page = self._request("GET", f"/jobs/{_seg(job)}/tasks", params=params)
        return page["ids"], page["next_cursor"]

    def teardown(self, job: str) -> dict[str, Any]:
        """`{job, leftovers: []}`; leftovers raise ClientError 500 whose detail lists them."""
        return self._request("POST", f"/jobs/{_seg(job)}/teardown")

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

    # --- operations ---------------------------------------------------------------------------------
    def nodes(self) -> list[dict[str, Any]]:
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

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise ApiUnreachable(self.base_url, f"connection refused ({exc})") from None
        except httpx.TimeoutException:
            raise ApiUnreachable(self.base_url, "no answer in time") from None
        except httpx.TransportError as exc:
            raise ApiUnreachable(self.base_url, f"{type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            raise ClientError(response.status_code, _detail(response))
        return response.json() if response.content else None


def _seg(value: str) -> str:
    """One path segment, every reserved character escaped (task ids may be URLs)."""
    return quote(value, safe="")


def _detail(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        text = response.text.strip()[:200] or response.reason_phrase
        return {"errors": [{"field": None, "message": text}]}
