"""Dedup levels 3 and 4 against the warehouse: near-duplicates and story clusters.

Runs after loads, over the articles not yet clustered (``story_featured`` lacks them), in
batches, inside the warehouse's single writer. The pure logic is in ``tasks/core/neardup.py``
and ``tasks/core/stories.py``; this module loads what they need and stores what they decide:

- near-duplicates: MinHash signatures and LSH bands are stored; a new article's candidates come
  from a join on ``near_bands``; verified pairs link the article to its group's canonical copy
  (earliest publication, then source priority, then id) in ``duplicates`` at level
  ``near_duplicate``, with score and threshold;
- stories: document frequencies (``story_df``) and each article's heaviest terms
  (``story_terms``) are stored; the candidates of a new article are the stored articles sharing
  one of those terms within the time window, expanded to their whole groups, which are then
  re-clustered deterministically (see ``tasks/core/stories.py``). ``story_articles`` keeps each
  article's story and why; ``stories`` is rebuilt for every story touched.

Manual overrides (``merge_overrides``) are respected by every later run.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pyarrow as pa

from config.settings import Settings
from tasks.core import neardup, stories
from tasks.db import Warehouse

MIN_NEAR_SHINGLES = 20
"""Texts with fewer shingles are too short to call near-duplicates (a headline, a teaser)."""


@dataclass
class DedupResult:
    articles: int = 0
    near_duplicates: int = 0
    stories_touched: int = 0
    multi_article_stories: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))


@dataclass(frozen=True)
class SourcePolicy:
    priority: int = 0
    near: bool = True
    stories: bool = True


def _policies(settings: Settings) -> dict[str, SourcePolicy]:
    return {
        s.name: SourcePolicy(s.priority, s.near_duplicates, s.stories) for s in settings.sources
    }


def story_params(settings: Settings) -> stories.StoryParams:
    return stories.StoryParams(window=timedelta(hours=settings.dedup.window_hours))


NEAR_PARAMS = neardup.NearDupParams()


def _overrides(con: duckdb.DuckDBPyConnection) -> stories.Overrides:
    rows = con.execute("SELECT article_id, other_id, action FROM merge_overrides").fetchall()
    return stories.Overrides(
        must_link=frozenset((a, b) for a, b, act in rows if act == "merge"),
        cannot_link=frozenset((a, b) for a, b, act in rows if act == "split"),
    )


def _pending(con: duckdb.DuckDBPyConnection, limit: int) -> list[tuple[Any, ...]]:
    return con.execute(
        """
        SELECT a.article_id, coalesce(a.title, ''), a.text, a.published_at, a.fetched_at,
               a.source, a.entry_key
        FROM articles a
        WHERE NOT EXISTS (SELECT 1 FROM story_articles s WHERE s.article_id = a.article_id)
        ORDER BY coalesce(a.published_at, a.fetched_at), a.article_id
        LIMIT ?
        """,
        [limit],
    ).fetchall()


def cluster_pending(wh: Warehouse, settings: Settings, batch_size: int = 2000) -> DedupResult:
    """Near-duplicate and story-cluster every article not yet clustered."""
    result = DedupResult()
    policies = _policies(settings)
    params = story_params(settings)
    while True:
        with wh.writer() as con:
            rows = _pending(con, batch_size)
            if not rows:
                break
            con.execute("BEGIN")
            try:
                _cluster_batch(con, rows, settings, policies, params, result)
                compact_vocabulary(con)
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise
        result.articles += len(rows)
        if len(rows) < batch_size:
            break
    return result


def _doc(row: Sequence[Any], policies: Mapping[str, SourcePolicy], **kw: Any) -> stories.StoryDoc:
    aid, title, text, published, fetched, source = row[:6]
    pol = policies.get(source, SourcePolicy())
    return stories.StoryDoc(
        id=aid,
        title=title or "",
        text=text or "",
        published=_naive(published),
        fetched=_naive(fetched),
        source_priority=-pol.priority,
        allow_story_merge=pol.stories,
        **kw,
    )


def _naive(t: datetime | None) -> datetime | None:
    """UTC-naive datetimes, as the clustering core compares them."""
    if t is None:
        return None
    return t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo else t


def _cluster_batch(
    con: duckdb.DuckDBPyConnection,
    rows: list[tuple[Any, ...]],
    settings: Settings,
    policies: Mapping[str, SourcePolicy],
    params: stories.StoryParams,
    result: DedupResult,
) -> None:
    now = datetime.now(UTC)
    overrides = _overrides(con)
    t0 = time.perf_counter()
    if settings.dedup.near_duplicates:
        result.near_duplicates += _near_duplicates(con, rows, policies, overrides, now)
    t1 = time.perf_counter()
    result.seconds["near_duplicates"] += t1 - t0
    if settings.dedup.stories:
        touched = _stories(con, rows, policies, params, overrides, now)
        result.stories_touched += touched
    else:
        _singletons(con, rows, now)
    result.seconds["stories"] += time.perf_counter() - t1


# -- near-duplicates -------------------------------------------------------------------------
def _near_duplicates(
    con: duckdb.DuckDBPyConnection,
    rows: list[tuple[Any, ...]],
    policies: Mapping[str, SourcePolicy],
    overrides: stories.Overrides,
    now: datetime,
) -> int:
    done = {
        r[0]
        for r in con.execute(
            "SELECT article_id FROM near_signatures WHERE article_id IN (SELECT unnest(?))",
            [[r[0] for r in rows]],
        ).fetchall()
    }
    todo = [r for r in rows if r[0] not in done]
    if not todo:
        return 0
    # An exact duplicate is represented by its original: it gets no bands of its own.
    exact = {
        r[0]
        for r in con.execute(
            "SELECT article_id FROM duplicates WHERE level IN ('content_hash', 'canonical_url') "
            "AND article_id <> duplicate_of AND article_id IN (SELECT unnest(?))",
            [[r[0] for r in todo]],
        ).fetchall()
    }
    sigs = neardup.compute_signatures([r[2] for r in todo], NEAR_PARAMS)
    band_rows: dict[str, list[Any]] = {"article_id": [], "band": [], "bucket": []}
    for r, sig in zip(todo, sigs, strict=True):
        if (
            sig.n_shingles < MIN_NEAR_SHINGLES
            or not policies.get(r[5], SourcePolicy()).near
            or r[0] in exact
        ):
            continue  # too short to judge, the source keeps every copy, or already a copy
        for band, bucket in enumerate(neardup.band_keys(sig, NEAR_PARAMS)):
            band_rows["article_id"].append(r[0])
            band_rows["band"].append(band)
            band_rows["bucket"].append(bucket)
    con.register(
        "staged_sigs",
        pa.table(
            {
                "article_id": [r[0] for r in todo],
                "signature": [s.to_bytes() for s in sigs],
                "n_shingles": [s.n_shingles for s in sigs],
            }
        ),
    )
    con.execute("INSERT INTO near_signatures SELECT * FROM staged_sigs")
    con.register(
        "staged_bands",
        pa.table(band_rows, schema=pa.schema([("article_id", pa.string()), ("band", pa.int16()),
                                              ("bucket", pa.int64())])),
    )  # fmt: skip
    con.execute("INSERT INTO near_bands SELECT * FROM staged_bands")
    pairs = con.execute(
        """
        SELECT DISTINCT n.article_id AS a, o.article_id AS b
        FROM staged_bands n JOIN near_bands o USING (band, bucket)
        WHERE o.article_id <> n.article_id
        """
    ).fetchall()
    if not pairs:
        return 0
    ids = sorted({x for p in pairs for x in p})
    meta = {
        r[0]: r[1:]
        for r in con.execute(
            """
            SELECT s.article_id, s.signature, s.n_shingles, a.published_at, a.fetched_at,
                   a.source, a.entry_key
            FROM near_signatures s JOIN articles a USING (article_id)
            WHERE s.article_id IN (SELECT unnest(?))
            """,
            [ids],
        ).fetchall()
    }
    split = overrides.pairs("cannot_link")
    edges: list[tuple[str, str, float]] = []
    for a, b in {(min(p), max(p)) for p in pairs}:
        if (a, b) in split or a not in meta or b not in meta:
            continue
        sa = neardup.Signature.from_bytes(meta[a][0], meta[a][1])
        sb = neardup.Signature.from_bytes(meta[b][0], meta[b][1])
        score = neardup.similarity(sa, sb, NEAR_PARAMS)
        if score >= NEAR_PARAMS.threshold:
            edges.append((a, b, score))
    if not edges:
        return 0
    # Connected groups of copies; each links to its canonical copy (earliest, priority, id).
    groups = neardup.connected_groups((a, b) for a, b, _ in edges)
    best: dict[tuple[str, str], float] = {}
    top: dict[str, float] = {}  # each article's best score with any copy
    for a, b, s in edges:
        best[(a, b)] = best[(b, a)] = s
        top[a], top[b] = max(top.get(a, 0.0), s), max(top.get(b, 0.0), s)

    def rank(aid: str) -> tuple[Any, ...]:
        _, _, published, fetched, source, _ = meta[aid]
        t = published or fetched
        return (t is None, t, -policies.get(source, SourcePolicy()).priority, aid)

    links = []
    for members in groups:
        canonical = min(members, key=rank)
        for m in members:
            if m == canonical:
                continue
            # Its score with the canonical copy, else with its closest copy in the group.
            score = best.get((m, canonical)) or top.get(m, NEAR_PARAMS.threshold)
            links.append(
                {
                    "source": meta[m][4],
                    "entry_key": meta[m][5],
                    "article_id": m,
                    "duplicate_of": canonical,
                    "level": "near_duplicate",
                    "score": round(score, 4),
                    "threshold": NEAR_PARAMS.threshold,
                    "detected_at": now,
                    "run_id": None,
                }
            )
    con.register("staged_near", pa.Table.from_pylist(links))
    # Exact links (content hash, canonical URL) stand; near links are re-pointed as groups grow.
    con.execute(
        """
        DELETE FROM duplicates WHERE level = 'near_duplicate'
          AND article_id IN (SELECT article_id FROM staged_near)
        """
    )
    con.execute(
        """
        INSERT INTO duplicates BY NAME
        SELECT * FROM staged_near s
        WHERE NOT EXISTS (SELECT 1 FROM duplicates d
                          WHERE d.source = s.source AND d.entry_key = s.entry_key)
        """
    )
    new_ids = {t[0] for t in todo}
    return sum(1 for r in links if r["article_id"] in new_ids)


# -- stories ---------------------------------------------------------------------------------
def _stories(
    con: duckdb.DuckDBPyConnection,
    rows: list[tuple[Any, ...]],
    policies: Mapping[str, SourcePolicy],
    params: stories.StoryParams,
    overrides: stories.Overrides,
    now: datetime,
) -> int:
    new_docs = [_doc(r, policies) for r in rows]
    featured = {
        r[0]
        for r in con.execute(
            "SELECT article_id FROM story_featured WHERE article_id IN (SELECT unnest(?))",
            [[d.id for d in new_docs]],
        ).fetchall()
    }
    fresh = [d for d in new_docs if d.id not in featured]
    raws = stories.raw_term_frequencies(new_docs, params)  # the one tokenising pass
    # The vocabulary learns the fresh articles' terms first (a whole batch at a time).
    # story_df is append-only (term, count) rows, summed on lookup and compacted now and
    # then: appending is ~40x faster in DuckDB than updating counts in place.
    if fresh:
        counts: dict[str, int] = defaultdict(int)
        for d in fresh:
            for t in raws[d.id]:
                counts[t] += 1
        con.register("staged_df", pa.table({"term": list(counts), "df": list(counts.values())}))
        con.execute("INSERT INTO story_df SELECT term, df FROM staged_df")
        con.register(
            "staged_featured",
            pa.table(
                {"article_id": [d.id for d in fresh], "n_terms": [len(raws[d.id]) for d in fresh]}
            ),
        )
        con.execute("INSERT INTO story_featured SELECT * FROM staged_featured")
    n_row = con.execute("SELECT count(*) FROM story_featured").fetchone()
    n_docs = int(n_row[0]) if n_row else 0
    df = _lookup_df(con, {t for r in raws.values() for t in r})
    feats = {f.article_id: f for f in stories.featurise_raw(new_docs, raws, df, n_docs, params)}
    if fresh:
        con.register(
            "staged_terms",
            pa.table(
                {
                    "article_id": [d.id for d in fresh for _ in feats[d.id].blocking],
                    "term": [t for d in fresh for t in feats[d.id].blocking],
                }
            ),
        )
        con.execute("INSERT INTO story_terms SELECT * FROM staged_terms")
    neighbours = _neighbours(con, new_docs, feats, params, overrides, policies)
    if neighbours:
        n_raws = stories.raw_term_frequencies(neighbours, params)
        df.update(_lookup_df(con, {t for r in n_raws.values() for t in r} - set(df)))
        feats.update(
            (f.article_id, f) for f in stories.featurise_raw(neighbours, n_raws, df, n_docs, params)
        )
    assignments = stories.assign_stories(new_docs, neighbours, df, n_docs, params, overrides, feats)
    old_story = {d.id: d.story_id for d in neighbours}
    touched = {a.story_id for a in assignments} | {s for s in old_story.values() if s}
    con.register(
        "staged_assign",
        pa.table(
            {
                "article_id": [a.article_id for a in assignments],
                "story_id": [a.story_id for a in assignments],
                "group_id": [a.group_id for a in assignments],
                "is_representative": [a.is_representative for a in assignments],
                "linked_to": [a.linked_to for a in assignments],
                "score": [round(a.score, 4) for a in assignments],
                "cohesion": [round(a.cohesion, 4) for a in assignments],
                "threshold": [a.threshold for a in assignments],
                "reason": [a.reason for a in assignments],
                "assigned_at": pa.array([now] * len(assignments), pa.timestamp("us", tz="UTC")),
            }
        ),
    )
    con.execute(
        "DELETE FROM story_articles WHERE article_id IN (SELECT article_id FROM staged_assign)"
    )
    con.execute("INSERT INTO story_articles SELECT * FROM staged_assign")
    _rebuild_stories(con, sorted(touched), now)
    return len(touched)


def _lookup_df(con: duckdb.DuckDBPyConnection, terms: set[str]) -> dict[str, int]:
    if not terms:
        return {}
    con.register("wanted_terms", pa.table({"term": sorted(terms)}))
    rows = con.execute(
        "SELECT d.term, sum(d.df)::BIGINT FROM story_df d JOIN wanted_terms USING (term) "
        "GROUP BY d.term"
    ).fetchall()
    return {t: int(n) for t, n in rows}


def compact_vocabulary(con: duckdb.DuckDBPyConnection) -> None:
    """Fold story_df's appended counts into one row per term when it has grown."""
    n = con.execute("SELECT count(*) FROM story_df").fetchone()
    last = con.execute("SELECT value FROM dedup_state WHERE key = 'story_df_rows'").fetchone()
    if n is None or n[0] < max(500_000, 3 * (last[0] if last else 0)):
        return
    con.execute(
        "CREATE TEMP TABLE df_sum AS SELECT term, sum(df)::BIGINT AS df FROM story_df GROUP BY term"
    )
    con.execute("DELETE FROM story_df")
    con.execute("INSERT INTO story_df SELECT * FROM df_sum")
    con.execute("DROP TABLE df_sum")
    con.execute("DELETE FROM dedup_state WHERE key = 'story_df_rows'")
    con.execute("INSERT INTO dedup_state SELECT 'story_df_rows', count(*) FROM story_df")


