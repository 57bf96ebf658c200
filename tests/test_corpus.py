"""The real-world corpus in ../shared/corpus, served from 127.0.0.1, through the real flow.

Its feeds link to real sites, so page fetching is off for them; its pages are listed by a feed
of ours whose links point at our loopback server. Skipped when ../shared is absent.
"""

from __future__ import annotations

import csv
from html import escape

import pytest
import trafilatura

from config.settings import ExtractSettings
from flows.ingest import ingest
from tests.conftest import SHARED

CORPUS = SHARED / "corpus"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CORPUS / "manifest.csv").exists(), reason="../shared/corpus absent"),
]


def manifest(kind: str) -> list[dict[str, str]]:
    with (CORPUS / "manifest.csv").open(newline="", encoding="utf-8") as f:
        return [r for r in csv.DictReader(f) if r["kind"] == kind]


def listing_feed(urls: list[tuple[str, str]]) -> bytes:
    items = "".join(
        f"<item><title>{escape(t)}</title><link>{escape(u)}</link><guid>{escape(t)}</guid></item>"
        for t, u in urls
    )
    return (
        f'<?xml version="1.0"?><rss version="2.0"><channel><title>corpus</title>{items}'
        "</channel></rss>"
    ).encode()


def test_every_page_yields_trafilaturas_text_or_a_reason(http_server, make_config, db):
    pages = manifest("html")
    http_server.serve_dir("/corpus", CORPUS)
    urls = [(p["id"], http_server.url("/corpus/" + p["local_path"])) for p in pages]
    feed = http_server.set(
        "/pages.xml", body=listing_feed(urls), content_type="application/rss+xml"
    )
    cfg = make_config(
        [{"name": "corpus-pages", "kind": "feed", "url": feed}], extract={"workers": 2}
    )

    s = ingest(config_path=str(cfg))

    assert s.status == "completed"
    stored = dict(db("SELECT url, text FROM articles WHERE text_origin = 'page'"))
    reasons = {r[0]: r[1] for r in db("SELECT item, reason FROM item_errors")}
    opts = ExtractSettings()  # the pipeline's options, which the test config leaves as they are
    mismatched = []
    for (_, url), p in zip(urls, pages, strict=True):
        raw = (CORPUS / p["local_path"]).read_bytes()
        doc = trafilatura.bare_extraction(
            raw,
            url=url,
            with_metadata=True,
            include_comments=opts.include_comments,
            include_tables=opts.include_tables,
            favor_precision=opts.favor_precision,
        )
        want = (doc.text or "").strip() if doc is not None else ""
        if url in stored:
            if stored[url] != want:
                mismatched.append(p["id"])
        else:
            assert reasons.get(url), f"{p['id']}: neither text nor a recorded reason"
            assert len(want) < 50, f"{p['id']}: Trafilatura finds text, the pipeline did not"
    assert not mismatched
    assert len(stored) >= 0.9 * len(pages)


def test_every_feed_loads_its_entries(http_server, make_config, db):
    feeds = manifest("feeds")
    http_server.serve_dir("/corpus", CORPUS)
    sources = [
        {"name": f"f{i:03d}", "kind": "feed", "url": http_server.url("/corpus/" + f["local_path"])}
        for i, f in enumerate(feeds)
    ]
    cfg = make_config(sources, fetch={"fetch_pages": False})

    s = ingest(config_path=str(cfg))

    assert s.status == "completed", s.failed_sources
    got = dict(db("SELECT source, entries FROM fetches WHERE status = 'ok'"))
    loaded = dict(db("SELECT source, count(*) FROM entries GROUP BY ALL"))
    no_text = dict(db("SELECT source, count(*) FROM item_errors GROUP BY ALL"))
    for src, f in zip(sources, feeds, strict=True):
        assert got[src["name"]] == int(f["fp_entries"]), f["local_path"]
        if int(f["fp_entries"]):
            assert loaded.get(src["name"], 0) + no_text.get(src["name"], 0) >= 1, f["local_path"]
    assert sum(loaded.values()) >= 0.8 * sum(int(f["fp_entries"]) for f in feeds)


def test_malformed_feeds_end_as_errors_or_entries_and_the_run_completes(
    http_server, make_config, db
):
    bad = manifest("malformed")
    http_server.serve_dir("/corpus", CORPUS)
    good = http_server.set(
        "/good.xml",
        body=listing_feed([("A good item", "http://127.0.0.1:9/x")]).replace(
            b"</guid>", b"</guid><description>Still loads.</description>"
        ),
        content_type="application/rss+xml",
    )
    sources = [
        {"name": f"m{i:02d}", "kind": "feed", "url": http_server.url("/corpus/" + f["local_path"])}
        for i, f in enumerate(bad)
    ] + [{"name": "good", "kind": "feed", "url": good}]
    cfg = make_config(sources, fetch={"fetch_pages": False})

    s = ingest(config_path=str(cfg))

    assert s.status in ("completed", "completed_with_failures")
    rows = {r[0]: r[1:] for r in db("SELECT source, status, error, entries FROM fetches")}
    assert len(rows) == len(sources)
    for src, f in zip(sources[:-1], bad, strict=True):
        status, error, entries = rows[src["name"]]
        if status == "error":
            assert error and len(error) > 10, f["local_path"]
        else:
            assert status == "ok" and entries >= 0, f["local_path"]
    assert db("SELECT text FROM articles WHERE source = 'good'") == [("Still loads.",)]
