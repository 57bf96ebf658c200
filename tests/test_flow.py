"""The ingest flow end to end: a real Prefect API, a real HTTP server on 127.0.0.1 serving
feeds and pages, a real DuckDB file; every assertion is SQL on the warehouse."""

from __future__ import annotations

import re
import time
from pathlib import Path

from flows.ingest import ingest
from tests.conftest import DATA
from tests.support.fts_reference import extension_bm25
from tests.support.httpserver import Route, TestServer

RSS = "application/rss+xml; charset=utf-8"


def rss(items: list[dict[str, str]], title: str = "Test feed") -> bytes:
    """An RSS 2.0 document of ours."""
    parts = []
    for it in items:
        fields = "".join(
            f"<{k}>{v}</{k}>"
            if k != "content"
            else f"<content:encoded><![CDATA[{v}]]></content:encoded>"
            for k, v in it.items()
        )
        parts.append(f"<item>{fields}</item>")
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/">'
        f"<channel><title>{title}</title><link>http://x.invalid/</link>"
        f"{''.join(parts)}</channel></rss>"
    ).encode()


def page(n: int) -> bytes:
    return (DATA / "pages" / f"a{n}.html").read_bytes()


def fixture_feed(server: TestServer) -> str:
    """tests/data/rss20.xml with its links pointing at our server's copies of the pages."""
    body = (
        (DATA / "rss20.xml")
        .read_bytes()
        .replace(b"https://feeds.newsflow.invalid", server.base_url.encode())
    )
    for n in (1, 2, 3):
        server.set(f"/pages/a{n}.html", body=page(n))
    return server.set("/feed.xml", body=body, content_type=RSS, etag='"v1"')


def test_feed_and_pages_load_then_304_costs_nothing(http_server, make_config, db):
    url = fixture_feed(http_server)
    cfg = make_config([{"name": "local", "kind": "feed", "url": url}])

    s1 = ingest(config_path=str(cfg))

    assert s1.status == "completed"
    # 5 entries; pages a1..a3 exist, the two /news/ links are 404s and keep their feed text.
    assert db("SELECT count(*) FROM entries") == [(5,)]
    assert db("SELECT count(*) FROM articles") == [(5,)]
    by_origin = dict(db("SELECT text_origin, count(*) FROM articles GROUP BY ALL"))
    assert by_origin == {"page": 3, "feed_summary": 2}
    # Tracking parameters are gone from the entry's canonical URL; the article's canonical URL
    # is the one the page declares; the text is the page's, not the feed's summary.
    assert db("SELECT canonical_url FROM entries WHERE guid = 'fx-001'") == [
        (f"{http_server.base_url}/pages/a1.html",)
    ]
    (canon, text, ev) = db(
        "SELECT canonical_url, text, extractor_version FROM articles WHERE title LIKE 'Thornby%'"
    )[0]
    assert canon == "https://feeds.newsflow.invalid/pages/a1.html"
    assert len(text) > 800 and "Sunday opening starts in May." not in text
    assert ev.startswith("trafilatura ")
    # A GUID reused for two different links is not trusted: both entries keyed by URL.
    kinds = dict(db("SELECT title, key_kind FROM entries"))
    assert kinds["Allotment waiting list in Brayfield passes 400 names"] == "url"
    assert kinds["Painters begin three-month job on Ellerby swing bridge"] == "url"
    assert kinds["Market day moves to Thursday"] == "url"
    assert kinds["Thornby library to open on Sunday afternoons from May"] == "guid"
    # The page that failed is recorded with its reason.
    reasons = db("SELECT fallback_reason FROM articles WHERE text_origin = 'feed_summary'")
    assert all("HTTP 404" in r[0] for r in reasons)
    assert db("SELECT count(*) FROM item_errors WHERE stage = 'fetch'") == [(2,)]
    # Raw pages are stored for reprocessing.
    assert db("SELECT count(*) FROM pages") == [(3,)]
    assert db("SELECT status, http_status, entries, new_articles FROM fetches") == [
        ("ok", 200, 5, 5)
    ]
    assert db("SELECT etag FROM sources") == [('"v1"',)]
    articles_before = db("SELECT * EXCLUDE (run_id) FROM articles ORDER BY article_id")
    page_hits = sum(http_server.hits(f"/pages/a{n}.html") for n in (1, 2, 3))

    s2 = ingest(config_path=str(cfg))

    assert s2.status == "completed" and s2.new_articles == 0
    feed_reqs = http_server.requests_for("/feed.xml")
    assert feed_reqs[-1].headers["If-None-Match"] == '"v1"'
    assert sum(http_server.hits(f"/pages/a{n}.html") for n in (1, 2, 3)) == page_hits
    assert db("SELECT status, http_status FROM fetches ORDER BY started_at DESC LIMIT 1") == [
        ("not_modified", 304)
    ]
    assert db("SELECT * EXCLUDE (run_id) FROM articles ORDER BY article_id") == articles_before
    assert db("SELECT count(*) FROM runs WHERE status = 'completed'") == [(2,)]