def _neighbours(
    con: duckdb.DuckDBPyConnection,
    new_docs: Sequence[stories.StoryDoc],
    feats: Mapping[str, stories.ArticleFeatures],
    params: stories.StoryParams,
    overrides: stories.Overrides,
    policies: Mapping[str, SourcePolicy],
) -> list[stories.StoryDoc]:
    """Stored articles sharing a blocking term within the window, as whole groups."""
    new_ids = [d.id for d in new_docs]
    times = [d.time for d in new_docs if d.time is not None]
    window = params.window
    lo = (min(times) - window) if times and len(times) == len(new_docs) else datetime(1, 1, 1)
    hi = (max(times) + window) if times and len(times) == len(new_docs) else datetime(9999, 1, 1)
    con.register(
        "staged_blocking",
        pa.table(
            {
                "article_id": [i for i in new_ids for _ in feats[i].blocking],
                "term": [t for i in new_ids for t in feats[i].blocking],
            }
        ),
    )
    partners = [
        b if a in set(new_ids) else a
        for a, b in overrides.must_link
        if (a in set(new_ids)) != (b in set(new_ids))
    ]
    group_rows = con.execute(
        """
        WITH cand AS (
            SELECT DISTINCT t.article_id
            FROM staged_blocking n JOIN story_terms t USING (term)
            JOIN articles a ON a.article_id = t.article_id
            WHERE t.article_id NOT IN (SELECT article_id FROM staged_blocking)
              AND coalesce(a.published_at, a.fetched_at) BETWEEN ? AND ?
            UNION
            SELECT unnest(?::TEXT[])
        )
        SELECT DISTINCT s.group_id FROM cand JOIN story_articles s USING (article_id)
        """,
        [lo.replace(tzinfo=UTC), hi.replace(tzinfo=UTC), partners],
    ).fetchall()
    groups = [g[0] for g in group_rows]
    if not groups:
        return []
    rows = con.execute(
        """
        SELECT a.article_id, coalesce(a.title, ''), a.text, a.published_at, a.fetched_at,
               a.source, s.story_id, s.group_id
        FROM story_articles s JOIN articles a USING (article_id)
        WHERE s.group_id IN (SELECT unnest(?)) AND s.article_id NOT IN (SELECT unnest(?))
        ORDER BY a.article_id
        """,
        [groups, new_ids],
    ).fetchall()
    return [_doc(r, policies, story_id=r[6], group_id=r[7]) for r in rows]


