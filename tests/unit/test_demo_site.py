"""The demo's generated site and its crawl executor/analyzer, without a cluster.

The site's ground truth (`expected()`) is checked against a plain BFS that fetches every page over
HTTP with the real executor, so the demo's final comparison compares two independent answers.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest

from taskherd.demo import crawl_summary
from taskherd.demo.crawl import analyze, fetch, links_in
from taskherd.demo.site import MAX_LINKS, MIN_LINKS, DemoSite, SiteFacts
from taskherd.runners import Runner
from taskherd.specs import RunnerSpec


@pytest.fixture(scope="module")
def site() -> Iterator[DemoSite]:
    with DemoSite(300, seed=7) as s:
        yield s


def get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read().decode()


def crawl_bfs(site: DemoSite) -> tuple[dict[str, int], dict[str, list[str]]]:
    """A straightforward BFS with the executor: depth of each URL, and each page's links."""
    depth, links = {site.root: 0}, {}
    queue = deque([site.root])
    while queue:
        url = queue.popleft()
        links[url] = fetch({"url": url, "base": site.url})["links"]
        for link in links[url]:
            if link not in depth:
                depth[link] = depth[url] + 1
                queue.append(link)
    return depth, links


def test_site_serves_html_pages_and_404s_the_rest(site: DemoSite) -> None:
    assert site.url.startswith("http://127.0.0.1:") and site.url.endswith("/")
    status, ctype, body = get(site.page_url(299))
    assert (status, ctype) == (200, "text/html; charset=utf-8")
    assert "<title>Page 299</title>" in body
    with pytest.raises(urllib.error.HTTPError) as caught:
        get(site.url + "p/300.html")
    assert caught.value.code == 404


def test_expected_matches_a_bfs_with_the_executor(site: DemoSite) -> None:
    depth, links = crawl_bfs(site)
    facts = site.expected()
    assert facts == SiteFacts(pages=len(depth), links=sum(map(len, links.values())),
                              max_depth=max(depth.values()))
    assert facts.pages == 300, "every page is reachable from page 0"
    assert facts.max_depth >= 5, "the crawl goes several levels deep"
    assert set(depth) == {site.page_url(i) for i in range(300)}


def test_the_graph_is_deterministic_from_the_seed_and_shaped_as_promised() -> None:
    a, b, c = DemoSite(300, seed=7), DemoSite(300, seed=7), DemoSite(300, seed=8)
    assert [a.links_of(i) for i in range(300)] == [b.links_of(i) for i in range(300)]
    assert [a.links_of(i) for i in range(300)] != [c.links_of(i) for i in range(300)]
    assert a.expected() == b.expected()
    for i in range(300):
        targets = a.links_of(i)
        assert MIN_LINKS <= len(targets) <= MAX_LINKS
        assert i not in targets and all(0 <= t < 300 for t in targets)
    assert any(t < i for i in range(300) for t in a.links_of(i)), "some links point back"


def test_fetch_returns_unique_resolved_links_under_base_in_page_order(site: DemoSite) -> None:
    for i in range(300):
        result = fetch({"url": site.page_url(i), "base": site.url})
        _, _, body = get(site.page_url(i))
        assert result["url"] == site.page_url(i) and result["status"] == 200
        assert result["bytes"] == len(body.encode())
        assert result["links"] == [site.page_url(t) for t in site.links_of(i)]


def test_the_html_has_repeats_fragments_relative_and_external_links(site: DemoSite) -> None:
    bodies = [get(site.page_url(i))[2] for i in range(300)]
    hrefs = [b.count("<a href=") for b in bodies]
    assert sum(hrefs) > sum(len(site.links_of(i)) for i in range(300)), "repeated and external hrefs exist"
    text = "\n".join(bodies)
    for spelling in ('href="./', 'href="/p/', 'href="../p/', f'href="{site.url}p/', ".html#part-",
                     "http://example.invalid/", "mailto:", "http://127.0.0.1:1/", 'href="//example.invalid/'):
        assert spelling in text, spelling
    assert all("example.invalid" not in link and "#" not in link
               for i in range(0, 300, 7) for link in fetch({"url": site.page_url(i), "base": site.url})["links"])


def test_links_in_keeps_only_links_under_base() -> None:
    html = """<a href="b.html#x">1</a><a href="/p/b.html">again</a><a href="http://h:80/p/c.html">same host</a>
              <a href="http://h:8080/p/d.html">other port</a><a href="http://example.invalid/p/e.html">out</a>
              <a href="mailto:x@y">mail</a><a name="n">no href</a><a href="">empty</a><a href="../q/f.html">up</a>
              <A HREF=" c.html ">caps and spaces</A>"""
    assert links_in(html, "http://h:80/p/a.html", "http://h:80/p/") == [
        "http://h:80/p/b.html", "http://h:80/p/c.html"]
    assert links_in('<base href="/p/sub/"><a href="x.html">', "http://h/p/a.html", "http://h/") == [
        "http://h/p/sub/x.html"]


