"""The taskherd TOML of deploy/k8s/configmap.yaml, verbatim but for the service addresses, which
are substituted for services running here (loopback, a test's ports, or a namespace host's address),
and the path the tokens Secret is mounted at.

So what runs in a test is the manifests' own configuration: `nsqd_tcp_address = ""` (nsqd found
through nsqlookupd), auth on with the Secret's tokens, the allowlists, JSON logs, the worker slots
and timings the manifests ship."""

from __future__ import annotations

import json
import re
from pathlib import Path

from taskherd.config import Settings

CONFIGMAP = Path(__file__).resolve().parents[1] / "deploy" / "k8s" / "configmap.yaml"


def configmap_toml() -> str:
    """The `taskherd.toml` key of the ConfigMap, dedented."""
    lines = CONFIGMAP.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "taskherd.toml: |") + 1
    indent = len(lines[start]) - len(lines[start].lstrip())
    body = []
    for line in lines[start:]:
        if line.strip() and len(line) - len(line.lstrip()) < indent:
            break
        body.append(line[indent:])
    return "\n".join(body).rstrip() + "\n"


def local_toml(services: Settings, tokens_file: Path | None = None) -> str:
    """The ConfigMap's TOML with every service address replaced by those of `services` (a Redis
    Cluster's nodes added when it is one), and the tokens file (the mounted Secret) by `tokens_file`
    when given; nothing else."""
    nsq, redis, mysql, api = services.nsq, services.redis, services.mysql, services.api
    replacements = [
        (r'nsqd_http_addresses = \[.*\]', f'nsqd_http_addresses = ["{nsq.nsqd_http_addresses[0]}"]'),
        (r'lookupd_tcp_address = ".*"', f'lookupd_tcp_address = "{nsq.lookupd_tcp_address}"'),
        (r'lookupd_http_addresses = \[.*\]', f'lookupd_http_addresses = ["{nsq.lookupd_http_addresses[0]}"]'),
        (r'(\[redis\]\nhost = )".*"\nport = \d+', rf'\1"{redis.host}"\nport = {redis.port}' + _cluster(services)),
        (r'(\[mysql\]\nhost = )".*"\nport = \d+\nuser = ".*"\npassword = ".*"\ndatabase = ".*"',
         rf'\1"{mysql.host}"\nport = {mysql.port}\nuser = "{mysql.user}"\npassword = "{mysql.password}"\n'
         rf'database = "{mysql.database}"'),
        (r'(\[api\]\nhost = )".*"\nport = \d+', rf'\1"{api.host}"\nport = {api.port}'),
        *([(r'tokens_file = ".*"', f'tokens_file = "{tokens_file}"')] if tokens_file else []),
    ]
    text = configmap_toml()
    for pattern, replacement in replacements:
        text, n = re.subn(pattern, replacement, text)
        assert n == 1, f"configmap.yaml no longer has {pattern!r}: update tests/k8s_config.py"
    return text


def _cluster(services: Settings) -> str:
    """On a Redis Cluster, the keys an operator adds to the ConfigMap's [redis] (README, "Redis Cluster")."""
    nodes = services.redis.cluster_nodes
    return f"\ncluster_nodes = {json.dumps(list(nodes))}\nwait_replicas = 1" if nodes else ""
