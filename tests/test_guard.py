"""No server-side request forgery: links to non-public addresses are refused before any
connection is made, unless config allows them. Only loopback addresses are ever used here."""

from __future__ import annotations

import pytest

from config.settings import FetchSettings
from flows.ingest import ingest
from tasks.core.errors import FetchError
from tasks.fetch import Fetcher
from tasks.guard import AddressPolicy
from tests.test_flow import RSS, page, rss


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("127.0.0.1", False),
        ("127.0.0.2", False),
        ("::1", False),
        ("::ffff:127.0.0.1", False),
        ("0.0.0.0", False),
        ("169.254.169.254", False),  # cloud metadata: link-local
        ("fe80::1", False),
        ("224.0.0.1", False),
        ("93.184.216.34", True),  # a public address: checked, never contacted
        ("2606:4700::1111", True),
    ],
)
def test_policy_refuses_non_public_addresses(address, allowed):
    assert AddressPolicy.build(True, [], []).allows("h.invalid", address) is allowed


def test_policy_exemptions():
    p = AddressPolicy.build(True, ["intranet.local"], ["127.0.0.0/8"])
    assert p.allows("intranet.local", "127.9.9.9")
    assert p.allows("other.invalid", "127.0.0.2")
    assert not p.allows("other.invalid", "::1")
    assert AddressPolicy.build(False, [], []).allows("x", "127.0.0.1")


def test_fetcher_refuses_loopback_links_and_redirects_into_them(http_server):
    target = http_server.set("/secret", body=b"internal")
    hop = http_server.set("/hop", status=302, redirect_to=target)
    with Fetcher(FetchSettings(timeout=5)) as f:
        for url in (target, hop):
            with pytest.raises(FetchError, match="not a public address") as exc:
                f.get(url, source="s")
            assert exc.value.reason == "blocked_address"
    with Fetcher(FetchSettings(timeout=5), trusted_hosts=["127.0.0.1"]) as f:
        assert f.get(target, source="s").body == b"internal"
    assert http_server.hits("/secret") == 1  # only the trusted fetch reached the server


def test_feed_links_to_other_loopback_hosts_are_refused(http_server, make_config, db):
    port = http_server.base_url.rsplit(":", 1)[1]
    http_server.set("/p", body=page(1))
    items = [
        {"title": "Other loopback", "guid": "a", "link": f"http://127.0.0.2:{port}/p",
         "description": "Summary A."},
        {"title": "By name", "guid": "b", "link": f"http://localhost:{port}/p",
         "description": "Summary B."},
        {"title": "Same host", "guid": "c", "link": http_server.url("/p"),
         "description": "Summary C."},
    ]  # fmt: skip
    feed = http_server.set("/f.xml", body=rss(items), content_type=RSS)
    cfg = make_config([{"name": "f", "kind": "feed", "url": feed}])

    ingest(config_path=str(cfg))

    rows = dict(db("SELECT title, text_origin FROM articles"))
    assert rows == {
        "Other loopback": "feed_summary",
        "By name": "feed_summary",
        "Same host": "page",
    }
    assert http_server.hits("/p") == 1
    reasons = db("SELECT reason FROM item_errors ORDER BY item")
    assert reasons == [("blocked_address",), ("blocked_address",)]


def test_allowed_hosts_are_fetched(http_server, make_config, db):
    port = http_server.base_url.rsplit(":", 1)[1]
    http_server.set("/p", body=page(2))
    items = [{"title": "By name", "guid": "b", "link": f"http://localhost:{port}/p"}]
    feed = http_server.set("/f.xml", body=rss(items), content_type=RSS)
    cfg = make_config(
        [{"name": "f", "kind": "feed", "url": feed}], fetch={"allow_hosts": ["localhost"]}
    )

    ingest(config_path=str(cfg))

    assert db("SELECT text_origin FROM articles") == [("page",)]
