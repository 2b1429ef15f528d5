"""What a supervisor needs to know to (re)start one child.

A stopped pykka actor cannot start again, so a spec holds a factory rather than an actor: every
restart calls it anew and the slot takes the new ref.

There is no OTP restart type (permanent, transient…): every slot is refilled after a failure and none
after a normal stop, because in pykka a normal stop means a shutdown (`ActorRegistry.stop_all`, or an
actor that chose to finish), and refilling slots then would race the shutdown and leave threads behind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka

Factory = Callable[[pykka.ActorRef[Any], str], pykka.ActorRef[Any]]
"""Starts a new actor for a slot, given the supervisor's ref and the slot name, and returns its ref.

The supervisor passes both so a `Supervised` child knows whom to tell, and under which name, when it
fails; an actor that does not care may ignore them.
"""


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """One slot of a supervisor: a stable name, and how to fill it with a fresh actor."""

    name: str
    """Slot name; stays the same across restarts, so probes and logs can follow the child."""
    factory: Factory
    """Called in the supervisor's thread at start and at every restart of this slot."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("ChildSpec.name: expected a non-empty slot name")
