"""The load's counts: what a run reports as new articles and duplicates."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tasks.db import Warehouse
from tests.test_search import article


def test_two_entries_bringing_one_new_article_are_one_new_article_and_one_duplicate(
    tmp_path: Path,
):
    wh = Warehouse(tmp_path / "news.duckdb")
    wh.migrate()
    first, a = article(1, "Harbour budget", "The council approved the harbour budget.")
    second = replace(first, entry_key="guid:b", guid="b")
    r = wh.load_batch("run1", [(first, a.article_id), (second, a.article_id)], [a], [])
    assert (r.new_entries, r.new_articles, r.duplicates) == (2, 1, 1)
    # A later entry bringing the same article again: a duplicate, and no article less.
    third = replace(first, entry_key="guid:c", guid="c")
    r = wh.load_batch("run2", [(third, a.article_id)], [a], [])
    assert (r.new_entries, r.new_articles, r.duplicates) == (1, 0, 1)
    assert wh.query("SELECT count(*) FROM articles")[1] == [(1,)]
