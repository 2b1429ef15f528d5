"""Intake on real Redis, MariaDB and nsqd: what is written, and what is published, for a batch."""

from __future__ import annotations

import uuid

import pytest

from taskherd.intake import Intake, InvalidTask, Submission
from taskherd.nsq.publisher import Publisher
from taskherd.store import keys
from taskherd.store.archive import Archive
from taskherd.store.state_store import StateStore
from tests.helpers import mysql_connect, redis_client, topic_depth


@pytest.fixture
def intake(clean):
    s = clean.settings
    store, archive = StateStore(s.redis), Archive(s.mysql)
    archive.ensure_schema()
    store.register("executor", "t", {"id": "t", "kind": "python", "target": "m:f"}, replace=False)
    return Intake(s, store, archive, Publisher(s.nsq))


def test_an_id_twice_in_one_batch_is_created_once_and_published_once(intake):
    """An analyzer whose page links twice to one URL: one task, one message (it was once neither)."""
    subs = [Submission(type="t", job="j", payload={"u": 1}, id="same"),
            Submission(type="t", job="j", payload={"u": 1}, id="same"),
            Submission(type="t", job="j", payload={"u": 2}, id="same")]
    assert [a.status for a in intake.submit(subs)] == ["created", "exists", "conflict"]
    assert topic_depth(intake.settings, intake.settings.nsq.tasks_topic) == 1
    assert intake.store.job("j")["counts"]["pending"] == 1


def test_an_invalid_task_rejects_the_whole_batch_and_writes_nothing(intake):
    everything = redis_client(intake.settings)  # every master of a cluster
    before = everything.dbsize()
    with pytest.raises(InvalidTask) as bad:
        intake.submit([Submission(type="t", job="j", payload={}, id="ok"),
                       Submission(type="nope", job="j", payload={}, id="bad")])
    assert bad.value.field == "tasks[1].type"
    assert everything.dbsize() == before
    assert topic_depth(intake.settings, intake.settings.nsq.tasks_topic) is None


def _mgets(store: StateStore) -> int:
    return int(store.redis.info("commandstats").get("cmdstat_mget", {}).get("calls", 0))


def test_specs_are_read_once_and_a_spec_replaced_elsewhere_is_seen_by_the_next_submit(intake):
    """The Intake keeps the specs it read; a replica's registration moves the specs version, and the
    next batch, refused under the old version, is prepared again from the new spec."""
    intake.submit([Submission(type="t", job="j", payload={}, id="a")])
    reads = _mgets(intake.store)
    intake.submit([Submission(type="t", job="j", payload={}, id="b")])
    assert _mgets(intake.store) == reads  # no round trip for specs
    other = StateStore(intake.settings.redis)  # another manager replica registers
    assert other.register("executor", "t", {"id": "t", "kind": "python", "target": "m:f", "timeout_s": 77},
                          replace=True) == "replaced"
    assert [a.status for a in intake.submit([Submission(type="t", job="j", payload={}, id="c")])] == ["created"]
    timeouts = {tid: intake.store.redis.hget(keys.task("j", tid), "timeout_s") for tid in ("a", "b", "c")}
    assert float(timeouts["c"]) == 77 and float(timeouts["a"]) == float(timeouts["b"]) == 300
    assert topic_depth(intake.settings, intake.settings.nsq.tasks_topic) == 3


def _archive_selects(settings) -> int:
    conn = mysql_connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS LIKE 'Com_select'")
            return int(cur.fetchone()[1])
    finally:
        conn.close()


def test_only_a_given_id_is_looked_up_in_the_archive(intake):
    """An id intake makes (none given) cannot be archived yet: its submit skips the MySQL round trip."""
    intake.submit([Submission(type="t", job="j", payload={}, id="warm")])
    before = _archive_selects(intake.settings)
    [made] = intake.submit([Submission(type="t", job="j", payload={})])
    minted = uuid.uuid4().hex  # as POST /tasks/run makes one, to watch it before it exists
    [theirs] = intake.submit([Submission(type="t", job="j", payload={}, id=minted, minted=True)])
    assert (made.status, theirs.status) == ("created", "created")
    assert _archive_selects(intake.settings) == before
    intake.submit([Submission(type="t", job="j", payload={}, id="given")])
    assert _archive_selects(intake.settings) == before + 1
