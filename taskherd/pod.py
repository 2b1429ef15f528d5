"""One pod: one process, one supervisor tree, until SIGTERM (`taskherd run --role ...`).

The tree is rest_for_one. The actors that consume NSQ (worker slots, the ResultAnalyzer) each read
their own nsqd connection (`taskherd.nsq.feed`), so no actor's restart reaches another's
subscription. Worker slots sit under their own one_for_one supervisor, so one crashing slot restarts
alone. Past the restart intensity the root gives up and the process exits 1, so Kubernetes (or
`taskherd up`) restarts the pod.
"""

from __future__ import annotations

import gc
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pykka

from taskherd.actors.context import PodContext, find
from taskherd.actors.http_server import HttpServer
from taskherd.actors.lease_keeper import Drain, HeldCount, LeaseKeeper
from taskherd.actors.manager import Manager
from taskherd.actors.registry import NodeInfo, Registry
from taskherd.actors.result_analyzer import ResultAnalyzer
from taskherd.actors.scheduler import Scheduler
from taskherd.actors.timeout_watcher import TimeoutWatcher
from taskherd.actors.worker import Worker
from taskherd.api.probes import Checks, probe_app
from taskherd.config.loader import tokens
from taskherd.config.settings import Settings
from taskherd.errors import StoreError
from taskherd.intake import Intake
from taskherd.logs import configure_logging
from taskherd.nsq import topics
from taskherd.nsq.publisher import Publisher
from taskherd.store.archive import Archive
from taskherd.store.state_store import StateStore
from taskherd.supervisor import ChildSpec, Factory, OneForOne, RestForOne, Supervisor

log = logging.getLogger("taskherd.pod")


