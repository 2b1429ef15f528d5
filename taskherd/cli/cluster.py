"""`taskherd run|up|demo|nodes`: run a pod, a local cluster, the demo; list the live pods."""

from __future__ import annotations

import argparse
import datetime
import sys
from typing import Any

from taskherd.cli.common import command, settings
from taskherd.errors import StoreError


def add_commands(sub: Any) -> None:
    command(sub, "nodes", cmd_nodes, "list live pods (reads Redis directly)")
    r = command(sub, "run", cmd_run, "run one pod until SIGTERM")
    r.add_argument("--role", choices=("manager", "worker", "all"), default="all")
    r.add_argument("--http-port", type=int, metavar="PORT",
                   help="a worker pod's probe and metrics port (default [worker].http_port; 0 picks a free one)")
    r.add_argument("--api-port", type=int, metavar="PORT", help="a manager pod's API port (default [api].port)")
    r.add_argument("--nsqd", metavar="HOST:PORT", default="",
                   help="the nsqd (TCP) this pod publishes to first (default [nsq].nsqd_tcp_address, else the "
                        "one nsqlookupd lists on this host); consumers still read as [nsq] says")
    u = command(sub, "up", cmd_up, "run a local cluster (services + pods) until Ctrl-C")
    _topology(u)
    u.add_argument("--data-dir", metavar="DIR", help="data directory (default [local].data_dir)")
    d = command(sub, "demo", cmd_demo, "crawl a generated site on a local cluster, end to end")
    d.add_argument("--pages", type=int, default=300, metavar="N")
    _topology(d)


def _topology(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, metavar="N", help="worker pods (default [local].workers)")
    p.add_argument("--managers", type=_at_least_one, default=1, metavar="N",
                   help="manager pods, with API ports [api].port, +1, ... (default 1)")
    p.add_argument("--nsqd", type=_at_least_one, default=1, metavar="M",
                   help="nsqd on consecutive port pairs from [nsq]'s (default 1); manager i publishes to "
                        "nsqd i mod M, every pod consumes from all through nsqlookupd")
    p.add_argument("--redis-cluster", action="store_true",
                   help="Redis as a cluster of 3 masters + 3 replicas on [redis].port ... port + 5 (bus ports "
                        "100 above), listed in the pods' [redis].cluster_nodes")


def _at_least_one(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1, got {text!r}")
    return n


def cmd_nodes(args: argparse.Namespace) -> int:
    from taskherd.store.state_store import StateStore

    config = settings(args)
    try:
        store = StateStore(config.redis)
        nodes = store.members.nodes()
        store.close()
    except StoreError as exc:
        where = ", ".join(config.redis.cluster_nodes) or f"{config.redis.host}:{config.redis.port}"
        print(f"error: cannot read nodes from Redis at {where}: {exc}", file=sys.stderr)
        return 1
    _table(nodes, ("id", "role", "host", "pid", "slots", "version", "started"))
    return 0


def _table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    def cell(row: dict[str, Any], col: str) -> str:
        if col == "started" and row.get(col):
            return datetime.datetime.fromtimestamp(float(row[col])).isoformat(sep=" ", timespec="seconds")
        return str(row.get(col, ""))

    cells = [[cell(r, c) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    for line in [[c.upper() for c in columns]] + cells:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip())
    if not rows:
        print("(no live nodes)", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    from taskherd.pod import run

    config = settings(args)
    if args.http_port is not None:
        config = config.model_copy(update={"worker": config.worker.model_copy(update={"http_port": args.http_port})})
    if args.api_port is not None:
        config = config.model_copy(update={"api": config.api.model_copy(update={"port": args.api_port})})
    return run(config, args.role, args.config, nsqd=args.nsqd)


def cmd_up(args: argparse.Namespace) -> int:
    from taskherd.deploy.local.cluster import up

    return up(settings(args), args.config, args.workers, args.data_dir, managers=args.managers, nsqd=args.nsqd,
              redis_cluster=args.redis_cluster)


def cmd_demo(args: argparse.Namespace) -> int:
    from taskherd.demo import main as demo_main

    config = settings(args)
    return demo_main(config, args.config, args.pages, args.workers or config.local.workers,
                     managers=args.managers, nsqd=args.nsqd, redis_cluster=args.redis_cluster)
