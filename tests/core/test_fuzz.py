"""Fuzzing with Hypothesis: parsers and keys never crash on hostile input, and the stated
properties hold."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.core import neardup, stories
from tasks.core.errors import FeedParseError
from tasks.core.feeds import parse_feed
from tasks.core.text import content_hash, html_to_text, normalize_for_hash
from tasks.core.urls import article_id_for, canonicalize_url, entry_key
from tasks.core.walls import detect_wall
from tests.conftest import DATA

FIXTURES = [(DATA / n).read_bytes() for n in ("rss20.xml", "atom.xml", "rdf10.xml", "feed.json")]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parses_or_says_why(body: bytes) -> None:
    try:
        feed = parse_feed(body, "https://fuzz.invalid/feed", "fuzz")
    except FeedParseError as exc:
        assert exc.source == "fuzz" and str(exc)
        return
    for e in feed.entries:
        assert e.url is None or e.url.startswith(("http", "https", "file", "//")) or ":" in e.url


@FUZZ
@given(st.binary(max_size=2000))
def test_any_bytes(body):
    parses_or_says_why(body)


@FUZZ
@given(st.sampled_from(FIXTURES), st.data())
def test_mutated_feeds(base, data):
    body = bytearray(base)
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        i = data.draw(st.integers(0, max(0, len(body) - 1)))
        if op == "flip" and body:
            body[i] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del body[i : i + data.draw(st.integers(1, 50))]
        else:
            body[i:i] = data.draw(
                st.sampled_from([b"<", b"&", b"]]>", b"\x00", b"<!ENTITY", b"\xff\xfe"])
            )
    parses_or_says_why(bytes(body))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


JSON_KEYS = ["id", "url", "title", "content_html", "content_text", "summary", "date_published",
             "authors", "tags"]  # fmt: skip


@FUZZ
@given(st.lists(st.dictionaries(st.sampled_from(JSON_KEYS), json_values, max_size=6), max_size=5))
def test_json_feeds_with_any_items(items):
    doc = {"version": "https://jsonfeed.org/version/1.1", "title": "f", "items": items}
    parses_or_says_why(json.dumps(doc).encode())


@FUZZ
@given(st.text(max_size=500))
def test_html_fragments_never_crash_and_drop_scripts(s):
    out = html_to_text(s + "<script>alert(1)</script>")
    assert "alert(1)" not in out
    detect_wall(s, out)


@FUZZ
@given(
    st.text(max_size=60), st.sampled_from(["utm_source=x", "fbclid=1", "gclid=2", "utm_medium=rss"])
)
def test_tracking_parameters_never_change_identity(path, tracker):
    base = canonicalize_url("https://news.invalid/" + path.replace("?", "").replace("#", ""))
    if base is None:
        return
    sep = "&" if "?" in base else "?"
    tracked = canonicalize_url(base + sep + tracker)
    assert tracked == base
    assert entry_key(None, tracked, "t") == entry_key(None, base, "t")
    assert article_id_for(tracked, "h") == article_id_for(base, "h")


@FUZZ
@given(st.text(max_size=300))
def test_content_hash_ignores_spacing_and_punctuation(a):
    h = content_hash(a)
    assert h == content_hash("  " + "\n".join(a.split()) + " ")
    assert h == content_hash(a + " ... !")
    assert h == content_hash(normalize_for_hash(a))


@FUZZ
@given(st.text(min_size=1, max_size=400))
def test_dedup_features_never_crash(s):
    params = neardup.NearDupParams()
    sig = neardup.compute_signature(s, params)
    if not sig.is_empty:
        assert neardup.similarity(sig, sig, params) == 1.0
        assert len(neardup.band_keys(sig, params)) == params.num_bands
    terms = stories.document_terms("t", s)
    assert all(isinstance(t, str) and t for t in terms)
