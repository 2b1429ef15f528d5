"""What every actor of one pod shares: settings, this node's identity, and the three protocols.

Built once by the pod at start; all members are thread-safe, so actors hold it without copying.
Actors find each other through pykka's registry (one pod per process), never through this object,
because a restarted actor has a new ref.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import pykka

from taskherd.config.settings import Settings
from taskherd.jobs import JobEvents
from taskherd.store.archive import Archive
from taskherd.store.state_store import StateStore
from taskherd.errors import QueueError
from taskherd.store.task_queue import TaskQueue

if TYPE_CHECKING:
    from taskherd.actors.feed import FeedDelivery

log = logging.getLogger("taskherd.pod")

A = TypeVar("A", bound=pykka.Actor)


@dataclass(frozen=True, slots=True)
class PodContext:
    settings: Settings
    node_id: str
    store: StateStore
    queue: TaskQueue
    archive: Archive | None = None
    """Only the manager role talks to MySQL; workers never need it."""
    job_events: JobEvents = field(default_factory=JobEvents)
    """Rung by the ResultAnalyzer when a job is done; the API's long-polls wait on it."""

    def dead_letter(self, delivery: "FeedDelivery", why: str) -> None:
        """A message nobody can use: keep it on the dead-letter topic, never requeue it.

        A dead letter is one JSON line saying why (and the size and sha256 of the original), a newline,
        then the original bytes unchanged, so it can be inspected or republished as it came. nsqd
        allows `DEADLETTER_HEADROOM` bytes (config/settings.py) over the largest message we accept, so the envelope always fits.
        """
        log.error("dead-lettering a message: %s", why)
        raw = delivery.body
        head = {"why": why, "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
        body = json.dumps(head).encode() + b"\n" + raw
        try:
            self.queue.publish(self.settings.nsq.deadletter_topic, [body])
        except QueueError as exc:
            log.error("dead-letter publish failed; the message is dropped: %s", exc)
        delivery.finish()


def find(actor_class: type[A]) -> pykka.ActorRef[A]:
    """The live actor of a class in this process; raises ActorDeadError while it is being restarted."""
    for ref in pykka.ActorRegistry.get_by_class(actor_class):
        if ref.is_alive():
            return ref
    raise pykka.ActorDeadError(f"no live {actor_class.__name__} in this process")