def test_changed_feed_fetches_only_new_pages(http_server, make_config, db):
    item1 = {"title": "One", "link": http_server.url("/p1"), "guid": "g1", "description": "s1"}
    item2 = {"title": "Two", "link": http_server.url("/p2"), "guid": "g2", "description": "s2"}
    http_server.set("/p1", body=page(1))
    http_server.set("/p2", body=page(2))
    feed = http_server.set_sequence(
        "/f",
        [
            Route(body=rss([item1]), content_type=RSS),
            Route(body=rss([item2, item1]), content_type=RSS),
        ],
    )
    cfg = make_config([{"name": "f", "kind": "feed", "url": feed}])

    ingest(config_path=str(cfg))
    ingest(config_path=str(cfg))

    assert http_server.hits("/p1") == 1 and http_server.hits("/p2") == 1
    assert db("SELECT count(*) FROM articles") == [(2,)]
    assert db("SELECT new_articles FROM fetches ORDER BY started_at") == [(1,), (1,)]


def test_one_failing_source_is_recorded_and_the_others_load(http_server, make_config, db):
    good = http_server.set(
        "/good", body=rss([{"title": "Fine", "guid": "ok-1", "description": "All is well here."}]),
        content_type=RSS,
    )  # fmt: skip
    down = http_server.set("/down", status=500, body=b"oops")
    html = http_server.set("/html", body=b"<!doctype html><html><body><p>hi</p></body></html>")
    gone = http_server.set("/gone", status=404)
    cfg = make_config(
        [
            {"name": "good", "kind": "feed", "url": good},
            {"name": "down", "kind": "feed", "url": down},
            {"name": "html", "kind": "feed", "url": html},
            {"name": "gone", "kind": "feed", "url": gone},
            {"name": "nofolder", "kind": "files", "path": "/nonexistent/newsflow-folder"},
        ],
        fetch={"retries": 2},
    )

    s = ingest(config_path=str(cfg))

    assert s.status == "completed_with_failures"
    assert s.failed_sources == ["down", "html", "gone", "nofolder"]  # in config order
    assert db("SELECT source FROM articles") == [("good",)]
    errors = dict(db("SELECT source, error FROM fetches WHERE status = 'error'"))
    assert "HTTP 500" in errors["down"]
    assert "HTTP 404" in errors["gone"]
    assert "HTML page" in errors["html"]
    assert "no such folder" in errors["nofolder"]
    # 5xx is transient: retried; 404 is not.
    assert http_server.hits("/down") == 3
    assert http_server.hits("/gone") == 1
    assert db("SELECT failures, failed_sources FROM runs") == [
        (4, ["down", "html", "gone", "nofolder"])
    ]
    health = dict(db("SELECT name, consecutive_failures FROM sources"))
    assert health == {"good": 0, "down": 1, "html": 1, "gone": 1, "nofolder": 1}


