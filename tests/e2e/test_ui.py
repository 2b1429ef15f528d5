"""The dashboard (`/ui`) in a real browser: headless Chromium driven by Selenium against a manager and
a worker pod with auth on. Without chromium and chromedriver these skip locally and fail under CI
(`make setup` installs them as root)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskherd.client import Client
from taskherd.config import from_dict
from taskherd.config.toml_out import dumps
from taskherd.deploy.local.cluster import Pod
from tests.e2e.conftest import _Tee, fast
from tests.helpers import Services, wait_until

ADMIN, READER = "ui-admin-5c01d2e9", "ui-reader-77aa3b10"
ARTIFACTS = Path(__file__).parent / "artifacts"
BIG = 100_000
RENDER_BOUND_S = 3.0
"""Generous bound on the 100,000-task job page's render (the issue's aim is one second)."""
FIRST_LOAD_BYTES = 300_000


def _browser_or_skip() -> tuple[str, str]:
    found = shutil.which("chromium"), shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        found = (None, None)
    if None in found:
        why = "chromium, chromedriver and selenium are needed (make setup installs them as root)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so the dashboard's browser tests cannot skip: {why}", pytrace=False)
        pytest.skip(why)
    return found  # type: ignore[return-value]


@pytest.fixture
def browser() -> Iterator[Any]:
    chromium, driver = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                "--disable-gpu"):
        options.add_argument(arg)
    b = webdriver.Chrome(service=Service(driver), options=options)
    b.set_script_timeout(30)
    try:
        yield b
    finally:
        b.quit()


class Ui:
    """A cluster with auth on (tokens admin and reader) and a browser on its dashboard."""

    def __init__(self, browser: Any, base: str, log: Any) -> None:
        self.b, self.base, self.log = browser, base, log
        self.admin = Client(base, token=ADMIN)

    def sign_in(self, token: str, where: str = "") -> None:
        from selenium.webdriver.common.by import By

        self.b.get(f"{self.base}/ui{where}")
        box = self.b.find_element(By.ID, "token")
        self.wait(box.is_displayed, "the sign-in form")
        box.send_keys(token)
        self.b.find_element(By.CSS_SELECTOR, "#login button").click()
        self.wait(lambda: self.b.find_element(By.ID, "view").get_attribute("data-ready"), "the first view drawn")

    def go(self, where: str) -> None:
        self.b.execute_script("document.getElementById('view').dataset.ready = ''; location.hash = arguments[0]", where)
        self.wait(lambda: self.b.find_element("id", "view").get_attribute("data-ready"), f"{where} drawn")

    def text(self, css: str) -> str:
        from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
        try:
            return str(self.b.find_element("css selector", css).text)
        except (NoSuchElementException, StaleElementReferenceException):
            return ""

    def wait(self, check: Callable[[], Any], message: str, timeout: float = 60) -> Any:
        return wait_until(check, timeout=timeout, interval=0.1, message=message, ignore=(Exception,))

    def shot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.b.save_screenshot(str(path))
        return path

    def fetch(self, method: str, path: str, token: str) -> int:
        """The status the page's own fetch gets for a request with this token (as its buttons send it)."""
        return int(self.b.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0], {method: arguments[1], headers: {Authorization: 'Bearer ' + arguments[2]}})"
            ".then(r => done(r.status), e => done(0));", self.base + path, method, token))


@pytest.fixture
def ui(browser: Any, clean: Services, tmp_path: Path) -> Iterator[Ui]:  # the browser first: no services started to skip
    data = fast(clean.settings).model_dump()
    data["auth"] = {"tokens": [
        {"name": "ops", "sha256": hashlib.sha256(ADMIN.encode()).hexdigest(), "scopes": ["read", "submit", "admin"]},
        {"name": "viewer", "sha256": hashlib.sha256(READER.encode()).hexdigest(), "scopes": ["read"]}]}
    data["security"] = {"python_allow": ["tests.e2e.ui_funcs"]}
    settings = from_dict(data)
    config = tmp_path / "pods.toml"
    config.write_text(dumps(settings))
    log = _Tee()
    pods = [Pod("manager", "manager", config, log), Pod("worker-1", "worker", config, log)]
    for pod in pods:
        pod.start()
    base = f"http://{settings.api.host}:{settings.api.port}"
    try:
        u = Ui(browser, base, log)
        wait_until(lambda: len(u.admin.nodes()) == 2, timeout=60, ignore=(Exception,), message="pods registered")
        yield u
        assert ADMIN not in log.getvalue() and READER not in log.getvalue(), "a token reached the pods' logs"
    finally:
        for pod in pods:
            pod.stop(15)


def _finished(text: str) -> int | None:
    """'12 / 40' of a job row's progress cell: the tasks finished so far."""
    head = text.split(" / ")[0].split()[-1:] if " / " in text else []
    return int(head[0].replace(",", "")) if head else None


