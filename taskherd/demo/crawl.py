"""The demo's executor and analyzer for task type `crawl`: plain functions a worker's child process imports.

    executor  {"kind": "python", "target": "taskherd.demo.crawl:fetch"}
    analyzer  {"kind": "python", "target": "taskherd.demo.crawl:analyze"}

A crawl task's payload is `{"url": ..., "base": ...}` and its id is the URL itself, so the many links
to one page all submit the same task (same id, same payload) and idempotent submit keeps just one.
That is why the payload carries no depth: a page reached by two paths of different lengths would
give two payloads for one id, which submit rightly calls a conflict, and a concurrent crawl would
record whichever path won the race. Depth is instead computed after the job from the link lists the
records keep (`out`), by BFS from the root, which is exact whatever order the pages were fetched in.
"""

from __future__ import annotations

import urllib.request
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urldefrag, urljoin

FETCH_TIMEOUT_S = 10
MAX_BYTES = 4 << 20
"""A page larger than this is cut: the demo crawls small generated pages, not the web."""


class _Hrefs(HTMLParser):
    """Collects every `<a href>` (and honours `<base href>`) in document order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []
        self.base: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if href is None:
            return
        if tag == "a":
            self.hrefs.append(href.strip())
        elif tag == "base" and self.base is None:
            self.base = href.strip()


def links_in(html: str, page_url: str, base: str) -> list[str]:
    """Absolute, fragment-free links of `html` that lie under `base`: unique, in page order."""
    parser = _Hrefs()
    parser.feed(html)
    parser.close()
    resolve_from = urljoin(page_url, parser.base) if parser.base else page_url
    found = (urldefrag(urljoin(resolve_from, href))[0] for href in parser.hrefs if href)
    return list(dict.fromkeys(url for url in found if url.startswith(base)))


def fetch(payload: dict[str, Any]) -> dict[str, Any]:
    """Executor: GET `payload["url"]` and return its links under `payload["base"]`.

    Returns `{"url", "status", "links": [unique links in page order], "bytes": n}` (plus "depth" when
    the payload has one). An HTTP error or a network failure raises, so the worker retries the task.
    """
    url, base = payload["url"], payload["base"]
    request = urllib.request.Request(url, headers={"User-Agent": "taskherd-demo/1"})
    with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S) as response:
        body = response.read(MAX_BYTES)
        status = response.status
        final_url = response.geturl()
        charset = response.headers.get_content_charset() or "utf-8"
    out: dict[str, Any] = {"url": url, "status": status,
                           "links": links_in(body.decode(charset, errors="replace"), final_url, base),
                           "bytes": len(body)}
    if "depth" in payload:
        out["depth"] = payload["depth"]
    return out


def analyze(data: dict[str, Any]) -> dict[str, Any]:
    """Analyzer: one child per link (id = URL, so revisits dedupe) and one record for this page.

    `data` is `{"task": {"id", "type", "job", "payload", "attempts"}, "result": <fetch's result>}`.
    The record keeps the page's links (`out`) so the job's depth can be computed from MySQL alone.
    """
    task, result = data["task"], data["result"]
    base = task["payload"]["base"]
    links = list(result.get("links", []))
    children = [{"id": link, "type": task["type"], "payload": {"url": link, "base": base}} for link in links]
    record = {"url": result.get("url", task["payload"]["url"]), "status": result.get("status"),
              "links": len(links), "bytes": result.get("bytes", 0), "out": links}
    return {"children": children, "record": record}
