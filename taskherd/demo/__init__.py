"""`make demo`: crawl a generated site with a real local cluster, then check the result against the truth.

The job is open-ended: only the root page is submitted; every fetched page's analyzer submits its
links as child tasks (id = URL, so a page linked from many places is fetched once), until no work is
left. The summary is read back from MySQL, compared with what the site knows it contains, and the
job is torn down. Exit code 0 means the crawl was complete and exact and teardown left nothing.

This package's `__init__` stays light on purpose: worker child processes import
`taskherd.demo.crawl`, which imports this module first; the cluster, client and archive are
imported only when `main` runs.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from taskherd.demo.site import DemoSite, SiteFacts

if TYPE_CHECKING:
    from taskherd.client import Client
    from taskherd.config.settings import Settings

TASK_TYPE = "crawl"
EXECUTOR = {"kind": "python", "target": "taskherd.demo.crawl:fetch", "timeout_s": 30, "max_attempts": 3}
ANALYZER = {"kind": "python", "target": "taskherd.demo.crawl:analyze"}
POLL_S = 0.3
WAIT_LIMIT_S = 600.0

__all__ = ["ANALYZER", "EXECUTOR", "TASK_TYPE", "CrawlSummary", "DemoSite", "SiteFacts", "crawl_summary", "main"]


@dataclass(frozen=True, slots=True)
class CrawlSummary:
    """What the archived records of one crawl job say."""

    pages: int
    links: int
    max_depth: int
    bytes: int
    unreached: int
    """Archived pages that a BFS from the root over the archived links does not reach (should be 0)."""


def main(settings: Settings, config_path: str | Path | None, pages: int = 300, workers: int = 2,
         managers: int = 1, nsqd: int = 1, redis_cluster: bool = False) -> int:
    """Run the demo end to end; 0 when the crawl matches the site and teardown leaves nothing."""
    from taskherd.deploy.local.cluster import Cluster

    job = f"crawl-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"taskherd demo: crawl a generated site of {pages} pages with {workers} worker pod(s)")
    with DemoSite(pages, run=job) as site, _pod_log(settings, job) as log:
        print(f"  site     {site.root}")
        print(f"  logs     {log.name}")
        redis = "a Redis Cluster (3 masters + 3 replicas)" if redis_cluster else "redis"
        print(f"  cluster  starting {'nsqd' if nsqd == 1 else f'{nsqd} nsqd'}, nsqlookupd, {redis}, mysql, "
              f"{'1 manager' if managers == 1 else f'{managers} managers'} and {workers} worker pod(s)...", flush=True)
        with Cluster(settings, str(config_path) if config_path else None, workers=workers, data_dir=None, out=log,
                     managers=managers, nsqd=nsqd, redis_cluster=redis_cluster) as cluster:
            print(f"  cluster  ready, API at {', '.join(cluster.api_urls)}")
            client = _client(cluster.api_url)
            started = time.monotonic()
            _start_job(client, job, site)
            status = _follow(client, job)
            ok = _report(settings, job, site, _elapsed_s(status, time.monotonic() - started))
            ok = _teardown(client, job) and ok
    print("Done: the crawl matches the site exactly." if ok else "The demo FAILED (see above).")
    return 0 if ok else 1


def _pod_log(settings: Settings, job: str) -> IO[str]:
    """Where the pods' logs go, so the terminal shows the demo, not every pod's chatter."""
    logs = Path(settings.local.data_dir).resolve() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return open(logs / f"demo-{job}.log", "w", buffering=1)


def _client(api_url: str) -> Client:
    from taskherd.client import Client

    return Client(api_url)


def _start_job(client: Client, job: str, site: DemoSite) -> None:
    client.add_executor(TASK_TYPE, EXECUTOR, replace=True)
    client.add_analyzer(TASK_TYPE, ANALYZER, replace=True)
    client.submit({"id": site.root, "type": TASK_TYPE, "job": job,
                   "payload": {"url": site.root, "base": site.url}})
    print(f"  job      {job}: executor and analyzer registered for type {TASK_TYPE!r}, root page submitted",
          flush=True)


def _follow(client: Client, job: str) -> dict[str, Any]:
    """Poll the job with a progress bar (done / known so far) until it is done; return its last status."""
    from tqdm import tqdm

    deadline = time.monotonic() + WAIT_LIMIT_S
    with tqdm(total=1, desc="  crawling", unit="task", dynamic_ncols=True) as bar:
        while True:
            status = client.job(job)
            total = int(status.get("total") or 0)
            bar.total = max(total, 1)
            bar.n = total - int(status.get("open") or 0)
            bar.refresh()
            if status.get("done"):
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job} not done after {WAIT_LIMIT_S:.0f} s: {status}")
            time.sleep(POLL_S)


def crawl_summary(records: list[dict[str, Any]], root: str) -> CrawlSummary:
    """Pages, links and depth of a crawl from its archived records alone (BFS over their `out` links)."""
    out = {r["record"]["url"]: r["record"].get("out", []) for r in records}
    depth = {root: 0} if root in out else {}
    queue = deque(depth)
    while queue:
        url = queue.popleft()
        for link in out.get(url, []):
            if link in out and link not in depth:
                depth[link] = depth[url] + 1
                queue.append(link)
    return CrawlSummary(pages=len(out), links=sum(int(r["record"].get("links", 0)) for r in records),
                        max_depth=max(depth.values(), default=0),
                        bytes=sum(int(r["record"].get("bytes", 0)) for r in records),
                        unreached=len(out) - len(depth))


def _elapsed_s(status: dict[str, Any], watched_s: float) -> float:
    """The job's own time (first submit to done, from the server) or, without it, what we watched."""
    created, finished = status.get("created_ms"), status.get("finished_ms")
    seconds = (finished - created) / 1000 if created and finished else watched_s
    return max(seconds, 1e-3)


