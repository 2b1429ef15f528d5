"""Run private nsqlookupd, nsqd, redis-server and mariadbd for a local cluster or a test session.

Why a manager of our own rather than the system services: every instance binds 127.0.0.1 on the
ports from `Settings` and keeps all of its data under one `data_dir`, so a cluster, a test session
and the machine's own databases never share a port, a socket or a file, and deleting `data_dir`
resets everything. Starting again on the same `data_dir` resumes the data (MariaDB is bootstrapped
only once; Redis replays its AOF; nsqd reloads what a clean stop wrote to disk).

Layout of `data_dir`: `nsqd/` (and `nsqd-2/`, ... with several), `redis/`, `mariadb/` (datadir, socket,
pid file) and `logs/NAME.log` (each service's stdout and stderr; MariaDB's error log is the same file).

With `[redis].cluster_nodes` set (loopback ports), the service "redis" is the group of those nodes, a
Redis Cluster (redis_cluster.py): each node in `redis-PORT/` logging to `logs/redis-PORT.log`. Starting,
stopping and killing "redis" act on every node, so a fault test's Redis outage is the whole cluster's;
`kill_redis_node` / `start_redis_node` act on one (a master's loss, its replica taking over).

Each service runs in a session of its own, so a Ctrl-C at the parent's terminal reaches the parent
only, which then stops them in order (SIGTERM in reverse start order, SIGKILL after `stop_timeout_s`).
On Linux a service also gets SIGTERM when the *thread* that started it dies (PR_SET_PDEATHSIG), so a
crashed parent leaves no service holding the ports: start them from a long-lived thread (main).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import psutil

from taskherd.config import Settings
from taskherd.config.settings import DEADLETTER_HEADROOM
from taskherd.deploy.local import binaries, redis_cluster
from taskherd.errors import ServiceError
from taskherd.store.archive import provision

log = logging.getLogger(__name__)

SERVICES = ("nsqlookupd", "nsqd", "redis", "mariadb")
"""Start order; stop runs in reverse (nsqd deregisters from lookupd before lookupd goes). With several
nsqd (`ServiceManager(nsqd=M)`), the others follow the first: `nsqd-2` ... `nsqd-M` (`service_names`)."""

_LOOPBACK = "127.0.0.1"
REDIS_DURABILITY = ("--appendonly", "yes", "--appendfsync", "always", "--save", "")
"""AOF written and fsynced before Redis replies; no RDB snapshots. With `everysec`, Redis 7.0 postpones
the AOF write (up to 2 s) while a background fsync is still running, and replies all the same: a
SIGKILL then loses writes it acknowledged (an accepted submit). tests/integration/test_services.py saw
it in 6 of 12 kills on a 6-node cluster; `always` costs ~0.15 ms per round trip on this disk, and the
bench's no-op drain did not move (README Performance)."""
_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes; keep a margin
_PR_SET_PDEATHSIG = 1
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via $http_proxy


class PortInUse(ServiceError):
    """Something already listens on a port a service needs; names the service, port and config key."""

    def __init__(self, service: str, port: int, key: str, holder: str = "") -> None:
        super().__init__(f"{service}: port {port} on {_LOOPBACK} is already in use{holder}; stop that "
                         f"process or choose another port ({key} in the config)")
        self.service, self.port = service, port


@dataclass(frozen=True, slots=True)
class _Plan:
    """How to launch one service and how to tell that it answers."""

    name: str  # process name (a service's, or `redis-PORT` for a cluster node), also its log file's name
    argv: list[str]  # full command line, binary first
    ports: tuple[tuple[int, str], ...]  # each port it binds, with the config key that chose it
    probe: Callable[[], None]  # returns when the service answers; raises otherwise
    service: str = ""  # the service it belongs to, when not `name` (a cluster node's is "redis")


def service_names(nsqd: int = 1) -> tuple[str, ...]:
    """The services of a cluster with `nsqd` nsqd, in start order."""
    return ("nsqlookupd", "nsqd", *(f"nsqd-{i + 1}" for i in range(1, nsqd)), "redis", "mariadb")


def nsqd_addresses(settings: Settings, count: int) -> list[tuple[str, str]]:
    """(TCP, HTTP) address of each of `count` nsqd: the first on the configured ports, each next one
    two ports up (14150/14151, 14152/14153, ...), all on loopback."""
    tcp, http = _port(settings.nsq.nsqd_tcp_address), _port(settings.nsq.nsqd_http_addresses[0])
    return [(f"{_LOOPBACK}:{tcp + 2 * i}", f"{_LOOPBACK}:{http + 2 * i}") for i in range(count)]


