"""What every actor of one pod shares: settings, this node's identity, and the three protocols.

Built once by the pod at start; all members are thread-safe, so actors hold it without copying.
Actors find each other through pykka's registry (one pod per process), never through this object,
because a restarted actor has a new ref.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

import pykka

from taskherd.config.settings import Settings
from taskherd.jobs import JobEvents
from taskherd.nsq.publisher import Publisher
from taskherd.store.archive import Archive
from taskherd.store.state_store import StateStore

A = TypeVar("A", bound=pykka.Actor)


@dataclass(frozen=True, slots=True)
class PodContext:
    settings: Settings
    node_id: str
    store: StateStore
    publisher: Publisher
    archive: Archive | None = None
    """Only the manager role talks to MySQL; workers never need it."""
    job_events: JobEvents = field(default_factory=JobEvents)
    """Rung by the ResultAnalyzer when a job is done; the API's long-polls wait on it."""


def find(actor_class: type[A]) -> pykka.ActorRef[A]:
    """The live actor of a class in this process; raises ActorDeadError while it is being restarted."""
    for ref in pykka.ActorRegistry.get_by_class(actor_class):
        if ref.is_alive():
            return ref
    raise pykka.ActorDeadError(f"no live {actor_class.__name__} in this process")
