"""ResultAnalyzer: turns finished tasks into child tasks and archive rows, and sees a job finish.

Where a task is analyzed (`_verdict`), archived to MySQL and retired from Redis (`_archive`). A message on the results topic is a
doorbell for a job, not a result: the results wait in Redis (the job's analyzing set), and the
analyzer claims them there in batches of up to BATCH, with their tasks, in one round trip. It reads
the doorbells from its own nsqd connection (`Feed`, RDY = BATCH), in its own thread: no IOLoop and
no thread hop between nsqd and a claim; while it works on one batch the next doorbells gather, so
batches grow with the load and an idle cluster's result waits for nothing. A worker
rings only when no doorbell of the job is on its way (finish.lua sets the job's `rung` key; the
analyzer deletes it before it claims), so a busy job costs one message per batch, not one per task.
A claim lapses after nsqd's msg_timeout (the bound an unacknowledged message had before): if the
manager dies mid-batch, the TimeoutWatcher rings for the job again.

Order per task: children are submitted (counted into the job) before the parent's row is committed
and it is counted out, so a job never reads as done while work remains; a crash anywhere in between
leaves the task claimed, then analyzed again, and every step repeats as a no-op.

Fan-in: an analyzer may return a `join` with its children. The children are created in the join
(their own children inherit it), then the join is registered with its task created held
(`StateStore.register_join`), then the parent is archived; retiring the last of them fires the join
(retire.lua), and the join task is promoted and published here (or by the TimeoutWatcher, should
this pod die first). Each step is one Redis script, so a repeated analysis never doubles the join.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import pykka

from taskherd.actors.context import PodContext
from taskherd.errors import InvalidTask, QueueError, StoreError, TaskherdError
from taskherd.intake import MAX_ID_CHARS, Intake, Submission, from_child
from taskherd.jobs import write_summary
from taskherd.logs import task_fields
from taskherd.metrics import ANALYZER_BATCH, ARCHIVED, TASKS
from taskherd.nsq.feed import Feed, FeedDelivery
from taskherd.nsq.messages import TaskRef, decode
from taskherd.runners import Runner
from taskherd.specs import check_admitted, runner_spec
from taskherd.states import TaskState
from taskherd.store.archive import ArchivedTask
from taskherd.store.series import Execution
from taskherd.store.state_store import NewTask
from taskherd.supervisor import Supervised

log = logging.getLogger("taskherd.analyzer")

CHANNEL = "manager"
BATCH = 256
ANALYZER_RETRIES = 5
"""Analyses of one result before a failing analyzer marks its task failed."""


POLL_S = 0.5
"""Longest wait on the feed before the mailbox is read again (a stop waits at most this long)."""


@dataclass(frozen=True, slots=True)
class Poll:
    """To itself: read doorbells and serve them, then poll again."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What analysis decided for one task."""

    state: TaskState
    """A final state."""
    record: dict[str, Any] | None = None
    children: tuple[Submission, ...] = ()
    error: str | None = None
    join: Submission | None = None
    """The fan-in join task the analyzer declared, to submit once every child is final."""


