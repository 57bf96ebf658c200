"""URL canonicalisation, entry keys and content hashes: the identity of what we load."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.core.text import content_hash, html_to_text, normalize_for_hash
from tasks.core.urls import article_id_for, canonicalize_url, entry_key, url_identity


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        ("HTTP://WWW.Example.COM:80/a/b?utm_source=x&id=3&fbclid=z#frag", "http://www.example.com/a/b?id=3"),
        ("https://example.com/a?b=2&a=1", "https://example.com/a?a=1&b=2"),
        ("https://example.com/x/./y/../z", "https://example.com/x/z"),
        ("https://example.com", "https://example.com/"),
        ("https://ex.com/a?gclid=1&utm_medium=rss", "https://ex.com/a"),
        ("mailto:someone@example.com", None),
        ("javascript:void(0)", None),
        ("", None),
        (None, None),
    ],
)  # fmt: skip
def test_canonical_urls(url, canonical):
    assert canonicalize_url(url) == canonical


def test_identity_ignores_scheme_www_and_trailing_slash():
    a = canonicalize_url("http://www.news.invalid/story/")
    b = canonicalize_url("https://news.invalid/story?utm_campaign=feed")
    assert a and b and url_identity(a) == url_identity(b)
    assert article_id_for(a, "h1") == article_id_for(b, "h2")


def test_entry_keys_prefer_guid_then_url_then_content():
    assert entry_key("g-1", "https://x.invalid/a", "t") == ("guid:g-1", "guid")
    assert entry_key("g-1", "https://x.invalid/a", "t", guid_usable=False) == (
        "url:x.invalid/a",
        "url",
    )
    assert entry_key(None, None, "some text")[1] == "content"
    assert entry_key(None, None, "some text") == entry_key(None, None, "some text")
    assert entry_key(None, None, "some text") != entry_key(None, None, "other text")


def test_content_hash_ignores_case_punctuation_and_spacing():
    assert content_hash("Hello,  World!\n") == content_hash("hello world")
    assert content_hash("Hello world") != content_hash("Hello there world")


def test_html_fragments_become_paragraphs():
    assert html_to_text("<p>One <b>two</b></p><p>Three&nbsp;four</p><script>x()</script>") == (
        "One two\n\nThree four"
    )
    assert html_to_text("plain &amp; simple") == "plain & simple"


@given(st.text())
def test_normalisation_is_idempotent(s):
    n = normalize_for_hash(s)
    assert normalize_for_hash(n) == n


@given(st.text(max_size=200))
def test_canonicalisation_never_crashes_and_is_idempotent(s):
    c = canonicalize_url("https://example.com/" + s)
    if c is not None:
        assert canonicalize_url(c) == c
