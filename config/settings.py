"""Typed, frozen settings: one model per TOML section, built once at the boundary.

Every duration is a float of seconds and every name ends in `_s`, so nothing downstream converts units.
Unknown keys are errors rather than ignored: a typo in a config file must not silently fall back to a
default (a misspelt `max_attemps` would otherwise retry forever at the default).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

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
    recycle_after: int = Field(1000, ge=1)
    http_host: str = "127.0.0.1"
    """Where a worker pod serves /healthz, /readyz and /metrics ("0.0.0.0" on Kubernetes)."""
    http_port: int = Field(18090, ge=0, le=65535)
    """Its port; 0 picks a free one. `taskherd up` gives its worker pods this port and the next ones."""
    max_result_bytes: int = Field(MAX_RESULT_BYTES, ge=1024, le=MAX_RESULT_CEILING)
    """The largest result an executor (or output an analyzer) may return, as compact JSON. A bigger
    one fails its task at once, not retried, and the worker reads no more than this of it (plus a
    little) into memory. Default 1 MiB, as `[nsq].max_message_bytes`, and 4 × `[api].max_payload_bytes`
    (an executor may return its payload and more)."""


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
