"""Feed parsing over our fixtures, read from disk, over HTTP and gzipped over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from config.settings import FetchSettings
from tasks.core.errors import FeedParseError
from tasks.core.feeds import parse_datetime, parse_feed
from tasks.fetch import Fetcher
from tests.conftest import DATA

FIXTURES = ["rss20.xml", "rss091.xml", "rdf10.xml", "atom.xml", "feed.json", "broken.xml"]


def expected(name: str) -> dict:
    stem = name.rsplit(".", 1)[0]
    return json.loads((DATA / f"{stem}.expected.json").read_text())


def body_via(how: str, name: str, server) -> tuple[bytes, str, str | None]:
    raw = (DATA / name).read_bytes()
    if how == "file":
        return raw, (DATA / name).as_uri(), None
    ctype = "application/feed+json" if name.endswith(".json") else "application/xml"
    url = server.set(f"/{name}", body=raw, gzip=(how == "gzip"), content_type=ctype)
    with Fetcher(FetchSettings(timeout=5), trusted_hosts=["127.0.0.1"]) as f:
        r = f.get(url, source="t")
    return r.body, r.url, r.headers.get("content-type")


@pytest.mark.parametrize("how", ["file", "http", "gzip"])
@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_feeds_parse_as_expected(name, how, http_server):
    body, url, ctype = body_via(how, name, http_server)
    want = expected(name)

    feed = parse_feed(body, url, "t", ctype)

    assert len(feed.entries) == want["entries"]
    got = [(e.guid, e.url, e.title) for e in feed.entries]
    assert got == [(i["guid"], i["link"], i["title"]) for i in want["items"]]
    assert (feed.warning is not None) == want["bozo"]


def test_not_a_feed_is_a_clear_error():
    with pytest.raises(FeedParseError, match="HTML page"):
        parse_feed((DATA / "notafeed.html").read_bytes(), "http://x.invalid/", "src")
    with pytest.raises(FeedParseError, match="empty body") as exc:
        parse_feed(b"   ", "http://x.invalid/", "src")
    assert exc.value.source == "src"
    with pytest.raises(FeedParseError, match="JSON Feed"):
        parse_feed(b'{"hello": "world"}', "http://x.invalid/", "src")


def test_relative_links_resolve_against_the_feed_url():
    body = (
        b'<rss version="2.0"><channel><title>t</title><item><title>a</title>'
        b"<link>/news/a.html</link></item></channel></rss>"
    )
    feed = parse_feed(body, "https://site.invalid/feeds/rss.xml", "s")
    assert feed.entries[0].url == "https://site.invalid/news/a.html"


def test_an_unparseable_link_drops_only_the_link():
    # urljoin raises on a broken IPv6 host; found by the fuzz test on a mutated JSON Feed.
    rss = (
        b'<rss version="2.0"><channel><title>t</title><item><title>a</title><guid>g1</guid>'
        b"<link>http://[oops/a.html</link></item><item><title>b</title>"
        b"<link>/b.html</link></item></channel></rss>"
    )
    items = [{"id": "j1", "url": "http://[oops/x", "title": "x"}, {"id": "j2", "url": "/y"}]
    jsonfeed = json.dumps({"version": "https://jsonfeed.org/version/1.1", "items": items})
    for body in (rss, jsonfeed.encode()):
        feed = parse_feed(body, "https://site.invalid/feed", "s")
        assert [e.url for e in feed.entries] == [None, feed.entries[1].url]
        assert feed.entries[1].url.startswith("https://site.invalid/")
        assert feed.entries[0].guid and feed.entries[0].title in ("a", "x")


@pytest.mark.parametrize(
    ("text", "iso"),
    [
        ("Tue, 14 Apr 2026 08:00:00 +0000", "2026-04-14T08:00:00+00:00"),
        ("2026-04-14T10:00:00+02:00", "2026-04-14T08:00:00+00:00"),
        ("2026-04-14T08:00:00Z", "2026-04-14T08:00:00+00:00"),
        ("2026-04-14", "2026-04-14T00:00:00+00:00"),
        ("not a date", None),
        ("", None),
    ],
)
def test_dates_become_utc(text, iso):
    dt = parse_datetime(text)
    assert (dt.isoformat() if dt else None) == iso


def test_feed_entries_keep_content_and_summary_apart(tmp_path: Path):
    body = (DATA / "rss20.xml").read_bytes()
    feed = parse_feed(body, "https://feeds.newsflow.invalid/rss.xml")
    allot = feed.entries[1]
    assert allot.content and "four hundred" in allot.content
    assert allot.summary == "Some applicants face a seven-year wait."
    assert allot.published_at is not None and allot.published_at.isoformat().startswith(
        "2026-04-15T12:30"
    )
