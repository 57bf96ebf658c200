"""Tests for the test HTTP server itself (tests/support/httpserver.py)."""

from __future__ import annotations

import gzip
import http.client
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.httpserver import Route, TestServer


def test_basic_get_and_404(http_server: TestServer) -> None:
    url = http_server.set("/hello", body=b"hi there", content_type="text/plain")
    assert url == http_server.base_url + "/hello"
    assert http_server.base_url.startswith("http://127.0.0.1:")
    r = httpx.get(url)
    assert r.status_code == 200
    assert r.content == b"hi there"
    assert r.headers["content-type"] == "text/plain"
    assert httpx.get(http_server.url("/missing")).status_code == 404


def test_custom_status_and_headers(http_server: TestServer) -> None:
    http_server.set("/x", Route(status=503, body=b"busy", headers={"Retry-After": "7"}))
    r = httpx.get(http_server.url("/x"))
    assert r.status_code == 503
    assert r.headers["retry-after"] == "7"


def test_set_replaces_route(http_server: TestServer) -> None:
    http_server.set("/r", body=b"one")
    http_server.set("/r", body=b"two")
    assert httpx.get(http_server.url("/r")).content == b"two"


def test_query_string_ignored_for_routing(http_server: TestServer) -> None:
    http_server.set("/feed", body=b"ok")
    assert httpx.get(http_server.url("/feed?utm_source=x")).content == b"ok"
    assert http_server.hits("/feed") == 1
    assert http_server.requests[0].path == "/feed?utm_source=x"


def test_etag_304(http_server: TestServer) -> None:
    url = http_server.set("/feed.xml", body=b"<rss/>", etag='"v1"')
    r1 = httpx.get(url)
    assert r1.status_code == 200
    assert r1.headers["etag"] == '"v1"'
    r2 = httpx.get(url, headers={"If-None-Match": '"v1"'})
    assert r2.status_code == 304
    assert r2.content == b""
    r3 = httpx.get(url, headers={"If-None-Match": '"v0"'})
    assert r3.status_code == 200
    assert r3.content == b"<rss/>"


def test_last_modified_304(http_server: TestServer) -> None:
    lm = "Wed, 14 Jan 2026 08:00:00 GMT"
    url = http_server.set("/f", body=b"data", last_modified=lm)
    r1 = httpx.get(url)
    assert r1.headers["last-modified"] == lm
    assert httpx.get(url, headers={"If-Modified-Since": lm}).status_code == 304
    other = "Tue, 13 Jan 2026 08:00:00 GMT"
    assert httpx.get(url, headers={"If-Modified-Since": other}).status_code == 200


def test_gzip(http_server: TestServer) -> None:
    body = b"<p>" + b"compressible " * 200 + b"</p>"
    url = http_server.set("/gz", body=body, gzip=True)
    r = httpx.get(url)
    assert r.headers["content-encoding"] == "gzip"
    assert int(r.headers["content-length"]) < len(body)
    assert r.content == body  # httpx decodes transparently
    with httpx.stream("GET", url) as raw:
        compressed = b"".join(raw.iter_raw())
    assert gzip.decompress(compressed) == body


@pytest.mark.parametrize("status", [301, 302])
def test_redirect(http_server: TestServer, status: int) -> None:
    target = http_server.set("/new", body=b"moved here")
    src = http_server.set("/old", status=status, redirect_to=target)
    r = httpx.get(src)
    assert r.status_code == status
    assert r.headers["location"] == target
    r2 = httpx.get(src, follow_redirects=True)
    assert r2.status_code == 200
    assert r2.content == b"moved here"
    assert [h.status_code for h in r2.history] == [status]
    assert str(r2.url) == target


def test_redirect_defaults_to_302(http_server: TestServer) -> None:
    src = http_server.set("/old", redirect_to="/elsewhere")
    assert httpx.get(src).status_code == 302


