"""From what a source lists to rows: entry keys, fallback text, and articles.

Pure: no network, disk or database. Identity rules (see the README's design notes):

- an entry's key within its source is its GUID, unless the GUID is missing or reused within
  the feed for different links; then its canonical URL; else a hash of its content;
- an article's id is a hash of its canonical URL identity (else of its content hash), so the
  same page listed by two sources, or twice by one, is one article.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime

from tasks.core.feeds import parse_datetime
from tasks.core.models import (
    Article,
    Candidate,
    Extracted,
    FeedEntry,
    ParsedFeed,
    TextOrigin,
)
from tasks.core.text import content_hash, html_to_text, tidy
from tasks.core.urls import article_id_for, canonicalize_url, entry_key


def candidates_from_feed(
    source: str, feed: ParsedFeed, location: str | None = None
) -> list[Candidate]:
    """Key each entry of a parsed feed; GUIDs reused for different links are not trusted."""
    canon = [canonicalize_url(e.url) for e in feed.entries]
    links_by_guid: dict[str, set[str | None]] = defaultdict(set)
    for e, c in zip(feed.entries, canon, strict=True):
        if e.guid:
            links_by_guid[e.guid.strip()].add(c)
    out: list[Candidate] = []
    for e, c in zip(feed.entries, canon, strict=True):
        usable = bool(e.guid) and len(links_by_guid[(e.guid or "").strip()]) == 1
        out.append(
            candidate_from_entry(
                source, e, c, guid_usable=usable, location=location, site_name=feed.title
            )
        )
    return out


def candidate_from_entry(
    source: str,
    e: FeedEntry,
    canonical: str | None,
    *,
    guid_usable: bool = True,
    location: str | None = None,
    site_name: str | None = None,
) -> Candidate:
    text: str | None = None
    origin: TextOrigin = "none"
    if e.content and (t := html_to_text(e.content)):
        text, origin = t, "feed_content"
    elif e.summary and (t := html_to_text(e.summary)):
        text, origin = t, "feed_summary"
    key, kind = entry_key(
        e.guid, canonical, f"{e.title or ''}\n{text or ''}", guid_usable=guid_usable
    )
    return Candidate(
        source=source,
        entry_key=key,
        key_kind=kind,
        guid=e.guid,
        url=e.url,
        canonical_url=canonical,
        title=e.title,
        author=e.author,
        published_at=e.published_at,
        tags=e.tags,
        fallback_text=text,
        fallback_origin=origin,
        location=location,
        site_name=site_name,
    )


def candidate_from_text(source: str, url: str, raw: str, *, location: str) -> Candidate:
    """A plain-text or Markdown article: the first non-empty line is the title."""
    lines = raw.replace("\r\n", "\n").split("\n")
    title = None
    body_from = 0
    for i, line in enumerate(lines):
        if line.strip():
            title = line.strip().lstrip("#").strip() or None
            body_from = i + 1
            break
    text = tidy("\n".join(lines[body_from:])) or (title or "")
    canonical = canonicalize_url(url)
    key, kind = entry_key(None, canonical, text)
    return Candidate(
        source=source, entry_key=key, key_kind=kind, guid=None, url=url,
        canonical_url=canonical, title=title, author=None, published_at=None, tags=(),
        fallback_text=text, fallback_origin="file", location=location,
    )  # fmt: skip


def candidate_from_html_file(source: str, url: str, html: str, *, location: str) -> Candidate:
    canonical = canonicalize_url(url)
    key, kind = entry_key(None, canonical, html)
    return Candidate(
        source=source, entry_key=key, key_kind=kind, guid=None, url=url,
        canonical_url=canonical, title=None, author=None, published_at=None, tags=(),
        fallback_text=None, fallback_origin="none", html=html, location=location,
    )  # fmt: skip


class BadRecord(ValueError):
    """A JSONL line that is not an article (the message says why)."""


def candidate_from_record(source: str, record: object, *, location: str) -> Candidate:
    """A pre-extracted article (``url, title, text, published, source``; only text required)."""
    if not isinstance(record, dict):
        raise BadRecord(f"expected a JSON object, got {type(record).__name__}")
    if "text" not in record:
        raise BadRecord("missing 'text'")
    text = record["text"]
    url = record.get("url") if isinstance(record.get("url"), str) else None
    title = record.get("title") if isinstance(record.get("title"), str) else None
    if text is None or (isinstance(text, str) and not text.strip()):
        # A headline-only item (wire flashes, some archives): the headline is its text.
        if not title or not title.strip():
            raise BadRecord("empty 'text' and no 'title'")
        text = title
    if not isinstance(text, str):
        raise BadRecord(f"'text' must be a string, not {type(text).__name__}")
    published = record.get("published")
    canonical = canonicalize_url(url)
    body = tidy(text)
    key, kind = entry_key(
        str(record["id"]) if isinstance(record.get("id"), str | int) else None,
        canonical,
        f"{title or ''}\n{body}",
    )
    outlet = record.get("source")
    return Candidate(
        source=source,
        entry_key=key,
        key_kind=kind,
        guid=str(record["id"]) if isinstance(record.get("id"), str | int) else None,
        url=url,
        canonical_url=canonical,
        title=title,
        author=record.get("author") if isinstance(record.get("author"), str) else None,
        published_at=parse_datetime(published) if isinstance(published, str) else None,
        tags=(),
        fallback_text=body,
        fallback_origin="jsonl",
        location=location,
        site_name=outlet if isinstance(outlet, str) and outlet else None,
    )


def provisional_article_id(c: Candidate) -> str:
    """The article id an entry maps to before any page is fetched. Its content is hashed only
    when it has no canonical URL: with one, the id does not depend on it, and a feed's full
    text was hashed for nothing twice (when the batch is planned and when it is built)."""
    content = "" if c.canonical_url else content_hash(c.fallback_text or c.html or c.entry_key)
    return article_id_for(c.canonical_url, content)


def build_article(
    c: Candidate,
    extracted: Extracted | None,
    *,
    fetched_at: datetime,
    page_z: bytes | None,
    page_problem: str | None,
    extractor_version: str | None,
) -> Article | None:
    """The article row for an entry, from the page's extraction or else the entry's own text.

    Returns None when there is no text at all (the caller records why).
    """
    reason = page_problem
    if (
        extracted is not None
        and extracted.text
        and c.fallback_origin == "feed_content"
        and c.fallback_text
        and len(c.fallback_text) > 2 * len(extracted.text)
    ):
        # A teaser page beside a full feed article: the feed's text is the better one.
        extracted = Extracted(
            text=None,
            error=f"page_shorter: the page's text ({len(extracted.text)} characters) is less "
            f"than half the feed's ({len(c.fallback_text)})",
        )
    if extracted is not None and extracted.text:
        text = extracted.text
        origin: TextOrigin = "file" if c.html is not None else "page"
        title = c.title or extracted.title
        if c.html is not None:
            title = extracted.title or c.title
    else:
        if extracted is not None and extracted.error:
            reason = extracted.error
        if not c.fallback_text:
            return None
        text, origin, title = c.fallback_text, c.fallback_origin, c.title
    meta = extracted if extracted is not None and extracted.text else None
    page_canonical = canonicalize_url(meta.canonical_url, c.url) if meta else None
    published = c.published_at or (parse_datetime(meta.published) if meta else None)
    tags = tuple(dict.fromkeys((*c.tags, *(meta.tags if meta else ()))))
    chash = content_hash(text)
    return Article(
        article_id=provisional_article_id(c),
        source=c.source,
        entry_key=c.entry_key,
        url=c.url,
        canonical_url=page_canonical or c.canonical_url,
        title=title,
        text=text,
        author=c.author or (meta.author if meta else None),
        published_at=published,
        site_name=(meta.site_name if meta else None) or c.site_name,
        language=meta.language if meta else None,
        tags=tags,
        content_hash=chash,
        fetched_at=fetched_at,
        text_origin=origin,
        fallback_reason=reason if origin != "page" and origin != "file" else None,
        extractor_version=extractor_version if meta else None,
        page_z=page_z,
    )


def chunked(items: Iterable[Candidate], size: int) -> Iterable[list[Candidate]]:
    batch: list[Candidate] = []
    for it in items:
        batch.append(it)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
