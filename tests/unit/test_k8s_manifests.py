"""The Kubernetes manifests in deploy/k8s agree with the code they deploy.

No YAML library is a dependency, so these tests read the few values they need with small text
helpers (our manifests only: block scalars, `key: value` lines, flow lists). Schema validation of every
manifest is done offline with `kubernetes-validate --strict` (see deploy/k8s/README.md); these tests
check what a schema cannot: that the embedded config is one taskherd accepts, that the commands parse,
that ports, topics and grace periods match the configuration and the code.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from taskherd.actors.worker import CHANNEL
from taskherd.cli import build_parser
from taskherd.config import Settings, from_dict, load
from taskherd.config.settings import DEADLETTER_HEADROOM
from taskherd.deploy.local.services import REDIS_DURABILITY
from taskherd.nsq.topics import task_topic
from taskherd.specs import PRIORITIES

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
CRD_FILES = {"worker-scaledobject.yaml"}
"""Objects whose kinds need a CRD (KEDA); applied apart from the kustomization."""


def text(name: str) -> str:
    return (K8S / name).read_text(encoding="utf-8")


def block(source: str, opener: str) -> str:
    """The dedented block scalar (`|`) that follows the first line matching regex `opener`."""
    lines = source.splitlines()
    start = next(i for i, line in enumerate(lines) if re.fullmatch(opener, line))
    indent = len(lines[start]) - len(lines[start].lstrip())
    body = []
    for line in lines[start + 1:]:
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        body.append(line)
    return textwrap.dedent("\n".join(body)).strip("\n") + "\n"


def scalar(source: str, key: str) -> str:
    """The value of the first `key: value` line (quotes removed)."""
    match = re.search(rf"^\s*(?:- )?{re.escape(key)}:\s*(.+?)\s*$", source, re.MULTILINE)
    assert match, f"no `{key}:` line"
    return match.group(1).strip("\"'")


def flow_list(source: str, key: str) -> list[str]:
    """The first one-line flow sequence of `key`, e.g. `args: ["--config", "F"]` (JSON in our files)."""
    match = re.search(rf"^\s*{re.escape(key)}: (\[.*\])\s*$", source, re.MULTILINE)
    assert match, f"no `{key}: [...]` line"
    return json.loads(match.group(1))


def block_list(source: str, key: str) -> list[str]:
    """The `- item` lines under the first `key:` line."""
    return [line.strip()[2:].strip("\"'") for line in block(source, rf"\s*{re.escape(key)}:").splitlines()]


@pytest.fixture(scope="module")
def settings() -> Settings:
    return from_dict(tomllib.loads(block(text("configmap.yaml"), r"\s*taskherd\.toml: \|")),
                     source="configmap.yaml")


def test_the_configmap_embeds_a_config_taskherd_accepts_pointing_at_the_services(settings: Settings) -> None:
    nsq = settings.nsq
    assert nsq.nsqd_tcp_address == ""  # consumers discover nsqd through nsqlookupd only
    assert nsq.lookupd_http_addresses == ("nsqlookupd:4161",) and nsq.lookupd_tcp_address == "nsqlookupd:4160"
    assert nsq.nsqd_http_addresses == ("nsqd-0.nsqd:4151",)
    assert (settings.redis.host, settings.redis.port) == ("redis", 6379)
    assert (settings.mysql.host, settings.mysql.port, settings.mysql.user) == ("mariadb", 3306, "taskherd")
    assert settings.api.host == "0.0.0.0"  # probes and the Service reach the pod's IP, not its loopback


def test_every_service_name_in_the_config_is_a_service_with_that_port(settings: Settings) -> None:
    def service_ports(file: str, name: str) -> set[int]:
        doc = next(d for d in text(file).split("\n---\n") if "kind: Service\n" in d)
        assert scalar(doc, "name") == name
        return {int(p) for p in re.findall(r"port: (\d+), targetPort", doc)}

    assert {4160, 4161} <= service_ports("nsqlookupd.yaml", "nsqlookupd")
    assert {4150, 4151} <= service_ports("nsqd.yaml", "nsqd")
    assert settings.redis.port in service_ports("redis.yaml", settings.redis.host)
    assert settings.mysql.port in service_ports("mariadb.yaml", settings.mysql.host)
    assert settings.api.port in service_ports("manager.yaml", "taskherd-manager")
    nsqd = text("nsqd.yaml")
    assert scalar(nsqd, "serviceName") == "nsqd" and "clusterIP: None" in nsqd  # gives nsqd-0.nsqd its name


def test_nsqd_keeps_its_queues_on_a_volume_and_announces_a_name_resolvable_from_any_namespace(settings: Settings) -> None:
    args = block_list(text("nsqd.yaml"), "args")
    assert "--data-path=/data" in args
    assert "--broadcast-address=$(POD_NAME).nsqd.$(POD_NAMESPACE).svc" in args
    assert f"--lookupd-tcp-address={settings.nsq.lookupd_tcp_address}" in args
    assert f"--max-msg-size={settings.nsq.max_message_bytes + DEADLETTER_HEADROOM}" in args
    assert "mountPath: /data" in text("nsqd.yaml") and "volumeClaimTemplates:" in text("nsqd.yaml")


def test_redis_and_mariadb_keep_their_data_on_volumes() -> None:
    redis_args = block_list(text("redis.yaml"), "args")
    assert redis_args[redis_args.index("--appendonly") + 1] == "yes"
    # fsynced before it replies, as taskherd up runs it: everysec may lose an acknowledged submit
    fsync = redis_args[redis_args.index("--appendfsync") + 1]
    assert fsync == "always" == REDIS_DURABILITY[REDIS_DURABILITY.index("--appendfsync") + 1]
    assert redis_args[redis_args.index("--dir") + 1] == "/data"
    mariadb = text("mariadb.yaml")
    assert "mountPath: /var/lib/mysql" in mariadb and "volumeClaimTemplates:" in mariadb
    assert "name: taskherd-mysql" in mariadb and "kind: Secret" in text("examples/mariadb-secret.yaml")


@pytest.mark.parametrize("name, role", [("manager.yaml", "manager"), ("worker.yaml", "worker")])
def test_pod_commands_parse_with_the_real_cli(name: str, role: str) -> None:
    # Given the container args (the image's entrypoint is `taskherd`)
    args = flow_list(text(name), "args")
    # Then taskherd's own parser accepts them as `run` with the role and the mounted config
    parsed = build_parser().parse_args(args)
    assert parsed.handler.__name__ == "cmd_run" and parsed.role == role
    assert parsed.config == "/etc/taskherd/taskherd.toml"


def test_manager_probes_and_metrics_use_the_api_port(settings: Settings) -> None:
    manager = text("manager.yaml")
    assert re.findall(r"containerPort: (\d+)", manager) == [str(settings.api.port)]
    assert scalar(manager, "prometheus.io/port") == str(settings.api.port)
    assert "httpGet: { path: /healthz, port: api }" in block(manager, r"\s*livenessProbe:")
    assert "httpGet: { path: /readyz, port: api }" in block(manager, r"\s*readinessProbe:")


def test_the_manager_init_container_fills_the_password_and_checks_the_config(tmp_path: Path) -> None:
    # Given the init container's script, pointed at a temp dir instead of its three mounts (the
    # tokens Secret's as examples/tokens-secret.yaml makes it)
    script = block(text("manager.yaml"), r"\s*- \|")
    template, rendered, auth = tmp_path / "template", tmp_path / "rendered", tmp_path / "auth"
    for folder in (template, rendered, auth):
        folder.mkdir()
    (auth / "tokens.toml").write_text(block(text("examples/tokens-secret.yaml"), r"\s*tokens\.toml: \|"))
    config = block(text("configmap.yaml"), r"\s*taskherd\.toml: \|").replace("/etc/taskherd-auth/", f"{auth}/")
    (template / "taskherd.toml").write_text(config)
    script = script.replace("/etc/taskherd-template/", f"{template}/").replace("/etc/taskherd/", f"{rendered}/")
    # When it runs with a password that needs escaping in TOML
    password = 'p"a\\ss wörd'
    done = subprocess.run([sys.executable, "-c", script], env={"MYSQL_PASSWORD": password}, capture_output=True,
                          text=True, timeout=60)
    # Then it exits 0 and the rendered config carries the password exactly
    assert done.returncode == 0, done.stderr
    assert load(rendered / "taskherd.toml").mysql.password == password
    assert "{ name: tokens, mountPath: /etc/taskherd-auth, readOnly: true }" in text("manager.yaml")


def test_worker_grace_period_covers_the_drain_and_its_probes_are_on_its_http_port(settings: Settings) -> None:
    worker = text("worker.yaml")
    grace = int(scalar(worker, "terminationGracePeriodSeconds"))
    assert grace >= settings.worker.drain_grace_s + 15, "SIGKILL would cut the drain or the hand-back short"
    port = settings.worker.http_port
    assert f"containerPort: {port}" in worker and f'prometheus.io/port: "{port}"' in worker
    assert "httpGet: { path: /healthz, port: probes }" in block(worker, r"\s*livenessProbe:")
    assert "httpGet: { path: /readyz, port: probes }" in block(worker, r"\s*readinessProbe:")
    assert settings.worker.http_host == "0.0.0.0"


def test_the_scaled_object_scales_the_workers_on_the_backlog_of_every_priority(settings: Settings) -> None:
    scaled = text("worker-scaledobject.yaml")
    assert scalar(scaled, "kind") == "ScaledObject" and scalar(scaled, "apiVersion") == "keda.sh/v1alpha1"
    assert block(scaled, r"\s*scaleTargetRef:").strip() == f"name: {scalar(text('worker.yaml'), 'name')}"
    triggers = [{k: v.strip('"') for k, v in re.findall(r'(\w+): ("[^"]*"|[^,{}\s]+)', line)}
                for line in block(scaled, r"\s*triggers:").splitlines()]
    # one trigger per priority's topic, as the publishers name them, on the workers' channel
    assert {t["topic"]: t["name"] for t in triggers} == {task_topic(settings.nsq, p): f"p{p}" for p in PRIORITIES}
    for t in triggers:
        assert t["type"] == "nsq" and t["channel"] == CHANNEL
        host, port = t["nsqLookupdHTTPAddresses"].split(":")
        assert host.split(".")[0] == "nsqlookupd" and int(port) == 4161
        assert int(t["depthThreshold"]) > 0 and int(t["activationDepthThreshold"]) >= 0
    # and the scaling modifier sums them all (the HPA alone would take the largest)
    formula = scalar(block(scaled, r"\s*scalingModifiers:"), "formula")
    assert sorted(term.strip() for term in formula.split("+")) == sorted(t["name"] for t in triggers)


def test_the_kustomization_lists_every_manifest_but_the_crd_ones() -> None:
    listed = block_list(text("kustomization.yaml"), "resources")
    assert all((K8S / name).is_file() for name in listed)
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == manifests - CRD_FILES
    assert listed[0] == "namespace.yaml"