def _report(settings: Settings, job: str, site: DemoSite, elapsed: float) -> bool:
    """Print the summary read back from MySQL and compare it with the site's ground truth."""
    from taskherd.store.archive import Archive

    archive = Archive(settings.mysql)
    try:
        summary = crawl_summary(archive.records(job), site.root)
        counts = archive.counts(job)
    finally:
        archive.close()
    want = site.expected()
    tasks = sum(v for k, v in counts.items() if k != "records")
    print("Summary, read back from MySQL:")
    print(f"  pages      {summary.pages:>7}   expected {want.pages}")
    print(f"  links      {summary.links:>7}   expected {want.links}")
    print(f"  max depth  {summary.max_depth:>7}   expected {want.max_depth}")
    print(f"  fetched    {summary.bytes / 1024:>7.0f} KiB")
    print(f"  tasks      {tasks:>7}   {_by_state(counts)}")
    print(f"  time       {elapsed:>7.2f} s   {tasks / elapsed:.0f} tasks/s")
    return _check(summary, want, counts)


def _by_state(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items()) if state != "records" and n)


def _check(summary: CrawlSummary, want: SiteFacts, counts: dict[str, int]) -> bool:
    problems = []
    if summary.pages != want.pages:
        problems.append(f"pages: crawled {summary.pages}, the site has {want.pages} reachable")
    if summary.max_depth != want.max_depth:
        problems.append(f"max depth: crawled {summary.max_depth}, the site's is {want.max_depth}")
    if summary.links != want.links:
        problems.append(f"links: crawled {summary.links}, the site has {want.links}")
    if summary.unreached:
        problems.append(f"{summary.unreached} archived page(s) are not reachable from the root")
    if counts.get("failed"):
        problems.append(f"{counts['failed']} task(s) failed")
    for problem in problems:
        print(f"  MISMATCH   {problem}")
    return not problems


def _teardown(client: Client, job: str) -> bool:
    """Tear the job down; the API answers 500 listing the Redis keys that survived, if any did."""
    from taskherd.client import ClientError

    try:
        leftovers = client.teardown(job).get("leftovers") or []
    except ClientError as exc:
        if not isinstance(exc.detail, dict) or "leftovers" not in exc.detail:
            raise
        leftovers = exc.detail["leftovers"]
    n = leftovers if isinstance(leftovers, int) else len(leftovers)
    print(f"  teardown   {n} Redis key(s) of the job left over" + ("" if n == 0 else f": {leftovers}"))
    return n == 0