def test_retry_after_is_honoured_then_the_feed_loads(http_server, make_config, db):
    body = rss([{"title": "Back", "guid": "b1", "description": "Service restored today."}])
    url = http_server.set_sequence(
        "/busy",
        [
            Route(status=503, headers={"Retry-After": "1"}),
            Route(body=body, content_type=RSS),
        ],
    )
    cfg = make_config([{"name": "busy", "kind": "feed", "url": url}], fetch={"retries": 1})

    ingest(config_path=str(cfg))

    reqs = http_server.requests_for("/busy")
    assert len(reqs) == 2
    assert reqs[1].time - reqs[0].time >= 0.95
    assert db("SELECT title FROM articles") == [("Back",)]


def test_redirects_gzip_and_headers(http_server, make_config, db):
    body = rss([{"title": "Zipped", "guid": "z1", "description": "Compressed on the wire."}])
    http_server.set("/real.xml", body=body, gzip=True, content_type=RSS)
    http_server.set("/hop", status=301, redirect_to="/real.xml")
    url = http_server.set("/old", status=302, redirect_to="/hop")
    cfg = make_config([{"name": "z", "kind": "feed", "url": url}])

    ingest(config_path=str(cfg))

    assert db("SELECT title FROM articles") == [("Zipped",)]
    req = http_server.requests_for("/real.xml")[0]
    assert req.headers["User-Agent"].startswith("newsflow/")
    assert "gzip" in req.headers["Accept-Encoding"]


def test_bounded_responses_fail_with_clear_errors(http_server, make_config, db):
    loop = http_server.set("/loop", status=302, redirect_to="/loop")
    big = http_server.set("/big", body=b"<rss>" + b"x" * 50_000 + b"</rss>", content_type=RSS)
    bomb = http_server.set("/bomb", body=b"<rss>" + b" " * 400_000 + b"</rss>", gzip=True)
    slow = http_server.set("/slow", delay=3.0, body=b"late")
    trickle = http_server.set("/trickle", body=b"<rss>" + b" " * 40 + b"</rss>", trickle=0.1)
    cfg = make_config(
        [
            {"name": "loop", "kind": "feed", "url": loop},
            {"name": "big", "kind": "feed", "url": big},
            {"name": "bomb", "kind": "feed", "url": bomb},
            {"name": "slow", "kind": "feed", "url": slow},
            {"name": "trickle", "kind": "feed", "url": trickle},
        ],
        fetch={
            "max_bytes": 20_000,
            "timeout": 1.0,
            "deadline": 2.0,
            "retries": 0,
            "max_redirects": 3,
        },
    )

    t0 = time.monotonic()
    s = ingest(config_path=str(cfg))

    assert time.monotonic() - t0 < 30
    assert s.failures == 5
    errors = dict(db("SELECT source, error FROM fetches"))
    assert "more than 3 redirects" in errors["loop"]
    assert "cap" in errors["big"]
    assert "cap" in errors["bomb"]  # stopped while decompressing, not after
    assert "timed out" in errors["slow"]
    assert "deadline" in errors["trickle"]


def test_page_problems_keep_the_feed_text_with_a_reason(http_server, make_config, db):
    http_server.set("/empty.html", body=b"<html><body><nav>menu</nav></body></html>")
    http_server.set("/file.pdf", body=b"%PDF-1.4", content_type="application/pdf")
    items = [
        {"title": "Empty page", "link": http_server.url("/empty.html"), "guid": "e",
         "content": "<p>The feed carried the whole story of the empty page.</p>"},
        {"title": "A PDF", "link": http_server.url("/file.pdf"), "guid": "p",
         "description": "Summary of a PDF."},
    ]  # fmt: skip
    url = http_server.set("/f.xml", body=rss(items), content_type=RSS)
    cfg = make_config([{"name": "f", "kind": "feed", "url": url}])

    ingest(config_path=str(cfg))

    rows = dict(db("SELECT title, text_origin || ' / ' || fallback_reason FROM articles"))
    assert rows["Empty page"].startswith("feed_content / too_short")
    assert rows["A PDF"].startswith("feed_summary / page is not HTML")
    assert db("SELECT text FROM articles WHERE title = 'Empty page'") == [
        ("The feed carried the whole story of the empty page.",)
    ]


