"""Messages a `Supervisor` receives.

They live apart from the supervisor module because `Supervised` children send the first two, and the
supervisor is itself `Supervised`; one module for the protocol avoids an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ChildFailed:
    """A child died of an exception; sent from its `on_failure` so the restart need not wait a sweep."""

    name: str
    """Slot name of the child, as in its `ChildSpec`."""
    reason: str
    """Exception type and text, for the restart log line."""
    urn: str | None = None
    """URN of the actor that died; a report about an earlier incarnation of the slot is ignored."""


@dataclass(frozen=True, slots=True)
class ChildExited:
    """A child stopped without an exception: its slot stays empty, and the sweep must not refill it."""

    name: str
    """Slot name of the child."""
    urn: str | None = None
    """URN of the actor that stopped; stale reports (from a child we stopped ourselves) are ignored."""


@dataclass(frozen=True, slots=True)
class Sweep:
    """Timer tick: look for dead children that never reported (an `on_start` that raised)."""


@dataclass(frozen=True, slots=True)
class WhichChildren:
    """Ask for one `ChildInfo` per slot, in start order; for probes and tests."""


@dataclass(frozen=True, slots=True)
class GetChild:
    """Ask for the current `ActorRef` of a slot (it changes at every restart), or None while empty."""

    name: str
    """Slot name."""