class ServiceManager:
    """Starts, probes and stops the services (nsqlookupd, `nsqd` nsqd, Redis, MariaDB); per-service
    control for fault tests.

    `die_with_parent=False` keeps services alive past the starting thread (see the module doc)."""

    def __init__(self, settings: Settings, data_dir: str | Path, *, start_timeout_s: float = 60.0,
                 stop_timeout_s: float = 30.0, die_with_parent: bool = True, nsqd: int = 1,
                 cluster_node_timeout_ms: int = 5000) -> None:
        if nsqd < 1:
            raise ServiceError(f"at least one nsqd is needed, got {nsqd}")
        self.settings = settings
        self.data_dir = Path(data_dir).absolute()
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.die_with_parent = die_with_parent
        self.names = service_names(nsqd)
        self.nsqd = nsqd_addresses(settings, nsqd)
        """(TCP, HTTP) address of each nsqd, the first being the configured one."""
        self._redis_nodes = redis_cluster.ports(settings.redis)
        self.cluster_node_timeout_ms = cluster_node_timeout_ms
        """How long a cluster node may not answer before it counts as failed and its replica takes over."""
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        """Running (or exited, not yet reaped) processes by process name (`_members`)."""

    # --- public face ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start every service not already running and wait until all answer.

        Binaries and ports are checked before anything is launched, so a missing binary or a busy
        port starts nothing. If one service fails to answer, the ones this call started are killed.
        """
        self._start(self.names)

    def stop(self) -> None:
        """Stop every service: SIGTERM in reverse start order, SIGKILL past `stop_timeout_s`."""
        for name in reversed(self.names):
            self.stop_one(name)

    def start_one(self, name: str) -> int:
        """Start `name` (a no-op if running), wait until it answers, and return its pid (a cluster's:
        its first node's, once the cluster serves)."""
        self._start([self._known(name)])
        return self._procs[self._members(name)[0]].pid

    def stop_one(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Send `sig` to `name` (every node of a cluster at once), wait up to `stop_timeout_s`, then
        SIGKILL its process group."""
        self._stop(self._members(self._known(name)), sig)

    def kill_one(self, name: str) -> None:
        """SIGKILL `name` and its process group, as a crash would; the data stays for a restart."""
        self.stop_one(name, signal.SIGKILL)

    def pid(self, name: str) -> int | None:
        """Pid of `name` while it runs, else None. A cluster runs while every node does; its pid is
        its first node's."""
        pids = [self._running(member) for member in self._members(self._known(name))]
        return pids[0] if None not in pids else None

    def pids(self, name: str) -> list[int]:
        """Every running process of `name`: one, or each node of a Redis cluster."""
        return [pid for member in self._members(self._known(name)) if (pid := self._running(member))]

    def exit_code(self, name: str) -> int | None:
        """How `name` ended (negative: the signal that killed it), once it has exited on its own (a
        cluster: its first node that did); None while it runs or when this manager does not hold it
        (never started, or stopped)."""
        for member in self._members(self._known(name)):
            proc = self._procs.get(member)
            if proc is not None and proc.poll() is not None:
                return proc.returncode
        return None

    # --- one node of a Redis cluster ----------------------------------------------------------------

    def redis_nodes(self) -> list[int]:
        """The ports of the Redis cluster's nodes (`[redis].cluster_nodes`); empty for one instance."""
        return list(self._redis_nodes)

    def redis_node_pid(self, port: int) -> int | None:
        return self._running(self._node(port))

    def start_redis_node(self, port: int) -> int:
        """Start one cluster node (a no-op if running), wait until it answers and sees the cluster
        serving, and return its pid. A node that was failed over rejoins as its successor's replica."""
        member = self._node(port)
        self._launch([self._plan(member)] if self._running(member) is None else [])
        redis_cluster.wait_ok([port], self.settings.redis.password, self.start_timeout_s,
                              expect=len(self._redis_nodes))
        return self._procs[member].pid

    def stop_redis_node(self, port: int, sig: int = signal.SIGTERM) -> None:
        self._stop([self._node(port)], sig)

    def kill_redis_node(self, port: int) -> None:
        """SIGKILL one node, as a crash would: its replica takes over after `cluster_node_timeout_ms`."""
        self._stop([self._node(port)], signal.SIGKILL)

    def redis_master_of(self, key: str) -> int:
        """The port of the master serving `key`, as the first running node sees the cluster."""
        if not self._redis_nodes:
            raise ServiceError(f"redis is one instance here, not a cluster ({redis_cluster.KEY} is empty)")
        password = self.settings.redis.password
        for port in self._redis_nodes:
            if self.redis_node_pid(port) is not None:
                return redis_cluster.master_of(port, password, key)
        raise ServiceError("redis: no cluster node is running")

    def redis_cluster_view(self, port: int) -> list[redis_cluster.Node]:
        """The cluster's nodes (roles, slots, failures) as the node at `port` sees them."""
        self._node(port)
        return redis_cluster.nodes(port, self.settings.redis.password)

    def log_path(self, name: str) -> Path:
        return self.data_dir / "logs" / f"{name}.log"

    def __enter__(self) -> ServiceManager:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- plans ------------------------------------------------------------------------------------

    def _known(self, name: str) -> str:
        if name not in self.names:
            raise ValueError(f"unknown service {name!r}; expected one of {', '.join(self.names)}")
        return name

    def _members(self, name: str) -> list[str]:
        """The processes of service `name`: itself, or each node of a Redis cluster."""
        if name == "redis" and self._redis_nodes:
            return [f"redis-{port}" for port in self._redis_nodes]
        return [name]

    def _node(self, port: int) -> str:
        if port not in self._redis_nodes:
            raise ValueError(f"{port} is not a Redis cluster node here; expected one of {self._redis_nodes}")
        return f"redis-{port}"

    def _running(self, member: str) -> int | None:
        proc = self._procs.get(member)
        return proc.pid if proc is not None and proc.poll() is None else None

    def _plan(self, name: str) -> _Plan:
        if name.startswith("redis-"):
            return self._redis_node(int(name.removeprefix("redis-")))
        if self._known(name).startswith("nsqd"):
            return self._nsqd(int(name.partition("-")[2] or 1) - 1)
        return {"nsqlookupd": self._nsqlookupd, "redis": self._redis, "mariadb": self._mariadb}[name]()

    def _nsqlookupd(self) -> _Plan:
        nsq = self.settings.nsq
        tcp, http = _port(nsq.lookupd_tcp_address), _port(nsq.lookupd_http_addresses[0])
        argv = [binaries.find("nsqlookupd"), f"--tcp-address={_LOOPBACK}:{tcp}",
                f"--http-address={_LOOPBACK}:{http}", f"--broadcast-address={_LOOPBACK}"]
        ports = ((tcp, "[nsq].lookupd_tcp_address"), (http, "[nsq].lookupd_http_addresses"))
        return _Plan("nsqlookupd", argv, ports, lambda: _http_ping(http))

    def _nsqd(self, index: int = 0) -> _Plan:
        """The nsqd number `index` (from 0): its own ports (`nsqd_addresses`) and data directory."""
        nsq = self.settings.nsq
        tcp, http = (_port(address) for address in self.nsqd[index])
        name = "nsqd" if index == 0 else f"nsqd-{index + 1}"
        data = self.data_dir / name
        data.mkdir(parents=True, exist_ok=True)
        # Messages live in memory (nsqd's default; a clean stop writes them to --data-path). NSQ is the
        # doorbell: what a SIGKILL loses, the TimeoutWatcher republishes from Redis. Writing every
        # message to the disk queue (--mem-queue-size=0) cost a fifth of the no-op drain rate.
        argv = [binaries.find("nsqd"), f"--data-path={data}",
                f"--tcp-address={_LOOPBACK}:{tcp}", f"--http-address={_LOOPBACK}:{http}",
                f"--broadcast-address={_LOOPBACK}",
                f"--lookupd-tcp-address={_LOOPBACK}:{_port(nsq.lookupd_tcp_address)}",
                f"--max-msg-size={nsq.max_message_bytes + DEADLETTER_HEADROOM}"]
        more = f" + {2 * index}" if index else ""
        ports = ((tcp, f"[nsq].nsqd_tcp_address{more}"), (http, f"[nsq].nsqd_http_addresses{more}"))
        return _Plan(name, argv, ports, lambda: _http_ping(http))

    def _redis(self) -> _Plan:
        cfg = self.settings.redis
        data = self.data_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        argv = [binaries.find("redis-server"), "--port", str(cfg.port), "--bind", _LOOPBACK,
                "--dir", str(data), *REDIS_DURABILITY, "--daemonize", "no", "--protected-mode", "no"]
        if cfg.password:
            argv += ["--requirepass", cfg.password]
        return _Plan("redis", argv, ((cfg.port, "[redis].port"),),
                     lambda: _redis_ping(cfg.port, cfg.password))

    def _redis_node(self, port: int) -> _Plan:
        """One node of the cluster: as the single instance (REDIS_DURABILITY), plus its cluster config
        (`nodes.conf`, relative to its --dir) and its bus on port + BUS_OFFSET."""
        cfg = self.settings.redis
        data = self.data_dir / f"redis-{port}"
        data.mkdir(parents=True, exist_ok=True)
        bus = redis_cluster.bus_port(port)
        argv = [binaries.find("redis-server"), "--port", str(port), "--bind", _LOOPBACK,
                "--dir", str(data), *REDIS_DURABILITY, "--daemonize", "no", "--protected-mode", "no",
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-port", str(bus),
                "--cluster-node-timeout", str(self.cluster_node_timeout_ms)]
        if cfg.password:
            argv += ["--requirepass", cfg.password, "--masterauth", cfg.password]  # replicas authenticate too
        ports = ((port, redis_cluster.KEY),
                 (bus, f"{redis_cluster.KEY}: the cluster bus of {port}, its port + {redis_cluster.BUS_OFFSET}"))
        return _Plan(f"redis-{port}", argv, ports, lambda: _redis_ping(port, cfg.password), service="redis")

    def _mariadb(self) -> _Plan:
        cfg = self.settings.mysql
        datadir = self.data_dir / "mariadb"
        # --no-defaults must come first: it keeps /etc/mysql/*.cnf (the system instance's) out.
        argv = [binaries.find("mariadbd"), "--no-defaults", f"--datadir={datadir}",
                f"--socket={self._mariadb_socket()}", f"--port={cfg.port}",
                f"--bind-address={_LOOPBACK}", f"--user={_user()}",
                f"--pid-file={datadir / 'mariadbd.pid'}", f"--log-error={self.log_path('mariadb')}",
                "--skip-name-resolve"]
        return _Plan("mariadb", argv, ((cfg.port, "[mysql].port"),), self._mariadb_ready)

    def _mariadb_socket(self) -> Path:
        """DIR/mariadb/mysqld.sock, or a short path in the temp dir if that would not fit sun_path."""
        path = self.data_dir / "mariadb" / "mysqld.sock"
        if len(str(path)) <= _MAX_SOCKET_PATH:
            return path
        digest = hashlib.sha1(str(self.data_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"taskherd-{digest}.sock"

    def _mariadb_ready(self) -> None:
        """`SELECT 1` as the bootstrap's root, then create the configured database (and user)."""
        provision(self.settings.mysql, _LOOPBACK)

    def _bootstrap_mariadb(self) -> None:
        """Run mariadb-install-db once; into a sibling directory renamed into place when done.

        The rename makes "the datadir exists" mean "bootstrap finished", so a bootstrap interrupted
        halfway is redone rather than mistaken for an initialised datadir.
        """
        datadir = self.data_dir / "mariadb"
        if datadir.is_dir():
            return
        staging = self.data_dir / "mariadb.bootstrap"
        shutil.rmtree(staging, ignore_errors=True)
        argv = [binaries.find("mariadb-install-db"), "--no-defaults", f"--datadir={staging}",
                f"--user={_user()}", "--auth-root-authentication-method=normal", "--skip-test-db"]
        logfile = self.log_path("mariadb-install-db")
        with _open_log(logfile, argv) as out:
            try:
                code = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                      cwd=self.data_dir, timeout=self.start_timeout_s).returncode
                problem = f"exit {code}" if code else ""
            except subprocess.TimeoutExpired:
                problem = f"timed out after {self.start_timeout_s:.0f} s"
        if problem:
            raise ServiceError(f"mariadb: mariadb-install-db failed ({problem}): {_why('mariadb', logfile)}")
        staging.rename(datadir)
        log.info("mariadb: bootstrapped a new datadir in %s", datadir)

    # --- launching and waiting --------------------------------------------------------------------

    def _start(self, names: Sequence[str]) -> None:
        members = [member for name in names for member in self._members(name)]
        cluster = self._redis_nodes if "redis" in names else []
        self._launch([self._plan(m) for m in members if self._running(m) is None], cluster)

    def _launch(self, plans: list[_Plan], cluster: Sequence[int] = ()) -> None:
        """Check every port, spawn, wait until each answers; then form the Redis `cluster` if it never
        was, and wait until all its nodes see it serve. On any failure, kill what this call started."""
        for plan in plans:
            self._check_ports(plan)
        try:
            for plan in plans:
                self._spawn(plan)
            for plan in plans:
                self._wait_ready(plan)
            if cluster:
                self._settle_cluster(list(cluster))
        except BaseException:
            self._stop([plan.name for plan in reversed(plans)], signal.SIGKILL)
            raise

    def _settle_cluster(self, ports: list[int]) -> None:
        password = self.settings.redis.password
        if redis_cluster.form(ports, password, self.log_path("redis-cluster"), self.start_timeout_s):
            log.info("redis: formed a cluster of %d nodes (%s)", len(ports), ", ".join(map(str, ports)))
        redis_cluster.wait_ok(ports, password, self.start_timeout_s)

    def _stop(self, members: list[str], sig: int) -> None:
        """`sig` to every process in `members` at once (a cluster's nodes then go together, with no
        failover among them), then wait for each as `stop_one` says."""
        procs = [(m, self._procs[m]) for m in members if m in self._procs]
        for _, proc in procs:
            if proc.poll() is None:
                _signal(proc.pid, sig, group=(sig == signal.SIGKILL))
        for member, proc in procs:
            if proc.poll() is None:
                try:
                    self._wait_exit(member, proc, sig)
                except subprocess.TimeoutExpired:
                    log.warning("%s (pid %d) ignored signal %d for %.0f s; sending SIGKILL",
                                member, proc.pid, sig, self.stop_timeout_s)
                    _signal(proc.pid, signal.SIGKILL, group=True)
                    proc.wait()
            # Anything the service forked (a Redis AOF rewrite child) must not outlive it.
            _signal(proc.pid, signal.SIGKILL, group=True)
            del self._procs[member]
            log.info("%s stopped (pid %d, exit %s)", member, proc.pid, proc.returncode)

    def _wait_exit(self, member: str, proc: subprocess.Popen[bytes], sig: int) -> None:
        """Wait up to `stop_timeout_s` for `proc` to exit. A cluster node is sent `sig` again each
        second: a replica that has just synced refuses a shutdown while it writes its first AOF
        ("Writing initial AOF, can't exit") and then forgets the request."""
        if not member.startswith("redis-") or sig == signal.SIGKILL:
            proc.wait(timeout=self.stop_timeout_s)
            return
        deadline = time.monotonic() + self.stop_timeout_s
        while True:
            try:
                proc.wait(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
                return
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    raise
                _signal(proc.pid, sig, group=False)

    def _check_ports(self, plan: _Plan) -> None:
        for port, key in plan.ports:
            if not port_free(port):
                raise PortInUse(plan.service or plan.name, port, key, _holder(port))

    def _spawn(self, plan: _Plan) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if plan.name == "mariadb":
            self._bootstrap_mariadb()
        with _open_log(self.log_path(plan.name), plan.argv) as out:
            self._procs[plan.name] = subprocess.Popen(
                plan.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.data_dir, start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()) if self.die_with_parent else None)

    def _wait_ready(self, plan: _Plan) -> None:
        proc = self._procs[plan.name]
        started = time.monotonic()
        deadline = started + self.start_timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ServiceError(f"{plan.name} exited with code {proc.returncode} while starting: "
                                   f"{_why(plan.name, self.log_path(plan.name))}")
            try:
                plan.probe()
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                last = exc
                time.sleep(0.05)
                continue
            log.info("%s answering on %s (pid %d) after %.1f s", plan.name,
                     "/".join(str(p) for p, _ in plan.ports), proc.pid, time.monotonic() - started)
            return
        raise ServiceError(f"{plan.name} did not answer on {_LOOPBACK}:{plan.ports[0][0]} within "
                           f"{self.start_timeout_s:.0f} s (last error: {last}): "
                           f"{_why(plan.name, self.log_path(plan.name))}")


def _port(address: str) -> int:
    """The port of a "host:port" address from the config."""
    return int(address.rsplit(":", 1)[1])


def _user() -> str:
    """MariaDB runs as whoever runs us; as root it needs `--user=root` said explicitly."""
    return pwd.getpwuid(os.geteuid()).pw_name


def _http_ping(port: int) -> None:
    with _DIRECT.open(f"http://{_LOOPBACK}:{port}/ping", timeout=1) as resp:
        body = resp.read()
    if body.strip() != b"OK":
        raise ServiceError(f"/ping answered {body[:80]!r}")


def _redis_ping(port: int, password: str | None) -> None:
    """PING (after AUTH when a password is set) in raw RESP: only taskherd.store speaks redis-py.

    One try, one second: "not yet" must come back at once (connection refused, `-LOADING` while
    Redis replays its AOF, or a wrong password as `-WRONGPASS`, all raised)."""
    with socket.create_connection((_LOOPBACK, port), timeout=1) as sock, sock.makefile("rb") as replies:
        if password:
            _resp_call(sock, replies, "AUTH", password, expect=b"+OK")
        _resp_call(sock, replies, "PING", expect=b"+PONG")


def _resp_call(sock: socket.socket, replies: BinaryIO, *args: str, expect: bytes) -> None:
    """Send one command as a RESP array of bulk strings; raise unless the reply line is `expect`."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    sock.sendall(b"".join(parts))
    reply = replies.readline(512).rstrip(b"\r\n")
    if reply != expect:
        raise ServiceError(f"redis answered {args[0]} with {reply[:120]!r}")


def port_free(port: int) -> bool:
    """Nothing listens on loopback `port` now (the services' port check; tests and the bench pick
    their ports with it too)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: a port held only by TIME_WAIT connections of a stopped service is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_LOOPBACK, port))
        except OSError:
            return False
    return True


def _holder(port: int) -> str:
    """" by pid N (name)" for the process listening on `port`, when the OS lets us see it."""
    try:
        for conn in psutil.net_connections(kind="inet"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                return f" by pid {conn.pid} ({psutil.Process(conn.pid).name()})"
    except (psutil.Error, OSError):
        pass
    return ""


def _signal(pid: int, sig: int, *, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError):
        # Each service leads its own session, so its process group id is its pid.
        (os.killpg if group else os.kill)(pid, sig)


def _die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """A preexec hook asking Linux to SIGTERM the child when its parent dies."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


@contextlib.contextmanager
def _open_log(path: Path, argv: list[str]) -> Iterator[BinaryIO]:
    """Append mode, with a header line, so restarts of a service read as one story in one file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as file:
        file.write(f"--- taskherd {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(argv)}\n".encode())
        file.flush()
        yield file


_CAUSE = {
    "nsqlookupd": re.compile(r"FATAL"),
    "nsqd": re.compile(r"FATAL"),  # "FATAL: failed to instantiate nsqd - failed to lock data-path: ..."
    "mariadb": re.compile(r"\[ERROR\]"),  # the first [ERROR] is the cause, the rest its consequences
    # Redis logs errors at warning level ("pid:M date # ..."), beside start-up chatter and advisories.
    "redis": re.compile(r"^\d+:[A-Z] .* # (?!WARNING|oO0O|Redis version=|Configuration loaded|Server init)"),
}
_ANY_CAUSE = re.compile(r"FATAL|\[ERROR\]|\bError\b")
_START_MARK = "--- taskherd "
"""The header `_open_log` writes before each start: what follows the last one is this start's log."""


def _why(name: str, path: Path) -> str:
    """The log line of the last start that says why `name` failed, else a short tail; and the path.

    The first such line for nsqd and MariaDB (what follows it is consequence), the last for Redis
    (whose warning level also carries start-up chatter)."""
    text = _read_end(path)
    if text is None:
        return f"(cannot read {path})"
    lines = text.split(_START_MARK)[-1].splitlines()[1:]
    kind = name.partition("-")[0]  # a cluster node's `redis-PORT` reads as Redis's log
    causes = [line for line in lines if _CAUSE.get(kind, _ANY_CAUSE).search(line)] or \
        [line for line in lines if _ANY_CAUSE.search(line)]
    if causes:
        cause = causes[-1] if kind == "redis" else causes[0]
        more = f"; {len(causes) - 1} more such line(s)" if len(causes) > 1 else ""
        return f"{cause.strip()}\n    (from {path}{more})"
    tail = "\n".join("    " + line for line in lines[-5:]) or "    (log is empty)"
    return f"no error line in {path}; its last lines:\n{tail}"


def _read_end(path: Path, size: int = 16384) -> str | None:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode(errors="replace")
    except OSError:
        return None


def _tail(path: Path, lines: int) -> str:
    text = _read_end(path, 8192)
    if text is None:
        return f"    (cannot read {path})"
    return "\n".join("    " + line for line in text.splitlines()[-lines:]) or "    (log is empty)"
