"""Re-extract stored pages (``pages``) with the installed extractor, without refetching."""

from __future__ import annotations

from config.settings import Settings
from tasks.core.text import content_hash
from tasks.db import Warehouse
from tasks.extract import EXTRACTOR_VERSION, ExtractOptions, Extractor


def reprocess_pages(settings: Settings, sources: list[str] | None) -> tuple[int, int]:
    """Returns (pages re-extracted, articles whose text changed)."""
    wh = Warehouse.configured(settings.warehouse)
    wh.migrate()
    ex = settings.extract
    extractor = Extractor(
        ex.workers,
        ExtractOptions(ex.favor_precision, ex.include_comments, ex.include_tables, ex.min_chars),
    )
    pages = wh.stored_pages(sources)
    updates: list[tuple[str, str, str, str]] = []
    try:
        for i in range(0, len(pages), ex.batch_size):
            chunk = pages[i : i + ex.batch_size]
            results = extractor.extract_many([(html, url) for _, url, html in chunk])
            for (aid, _, _), x in zip(chunk, results, strict=True):
                if x.text:
                    updates.append((aid, x.text, content_hash(x.text), EXTRACTOR_VERSION))
    finally:
        extractor.close()
    changed = wh.update_texts(updates)
    if updates:
        wh.refresh_search_index()
    return len(pages), changed
