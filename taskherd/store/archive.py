"""Archive: the one protocol taskherd speaks to MySQL/MariaDB, where finished work lives for good.

Rows are unique on task id and upserted, so archiving the same task twice (a result redelivered after
a crash between the MySQL commit and the Redis cleanup) leaves one row. Each thread gets
its own connection: pymysql connections are not thread-safe.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import pymysql
import pymysql.cursors
from pymysql.constants import CLIENT

from taskherd.config.settings import MysqlSettings
from taskherd.errors import StoreError
from taskherd.metrics import SERVICE_ERRORS

T = TypeVar("T")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS tasks (
        id VARCHAR(255) NOT NULL PRIMARY KEY,
        job VARCHAR(128) NOT NULL,
        type VARCHAR(128) NOT NULL,
        state VARCHAR(16) NOT NULL,
        attempts INT NOT NULL,
        digest CHAR(64) NOT NULL,
        parent VARCHAR(255) NOT NULL DEFAULT '',
        payload MEDIUMTEXT NOT NULL,
        result MEDIUMTEXT NULL,
        error TEXT NULL,
        executions MEDIUMTEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        finished_ms BIGINT NOT NULL,
        retry_round INT NOT NULL DEFAULT 0,
        KEY job_state (job, state, id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
    """CREATE TABLE IF NOT EXISTS records (
        task_id VARCHAR(255) NOT NULL PRIMARY KEY,
        job VARCHAR(128) NOT NULL,
        type VARCHAR(128) NOT NULL,
        record MEDIUMTEXT NOT NULL,
        KEY job (job)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
    """CREATE TABLE IF NOT EXISTS jobs (
        job VARCHAR(128) NOT NULL PRIMARY KEY,
        total INT NOT NULL,
        succeeded INT NOT NULL,
        failed INT NOT NULL,
        cancelled INT NOT NULL,
        created_ms BIGINT NULL,
        finished_ms BIGINT NULL
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
    # Tables made before retry rounds were kept (0.1.1) gain the column; every row so far is round 0.
    "ALTER TABLE tasks ADD COLUMN IF NOT EXISTS retry_round INT NOT NULL DEFAULT 0",
    # Delayed tasks keep the time they were due: NULL for the others, and for every row made before.
    "ALTER TABLE tasks ADD COLUMN IF NOT EXISTS run_at_ms BIGINT NULL",
    # The ids a task's analysis submitted (its children, its join task): NULL for a leaf, and for every
    # row made before; the parent -> children link, where a child's row only says its parent.
    "ALTER TABLE tasks ADD COLUMN IF NOT EXISTS children MEDIUMTEXT NULL",
    # The priority it ran at (0-9): NULL for rows made before priorities.
    "ALTER TABLE tasks ADD COLUMN IF NOT EXISTS priority TINYINT NULL",
)

_TASK_COLUMNS = ("id", "job", "type", "state", "attempts", "digest", "parent", "payload", "result", "error",
                 "executions", "created_ms", "finished_ms", "retry_round", "run_at_ms", "children",
                 "priority")
_UPSERT_TASKS = (f"INSERT INTO tasks ({', '.join(_TASK_COLUMNS)}) VALUES {{}} ON DUPLICATE KEY UPDATE "
                 + ", ".join(f"{c} = VALUES({c})" for c in _TASK_COLUMNS if c != "id"))
_UPSERT_RECORDS = ("INSERT INTO records (task_id, job, type, record) VALUES {} "
                   "ON DUPLICATE KEY UPDATE record = VALUES(record)")
MAX_QUERY_CHARS = 1 << 20
"""Rows per INSERT, and statements per query, stop short of this (pymysql's executemany bound too): at
most 4 bytes a character in utf8mb4, well under the server's max_allowed_packet (16 MiB by default)."""


@dataclass(frozen=True, slots=True)
class ArchivedTask:
    """One finished task as it is kept for good."""

    id: str
    job: str
    type: str
    state: str
    attempts: int
    digest: str
    parent: str
    payload: str
    result: str | None
    error: str | None
    executions: str
    created_ms: int
    finished_ms: int
    record: str | None = None
    """The analyzer's record (JSON), when it gave one."""
    retry_round: int = 0
    """How often the task was retried as a dead letter; `executions` holds every round's, each with its `round`."""
    run_at_ms: int | None = None
    """A delayed task's due time (`delay_s`, `run_at`), Unix ms on Redis's clock."""
    children: str | None = None
    """JSON list of the ids its analysis submitted (children, then a join task), or None for none."""
    priority: int | None = None
    """The priority it ran at (0-9)."""


class Archive:
    """MySQL tables `tasks`, `records` and `jobs`. Thread-safe: one connection per thread."""

    def __init__(self, settings: MysqlSettings) -> None:
        self._settings = settings
        self._local = threading.local()

    def _conn(self) -> pymysql.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            s = self._settings
            try:
                conn = pymysql.connect(host=s.host, port=s.port, user=s.user, password=s.password,
                                       database=s.database, connect_timeout=s.connect_timeout_s,
                                       read_timeout=60, write_timeout=60, autocommit=True, charset="utf8mb4",
                                       cursorclass=pymysql.cursors.DictCursor,
                                       client_flag=CLIENT.MULTI_STATEMENTS)
            except pymysql.MySQLError as exc:
                SERVICE_ERRORS.labels("mysql").inc()
                raise StoreError(f"mysql connect {s.host}:{s.port}: {exc}") from exc
            self._local.conn = conn
        return conn

    def _execute(self, fn: Callable[[Any], T]) -> T:
        """Run fn(cursor) in autocommit (a read never sees an old snapshot; a write that needs a
        transaction sends its own BEGIN and COMMIT, see `archive`); on a lost connection, reconnect
        once and retry."""
        for attempt in (1, 2):
            conn = self._conn()
            try:
                with conn.cursor() as cur:
                    return fn(cur)
            except pymysql.err.OperationalError as exc:
                SERVICE_ERRORS.labels("mysql").inc()
                self._drop()
                if attempt == 2:
                    raise StoreError(f"mysql: {exc}") from exc
            except pymysql.MySQLError as exc:
                SERVICE_ERRORS.labels("mysql").inc()
                self._drop()
                raise StoreError(f"mysql: {exc}") from exc
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - the connection is already broken; closing is best effort
                pass

    def close(self) -> None:
        self._drop()

    def ensure_schema(self) -> None:
        self._execute(lambda cur: [cur.execute(sql) for sql in _SCHEMA])  # DDL: each commits on its own

    def archive(self, tasks: list[ArchivedTask]) -> None:
        """Upsert finished tasks and their records in one transaction, sent as one multi-statement
        query (BEGIN; INSERTs; COMMIT: one round trip instead of four) unless it would exceed
        MAX_QUERY_CHARS. A repeat writes the same row again (a redelivered result); a retried dead
        letter overwrites its failed row when it ends again, its executions those of every round."""
        if not tasks:
            return
        task_rows = [tuple(getattr(t, c) for c in _TASK_COLUMNS) for t in tasks]
        record_rows = [(t.id, t.job, t.type, t.record) for t in tasks if t.record is not None]

        def write(cur: Any) -> None:
            statements = (_inserts(cur, _UPSERT_TASKS, task_rows)
                          + (_inserts(cur, _UPSERT_RECORDS, record_rows) if record_rows else []))
            if len(statements) > 1:  # one statement alone is a transaction already
                statements = ["BEGIN", *statements, "COMMIT"]
            for query in _packed(statements):
                cur.execute(query)
                while cur.nextset():  # read every statement's reply: an error surfaces here
                    pass

        self._execute(write)

    def known(self, ids: list[str]) -> dict[str, tuple[str, str]]:
        """Archived ids among `ids`, each with (job, payload digest)."""
        if not ids:
            return {}
        marks = ", ".join(["%s"] * len(ids))

        def read(cur: Any) -> list[dict[str, Any]]:
            cur.execute(f"SELECT id, job, digest FROM tasks WHERE id IN ({marks})", ids)
            return _rows(cur)

        return {r["id"]: (r["job"], r["digest"]) for r in self._execute(read)}

    def task(self, task_id: str) -> dict[str, Any] | None:
        def read(cur: Any) -> dict[str, Any] | None:
            cur.execute("SELECT t.*, r.record FROM tasks t LEFT JOIN records r ON r.task_id = t.id WHERE t.id = %s",
                        (task_id,))
            return _row(cur)

        row = self._execute(read)
        if row is None:
            return None
        for field in ("payload", "result", "executions", "record", "children"):
            if row.get(field):
                row[field] = json.loads(row[field])
        return row

    def task_ids(self, job: str | None, state: str, after: str, limit: int) -> list[str]:
        """Archived ids in a final state, in id order after `after` (of one job, or of every job)."""
        where, args = ("job = %s AND ", [job]) if job is not None else ("", [])

        def read(cur: Any) -> list[dict[str, Any]]:
            cur.execute(f"SELECT id FROM tasks WHERE {where}state = %s AND id > %s ORDER BY id LIMIT %s",
                        (*args, state, after, limit))
            return _rows(cur)

        return [r["id"] for r in self._execute(read)]

    def dead(self, ids: list[str]) -> list[dict[str, Any]]:
        """Archived rows among `ids` that ended failed or cancelled: what `task retry` may requeue
        (with their executions, JSON text, and retry round, carried into the next round)."""
        if not ids:
            return []
        marks = ", ".join(["%s"] * len(ids))

        def read(cur: Any) -> list[dict[str, Any]]:
            cur.execute(f"SELECT id, job, type, state, payload, executions, retry_round FROM tasks WHERE id IN ({marks}) "
                        "AND state IN ('failed', 'cancelled')", ids)
            return _rows(cur)

        return self._execute(read)

    def counts(self, job: str) -> dict[str, int]:
        """Archived tasks of a job by final state, and its records (for cross-checks and summaries)."""
        def read(cur: Any) -> dict[str, int]:
            cur.execute("SELECT state, COUNT(*) AS n FROM tasks WHERE job = %s GROUP BY state", (job,))
            out = {r["state"]: int(r["n"]) for r in cur.fetchall()}
            cur.execute("SELECT COUNT(*) AS n FROM records WHERE job = %s", (job,))
            out["records"] = int(cur.fetchone()["n"])
            return out

        return self._execute(read)

    def records(self, job: str, limit: int = 100_000) -> list[dict[str, Any]]:
        def read(cur: Any) -> list[dict[str, Any]]:
            cur.execute("SELECT task_id, type, record FROM records WHERE job = %s LIMIT %s", (job, limit))
            return _rows(cur)

        return [{**r, "record": json.loads(r["record"])} for r in self._execute(read)]

    def save_job(self, job: str, summary: dict[str, Any]) -> None:
        row = (job, summary["total"], summary["succeeded"], summary["failed"], summary["cancelled"],
               summary.get("created_ms"), summary.get("finished_ms"))
        self._execute(lambda cur: cur.execute(
            "REPLACE INTO jobs (job, total, succeeded, failed, cancelled, created_ms, finished_ms) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)", row))

    def jobs_after(self, after: str, limit: int) -> list[dict[str, Any]]:
        """Summaries of done jobs whose names sort after `after`, in name order."""
        def read(cur: Any) -> list[dict[str, Any]]:
            cur.execute("SELECT * FROM jobs WHERE job > %s ORDER BY job LIMIT %s", (after, limit))
            return _rows(cur)

        return self._execute(read)

    def job(self, job: str) -> dict[str, Any] | None:
        def read(cur: Any) -> dict[str, Any] | None:
            cur.execute("SELECT * FROM jobs WHERE job = %s", (job,))
            return _row(cur)

        return self._execute(read)


def _inserts(cur: Any, template: str, rows: list[tuple[Any, ...]]) -> list[str]:
    """Multi-row INSERTs of `rows` (escaped by the connection), each under MAX_QUERY_CHARS."""
    marks = "(" + ", ".join(["%s"] * len(rows[0])) + ")"
    out: list[str] = []
    values: list[str] = []
    size = len(template)
    for row in rows:
        value = cur.mogrify(marks, row)
        if values and size + len(value) + 2 > MAX_QUERY_CHARS:
            out.append(template.format(", ".join(values)))
            values, size = [], len(template)
        values.append(value)
        size += len(value) + 2
    out.append(template.format(", ".join(values)))
    return out


def _packed(statements: list[str]) -> list[str]:
    """Statements joined into as few queries as MAX_QUERY_CHARS allows (one, for a usual batch)."""
    queries: list[str] = []
    for st in statements:
        if queries and len(queries[-1]) + len(st) + 1 <= MAX_QUERY_CHARS:
            queries[-1] += ";" + st
        else:
            queries.append(st)
    return queries


def _rows(cur: Any) -> list[dict[str, Any]]:
    return cast(list[dict[str, Any]], list(cur.fetchall()))


def _row(cur: Any) -> dict[str, Any] | None:
    return cast(dict[str, Any] | None, cur.fetchone())


def provision(settings: MysqlSettings, host: str) -> None:
    """For a fresh local server (`taskherd up`), as its root, which has no password there: check it
    answers, then create the configured database and, unless it is root, its user. Raises StoreError."""
    try:
        conn = pymysql.connect(host=host, port=settings.port, user="root", password="", connect_timeout=1,
                               autocommit=True)
        with conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{settings.database}`")
            if settings.user != "root":  # the bootstrap made only root; an app user is ours to make
                for user_host in (host, "localhost"):
                    cur.execute("CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY %s",
                                (settings.user, user_host, settings.password))
                    cur.execute(f"GRANT ALL ON `{settings.database}`.* TO %s@%s", (settings.user, user_host))
    except pymysql.MySQLError as exc:
        raise StoreError(f"mysql provision {host}:{settings.port}: {exc}") from exc