def test_a_running_job_advances_to_done_on_the_jobs_page(ui: Ui) -> None:
    # Given a job of 40 tasks of 0.2 s on two slots (about 4 s of work)
    ui.admin.add_executor("steady", {"kind": "python", "target": "tests.e2e.ui_funcs:steady"})
    ui.sign_in(ADMIN)
    ui.admin.submit({"tasks": [{"id": f"s-{i}", "type": "steady", "job": "watched", "payload": {"n": i}}
                               for i in range(40)]})
    # When the jobs page is open, then its progress is seen part-way, then done, without a reload
    seen: set[int] = set()
    shot: list[Path] = []

    def progress() -> bool:
        row = ui.text('#open-jobs tr[data-job="watched"]') or ui.text('#done-jobs tr[data-job="watched"]')
        n = _finished(row)
        if n is not None:
            seen.add(n)
        if n is not None and 0 < n < 40 and not shot:
            shot.append(ui.shot("ui-jobs-running"))
        return "40 / 40 done" in ui.text('#done-jobs tr[data-job="watched"]')

    ui.wait(progress, "the job shown done on the jobs page", timeout=120)
    assert any(0 < n < 40 for n in seen), f"no progress seen part-way: {sorted(seen)}"
    assert ADMIN not in ui.b.current_url
    # live, yet light: the page's own requests since it loaded stay at a few per second
    calls, seconds = ui.b.execute_script(
        "return [performance.getEntriesByType('resource').filter(e => e.initiatorType === 'fetch').length,"
        " performance.now() / 1000]")
    print(f"\njobs page: {calls} requests in {seconds:.1f} s")
    assert calls / seconds <= 3, (calls, seconds)
    ui.shot("ui-jobs-done")
    # and every done job, by name, from MySQL
    ui.go("#/done")
    ui.wait(lambda: "watched" in ui.text("#archived-jobs") and "40" in ui.text("#archived-jobs"), "the job among all done jobs")


def test_the_job_page_of_a_running_job_and_its_charts(ui: Ui) -> None:
    ui.admin.add_executor("steady", {"kind": "python", "target": "tests.e2e.ui_funcs:steady"})
    ui.admin.submit({"tasks": [{"id": f"r-{i}", "type": "steady", "job": "crawl-7", "payload": {"n": i, "sleep_s": 0.3}}
                               for i in range(60)]})
    ui.sign_in(ADMIN, "#/job/crawl-7?state=running")
    ui.wait(lambda: "r-" in ui.text("#task-page"), "running tasks listed on the job page")
    ui.wait(lambda: _finished(ui.text("main .row b")) not in (None, 0), "some tasks finished")
    ui.shot("ui-job")
    ui.admin.wait("crawl-7", timeout=120)
    ui.go("#/charts")
    ui.wait(lambda: "finished" in ui.text("main") and "p95" in ui.text("main") and "max 0.0" not in ui.text(".chart"),
            "the charts show the executions")
    ui.shot("ui-charts")
    ui.go("#/pods")
    assert "watcher" in ui.text("#pods") and "worker" in ui.text("#pods")
    ui.shot("ui-pods")
    # a schedule shows with its next fire time
    put = httpx.put(f"{ui.base}/schedules/hourly-crawl", headers={"Authorization": f"Bearer {ADMIN}"},
                    json={"cron": "@hourly", "task": {"type": "steady", "job": "crawl-7", "payload": {}}})
    assert put.status_code == 201, put.text
    ui.go("#/schedules")
    ui.wait(lambda: "hourly-crawl" in ui.text("#schedules") and " in " in ui.text("#schedules"), "the schedule's next fire")
    ui.shot("ui-schedules")


def test_a_failed_task_is_retried_from_its_page_and_succeeds(ui: Ui, tmp_path: Path) -> None:
    # Given a task that failed (one attempt) because its file was missing
    go = tmp_path / "go"
    ui.admin.add_executor("picky", {"kind": "python", "target": "tests.e2e.ui_funcs:fails_until", "max_attempts": 1})
    ui.admin.submit({"id": "picky-1", "type": "picky", "job": "dead", "payload": {"go": str(go)}})
    ui.admin.wait("dead", timeout=60)
    # When its page is opened from the dead letters, the file made, and Retry pressed
    ui.sign_in(ADMIN, "#/dead")
    ui.wait(lambda: "picky-1" in ui.text("#dead") and "not there yet" in ui.text("#dead"), "the dead letter listed")
    ui.b.find_element("link text", "picky-1").click()
    ui.wait(lambda: ui.text("#task-state") == "failed", "the task page says failed")
    assert "not there yet" in ui.text("main dl")
    ui.shot("ui-task-failed")
    go.touch()
    ui.b.find_element("css selector", 'button[data-action="retry-task"]').click()
    # Then the page follows it to succeeded, with both rounds' executions
    ui.wait(lambda: ui.text("#task-state") == "succeeded", "the retried task shown succeeded", timeout=60)
    assert '"went": true' in ui.text("#result")
    assert ui.admin.task("picky-1")["state"] == "succeeded"
    ui.shot("ui-task")


