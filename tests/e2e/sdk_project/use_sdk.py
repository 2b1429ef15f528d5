"""Run by tests/e2e/test_sdk.py from the project's directory: the SDK end to end, asserting as it goes."""

import warnings

from shop.images import app, explode, resize

import taskherd

with warnings.catch_warnings(record=True) as warned:
    warnings.simplefilter("always")
    assert app.register() == {"executor resize": "created", "executor explode": "created",
                              "analyzer resize": "created"}
assert not warned, [str(w.message) for w in warned]  # every option is sent, priority included
assert app.client.executors()["resize"]["target"] == "shop.images:resize"
assert app.client.executors()["resize"]["priority"] == 7
assert app.register() == {"executor resize": "unchanged", "executor explode": "unchanged",
                          "analyzer resize": "unchanged"}

task = resize.submit({"path": "a.png"}, job="album-7", id="img-1")
assert (task.id, task.status) == ("img-1", "created")
assert task.result(timeout=60) == {"path": "a.png", "width": 800}
assert resize.submit({"path": "a.png"}, job="album-7", id="img-1").status == "exists"
later = resize.submit({"path": "b.png", "width": 400}, job="album-7", delay_s=0.5)
assert later.result(timeout=60) == {"path": "b.png", "width": 400}
assert resize.run({"path": "d.png", "width": 100}, job="album-7", timeout=60) == {"path": "d.png", "width": 100}

try:
    explode.submit({"path": "c.png"}, job="album-7", id="img-3").result(timeout=60)
    raise AssertionError("explode succeeded")
except taskherd.TaskFailed as exc:
    assert "no such image: c.png" in str(exc), exc

status = app.job("album-7").wait(timeout=60)
assert status["done"] and status["counts"]["succeeded"] == 3 and status["counts"]["failed"] == 1, status
assert resize({"path": "local.png"}) == {"path": "local.png", "width": 800}  # still the function
print("sdk ok")
