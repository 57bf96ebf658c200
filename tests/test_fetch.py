"""Fetching uses the network well and politely, as the servers see it: requests in flight
bounded per host and over all hosts, connections reused, and a host that asks for a pause
(429 or 503) gets no request until it is over."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from flows.ingest import ingest
from tests.support.h2server import H2Server
from tests.support.httpserver import RecordedRequest, Route, TestServer
from tests.test_flow import RSS, rss

WORDS = "harbour council tram bridge budget ferry library market orchard quarry".split()


def article_page(n: int) -> bytes:
    """A page of ours with a text of its own (no two pages are copies)."""
    w = [WORDS[(n + k) % len(WORDS)] for k in range(len(WORDS))]
    paras = "".join(
        f"<p>Report {n}, part {k}: the {w[k]} plan for district {n * 7 + k} was debated by "
        f"residents, who asked about the {w[k + 1]} and the {w[k + 2]} before the vote.</p>"
        for k in range(5)
    )
    return (
        f"<html><head><title>Story {n}</title></head><body><article><h1>Story {n}</h1>"
        f"{paras}</article></body></html>"
    ).encode()


def serve_pages(server: TestServer, first: int, count: int, delay: float = 0.0) -> list[str]:
    return [
        server.set(f"/p{n}.html", body=article_page(n), delay=delay)
        for n in range(first, first + count)
    ]


def feed_of(server: TestServer, links: Sequence[str]) -> str:
    items = [
        {"title": f"Item {k}", "guid": f"g{k}", "link": link, "description": f"Summary {k}."}
        for k, link in enumerate(links)
    ]
    return server.set("/feed.xml", body=rss(items), content_type=RSS)


def pages_requested(*servers: TestServer) -> list[RecordedRequest]:
    return [r for s in servers for r in s.requests if r.route_path.startswith("/p")]


def max_in_flight(requests: Sequence[RecordedRequest]) -> int:
    """The most requests a server was answering at one time (from their start and end)."""
    events = sorted(
        [(r.time, 1) for r in requests] + [(r.ended or r.time, -1) for r in requests],
        key=lambda e: (e[0], e[1]),  # an answer that ends as another starts: not overlapping
    )
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


@pytest.fixture
def more_hosts() -> Iterator[list[TestServer]]:
    """Two more servers on other loopback addresses (all of 127.0.0.0/8 is loopback): hosts."""
    servers: list[TestServer] = []
    try:
        for host in ("127.0.0.2", "127.0.0.3"):
            try:
                servers.append(TestServer(host))
            except OSError as exc:
                pytest.skip(f"cannot listen on {host}: {exc}")
        yield servers
    finally:
        for s in servers:
            s.close()


def test_pages_are_fetched_concurrently_up_to_the_per_host_bound_on_reused_connections(
    http_server, make_config, db
):
    links = serve_pages(http_server, 0, 12, delay=0.3)
    cfg = make_config(
        [{"name": "f", "kind": "feed", "url": feed_of(http_server, links)}],
        fetch={"per_host": 3, "concurrency": 16},
    )

    ingest(config_path=str(cfg))

    pages = pages_requested(http_server)
    assert len(pages) == 12
    assert max_in_flight(pages) == 3  # concurrent, never more than the host's bound
    # Every request of the run, the feed's too, went over at most 3 kept-alive connections.
    assert len({r.client for r in http_server.requests}) <= 3
    assert db("SELECT count(*) FROM articles WHERE text_origin = 'page'") == [(12,)]


def test_requests_in_flight_over_all_hosts_stay_within_the_global_bound(
    http_server, more_hosts, make_config, db
):
    servers = [http_server, *more_hosts]
    links = [url for k, s in enumerate(servers) for url in serve_pages(s, 10 * k, 6, delay=0.3)]
    cfg = make_config(
        [{"name": "f", "kind": "feed", "url": feed_of(http_server, links)}],
        fetch={"per_host": 3, "concurrency": 4, "allow_networks": ["127.0.0.0/8"]},
    )

    ingest(config_path=str(cfg))

    pages = pages_requested(*servers)
    assert len(pages) == 18
    assert max_in_flight(pages) == 4
    assert all(max_in_flight(pages_requested(s)) <= 3 for s in servers)
    assert db("SELECT count(*) FROM articles WHERE text_origin = 'page'") == [(18,)]


def test_a_host_that_answers_429_is_paused_then_its_page_is_asked_again(
    http_server, more_hosts, make_config, db
):
    other = more_hosts[0]
    links = serve_pages(http_server, 0, 6)
    http_server.set_sequence(
        "/p2.html",
        [Route(status=429, headers={"Retry-After": "1"}), Route(body=article_page(2))],
    )
    links += serve_pages(other, 10, 3, delay=0.1)
    cfg = make_config(
        [{"name": "f", "kind": "feed", "url": feed_of(http_server, links)}],
        fetch={"per_host": 1, "allow_networks": ["127.0.0.0/8"]},
    )

    ingest(config_path=str(cfg))

    refused = http_server.requests_for("/p2.html")[0]
    assert refused.ended is not None
    assert len(http_server.requests_for("/p2.html")) == 2
    after = [r.time - refused.ended for r in pages_requested(http_server) if r.time > refused.time]
    assert len(after) == 4  # p2 again, and the pages not asked for yet
    assert min(after) >= 0.95  # none within the second the host asked for
    # The other host was not held up by the pause.
    assert all(r.time < refused.ended + 0.9 for r in pages_requested(other))
    assert db("SELECT count(*) FROM articles WHERE text_origin = 'page'") == [(9,)]
    assert db("SELECT count(*) FROM item_errors") == [(0,)]


def test_a_pause_longer_than_max_retry_after_skips_the_hosts_pages_with_a_recorded_error(
    http_server, make_config, db
):
    links = serve_pages(http_server, 0, 4)
    http_server.set("/p0.html", status=429, headers={"Retry-After": "3600"})
    cfg = make_config(
        [{"name": "f", "kind": "feed", "url": feed_of(http_server, links)}],
        fetch={"per_host": 1, "max_retry_after": 30},
    )

    ingest(config_path=str(cfg))

    assert [r.route_path for r in pages_requested(http_server)] == ["/p0.html"]
    errors = db("SELECT item, reason, detail FROM item_errors ORDER BY item")
    assert [(item.rsplit("/", 1)[1], reason) for item, reason, _ in errors] == [
        ("p0.html", "fetch_error"),
        ("p1.html", "host_paused"),
        ("p2.html", "host_paused"),
        ("p3.html", "host_paused"),
    ]
    assert "HTTP 429" in errors[0][2]
    assert f"{http_server.host}:{http_server.port} asked for a pause of 3600s" in errors[1][2]
    # Nothing is lost: every entry is an article, from its feed summary.
    assert db("SELECT count(*) FROM articles WHERE text_origin = 'feed_summary'") == [(4,)]
    assert db("SELECT status FROM runs") == [("completed",)]


@pytest.mark.parametrize("offers_h2", [True, False])
def test_https_pages_go_over_http2_where_the_server_offers_it(tmp_path, make_config, db, offers_h2):
    routes = {f"/p{n}.html": ("text/html; charset=utf-8", article_page(n)) for n in range(6)}
    with H2Server(tmp_path, routes, h2=offers_h2) as server:
        links = [server.url(path) for path in routes]
        items = [
            {"title": f"Item {k}", "guid": f"g{k}", "link": link, "description": f"Summary {k}."}
            for k, link in enumerate(links)
        ]
        routes["/feed.xml"] = (RSS, rss(items))
        cfg = make_config(
            [{"name": "tls", "kind": "feed", "url": server.url("/feed.xml")}],
            fetch={"ca_file": str(server.ca_file), "per_host": 4},
        )

        ingest(config_path=str(cfg))

    assert len(server.requests) == 7
    if offers_h2:
        # Every request over HTTP/2, multiplexed on one connection.
        assert {(r.protocol, r.connection) for r in server.requests} == {("h2", 1)}
    else:
        assert {r.protocol for r in server.requests} == {"http/1.1"}
    assert db("SELECT count(*) FROM articles WHERE text_origin = 'page'") == [(6,)]


def test_https_to_a_server_whose_certificate_is_not_trusted_fails_the_source(
    tmp_path, make_config, db
):
    with H2Server(tmp_path, {"/feed.xml": (RSS, rss([]))}) as server:
        cfg = make_config([{"name": "tls", "kind": "feed", "url": server.url("/feed.xml")}])

        ingest(config_path=str(cfg))

    assert server.requests == []
    ((status, error),) = db("SELECT status, error FROM fetches")
    assert status == "error"
    assert "TLS certificate not trusted: unable to get local issuer certificate" in error
    assert server.connections == 1  # not a passing fault: tried once, not retried
