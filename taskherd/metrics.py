"""Prometheus metrics of a pod's own work: every family taskherd exports, in one place, so a
dashboard author finds every name here (the API's request metrics live with the API).

Manager pods serve them on the API port, worker pods on `[worker] http_port`; each pod's
registration carries its metrics URL (`GET /nodes`). Times are seconds, names follow Prometheus's
conventions. Gauges about the whole cluster (open tasks, queue depth, the oldest pending task) are
set by the active TimeoutWatcher's sweep, so only one manager exports them at a time.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TASK_OUTCOMES = ("succeeded", "failed", "retried", "timed_out", "cancelled", "dead_lettered", "fenced")
"""Values of the `outcome` label of TASKS: how a worker's execution ended (succeeded, failed,
retried, timed_out, cancelled, fenced: a superseded execution's late result) and, on the manager, a
task archived as failed (dead_lettered)."""

TASKS = Counter("taskherd_tasks_total", "Task executions and dead letters, by task type and outcome",
                ["type", "outcome"])
EXECUTION_SECONDS = Histogram("taskherd_execution_seconds", "How long executions ran, by task type", ["type"],
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900))
SLOTS = Gauge("taskherd_worker_slots", "Worker slots of this pod, busy (running an executor) or idle", ["state"])
LEASE_BATCH = Histogram("taskherd_lease_batch_size",
                        "Tasks a worker slot leased in one Redis round trip (several for a type whose runs are short)",
                        buckets=(1, 2, 4, 8))
LEASES_HELD = Gauge("taskherd_leases_held", "Leases this pod holds: running, leased ahead, or run and not yet recorded")
ACTOR_RESTARTS = Counter("taskherd_actor_restarts_total", "Actors restarted by their supervisor", ["actor"])
SERVICE_ERRORS = Counter("taskherd_service_errors_total", "Failed calls to a backing service", ["service"])
SUBMITS_REFUSED = Counter("taskherd_submits_refused_total", "Submissions refused whole, by reason", ["reason"])

ANALYZER_BATCH = Histogram(
    "taskherd_analyzer_batch_size", "Results analyzed together (one Redis read, one MySQL commit)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
ARCHIVED = Counter("taskherd_tasks_archived_total", "Tasks archived, by final state", ["state"])
OPEN_TASKS = Gauge("taskherd_open_tasks", "Tasks not yet archived, in every job (active watcher only)")
JOBS_OPEN = Gauge("taskherd_jobs_open", "Jobs with tasks not yet archived (active watcher only)")
SWEEP_FAILURES = Counter("taskherd_sweep_failures_total",
                         "Jobs the TimeoutWatcher's sweep could not sweep (logged with the job; the others were swept)")
QUEUE_DEPTH = Gauge("taskherd_queue_depth", "Messages nsqd holds per topic (active watcher only)", ["topic"])
OLDEST_PENDING_AGE = Gauge("taskherd_oldest_pending_age_seconds",
                           "Age of the longest-waiting pending task: the stuck-queue signal (active watcher only)")
