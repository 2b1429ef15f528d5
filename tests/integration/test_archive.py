"""Archive writes on real MariaDB: a batch is one transaction however many queries carry it."""

from __future__ import annotations

import pytest

from taskherd.errors import StoreError
from taskherd.store import archive as archive_module
from taskherd.store.archive import Archive, ArchivedTask


@pytest.fixture
def archive(clean):
    a = Archive(clean.settings.mysql)
    a.ensure_schema()
    yield a
    a.close()


def _task(i: int, *, state: str = "succeeded", record: str | None = '{"n": 1}', payload: str = "{}") -> ArchivedTask:
    return ArchivedTask(id=f"t{i:05d}", job="j", type="noop", state=state, attempts=1, digest="0" * 64, parent="",
                        payload=payload, result='{"ok": true}', error=None, executions="[]", created_ms=1,
                        finished_ms=2, record=record)


def test_a_batch_larger_than_one_query_is_written_whole_with_its_records(archive, monkeypatch):
    monkeypatch.setattr(archive_module, "MAX_QUERY_CHARS", 4000)  # ~12 rows a statement, many queries
    tasks = [_task(i, payload='{"pad": "' + "x" * 200 + f'", "i": {i}}}') for i in range(300)]
    archive.archive(tasks)
    assert archive.counts("j") == {"succeeded": 300, "records": 300}
    assert archive.task("t00299")["payload"] == {"pad": "x" * 200, "i": 299}
    archive.archive(tasks[:10])  # a redelivered result: the same rows again, not twice
    assert archive.counts("j") == {"succeeded": 300, "records": 300}


def test_a_failing_statement_rolls_back_the_whole_batch(archive, monkeypatch):
    """The last INSERT fails after the others ran in the same transaction: no row stays."""
    monkeypatch.setattr(archive_module, "MAX_QUERY_CHARS", 4000)
    good = [_task(i) for i in range(50)]
    bad = _task(50, state="x" * 40)  # longer than the column: strict mode refuses the statement
    with pytest.raises(StoreError, match="mysql"):
        archive.archive(good + [bad])
    assert archive.counts("j") == {"records": 0}
    archive.archive(good)  # the connection is usable again
    assert archive.counts("j") == {"succeeded": 50, "records": 50}


def test_tasks_without_records_are_one_statement(archive):
    archive.archive([_task(i, record=None, state="failed") for i in range(3)])
    assert archive.counts("j") == {"failed": 3, "records": 0}


def test_every_field_comes_back_as_written(archive):
    """Rows travel as multi-row INSERTs escaped by the client: text beyond the BMP, quotes,
    backslashes, control characters, NULLs, 64-bit integers and empty strings survive it."""
    odd = 'é中😀 "q" \\ \n\t\x00 end'
    t = ArchivedTask(id="t-odd-" + odd[:3], job="j", type="noop", state="failed", attempts=7, digest="f" * 64,
                     parent="", payload='{"s": "' + odd.replace("\\", "\\\\").replace('"', '\\"') + '"}',
                     result=None, error=odd, executions='[{"n": 1}]', created_ms=2**53 + 1,
                     finished_ms=1796655600123, record='{"r": "😀"}', retry_round=2, run_at_ms=None,
                     children='["c1"]', priority=9)
    archive.archive([t])
    cols = archive_module._TASK_COLUMNS
    row = archive._execute(lambda cur: (cur.execute("SELECT * FROM tasks WHERE id = %s", (t.id,)), cur.fetchone())[1])
    assert {c: row[c] for c in cols} == {c: getattr(t, c) for c in cols}
    rec = archive._execute(lambda cur: (cur.execute("SELECT * FROM records WHERE task_id = %s", (t.id,)),
                                        cur.fetchone())[1])
    assert (rec["job"], rec["type"], rec["record"]) == ("j", "noop", t.record)
