"""Intake on real Redis, MariaDB and nsqd: what is written, and what is published, for a batch."""

from __future__ import annotations

import pytest

from taskherd.intake import Intake, InvalidTask, Submission
from taskherd.store.archive import Archive
from taskherd.store.state_store import StateStore
from taskherd.store.task_queue import TaskQueue
from tests.helpers import topic_depth


@pytest.fixture
def intake(clean):
    s = clean.settings
    store, archive = StateStore(s.redis), Archive(s.mysql)
    archive.ensure_schema()
    store.register("executor", "t", {"id": "t", "kind": "python", "target": "m:f"}, replace=False)
    return Intake(s, store, archive, TaskQueue(s.nsq))


def test_an_id_twice_in_one_batch_is_created_once_and_published_once(intake):
    """An analyzer whose page links twice to one URL: one task, one message (it was once neither)."""
    subs = [Submission(type="t", job="j", payload={"u": 1}, id="same"),
            Submission(type="t", job="j", payload={"u": 1}, id="same"),
            Submission(type="t", job="j", payload={"u": 2}, id="same")]
    assert [a.status for a in intake.submit(subs)] == ["created", "exists", "conflict"]
    assert topic_depth(intake.settings, intake.settings.nsq.tasks_topic) == 1
    assert intake.store.job("j")["counts"]["pending"] == 1


def test_an_invalid_task_rejects_the_whole_batch_and_writes_nothing(intake):
    before = intake.store.redis.dbsize()
    with pytest.raises(InvalidTask) as bad:
        intake.submit([Submission(type="t", job="j", payload={}, id="ok"),
                       Submission(type="nope", job="j", payload={}, id="bad")])
    assert bad.value.field == "tasks[1].type"
    assert intake.store.redis.dbsize() == before
    assert topic_depth(intake.settings, intake.settings.nsq.tasks_topic) is None