def test_delay_and_timeout(http_server: TestServer) -> None:
    url = http_server.set("/slow", body=b"late", delay=0.3)
    t0 = time.monotonic()
    assert httpx.get(url).content == b"late"
    assert time.monotonic() - t0 >= 0.3
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(url, timeout=0.1)


def test_trickle(http_server: TestServer) -> None:
    url = http_server.set("/trickle", body=b"abcdef", trickle=0.05)
    t0 = time.monotonic()
    assert httpx.get(url).content == b"abcdef"
    assert time.monotonic() - t0 >= 0.25
    # each byte arrives well within the read timeout, but the whole body takes longer
    with httpx.Client(timeout=httpx.Timeout(1.0, read=0.2)) as client:
        assert client.get(url).content == b"abcdef"


def test_sequence(http_server: TestServer) -> None:
    url = http_server.set_sequence(
        "/seq",
        [Route(status=500), Route(status=503), Route(body=b"finally")],
    )
    codes = [httpx.get(url).status_code for _ in range(5)]
    assert codes == [500, 503, 200, 200, 200]
    assert httpx.get(url).content == b"finally"
    assert http_server.hits("/seq") == 6


def test_request_recording(http_server: TestServer) -> None:
    url = http_server.set("/rec", body=b"ok")
    t0 = time.monotonic()
    httpx.get(url, headers={"User-Agent": "newsflow-test/1", "X-Custom": "abc"})
    httpx.post(url, content=b"payload")
    httpx.get(http_server.url("/nope"))
    assert http_server.hits("/rec") == 2
    assert http_server.hits("/nope") == 1
    first = http_server.requests[0]
    assert first.method == "GET"
    assert first.path == "/rec"
    assert first.headers["user-agent"] == "newsflow-test/1"
    assert first.headers["USER-AGENT"] == "newsflow-test/1"
    assert first.headers["x-custom"] == "abc"
    assert first.time >= t0
    assert http_server.requests[1].method == "POST"
    assert [r.path for r in http_server.requests] == ["/rec", "/rec", "/nope"]


def test_concurrent_requests(http_server: TestServer) -> None:
    url = http_server.set("/c", body=b"ok", delay=0.2)
    results: list[int] = []

    def fetch() -> None:
        results.append(httpx.get(url).status_code)

    t0 = time.monotonic()
    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 8
    assert time.monotonic() - t0 < 1.2  # served in parallel, not 8 x 0.2 s
    assert http_server.hits("/c") == 8


def test_serve_dir(http_server: TestServer, tmp_path: Path) -> None:
    (tmp_path / "feed.xml").write_text("<rss><link>BASE/a</link></rss>")
    (tmp_path / "page.html").write_text("<html></html>")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f.json").write_text("{}")
    http_server.serve_dir(
        "/static", tmp_path, rewrite=lambda b: b.replace(b"BASE", http_server.base_url.encode())
    )
    r = httpx.get(http_server.url("/static/feed.xml"))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/xml")
    assert r.text == f"<rss><link>{http_server.base_url}/a</link></rss>"
    assert (
        httpx.get(http_server.url("/static/page.html"))
        .headers["content-type"]
        .startswith("text/html")
    )
    assert httpx.get(http_server.url("/static/sub/f.json")).headers["content-type"] == (
        "application/json"
    )
    assert httpx.get(http_server.url("/static/none.xml")).status_code == 404
    # raw request target (httpx would normalise the dot segments away)
    conn = http.client.HTTPConnection(http_server.host, http_server.port, timeout=5)
    conn.request("GET", "/static/../../../../etc/passwd")
    assert conn.getresponse().status == 404
    conn.close()
    # explicit routes win over mounts
    http_server.set("/static/page.html", body=b"override")
    assert httpx.get(http_server.url("/static/page.html")).content == b"override"


def test_close_stops_serving() -> None:
    server = TestServer()
    url = server.set("/x", body=b"ok")
    with httpx.Client() as client:
        assert client.get(url).status_code == 200
        server.close()
        with pytest.raises(httpx.TransportError):
            client.get(url)
    server.close()  # idempotent
