"""A source is never fetched sooner than its server asks, and a failing source backs off and
recovers by itself."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from flows.ingest import ingest
from tasks.core.politeness import next_fetch_after_failure, server_delay
from tests.support.httpserver import Route
from tests.test_flow import RSS, rss

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("headers", "ttl", "want"),
    [
        ({"cache-control": "public, max-age=600"}, None, (600, "cache-control max-age")),
        ({"cache-control": "max-age=600", "age": "100"}, None, (500, "cache-control max-age")),
        ({"cache-control": "no-cache, max-age=600"}, None, None),
        ({"expires": "Fri, 01 May 2026 12:30:00 GMT", "date": "Fri, 01 May 2026 12:00:00 GMT"},
         None, (1800, "expires")),
        ({"retry-after": "120"}, None, (120, "retry-after")),
        ({}, 60, (3600, "feed ttl")),
        ({"cache-control": "max-age=60"}, 30, (1800, "feed ttl")),  # the longest wish wins
        ({}, None, None),
    ],
)  # fmt: skip
def test_what_the_server_asks_for(headers, ttl, want):
    assert server_delay(headers, ttl, NOW) == want


def test_backoff_doubles_to_a_cap():
    waits = [
        (next_fetch_after_failure(n, None, NOW, 300, 3600)[0] - NOW).total_seconds()
        for n in (1, 2, 3, 4, 5)
    ]
    assert waits == [300, 600, 1200, 2400, 3600]
    when, why = next_fetch_after_failure(1, 7200, NOW, 300, 86400)
    assert when - NOW == timedelta(seconds=7200) and why == "retry-after"


def test_a_source_asking_for_max_age_is_not_fetched_again_before_then(http_server, make_config, db):
    body = rss([{"title": "Cached", "guid": "c1", "description": "Fresh for ten minutes."}])
    url = http_server.set(
        "/f", body=body, content_type=RSS, headers={"Cache-Control": "max-age=600"}
    )
    cfg = make_config([{"name": "f", "kind": "feed", "url": url}])

    ingest(config_path=str(cfg))
    ingest(config_path=str(cfg))

    assert http_server.hits("/f") == 1
    statuses = [r[0] for r in db("SELECT status FROM fetches ORDER BY started_at")]
    assert statuses == ["ok", "deferred"]
    (due, reason) = db("SELECT next_fetch_at, next_fetch_reason FROM sources")[0]
    assert reason == "cache-control max-age"
    assert timedelta(seconds=590) < due - datetime.now(UTC) <= timedelta(seconds=600)
    ingest(config_path=str(cfg), force=True)  # a user can insist
    assert http_server.hits("/f") == 2


def test_retry_after_on_429_defers_the_next_run(http_server, make_config, db):
    url = http_server.set("/f", status=429, headers={"Retry-After": "3600"})
    cfg = make_config([{"name": "f", "kind": "feed", "url": url}], fetch={"retries": 0})

    ingest(config_path=str(cfg))
    ingest(config_path=str(cfg))

    assert http_server.hits("/f") == 1
    assert db("SELECT next_fetch_reason FROM sources") == [("retry-after",)]


def wait_until_due(db) -> None:
    due = db("SELECT next_fetch_at FROM sources")[0][0]
    time.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()) + 0.1)


def test_a_failing_source_backs_off_and_recovers(http_server, make_config, db):
    good = rss([{"title": "Back", "guid": "b", "description": "Working again."}])
    url = http_server.set_sequence(
        "/f", [Route(status=500), Route(status=500), Route(body=good, content_type=RSS)]
    )
    cfg = make_config(
        [{"name": "f", "kind": "feed", "url": url}],
        fetch={"retries": 0, "failure_backoff": 8.0, "failure_backoff_max": 60.0},
    )

    ingest(config_path=str(cfg))
    ingest(config_path=str(cfg))  # within the backoff: not fetched
    assert http_server.hits("/f") == 1
    assert db("SELECT consecutive_failures, next_fetch_reason FROM sources") == [
        (1, "backoff after 1 failure(s)")
    ]
    wait_until_due(db)
    ingest(config_path=str(cfg))  # due again, fails again: the wait doubles
    (failures, due, reason) = db(
        "SELECT consecutive_failures, next_fetch_at, next_fetch_reason FROM sources"
    )[0]
    assert failures == 2 and reason == "backoff after 2 failure(s)"
    assert timedelta(seconds=8) < due - datetime.now(UTC) <= timedelta(seconds=16)
    wait_until_due(db)
    s = ingest(config_path=str(cfg))  # works again: health is restored by itself

    assert s.new_articles == 1
    assert db("SELECT consecutive_failures, last_status, next_fetch_at FROM sources") == [
        (0, "ok", None)
    ]
