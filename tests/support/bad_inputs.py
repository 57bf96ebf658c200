"""The hostile-input table: one source per case, served from 127.0.0.1, run together with a
good source. Used by ``tests/test_bad_input.py`` (assertions) and ``bench/bad_input_report.py``
(the printed table)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.httpserver import Route, TestServer

RSS = "application/rss+xml; charset=utf-8"


def feed(items: str, encoding: str = "utf-8") -> bytes:
    return (
        f'<?xml version="1.0" encoding="{encoding}"?><rss version="2.0"><channel><title>t</title>'
        f"{items}</channel></rss>"
    ).encode(encoding)


GOOD = feed(
    "<item><guid>g1</guid><title>A good item</title>"
    "<description>The good source still loads.</description></item>"
)
BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<rss version="2.0"><channel><title>&lol9;</title>
<item><guid isPermaLink="false">x</guid><title>&lol9;</title>
<description>&lol9;</description></item>
</channel></rss>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE rss [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<rss version="2.0"><channel><title>t</title>
<item><guid>xxe</guid><title>External entity</title><description>&xxe;</description></item>
</channel></rss>"""
CONSENT = (
    b"<html><head><title>Before you continue</title></head><body><div id='sp_message_container'>"
    b"<h1>We value your privacy</h1><p>We and our partners store and access information on your "
    b"device. Accept all cookies or manage your privacy settings.</p><button>Accept all</button>"
    b"</div></body></html>"
)
CHALLENGE = (
    b"<html><head><title>Just a moment...</title></head><body><h1>Checking your browser before "
    b"accessing the site.</h1><p>Please enable JavaScript and cookies to continue.</p>"
    b"<script src='/cdn-cgi/challenge-platform/h/g/orchestrate/chl_page/v1'></script></body></html>"
)
LYING = feed(
    "<item><guid isPermaLink='false'>l</guid><title>Caf\xe9 cr\xe8me</title>"
    "<description>Pr\xeat \xe0 servir.</description></item>",
    "latin-1",
).replace(b"latin-1", b"utf-8")
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 20


@dataclass(frozen=True)
class Case:
    name: str
    what: str
    setup: Callable[[TestServer], str]
    """Registers routes; returns the feed URL."""
    expect: str
    """A substring of what the warehouse records for the case (error or reason)."""
    level: str = "source"
    """``source``: the source fails; ``item``: the feed loads, its page is refused."""


def _items_linking(server: TestServer, path: str, route: Route) -> str:
    server.set(path, route)
    return server.set(
        f"/feed{path}",
        body=feed(
            f"<item><guid>{path}</guid><title>Item {path}</title><link>{server.url(path)}</link>"
            f"<description>Feed summary for {path}.</description></item>"
        ),
        content_type=RSS,
    )


def _ssrf(server: TestServer) -> str:
    port = server.base_url.rsplit(":", 1)[1]
    return server.set(
        "/feed-ssrf",
        body=feed(
            f"<item><guid>s</guid><title>Internal link</title><link>http://127.0.0.2:{port}/x</link>"
            "<description>A link to another loopback address.</description></item>"
        ),
        content_type=RSS,
    )


