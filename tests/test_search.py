"""Full-text search over the incremental index: what a run adds is found, the ranking is the
fts extension's BM25, and an index left behind (by an interrupted run, a re-extraction) catches
up. Real warehouse files, loaded through the real load path."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import tasks.db
from tasks.core.models import Article, Candidate
from tasks.core.text import content_hash
from tasks.db import Warehouse, search_sql
from tests.support.fts_reference import extension_bm25

NOW = datetime(2026, 5, 1, tzinfo=UTC)

FIRST_RUN = [
    ("Council approves harbour budget", "The council approved the harbour budget after a debate."),
    ("Tram line opens", "The new tram line opened on Monday; trams run every six minutes."),
    ("Storm closes coast road", "A storm closed the coast road and flooded the harbour car park."),
    ("School festival", "Pupils ran a festival at the school, with a market and a theatre show."),
    ("Café reopens", "The Straße café reopened after the x-ray of its old walls; it's busy."),
]  # fmt: skip
SECOND_RUN = [
    ("Orchid show at the moor", "Rare orchids bloomed on the moor; the orchid society counted 40."),
]


def article(i: int, title: str, text: str, source: str = "local") -> tuple[Candidate, Article]:
    url = f"https://news.invalid/{i}"
    c = Candidate(
        source=source, entry_key=f"guid:{i}", key_kind="guid", guid=str(i), url=url,
        canonical_url=url, title=title, author=None, published_at=NOW - timedelta(hours=i),
        tags=(), fallback_text=text, fallback_origin="feed_content",
    )  # fmt: skip
    a = Article(
        article_id=f"{i:016x}", source=source, entry_key=c.entry_key, url=url,
        canonical_url=url, title=title, text=text, author=None, published_at=c.published_at,
        site_name=None, language="en", tags=(), content_hash=content_hash(text), fetched_at=NOW,
        text_origin="feed_content", fallback_reason=None, extractor_version=None, page_z=None,
    )  # fmt: skip
    return c, a


def load(wh: Warehouse, run_id: str, rows: list[tuple[Candidate, Article]]) -> None:
    wh.load_batch(run_id, [(c, a.article_id) for c, a in rows], [a for _, a in rows], [])


def search(wh: Warehouse, words: str, limit: int = 10) -> list[tuple[str, float, str]]:
    sql, params = search_sql(words, limit)
    _, rows = wh.query(sql, params)
    return [(r[0], r[1], r[4]) for r in rows]


def runs_out_of_order(wh: Warehouse) -> list[tuple[int, int]]:
    """The sorted runs whose postings are not stored in (term, docid) order (a search would
    then read most of their row groups instead of the few holding its terms)."""
    _, runs = wh.query("SELECT first_docid, end_docid FROM search_runs ORDER BY first_docid")
    out = []
    for first, end in runs:
        _, rows = wh.query(
            "SELECT term, docid FROM search_postings WHERE docid >= ? AND docid < ? ORDER BY rowid",
            [first, end],
        )
        if rows != sorted(rows):
            out.append((first, end))
    return out


@pytest.fixture
def wh(tmp_path: Path) -> Warehouse:
    w = Warehouse(tmp_path / "news.duckdb")
    w.migrate()
    return w


def first_run(wh: Warehouse) -> None:
    load(wh, "run1", [article(i, t, x) for i, (t, x) in enumerate(FIRST_RUN)])
    assert wh.refresh_search_index() == len(FIRST_RUN)


def test_an_article_loaded_in_a_later_run_is_found_first(wh):
    first_run(wh)
    assert search(wh, "orchid moor") == []

    load(wh, "run2", [article(100, *SECOND_RUN[0])])
    assert wh.search_index_stale()
    assert wh.refresh_search_index() == 1  # only the new article is indexed

    hits = search(wh, "orchid moor")
    assert [h[2] for h in hits] == ["Orchid show at the moor"]
    assert search(wh, "harbour")[0][2] == "Council approves harbour budget"


def test_an_incremental_index_ranks_as_one_built_from_scratch(wh):
    first_run(wh)
    load(wh, "run2", [article(100 + i, t, x) for i, (t, x) in enumerate(SECOND_RUN)])
    wh.refresh_search_index()
    queries = ["harbour", "tram line", "orchid", "storm harbour car", "festival market theatre"]
    incremental = {q: search(wh, q) for q in queries}

    assert wh.refresh_search_index(rebuild=True) == len(FIRST_RUN) + len(SECOND_RUN)
    assert {q: search(wh, q) for q in queries} == incremental
    wh.refresh_search_index(compact=True)  # postings rewritten in term order: same answers
    assert {q: search(wh, q) for q in queries} == incremental


@pytest.mark.parametrize(
    "words", ["harbour", "tram line", "the harbour road", "cafe strasse x-ray", "it's", "the"]
)
def test_scores_are_the_fts_extension_bm25(wh, tmp_path, words):
    first_run(wh)
    load(wh, "run2", [article(100, *SECOND_RUN[0])])
    wh.refresh_search_index()
    ours = sorted((aid, score) for aid, score, _ in search(wh, words, limit=100))

    ref = sorted(extension_bm25(tmp_path / "news.duckdb", words))
    assert ours == ref


def test_articles_loaded_but_never_indexed_are_caught_up(wh):
    # A run killed after its loads, before indexing, leaves articles out of the index.
    load(wh, "run1", [article(i, t, x) for i, (t, x) in enumerate(FIRST_RUN[:2])])
    wh.refresh_search_index()
    load(wh, "run2", [article(i + 2, t, x) for i, (t, x) in enumerate(FIRST_RUN[2:])])
    assert wh.search_index_stale()

    assert wh.refresh_search_index() == len(FIRST_RUN) - 2
    assert not wh.search_index_stale()
    assert wh.refresh_search_index() == 0  # nothing new: nothing to do
    assert search(wh, "storm")[0][2] == "Storm closes coast road"
    assert wh.query("SELECT count(*), count(DISTINCT article_id) FROM search_docs")[1] == [
        (len(FIRST_RUN), len(FIRST_RUN))
    ]


def test_articles_whose_rowids_moved_are_indexed_as_any(wh, tmp_path):
    # A refresh reads the articles it tokenizes by rowid. A checkpoint that merges row groups
    # moves rowids: the articles are then found by id, not left out or mixed up.
    from tasks.db import _index_chunk, _load_fts

    rows = [article(i, t, x) for i, (t, x) in enumerate(FIRST_RUN)]
    load(wh, "run1", rows)
    with wh.writer() as con:
        _load_fts(con)
        con.execute(  # each article with another's rowid
            "CREATE TEMP TABLE search_new AS SELECT row_number() OVER (ORDER BY article_id) - 1 "
            "AS docid, article_id, (SELECT max(rowid) FROM articles) - rowid AS rid FROM articles"
        )
        _index_chunk(con, 0, len(rows) - 1, run_of_own=False)
    clean = Warehouse(tmp_path / "clean.duckdb")
    clean.migrate()
    load(clean, "run1", rows)
    clean.refresh_search_index()
    for words in ("storm", "harbour", "tram minutes", "café walls"):
        assert search(wh, words) == search(clean, words) != []


def test_the_small_row_groups_of_many_loads_are_merged_and_still_searched_alike(
    wh, tmp_path, monkeypatch
):
    # Each load appends its rows as row groups of their own; a run's end merges them once
    # enough loads have piled up (a scan then reads a few row groups, not one per load). The
    # merge moves rowids: articles loaded before it and after it are searched alike.
    def row_groups() -> int:
        sql = "SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('articles')"
        return int(wh.query(sql)[1][0][0])

    monkeypatch.setattr(tasks.db, "_MERGE_AFTER_WRITES", 8)  # not 64: fewer loads to wait for
    reports = [article(10 + k, f"Harbour report {k}", f"Tide table {k} at the harbour.")
               for k in range(8)]  # fmt: skip
    for row in reports:
        load(wh, "run1", [row])
    wh.refresh_search_index()
    assert row_groups() == len(reports)
    wh.start_run("run1", None, NOW)
    wh.finish_run("run1", "completed", {}, [])
    assert row_groups() == 1
    later = [article(i, t, x) for i, (t, x) in enumerate(FIRST_RUN)]
    load(wh, "run2", later)
    wh.refresh_search_index()
    clean = Warehouse(tmp_path / "clean.duckdb")
    clean.migrate()
    load(clean, "run1", reports + later)
    clean.refresh_search_index()
    for words in ("harbour tide", "tide 7", "tram minutes", "storm"):
        assert search(wh, words, limit=100) == search(clean, words, limit=100) != []


def test_during_a_run_articles_are_indexed_once_enough_have_been_loaded(wh):
    # A run indexes in a thread while later batches are extracted: a pass once ``every`` new
    # articles are loaded, not after each load (each pass has a fixed cost); the flow's last
    # pass indexes the rest.
    from flows.ingest import _Indexer

    indexer = _Indexer(wh, every=3)
    try:
        for i, (t, x) in enumerate(FIRST_RUN):  # five loads of one article each
            load(wh, "run1", [article(i, t, x)])
            indexer.loaded(1)
            if i == 2:  # the third: a pass (waited for without reading: the pass writes)
                deadline = time.monotonic() + 60
                while not indexer.seconds and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert [h[2] for h in search(wh, "storm")] == ["Storm closes coast road"]
    finally:
        indexer.finish()
    assert wh.query("SELECT count(*) FROM search_docs")[1] == [(3,)]
    assert search(wh, "festival") == []  # the fourth and fifth wait for the flow's last pass
    assert wh.search_index_stale()


def test_a_re_extracted_text_is_searched_by_its_new_words(wh, tmp_path):
    first_run(wh)
    new_text = "The tram depot hosted a jazz concert for the opening night."
    changed = wh.update_texts([("0000000000000001", new_text, content_hash(new_text), "x")])
    assert changed == 1
    wh.refresh_search_index()

    assert [h[2] for h in search(wh, "jazz concert")] == ["Tram line opens"]
    assert search(wh, "minutes") == []
    # Word counts start again from the new texts: the old text's "tram" weighs nothing.
    for words in ["tram", "harbour jazz", "the harbour road"]:
        ours = sorted((aid, score) for aid, score, _ in search(wh, words, limit=100))
        assert ours == sorted(extension_bm25(tmp_path / "news.duckdb", words)), words


# Many small runs, each a few articles: the words of FIRST_RUN and SECOND_RUN again, in
# articles of their own (each with a word of its own: same texts would be duplicates).
MANY_RUNS = [
    (t, f"{x} Ref zq{chr(97 + i % 26)}{chr(97 + i // 26)}.")
    for i, (t, x) in enumerate([FIRST_RUN[i % len(FIRST_RUN)] for i in range(23)] + SECOND_RUN * 3)
]


def test_an_index_grown_over_many_runs_ranks_as_the_extension(wh, tmp_path, monkeypatch):
    # Tiny chunks and runs: postings sorted in small runs, runs merged as they pile up, word
    # counts raised by each run; what a search shows must not depend on any of it.
    monkeypatch.setattr(tasks.db, "_INDEX_CHUNK", 3)
    monkeypatch.setattr(tasks.db, "_SORTED_RUN_DOCS", 4)
    queries = ["harbour", "orchid moor", "the harbour road", "tram line storm", "cafe strasse"]
    seen = []
    for start in range(0, len(MANY_RUNS), 5):
        batch = MANY_RUNS[start : start + 5]
        load(wh, f"run{start}", [article(start + i, t, x) for i, (t, x) in enumerate(batch)])
        wh.refresh_search_index()
        seen.append({q: search(wh, q, limit=100) for q in queries})
        for q in queries:
            ours = sorted((aid, score) for aid, score, _ in seen[-1][q])
            assert ours == sorted(extension_bm25(tmp_path / "news.duckdb", q)), (start, q)
        assert runs_out_of_order(wh) == []

    wh.refresh_search_index(compact=True)  # everything in one run: the same answers
    assert {q: search(wh, q, limit=100) for q in queries} == seen[-1]
    assert runs_out_of_order(wh) == [] and len(wh.query("SELECT * FROM search_runs")[1]) == 1
    wh.refresh_search_index(rebuild=True)  # and as built at once
    assert {q: search(wh, q, limit=100) for q in queries} == seen[-1]
