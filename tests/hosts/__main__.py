"""`python -m tests.hosts`: the hosts harness by hand (as root).

    python -m tests.hosts up [--managers 1] [--workers 2] [--redis-cluster] [--dir DIR] [--set worker.lease_ttl_s=3]
        builds the hosts, starts everything, prints the hosts and the API URL; Ctrl-C removes it all
        (--redis-cluster: Redis is a cluster of 3 masters + 3 replicas on hosts r1..r3)
    python -m tests.hosts cut|heal|pause|resume|kill HOST     a fault, from another shell
    python -m tests.hosts ls                                  our namespaces and their processes
    python -m tests.hosts clean                               remove what a killed run left
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from tests.hosts.cluster import Cluster
from tests.hosts.net import SUBNET, Host, HostsError, Network, clean_stale, have_root, ns_pids, stale


def _overrides(pairs: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        section, _, name = key.partition(".")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(section, {})[name] = value
    return out


def up(args: argparse.Namespace) -> int:
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="taskherd-hosts-"))
    cluster = Cluster(workdir, managers=args.managers, workers=args.workers, overrides=_overrides(args.set),
                      redis_cluster=args.redis_cluster)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        cluster.start()
        print(f"hosts up in {workdir} (pod logs in {workdir}/logs):\n{cluster.describe()}")
        token = f" --token {cluster.token}" if cluster.token else ""
        print(f"API: {cluster.api_url()}   e.g. .venv/bin/taskherd --api {cluster.api_url()}{token} nodes")
        print("faults: python -m tests.hosts cut|heal|pause|resume|kill HOST;  Ctrl-C removes everything",
              flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        cluster.close()
        print("hosts removed")
    return 0


def fault(args: argparse.Namespace) -> int:
    if f"thh-{args.host}" not in stale():
        print(f"no host {args.host!r}; running: {', '.join(stale()) or 'none'}", file=sys.stderr)
        return 1
    host = Host(args.host, "")
    getattr(host, args.command)()
    print(f"{args.command} {args.host}: done")
    return 0


def ls(_: argparse.Namespace) -> int:
    for ns in stale():
        print(f"{ns}: pids {' '.join(map(str, ns_pids(ns))) or '-'}")
    return 0


def clean(_: argparse.Namespace) -> int:
    net = Network().open()  # refuses while a harness runs; cleans what a killed one left
    net.close()
    removed = clean_stale()
    print(f"removed: {', '.join(removed) or 'nothing'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.hosts", description=f"taskherd on hosts in {SUBNET}.0/24")
    sub = p.add_subparsers(dest="command", required=True)
    u = sub.add_parser("up", help="build the hosts and run until Ctrl-C")
    u.add_argument("--managers", type=int, default=1)
    u.add_argument("--workers", type=int, default=2)
    u.add_argument("--redis-cluster", action="store_true", help="Redis Cluster 3+3 on hosts r1..r3")
    u.add_argument("--dir", help="work directory (default: a new temporary one)")
    u.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="a key over the ConfigMap's TOML (JSON value)")
    u.set_defaults(run=up)
    for name in ("cut", "heal", "pause", "resume", "kill"):
        f = sub.add_parser(name, help=f"{name} a host")
        f.add_argument("host")
        f.set_defaults(run=fault)
    sub.add_parser("ls").set_defaults(run=ls)
    sub.add_parser("clean").set_defaults(run=clean)
    args = p.parse_args(argv)
    if (why := have_root()) is not None:
        print(f"python -m tests.hosts: {why}", file=sys.stderr)
        return 2
    try:
        return int(args.run(args))
    except HostsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
