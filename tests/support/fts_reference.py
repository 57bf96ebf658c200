"""The fts extension's own BM25 over a warehouse's articles: the reference our index must match."""

from __future__ import annotations

from pathlib import Path

import duckdb

from tasks.db import fts_extension_path


def extension_bm25(db: Path, words: str) -> list[tuple[str, float]]:
    """``(article_id, score)`` of every matching article, best first (ties by id), scores rounded
    to 3 places, from an index the extension builds with our tokenizer options over a copy of
    the warehouse's articles (the warehouse itself is only read, so this can be asked again)."""
    con = duckdb.connect(config={"autoload_known_extensions": False})
    try:
        con.execute(f"LOAD '{fts_extension_path()}'")
        con.execute(f"ATTACH '{db}' AS warehouse (READ_ONLY)")
        con.execute(
            "CREATE TABLE articles AS SELECT article_id, title, text FROM warehouse.articles"
        )
        con.execute("DETACH warehouse")
        con.execute(
            "PRAGMA create_fts_index('articles', 'article_id', 'title', 'text', "
            "stemmer = 'porter', stopwords = 'english', strip_accents = 1, lower = 1)"
        )
        return con.execute(
            "SELECT article_id, round(fts_main_articles.match_bm25(article_id, ?), 3) AS s "
            "FROM articles WHERE s IS NOT NULL ORDER BY s DESC, article_id",
            [words],
        ).fetchall()
    finally:
        con.close()