def test_fetch_raises_on_http_errors_so_the_worker_retries(site: DemoSite) -> None:
    with pytest.raises(urllib.error.HTTPError):
        fetch({"url": site.url + "p/nope.html", "base": site.url})


def test_analyze_makes_url_children_of_the_same_type_and_a_record(site: DemoSite) -> None:
    result = fetch({"url": site.page_url(3), "base": site.url})
    task = {"id": site.page_url(3), "type": "crawl", "job": "j", "attempts": 1,
            "payload": {"url": site.page_url(3), "base": site.url}}
    out = analyze({"task": task, "result": result})
    assert out["children"] == [{"id": link, "type": "crawl", "payload": {"url": link, "base": site.url}}
                               for link in result["links"]]
    assert out["record"] == {"url": site.page_url(3), "status": 200, "links": len(result["links"]),
                             "bytes": result["bytes"], "out": result["links"]}
    # A page reached again from anywhere submits the very same task: same id, same payload.
    parent = next(i for i in range(300) if 3 in site.links_of(i) and i != 2)
    again = analyze({"task": {**task, "id": site.page_url(parent)},
                     "result": fetch({"url": site.page_url(parent), "base": site.url})})
    child = next(c for c in again["children"] if c["id"] == site.page_url(3))
    assert child["payload"] == task["payload"]


def test_summarize_recovers_the_facts_from_records_alone(site: DemoSite) -> None:
    records: list[dict[str, Any]] = []
    for i in reversed(range(300)):  # archive order must not matter
        url = site.page_url(i)
        task = {"id": url, "type": "crawl", "job": "j", "attempts": 1, "payload": {"url": url, "base": site.url}}
        rec = analyze({"task": task, "result": fetch(task["payload"])})["record"]
        records.append({"task_id": url, "type": "crawl", "record": rec})
    summary = crawl_summary(records, site.root)
    facts = site.expected()
    assert (summary.pages, summary.links, summary.max_depth, summary.unreached) == (
        facts.pages, facts.links, facts.max_depth, 0)


def test_executor_and_analyzer_run_by_target_in_a_child_process(site: DemoSite) -> None:
    with Runner() as runner:
        fetched = runner.run(RunnerSpec("python", "taskherd.demo.crawl:fetch"),
                             {"url": site.root, "base": site.url}, timeout_s=30)
        assert fetched.ok, fetched
        task = {"id": site.root, "type": "crawl", "job": "j", "attempts": 1,
                "payload": {"url": site.root, "base": site.url}}
        analyzed = runner.run(RunnerSpec("python", "taskherd.demo.crawl:analyze"),
                              {"task": task, "result": fetched.result}, timeout_s=30)
        assert analyzed.ok, analyzed
        assert [c["id"] for c in analyzed.result["children"]] == fetched.result["links"]
        missing = runner.run(RunnerSpec("python", "taskherd.demo.crawl:fetch"),
                             {"url": site.url + "p/nope.html", "base": site.url}, timeout_s=30)
        assert missing.status == "failed" and missing.retryable
        assert missing.error_type == "urllib.error.HTTPError"


def test_stop_closes_the_port() -> None:
    s = DemoSite(5).start()
    url = s.root
    assert get(url)[0] == 200
    s.stop()
    with pytest.raises(urllib.error.URLError):
        get(url)
    with pytest.raises(RuntimeError):
        _ = s.url


# -- main's flow, with an in-process stand-in for the cluster, client and archive ----------------


class FakeHerd:
    """Runs the crawl in-process the way the cluster would: idempotent submit, fetch, analyze, archive."""

    def __init__(self, lose_one_record: bool = False) -> None:
        self.leftovers: list[str] = []
        self.specs: dict[str, dict[str, Any]] = {}
        self.tasks: dict[str, dict[str, Any]] = {}
        self.queue: deque[str] = deque()
        self.records: list[dict[str, Any]] = []
        self.lose_one_record = lose_one_record

    def submit(self, task: dict[str, Any]) -> dict[str, str]:
        old = self.tasks.get(task["id"])
        if old is not None:
            assert old["payload"] == task["payload"], f"conflict on {task['id']}"
            return {"id": task["id"], "status": "exists"}
        self.tasks[task["id"]] = {**task, "state": "pending"}
        self.queue.append(task["id"])
        return {"id": task["id"], "status": "created"}

    def step(self, n: int) -> None:
        from importlib import import_module

        def call(spec: dict[str, Any], arg: dict[str, Any]) -> dict[str, Any]:
            module, function = spec["target"].split(":")
            return getattr(import_module(module), function)(arg)

        for _ in range(min(n, len(self.queue))):
            t = self.tasks[self.queue.popleft()]
            task = {k: t[k] for k in ("id", "type", "job", "payload")} | {"attempts": 1}
            out = call(self.specs["analyzer"], {"task": task, "result": call(self.specs["executor"], t["payload"])})
            for child in out["children"]:
                self.submit({**child, "job": t["job"]})
            t["state"] = "succeeded"
            self.records.append({"task_id": t["id"], "type": t["type"], "record": out["record"]})
        if self.lose_one_record and not self.queue:
            self.records = self.records[:-1]
            self.lose_one_record = False


