"""A Redis Cluster master SIGKILLed mid-job: its replica takes over, and nothing acknowledged is lost.

Runs only on a cluster (`TASKHERD_TEST_REDIS=cluster`, the second pass of `make test`; marked
`cluster_only`, which the single-instance pass deselects). Replication is asynchronous, so the pods run
with `[redis].wait_replicas = 1` (`tests.faults.harness.fault_settings` on a cluster): a submit is
answered only once a replica holds its tasks. What the master had not yet passed on of the rest (a
lease, a result) is the same as a lease or result lost with a worker: the lease lapses, the task runs
again, its one row in MySQL is written by whichever run finished last."""

from __future__ import annotations

import time

import pytest

from taskherd.deploy.local.services import ServiceError
from taskherd.store import keys
from tests.helpers import wait_until

pytestmark = pytest.mark.cluster_only

N = 200


def test_16_redis_master_sigkill_failover(make_cluster, case):
    # Given a job mid-way on a Redis Cluster, and more tasks submitted right before the fault
    cluster = make_cluster()
    services = cluster.services.manager
    run = case.start(cluster)
    run.submit(run.healthy(N))
    run.wait_archived(0.3)
    master = services.redis_master_of(keys.job_meta(run.job))
    run.submit(run.healthy(50, prefix="late"))
    # When the master holding the job is SIGKILLed
    run.fault()
    services.kill_redis_node(master)
    killed = time.monotonic()
    wait_until(lambda: services.redis_master_of(keys.job_meta(run.job)) != master, timeout=60,
               ignore=(OSError, ServiceError), message=f"a replica of :{master} promoted")
    promoted = services.redis_master_of(keys.job_meta(run.job))
    took = time.monotonic() - killed
    run.hold(2.0)
    services.start_redis_node(master)  # it rejoins as the new master's replica
    run.healed()
    case.notes.append(f"master :{master} SIGKILL; :{promoted} promoted after {took:.1f} s")
    # Then the job completes: every acknowledged task ran and was archived once, none doubled
    case.finish()
    case.check(not cluster.unexpected_exits(), "every pod still runs")
    case.assert_ok()
