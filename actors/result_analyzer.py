"""ResultAnalyzer: turns finished tasks into child tasks and archive rows, and sees a job finish.

Where a task is analyzed (`_verdict`) and archived (`_archive`). Results arrive in batches (the IOLoop
gathers what nsqd has in flight for us), so one batch costs one Redis read, one MySQL transaction and
one NSQ publish for all its children. Order per task: children are submitted (counted into the job)
before the parent's row is committed and it is counted out, so a job never reads as done while work
remains; a crash anywhere in between redelivers the result, and every step repeats as a no-op.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

import pykka
import redis

from taskherd.actors.bus import Bus, Delivery, GetLoop, NsqLoop, Subscribe
from taskherd.actors.context import PodContext, find
from taskherd.actors.manager import runner_spec
from taskherd.errors import QueueError, StoreError, TaskherdError
from taskherd.intake import Intake, InvalidTask, Submission, from_child
from taskherd.jobs import summarize
from taskherd.metrics import ANALYZER_BATCH, ARCHIVED
from taskherd.runners import Runner
from taskherd.store.archive import ArchivedTask
from taskherd.store.task_queue import TaskRef, decode
from taskherd.supervisor import Supervised

log = logging.getLogger("taskherd.analyzer")

CHANNEL = "manager"
BATCH = 256
ANALYZER_RETRIES = 5
"""Deliveries of one result before a failing analyzer marks its task failed."""


@dataclass(frozen=True, slots=True)
class TakeResults:
    """From the IOLoop: results are waiting; take them, and whatever arrives meanwhile, in batches."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What analysis decided for one task."""

    state: str
    """'succeeded', 'failed' or 'cancelled'"""
    record: dict[str, Any] | None = None
    children: tuple[Submission, ...] = ()
    error: str | None = None