def test_a_task_page_links_its_parent_and_children(ui: Ui) -> None:
    ui.admin.add_executor("fam", {"kind": "python", "target": "tests.e2e.ui_funcs:steady"})
    ui.admin.add_analyzer("fam", {"kind": "python", "target": "tests.e2e.ui_funcs:two_kids"})
    ui.admin.submit({"id": "root", "type": "fam", "job": "family", "payload": {"sleep_s": 0}})
    ui.admin.wait("family", timeout=60)
    ui.sign_in(ADMIN, "#/task/root")
    ui.wait(lambda: ui.text("#children") == "root-1, root-2", "the root's children listed")
    ui.b.find_element("link text", "root-2").click()
    ui.wait(lambda: ui.text("#task-state") == "succeeded" and "root-2" in ui.text("h1"), "the child's page")
    assert ui.text("#children") == "none"
    ui.b.find_element("link text", "root").click()
    ui.wait(lambda: ui.text("h1") == "Task root", "back at the parent's page")


def test_a_read_token_sees_everything_with_the_buttons_disabled_and_its_posts_are_refused(ui: Ui, tmp_path: Path) -> None:
    ui.admin.add_executor("picky", {"kind": "python", "target": "tests.e2e.ui_funcs:fails_until", "max_attempts": 1})
    ui.admin.submit({"id": "ro-1", "type": "picky", "job": "ro", "payload": {"go": str(tmp_path / "never")}})
    ui.admin.wait("ro", timeout=60)
    ui.sign_in(READER, "#/task/ro-1")
    ui.wait(lambda: ui.text("#task-state") == "failed", "the task page")
    assert "viewer" in ui.text("#who") and "read" in ui.text("#who")
    for where in ("#/task/ro-1", "#/job/ro", "#/jobs", "#/dead"):
        ui.go(where)
        buttons = ui.b.find_elements("css selector", "button[data-action]")
        assert buttons and all(not b.is_enabled() for b in buttons), where
    ui.shot("ui-read-only")
    # a POST with the read token is refused, from the page and from anywhere else, and changes nothing
    assert ui.fetch("POST", "/tasks/ro-1/retry", READER) == 403
    assert httpx.post(f"{ui.base}/jobs/ro/retry", headers={"Authorization": f"Bearer {READER}"}).status_code == 403
    assert ui.admin.task("ro-1")["state"] == "failed"
    # without a token the page asks for one, and the API answers nothing
    ui.b.execute_script("sessionStorage.clear()")
    ui.b.get(f"{ui.base}/ui#/jobs")
    ui.wait(lambda: ui.b.find_element("id", "token").is_displayed(), "the sign-in form")
    assert httpx.get(f"{ui.base}/jobs").status_code == 401


def test_the_page_of_a_job_of_100_000_tasks_renders_fast(ui: Ui) -> None:
    # Given a job of 100,000 tasks, delayed an hour (scheduled: nothing runs, nothing goes to NSQ)
    ui.admin.add_executor("later", {"kind": "python", "target": "tests.e2e.ui_funcs:steady"})
    started = time.monotonic()
    with httpx.Client(base_url=ui.base, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=120) as http:
        for first in range(0, BIG, 1000):
            r = http.post("/tasks", json={"tasks": [{"id": f"big-{i}", "type": "later", "job": "big", "payload": {"i": i},
                                                      "delay_s": 3600} for i in range(first, first + 1000)]})
            assert r.status_code == 201, r.text
    print(f"\n{BIG:,} tasks submitted in {time.monotonic() - started:.1f} s")
    # When the job's page is loaded afresh (sign in first: the token is then in this tab's sessionStorage)
    ui.sign_in(ADMIN)
    figures = {}
    for where in ("#/job/big", "#/jobs"):
        ui.b.get("about:blank")  # else only the hash changes: the same document, nothing measured
        ui.b.get(f"{ui.base}/ui{where}")
        ui.wait(lambda: ui.b.execute_script("return window.__thReady"), f"{where} drawn")
        figures[where] = ui.b.execute_script(
            "const n = performance.getEntriesByType('navigation')[0];"
            "const all = [n, ...performance.getEntriesByType('resource')];"
            "return {ready_ms: window.__thReady, load_ms: n.loadEventEnd, bytes: all.reduce((s, e) => s + e.transferSize, 0),"
            " assets: all.filter(e => !e.name.includes('/ui/') || e.initiatorType !== 'fetch').length}")
    print("dashboard render with a 100,000-task job:", json.dumps(figures))
    ui.b.get(f"{ui.base}/ui#/job/big")
    ui.wait(lambda: "100,000" in ui.text("main .row") and "big-" in ui.text("#task-page"), "the big job's page")
    ui.shot("ui-job-100k")
    # Then it was drawn (status, counts and the first page of ids) within the bound, in under 300 KB
    for where, f in figures.items():
        assert f["ready_ms"] < RENDER_BOUND_S * 1000, (where, f)
        assert f["bytes"] <= FIRST_LOAD_BYTES, (where, f)
