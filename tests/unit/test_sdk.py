"""`@app.executor` / `@app.analyzer` take only functions the pods can import as module:function, and
refuse the rest at once, naming the function; a decorated executor stays callable as the function."""

from __future__ import annotations

import json
from typing import Any

import pytest

import taskherd
from taskherd.client import Client
from taskherd.sdk import AppError

app = taskherd.App("http://127.0.0.1:1")


@app.executor("double", timeout_s=5, max_attempts=2, rate_limit_per_s=3)
def double(payload: dict) -> dict:
    return {"n": payload["n"] * 2}


def test_a_top_level_function_becomes_a_python_spec_and_stays_callable() -> None:
    assert double.spec == {"kind": "python", "target": f"{__name__}:double", "timeout_s": 5, "max_attempts": 2,
                           "rate_limit_per_s": 3}
    assert double({"n": 4}) == {"n": 8}
    assert double.__name__ == "double"


def test_a_lambda_is_refused_with_the_reason() -> None:
    with pytest.raises(AppError, match=r"@app.executor\('l'\): a lambda cannot be an executor or analyzer"):
        app.executor("l")(lambda payload: payload)


def test_a_nested_function_is_refused_naming_where_it_is() -> None:
    def outer() -> Any:
        @app.analyzer("inner")
        def inner(given: dict) -> dict:
            return {}
        return inner

    with pytest.raises(AppError, match=r"inner is nested \(inside test_a_nested_\w+\(\)\.outer\(\)\)"):
        outer()


def test_a_function_of_the_script_being_run_is_refused() -> None:
    def script_function(payload: dict) -> dict:
        return {}
    script_function.__module__, script_function.__qualname__ = "__main__", "script_function"
    with pytest.raises(AppError, match=r"defined in the script being run \(__main__\), which the pods cannot import"):
        app.executor("s")(script_function)


def test_register_sends_every_option_limits_and_priority_included() -> None:
    sent: list[tuple[str, str, Any]] = []

    def transport(method: str, target: str, body: bytes | None) -> tuple[int, bytes]:
        sent.append((method, target, json.loads(body) if body else None))
        return 201, b'{"status": "created"}'

    mine = taskherd.App("http://api")
    mine._client = Client("http://api", transport=transport)
    mine.executor("double", timeout_s=5, priority=9, rate_limit_per_s=2.5, rate_burst=4, max_concurrency=3)(
        double.function)
    assert mine.register() == {"executor double": "created"}
    assert sent == [("PUT", "/executors/double?replace=false&check=true",
                     {"kind": "python", "target": f"{__name__}:double", "timeout_s": 5, "priority": 9,
                      "rate_limit_per_s": 2.5, "rate_burst": 4, "max_concurrency": 3})]
    # And a task's own priority goes with it
    sent.clear()
    with_priority = mine.executors["double"]

    def answer(method: str, target: str, body: bytes | None) -> tuple[int, bytes]:
        sent.append((method, target, json.loads(body) if body else None))
        return 201, b'{"id": "t1", "status": "created"}'
    mine._client = Client("http://api", transport=answer)
    with_priority.submit({"n": 1}, job="j", id="t1", priority=8)
    assert sent[0][2]["priority"] == 8
