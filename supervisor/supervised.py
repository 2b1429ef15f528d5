"""The child's half of supervision: report a death at once instead of waiting for the sweep."""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any

import pykka

from taskherd.supervisor.messages import ChildExited, ChildFailed

logger = logging.getLogger("taskherd.supervisor")


def describe(exception: BaseException | None) -> str:
    """One line naming the exception, because restart logs are read by people, not parsers."""
    if exception is None:
        return "unknown failure"
    return f"{type(exception).__name__}: {exception}"


class Supervised:
    """Mixin for a pykka actor that lives in a supervisor slot; put it before `ThreadingActor`.

    pykka calls `on_failure` when a `tell` handler raises; this mixin turns that into a `ChildFailed`
    for the supervisor, and a clean stop into a `ChildExited` (so an actor that stops itself, or is
    stopped by a shutdown, is not refilled). Subclasses that override `on_failure` or `on_stop` must
    call `super()`. `supervisor=None` runs the actor unsupervised (a root, or a test).
    """

    def __init__(self, supervisor: pykka.ActorRef[Any] | None, slot: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.supervisor = supervisor
        self.slot = slot

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._report(ChildFailed(self.slot, describe(exception_value), self._urn()))
        super().on_failure(exception_type, exception_value, traceback)  # type: ignore[misc]

    def on_stop(self) -> None:
        self._report(ChildExited(self.slot, self._urn()))
        super().on_stop()  # type: ignore[misc]

    def _urn(self) -> str | None:
        return getattr(self, "actor_urn", None)

    def _report(self, message: ChildFailed | ChildExited) -> None:
        """Tell, never ask: the supervisor may be busy stopping us, and an ask would deadlock."""
        if self.supervisor is None:
            return
        try:
            self.supervisor.tell(message)
        except pykka.ActorDeadError:
            logger.debug("slot %s: supervisor already gone; %r not delivered", self.slot, message)