@pytest.fixture
def herd(monkeypatch: pytest.MonkeyPatch) -> FakeHerd:
    import taskherd.client as client_module
    import taskherd.demo as demo
    import taskherd.deploy.local.cluster as cluster_module
    import taskherd.store.archive as archive_module

    state = FakeHerd()

    class Client:
        def __init__(self, base_url: str) -> None:
            assert base_url == "http://fake-api"

        def add_executor(self, task_type: str, spec: dict[str, Any], replace: bool = False) -> None:
            assert (task_type, replace) == ("crawl", True)
            state.specs["executor"] = spec

        def add_analyzer(self, task_type: str, spec: dict[str, Any], replace: bool = False) -> None:
            assert (task_type, replace) == ("crawl", True)
            state.specs["analyzer"] = spec

        def submit(self, task: dict[str, Any]) -> dict[str, str]:
            return state.submit(task)

        def job(self, job: str) -> dict[str, Any]:
            state.step(40)
            done = sum(t["state"] == "succeeded" for t in state.tasks.values())
            return {"counts": {"succeeded": done}, "total": len(state.tasks), "open": len(state.queue),
                    "done": not state.queue, "created_ms": 1_000, "finished_ms": 3_000}

        def teardown(self, job: str) -> dict[str, Any]:
            if state.leftovers:  # what the API answers then: 500 listing them
                raise client_module.ClientError(500, {"errors": [{"field": "job", "message": "keys remain"}],
                                                      "leftovers": state.leftovers})
            return {"job": job, "leftovers": []}

    class Cluster:
        api_url = "http://fake-api"
        api_urls = ["http://fake-api"]

        def __init__(self, settings: Any, config_path: Any, workers: int, data_dir: Any, out: Any,
                     **topology: Any) -> None:  # managers=, nsqd=
            print("pod log line", file=out)

        def __enter__(self) -> Cluster:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    class Archive:
        def __init__(self, settings: Any) -> None:
            pass

        def records(self, job: str) -> list[dict[str, Any]]:
            return list(state.records)

        def counts(self, job: str) -> dict[str, int]:
            return {"succeeded": len(state.records), "records": len(state.records)}

        def close(self) -> None:
            pass

    monkeypatch.setattr(client_module, "Client", Client)
    monkeypatch.setattr(cluster_module, "Cluster", Cluster)
    monkeypatch.setattr(archive_module, "Archive", Archive)
    monkeypatch.setattr(demo, "POLL_S", 0)
    return state


def settings_in(tmp_path: Any) -> Any:
    from taskherd.config import from_dict

    return from_dict({"local": {"data_dir": str(tmp_path)}})


def test_main_crawls_checks_against_the_site_and_tears_down(herd: FakeHerd, tmp_path: Any,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from taskherd.demo import main

    assert main(settings_in(tmp_path), None, pages=120, workers=2) == 0
    out = capsys.readouterr().out
    facts = DemoSite(120).expected()
    assert f"pages          120   expected {facts.pages}" in out
    assert f"max depth  {facts.max_depth:>7}   expected {facts.max_depth}" in out
    assert "0 Redis key(s) of the job left over" in out and "MISMATCH" not in out
    assert "60 tasks/s" in out  # 120 tasks in the job's 2.0 s
    assert all("/crawl-" in url for url in herd.tasks), "URLs (task ids) carry the run's name"
    log = next((tmp_path / "logs").glob("demo-crawl-*.log"))
    assert log.read_text() == "pod log line\n", "pod logs go to a file, not the terminal"


def test_main_reports_a_mismatch_and_returns_1(herd: FakeHerd, tmp_path: Any,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from taskherd.demo import main

    herd.lose_one_record = True
    assert main(settings_in(tmp_path), None, pages=60, workers=1) == 1
    out = capsys.readouterr().out
    assert "MISMATCH   pages: crawled 59, the site has 60 reachable" in out
    assert "FAILED" in out


def test_a_run_name_moves_the_site_under_its_own_path_with_the_same_graph() -> None:
    with DemoSite(40, run="crawl-1") as s:
        assert s.root == f"{s.url}p/0.html" and s.url.endswith("/crawl-1/")
        depth, links = crawl_bfs(s)
        assert set(depth) == {s.page_url(i) for i in range(40)}
        assert s.expected() == DemoSite(40).expected() == SiteFacts(
            pages=len(depth), links=sum(map(len, links.values())), max_depth=max(depth.values()))
        with pytest.raises(urllib.error.HTTPError):
            get(s.url.replace("/crawl-1/", "/") + "p/0.html")


def test_main_fails_when_teardown_leaves_keys(herd: FakeHerd, tmp_path: Any,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from taskherd.demo import main

    herd.leftovers = ["th:{job}:meta"]
    assert main(settings_in(tmp_path), None, pages=30, workers=1) == 1
    out = capsys.readouterr().out
    assert "1 Redis key(s) of the job left over: ['th:{job}:meta']" in out and "FAILED" in out
