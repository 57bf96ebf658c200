"""Read a ``files`` source: a folder of pages, texts, saved feeds and JSONL articles.

Paths never leave the source's folder: each file is resolved (symlinks followed) and must lie
inside the resolved folder. Files are listed in sorted order; a file's entry key comes from
its path, so known files are skipped without being read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tasks.core.entries import (
    BadRecord,
    candidate_from_html_file,
    candidate_from_record,
    candidate_from_text,
    candidates_from_feed,
)
from tasks.core.errors import FeedParseError, FetchError
from tasks.core.feeds import parse_feed
from tasks.core.models import Candidate, ItemError
from tasks.extract import decode_html

HTML_SUFFIXES = {".html", ".htm"}
TEXT_SUFFIXES = {".txt", ".md"}
FEED_SUFFIXES = {".xml", ".rss", ".atom", ".json", ".rdf"}
JSONL_SUFFIXES = {".jsonl"}
SUPPORTED = HTML_SUFFIXES | TEXT_SUFFIXES | FEED_SUFFIXES | JSONL_SUFFIXES
_FEED_TYPES = {".json": "application/feed+json"}


@dataclass
class FileScan:
    """The outcome of reading a folder: candidates, per-item errors, bytes read."""

    candidates: list[Candidate] = field(default_factory=list)
    errors: list[ItemError] = field(default_factory=list)
    nbytes: int = 0
    warnings: list[str] = field(default_factory=list)


def list_files(source: str, folder: Path, pattern: str) -> Iterator[Path]:
    """Supported files under ``folder`` matching ``pattern``, sorted, never outside it."""
    try:
        root = folder.resolve(strict=True)
    except (FileNotFoundError, RuntimeError) as exc:
        raise FetchError(source, f"{folder}: no such folder") from exc
    if not root.is_dir():
        raise FetchError(source, f"{folder}: not a folder")
    if ".." in Path(pattern).parts:
        raise FetchError(source, f"glob {pattern!r} may not contain '..'")
    for p in sorted(root.glob(pattern)):
        if p.suffix.lower() not in SUPPORTED or p.name.startswith("."):
            continue
        real = p.resolve()
        if not real.is_relative_to(root) or not real.is_file():
            continue
        yield p


def read_file(source: str, path: Path, root: Path, max_bytes: int, scan: FileScan) -> None:
    """Turn one file into candidates (or an item error naming the file)."""
    loc = str(path)
    suffix = path.suffix.lower()
    try:
        size = path.stat().st_size
        if size > max_bytes:
            scan.errors.append(
                ItemError(source, loc, "read", "too_large", f"{size} bytes > {max_bytes} cap")
            )
            return
        raw = path.read_bytes()
    except OSError as exc:
        scan.errors.append(ItemError(source, loc, "read", "unreadable", str(exc)))
        return
    scan.nbytes += len(raw)
    url = path.resolve().as_uri()
    if suffix in HTML_SUFFIXES:
        scan.candidates.append(
            candidate_from_html_file(source, url, decode_html(raw), location=loc)
        )
    elif suffix in TEXT_SUFFIXES:
        text = _decode_text(raw)
        if text is None:
            scan.errors.append(ItemError(source, loc, "read", "binary", "not a text file"))
        elif not text.strip():
            scan.errors.append(ItemError(source, loc, "read", "empty", "empty file"))
        else:
            scan.candidates.append(candidate_from_text(source, url, text, location=loc))
    elif suffix in FEED_SUFFIXES:
        try:
            feed = parse_feed(raw, url, source, content_type=_FEED_TYPES.get(suffix))
        except FeedParseError as exc:
            scan.errors.append(ItemError(source, loc, "parse", exc.reason, exc.message))
            return
        if feed.warning:
            scan.warnings.append(f"{path.name}: {feed.warning}")
        scan.candidates.extend(candidates_from_feed(source, feed, location=loc))
    elif suffix in JSONL_SUFFIXES:
        _read_jsonl(source, path, raw, scan)


def _decode_text(raw: bytes) -> str | None:
    if b"\x00" in raw[:8192]:
        return None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def _read_jsonl(source: str, path: Path, raw: bytes, scan: FileScan) -> None:
    text = _decode_text(raw)
    if text is None:
        scan.errors.append(ItemError(source, str(path), "read", "binary", "not a text file"))
        return
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        loc = f"{path}:{n}"
        try:
            record = json.loads(line)
            scan.candidates.append(candidate_from_record(source, record, location=loc))
        except json.JSONDecodeError as exc:
            scan.errors.append(ItemError(source, loc, "parse", "bad_json", str(exc)))
        except BadRecord as exc:
            scan.errors.append(ItemError(source, loc, "parse", "bad_record", str(exc)))