def test_same_link_in_two_feeds_is_one_article_and_same_text_is_a_duplicate(
    http_server, make_config, db
):
    http_server.set("/story", body=page(3))
    # The same page under another URL, without the canonical link that would give it away.
    http_server.set("/copy", body=re.sub(rb'<link rel="canonical"[^>]*>', b"", page(3)))
    a = http_server.set(
        "/a.xml", body=rss([{"title": "Bridge", "link": http_server.url("/story"), "guid": "a1"}]),
        content_type=RSS,
    )  # fmt: skip
    b = http_server.set(
        "/b.xml",
        body=rss(
            [
                {
                    "title": "Bridge again",
                    "link": http_server.url("/story?utm_source=b"),
                    "guid": "b1",
                },
                {"title": "Bridge copy", "link": http_server.url("/copy"), "guid": "b2"},
            ]
        ),
        content_type=RSS,
    )
    cfg = make_config([{"name": "a", "kind": "feed", "url": a}])
    ingest(config_path=str(cfg))
    cfg = make_config(
        [{"name": "a", "kind": "feed", "url": a}, {"name": "b", "kind": "feed", "url": b}]
    )

    s = ingest(config_path=str(cfg))

    assert db("SELECT count(*) FROM entries") == [(3,)]
    assert db("SELECT count(*) FROM articles") == [(2,)]
    assert http_server.hits("/story") == 1  # known article: the page is not fetched again
    dups = db("SELECT entry_key, level, article_id = duplicate_of FROM duplicates ORDER BY level")
    assert [(d[1], d[2]) for d in dups] == [("canonical_url", True), ("content_hash", False)]
    original = db("SELECT article_id FROM articles WHERE source = 'a'")[0][0]
    assert db("SELECT DISTINCT duplicate_of FROM duplicates") == [(original,)]
    assert s.duplicates == 2 and s.new_articles == 0


def test_files_source_reads_every_kind_and_records_bad_items(tmp_path, make_config, db):
    folder = tmp_path / "inbox"
    (folder / "sub").mkdir(parents=True)
    (folder / "a1.html").write_bytes(page(1))
    (folder / "note.txt").write_text(
        "Harbour wall repaired\n\nThe old harbour wall was repaired.\n"
    )
    (folder / "sub" / "memo.md").write_text(
        "# Ferry timetable changes\n\nBoats now leave at nine.\n"
    )
    (folder / "feed.xml").write_bytes(
        rss([{"title": "From a saved feed", "guid": "s1", "description": "Saved feeds work too."}])
    )
    (folder / "feed.json").write_text(
        '{"version": "https://jsonfeed.org/version/1.1", "title": "J", "items": ['
        '{"id": "j1", "title": "From JSON Feed", "content_text": "JSON feeds work."}]}'
    )
    (folder / "lines.jsonl").write_text(
        '{"url": "https://x.invalid/1", "title": "Line one", "text": "First line text.", '
        '"published": "2026-03-01T10:00:00Z", "source": "wire.invalid"}\n'
        '{"title": "No text here"}\n'
        "not json at all\n"
        '{"text": "A line with only text."}\n'
        '{"title": "Headline only: flash from the wire", "text": ""}\n'
        '{"title": "", "text": "  "}\n'
    )
    (folder / "binary.txt").write_bytes(b"\x00\x01\x02binary")
    (folder / "broken.xml").write_bytes(b"<rss><channel><item><title>x</ti")
    (folder / "ignored.csv").write_text("a,b\n")
    outside = tmp_path / "secret.txt"
    outside.write_text("Secret\n\nOutside the folder.\n")
    (folder / "escape.txt").symlink_to(outside)
    cfg = make_config([{"name": "inbox", "kind": "files", "path": str(folder)}])

    s = ingest(config_path=str(cfg))

    titles = {r[0] for r in db("SELECT title FROM articles")}
    assert titles == {
        "Thornby library to open on Sunday afternoons from May",
        "Harbour wall repaired",
        "Ferry timetable changes",
        "From a saved feed",
        "From JSON Feed",
        "Line one",
        "Headline only: flash from the wire",
        None,
    }
    assert "Secret" not in titles  # the symlink out of the folder is not followed
    errors = {(r[0].rsplit("/", 1)[-1], r[1]) for r in db("SELECT item, reason FROM item_errors")}
    assert errors == {
        ("lines.jsonl:2", "bad_record"),
        ("lines.jsonl:3", "bad_json"),
        ("lines.jsonl:6", "bad_record"),
        ("binary.txt", "binary"),
        ("broken.xml", "no_text"),  # its one recoverable item has a title and nothing else
    }
    assert db("SELECT published_at::VARCHAR, site_name FROM articles WHERE title = 'Line one'") == [
        ("2026-03-01 10:00:00+00", "wire.invalid")
    ]
    assert s.status == "completed" and s.new_articles == 8

    before = db("SELECT * EXCLUDE (run_id, fetched_at) FROM articles ORDER BY article_id")
    s2 = ingest(config_path=str(cfg))
    assert s2.new_articles == 0
    assert db("SELECT * EXCLUDE (run_id, fetched_at) FROM articles ORDER BY article_id") == before


