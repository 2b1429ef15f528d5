"""The API is exactly its OpenAPI, case by case (tests/e2e/test_openapi_contract.py runs schemathesis
over all of it): what a schema-valid request may be refused for is the server's state (404, 409), an
unknown method is a 405 with Allow, and the schema says the pod's own limits.

Runs against the Manager and Api actors of test_api's `stack`, on real services."""

from __future__ import annotations

from taskherd.specs import NAME_RE
from tests.integration import test_api
from tests.integration.test_api import MAX_BATCH, Stack, error

stack, typed = test_api.stack, test_api.typed  # the fixtures, shared


def test_an_unknown_method_is_a_405_whose_allow_lists_the_methods_of_the_path(stack: Stack) -> None:
    for method, path, allow in [("TRACE", "/tasks", "GET, POST"), ("DELETE", "/executors/t", "GET, PUT"),
                                ("OPTIONS", "/tasks/a/cancel", "POST"), ("GET", "/tasks/a/retry", "POST"),
                                ("PUT", "/jobs/j1", "GET"), ("TRACE", "/tasks/a/b", "GET")]:
        response = stack.http.request(method, path)
        assert (response.status_code, response.headers.get("allow")) == (405, allow), (method, path, response.text)
        assert error(response)["message"].startswith(f"no route for {method} ")


def test_a_task_id_with_a_slash_is_sent_encoded_and_read_back(typed: Stack) -> None:
    assert typed.http.post("/tasks", json=typed.task(id="a/retry")).status_code == 201
    assert typed.http.get("/tasks/a%2Fretry").json()["id"] == "a/retry"
    assert typed.http.get("/tasks/a/retry").status_code == 405  # the retry of task `a`, a POST


def test_a_type_without_an_executor_and_a_target_not_on_this_host_are_409s(stack: Stack) -> None:
    before = stack.frozen()
    unknown = stack.http.post("/tasks", json={"type": "nope", "job": "j1"})
    assert unknown.status_code == 409 and error(unknown)["field"] == "type"
    missing = stack.http.put("/executors/t", json={"kind": "python", "target": "nosuch_module_xyz:fn"})
    assert missing.status_code == 409 and error(missing)["field"] == "target"
    assert stack.frozen() == before


def test_a_task_for_a_cancelled_job_is_a_409_and_in_a_batch_says_cancelled(typed: Stack) -> None:
    typed.http.post("/tasks", json=typed.task(id="t1"))
    assert typed.http.post("/jobs/j1/cancel").status_code == 200
    one = typed.http.post("/tasks", json=typed.task(id="t2"))
    assert one.status_code == 409 and error(one)["field"] == "job" and "cancelled" in error(one)["message"]
    batch = typed.http.post("/tasks", json={"tasks": [typed.task(id="t3")]})
    assert batch.status_code == 200 and batch.json()["tasks"] == [{"id": "t3", "status": "cancelled"}]
    assert typed.http.get("/tasks/t2").status_code == 404


def test_an_id_twice_in_a_batch_is_created_once_then_answered_as_a_resubmission(typed: Stack) -> None:
    batch = [typed.task(id="d"), typed.task(id="d"), typed.task(id="d", payload={"n": 2})]
    response = typed.http.post("/tasks", json={"tasks": batch})
    assert response.status_code == 201, response.text
    assert [t["status"] for t in response.json()["tasks"]] == ["created", "exists", "conflict"]
    assert typed.depth() == 1


def test_schema_valid_numbers_and_names_are_taken_and_others_named(typed: Stack) -> None:
    assert typed.http.post("/tasks", json=typed.task(id="w", max_attempts=3.0)).status_code == 201
    for field, value in [("max_attempts", "3"), ("max_attempts", True), ("timeout_s", "5"), ("job", "j1\n")]:
        response = typed.http.post("/tasks", json={**typed.task(id="x"), field: value})
        assert response.status_code == 422 and error(response)["field"] == field, (field, value, response.text)
    assert typed.http.get("/jobs/bad%20job").status_code == 422
    assert typed.http.get("/jobs/j1/tasks", params={"state": "pending", "cursor": "x"}).status_code == 404


def test_the_schema_declares_names_limits_and_one_spec_shape_per_kind(stack: Stack) -> None:
    schema = stack.http.get("/openapi.json").json()
    parts = schema["components"]["schemas"]
    assert parts["TaskBatch"]["properties"]["tasks"]["maxItems"] == MAX_BATCH
    assert parts["TaskIn"]["properties"]["job"]["pattern"] == NAME_RE.pattern
    assert [v["properties"]["kind"]["const"] for v in parts["ExecutorIn"]["oneOf"]] == ["python", "exe", "http"]
    submit = schema["paths"]["/tasks"]["post"]["responses"]
    assert {"200", "201", "409", "422", "429"} <= submit.keys()
