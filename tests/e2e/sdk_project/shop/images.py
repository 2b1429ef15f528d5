"""A user's module written with the SDK: tests/e2e/test_sdk.py copies this project to a temp dir and
starts `taskherd up` there, so the pods import it exactly as they would a user's code."""

import os

import taskherd

app = taskherd.App(os.environ.get("TASKHERD_URL", "http://127.0.0.1:18080"))


@app.executor("resize", timeout_s=60, max_attempts=3, priority=7)
def resize(payload: dict) -> dict:
    taskherd.progress(0.5, "halfway")
    return {"path": payload["path"], "width": payload.get("width", 800)}


@app.analyzer("resize")
def after_resize(given: dict) -> dict:
    return {"children": [], "record": {"image": given["result"]["path"], "width": given["result"]["width"]}}


@app.executor("explode", max_attempts=1)
def explode(payload: dict) -> dict:
    raise ValueError(f"no such image: {payload['path']}")