CASES: list[Case] = [
    Case("malformed", "ill-formed XML with nothing recoverable",
         lambda s: s.set("/malformed", body=b"<rss><channel><title>x</ti", content_type=RSS),
         "ill-formed feed"),
    Case("lying-encoding", "declared UTF-8, sent as Latin-1",
         lambda s: s.set("/lying", body=LYING, content_type="application/rss+xml; charset=utf-8"),
         "CharacterEncoding", level="warning"),
    Case("html-as-feed", "an HTML page where the feed should be",
         lambda s: s.set("/html", body=b"<!DOCTYPE html><html><body><p>Home</p></body></html>"),
         "HTML page"),
    Case("empty", "200 with an empty body", lambda s: s.set("/empty", body=b""), "empty body"),
    Case("binary", "a PNG image served as the feed",
         lambda s: s.set("/binary", body=PNG, content_type="image/png"), "not a feed"),
    Case("gzip-bomb", "4 MB of zeros gzipped to a few kB (cap 1 MB)",
         lambda s: s.set("/bomb", body=b"\x00" * 4_000_000, gzip=True, content_type=RSS), "cap"),
    Case("oversized", "a 2 MB body (cap 1 MB)",
         lambda s: s.set("/big", body=b"<rss>" + b" " * 2_000_000 + b"</rss>", content_type=RSS),
         "cap"),
    Case("entity-expansion", "billion laughs: nested XML entities",
         lambda s: s.set("/lol", body=BILLION_LAUGHS, content_type=RSS), "undefined entity",
         level="warning"),
    Case("external-entity", "an external entity naming a local file",
         lambda s: s.set("/xxe", body=EXTERNAL_ENTITY, content_type=RSS), "not expanded",
         level="xxe"),
    Case("redirect-loop", "a redirect to itself",
         lambda s: s.set("/loop", status=302, redirect_to="/loop"), "redirects"),
    Case("trickle", "a server sending one byte every 0.2 s (deadline 2 s)",
         lambda s: s.set("/trickle", body=b"<rss>" + b" " * 60 + b"</rss>", trickle=0.2),
         "deadline"),
    Case("http-404", "not found", lambda s: s.set("/nf", status=404), "HTTP 404"),
    Case("http-503", "unavailable", lambda s: s.set("/down", status=503), "HTTP 503"),
    Case("tls", "https to a server that speaks plain HTTP",
         lambda s: s.base_url.replace("http://", "https://") + "/tls", "ConnectError"),
    Case("refused", "nothing listens on the port", lambda s: "http://127.0.0.1:9/feed",
         "ConnectError"),
    Case("consent-wall", "the article page is a cookie-consent wall",
         lambda s: _items_linking(s, "/consent", Route(body=CONSENT)), "consent_wall",
         level="item"),
    Case("bot-challenge", "the article page is an anti-bot challenge",
         lambda s: _items_linking(s, "/challenge", Route(body=CHALLENGE, status=200)),
         "bot_challenge", level="item"),
    Case("ssrf", "an article link to another loopback address", _ssrf, "blocked_address",
         level="item"),
]  # fmt: skip

FETCH = {
    "max_bytes": 1_000_000, "timeout": 2.0, "deadline": 2.0, "retries": 0, "max_redirects": 3,
}  # fmt: skip


def sources_for(server: TestServer) -> list[dict[str, Any]]:
    good = server.set("/good.xml", body=GOOD, content_type=RSS)
    return [{"name": c.name, "kind": "feed", "url": c.setup(server)} for c in CASES] + [
        {"name": "good", "kind": "feed", "url": good}
    ]


def outcome_table(warehouse: Path) -> list[dict[str, Any]]:
    """What the warehouse recorded per case."""
    import duckdb

    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        fetches = {
            r[0]: r[1:]
            for r in con.execute("SELECT source, status, error, warning FROM fetches").fetchall()
        }
        items = dict(
            con.execute(
                "SELECT source, string_agg(reason || ': ' || coalesce(detail, ''), '; ') "
                "FROM item_errors GROUP BY source"
            ).fetchall()
        )
        texts = dict(
            con.execute("SELECT source, string_agg(text, ' ') FROM articles GROUP BY 1").fetchall()
        )
        good = con.execute("SELECT count(*) FROM articles WHERE source = 'good'").fetchone()
    finally:
        con.close()
    rows = []
    for c in CASES:
        status, error, warning = fetches.get(c.name, (None, None, None))
        recorded = " | ".join(x for x in (error, items.get(c.name), warning) if x)
        if c.level == "xxe":
            text = texts.get(c.name) or ""
            recorded = "entity not expanded" if "root:" not in text else "EXPANDED: " + text[:80]
        rows.append(
            {
                "case": c.name,
                "input": c.what,
                "status": status,
                "recorded": recorded[:400],
                "expected": c.expect,
                "ok": c.expect in recorded,
                "articles": texts.get(c.name) is not None,
                "other_sources_loaded": bool(good and good[0] == 1),
            }
        )
    return rows