def run(settings: Settings, role: str, config_path: str | None = None, nsqd: str = "") -> int:
    """Run one pod until SIGTERM; `nsqd` is the nsqd it publishes to first (else [nsq]'s, see
    taskherd.nsq.publisher), while its consumers keep reading as [nsq] says."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    settings = _with_probe_port(settings, role)
    w = settings.worker
    node = NodeInfo.for_this_process(role, w.slots if role != "manager" else 0,
                                     api=(settings.api.host, settings.api.port) if role != "worker" else None,
                                     probes=(w.http_host, w.http_port) if role == "worker" else None)
    configure_logging(settings.log, role, node.id)
    level, line = _security_line(settings, role)  # the first line: whether this pod's API is open
    log.log(level, "pod %s starting (role %s): %s", node.id, role, line)
    ctx = _context(settings, role, node, stop, nsqd)
    if ctx is None:
        return 0
    escalated, asked = threading.Event(), threading.Event()
    root = Supervisor.start(children(ctx, role, node, on_stop_asked=lambda: _set_all(asked, stop)),
                            strategy=RestForOne(), name="pod",
                            max_restarts=settings.supervisor.max_restarts, max_seconds=settings.supervisor.max_seconds,
                            sweep_interval_s=settings.supervisor.sweep_interval_s,
                            on_escalate=lambda _exc: _set_all(escalated, stop))
    log.info("pod %s up (role %s)", ctx.node_id, role)
    # What start-up made (imports, the app, the actors: ~100,000 objects) lives as long as the pod;
    # frozen, out of the collector's reach, a full collection scans only what came since. Without it
    # each full collection of a worker pod took 40-70 ms, its slots stalled meanwhile (and the pods'
    # collections fall in step, as their allocation counts do), against < 3 ms frozen.
    gc.freeze()
    while not stop.wait(0.5):  # a signal delivered to another thread only runs its handler once we wake
        pass
    if not escalated.is_set() and role in ("worker", "all"):
        drain(settings.worker.drain_grace_s)
    root.stop(timeout=30)
    pykka.ActorRegistry.stop_all(timeout=30)
    if asked.is_set():
        _delete_topics(settings)
    log.info("pod %s stopped%s", ctx.node_id, " after escalation" if escalated.is_set() else "")
    return 1 if escalated.is_set() else 0


def _security_line(settings: Settings, role: str) -> tuple[int, str]:
    """(log level, what guards this pod): the API's tokens (read now: a bad tokens_file stops the
    pod here) and what [security] lets executors and analyzers run."""
    auth, sec = settings.auth, settings.security
    lists = "; ".join(f"{kind}_allow " + (str(list(allow)) if allow else "admits nothing" if auth.on else "admits anything")
                      for kind, allow in (("exe", sec.exe_allow), ("http", sec.http_allow), ("python", sec.python_allow)))
    if role == "worker":
        return logging.INFO, f"auth {'on' if auth.on else 'off'}; [security] {lists}"
    names = [t.name for t in tokens(auth)]
    if names:
        return logging.INFO, f"API auth on, {len(names)} token(s): {', '.join(names)}; [security] {lists}"
    return logging.WARNING, (f"API auth OFF: no [auth] tokens, so anyone who reaches {settings.api.host}:"
                             f"{settings.api.port} may register executors and run them; [security] {lists}")


def _delete_topics(settings: Settings) -> None:
    """After a system teardown's stop, as this pod's consumers are gone: delete taskherd's topics
    again, as a consumer of ours may have subscribed again (so created its topic) since the teardown
    deleted them; the last pod to exit so leaves nsqd with none."""
    deleted = topics.delete(settings.nsq)
    log.info("system teardown: deleted topic(s) %s%s", ", ".join(deleted.deleted) or "(none left)",
             f"; {'; '.join(deleted.errors)}" if deleted.errors else "")


def _set_all(*events: threading.Event) -> None:
    for event in events:
        event.set()


def _context(settings: Settings, role: str, node: NodeInfo, stop: threading.Event,
             nsqd: str = "") -> PodContext | None:
    archive = None
    if role in ("manager", "all"):
        archive = Archive(settings.mysql)
        if not _until_ready(archive.ensure_schema, "MySQL schema", stop):
            return None
    return PodContext(settings, node.id, StateStore(settings.redis), Publisher(settings.nsq, own=nsqd), archive)


def _until_ready(step: Callable[[], Any], what: str, stop: threading.Event) -> bool:
    """A pod may start before its services (Kubernetes gives no order): wait for them, loudly."""
    delay = 0.2
    while not stop.is_set():
        try:
            step()
            return True
        except StoreError as exc:
            log.warning("%s not ready, retrying in %.1fs: %s", what, delay, exc)
            stop.wait(delay)
            delay = min(5.0, delay * 2)
    return False


def children(ctx: PodContext, role: str, node: NodeInfo,
             on_stop_asked: Callable[[], None] | None = None) -> list[ChildSpec]:
    s = ctx.settings
    specs = [ChildSpec("registry", lambda sup, slot: Registry.start(ctx.store.members, node, s.registry, on_stop_asked,
                                                                    supervisor=sup, slot=slot))]
    if role in ("manager", "all"):
        assert ctx.archive is not None
        intake = Intake(s, ctx.store, ctx.archive, ctx.publisher)
        specs += [ChildSpec("manager", lambda sup, slot: Manager.start(intake, supervisor=sup, slot=slot)),
                  ChildSpec("analyzer", lambda sup, slot: ResultAnalyzer.start(ctx, intake, supervisor=sup, slot=slot)),
                  ChildSpec("watcher", lambda sup, slot: TimeoutWatcher.start(ctx, supervisor=sup, slot=slot)),
                  ChildSpec("scheduler", lambda sup, slot: Scheduler.start(ctx, intake, supervisor=sup, slot=slot)),
                  ChildSpec("api", lambda sup, slot: HttpServer.start(_api_app(ctx, intake), s.api.host, s.api.port,
                                                                      "API ([api] host/port)", supervisor=sup,
                                                                      slot=slot))]
    if role in ("worker", "all"):
        slots = [ChildSpec(f"worker-{i}", _worker_slot(ctx, i)) for i in range(s.worker.slots)]
        specs += [ChildSpec("lease_keeper", lambda sup, slot: LeaseKeeper.start(ctx, supervisor=sup, slot=slot)),
                  Supervisor.spec("slots", slots, strategy=OneForOne(), max_restarts=s.supervisor.max_restarts,
                                  max_seconds=s.supervisor.max_seconds, sweep_interval_s=s.supervisor.sweep_interval_s)]
    if role == "worker":  # a manager (or an `all` pod) serves the same probes with its API
        specs.append(ChildSpec("probes", lambda sup, slot: HttpServer.start(
            lambda: probe_app(_worker_checks(ctx)), s.worker.http_host, s.worker.http_port,
            "worker probes ([worker] http_host/http_port)", supervisor=sup, slot=slot)))
    return specs


def _worker_checks(ctx: PodContext) -> Checks:
    """A worker is ready when Redis and nsqd answer and its lease keeper runs (liveness asks nothing)."""
    nsq = ctx.settings.nsq
    return {"redis": ctx.store.ping,
            "nsqd": lambda: ctx.publisher.backlog(nsq.tasks_topic) is not None,
            "lease_keeper": lambda: find(LeaseKeeper).is_alive()}


def _with_probe_port(settings: Settings, role: str) -> Settings:
    """A worker asked for port 0 gets a free one now, so its registration can name it."""
    if role != "worker" or settings.worker.http_port:
        return settings
    with socket.socket() as sock:
        sock.bind((settings.worker.http_host, 0))
        port = sock.getsockname()[1]
    return settings.model_copy(update={"worker": settings.worker.model_copy(update={"http_port": port})})


def _worker_slot(ctx: PodContext, index: int) -> Factory:
    return lambda sup, slot: Worker.start(ctx, index, supervisor=sup, slot=slot)


def _api_app(ctx: PodContext, intake: Intake) -> Callable[[], Any]:
    """What the HttpServer serves: the API over this pod, asking whichever Manager is alive."""
    from taskherd.api.app import build_app  # here, not at the top: a worker pod boots sooner without the routes

    def manager() -> pykka.ActorRef[Any]:
        return find(Manager)

    return lambda: build_app(ctx, intake, manager)


def drain(grace_s: float) -> None:
    """Take no new work, let running tasks finish within the grace period, hand back the rest."""
    try:
        keeper = find(LeaseKeeper)
        keeper.ask(Drain(), timeout=5)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and keeper.ask(HeldCount(), timeout=5):
            time.sleep(0.1)
        left = keeper.ask(HeldCount(), timeout=5)
        if left:
            log.warning("grace period over: handing back %d running task(s)", left)
            keeper.ask(Drain(hand_back=True), timeout=10)
    except (pykka.ActorDeadError, pykka.Timeout) as exc:
        log.warning("drain incomplete: %s", exc)
