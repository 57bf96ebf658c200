"""Parse feed bodies: RSS 0.9x/1.0/2.0 and Atom through feedparser, JSON Feed by hand.

Parsing never touches the network: feedparser gets bytes, never a URL (it would fetch it with
its own client). A feed feedparser flags as "bozo" but still reads is kept, with the problem
as a warning; a body that yields no feed at all raises :class:`FeedParseError`.
"""

from __future__ import annotations

import calendar
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin

import feedparser
from feedparser.datetimes import _parse_date

from tasks.core.errors import FeedParseError
from tasks.core.models import FeedEntry, ParsedFeed
from tasks.core.text import html_to_text

feedparser.RESOLVE_RELATIVE_URIS = True
feedparser.SANITIZE_HTML = True

_HTML_TYPES = ("text/html", "application/xhtml+xml")
_JSONFEED_VERSION = re.compile(r"^https?://jsonfeed\.org/version/1(\.\d+)?/?$")


def _struct_to_dt(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromtimestamp(calendar.timegm(value), tz=UTC)
    except (OverflowError, ValueError, TypeError):
        return None


def parse_datetime(value: str | None) -> datetime | None:
    """ISO 8601 or RFC 822 date (as feeds write them) to an aware UTC datetime."""
    if not value or not isinstance(value, str):
        return None
    v = value.strip()
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        parsed = _parse_date(v)  # RFC 822, W3C-DTF and the rest of feedparser's zoo
        return _struct_to_dt(parsed)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def _str(v: Any) -> str | None:
    if v is None:
        return None
    s = str(v).strip()
    return s or None


def _looks_like_json(body: bytes, content_type: str | None) -> bool:
    if content_type and "json" in content_type.lower():
        return True
    return body.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{"


def _looks_like_html(body: bytes) -> bool:
    head = body[:2048].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html"))


def parse_feed(
    body: bytes, url: str, source: str = "", content_type: str | None = None
) -> ParsedFeed:
    """Parse a feed body fetched from ``url`` (used as the base of relative links)."""
    if not body or not body.strip():
        raise FeedParseError(source, "empty body")
    if _looks_like_json(body, content_type):
        return _parse_json_feed(body, url, source)
    # Without a declared type feedparser flags every feed as bozo; a feed is XML until told.
    headers = {"content-location": url, "content-type": content_type or "application/xml"}
    try:
        d = feedparser.parse(body, response_headers=headers, sanitize_html=True)
    except Exception as exc:  # feedparser itself fails on some hostile bytes (found by fuzzing)
        why = f"not a feed: the parser failed: {type(exc).__name__}: {exc}"
        raise FeedParseError(source, why) from exc

    problem = d.get("bozo_exception") if d.get("bozo") else None
    if not d.entries and not d.get("version"):
        if _looks_like_html(body):
            raise FeedParseError(source, "not a feed: the body is an HTML page")
        why = f"{type(problem).__name__}: {problem}" if problem else "no feed elements found"
        raise FeedParseError(source, f"not a feed: {why}")
    if not d.entries and problem:
        raise FeedParseError(
            source, f"ill-formed feed, no readable entries: {type(problem).__name__}: {problem}"
        )
    entries = tuple(_entry_from_feedparser(e, url) for e in d.entries)
    ttl = _str(d.feed.get("ttl"))
    return ParsedFeed(
        version=d.get("version") or "unknown",
        title=_str(d.feed.get("title")),
        entries=entries,
        warning=f"{type(problem).__name__}: {problem}" if problem else None,
        ttl_minutes=int(ttl) if ttl and ttl.isdigit() else None,
    )


def _plain(e: Mapping[str, Any], key: str) -> Any:
    """A key of a feedparser dict without its fallbacks (which warn)."""
    return dict.get(e, key) if isinstance(e, dict) else e.get(key)


def _entry_from_feedparser(e: Mapping[str, Any], base: str) -> FeedEntry:
    contents = [c for c in e.get("content", []) if c.get("value")]
    content = max((c["value"] for c in contents), key=len) if contents else None
    summary = _str(e.get("summary"))
    if content is not None and summary is not None and content.strip() == summary:
        summary = None
    link = _str(e.get("link"))
    if not link:
        for lk in e.get("links", []):
            if lk.get("rel", "alternate") == "alternate" and lk.get("href"):
                link = lk["href"]
                break
    title = _str(e.get("title"))
    if title and (e.get("title_detail") or {}).get("type") in _HTML_TYPES:
        title = html_to_text(title) or None
    return FeedEntry(
        guid=_str(e.get("id")),
        url=_join(base, link),
        title=title,
        summary=summary,
        content=content,
        author=_str(e.get("author")),
        # dict.get: feedparser's own mapping warns when it falls back between the two keys
        published_at=_struct_to_dt(_plain(e, "published_parsed") or _plain(e, "updated_parsed")),
        tags=tuple(t["term"] for t in e.get("tags", []) if t.get("term")),
    )


def _join(base: str, link: str | None) -> str | None:
    """``link`` resolved against ``base``; an unparseable link (``http://[oops/``) is no link:
    the entry keeps its other fields, and its identity falls back to its GUID or title."""
    if not link:
        return None
    try:
        return urljoin(base, link)
    except ValueError:
        return None


def _parse_json_feed(body: bytes, url: str, source: str) -> ParsedFeed:
    try:
        doc = json.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FeedParseError(source, f"not a feed: invalid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not _JSONFEED_VERSION.match(str(doc.get("version", ""))):
        raise FeedParseError(source, "not a feed: JSON without a JSON Feed 'version'")
    items = doc.get("items")
    if not isinstance(items, list):
        raise FeedParseError(source, "JSON Feed without an 'items' list")
    entries = []
    for it in items:
        if not isinstance(it, dict):
            continue
        raw_authors = it.get("authors")
        authors: list[Any] = raw_authors if isinstance(raw_authors, list) else []
        if not authors and isinstance(it.get("author"), dict):
            authors = [it["author"]]
        author = next(
            (_str(a.get("name")) for a in authors if isinstance(a, dict) and a.get("name")), None
        )
        link = _str(it.get("url")) or _str(it.get("external_url"))
        raw_tags = it.get("tags")
        tags: list[Any] = raw_tags if isinstance(raw_tags, list) else []
        entries.append(
            FeedEntry(
                guid=_str(it.get("id")),
                url=_join(url, link),
                title=_str(it.get("title")),
                summary=_str(it.get("summary")),
                content=_str(it.get("content_html")) or _str(it.get("content_text")),
                author=author,
                published_at=parse_datetime(it.get("date_published") or it.get("date_modified")),
                tags=tuple(str(t) for t in tags),
            )
        )
    return ParsedFeed(
        version="json" + str(doc["version"]).rstrip("/").rsplit("/", 1)[-1],
        title=_str(doc.get("title")),
        entries=tuple(entries),
    )
