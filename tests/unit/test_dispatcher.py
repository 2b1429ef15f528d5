"""The Dispatcher's IOLoop side on its own: matching messages to idle slots, and giving back a message
that waits behind busy slots. Narrow: stand-ins for the NSQ message and the slot's actor ref; the real
thing runs in tests/e2e and tests/faults."""

from __future__ import annotations

import time
from types import SimpleNamespace

from taskherd.actors.dispatcher import Dispatcher
from taskherd.actors.worker import Run
from taskherd.config import from_dict


class Message:
    """Stands in for a Delivery: records what was answered."""

    def __init__(self, waited_s: float = 0.0) -> None:
        self.touched_at = time.monotonic() - waited_s
        self.requeued: list[float] = []

    def requeue(self, delay_s: float = 0.0) -> None:
        self.requeued.append(delay_s)


class Slot:
    """Stands in for a Worker's ActorRef: records what it was told."""

    def __init__(self) -> None:
        self.told: list[object] = []

    def tell(self, message: object) -> None:
        self.told.append(message)


def dispatcher() -> Dispatcher:
    settings = from_dict({"worker": {"slots": 2, "lease_renew_s": 1.0}}, source="<test>")
    return Dispatcher(SimpleNamespace(settings=settings), supervisor=None, slot="dispatcher")


def test_a_message_goes_to_an_idle_slot_and_waits_when_none_is():
    d, slot, first, second = dispatcher(), Slot(), Message(), Message()
    d._slot_free(0, slot)
    d._on_delivery(first)
    d._on_delivery(second)
    assert len(slot.told) == 1 and isinstance(slot.told[0], Run) and slot.told[0].delivery is first
    assert list(d._waiting) == [second]


def test_a_message_waiting_past_a_renewal_tick_goes_back_to_nsqd():
    d, fresh, stale = dispatcher(), Message(waited_s=0.1), Message(waited_s=2.0)
    d._on_delivery(fresh)
    d._on_delivery(stale)
    d._give_back_stale()
    assert stale.requeued == [0] and fresh.requeued == []
    assert list(d._waiting) == [fresh]


def test_a_paused_pod_gives_every_message_back():
    d, message = dispatcher(), Message()
    d._paused = True
    d._on_delivery(message)
    assert message.requeued == [0] and not d._waiting
