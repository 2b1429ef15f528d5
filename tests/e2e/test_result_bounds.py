"""Bounded results end to end ([worker].max_result_bytes, 1 MiB by default): a result or an analyzer
output over the bound fails its task at once, the other tasks of the job succeed, and the job is done.

Without the bound, a result of more than 16 MiB is taken by the worker and by Redis, but MariaDB refuses
its archive row (max_allowed_packet, 16 MiB): the analyzer defers the job's whole batch, claims it
again a second later, and is refused again, for ever; the job never reads as done.
"""

from __future__ import annotations

from taskherd.client import ClientError
from tests.helpers import wait_until

FUNCS = "tests.e2e.bounds_funcs"
HUGE = 20 * 1024 * 1024
"""Over MariaDB's 16 MiB packet: the size that wedged a job before results were bounded."""
LIMIT = "[worker].max_result_bytes = 1048576"


def done(cluster, job: str, timeout: float = 60) -> dict:
    return wait_until(lambda: (j := cluster.client.job(job)) and j["done"] and j, timeout=timeout,
                      ignore=(ClientError,), message=f"job {job} done")


def test_an_oversize_result_fails_its_task_at_once_and_the_job_is_done(cluster):
    c = cluster.client
    c.add_executor("sized", {"kind": "python", "target": f"{FUNCS}:sized", "max_attempts": 3})
    c.submit([{"id": f"small-{i}", "type": "sized", "job": "jb", "payload": {"bytes": 100}} for i in range(4)]
             + [{"id": "huge", "type": "sized", "job": "jb", "payload": {"bytes": HUGE}}])
    status = done(cluster, "jb")
    assert status["counts"]["succeeded"] == 4 and status["counts"]["failed"] == 1
    huge = c.task("huge")
    assert huge["state"] == "failed" and huge["attempts"] == 1  # not retried
    assert huge["error"] == f"result of {HUGE} bytes exceeds {LIMIT}"
    assert c.task("small-0")["state"] == "succeeded"


def test_an_oversize_analyzer_output_fails_its_task_and_the_job_is_done(cluster):
    c = cluster.client
    c.add_executor("rec", {"kind": "python", "target": f"{FUNCS}:sized"})
    c.add_analyzer("rec", {"kind": "python", "target": f"{FUNCS}:sized_record"})
    c.submit([{"id": "rec-ok", "type": "rec", "job": "ja", "payload": {"bytes": 100, "record_bytes": 100}},
              {"id": "rec-big", "type": "rec", "job": "ja", "payload": {"bytes": 100, "record_bytes": HUGE}}])
    status = done(cluster, "ja")
    assert status["counts"]["succeeded"] == 1 and status["counts"]["failed"] == 1
    big = c.task("rec-big")
    output = HUGE + len('{"children":[],"record":}')
    assert big["state"] == "failed"
    assert big["error"] == f"analyzer failed: result of {output} bytes exceeds {LIMIT}"
    assert c.task("rec-ok")["state"] == "succeeded"
