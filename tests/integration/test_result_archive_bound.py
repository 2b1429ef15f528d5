"""Why results are bounded, on real MariaDB: a result's archive row is refused past 16 MiB (the
server's max_allowed_packet), and the analyzer, taking that for a passing MySQL fault, deferred its
job's batch again and again, for ever. The bound's ceiling is what still archives in the worst case."""

from __future__ import annotations

import json

import pytest

from taskherd.config.settings import MAX_RESULT_CEILING
from taskherd.errors import StoreError
from taskherd.runners.outcome import result_size
from taskherd.store.archive import Archive, ArchivedTask


@pytest.fixture
def archive(clean):
    a = Archive(clean.settings.mysql)
    a.ensure_schema()
    yield a
    a.close()


def _task(task_id: str, result: dict) -> ArchivedTask:
    return ArchivedTask(id=task_id, job="jr", type="big", state="succeeded", attempts=1, digest="0" * 64, parent="",
                        payload="{}", result=json.dumps(result), error=None, executions="[]", created_ms=1,
                        finished_ms=2, record=None)


def test_mariadb_refuses_the_archive_row_of_a_17_mib_result(archive):
    with pytest.raises(StoreError, match="mysql"):
        archive.archive([_task("too-big", {"blob": "x" * (17 << 20)})])


def test_a_result_at_the_ceiling_archives_even_when_every_character_needs_escaping(archive):
    quotes = {"blob": '"' * ((MAX_RESULT_CEILING - len('{"blob":""}')) // 2)}  # each is \" in JSON, \\\" in SQL
    assert MAX_RESULT_CEILING - 1 <= result_size(quotes) <= MAX_RESULT_CEILING
    archive.archive([_task("at-ceiling", quotes)])
    assert archive.task("at-ceiling")["result"] == quotes