def _singletons(con: duckdb.DuckDBPyConnection, rows: list[tuple[Any, ...]], now: datetime) -> None:
    """Story clustering off: every article is its own story."""
    ids = [r[0] for r in rows]
    con.execute("DELETE FROM story_articles WHERE article_id IN (SELECT unnest(?))", [ids])
    con.executemany(
        "INSERT INTO story_articles VALUES (?,?,?,true,NULL,0,0,0,'alone',?)",
        [[i, i, i, now] for i in ids],
    )
    _rebuild_stories(con, [r[0] for r in rows], now)


def _rebuild_stories(con: duckdb.DuckDBPyConnection, story_ids: list[str], now: datetime) -> None:
    con.execute("DELETE FROM stories WHERE story_id IN (SELECT unnest(?))", [story_ids])
    con.execute(
        """
        INSERT INTO stories
        SELECT s.story_id,
               any_value(a.title) FILTER (WHERE a.article_id = s.story_id),
               s.story_id,
               min(coalesce(a.published_at, a.fetched_at)),
               max(coalesce(a.published_at, a.fetched_at)),
               count(*),
               count(DISTINCT o.outlet),
               ?
        FROM story_articles s
        JOIN articles a USING (article_id)
        JOIN article_outlets o USING (article_id)
        WHERE s.story_id IN (SELECT unnest(?))
        GROUP BY s.story_id
        """,
        [now, story_ids],
    )


