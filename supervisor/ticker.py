"""Ticker: tells an actor a message on a fixed interval, from a daemon thread (the supervisor's
sweep, the lease keeper's renewals, the watcher's sweep, the registry's heartbeat).

pykka has no timers; a thread that only `tell`s keeps the actor's own work in its mailbox, so the
periodic work is serialised with everything else the actor does and needs no locks.
"""

from __future__ import annotations

import threading
from typing import Any

import pykka


class Ticker:
    def __init__(self, ref: pykka.ActorRef[Any], message: object, interval_s: float) -> None:
        self._ref, self._message, self._interval = ref, message, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"tick-{type(message).__name__}", daemon=True)

    def start(self) -> Ticker:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._ref.tell(self._message)
            except pykka.ActorDeadError:
                return

    def stop(self) -> None:
        self._stop.set()


class Ticking:
    """Mixin for an actor with one periodic message: `tick_every` in `on_start`, and `on_stop` ends the
    ticker. Put it first in the bases (its `on_stop` calls the next one's)."""

    _ticker: Ticker | None = None

    def tick_every(self, message: object, interval_s: float) -> None:
        self._ticker = Ticker(self.actor_ref, message, interval_s).start()  # type: ignore[attr-defined]

    def on_stop(self) -> None:
        if self._ticker:
            self._ticker.stop()
        super().on_stop()  # type: ignore[misc]
