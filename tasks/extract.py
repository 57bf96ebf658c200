"""Article extraction with Trafilatura, in worker processes.

Pages are decoded once in the parent (the decoded HTML is what ``pages`` stores for
``newsflow reprocess``) and sent to a worker once; the worker returns only the extracted text
and metadata. Trafilatura returning nothing becomes ``Extracted(text=None, error=...)``: a
value with a reason, never an exception.
"""

from __future__ import annotations

import multiprocessing
import os
import re
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import trafilatura
from trafilatura.utils import decode_file

from tasks.core.models import Extracted

EXTRACTOR_VERSION = f"trafilatura {trafilatura.__version__}"
_HTML_LANG = re.compile(rb"<html[^>]*\blang\s*=\s*[\"']?([A-Za-z]{2,3})(?:[-_][A-Za-z0-9]+)?", re.I)
_INLINE_BELOW = 8
"""Fewer pages than this are extracted in-process: a pool's start-up would cost more."""


@dataclass(frozen=True)
class ExtractOptions:
    favor_precision: bool = False
    include_comments: bool = False
    include_tables: bool = True
    min_chars: int = 1


def decode_html(raw: bytes) -> str:
    """Decode page bytes the way Trafilatura does (declared charset, then detection)."""
    return str(decode_file(raw))


def html_language(html: str) -> str | None:
    m = _HTML_LANG.search(html[:4096].encode("utf-8", "ignore"))
    return m.group(1).decode().lower() if m else None


def extract_page(html: str, url: str | None, opts: ExtractOptions) -> Extracted:
    """Text and metadata of one page (runs in a worker process)."""
    try:
        doc = trafilatura.bare_extraction(
            html,
            url=url,
            with_metadata=True,
            favor_precision=opts.favor_precision,
            include_comments=opts.include_comments,
            include_tables=opts.include_tables,
        )
    except Exception as exc:  # trafilatura/lxml fail in many ways on hostile markup
        return Extracted(text=None, error=f"extractor failed: {type(exc).__name__}: {exc}")
    if doc is None or isinstance(doc, dict) or not (doc.text or "").strip():
        return Extracted(text=None, error="no_text: the extractor found no article text")
    text = (doc.text or "").strip()  # Trafilatura's text as it gives it: no quality lost here
    if len(text) < opts.min_chars:
        return Extracted(text=None, error=f"too_short: {len(text)} characters")
    tags: list[str] = []
    for group in (doc.tags or [], doc.categories or []):
        for t in group:
            for part in str(t).split(","):
                if part.strip() and part.strip() not in tags:
                    tags.append(part.strip())
    return Extracted(
        text=text,
        title=doc.title or None,
        author=doc.author or None,
        published=doc.date or None,
        site_name=doc.sitename or None,
        language=doc.language or html_language(html),
        canonical_url=doc.url or None,
        tags=tuple(tags),
    )


def _extract_star(args: tuple[str, str | None, ExtractOptions]) -> Extracted:
    return extract_page(*args)


class Extractor:
    """A pool of extraction processes, started on first need and shared by a run."""

    def __init__(self, workers: int, opts: ExtractOptions) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.opts = opts
        self._pool: Executor | None = None

    def extract_many(self, pages: Sequence[tuple[str, str | None]]) -> list[Extracted]:
        """Extract ``(html, url)`` pairs, in order."""
        jobs: list[Any] = [(html, url, self.opts) for html, url in pages]
        if len(jobs) < _INLINE_BELOW or self.workers == 1:
            return [_extract_star(j) for j in jobs]
        if self._pool is None:
            # spawn, not fork: the parent runs threads (Prefect, the fetcher's loop).
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx)
        chunk = max(1, len(jobs) // (self.workers * 4))
        return list(self._pool.map(_extract_star, jobs, chunksize=chunk))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
