"""A thread's own Redis connection (StateStore's hot path keeps one per thread and node, outside
redis-py's pool) outlives a Redis restart: the first call after it goes through, where it used to
fail once on the connection Redis had closed (an API request answered 503 though Redis was back)."""

from __future__ import annotations

import pytest
import redis

from taskherd.store import state_store
from taskherd.store.state_store import NewTask, StateStore
from tests.helpers import Services, wait_until


@pytest.mark.single_redis
def test_the_first_call_after_redis_restarted_goes_through(clean: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a store whose thread connection has carried a submit (checked whenever idle: no wait)
    monkeypatch.setattr(state_store, "STALE_CHECK_S", 0.0)
    store = StateStore(clean.settings.redis)
    assert store.submit("j", [NewTask("a", "j", "t", "{}", "d-a", 3, 60.0)]) == ["created"]
    # When redis-server stops and starts again (its AOF keeps the task)
    clean.manager.stop_one("redis")
    clean.manager.start_one("redis")
    probe = redis.Redis(port=clean.settings.redis.port, password=clean.settings.redis.password)
    wait_until(lambda: _answers(probe), timeout=30, message="redis answering again")
    # Then the next call on that thread succeeds at once, and the first task is still there
    assert store.submit("j", [NewTask("b", "j", "t", "{}", "d-b", 3, 60.0)]) == ["created"]
    assert store.task("j", "a")["state"] == "pending"


def _answers(r: redis.Redis) -> bool:
    try:
        return bool(r.ping())
    except redis.RedisError:
        return False
