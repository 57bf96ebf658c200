"""Warehouse benchmarks: the load step alone, and the user's queries on a large warehouse.

    .venv/bin/python bench/warehouse_bench.py load  [--existing 100000] [--batch 10000]
    .venv/bin/python bench/warehouse_bench.py query [--articles 1000000] [--keep P | --reuse P]

``load`` fills a fresh warehouse with ``--existing`` synthetic articles through the real load
path (``Warehouse.load_batch``), then times loading new batches into it: articles/s. Beside
it, the same batches appended with nothing checked (DuckDB's insert and commit alone): the
floor under the load on this machine.
``query`` builds a synthetic warehouse of ``--articles`` articles with stories (SQL-generated,
written straight into the tables), builds the full-text index, and times the three queries
people run most: stories of the last 24 h (as ``newsflow stories``), a full-text search (as
``newsflow search``) and per-source counts. Prints JSON. ``--keep PATH`` builds the warehouse at
PATH and leaves it there; ``--reuse PATH`` builds nothing: it migrates that warehouse (so a copy
of a kept one shows what a new migration changes) and times its queries only.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks.core.models import Article, Candidate  # noqa: E402
from tasks.core.text import content_hash  # noqa: E402
from tasks.db import (  # noqa: E402
    Warehouse,
    _append,
    _articles_table,
    _entries_table,
    search_sql,
    single_thread,
)

WORDS = [
    "council", "harbour", "tram", "minister", "storm", "budget", "river", "school", "election",
    "market", "bridge", "police", "hospital", "festival", "court", "energy", "museum", "farm",
    "strike", "railway", "flood", "union", "airport", "theatre", "library", "factory", "coast",
]  # fmt: skip


def synthetic(i: int, rng: random.Random, now: datetime) -> tuple[Candidate, Article]:
    text = " ".join(rng.choices(WORDS, k=300)) + f" item {i}"
    url = f"https://site{i % 50}.invalid/news/{i}"
    published = now - timedelta(minutes=rng.randint(0, 60 * 24 * 30))
    c = Candidate(
        source=f"src{i % 20}", entry_key=f"guid:{i}", key_kind="guid", guid=str(i), url=url,
        canonical_url=url, title=f"Headline {i}", author=None, published_at=published, tags=(),
        fallback_text=text, fallback_origin="feed_content",
    )  # fmt: skip
    a = Article(
        article_id=f"{i:016x}", source=c.source, entry_key=c.entry_key, url=url,
        canonical_url=url, title=c.title, text=text, author=None, published_at=published,
        site_name=None, language="en", tags=(), content_hash=content_hash(text), fetched_at=now,
        text_origin="feed_content", fallback_reason=None, extractor_version=None, page_z=None,
    )  # fmt: skip
    return c, a


def bench_load(existing: int, batch: int, rounds: int) -> dict[str, object]:
    rng = random.Random(7)
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as tmp:
        wh = Warehouse(Path(tmp) / "news.duckdb")
        wh.migrate()
        t0 = time.perf_counter()
        for start in range(0, existing, batch):
            rows = [synthetic(i, rng, now) for i in range(start, min(existing, start + batch))]
            wh.load_batch("fill", [(c, a.article_id) for c, a in rows], [a for _, a in rows], [])
        fill_s = time.perf_counter() - t0
        rates = []
        next_id = existing
        for _ in range(rounds):
            rows = [synthetic(i, rng, now) for i in range(next_id, next_id + batch)]
            next_id += batch
            t = time.perf_counter()
            r = wh.load_batch(
                "bench", [(c, a.article_id) for c, a in rows], [a for _, a in rows], []
            )
            rates.append(batch / (time.perf_counter() - t))
            assert r.new_articles == batch
        # Loading the same batch again (a re-run) inserts nothing.
        t = time.perf_counter()
        again = wh.load_batch(
            "bench", [(c, a.article_id) for c, a in rows], [a for _, a in rows], []
        )
        rerun_rate = batch / (time.perf_counter() - t)
        assert again.new_articles == 0
        # A bulk load in one writer session: one checkpoint at the end, included in the time.
        session_rows = [
            [synthetic(i, rng, now) for i in range(next_id + k * batch, next_id + (k + 1) * batch)]
            for k in range(rounds)
        ]
        t = time.perf_counter()
        with wh.session():
            for rows in session_rows:
                linked = [(c, a.article_id) for c, a in rows]
                wh.load_batch("bench", linked, [a for _, a in rows], [])
        session_rate = rounds * batch / (time.perf_counter() - t)
        next_id += rounds * batch
        floor_rates = []
        for _ in range(rounds):
            rows = [synthetic(i, rng, now) for i in range(next_id, next_id + batch)]
            next_id += batch
            floor_rates.append(batch / _append_unchecked(wh, rows, now))
    return {
        "existing_articles": existing,
        "batch": batch,
        "fill_articles_per_s": round(existing / fill_s),
        "load_articles_per_s_median": round(statistics.median(rates)),
        "load_articles_per_s_each": [round(r) for r in rates],
        "rerun_same_batch_articles_per_s": round(rerun_rate),
        "session_bulk_load_articles_per_s": round(session_rate),
        "unchecked_append_articles_per_s_median": round(statistics.median(floor_rates)),
    }


def _append_unchecked(wh: Warehouse, rows: list[tuple[Candidate, Article]], now: datetime) -> float:
    """Seconds to append a batch as the load does, minus everything it checks: the Arrow
    tables are built beforehand, and the rows go in with no lookup and no duplicate links (one
    transaction, on the load's connection settings). What DuckDB alone costs here."""
    articles = _articles_table([a for _, a in rows], "bench")
    entries = _entries_table([(c, a.article_id) for c, a in rows], now, "bench")
    t = time.perf_counter()
    with wh.writer() as con, single_thread(con):
        con.execute("BEGIN")
        _append(con, "articles", articles)
        _append(con, "entries", entries)
        con.execute("COMMIT")
    return time.perf_counter() - t


# A vocabulary of 17,576 three-letter words drawn with a Zipf-like skew (``h``: a hash).
ZIPF_MACRO = """
    CREATE OR REPLACE TEMP MACRO zipf_word(h) AS (
        WITH r AS (SELECT floor(exp((h % 1000000) / 1000000.0 * ln(17576)))::BIGINT AS n)
        SELECT chr((97 + n % 26)::INT) || chr((97 + (n // 26) % 26)::INT)
               || chr((97 + (n // 676) % 26)::INT)
        FROM r
    )
"""


def _synthetic_articles_sql(lo: int, hi: int) -> str:
    """Insert articles ``lo..hi-1``: 120 words of a Zipf-like vocabulary, a quarter news words."""
    words = "['" + "','".join(WORDS) + "']"
    return f"""
        INSERT INTO articles (article_id, source, entry_key, url, canonical_url, title,
            text, published_at, content_hash, fetched_at, text_origin, language)
        SELECT printf('%016x', i), 'src' || (i % 50), 'guid:' || i,
               'https://s' || (i % 50) || '.invalid/' || i,
               'https://s' || (i % 50) || '.invalid/' || i,
               'Headline ' || i || ' ' || {words}[1 + (i * 7) % 27],
               (SELECT string_agg(CASE WHEN k % 4 = 0
                        THEN {words}[1 + ((i * 31 + k * 17) % 27)]
                        ELSE zipf_word(hash(i * 131 + k)) END, ' ')
                FROM range(120) t(k)) || ' story' || (i // 3),
               now() - to_seconds((i * 2654435761) % (86400 * 90)),
               md5(i::VARCHAR), now(), 'feed_content', 'en'
        FROM range({lo}, {hi}) r(i)
    """


def bench_query(n: int, keep: Path | None = None, reuse: Path | None = None) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        if reuse is not None:
            wh = Warehouse(reuse)
            t0 = time.perf_counter()
            migrated = wh.migrate()
            out: dict[str, object] = {
                "reused": str(reuse),
                "migrations_applied": migrated,
                "migrate_seconds": round(time.perf_counter() - t0, 1),
            }
            return out | {"articles": _count_articles(wh)} | time_queries(wh)
        wh = Warehouse(keep or Path(tmp) / "news.duckdb")
        wh.migrate()
        t0 = time.perf_counter()
        with wh.writer() as con:
            # A vocabulary of 17,576 three-letter words drawn with a Zipf-like skew, as in
            # real text (a few words everywhere, most of them rare), plus common news words.
            con.execute(ZIPF_MACRO)
            con.execute(_synthetic_articles_sql(0, n))
            con.execute(
                """
                INSERT INTO story_articles
                SELECT article_id, printf('%016x', (i // 3) * 3), printf('%016x', (i // 3) * 3),
                       i % 3 = 0, NULL, 0.5, 0.5, 0.215, 'similar', now()
                FROM (SELECT article_id, ('0x' || article_id)::BIGINT AS i FROM articles)
                """
            )
            con.execute(
                """
                INSERT INTO stories
                SELECT s.story_id, any_value(a.title), s.story_id,
                       min(a.published_at), max(a.published_at), count(*), count(DISTINCT a.source),
                       now()
                FROM story_articles s JOIN articles a USING (article_id) GROUP BY s.story_id
                """
            )
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        wh.refresh_search_index()
        fts_s = time.perf_counter() - t0
        # A warm re-run (nothing new), then a small run over the big warehouse: 1,000 articles.
        t0 = time.perf_counter()
        wh.refresh_search_index()
        fts_noop_s = time.perf_counter() - t0
        with wh.writer() as con:
            con.execute(ZIPF_MACRO)
            con.execute(_synthetic_articles_sql(n, n + 1000))
        t0 = time.perf_counter()
        wh.refresh_search_index()
        fts_small_s = time.perf_counter() - t0
        return {
            "articles": n,
            "build_seconds": round(build_s, 1),
            "fts_index_seconds": round(fts_s, 1),
            "fts_refresh_nothing_new_seconds": round(fts_noop_s, 2),
            "fts_refresh_1000_new_seconds": round(fts_small_s, 2),
        } | time_queries(wh)


def time_queries(wh: Warehouse, runs_each: int = 5) -> dict[str, object]:
    """Median of ``runs_each`` runs of each query, on one read-only connection; the search's
    answer too (ids and scores), to compare warehouses before and after a change."""
    from flows.cli import STORIES_SQL

    cutoff = datetime.now(UTC) - timedelta(hours=24)
    search, params = search_sql("harbour qjd xbk", 10)  # a common word and two rarer ones
    queries = {
        "stories_last_24h": (STORIES_SQL, [cutoff, 1, 20]),
        "full_text_search": (search, params),
        "per_source_counts": (
            "SELECT source, count(*) AS articles, max(published_at) AS latest "
            "FROM articles GROUP BY source ORDER BY articles DESC",
            [],
        ),
    }
    timings: dict[str, object] = {}
    with wh.reader() as con:
        for name, (sql, args) in queries.items():
            runs = []
            for _ in range(runs_each):
                t = time.perf_counter()
                rows = con.execute(sql, args).fetchall()
                runs.append((time.perf_counter() - t) * 1000)
            timings[name] = {
                "ms_median": round(statistics.median(runs), 1),
                "ms_each": [round(r, 1) for r in runs],
                "rows": len(rows),
            }
            if name == "full_text_search":
                answer = [[r[0], r[1]] for r in rows]
    return {"queries": timings, "search_answer": answer}


def _count_articles(wh: Warehouse) -> int:
    return int(wh.query("SELECT count(*) FROM articles")[1][0][0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("what", choices=["load", "query"])
    ap.add_argument("--existing", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--articles", type=int, default=1_000_000)
    ap.add_argument("--keep", type=Path, help="query: build the warehouse here and keep it")
    ap.add_argument("--reuse", type=Path, help="query: time the queries of this warehouse")
    args = ap.parse_args()
    if args.what == "load":
        out = bench_load(args.existing, args.batch, args.rounds)
    else:
        out = bench_query(args.articles, args.keep, args.reuse)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