class ResultAnalyzer(Supervised, pykka.ThreadingActor):
    def __init__(self, ctx: PodContext, intake: Intake, **supervised: Any) -> None:
        super().__init__(**supervised)
        self.ctx, self.intake = ctx, intake
        self.runner = Runner(recycle_after=ctx.settings.worker.recycle_after,
                             max_result_bytes=ctx.settings.worker.max_result_bytes)
        s = ctx.settings.nsq
        self.feed = Feed(s, s.results_topic, CHANNEL, f"{ctx.node_id}-analyzer", ready=BATCH)
        self._bells: dict[str, list[tuple[FeedDelivery, TaskRef]]] = {}
        """Doorbells heard, by job, until the job's results are drained (given back if we fail or stop)."""
        self._claimed: tuple[str, list[str]] | None = None
        """The job and task ids of the batch being analyzed (given back if we fail or stop)."""

    def on_start(self) -> None:
        self.actor_ref.tell(Poll())

    def on_stop(self) -> None:
        self._give_back()
        super().on_stop()

    def on_failure(self, *exc_info: Any) -> None:
        self._give_back()
        super().on_failure(*exc_info)

    def _give_back(self) -> None:
        """Doorbells held go back to nsqd at once (closing the connection requeues what it had in
        flight), and the batch being analyzed is claimable again at once (not when its claim lapses),
        for our successor."""
        self.feed.close()
        self._bells.clear()
        self._unclaim(0)
        self.runner.close()

    def on_receive(self, message: Any) -> None:
        match message:
            case Poll():
                self._serve()
                self.actor_ref.tell(Poll())
            case _:
                log.warning("analyzer: unknown message %r", message)

    def _serve(self) -> None:
        """Claim and analyze the results of every job rung for, a batch per job in turn, until none
        is left and no doorbell waits (or a message such as a stop does). A job's doorbells are
        acknowledged once its results are drained."""
        bells = self._bells
        first = self.feed.next(0.0 if bells else POLL_S)
        waiting = [first] if first is not None else []
        while waiting or bells:
            while (d := self.feed.next(0.0)) is not None:
                waiting.append(d)
            for d in waiting:
                try:
                    ref = decode(d.body, self.ctx.settings.nsq.max_message_bytes)
                    bells.setdefault(ref.job, []).append((d, ref))
                except ValueError as exc:
                    self.ctx.publisher.dead_letter(d, f"results topic: {exc}")
            waiting = []
            for job in list(bells):
                try:
                    drained = self._batch(job, {ref.type for _, ref in bells[job]}) < BATCH
                except (StoreError, QueueError) as exc:  # a service is down: retry later
                    log.warning("analysis of %s deferred: %s", job, exc)
                    self._unclaim(1000)
                    for d, _ in bells.pop(job):
                        d.requeue(1.0)
                    continue
                if drained:
                    for d, _ in bells.pop(job):
                        d.finish()
            if not self.actor_inbox.empty():
                return

    def _batch(self, job: str, type_hints: set[str]) -> int:
        """Claim, analyze and archive one batch of the job's results; how many were claimed."""
        claim_ms = int(self.ctx.settings.nsq.msg_timeout_s * 1000)
        tasks, specs = self.ctx.store.claim_results(job, BATCH, claim_ms, type_hints)
        if not tasks:
            return 0
        self._claimed = (job, [t["id"] for t in tasks])
        ANALYZER_BATCH.observe(len(tasks))
        claimed_at = time.monotonic()
        verdicts: list[tuple[dict[str, Any], Verdict]] = []
        for i, task in enumerate(tasks):
            if time.monotonic() - claimed_at > claim_ms / 2000:  # slow analyzers: keep the rest claimed
                self.ctx.store.unclaim(job, [t["id"] for t in tasks[i:]], claim_ms)
                claimed_at = time.monotonic()
            self.feed.keep_alive()  # a long batch reads nothing: nsqd must still hear from us
            verdict = self._verdict(task, specs.get(task["type"]))
            if verdict is None:
                self._retry_later(task)
            else:
                verdicts.append((task, verdict))
        self._archive(job, self._submit_children(verdicts))
        self._claimed = None
        return len(tasks)

    def _unclaim(self, delay_ms: int) -> None:
        """The batch being analyzed is claimable again after `delay_ms` (not after its claim lapses)."""
        if self._claimed is not None:
            (job, ids), self._claimed = self._claimed, None
            try:
                self.ctx.store.unclaim(job, ids, delay_ms)
            except StoreError as exc:
                log.warning("claim of %d result(s) of %s left to lapse: %s", len(ids), job, exc)

    def _retry_later(self, task: dict[str, Any]) -> None:
        """A failing analyzer worth retrying: the task's claim is shortened to a backoff, and a
        deferred doorbell rings when it lapses (the watcher rings too, should that one be lost)."""
        delay_ms = 1000 * int(task.get("analyses") or 1)
        self.ctx.store.unclaim(task["job"], [task["id"]], delay_ms)
        ref = TaskRef(task["job"], task["id"], task["type"]).encode()
        self.ctx.publisher.publish_deferred(self.ctx.settings.nsq.results_topic, ref, delay_ms)

    def _verdict(self, task: dict[str, Any], spec: dict[str, Any] | None) -> Verdict | None:
        """None: the analyzer failed in a way worth retrying; analyze it again later."""
        result = json.loads(task["result"]) if task.get("result") else None
        if task.get("outcome") == "cancelled":
            return Verdict(TaskState.CANCELLED, error="cancelled")
        if task.get("outcome") != "ok":
            return Verdict(TaskState.FAILED, error=task.get("error") or "failed")
        if spec is None:
            return Verdict(TaskState.SUCCEEDED, record=result)
        try:
            check_admitted(spec, self.ctx.settings.security, self.ctx.settings.auth.on)  # [security] may have narrowed
            outcome = self.runner.run(runner_spec(spec), _analyzer_input(task, result),
                                      float(spec.get("timeout_s") or self.ctx.settings.manager.analyzer_timeout_s))
        except TaskherdError as exc:
            return Verdict(TaskState.FAILED, error=f"analyzer for {task['type']!r} is unusable: {exc}")
        if not outcome.ok:
            analyses = int(task.get("analyses") or 1)
            if outcome.retryable and analyses < ANALYZER_RETRIES:
                log.warning("analyzer for %s failed (analysis %d), will retry: %s", task["id"], analyses,
                            outcome.error, extra=task_fields(task["job"], task["id"], task_type=task["type"]))
                return None
            return Verdict(TaskState.FAILED, error=f"analyzer failed: {outcome.error}")
        return _read_analysis(task, outcome.result or {})

    def _submit_children(self, verdicts: list[tuple[dict[str, Any], Verdict]]) -> list[tuple[dict[str, Any], Verdict]]:
        """All children in one batch; if any is invalid, find whose and fail only that parent. A
        parent's join is checked before its children are created (an invalid one fails the parent,
        creating nothing) and registered after."""
        joins: dict[str, NewTask] = {}
        checked = []
        for task, v in verdicts:
            if v.join is not None:
                try:
                    joins[task["id"]] = self.intake.prepare([v.join], "join")[0]
                except InvalidTask as exc:
                    where = exc.field.replace("join[0]", "join", 1)
                    v = Verdict(TaskState.FAILED, error=f"analyzer returned an invalid join: {where}: {exc.problem}")
            checked.append((task, v))
        children = [c for _, v in checked for c in v.children]
        try:
            statuses = {a.id: a.status for a in self.intake.submit(children, where="children")}
            out = checked
        except InvalidTask:
            statuses, out = {}, []
            for task, v in checked:
                try:
                    statuses |= {a.id: a.status for a in self.intake.submit(list(v.children), where="children")}
                    out.append((task, v))
                except InvalidTask as exc:
                    out.append((task, Verdict(TaskState.FAILED, error=f"analyzer returned an invalid child: {exc}")))
        for task, v in out:
            if v.join is not None and v.state == TaskState.SUCCEEDED:
                self._register_join(task, v, joins[task["id"]], statuses)
        return out

    def _register_join(self, task: dict[str, Any], v: Verdict, join: NewTask, statuses: dict[str, str]) -> None:
        """Register the parent's join over its children just submitted. A child not created in the
        join (archived before, or refused) enters it with the outcome it has: its archived row, or
        the submit's answer as its state."""
        assert self.ctx.archive is not None
        listed = list(dict.fromkeys(str(c.id) for c in v.children))  # a child named twice is listed once
        outside = {}
        for cid in listed:
            if statuses.get(cid, "created") == "created":
                continue
            row = self.ctx.archive.task(cid)
            if row is not None and row["job"] == task["job"]:
                outside[cid] = _outcome(cid, row["state"], row.get("record"), row.get("error"))
            else:
                outside[cid] = _outcome(cid, statuses[cid], None, None)
        answer = self.ctx.store.register_join(task["job"], task["id"], join, listed, outside)
        if answer == "conflict":
            log.warning("join of %s not registered: its task id %s is taken", task["id"], join.id,
                        extra=task_fields(task["job"], task["id"], task_type=task["type"]))

    def _archive(self, job: str, verdicts: list[tuple[dict[str, Any], Verdict]]) -> None:
        assert self.ctx.archive is not None
        if not verdicts:
            return
        self.ctx.archive.archive([_row(task, v) for task, v in verdicts])
        fired: list[str] = []
        outcomes = {task["id"]: _outcome(task["id"], v.state, v.record, v.error or task.get("error"))
                    for task, v in verdicts if task.get("join")}
        outs, job_done = self.ctx.store.retire(job, [(task["id"], v.state) for task, v in verdicts], outcomes, fired)
        if fired:  # due now: to pending and published (the TimeoutWatcher does it if we die first)
            moved = self.ctx.store.promote_due(job, TaskState.SCHEDULED, fired)
            self.intake.ring([TaskRef(job, tid).encode() for tid in moved])
            log.info("join task(s) %s submitted", ", ".join(moved), extra=task_fields(job))
        retired = [(task, v) for (task, v), out in zip(verdicts, outs) if out == "ok"]
        for task, v in retired:
            ARCHIVED.labels(v.state).inc()
            if v.state == TaskState.FAILED:
                TASKS.labels(task["type"], "dead_lettered").inc()
        self._chart(retired)
        if job_done:
            log.info("job %s is done", job, extra=task_fields(job))
            # None if another writer (the watcher's sweep) summarized it first: the waiters then read.
            self.ctx.job_events.notify(job, write_summary(self.ctx.store, self.ctx.archive, job))
            self.ctx.store.settle(job)  # out of the watcher's sweep; its state leaves Redis retain_done_s later


    def _chart(self, retired: list[tuple[dict[str, Any], Verdict]]) -> None:
        """Count the batch into the dashboard's series (one round trip); a chart's gap is no reason
        to fail an archive that has happened."""
        try:
            self.ctx.store.series.record([e for task, _ in retired for e in _round_executions(task)],
                                         [v.state for _, v in retired], int(time.time() * 1000))
        except StoreError as exc:
            log.debug("dashboard series not updated: %s", exc)


