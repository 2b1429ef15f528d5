"""A generated website for the demo crawl, served on loopback, with its own ground truth.

    with DemoSite(300, seed=7) as site:
        site.root          # http://127.0.0.1:PORT/p/0.html
        site.expected()    # SiteFacts(pages=300, links=..., max_depth=...)

Page i lives at `/p/i.html` (under `/<run>/` when a run name is given, so URLs, and the task ids made
from them, differ between runs). The link graph is a pure function of (pages, seed); only the absolute
links in the HTML carry the port. Every page links to the next one (so all pages are reachable from
page 0) plus to pages a little ahead and some behind, 2 to 8 distinct pages in all, so a crawl goes
many levels deep and meets pages it has already seen. The same page is linked in several spellings
(`5.html`, `./5.html`, `/p/5.html`, `../p/5.html`, the full URL, with a `#fragment`), and some links
leave the site (`http://example.invalid/...`, `mailto:`, another port): a crawler must resolve,
strip fragments, dedupe and stay under the site's base URL to get the ground truth right.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, urlsplit

MIN_LINKS, MAX_LINKS = 2, 8
"""Distinct pages each page links to (fewer only when the site is too small to have that many)."""
AHEAD = 24
"""Forward links go at most this many pages ahead: with the chain i -> i+1 it sets the depth (~pages/AHEAD)."""

_SPELLINGS = ("rel", "rel", "dot", "abs", "up", "full")
_EXTERNAL = ("http://example.invalid/p/{n}.html", "https://example.invalid/", "mailto:crawler@example.invalid",
             "http://127.0.0.1:1/p/{n}.html", "//example.invalid/p/{n}.html")
_WORDS = ("herd", "task", "queue", "worker", "lease", "result", "record", "archive", "job", "retry",
          "pod", "actor", "topic", "channel", "deadline", "analyzer", "executor", "redis", "mysql", "nsq")


@dataclass(frozen=True, slots=True)
class SiteFacts:
    """What a correct crawl from page 0 must find."""

    pages: int
    """Pages reachable from page 0 (all of them, by construction)."""
    links: int
    """Sum over those pages of their distinct links to pages of the site (external links not counted)."""
    max_depth: int
    """The largest BFS distance (in links) from page 0."""


@dataclass(frozen=True, slots=True)
class _Link:
    spelling: str
    """How the href is written: rel, dot, abs, up, full, frag, or external."""
    target: int | str
    """The page index, or the external href."""


def _plan(pages: int, seed: int) -> list[list[_Link]]:
    """Each page's links, in page order: deterministic from (pages, seed)."""
    rng = random.Random(seed)
    plan: list[list[_Link]] = []
    for i in range(pages):
        others = pages - 1
        want = min(rng.randint(MIN_LINKS, MAX_LINKS), others)
        targets: list[int] = [i + 1] if i + 1 < pages else []
        while len(targets) < want:
            if i > 0 and rng.random() < 0.4:
                t = rng.randrange(0, i)  # a link back
            else:
                t = rng.randint(i + 1, i + AHEAD) if i + 1 < pages else rng.randrange(0, i)
            if t < pages and t != i and t not in targets:
                targets.append(t)
        links = [_Link(rng.choice(_SPELLINGS), t) for t in targets]
        for t in rng.sample(targets, k=min(len(targets), rng.randint(0, 2))):  # the same page again
            links.append(_Link(rng.choice(("frag", "full", "abs", "rel")), t))
        for _ in range(rng.choice((0, 0, 1, 2))):
            links.append(_Link("external", rng.choice(_EXTERNAL).format(n=rng.randrange(pages or 1))))
        rng.shuffle(links)
        plan.append(links)
    return plan


def _href(link: _Link, base: str, rng: random.Random) -> str:
    t = link.target
    return {
        "rel": f"{t}.html",
        "dot": f"./{t}.html",
        "abs": f"{urlsplit(base).path}p/{t}.html",
        "up": f"../p/{t}.html",
        "full": f"{base}p/{t}.html",
        "frag": f"{t}.html#part-{rng.randint(1, 9)}",
        "external": str(t),
    }[link.spelling]


def _render(i: int, links: list[_Link], base: str, seed: int) -> bytes:
    rng = random.Random(f"{seed}:{i}")
    words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(20, 60)))
    items = "\n".join(f'  <li><a href="{_href(link, base, rng)}">link {n}</a></li>'
                      for n, link in enumerate(links, 1))
    html = (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>Page {i}</title></head>\n'
            f'<body>\n<h1 id="top">Page {i}</h1>\n<p>{words}</p>\n<ul>\n{items}\n</ul>\n'
            f'<p><a name="end">an anchor without href</a></p>\n</body></html>\n')
    return html.encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # many worker slots may connect at once
    pages: dict[str, bytes]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        body = self.server.pages.get(self.path.split("?", 1)[0].split("#", 1)[0])
        if body is None:
            self.send_error(404, "no such page")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the demo's output is the progress bar


class DemoSite:
    """The generated site, served by a ThreadingHTTPServer in a daemon thread while started."""

    def __init__(self, pages: int = 300, seed: int = 7, host: str = "127.0.0.1", port: int = 0,
                 run: str = "") -> None:
        """`port=0` picks any free port; read the real one from `url` after `start()`. A `run` name
        puts the site under `/<run>/` (the graph does not depend on it)."""
        if pages < 1:
            raise ValueError(f"pages: expected at least 1, got {pages}")
        self.pages = pages
        self.seed = seed
        self._prefix = f"/{quote(run, safe='')}" if run else ""
        self._host, self._port = host, port
        self._plan = _plan(pages, seed)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL, ending in '/': a crawl follows only links under it."""
        if self._server is None:
            raise RuntimeError("DemoSite is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{self._prefix}/"

    @property
    def root(self) -> str:
        """Where a crawl starts: page 0."""
        return self.page_url(0)

    def page_url(self, i: int) -> str:
        return f"{self.url}p/{i}.html"

    def links_of(self, i: int) -> list[int]:
        """The distinct pages page i links to, in page order (the ground truth for one fetch)."""
        return list(dict.fromkeys(link.target for link in self._plan[i] if isinstance(link.target, int)))

    def expected(self) -> SiteFacts:
        """BFS from page 0 over the generated graph: what the crawl must report."""
        depth = {0: 0}
        queue = deque([0])
        while queue:
            i = queue.popleft()
            for t in self.links_of(i):
                if t not in depth:
                    depth[t] = depth[i] + 1
                    queue.append(t)
        return SiteFacts(pages=len(depth), links=sum(len(self.links_of(i)) for i in depth),
                         max_depth=max(depth.values()))

    def start(self) -> DemoSite:
        if self._server is not None:
            return self
        server = _Server((self._host, self._port), _Handler)
        host, port = server.server_address[:2]
        base = f"http://{host!s}:{port}{self._prefix}/"
        p = self._prefix
        server.pages = {f"{p}/p/{i}.html": _render(i, links, base, self.seed) for i, links in enumerate(self._plan)}
        server.pages[f"{p}/"] = f'<!doctype html>\n<html><body><a href="{p}/p/0.html">start</a></body></html>\n'.encode()
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="demo-site", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> DemoSite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
