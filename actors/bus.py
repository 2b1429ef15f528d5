"""Bus: the pod's NSQ consumer side, bridging pynsq's IOLoop thread to actor mailboxes.

pynsq (0.9.1) binds `IOLoop.current()` when a Reader is built, so every Reader is built, fed and
acknowledged inside one thread that owns its own asyncio loop; other threads reach it only through
`add_callback`. A `Delivery` wraps one message with thread-safe finish/requeue so the actor that
ends up holding it can acknowledge it without knowing any of this. Publishing is not here: it goes over
nsqd's HTTP API (store/task_queue.py), which is synchronous and callable from any thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import Callable

import nsq
import pykka
from tornado.ioloop import IOLoop

from taskherd.config.settings import NsqSettings
from taskherd.supervisor import Supervised

log = logging.getLogger("taskherd.bus")



class _Reader(nsq.Reader):
    """A Reader that turns nsqd's output buffering off.

    With RDY > 1, nsqd holds messages to batch its writes for up to 250 ms by default (25 ms at least):
    under light traffic that delay is added to every hop (measured: 250 ms from publish to handler at
    RDY 256, 1.4 ms at RDY 1). Our messages are tiny and each costs us far more than a write costs nsqd.
    IDENTIFY takes `output_buffer_size: -1` (no buffer) but pynsq asserts >= 0, so we set it in the IDENTIFY
    event, which pynsq fires with the very dict it then sends.
    """

    def _on_connection_identify(self, conn: object, data: dict, **kwargs: object) -> object:
        data["output_buffer_size"] = -1
        return super()._on_connection_identify(conn, data, **kwargs)


class Delivery:
    """One NSQ message, acknowledged from any thread. Acknowledging twice is harmless."""

    __slots__ = ("_msg", "_loop", "body", "attempts", "id", "answered")

    def __init__(self, msg: nsq.Message, loop: IOLoop) -> None:
        self._msg, self._loop = msg, loop
        self.body: bytes = msg.body
        self.attempts: int = msg.attempts
        self.id: bytes = msg.id
        self.answered = False
        """Finish or requeue was called (it reaches nsqd a moment later, from the IOLoop)."""

    def finish(self) -> None:
        self.answered = True
        self._loop.add_callback(self._fin)

    def requeue(self, delay_s: float = 0.0) -> None:
        """Back to nsqd without throttling the whole Reader (pynsq's backoff would)."""
        self.answered = True
        self._loop.add_callback(self._req, int(delay_s * 1000))

    def _fin(self) -> None:
        if not self._msg.has_responded():
            self._msg.finish()

    def _req(self, delay_ms: int) -> None:
        if not self._msg.has_responded():
            self._msg.requeue(backoff=False, time_ms=delay_ms)


Handler = Callable[[Delivery], None]


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Ask: consume `topic` on `channel`; `handler` runs in the IOLoop thread and must not block."""

    topic: str
    channel: str
    max_in_flight: int
    handler: Handler


class NsqLoop:
    """A daemon thread running a tornado IOLoop that owns every pynsq Reader of this pod."""

    def __init__(self, settings: NsqSettings) -> None:
        self.settings = settings
        self.readers: dict[str, nsq.Reader] = {}
        self._started = threading.Event()
        self.loop: IOLoop | None = None
        self._thread = threading.Thread(target=self._main, name="nsq-ioloop", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the NSQ IOLoop thread did not start within 10 s")

    def _main(self) -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        self.loop = IOLoop.current()
        self.loop.add_callback(self._started.set)
        self.loop.start()

    def call(self, fn: Callable[..., object], *args: object, timeout: float = 10.0) -> object:
        """Run fn in the IOLoop thread and wait for its result (for set-up, never per message)."""
        done: dict[str, object] = {}
        ready = threading.Event()

        def run() -> None:
            try:
                done["value"] = fn(*args)
            except Exception as exc:  # noqa: BLE001 - handed back to the calling thread
                done["error"] = exc
            ready.set()

        assert self.loop is not None
        self.loop.add_callback(run)
        if not ready.wait(timeout):
            raise TimeoutError("the NSQ IOLoop did not answer")
        if "error" in done:
            raise done["error"]  # type: ignore[misc]
        return done.get("value")

    def subscribe(self, sub: Subscribe) -> None:
        self.call(self._make_reader, sub)

    def _make_reader(self, sub: Subscribe) -> None:
        loop = self.loop
        assert loop is not None

        def on_message(msg: nsq.Message) -> None:
            msg.enable_async()
            sub.handler(Delivery(msg, loop))

        s = self.settings
        old = self.readers.pop(sub.topic, None)
        if old is not None:
            old.close()
        self.readers[sub.topic] = _Reader(
            topic=sub.topic, channel=sub.channel, message_handler=on_message,
            nsqd_tcp_addresses=[s.nsqd_tcp_address] if s.nsqd_tcp_address else None,
            lookupd_http_addresses=list(s.lookupd_http_addresses) or None,
            lookupd_poll_interval=max(1, round(s.lookupd_poll_interval_s)), lookupd_poll_jitter=0.1,
            max_in_flight=max(1, sub.max_in_flight), max_tries=0, heartbeat_interval=5,
            msg_timeout=s.msg_timeout_s,
            user_agent="taskherd")

    def stop(self) -> None:
        if self.loop is None:
            return
        try:
            self.call(self._close_all, timeout=5)
        except (TimeoutError, RuntimeError):
            pass
        self.loop.add_callback(self.loop.stop)
        self._thread.join(5)

    def _close_all(self) -> None:
        # Closing mid-read makes pynsq log a spurious "failed to unpack size" error per connection.
        logging.getLogger("nsq.client").setLevel(logging.CRITICAL)
        for reader in self.readers.values():
            reader.close()
        self.readers.clear()


class Bus(Supervised, pykka.ThreadingActor):
    """Owns the pod's NsqLoop. Subscribers ask `Subscribe` in their on_start, so a restarted Bus is
    followed by restarted subscribers (the pod puts the Bus first under rest_for_one)."""

    def __init__(self, settings: NsqSettings, **supervised: object) -> None:
        super().__init__(**supervised)
        self.nsq = NsqLoop(settings)

    def on_start(self) -> None:
        self.nsq.start()
        log.info("bus started (nsqd %s, lookupd %s)", self.nsq.settings.nsqd_tcp_address,
                 ",".join(self.nsq.settings.lookupd_http_addresses))

    def on_stop(self) -> None:
        self.nsq.stop()
        super().on_stop()

    def on_receive(self, message: object) -> object:
        match message:
            case Subscribe() as sub:
                self.nsq.subscribe(sub)
                return self.nsq
            case _:
                log.warning("bus: unknown message %r", message)
        return None
