"""Finishes: the moment a task's result is recorded, told to whoever waits for that one task.

finish.lua publishes on the task's own channel (`keys.finished(id)`) when it records an outcome the
analyzer will see; a process that waits for a task (the API's `GET /tasks/{id}?wait_s=`) subscribes to
that channel on its one pub/sub connection. A channel nobody listens to costs Redis a dictionary
lookup per finish, so the hot path pays nothing for the feature when nobody waits. The message is
the task as recorded (`recorded_task`), or 'analyzing' when the waiter's connection is on another
node of a cluster than the task: then the waiter reads the task.

One thread per process owns the connection and does every read and write on it (redis-py's PubSub
is not thread-safe); a waiter hands its (un)subscribe over through a queue and a self-pipe that wakes
the thread at once, and `watch` returns once Redis has confirmed the subscription (well under a
millisecond): a finish published before that would be lost to the waiter, so waiters read the task's
state after `watch` returns, and a finish on either side of that read is seen. On a lost
connection the thread reconnects and subscribes again; meanwhile waiters re-read on their own
schedule (the API every RECHECK_S).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import select
import threading
from collections.abc import Callable
from typing import Any

from redis.cluster import RedisCluster

from taskherd.store import keys
from taskherd.store.connection import Client
from taskherd.store.errors import REDIS_ERRORS

log = logging.getLogger("taskherd.finishes")

RECONNECT_S = 0.5
CONFIRM_S = 0.25
"""Longest `watch` waits for Redis to confirm a subscription before it lets the caller read on."""


class Finishes:
    """Callbacks run (in this object's thread) when a watched task's result is recorded, given the
    message (see `recorded_task`)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._watchers: dict[str, set[Callable[[str], None]]] = {}
        self._subscribed: dict[str, threading.Event] = {}
        """Channel -> set once Redis confirmed the subscription (cleared with the connection)."""
        self._changes: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, task_id: str, callback: Callable[[str], None], confirm_s: float = CONFIRM_S) -> Callable[[], None]:
        """Run `callback` when `task_id`'s result is recorded (at most once per finish); returns the
        call that stops watching. Blocks until Redis has confirmed the subscription (at most
        `confirm_s`: with Redis away, the caller's own re-reads carry on): read the task's state after
        it, not before, to miss nothing."""
        channel = keys.finished(task_id)
        with self._lock:
            first = channel not in self._watchers
            self._watchers.setdefault(channel, set()).add(callback)
            confirmed = self._subscribed.setdefault(channel, threading.Event())
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="finishes", daemon=True)
                self._thread.start()
        if first:
            self._change("SUBSCRIBE", channel)
        confirmed.wait(confirm_s)

        def unwatch() -> None:
            with self._lock:
                callbacks = self._watchers.get(channel)
                if callbacks is None:
                    return
                callbacks.discard(callback)
                last = not callbacks
                if last:
                    del self._watchers[channel]
                    self._subscribed.pop(channel, None)
            if last:
                self._change("UNSUBSCRIBE", channel)

        return unwatch

    def subscribed(self, task_id: str) -> bool:
        """Whether Redis has confirmed the subscription to `task_id`'s results: every finish from now
        on reaches the watchers."""
        with self._lock:
            confirmed = self._subscribed.get(keys.finished(task_id))
        return confirmed is not None and confirmed.is_set()

    def wait_subscribed(self, task_id: str, timeout: float = CONFIRM_S) -> None:
        """Block until Redis has confirmed the subscription a `watch(task_id, ..., confirm_s=0)` asked
        for (at most `timeout`): a caller that did something meanwhile reads the task's state after this."""
        with self._lock:
            confirmed = self._subscribed.get(keys.finished(task_id))
        if confirmed is not None:
            confirmed.wait(timeout)

    def _pool(self) -> Any:
        """A pool of the one server, or of a cluster node (any: a cluster's PUBLISH reaches every node),
        chosen anew at each reconnect, as the node may be the one that died."""
        if isinstance(self._client, RedisCluster):
            return self._client.get_redis_connection(self._client.get_random_node()).connection_pool  # type: ignore[no-untyped-call]
        return self._client.connection_pool

    def close(self) -> None:
        self._closed.set()
        self._wake()

    def _change(self, command: str, channel: str) -> None:
        self._changes.put((command, channel))
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already

    def _run(self) -> None:
        while not self._closed.is_set():
            # Its own connection, without health checks: a PING on a subscribed connection answers in
            # pub/sub form, which redis-py's check would take for a broken connection.
            try:
                pool = self._pool()
            except REDIS_ERRORS as exc:  # a cluster with no node reachable
                log.warning("waiting for task results: %s; reconnecting", exc)
                self._closed.wait(RECONNECT_S)
                continue
            conn = pool.connection_class(**{**pool.connection_kwargs, "health_check_interval": 0})
            try:
                conn.connect()
                with self._lock:
                    channels = list(self._watchers)
                    for event in self._subscribed.values():
                        event.clear()  # until this connection's confirmations come
                if channels:
                    conn.send_command("SUBSCRIBE", *channels)
                self._serve(conn)
            except (*REDIS_ERRORS, OSError) as exc:
                log.warning("waiting for task results: %s; reconnecting", exc)
                self._closed.wait(RECONNECT_S)
            finally:
                conn.disconnect()

    def _serve(self, conn: Any) -> None:
        """Read messages and send (un)subscribes on `conn` until it fails or this object closes."""
        while not self._closed.is_set():
            while conn.can_read(timeout=0):  # what the parser holds already, before select
                self._dispatch(conn.read_response(push_request=True))  # pub/sub messages are pushes
            readable, _, _ = select.select([conn._sock, self._wake_r], [], [], 5.0)
            if self._wake_r in readable:
                os.read(self._wake_r, 4096)
                while True:
                    try:
                        command, channel = self._changes.get_nowait()
                    except queue.Empty:
                        break
                    conn.send_command(command, channel)

    def _dispatch(self, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 3:
            return
        kind, channel = (x.decode() if isinstance(x, bytes) else x for x in reply[:2])
        if kind == "subscribe":
            with self._lock:
                confirmed = self._subscribed.get(channel)
            if confirmed is not None:
                confirmed.set()
            return
        if kind != "message":
            return  # unsubscribe confirmations
        message = reply[2].decode() if isinstance(reply[2], bytes) else str(reply[2])
        with self._lock:
            callbacks = list(self._watchers.get(channel, ()))
        for callback in callbacks:
            try:
                callback(message)
            except Exception:  # a waiter's failure must not stop the others' wake-ups
                log.exception("a task-result waiter failed")


def recorded_task(message: str) -> dict[str, Any] | None:
    """The task as finish.lua published it (`StateStore.task`'s shape), or None for a bare wake-up."""
    if not message.startswith("["):
        return None
    fields, execs = json.loads(message)
    return {**with_executions(dict(zip(fields[::2], fields[1::2])), execs or []), "leased_ahead": False}


def with_executions(fields: dict[str, Any], execs: list[str]) -> dict[str, Any]:
    """A task's hash with `executions`: those of earlier retry rounds (its `history`), then this
    round's, each marked with the round it belonged to."""
    history = fields.pop("history", "")
    current = int(fields.get("round") or 0)
    return {**fields, "executions": (json.loads(history) if history else [])
            + [{**json.loads(e), "round": current} for e in execs]}