def test_file_url_feed(tmp_path, make_config, db):
    f = tmp_path / "saved.xml"
    f.write_bytes(rss([{"title": "Local", "guid": "l1", "description": "From a file URL."}]))
    cfg = make_config([{"name": "local", "kind": "feed", "url": f.as_uri(), "fetch_pages": False}])

    ingest(config_path=str(cfg))

    assert db("SELECT title, text FROM articles") == [("Local", "From a file URL.")]


def test_selected_sources_only(http_server, make_config, db):
    a = http_server.set(
        "/a", body=rss([{"title": "A", "guid": "a", "description": "a"}]), content_type=RSS
    )
    b = http_server.set(
        "/b", body=rss([{"title": "B", "guid": "b", "description": "b"}]), content_type=RSS
    )
    cfg = make_config(
        [{"name": "a", "kind": "feed", "url": a}, {"name": "b", "kind": "feed", "url": b}]
    )

    ingest(config_path=str(cfg), source_names=["b"])

    assert db("SELECT source FROM articles") == [("b",)]
    assert http_server.hits("/a") == 0


def test_search_index_is_refreshed_after_a_load(http_server, make_config, db, tmp_path: Path):
    from tasks.db import Warehouse, search_sql

    url = fixture_feed(http_server)
    cfg = make_config([{"name": "local", "kind": "feed", "url": url}])
    ingest(config_path=str(cfg))

    sql, params = search_sql("allotment waiting list", 3)
    wh = Warehouse(tmp_path / "news.duckdb")
    _, rows = wh.query(sql, params)

    assert rows[0][4] == "Allotment waiting list in Brayfield passes 400 names"
    # Our incremental index scores exactly as the fts extension's own index and BM25 macro.
    ref = extension_bm25(tmp_path / "news.duckdb", "allotment waiting list")[:3]
    assert [(r[0], r[1]) for r in rows] == ref


def test_reprocess_re_extracts_stored_pages_without_refetching(
    http_server, make_config, db, tmp_path
):
    import duckdb
    from click.testing import CliRunner

    from flows.cli import main

    url = fixture_feed(http_server)
    cfg = make_config([{"name": "local", "kind": "feed", "url": url}])
    ingest(config_path=str(cfg))
    original = db("SELECT article_id, text FROM articles WHERE text_origin = 'page' ORDER BY 1")
    hits = len(http_server.requests)
    con = duckdb.connect(str(tmp_path / "news.duckdb"))
    con.execute("UPDATE articles SET text = 'stale text' WHERE text_origin = 'page'")
    con.close()

    result = CliRunner().invoke(main, ["reprocess", "--config", str(cfg)])

    assert result.exit_code == 0, result.output
    assert "re-extracted 3 pages; 3 articles changed" in result.output
    assert (
        db("SELECT article_id, text FROM articles WHERE text_origin = 'page' ORDER BY 1")
        == original
    )
    assert len(http_server.requests) == hits  # nothing refetched


