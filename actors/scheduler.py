"""Scheduler: fires the schedules' due ticks (`taskherd.schedules`), on every manager pod at once.

Every manager runs one, every `watcher_interval_s`: a tick's task id is deterministic and the advance
past it is a compare-and-set in Redis, so managers racing for a tick fire it once, and when one dies
the others fire on without a lease to wait for. A failing Redis, MySQL or nsqd skips the round (the
tick stays due and fires on a later one, within the schedule's `catch_up_s`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pykka

from taskherd.actors.context import PodContext
from taskherd.errors import QueueError, StoreError
from taskherd.intake import Intake
from taskherd.schedules import Schedules
from taskherd.supervisor import Supervised, Ticking

log = logging.getLogger("taskherd.scheduler")


@dataclass(frozen=True, slots=True)
class FireDue:
    """From the ticker: fire what is due."""


class Scheduler(Ticking, Supervised, pykka.ThreadingActor):
    def __init__(self, ctx: PodContext, intake: Intake, **supervised: Any) -> None:
        super().__init__(**supervised)
        self.schedules = Schedules(ctx.store, intake)
        self.interval_s = ctx.settings.manager.watcher_interval_s
        self.fired = 0

    def on_start(self) -> None:
        self.tick_every(FireDue(), self.interval_s)

    def on_receive(self, message: Any) -> Any:
        match message:
            case FireDue():
                try:
                    self.fired += len(self.schedules.fire_due())
                except (StoreError, QueueError) as exc:
                    log.warning("schedules not fired this round: %s", exc)
            case _:
                log.warning("scheduler: unknown message %r", message)
        return None
