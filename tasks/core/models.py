"""Plain data passed between the pipeline's stages (frozen, hashable where it matters)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

KeyKind = Literal["guid", "url", "content"]
TextOrigin = Literal["page", "file", "feed_content", "feed_summary", "jsonl", "none"]


@dataclass(frozen=True)
class FeedEntry:
    """One item of a feed, as the feed states it (links already absolute)."""

    guid: str | None = None
    url: str | None = None
    title: str | None = None
    summary: str | None = None
    """Summary/description, HTML or text."""
    content: str | None = None
    """Full content (``content:encoded``, Atom content, JSON ``content_html``), HTML or text."""
    author: str | None = None
    published_at: datetime | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParsedFeed:
    version: str
    """feedparser's version string (``rss20``, ``atom10``...) or ``json1``."""
    title: str | None
    entries: tuple[FeedEntry, ...]
    warning: str | None = None
    """A survivable problem (feedparser's bozo), recorded but not fatal."""
    ttl_minutes: int | None = None


@dataclass(frozen=True)
class HttpResult:
    """What an HTTP (or file) retrieval gave back."""

    url: str
    """Final URL, after redirects."""
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    not_modified: bool = False

    @property
    def etag(self) -> str | None:
        return self.headers.get("etag")

    @property
    def last_modified(self) -> str | None:
        return self.headers.get("last-modified")


@dataclass(frozen=True)
class Candidate:
    """An entry of a source, keyed, with whatever text it brought along."""

    source: str
    entry_key: str
    key_kind: KeyKind
    guid: str | None
    url: str | None
    canonical_url: str | None
    title: str | None
    author: str | None
    published_at: datetime | None
    tags: tuple[str, ...]
    fallback_text: str | None
    """Text the entry carries itself (feed content or summary, a text file, a JSONL line)."""
    fallback_origin: TextOrigin
    html: str | None = None
    """An HTML page to extract (a local .html file); pages of feeds are fetched later."""
    location: str | None = None
    """Where the item came from when it is not the URL (a file path, ``file.jsonl:12``)."""
    site_name: str | None = None
    """The outlet as the source names it (a feed's title, a JSONL line's ``source``)."""


@dataclass(frozen=True)
class Extracted:
    """Trafilatura's output for one page (``text`` None when it found no text)."""

    text: str | None
    title: str | None = None
    author: str | None = None
    published: str | None = None
    site_name: str | None = None
    language: str | None = None
    canonical_url: str | None = None
    tags: tuple[str, ...] = ()
    error: str | None = None
    page_z: bytes | None = None
    """The page's HTML (UTF-8), zlib-compressed by the worker, kept for ``reprocess``."""


@dataclass(frozen=True)
class Article:
    """A row of ``articles``, ready to load."""

    article_id: str
    source: str
    entry_key: str
    url: str | None
    canonical_url: str | None
    title: str | None
    text: str
    author: str | None
    published_at: datetime | None
    site_name: str | None
    language: str | None
    tags: tuple[str, ...]
    content_hash: str
    fetched_at: datetime
    text_origin: TextOrigin
    fallback_reason: str | None
    extractor_version: str | None
    page_z: bytes | None
    """The page's HTML, zlib-compressed, stored in ``pages`` for ``newsflow reprocess``."""


@dataclass(frozen=True)
class ItemError:
    """A per-item problem: recorded with its reason, never fatal to the source."""

    source: str
    item: str
    stage: str
    reason: str
    detail: str