def _copy_of(html: bytes, k: int) -> bytes:
    """The page with one sentence of its own in the article's first paragraph."""
    i = html.index(b"<p>", html.index(b"<article") if b"<article" in html else 0) + 3
    return html[:i] + f"Correction {k}: an earlier version misnamed a street. ".encode() + html[i:]


def _outcome(path: Path) -> dict[str, object]:
    """What a user sees of a run: articles, duplicates, stories (by page URL), search index."""
    import duckdb

    con = duckdb.connect(str(path), read_only=True)
    try:

        def q(sql: str) -> list[tuple[object, ...]]:
            return con.execute(sql).fetchall()

        name = "regexp_extract(a.url, '/p/(.*)$', 1)"
        groups: dict[object, set[object]] = {}
        for sid, n in q(f"SELECT s.story_id, {name} FROM story_articles s JOIN articles a "
                        "USING (article_id)"):  # fmt: skip
            groups.setdefault(sid, set()).add(n)
        return {
            "articles": q(f"SELECT {name}, title, text, content_hash FROM articles a ORDER BY 1"),
            "duplicates": q(
                f"SELECT {name}, d.level, regexp_extract(o.url, '/p/(.*)$', 1) FROM duplicates d "
                "JOIN articles a USING (article_id) JOIN articles o ON o.article_id = "
                "d.duplicate_of ORDER BY 1"
            ),
            "stories": {frozenset(g) for g in groups.values()},
            "errors": q("SELECT item, stage, reason FROM item_errors ORDER BY 1, 2"),
            "unindexed": q(
                "SELECT count(*) FROM articles a ANTI JOIN search_docs USING (article_id)"
            ),
        }
    finally:
        con.close()


def test_pages_streamed_to_workers_end_as_in_process(tmp_path: Path):
    """Three batches whose pages go to two worker processes as they arrive end as the same
    batches extracted in-process, every article searchable."""
    from tests.conftest import ROOT, write_config

    examples = ROOT / "examples" / "articles"
    pages = [p.read_bytes() for p in sorted(examples.glob("*.html"))]
    pages += [page(n) for n in (1, 2, 3)]
    with TestServer() as server:
        items = []
        for i in range(24):  # three batches of 8, near copies of each page among them
            body = pages[i % len(pages)] if i < len(pages) else _copy_of(pages[i % len(pages)], i)
            url = server.set(f"/p/{i}.html", body=body)
            items.append({"title": f"item {i}", "link": url, "guid": f"g{i}"})
        server.set("/p/broken.html", status=500)
        items.append({"title": "broken", "link": server.url("/p/broken.html"), "guid": "b"})
        feed = server.set("/feed.xml", body=rss(items), content_type=RSS)
        outcomes = []
        for name, extract in (
            ("streamed", {"batch_size": 8, "workers": 2}),
            ("in_process", {"batch_size": 8, "workers": 1}),
        ):
            cfg = write_config(
                tmp_path / f"{name}.toml",
                tmp_path / f"{name}.duckdb",
                [{"name": "local", "kind": "feed", "url": feed}],
                extract=extract,
                fetch={"timeout": 5.0, "deadline": 10.0, "retries": 0},
            )
            ingest(config_path=str(cfg))
            outcomes.append(_outcome(tmp_path / f"{name}.duckdb"))

    streamed, in_process = outcomes
    assert len(streamed["articles"]) == 24
    assert any(level == "near_duplicate" for _, level, _ in streamed["duplicates"])
    assert any(len(g) > 1 for g in streamed["stories"])
    assert len(streamed["errors"]) == 2  # the broken page: its fetch, then no text at all
    assert streamed["unindexed"] == [(0,)]
    assert streamed == in_process
