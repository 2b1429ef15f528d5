"""`taskherd up`: a whole cluster on one machine, from real services down to pods.

Services first (ServiceManager), then the manager pods and the worker pods as child processes, each
`taskherd run --role ...` with the same effective config (written into the data dir, so every pod
agrees on ports).

Several managers and nsqd (`--managers N --nsqd M`, NSQ's own topology on loopback): M nsqd on
consecutive port pairs from [nsq]'s, all registered with the one nsqlookupd; manager i (from 0) serves
its API on `api.port + i` and publishes to nsqd i mod M (`run --api-port P --nsqd ADDR`); with M > 1
the config says `nsqd_tcp_address = ""` (and lists every nsqd's HTTP address), so every pod consumes
from all nsqd through nsqlookupd, and workers publish to one of them chosen by pid. The topics are
created on every nsqd before the pods start, so nsqlookupd lists them all from the first lookup.

A Redis Cluster (`--redis-cluster`): six redis-server on [redis].port ... port + 5 (each with its cluster
bus 100 above), formed into 3 masters with a replica each; the pods' config lists them in
`[redis].cluster_nodes`. `tend()` treats them as the one service "redis": a dead node is started again
and rejoins (as a replica, when its own replica took over meanwhile).

Pod logs stream to our stdout with a prefix per pod. A pod that exits on its own
(its supervisor escalated) is restarted, as Kubernetes would, but not one that exits 0: it was asked to
stop (`taskherd teardown --all --stop`); once every pod has, `up` stops the services and exits 0.
A service that dies is restarted, up to
`SERVICE_MAX_RESTARTS` within `SERVICE_RESTART_WINDOW_S`, past which `up` stops everything and exits 1.
Stop order: pods (SIGTERM, so workers drain), then services.

One `up` per data dir: an exclusive lock on `DATA/up.lock` (holding the pid) is taken before anything
in the data dir is written, and held until everything is stopped.

Pods run `python -P -m taskherd`: `-P` keeps the working directory off `sys.path`, so `up` started in
a source checkout runs the installed package, never the source folder `taskherd/` (which lacks the
subpackages pyproject maps in from other folders, such as `taskherd.config`).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import httpx

from taskherd.config.settings import Settings
from taskherd.config.toml_out import dumps
from taskherd.deploy.local.redis_cluster import MIN_NODES, bus_port
from taskherd.deploy.local.redis_cluster import ports as cluster_ports
from taskherd.deploy.local.services import ServiceManager, nsqd_addresses
from taskherd.errors import ServiceError, StoreError
from taskherd.store.state_store import StateStore

SERVICE_MAX_RESTARTS = 5
SERVICE_RESTART_WINDOW_S = 60.0
"""A service that died this often within this window is given up on (and `up` with it)."""


class Pod:
    """One `taskherd run` child process, its output streamed with a prefix."""

    def __init__(self, name: str, role: str, config: Path, out: IO[str], http_port: int | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.name, self.role, self.config, self.out, self.http_port = name, role, config, out, http_port
        self.args = args
        """More options of `taskherd run` (`--api-port`, `--nsqd`)."""
        self.proc: subprocess.Popen[str] | None = None
        self.restarts = 0
        self.stopped = False
        """It exited 0 on its own (asked to stop), and is not restarted."""

    def start(self) -> None:
        argv = [sys.executable, "-P", "-m", "taskherd", "--config", str(self.config), "run", "--role",
                self.role, *(["--http-port", str(self.http_port)] if self.http_port is not None else []), *self.args]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        threading.Thread(target=self._stream, args=(self.proc,), daemon=True).start()

    def _stream(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.out.write(f"[{self.name}] {line}")
            self.out.flush()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def stop(self, grace_s: float) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def stop_pods(pods: list[Pod], grace_s: float) -> None:
    """SIGTERM every pod at once (workers drain in parallel), each SIGKILLed after `grace_s`."""
    threads = [threading.Thread(target=p.stop, args=(grace_s,)) for p in pods]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


class DataDirLock:
    """An exclusive `flock` on DATA/up.lock, which holds the pid of the `up` that has it.

    The kernel drops the lock when its holder dies, so a crashed `up` leaves no stale lock; the
    descriptor is not inherited, so no service or pod keeps it past `up`."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "up.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ServiceError naming the pid that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ServiceError(f"data dir {self.path.parent} is in use by another taskherd up "
                               f"(pid {holder}); stop that one or choose another --data-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = None


class Cluster:
    """Context manager: services + pods up on enter (API answering), all down on exit.

    `tend()`, called from the thread that entered, restarts services that died (see the module doc)."""

    def __init__(self, settings: Settings, config_path: str | None = None, workers: int | None = None,
                 data_dir: str | None = None, out: IO[str] | None = None, managers: int = 1, nsqd: int = 1,
                 redis_cluster: bool = False) -> None:
        self.settings = with_redis_cluster(settings) if redis_cluster else settings
        settings = self.settings
        self.data_dir = Path(data_dir or settings.local.data_dir).resolve()
        self.workers = settings.local.workers if workers is None else workers
        self.managers, self.nsqd = managers, nsqd
        self.out = out or sys.stdout
        _check_ports(settings, managers, nsqd, self.workers)
        self.services = ServiceManager(settings, self.data_dir, nsqd=nsqd)
        self.config = self.data_dir / "cluster.toml"
        self.pods: list[Pod] = []
        self._lock = DataDirLock(self.data_dir)
        self._service_restarts: dict[str, collections.deque[float]] = \
            {name: collections.deque() for name in self.services.names}
        self._stopping = threading.Event()

    @property
    def api_url(self) -> str:
        """The first manager's API."""
        return self.api_urls[0]

    @property
    def api_urls(self) -> list[str]:
        """Every manager's API, in order."""
        return [f"http://{self.settings.api.host}:{self.settings.api.port + i}" for i in range(self.managers)]

    def __enter__(self) -> Cluster:
        self._lock.acquire()  # first: a second `up` on this data dir must change nothing in it
        try:
            self.config.write_text(dumps(self._pod_settings()))
            self.services.start()
            if self.nsqd > 1:
                self._create_topics()
            self.pods = self._manager_pods()
            port = self.settings.worker.http_port  # each worker pod its own probe port (0: each a free one)
            self.pods += [Pod(f"worker-{i + 1}", "worker", self.config, self.out, port + i if port else 0)
                          for i in range(self.workers)]
            for pod in self.pods:
                pod.start()
            self._wait_ready(90)
            threading.Thread(target=self._keep_alive, daemon=True).start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _pod_settings(self) -> Settings:
        """What every pod reads: with several nsqd, none named for consumers (all through nsqlookupd)."""
        if self.nsqd == 1:
            return self.settings
        https = tuple(http for _, http in self.services.nsqd)
        nsq = self.settings.nsq.model_copy(update={"nsqd_tcp_address": "", "nsqd_http_addresses": https})
        return self.settings.model_copy(update={"nsq": nsq})

    def _manager_pods(self) -> list[Pod]:
        """Manager i: API on api.port + i, publishing to nsqd i mod M (options only where they differ)."""
        pods = []
        for i in range(self.managers):
            args: tuple[str, ...] = ("--api-port", str(self.settings.api.port + i)) if i else ()
            if self.nsqd > 1:
                args += ("--nsqd", self.services.nsqd[i % self.nsqd][0])
            pods.append(Pod("manager" if self.managers == 1 else f"manager-{i + 1}", "manager", self.config,
                            self.out, args=args))
        return pods

    def _create_topics(self) -> None:
        """Create the tasks and results topics on every nsqd, so that each registers them with
        nsqlookupd now and consumers find every nsqd at their first lookup."""
        nsq = self.settings.nsq
        for _, http in self.services.nsqd:
            for topic in (nsq.tasks_topic, nsq.results_topic):
                try:
                    httpx.post(f"http://{http}/topic/create", params={"topic": topic}, timeout=5,
                               trust_env=False).raise_for_status()
                except httpx.HTTPError as exc:
                    raise ServiceError(f"nsqd {http}: cannot create topic {topic}: {exc}") from exc

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        try:
            stop_pods(self.pods, self.settings.worker.drain_grace_s + 10)
            self.services.stop()
        finally:
            self._lock.release()

    def tend(self) -> None:
        """Restart every service that is not running, saying so; raise ServiceError (giving up) when
        one has needed `SERVICE_MAX_RESTARTS` restarts within `SERVICE_RESTART_WINDOW_S` already.

        Call it from the thread that entered: a service dies with the thread that started it."""
        for name in self.services.names:
            if self.services.pid(name) is None and not self._stopping.is_set():
                self._restart_service(name)

    def _restart_service(self, name: str) -> None:
        code = self.services.exit_code(name)  # reaps it: no zombie is left behind
        how = "is not running" if code is None else f"exited ({_exit_text(code)})"
        now = time.monotonic()
        recent = self._service_restarts[name]
        while recent and now - recent[0] > SERVICE_RESTART_WINDOW_S:
            recent.popleft()
        if len(recent) >= SERVICE_MAX_RESTARTS:
            raise ServiceError(f"{name} {how} after {len(recent)} restarts within "
                               f"{SERVICE_RESTART_WINDOW_S:.0f} s; giving up "
                               f"(see {self.services.log_path(name)})")
        recent.append(now)
        self._say(f"[up] {name} {how}; restarting ({len(recent)}/{SERVICE_MAX_RESTARTS})")
        try:
            pid = self.services.start_one(name)
        except ServiceError as exc:
            self._say(f"[up] {name} did not restart: {exc}")
            return
        self._say(f"[up] {name} restarted (pid {pid})")

    def _say(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def _wait_ready(self, timeout_s: float) -> None:
        """Until every manager's API is ready and every pod has registered (read from Redis, not from
        `GET /nodes`: with [auth] tokens that wants a token, which `up` does not hold)."""
        deadline = time.monotonic() + timeout_s
        store = StateStore(self.settings.redis)
        try:
            while time.monotonic() < deadline:
                dead = [p.name for p in self.pods if p.exited()]
                if dead:
                    raise ServiceError(f"pod(s) exited during start-up: {', '.join(dead)} (see their log lines above)")
                try:
                    if all(httpx.get(f"{url}/readyz", timeout=2).status_code == 200 for url in self.api_urls) and \
                            len(store.members.nodes()) >= len(self.pods):
                        return
                except (httpx.HTTPError, StoreError):
                    pass
                self._stopping.wait(0.2)
        finally:
            store.close()
        raise ServiceError(f"the cluster was not ready within {timeout_s:.0f} s (API {self.api_url})")

    def all_stopped(self) -> bool:
        """Every pod exited 0: each was asked to stop (a system teardown's `--stop`)."""
        return bool(self.pods) and all(p.proc is not None and p.proc.poll() == 0 for p in self.pods)

    def _keep_alive(self) -> None:
        while not self._stopping.wait(1.0):
            for pod in self.pods:
                if pod.proc is not None and pod.exited() and pod.proc.returncode == 0 and not pod.stopped:
                    pod.stopped = True
                    self._say(f"[up] pod {pod.name} stopped on request (code 0); not restarted")
                elif pod.proc is not None and pod.exited() and pod.proc.returncode != 0 and not self._stopping.is_set():
                    pod.restarts += 1
                    self._say(f"[up] pod {pod.name} exited ({_exit_text(pod.proc.returncode)}); restarting")
                    pod.start()


def with_redis_cluster(settings: Settings) -> Settings:
    """`settings` with `[redis].cluster_nodes` = the six local nodes on [redis].port ... port + 5."""
    nodes = tuple(f"127.0.0.1:{settings.redis.port + i}" for i in range(MIN_NODES))
    return settings.model_copy(update={"redis": settings.redis.model_copy(update={"cluster_nodes": nodes})})


def _check_ports(settings: Settings, managers: int, nsqd: int, workers: int) -> None:
    """ServiceError naming two parts of the cluster that would listen on one port."""
    nsq = settings.nsq
    owners: dict[int, str] = {}
    wanted = [(nsq.lookupd_tcp_address, "nsqlookupd TCP"), (nsq.lookupd_http_addresses[0], "nsqlookupd HTTP")]
    for i, (tcp, http) in enumerate(nsqd_addresses(settings, nsqd)):
        wanted += [(tcp, f"nsqd {i + 1} TCP"), (http, f"nsqd {i + 1} HTTP")]
    ports = [(int(address.rsplit(":", 1)[1]), what) for address, what in wanted]
    nodes = cluster_ports(settings.redis)
    ports += [(settings.redis.port, "redis")] if not nodes else \
        [(p, f"redis node {i + 1}") for i, p in enumerate(nodes)] + \
        [(bus_port(p), f"redis node {i + 1} bus") for i, p in enumerate(nodes)]
    ports += [(settings.mysql.port, "mysql")]
    ports += [(settings.api.port + i, f"manager {i + 1} API") for i in range(managers)]
    if settings.worker.http_port:
        ports += [(settings.worker.http_port + i, f"worker {i + 1} probes") for i in range(workers)]
    for port, what in ports:
        if port in owners:
            raise ServiceError(f"{what} and {owners[port]} would both use port {port}: choose fewer "
                               f"--nsqd/--managers, or other ports in the config")
        owners[port] = what


def _exit_text(code: int) -> str:
    """"code 1", or "code -9, SIGKILL" for a process a signal ended."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"code {code}, {signal.Signals(-code).name}"
    return f"code {code}"


def up(settings: Settings, config_path: str | None, workers: int | None, data_dir: str | None,
       managers: int = 1, nsqd: int = 1, redis_cluster: bool = False) -> int:
    """Run the local cluster until Ctrl-C or SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        with Cluster(settings, config_path, workers, data_dir, managers=managers, nsqd=nsqd,
                     redis_cluster=redis_cluster) as cluster:
            apis = ", ".join(cluster.api_urls)
            more = f"{managers} managers, {nsqd} nsqd, " if managers > 1 or nsqd > 1 else ""
            nodes = cluster.services.redis_nodes()
            more += f"a Redis Cluster on ports {nodes[0]}-{nodes[-1]}, " if nodes else ""
            print(f"[up] cluster ready: API {apis} (docs at {cluster.api_url}/docs), {more}"
                  f"{cluster.workers} worker pod(s), data in {cluster.data_dir}. Ctrl-C stops it.", flush=True)
            # Wake often: to restart a dead service, and to let a signal caught by another thread run
            # its handler.
            while not stop.wait(0.5):
                if cluster.all_stopped():
                    print("[up] every pod stopped on request (taskherd teardown --stop); stopping services ...",
                          flush=True)
                    break
                try:
                    cluster.tend()
                except ServiceError as exc:
                    print(f"[up] {exc}; stopping pods, then services ...", file=sys.stderr, flush=True)
                    return 1
            else:
                print("[up] stopping pods, then services ...", flush=True)
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("[up] stopped.", flush=True)
    return 0
