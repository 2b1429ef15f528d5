"""Typed, frozen settings: one model per TOML section, built once at the boundary.

Every duration is a float of seconds and every name ends in `_s`, so nothing downstream converts units.
Unknown keys are errors rather than ignored: a typo in a config file must not silently fall back to a
default (a misspelt `max_attemps` would otherwise retry forever at the default).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

RENAMED = {("manager", "default_max_attempts"): ("retry", "max_attempts"),
           ("manager", "retry_backoff_base_s"): ("retry", "backoff_base_s"),
           ("manager", "retry_backoff_max_s"): ("retry", "backoff_max_s")}
"""Keys that moved: still read from their old place, with a deprecation message naming the new one."""
DROPPED = {("manager", "analyzer_slots"): "it was never used"}
"""Keys that are accepted and ignored, with a deprecation message saying why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


TOPIC = r"^[.a-zA-Z0-9_-]{1,64}$"
"""nsqd's rule for topic names."""


DEADLETTER_HEADROOM = 65536
"""Bytes nsqd must accept beyond `max_message_bytes` (its --max-msg-size), so that a dead letter (a
header line plus the unusable message, unchanged) always fits."""


MAX_RESULT_BYTES = 1_048_576
MAX_RESULT_CEILING = 4 * MAX_RESULT_BYTES
"""The most `[worker].max_result_bytes` may be: a result is archived in one MEDIUMTEXT cell by one
statement, and MariaDB refuses either past 16 MiB (its max_allowed_packet by default), which wedged a
job for ever (its batch deferred again and again). Stored JSON's spaces and SQL's escaping at most
double a result's compact JSON: 4 MiB stays well under 16 MiB, with room for the payload."""


class NsqSettings(_Section):
    """Where NSQ lives. Producers publish over nsqd's HTTP API; consumers discover nsqd via lookupd."""

    nsqd_tcp_address: str = "127.0.0.1:14150"
    nsqd_http_addresses: tuple[str, ...] = ("127.0.0.1:14151",)
    lookupd_tcp_address: str = "127.0.0.1:14160"
    lookupd_http_addresses: tuple[str, ...] = ("127.0.0.1:14161",)
    tasks_topic: str = Field("taskherd.tasks", pattern=TOPIC)
    results_topic: str = Field("taskherd.results", pattern=TOPIC)
    deadletter_topic: str = Field("taskherd.deadletter", pattern=TOPIC)
    max_message_bytes: int = Field(1_048_576, ge=1024)
    lookupd_poll_interval_s: float = Field(5.0, gt=0)
    msg_timeout_s: float = Field(15.0, ge=1, le=900)
    """How long nsqd waits for a consumer to acknowledge before it redelivers (messages held by a
    pod that died come back after this), and how long the analyzer's claim on a batch of results lasts.
    Acknowledgement is quick: once a task's lease is held, or once a job's claimed results are archived."""


class RedisSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(16379, ge=1, le=65535)
    db: int = Field(0, ge=0)
    password: str | None = None
    socket_timeout_s: float = Field(5.0, gt=0)
    cluster_nodes: tuple[str, ...] = ()
    """`host:port` of some nodes of a Redis Cluster (any few: the client learns the rest from them).
    Set, taskherd speaks Redis Cluster and `host`, `port` and `db` are not used."""
    wait_replicas: int = Field(0, ge=0)
    """Replicas that must hold a submit's tasks before it is answered (Redis `WAIT`): replication is
    asynchronous, and a master that dies before its replica copied an acknowledged submit loses it.
    0 answers when the master has it (its AOF keeps it across a restart, not across its loss)."""
    wait_timeout_s: float = Field(1.0, gt=0)
    """How long a submit waits for `wait_replicas`; past it the submit fails (503) as not yet safe."""

    @field_validator("cluster_nodes")
    @classmethod
    def _host_ports(cls, nodes: tuple[str, ...]) -> tuple[str, ...]:
        for node in nodes:
            host, _, port = node.rpartition(":")
            if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"{node!r} is not host:port")
        return nodes


class MysqlSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(13306, ge=1, le=65535)
    user: str = "root"
    password: str = ""
    database: str = Field("taskherd", pattern=r"^[A-Za-z0-9_]+$")
    connect_timeout_s: float = Field(5.0, gt=0)


class ApiSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(18080, ge=1, le=65535)
    max_payload_bytes: int = Field(262_144, ge=1)
    max_batch: int = Field(1000, ge=1, le=10_000)


class ManagerSettings(_Section):
    default_timeout_s: float = Field(300.0, gt=0)
    analyzer_timeout_s: float = Field(60.0, gt=0)
    watcher_interval_s: float = Field(1.0, gt=0)
    republish_after_s: float = Field(10.0, gt=0)
    max_open_tasks: int = Field(1_000_000, ge=0)
    """Open tasks (pending, running, retry, analyzing) in all jobs together past which a submit is
    refused with 429 (0: no bound). Protects Redis memory: about 0.6 KB per open task, so the default
    holds under 1 GB. Children an analyzer adds are never refused and may pass it."""
    max_open_tasks_per_job: int = Field(0, ge=0)
    """The same bound for one job (0: none, so one job may fill the herd). Set it when producers share
    the herd, so one job cannot crowd out the others."""
    retain_done_s: float = Field(3600.0, ge=0)
    """How long a done job's runtime state stays in Redis (its status, a long-poll's answer) before the
    watcher removes it; its summary and tasks stay readable from MySQL through the same endpoints."""


class RetrySettings(_Section):
    """When a failed attempt is tried again (taskherd/retries.py): a task has `max_attempts` unless its
    spec or submission says otherwise; the n-th retry waits base * 2^(n-1), capped, jittered."""

    max_attempts: int = Field(3, ge=1)
    backoff_base_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(60.0, ge=0)


class WorkerSettings(_Section):
    slots: int = Field(4, ge=1, le=256)
    drain_grace_s: float = Field(20.0, ge=0)
    lease_renew_s: float = Field(1.0, gt=0)
    lease_ttl_s: float = Field(5.0, gt=0)
    recycle_after: int = Field(10_000, ge=1)
    http_host: str = "127.0.0.1"
    """Where a worker pod serves /healthz, /readyz and /metrics ("0.0.0.0" on Kubernetes)."""
    http_port: int = Field(18090, ge=0, le=65535)
    """Its port; 0 picks a free one. `taskherd up` gives its worker pods this port and the next ones."""
    max_result_bytes: int = Field(MAX_RESULT_BYTES, ge=1024, le=MAX_RESULT_CEILING)
    """The largest result an executor (or output an analyzer) may return, as compact JSON. A bigger
    one fails its task at once, not retried, and the worker reads no more than this of it (plus a
    little) into memory. Default 1 MiB, as `[nsq].max_message_bytes`, and 4 × `[api].max_payload_bytes`
    (an executor may return its payload and more)."""


Scope = Literal["read", "submit", "admin"]
SCOPES: tuple[str, ...] = ("read", "submit", "admin")
"""read: every GET; submit: submit, cancel and retry tasks and jobs; admin: register or replace executors
and analyzers, teardown. A token holds each scope it lists; none implies another."""