def add_override(wh: Warehouse, a: str, b: str, action: str, note: str | None = None) -> None:
    """Record a manual split or merge and queue both articles' groups for re-clustering."""
    if action not in ("split", "merge"):
        raise ValueError("action must be 'split' or 'merge'")
    a, b = min(a, b), max(a, b)
    with wh.writer() as con:
        found = con.execute(
            "SELECT count(*) FROM articles WHERE article_id IN (?, ?)", [a, b]
        ).fetchone()
        if not found or found[0] != 2:
            raise KeyError(f"no such article: {a} or {b}")
        con.execute("BEGIN")
        con.execute(
            "INSERT OR REPLACE INTO merge_overrides VALUES (?, ?, ?, ?, ?)",
            [a, b, action, note, datetime.now(UTC)],
        )
        if action == "split":
            con.execute(
                "DELETE FROM duplicates WHERE level = 'near_duplicate' AND "
                "((article_id = ? AND duplicate_of = ?) OR (article_id = ? AND duplicate_of = ?))",
                [a, b, b, a],
            )
        # Their groups go back to the queue: the next clustering run re-decides them.
        con.execute(
            """
            DELETE FROM story_articles WHERE group_id IN
                (SELECT group_id FROM story_articles WHERE article_id IN (?, ?))
            """,
            [a, b],
        )
        con.execute(
            "DELETE FROM stories WHERE story_id NOT IN (SELECT story_id FROM story_articles)"
        )
        con.execute("COMMIT")
