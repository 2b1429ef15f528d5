"""The dashboard's routes on an API with auth off: the page and its assets (no data, no third-party
origin), and its own reads: whoami (every scope when auth is off), pods, series, dead letters."""

from __future__ import annotations

from tests.integration import test_api
from tests.integration.test_api import Stack

stack = test_api.stack
"""test_api's fixture: a Manager and the API on the session's services, auth off."""


def test_the_page_and_its_assets_come_from_this_manager_only_and_weigh_little(stack: Stack) -> None:
    page = stack.http.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http" not in page.text.replace("http-equiv", ""), "the page names another origin"
    sizes = [len(page.content)]
    for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
        asset = stack.http.get(f"/ui/static/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
        sizes.append(len(asset.content))
    assert sum(sizes) < 300_000, sizes
    missing = stack.http.get("/ui/static/secrets.txt")
    assert missing.status_code == 404 and missing.json()["errors"][0]["field"] == "name"


def test_with_auth_off_the_page_may_press_every_button_and_reads_what_it_charts(stack: Stack) -> None:
    assert stack.http.get("/ui/whoami").json() == {"auth": "off", "token": None, "scopes": ["read", "submit", "admin"]}
    pods = stack.http.get("/ui/pods").json()
    assert set(pods) == {"now_ms", "watcher", "nodes"}
    series = stack.http.get("/ui/series", params={"window_s": 300}).json()
    assert series["retention_s"] == 900 and series["step_s"] == 5 and len(series["points"]) == 60
    assert stack.http.get("/ui/series", params={"window_s": 3600}).status_code == 422  # past the retention
    assert stack.http.get("/ui/dead", params={"state": "succeeded"}).status_code == 422
    assert stack.http.get("/ui/dead").json() == {"state": "failed", "tasks": [], "next_cursor": None}
    assert stack.http.get("/ui/recent").json() == {"jobs": []}
