"""URL canonicalisation and entry identity.

``canonicalize_url`` gives the URL we show and store: scheme and host lower-cased, default
port, fragment and tracking parameters (``utm_*``, ``fbclid``, ``gclid``...) removed, query
sorted, dot segments resolved (courlan does most of it). ``url_identity`` is looser still and is
what article identity hashes: it also ignores ``http``/``https``, a leading ``www.`` and a
trailing slash, since publishers link the same page all these ways.
"""

from __future__ import annotations

import hashlib
import posixpath
from urllib.parse import urljoin, urlsplit, urlunsplit

import courlan

from tasks.core.models import KeyKind


def canonicalize_url(url: str | None, base: str | None = None) -> str | None:
    """Canonical form of ``url`` (resolved against ``base``), or None if it is not a URL."""
    if not url:
        return None
    url = url.strip()
    if base:
        url = urljoin(base, url)
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https", "file") or (
        parts.scheme.lower() != "file" and not parts.netloc
    ):
        return None
    if parts.scheme.lower() == "file":
        return urlunsplit(("file", "", posixpath.normpath(parts.path) or "/", "", ""))
    path = parts.path
    if path and ("/./" in path + "/" or "/../" in path + "/"):
        trailing = path.endswith("/")
        path = posixpath.normpath(path) + ("/" if trailing else "")
        if path.startswith("//"):
            path = "/" + path.lstrip("/")
    try:
        cleaned = courlan.normalize_url(
            urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))
        )
    except (ValueError, TypeError):
        return None
    c = urlsplit(cleaned)
    return urlunsplit((c.scheme, c.netloc, c.path or "/", c.query, ""))


def url_identity(canonical: str) -> str:
    """The part of a canonical URL that decides identity (no scheme, ``www.``, trailing ``/``)."""
    parts = urlsplit(canonical)
    host = parts.netloc.removeprefix("www.")
    path = parts.path.rstrip("/") or "/"
    return f"{host}{path}" + (f"?{parts.query}" if parts.query else "")


def short_hash(text: str, n: int = 16) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def entry_key(
    guid: str | None, canonical_url: str | None, fallback: str, *, guid_usable: bool = True
) -> tuple[str, KeyKind]:
    """An entry's key within its source: GUID, else canonical URL identity, else content.

    ``guid_usable`` is False when the GUID is reused within the feed for different links.
    """
    if guid and guid.strip() and guid_usable:
        return "guid:" + guid.strip(), "guid"
    if canonical_url:
        return "url:" + url_identity(canonical_url), "url"
    return "content:" + short_hash(fallback, 32), "content"


def article_id_for(canonical_url: str | None, content_hash: str) -> str:
    """Article identity: one article per canonical URL; without a URL, per content."""
    if canonical_url:
        return short_hash("url:" + url_identity(canonical_url))
    return short_hash("content:" + content_hash)
