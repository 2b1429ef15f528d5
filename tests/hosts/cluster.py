"""What each host runs, as a Kubernetes node would, and the TOML its pods read.

- infra (`10.77.0.1`): MariaDB, nsqlookupd, Redis, on the ConfigMap's ports (3306, 4160/4161, 6379);
- each manager host: an nsqd (4150/4151, `--broadcast-address` = the host's address, registered with
  the infra nsqlookupd) and a manager pod (API on 8080);
- each worker host: a worker pod (probes on 9090), which finds every nsqd through nsqlookupd;
- with `redis_cluster=True`, Redis is a Redis Cluster of 3 masters + 3 replicas on hosts `r1..r3`
  instead of infra's one server (tests/hosts/redis_nodes.py says why so); the pods then read
  `[redis] cluster_nodes` (all six) and `wait_replicas = 1` on top of the ConfigMap's TOML.

Services are started by `taskherd.deploy.local.services.ServiceManager` itself: `HostServices` only
prefixes its argv with `ip netns exec`, binds the host's address instead of loopback, points nsqd at
the infra nsqlookupd and probes over the bridge. Pods read `tests.k8s_config.local_toml` (the
ConfigMap's TOML, service addresses substituted), with the keys of `overrides` replaced or added.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import secrets
import socket
import sys
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import pymysql

from taskherd.config import from_dict
from taskherd.config.loader import check
from taskherd.deploy.local.services import ServiceManager
from tests.hosts import redis_nodes
from tests.hosts.net import Host, HostsError, Network, Proc
from tests.k8s_config import configmap_toml, local_toml

REPO = Path(__file__).resolve().parents[2]
PORTS = {"nsqd_tcp": 4150, "nsqd_http": 4151, "lookupd_tcp": 4160, "lookupd_http": 4161, "redis": 6379,
         "mysql": 3306, "api": 8080, "worker_http": 9090}
"""The ConfigMap's ports: every host has its own address, so each service keeps its usual port."""
MYSQL_USER, MYSQL_PASSWORD, DATABASE = "taskherd", "hosts-secret", "taskherd"
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def service_settings(infra_ip: str, nsqd_ip: str, redis_ports: list[int] | None = None) -> Any:
    """Where the services are, seen from a pod whose first nsqd is on `nsqd_ip`. `redis_ports`: the
    Redis Cluster's ports, listed on loopback only for ServiceManager (it plans and checks its nodes
    from them; HostServices binds each to its host's address)."""
    return from_dict({
        "nsq": {"nsqd_tcp_address": f"{nsqd_ip}:{PORTS['nsqd_tcp']}",
                "nsqd_http_addresses": [f"{nsqd_ip}:{PORTS['nsqd_http']}"],
                "lookupd_tcp_address": f"{infra_ip}:{PORTS['lookupd_tcp']}",
                "lookupd_http_addresses": [f"{infra_ip}:{PORTS['lookupd_http']}"]},
        "redis": {"host": infra_ip, "port": PORTS["redis"],
                  "cluster_nodes": [f"127.0.0.1:{p}" for p in redis_ports or ()]},
        "mysql": {"host": infra_ip, "port": PORTS["mysql"], "user": MYSQL_USER, "password": MYSQL_PASSWORD,
                  "database": DATABASE},
        "api": {"host": "0.0.0.0", "port": PORTS["api"]},
    }, source="<hosts>")


def pod_toml(infra_ip: str, nsqd_ip: str, overrides: dict[str, dict[str, Any]] | None = None,
             tokens_file: Path | None = None) -> str:
    """The ConfigMap's TOML with service addresses (and the mounted tokens Secret) substituted, then
    each key of `overrides` replaced in its section (or added to it)."""
    services = service_settings(infra_ip, nsqd_ip)
    text = local_toml(services, tokens_file) if tokens_file else local_toml(services)
    overrides = dict(overrides or {})
    if "[security]" in text:  # with auth on, exe_allow = [] refuses every exe: admit the test's executor
        allow = sorted({sys.executable, os.path.realpath(sys.executable)})
        overrides["security"] = {"exe_allow": allow, **overrides.get("security", {})}
    for section, values in overrides.items():
        for key, value in values.items():
            text = _set_key(text, section, key, value)
    tomllib.loads(text)
    return text