def _round_executions(task: dict[str, Any]) -> list[Execution]:
    """The executions of the task's last retry round (earlier rounds were counted when they ended)."""
    current = int(task.get("round") or 0)
    return [Execution(int(e["started"]), float(e.get("duration_s") or 0.0)) for e in task.get("executions", ())
            if int(e.get("round") or 0) == current and e.get("started")]


def _analyzer_input(task: dict[str, Any], result: Any) -> dict[str, Any]:
    return {"task": {"id": task["id"], "type": task["type"], "job": task["job"],
                     "payload": json.loads(task["payload"]), "attempts": int(task.get("attempts", 0))},
            "result": result}


def _read_analysis(task: dict[str, Any], out: dict[str, Any]) -> Verdict:
    unknown = set(out) - {"children", "record", "join"}
    children, record = out.get("children") or [], out.get("record")
    problem = (f"unknown field {sorted(unknown)[0]!r}" if unknown
               else "children: expected a list" if not isinstance(children, list)
               else "record: expected an object or null" if record is not None and not isinstance(record, dict)
               else _join_problem(out["join"]) if out.get("join") is not None
               else None)
    if problem:
        return Verdict(TaskState.FAILED, error=f"analyzer output unusable: {problem}")
    join = _join_task(task, out["join"]) if out.get("join") is not None else None
    # children enter the join their parent declares, else the one their parent is in
    in_join = task["id"] if join is not None else task.get("join") or ""
    try:
        subs = tuple(dataclasses.replace(from_child(c, task, i), join=in_join) for i, c in enumerate(children))
    except InvalidTask as exc:
        return Verdict(TaskState.FAILED, error=f"analyzer returned an invalid child: {exc}")
    return Verdict(TaskState.SUCCEEDED, record=record, children=subs, join=join)