class ResultAnalyzer(Supervised, pykka.ThreadingActor):
    def __init__(self, ctx: PodContext, intake: Intake, **supervised: Any) -> None:
        super().__init__(**supervised)
        self.ctx, self.intake = ctx, intake
        self.runner = Runner(recycle_after=ctx.settings.worker.recycle_after)
        self._lock = threading.Lock()
        self._waiting: list[Delivery] = []
        self._called = False
        """Set while a TakeResults is scheduled or being handled: results arriving then join the
        next batch instead of becoming batches of their own, so batches grow with the load."""
        self._closed = False
        self.nsq: NsqLoop | None = None

    def on_start(self) -> None:
        topic = self.ctx.settings.nsq.results_topic
        bus = find(Bus)
        self.nsq = bus.ask(GetLoop(), timeout=15)
        bus.ask(Subscribe(topic, CHANNEL, BATCH, self._on_delivery), timeout=15)

    def on_stop(self) -> None:
        self._give_back()
        self.runner.close()
        super().on_stop()

    def on_failure(self, *exc_info: Any) -> None:
        self._give_back()
        self.runner.close()
        super().on_failure(*exc_info)

    def _give_back(self) -> None:
        """Waiting results go back to nsqd at once (not after its msg_timeout), for our successor."""
        with self._lock:
            self._closed = True
            waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.requeue(1.0)

    def _on_delivery(self, delivery: Delivery) -> None:
        """IOLoop thread: gather, and call the actor once the IOLoop has read what arrived together. No
        timer: while the actor works on one batch the next one gathers, so batches grow with the load
        and an idle cluster's result waits for nothing."""
        with self._lock:
            accepted = not self._closed
            if accepted:
                self._waiting.append(delivery)
            call = accepted and not self._called
            self._called = self._called or call
        if not accepted:
            delivery.requeue(1.0)
        elif call:
            assert self.nsq and self.nsq.loop
            self.nsq.loop.add_callback(self._call)

    def _call(self) -> None:
        try:
            self.actor_ref.tell(TakeResults())
        except pykka.ActorDeadError:  # we are being restarted: give the messages back at once
            self._give_back()

    def on_receive(self, message: Any) -> None:
        match message:
            case TakeResults():
                while batch := self._take():
                    self._handle(batch)
            case _:
                log.warning("analyzer: unknown message %r", message)

    def _take(self) -> list[Delivery]:
        with self._lock:
            batch, self._waiting = self._waiting[:BATCH], self._waiting[BATCH:]
            if not batch:
                self._called = False
            return batch

    def _handle(self, deliveries: list[Delivery]) -> None:
        try:
            self._analyze(deliveries)
        except (StoreError, QueueError, redis.RedisError) as exc:  # a service is down: retry the batch later
            log.warning("analysis of %d result(s) deferred: %s", len(deliveries), exc)
            for d in deliveries:
                d.requeue(1.0)

    def _analyze(self, deliveries: list[Delivery]) -> None:
        ANALYZER_BATCH.observe(len(deliveries))
        work, specs = self._load(deliveries)
        verdicts: list[tuple[Delivery, dict[str, Any], Verdict]] = []
        for d, task in work:
            verdict = self._verdict(task, d, specs[task["type"]])
            if verdict is None:
                d.requeue(float(d.attempts))
            else:
                verdicts.append((d, task, verdict))
        verdicts = self._submit_children(verdicts)
        self._archive(verdicts)

    def _load(self, deliveries: list[Delivery]
              ) -> tuple[list[tuple[Delivery, dict[str, Any]]], dict[str, dict[str, Any] | None]]:
        """Live tasks awaiting analysis, and their analyzer specs; anything else is a duplicate or
        garbage and is acknowledged."""
        refs: list[tuple[Delivery, TaskRef]] = []
        for d in deliveries:
            try:
                refs.append((d, decode(d.body, self.ctx.settings.nsq.max_message_bytes)))
            except ValueError as exc:
                self.ctx.dead_letter(d, f"results topic: {exc}")
        tasks, specs = self.ctx.store.for_analysis([(r.job, r.task_id) for _, r in refs],
                                                   {r.type for _, r in refs if r.type})
        out = []
        for (d, _), task in zip(refs, tasks):
            if task is None or task.get("state") != "analyzing":
                d.finish()
            else:
                out.append((d, task))
        return out, specs

    def _verdict(self, task: dict[str, Any], delivery: Delivery, spec: dict[str, Any] | None) -> Verdict | None:
        """None: the analyzer failed in a way worth retrying; redeliver later."""
        result = json.loads(task["result"]) if task.get("result") else None
        if task.get("outcome") == "cancelled":
            return Verdict("cancelled", error="cancelled")
        if task.get("outcome") != "ok":
            return Verdict("failed", error=task.get("error") or "failed")
        if spec is None:
            return Verdict("succeeded", record=result)
        try:
            outcome = self.runner.run(runner_spec(spec), _analyzer_input(task, result),
                                      float(spec.get("timeout_s") or self.ctx.settings.manager.analyzer_timeout_s))
        except TaskherdError as exc:
            return Verdict("failed", error=f"analyzer for {task['type']!r} is unusable: {exc}")
        if not outcome.ok:
            if outcome.retryable and delivery.attempts < ANALYZER_RETRIES:
                log.warning("analyzer for %s failed (delivery %d), will retry: %s", task["id"], delivery.attempts,
                            outcome.error)
                return None
            return Verdict("failed", error=f"analyzer failed: {outcome.error}")
        return _read_analysis(task, outcome.result or {})

    def _submit_children(self, verdicts: list[tuple[Delivery, dict[str, Any], Verdict]]) -> list[tuple[Delivery, dict[str, Any], Verdict]]:
        """All children in one batch; if any is invalid, find whose and fail only that parent."""
        children = [c for _, _, v in verdicts for c in v.children]
        try:
            self.intake.submit(children, where="children")
            return verdicts
        except InvalidTask:
            pass
        out = []
        for d, task, v in verdicts:
            try:
                self.intake.submit(list(v.children), where="children")
                out.append((d, task, v))
            except InvalidTask as exc:
                out.append((d, task, Verdict("failed", error=f"analyzer returned an invalid child: {exc}")))
        return out

    def _archive(self, verdicts: list[tuple[Delivery, dict[str, Any], Verdict]]) -> None:
        assert self.ctx.archive is not None
        self.ctx.archive.archive([_row(task, v) for _, task, v in verdicts])
        outs = self.ctx.store.archive([(task["job"], task["id"], v.state) for _, task, v in verdicts])
        for (d, task, v), out in zip(verdicts, outs):
            if out != "skip":
                ARCHIVED.labels(v.state).inc()
            if out == "done":
                log.info("job %s is done", task["job"])
                summarize(self.ctx.store, self.ctx.archive, task["job"])
                self.ctx.job_events.notify()
            d.finish()


def _analyzer_input(task: dict[str, Any], result: Any) -> dict[str, Any]:
    return {"task": {"id": task["id"], "type": task["type"], "job": task["job"],
                     "payload": json.loads(task["payload"]), "attempts": int(task.get("attempts", 0))},
            "result": result}


def _read_analysis(task: dict[str, Any], out: dict[str, Any]) -> Verdict:
    unknown = set(out) - {"children", "record"}
    children, record = out.get("children") or [], out.get("record")
    problem = (f"unknown field {sorted(unknown)[0]!r}" if unknown
               else "children: expected a list" if not isinstance(children, list)
               else "record: expected an object or null" if record is not None and not isinstance(record, dict)
               else None)
    if problem:
        return Verdict("failed", error=f"analyzer output unusable: {problem}")
    try:
        subs = tuple(from_child(c, task, i) for i, c in enumerate(children))
    except InvalidTask as exc:
        return Verdict("failed", error=f"analyzer returned an invalid child: {exc}")
    return Verdict("succeeded", record=record, children=subs)


def _row(task: dict[str, Any], v: Verdict) -> ArchivedTask:
    return ArchivedTask(
        id=task["id"], job=task["job"], type=task["type"], state=v.state, attempts=int(task.get("attempts", 0)),
        digest=task["digest"], parent=task.get("parent") or "", payload=task["payload"],
        result=task.get("result") or None, error=v.error or task.get("error") or None,
        executions=json.dumps(task["executions"]), created_ms=int(task["created"]),
        finished_ms=int(task.get("finished") or task["created"]),
        record=json.dumps(v.record) if v.record is not None else None)