def _set_key(text: str, section: str, key: str, value: Any) -> str:
    line = f"{key} = {json.dumps(value)}"
    header = re.search(rf"^\[{re.escape(section)}\]\n", text, re.M)
    if header is None:
        return text.rstrip("\n") + f"\n\n[{section}]\n{line}\n"
    end = re.search(r"^\[", text[header.end():], re.M)
    body_end = header.end() + (end.start() if end else len(text) - header.end())
    body = text[header.end():body_end]
    new_body, n = re.subn(rf"^{re.escape(key)} = .*$", line, body, count=1, flags=re.M)
    if not n:
        new_body = line + "\n" + body
    return text[:header.end()] + new_body + text[body_end:]


class HostServices(ServiceManager):
    """ServiceManager's own argv and start logic, run on one host of the network."""

    def __init__(self, host: Host, infra_ip: str, data_dir: Path, redis_ports: list[int] | None = None) -> None:
        super().__init__(service_settings(infra_ip, host.ip, redis_ports), data_dir, start_timeout_s=60,
                         cluster_node_timeout_ms=redis_nodes.NODE_TIMEOUT_MS)
        self.host, self.infra_ip = host, infra_ip

    def start_redis_node(self, port: int) -> int:
        """Launch one cluster node and wait until it answers; the Cluster, which knows every node's
        address, waits for the cluster to be whole (ServiceManager's own wait asks on loopback)."""
        member = self._node(port)
        self._launch([self._plan(member)] if self._running(member) is None else [])
        self.host.procs[member] = Proc(member, self._procs[member], self.log_path(member))
        return self._procs[member].pid

    def _plan(self, name: str) -> Any:
        plan = super()._plan(name)
        argv = [a.replace("--lookupd-tcp-address=127.0.0.1:", f"--lookupd-tcp-address={self.infra_ip}:")
                .replace("127.0.0.1", self.host.ip) for a in plan.argv]
        return dataclasses.replace(plan, argv=["ip", "netns", "exec", self.host.ns, *argv],
                                   probe=self._probe(name))

    def _check_ports(self, plan: Any) -> None:
        """A fresh namespace: its ports are free (the root namespace's are not ours to check)."""

    def _probe(self, name: str) -> Any:
        ip = self.host.ip
        if name.startswith("redis-"):
            port = int(name.removeprefix("redis-"))
            return lambda: _redis_ping(ip, port)
        if name in ("nsqd", "nsqlookupd"):
            port = PORTS["nsqd_http" if name == "nsqd" else "lookupd_http"]
            return lambda: _DIRECT.open(f"http://{ip}:{port}/ping", timeout=1).read()
        if name == "redis":
            return lambda: _redis_ping(ip, PORTS["redis"])
        return self._provision_mysql

    def _provision_mysql(self) -> None:
        """As root on the socket (root has no password there): the database and an app user for the pods."""
        conn = pymysql.connect(unix_socket=str(self._mariadb_socket()), user="root", password="",
                               connect_timeout=1, autocommit=True)
        with conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{DATABASE}`")
            cur.execute("CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY %s", (MYSQL_USER, "10.77.0.%", MYSQL_PASSWORD))
            cur.execute(f"GRANT ALL ON `{DATABASE}`.* TO %s@%s", (MYSQL_USER, "10.77.0.%"))


def _redis_ping(host: str, port: int) -> None:
    with socket.create_connection((host, port), timeout=1) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        if not sock.recv(64).startswith(b"+PONG"):
            raise HostsError("redis did not answer PONG")


class Cluster:
    """K hosts: `infra`, `m1..mM` (nsqd + manager pod), `w1..wW` (a worker pod each).

    `start()` builds the network and starts everything; `close()` removes it all (call it in a
    finally). `workdir` holds each host's data, each pod's config and log (`logs/HOST-ROLE.log`)."""

    def __init__(self, workdir: Path, managers: int = 1, workers: int = 2,
                 overrides: dict[str, dict[str, Any]] | None = None, redis_cluster: bool = False) -> None:
        self.workdir = Path(workdir)
        self.n_managers, self.n_workers = managers, workers
        self.redis_cluster = redis_cluster
        self.overrides = overrides or {}
        self.net = Network()
        self.services: dict[str, HostServices] = {}
        self.pods: dict[str, Proc] = {}
        self.token: str | None = None
        """An admin token, when the ConfigMap turns auth on (its `tokens_file`, the Secret, is ours to write)."""

    # --- building -------------------------------------------------------------------------------------
    def start(self) -> Cluster:
        try:
            self.net.open()
            infra = self.net.add("infra")
            managers = [self.net.add(f"m{i}") for i in range(1, self.n_managers + 1)]
            workers = [self.net.add(f"w{i}") for i in range(1, self.n_workers + 1)]
            if self.redis_cluster:
                self._services(infra, ("nsqlookupd", "mariadb"))
                self._redis_cluster([self.net.add(f"r{i}") for i in range(1, redis_nodes.HOSTS + 1)])
            else:
                self._services(infra, ("nsqlookupd", "redis", "mariadb"))
            for host in managers:
                self._services(host, ("nsqd",))
            for host in managers:
                self.start_pod(host, "manager")
            for host in workers:
                self.start_pod(host, "worker")
        except BaseException:
            self.close()
            raise
        return self

    def _services(self, host: Host, names: tuple[str, ...]) -> None:
        svc = self.services[host.name] = HostServices(host, self.infra.ip, self.workdir / host.name)
        for name in names:
            svc.start_one(name)
            host.procs[name] = Proc(name, svc._procs[name], svc.log_path(name))

    def _redis_cluster(self, hosts: list[Host]) -> None:
        """Every node up, then formed into 3 masters + 3 replicas (once: the cluster lives with the run)."""
        all_ports = [p for i in range(len(hosts)) for p in redis_nodes.ports_of(i)]
        for i, host in enumerate(hosts):
            svc = self.services[host.name] = HostServices(host, self.infra.ip, self.workdir / host.name, all_ports)
            for port in redis_nodes.ports_of(i):
                svc.start_redis_node(port)
        redis_nodes.create(self.redis_addresses, self.workdir / "logs" / "redis-cluster.log")
        redis_nodes.wait_ok(self.redis_addresses)

    def _tokens_file(self) -> Path | None:
        if "tokens_file" not in configmap_toml():
            return None
        path = self.workdir / "config" / "tokens.toml"
        if self.token is None:
            self.token = secrets.token_hex(16)
            path.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256(self.token.encode()).hexdigest()
            path.write_text(f'tokens = [{{ name = "hosts", scopes = ["read", "submit", "admin"], sha256 = "{digest}" }}]\n')
        return path

    def config_for(self, host: Host) -> Path:
        """The pod's TOML: a manager's first nsqd is its own; a worker's, the first manager's."""
        nsqd_host = host if host.name.startswith("m") else self.managers[0]
        path = self.workdir / "config" / f"{host.name}.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        overrides = self.overrides
        if self.redis_cluster:
            mine = {"cluster_nodes": self.redis_addresses, "wait_replicas": 1}
            overrides = {**overrides, "redis": {**mine, **overrides.get("redis", {})}}
        path.write_text(pod_toml(self.infra.ip, nsqd_host.ip, overrides, self._tokens_file()))
        _, problems = check(path)
        if problems:
            raise HostsError(f"{path}: " + "; ".join(problems))
        return path

    def start_pod(self, host: Host, role: str) -> Proc:
        """`taskherd --config FILE run --role ROLE` on `host`, advertising the host's address."""
        argv = [sys.executable, "-P", "-m", "taskherd", "--config", str(self.config_for(host)), "run", "--role", role]
        proc = host.spawn(role, argv, self.workdir / "logs" / f"{host.name}-{role}.log",
                          env={"TASKHERD_ADVERTISE_HOST": host.ip, "PYTHONUNBUFFERED": "1"}, cwd=REPO)
        self.pods[host.name] = proc
        return proc

    def close(self) -> None:
        """Pods first (workers drain), then services, then the namespaces and the bridge."""
        try:
            for host in self.net.hosts.values():  # a paused or cut host could not stop cleanly
                host.resume()
                with contextlib.suppress(HostsError):
                    host.heal()
            for proc in self.pods.values():
                if proc.popen.poll() is None:
                    proc.stop(timeout=10)
            for svc in self.services.values():
                for name in list(svc._procs):
                    if name.startswith("redis-"):
                        svc.stop_redis_node(int(name.removeprefix("redis-")))
                    else:
                        svc.stop_one(name)
        finally:
            self.net.close()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading --------------------------------------------------------------------------------------
    @property
    def infra(self) -> Host:
        return self.net.hosts["infra"]

    @property
    def managers(self) -> list[Host]:
        return [h for n, h in self.net.hosts.items() if n.startswith("m")]

    @property
    def workers(self) -> list[Host]:
        return [h for n, h in self.net.hosts.items() if n.startswith("w")]

    @property
    def redis_hosts(self) -> list[Host]:
        return [h for n, h in self.net.hosts.items() if n.startswith("r")]

    @property
    def redis_addresses(self) -> list[str]:
        """`IP:PORT` of every Redis Cluster node (the pods' `[redis] cluster_nodes`); empty without one."""
        return [f"{h.ip}:{p}" for i, h in enumerate(self.redis_hosts) for p in redis_nodes.ports_of(i)]

    def redis(self) -> Any:
        """A redis-py client of the run's Redis (a RedisCluster on a cluster), from the harness."""
        import redis
        from redis.cluster import ClusterNode, RedisCluster
        common: dict[str, Any] = {"socket_timeout": 5, "socket_connect_timeout": 5, "decode_responses": True}
        if not self.redis_cluster:
            return redis.Redis(self.infra.ip, PORTS["redis"], **common)
        return RedisCluster(startup_nodes=[ClusterNode(h, int(p)) for h, _, p in  # type: ignore[no-untyped-call]
                                           (a.rpartition(":") for a in self.redis_addresses)], **common)

    def redis_host_of(self, port: int) -> Host:
        return next(h for i, h in enumerate(self.redis_hosts) if port in redis_nodes.ports_of(i))

    def redis_master_of(self, key: str) -> redis_nodes.Node:
        """The live master serving `key` (CLUSTER KEYSLOT, then CLUSTER NODES), as a running node sees it."""
        live = [a for a in self.redis_addresses if self.redis_node_pid(int(a.rpartition(":")[2])) is not None]
        return redis_nodes.master_of(live, key)

    def redis_node_pid(self, port: int) -> int | None:
        return self.services[self.redis_host_of(port).name].redis_node_pid(port)

    def kill_redis_node(self, port: int) -> None:
        """SIGKILL one node, as a crash would (its data stays for a restart)."""
        self.services[self.redis_host_of(port).name].kill_redis_node(port)

    def start_redis_node(self, port: int, timeout: float = 60) -> None:
        """Start a node that is down, then wait until the cluster is whole again (it rejoins, a failed
        master as the replica of the one promoted in its place)."""
        self.services[self.redis_host_of(port).name].start_redis_node(port)
        redis_nodes.wait_ok(self.redis_addresses, timeout)

    def host(self, name: str) -> Host:
        return self.net.hosts[name]

    def api_url(self, host: Host | None = None) -> str:
        return f"http://{(host or self.managers[0]).ip}:{PORTS['api']}"

    def client(self, host: Host | None = None) -> Any:
        """A taskherd Client for a manager's API (with the cluster's token when auth is on)."""
        from taskherd.client import Client
        return Client(self.api_url(host), token=self.token or "")

    def settings(self) -> Any:
        """Settings to reach the services from the harness (over the bridge)."""
        return service_settings(self.infra.ip, self.managers[0].ip)

    def describe(self) -> str:
        lines = []
        for host in self.net.hosts.values():
            procs = ", ".join(f"{p.name} (pid {p.pid})" for p in host.procs.values())
            lines.append(f"  {host.name:6} {host.ip:12} ns {host.ns:10} {procs}")
        return "\n".join(lines)