JOIN_FIELDS = ("type", "payload", "timeout_s", "max_attempts")


def _join_problem(join: Any) -> str | None:
    """What is wrong with an analyzer's `join` (its type's executor and the numbers are checked at intake)."""
    if not isinstance(join, dict):
        return f"join: expected an object {{type, payload}}, got {type(join).__name__}"
    unknown = sorted(set(join) - set(JOIN_FIELDS))
    if unknown:
        return f"join.{unknown[0]}: unknown field (a join has {', '.join(JOIN_FIELDS)})"
    if not isinstance(join.get("type"), str) or not join["type"]:
        return "join.type: expected the join task's type (a string)"
    payload = join.get("payload", {})
    if not isinstance(payload, dict):
        return f"join.payload: expected an object, got {type(payload).__name__}"
    if "children" in payload:
        return "join.payload.children: reserved: the join task receives each child's outcome there"
    return None


def _join_task(task: dict[str, Any], join: dict[str, Any]) -> Submission:
    """The join task, under an id made from its parent's: one per parent, however often it is analyzed."""
    tid = f"join-{task['id']}"
    if len(tid) > MAX_ID_CHARS:
        tid = "join-" + hashlib.sha256(task["id"].encode()).hexdigest()[:32]
    return Submission(type=join["type"], job=task["job"], payload=join.get("payload", {}), id=tid,
                      timeout_s=join.get("timeout_s"), max_attempts=join.get("max_attempts"), parent=task["id"])


def _outcome(task_id: str, state: str, record: Any, error: str | None) -> str:
    """A join member's entry in the join task's `children`."""
    return json.dumps({"id": task_id, "state": str(state), "record": record, "error": error or None},
                      separators=(",", ":"))


def _row(task: dict[str, Any], v: Verdict) -> ArchivedTask:
    return ArchivedTask(
        id=task["id"], job=task["job"], type=task["type"], state=v.state, attempts=int(task.get("attempts", 0)),
        digest=task["digest"], parent=task.get("parent") or "", payload=task["payload"],
        result=task.get("result") or None, error=v.error or task.get("error") or None,
        executions=json.dumps(task["executions"]), created_ms=int(task["created"]),
        finished_ms=int(task.get("finished") or task["created"]),
        record=json.dumps(v.record) if v.record is not None else None, retry_round=int(task.get("round") or 0),
        run_at_ms=int(task["run_at"]) if task.get("run_at") else None, children=_children(v),
        priority=int(task["priority"]) if task.get("priority") else None)


def _children(v: Verdict) -> str | None:
    """The ids the analysis submitted, in order (a child listed twice once), its join task last."""
    ids = [str(c.id) for c in v.children if c.id] + ([str(v.join.id)] if v.join is not None and v.join.id else [])
    return json.dumps(list(dict.fromkeys(ids))) if ids else None
