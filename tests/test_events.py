"""Each load emits newsflow.articles.loaded and each failed source newsflow.source.failed,
with the counts, the run and the source, to the Prefect API."""

from __future__ import annotations

import time

import httpx
from prefect.settings import PREFECT_API_URL

from flows.ingest import ingest
from tests.test_flow import RSS, rss


def events(name: str, resource: str, run_id: str, timeout: float = 30.0) -> list[dict]:
    """This run's events of that name about that resource (they arrive asynchronously)."""
    api = PREFECT_API_URL.value()
    deadline = time.monotonic() + timeout
    body = {"filter": {"event": {"name": [name]}, "resource": {"id": [resource]}}, "limit": 50}
    while True:
        r = httpx.post(f"{api}/events/filter", json=body)
        r.raise_for_status()
        found = [e for e in r.json()["events"] if e["payload"].get("run_id") == run_id]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_load_and_failure_events(http_server, make_config):
    good = http_server.set(
        "/good", body=rss([{"title": "E", "guid": "e1", "description": "Evented."}]),
        content_type=RSS,
    )  # fmt: skip
    bad = http_server.set("/bad", status=404)
    cfg = make_config(
        [
            {"name": "ev-good", "kind": "feed", "url": good},
            {"name": "ev-bad", "kind": "feed", "url": bad},
        ]
    )

    s = ingest(config_path=str(cfg))

    loaded = events("newsflow.articles.loaded", "newsflow.source.ev-good", s.run_id)
    assert len(loaded) == 1
    assert loaded[0]["resource"]["prefect.resource.id"] == "newsflow.source.ev-good"
    assert loaded[0]["payload"]["new_articles"] == 1
    failed = events("newsflow.source.failed", "newsflow.source.ev-bad", s.run_id)
    assert len(failed) == 1
    assert failed[0]["resource"]["newsflow.consecutive_failures"] == "1"
    assert "HTTP 404" in failed[0]["payload"]["error"]
