"""How a store's failures leave it: always as `StoreError`, never as a client library's exception,
so nothing outside taskherd/store needs to know redis-py or pymysql."""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any, TypeVar

import pymysql
import redis

from taskherd.errors import StoreError
from taskherd.metrics import SERVICE_ERRORS

C = TypeVar("C", bound=type)

REDIS_ERRORS = (redis.RedisError, redis.exceptions.RedisClusterException)
"""What redis-py raises: a cluster client's "no node reachable" is not a RedisError."""
_LIBRARY_ERRORS = (*REDIS_ERRORS, pymysql.MySQLError)


def store_errors(service: str) -> Callable[[C], C]:
    """A class decorator: every public method re-raises a client library's error as StoreError,
    its message starting with `service` (the API names the service that failed from it)."""

    def wrap(cls: C) -> C:
        for name, fn in list(vars(cls).items()):
            if not name.startswith("_") and isinstance(fn, types.FunctionType):
                setattr(cls, name, _guarded(fn, service, name))
        return cls

    return wrap


def _guarded(fn: Callable[..., Any], service: str, name: str) -> Callable[..., Any]:
    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _LIBRARY_ERRORS as exc:
            SERVICE_ERRORS.labels(service).inc()
            raise StoreError(f"{service} {name}: {exc}") from exc

    return guarded