class TokenSettings(_Section):
    """One API token, as its name and the hex sha256 of its secret: the secret itself is never stored."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: tuple[Scope, ...] = Field(min_length=1)


class AuthSettings(_Section):
    """Who may call the API. No tokens (inline or from `tokens_file`): the API is open, and says so."""

    tokens: tuple[TokenSettings, ...] = ()
    tokens_file: str = ""
    """A TOML (`tokens = [...]`) or JSON (a list, or `{"tokens": [...]}`) file of more tokens, e.g. a
    mounted Kubernetes Secret; read by the pod that serves the API when it starts (a relative path is
    from its working directory). Setting it turns auth on, and a file with no token is an error."""

    @property
    def on(self) -> bool:
        """Whether requests need a token; decided by the config alone, so worker pods (which never
        read `tokens_file`) apply the allowlists exactly as the manager does."""
        return bool(self.tokens or self.tokens_file)

    @model_validator(mode="after")
    def _unique(self) -> AuthSettings:
        names = [t.name for t in self.tokens]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"token name(s) {', '.join(twice)} appear more than once")
        if len({t.sha256 for t in self.tokens}) < len(self.tokens):
            raise ValueError("two tokens have the same sha256 (one secret, two names)")
        return self


_MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\.?$")


class SecuritySettings(_Section):
    """What executors and analyzers may run (`taskherd.specs.admission`), checked when one is registered
    (403) and again when a worker leases a task of it. An empty list admits everything while auth is off
    and nothing of that kind while it is on."""

    exe_allow: tuple[str, ...] = ()
    """Globs over an exe's resolved argv[0] (an absolute path): `*` and `?` stay within one path
    segment, `**` crosses them (`/opt/tools/*`, `/usr/bin/python3*`, `/opt/**`)."""
    http_allow: tuple[str, ...] = ()
    """URL prefixes (`https://api.example.com/hooks/`), matched against the URL with any user:password@
    dropped; a prefix that does not end in `/`, `:`, `?`, `#`, `=` or `&` matches only up to a `/`, `?`,
    `#` or the end, so `https://a.example` admits neither `https://a.example.evil.net` nor
    `https://a.example:8443`."""
    python_allow: tuple[str, ...] = ()
    """Module prefixes: `mypkg` admits `mypkg` and `mypkg.anything`, not `mypkg2`."""

    @field_validator("exe_allow")
    @classmethod
    def _absolute(cls, globs: tuple[str, ...]) -> tuple[str, ...]:
        bad = [g for g in globs if not g.startswith("/")]
        if bad:
            raise ValueError("expected absolute path globs (argv[0] is matched once resolved)")
        return globs

    @field_validator("http_allow")
    @classmethod
    def _urls(cls, prefixes: tuple[str, ...]) -> tuple[str, ...]:
        bad = [p for p in prefixes if not re.match(r"^https?://[^/?#@]+", p)]
        if bad:
            raise ValueError("expected http:// or https:// URL prefixes with a host")
        return prefixes

    @field_validator("python_allow")
    @classmethod
    def _modules(cls, prefixes: tuple[str, ...]) -> tuple[str, ...]:
        bad = [p for p in prefixes if not _MODULE.match(p)]
        if bad:
            raise ValueError("expected dotted module names (mypkg, mypkg.tasks)")
        return prefixes


class RegistrySettings(_Section):
    heartbeat_s: float = Field(1.0, gt=0)
    node_ttl_s: float = Field(2.0, gt=0)


class SupervisorSettings(_Section):
    max_restarts: int = Field(5, ge=0)
    max_seconds: float = Field(30.0, gt=0)
    sweep_interval_s: float = Field(1.0, gt=0)


class LogSettings(_Section):
    level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$")
    format: str = Field("text", pattern=r"^(text|json)$")


class LocalSettings(_Section):
    """Only for `taskherd up`: where the local cluster keeps its data and how many workers it starts."""

    data_dir: str = ".taskherd/data"
    workers: int = Field(2, ge=0, le=64)


class Settings(_Section):
    nsq: NsqSettings = NsqSettings()
    redis: RedisSettings = RedisSettings()
    mysql: MysqlSettings = MysqlSettings()
    api: ApiSettings = ApiSettings()
    manager: ManagerSettings = ManagerSettings()
    retry: RetrySettings = RetrySettings()
    worker: WorkerSettings = WorkerSettings()
    registry: RegistrySettings = RegistrySettings()
    supervisor: SupervisorSettings = SupervisorSettings()
    log: LogSettings = LogSettings()
    local: LocalSettings = LocalSettings()
    auth: AuthSettings = AuthSettings()
    security: SecuritySettings = SecuritySettings()
