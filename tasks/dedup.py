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
  re-clustered deterministically (see ``tasks/core/stories.py``). Exact and near copies within
  the window are filed under their original's story instead (``reason = 'duplicate'``).
  ``story_articles`` keeps each article's story and why; ``stories`` is rebuilt for every story
  touched.

Manual overrides (``merge_overrides``) are respected by every later run.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from scipy import sparse
from scipy.sparse import csgraph

from config.settings import Settings
from tasks.core import neardup, stories
from tasks.core.features import Features, article_features, lower_priority
from tasks.db import Warehouse, capped_memory, single_thread

MIN_NEAR_SHINGLES = 20
"""Texts with fewer shingles are too short to call near-duplicates (a headline, a teaser)."""

BUCKET_CAP = 8
"""Rows kept per LSH bucket. A bucket that already holds this many articles (copies of one wire
story, nearly always) takes no more: a new copy still meets the first ones there, and the band
join stays bounded however often a text recurs. Below the cap, results do not depend on order."""

POOL_FROM = 1000
"""Featurise in worker processes when at least this many articles are pending."""

SESSION_BATCHES = 10
"""Batches written through one connection before it is closed (and checkpointed), so that
readers such as ``newsflow sql`` get a turn during a long clustering pass."""

RAW_CACHE = 1_500_000
"""Term frequencies kept in memory for articles of recent batches (the next batch's
neighbours), counted in (article, term) entries: about 8,000 short news articles, or 2,000
long pages (counted in articles, long pages held several times as much)."""

CLUSTER_MEMORY = "512MB"
"""DuckDB's memory limit during a clustering pass, unless ``warehouse.memory_limit`` is set."""

TEXT_READ_MEMORY = "64MB"
"""DuckDB's memory limit while a batch's texts are read (outside it, the pass's). They lie
scattered over the table, and DuckDB kept every block it read: the text of every article,
180 MB of a 20k-page warehouse after each batch's read (a clustering pass over it peaked at
850 MB, now 535 MB)."""

DF_CACHE = 300_000
"""Document frequencies kept in memory during a pass (terms)."""


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


def _stage(con: duckdb.DuckDBPyConnection, name: str, columns: Mapping[str, Any]) -> None:
    """Register columns as a view for joins (never a Python list as a query parameter: DuckDB
    1.5 inspects such a list element by element, about 0.1 ms each). An empty column is
    typed as text, as ids are (an untyped one would not join)."""
    con.register(
        name,
        pa.table(
            {
                k: pa.array([], pa.string()) if isinstance(v, list | range) and not v else v
                for k, v in columns.items()
            }
        ),
    )


def _overrides(con: duckdb.DuckDBPyConnection) -> stories.Overrides:
    rows = con.execute("SELECT article_id, other_id, action FROM merge_overrides").fetchall()
    return stories.Overrides(
        must_link=frozenset((a, b) for a, b, act in rows if act == "merge"),
        cannot_link=frozenset((a, b) for a, b, act in rows if act == "split"),
    )


_ROW_SQL = """
    SELECT a.article_id, coalesce(a.title, ''), a.text, timezone('UTC', a.published_at),
           timezone('UTC', a.fetched_at),
           a.source, a.entry_key
    FROM articles a
"""


def _pending(con: duckdb.DuckDBPyConnection) -> list[tuple[int, str]]:
    """``(rowid, article_id)`` of the articles not yet clustered, oldest first."""
    return con.execute(
        """
        SELECT a.rowid, a.article_id FROM articles a
        WHERE NOT EXISTS (SELECT 1 FROM story_articles s WHERE s.article_id = a.article_id)
        ORDER BY coalesce(a.published_at, a.fetched_at), a.article_id
        """
    ).fetchall()


_UNCLUSTERED = "NOT EXISTS (SELECT 1 FROM story_articles s WHERE s.article_id = a.article_id)"


def _read_rows(
    con: duckdb.DuckDBPyConnection, batch: Sequence[tuple[int, str]]
) -> list[tuple[Any, ...]]:
    """The rows of a batch still unclustered (another process may have clustered some), in
    order."""
    got = _by_rowid(con, _ROW_SQL, dict((aid, r) for r, aid in batch), _UNCLUSTERED)
    return [got[aid] for _, aid in batch if aid in got]


def _by_rowid(
    con: duckdb.DuckDBPyConnection, select: str, rowid_of: Mapping[str, int], where: str = "TRUE"
) -> dict[str, tuple[Any, ...]]:
    """Rows of ``select`` (over ``articles a``, the id first) for the articles of
    ``rowid_of`` (id -> rowid) that satisfy ``where``, by id. Read by rowid: a join on the
    ids would scan every article's text. Articles whose rowids moved (row groups merged at a
    checkpoint) are then read by id."""
    _stage(con, "wanted_rows", {"rid": pa.array(list(rowid_of.values()), pa.int64())})
    got = {
        r[0]: r
        for r in con.execute(
            select + f"WHERE a.rowid IN (SELECT rid FROM wanted_rows) AND {where}"
        ).fetchall()
        if r[0] in rowid_of
    }
    missing = [aid for aid in rowid_of if aid not in got]
    if missing:
        _stage(con, "wanted_ids", {"article_id": missing})
        sql = select + f"JOIN wanted_ids USING (article_id) WHERE {where}"
        got.update((r[0], r) for r in con.execute(sql).fetchall())
    return got


def _read_rows_lean(
    con: duckdb.DuckDBPyConnection, batch: Sequence[tuple[int, str]], limit: str
) -> list[tuple[Any, ...]]:
    """:func:`_read_rows` under ``TEXT_READ_MEMORY``, then back to ``limit`` (the pass's);
    a batch whose texts do not fit is read again under ``limit``. Outside a transaction."""
    try:
        with capped_memory(con, TEXT_READ_MEMORY, restore=limit):
            return _read_rows(con, batch)
    except duckdb.OutOfMemoryException:
        return _read_rows(con, batch)


def _read_ahead(
    con: duckdb.DuckDBPyConnection,
    pool: _FeaturePool,
    batch: Sequence[tuple[int, str]],
    k: int,
    batch_of: Mapping[str, int],
    window: timedelta,
    policies: Mapping[str, SourcePolicy],
    limit: str,
) -> _Batch:
    """Read batch ``k`` and start its features (``limit``: the pass's DuckDB memory limit).
    Exact copies get no sketch (their original stands for them); those that will be filed
    under their original's story (it is clustered, or pending up to this batch) get no
    features at all. ``_stories`` decides again when the batch is stored and featurises any
    copy this guess got wrong."""
    rows = _read_rows_lean(con, batch, limit)
    copies = _copy_pairs(con, [r[0] for r in rows])
    clustered = _clustered_originals(con, copies)
    filed = _filed(
        copies, rows, lambda o: o in clustered or batch_of.get(o, k + 1) <= k, window, policies
    )
    features = pool.submit(rows, exact=copies.keys(), filed=filed.keys())
    # The workers have the texts: only a copy guessed to be filed may need its own here (see
    # _stories). The others are let go, freed once the features are computed rather than
    # once the batch is stored.
    rows = [r if r[0] in filed else (*r[:2], None, *r[3:]) for r in rows]
    return _Batch(rows, copies, features)


_EXACT = ("content_hash", "canonical_url")


class _Original(NamedTuple):
    """The article a copy repeats: its id, time (UTC-naive) and source."""

    id: str
    time: datetime | None
    source: str


_COPY_SQL = """
    SELECT d.article_id, min(d.duplicate_of),
           arg_min(timezone('UTC', coalesce(a.published_at, a.fetched_at)), d.duplicate_of),
           arg_min(a.source, d.duplicate_of)
    FROM ids_in JOIN duplicates d USING (article_id)
    JOIN articles a ON a.article_id = d.duplicate_of
    WHERE d.level IN ({levels}) AND d.article_id <> d.duplicate_of
    GROUP BY d.article_id
"""


@dataclass
class _Batch:
    """A batch's rows, its exact copies (copy -> original and the original's time) and the
    features being computed for it."""

    rows: list[tuple[Any, ...]]
    copies: dict[str, _Original]
    features: _PendingFeatures


@dataclass
class _PendingFeatures:
    """Features being computed for ``n`` rows: parts cover the rows at positions ``at``."""

    n: int
    at: list[int]
    parts: list[Future[Features]] | list[Features]

    def result(self) -> Features:
        """The features of all ``n`` rows; a skipped row has an empty sketch and no raws."""
        done = [p if isinstance(p, Features) else p.result() for p in self.parts]
        raws: dict[str, stories.RawTerms] = {}
        for p in done:
            raws.update(p.raws)
        bins = NEAR_PARAMS.num_bins
        values = np.zeros((self.n, bins), dtype=np.uint32)
        n_shingles = np.zeros(self.n, dtype=np.int64)
        if self.at:
            values[self.at] = np.vstack([p.sketches.values for p in done])
            n_shingles[self.at] = np.concatenate([p.sketches.n_shingles for p in done])
        return Features(neardup.Sketches(values, n_shingles), raws)


# -- features (worker processes) --------------------------------------------------------------
class _FeaturePool:
    """Features computed in worker processes, a batch ahead of the writer, or inline."""

    def __init__(self, workers: int, params: stories.StoryParams) -> None:
        self.params = params
        self.workers = workers
        self.pool: ProcessPoolExecutor | None = None
        if workers > 1:
            ctx = multiprocessing.get_context("spawn")
            self.pool = ProcessPoolExecutor(
                max_workers=workers, mp_context=ctx, initializer=lower_priority
            )

    def submit(
        self,
        rows: Sequence[tuple[Any, ...]],
        exact: Collection[str] = (),
        filed: Collection[str] = (),
    ) -> _PendingFeatures:
        """Start computing the features of ``rows``: none for the copies to be ``filed`` under
        their original's story, no sketch for ``exact`` copies."""
        at = [k for k, r in enumerate(rows) if r[0] not in filed]
        ids = [rows[k][0] for k in at]
        titles = [rows[k][1] or "" for k in at]
        texts = [rows[k][2] or "" for k in at]
        sketch = [i not in exact for i in ids]
        if self.pool is None:
            feats = article_features(ids, titles, texts, NEAR_PARAMS, self.params, sketch)
            return _PendingFeatures(len(rows), at, [feats])
        step = -(-len(at) // self.workers) or 1
        return _PendingFeatures(len(rows), at, [
            self.pool.submit(
                article_features, ids[k : k + step], titles[k : k + step], texts[k : k + step],
                NEAR_PARAMS, self.params, sketch[k : k + step],
            )
            for k in range(0, len(at), step)
        ])  # fmt: skip

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def _feature_pool(n_pending: int, settings: Settings) -> Iterator[_FeaturePool]:
    workers = (settings.extract.workers or os.cpu_count() or 1) if n_pending >= POOL_FROM else 1
    pool = _FeaturePool(workers, story_params(settings))
    try:
        yield pool
    finally:
        pool.close()


class _RawCache:
    """Raw term frequencies of recently clustered articles, so neighbours are not re-tokenised."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data: dict[str, stories.RawTerms] = {}
        self.entries = 0

    def add(self, raws: Mapping[str, stories.RawTerms]) -> None:
        """Keep ``raws``, dropping the oldest articles once ``size`` entries are held."""
        data = self.data
        for key, raw in raws.items():
            old = data.pop(key, None)
            self.entries += len(raw.terms) - (len(old.terms) if old is not None else 0)
            data[key] = raw
        drop = []
        for key, raw in data.items():  # oldest first
            if self.entries <= self.size:
                break
            self.entries -= len(raw.terms)
            drop.append(key)
        for key in drop:
            del data[key]


@dataclass
class _PassCache:
    """What one clustering pass keeps between batches."""

    raws: _RawCache
    dfs: _DocFrequencies


def cluster_pending(wh: Warehouse, settings: Settings, batch_size: int = 2000) -> DedupResult:
    """Near-duplicate and story-cluster every article not yet clustered.

    Batches of ``batch_size`` articles, oldest first, each in one transaction: an interrupted
    run keeps the batches it finished. ``SESSION_BATCHES`` batches share one writer connection
    (no checkpoint between them). With ``POOL_FROM`` or more pending articles, the next batch's
    features are computed in worker processes while the writer stores this one.
    """
    result = DedupResult()
    started = time.perf_counter()
    policies = _policies(settings)
    params = story_params(settings)
    with wh.writer() as con:
        pending = _pending(con)
    batches = [pending[k : k + batch_size] for k in range(0, len(pending), batch_size)]
    batch_of = {aid: k // batch_size for k, (_, aid) in enumerate(pending)}
    window = params.window
    cache = _PassCache(_RawCache(RAW_CACHE), _DocFrequencies(DF_CACHE))
    seconds = result.seconds
    limit = wh.memory_limit or CLUSTER_MEMORY  # DuckDB's, during the pass
    with _feature_pool(len(pending), settings) as pool, ExitStack() as session:
        seconds["start"] += time.perf_counter() - started
        ahead: _Batch | None = None
        for k in range(len(batches)):
            if k % SESSION_BATCHES == 0:  # one connection for a few batches, then readers' turn
                t0 = time.perf_counter()
                session.close()  # the checkpoint
                seconds["checkpoints"] += time.perf_counter() - t0
                session.enter_context(wh.session())
                with wh.writer() as con:  # the session's connection, open until it ends
                    # One DuckDB thread: its queries here are many and small, and the feature
                    # workers have the other cores (two threads cost a third more CPU). And
                    # a bounded cache: at 20k pages it grew to 1.6 GB over the pass.
                    session.enter_context(single_thread(con))
                    session.enter_context(wh.capped(con, CLUSTER_MEMORY))
            with wh.writer() as con:
                t0 = time.perf_counter()
                if ahead is None:
                    ahead = _read_ahead(con, pool, batches[k], k, batch_of, window, policies, limit)
                batch, ahead = ahead, None
                if k + 1 < len(batches):
                    ahead = _read_ahead(
                        con, pool, batches[k + 1], k + 1, batch_of, window, policies, limit
                    )
                feats = batch.features.result()
                seconds["features_wait"] += time.perf_counter() - t0
                rows = batch.rows
                if not rows:
                    continue
                con.execute("BEGIN")
                try:
                    _cluster_batch(con, batch, feats, cache, settings, policies, params, result)
                    compact_vocabulary(con)
                    con.execute("COMMIT")
                except Exception:
                    con.execute("ROLLBACK")
                    raise
            cache.raws.add(feats.raws)
            result.articles += len(rows)
        t0 = time.perf_counter()
        session.close()
        seconds["checkpoints"] += time.perf_counter() - t0
        t0 = time.perf_counter()
    seconds["finish"] += time.perf_counter() - t0  # the workers' shutdown
    seconds["whole_pass"] = time.perf_counter() - started
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
    batch: _Batch,
    feats: Features,
    cache: _PassCache,
    settings: Settings,
    policies: Mapping[str, SourcePolicy],
    params: stories.StoryParams,
    result: DedupResult,
) -> None:
    now = datetime.now(UTC)
    overrides = _overrides(con)
    rows = batch.rows
    t0 = time.perf_counter()
    if settings.dedup.near_duplicates:
        result.near_duplicates += _near_duplicates(
            con, rows, batch.copies, feats.sketches, policies, overrides, now
        )
    t1 = time.perf_counter()
    result.seconds["near_duplicates"] += t1 - t0
    if settings.dedup.stories:
        touched = _stories(
            con, batch, feats.raws, cache, policies, params, overrides, now, result.seconds
        )
        result.stories_touched += touched
    else:
        _singletons(con, rows, now)
    result.seconds["stories"] += time.perf_counter() - t1


# -- near-duplicates -------------------------------------------------------------------------
def _rank(
    published: datetime | None, fetched: datetime | None, source: str,
    policies: Mapping[str, SourcePolicy], aid: str,
) -> tuple[Any, ...]:  # fmt: skip
    """Canonical copy order: earliest (undated last), then source priority, then id."""
    t = _naive(published) or _naive(fetched)
    return (t is None, t or datetime.min, -policies.get(source, SourcePolicy()).priority, aid)


def _ids_in(con: duckdb.DuckDBPyConnection, sql: str, ids: Sequence[str]) -> set[str]:
    """The ids for which ``sql`` (over a staged ``ids_in(article_id)``) returns a row."""
    _stage(con, "ids_in", {"article_id": ids})
    return {r[0] for r in con.execute(sql).fetchall()}


def _near_duplicates(
    con: duckdb.DuckDBPyConnection,
    rows: list[tuple[Any, ...]],
    copies: Mapping[str, Any],
    sk: neardup.Sketches,
    policies: Mapping[str, SourcePolicy],
    overrides: stories.Overrides,
    now: datetime,
) -> int:
    """Sketch the batch's articles, find their stored and in-batch copies, link each copy to its
    group's canonical copy (re-pointing a group only when a new article takes its place)."""
    ids = [r[0] for r in rows]
    done = _ids_in(
        con, "SELECT article_id FROM ids_in JOIN near_signatures USING (article_id)", ids
    )
    todo = [i for i, aid in enumerate(ids) if aid not in done]
    if not todo:
        return 0
    # An exact duplicate is represented by its original: no sketch or bands of its own.
    todo = [i for i in todo if ids[i] not in copies]
    _stage(
        con,
        "staged_sigs",
        {
            "article_id": [ids[i] for i in todo],
            "signature": [sk.values[i].astype("<u4").tobytes() for i in todo],
            "n_shingles": sk.n_shingles[todo],
        },
    )
    con.execute("INSERT INTO near_signatures SELECT * FROM staged_sigs")
    banded = np.asarray(
        [
            i
            for i in todo
            if sk.n_shingles[i] >= MIN_NEAR_SHINGLES
            and policies.get(rows[i][5], SourcePolicy()).near
        ],
        dtype=np.intp,
    )  # too short to judge, or the source keeps every copy: no bands
    if not len(banded):
        return 0
    buckets = neardup.band_matrix(sk.values[banded], NEAR_PARAMS)
    found = _bucket_candidates(con, [ids[i] for i in banded], buckets)
    stored_i = banded[found.stored_row]
    inner_i, inner_j = banded[found.inner_later], banded[found.inner_earlier]
    # Verify: old candidates' sketches are read once, then every pair is scored in one go.
    con.register("old_ids", pa.table({"article_id": found.stored_names}))
    old_tab = con.execute(
        "SELECT s.article_id, s.signature, s.n_shingles FROM old_ids "
        "JOIN near_signatures s USING (article_id)"
    ).fetch_arrow_table()
    old_names = old_tab["article_id"].to_pylist()
    row_of_name = pc.index_in(found.stored_names, value_set=old_tab["article_id"].combine_chunks())
    old_sk = neardup.Sketches.from_blobs(
        old_tab["signature"].to_pylist(), old_tab["n_shingles"].to_numpy(), NEAR_PARAMS.num_bins
    )
    sj_all = row_of_name.fill_null(-1).to_numpy().astype(np.intp)[found.stored_code]
    keep = sj_all >= 0
    si, sj = stored_i[keep], sj_all[keep]
    s_score = neardup.similarity_rows(sk, si, old_sk, sj, NEAR_PARAMS)
    ii, ij = inner_i, inner_j
    i_score = neardup.similarity_rows(sk, ii, sk, ij, NEAR_PARAMS)
    thr = NEAR_PARAMS.threshold
    s_hit, i_hit = s_score >= thr, i_score >= thr
    edges = _Edges(
        new=np.concatenate([si[s_hit], ii[i_hit]]),
        other=np.concatenate([sj[s_hit], ij[i_hit]]),
        stored=np.concatenate([np.ones(int(s_hit.sum()), bool), np.zeros(int(i_hit.sum()), bool)]),
        score=np.concatenate([s_score[s_hit], i_score[i_hit]]),
    )
    split = overrides.pairs("cannot_link")
    if split and len(edges.new):  # manual splits: those pairs are never linked
        names = [
            old_names[o] if st else ids[o] for o, st in zip(edges.other, edges.stored, strict=True)
        ]
        edges = edges.where(
            np.asarray(
                [
                    (min(ids[a], b), max(ids[a], b)) not in split
                    for a, b in zip(edges.new, names, strict=True)
                ],
                dtype=bool,
            )
        )
    if not len(edges.new):
        return 0
    return _link_groups(con, rows, sk, old_names, edges, policies, now)


@dataclass(frozen=True)
class _Candidates:
    """LSH candidates of a batch's banded articles (positions in the banded list): stored
    articles sharing a bucket (``stored_row[k]`` with ``stored_names[stored_code[k]]``, each
    pair once), and pairs within the batch (``inner_later[k]`` with ``inner_earlier[k]``, in
    id order)."""

    stored_row: npt.NDArray[np.intp]
    stored_code: npt.NDArray[np.intp]
    stored_names: pa.Array
    inner_later: npt.NDArray[np.intp]
    inner_earlier: npt.NDArray[np.intp]


def _bucket_candidates(
    con: duckdb.DuckDBPyConnection, names: Sequence[str], buckets: npt.NDArray[np.int64]
) -> _Candidates:
    """Look up the batch's buckets once, and add the batch's rows to ``near_bands``.

    A bucket keeps its first ``BUCKET_CAP`` articles in id order (the batch's rows rank after
    the stored ones), and a new row meets the stored rows and the first ``BUCKET_CAP`` rows of
    the batch in its bucket. One query reads the stored rows of the batch's buckets; ranking,
    counting and pairing are array operations."""
    m, nb = buckets.shape
    band = np.tile(np.arange(nb, dtype=np.int64), m)
    bucket = buckets.ravel().astype(np.int64)
    row = np.repeat(np.arange(m, dtype=np.intp), nb)  # staged row -> banded position
    con.register("staged_buckets", pa.table({"band": band, "bucket": bucket}))
    hits = con.execute(
        "SELECT o.band::BIGINT AS band, o.bucket, o.article_id FROM near_bands o "
        "JOIN (SELECT DISTINCT band, bucket FROM staged_buckets) USING (band, bucket)"
    ).fetch_arrow_table()
    hit_band, hit_bucket = hits["band"].to_numpy(), hits["bucket"].to_numpy()
    # The batch's rows of each bucket in id order: k = 1, 2, ... within the bucket.
    id_rank = np.empty(m, np.int64)
    id_rank[np.argsort(np.asarray(names, dtype=object), kind="stable")] = np.arange(m)
    order = np.lexsort((id_rank[row], bucket, band))
    sb, sk = band[order], bucket[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (sb[1:] != sb[:-1]) | (sk[1:] != sk[:-1])
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    sizes = np.diff(np.append(starts, len(order)))
    k = np.arange(len(order)) - starts[group] + 1
    # Within the batch: each row pairs with the rows before it among the first BUCKET_CAP.
    early = np.flatnonzero((k <= BUCKET_CAP) & (sizes[group] >= 2))
    later = sizes[group[early]] - k[early]
    bpos = np.repeat(early, later)
    apos = bpos + _ranges(later) + 1
    code = np.unique(row[order[apos]].astype(np.int64) * m + row[order[bpos]])
    # Stored candidates: every stored row of a bucket pairs with the batch's rows there.
    hit_group = np.empty(len(hit_band), np.intp)  # groups are sorted by band, then bucket
    gb, gk = sb[starts], sk[starts]
    for b in np.unique(hit_band).tolist():
        sel = hit_band == b
        lo, hi = np.searchsorted(gb, b, "left"), np.searchsorted(gb, b, "right")
        hit_group[sel] = lo + np.searchsorted(gk[lo:hi], hit_bucket[sel])
    per_hit = sizes[hit_group]
    spos = np.repeat(starts[hit_group], per_hit) + _ranges(per_hit)
    encoded = hits["article_id"].combine_chunks().dictionary_encode()  # hashing, not sorting
    stored_names = encoded.dictionary
    stored_at = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    n_stored = max(len(stored_names), 1)
    pairs = np.unique(row[order[spos]].astype(np.int64) * n_stored + np.repeat(stored_at, per_hit))
    # Insert: a bucket holding n stored rows takes the batch's first BUCKET_CAP - n.
    held = np.bincount(hit_group, minlength=len(starts))
    put = order[k + held[group] <= BUCKET_CAP]
    con.register(
        "new_bands",
        pa.table(
            {
                "article_id": pa.array(names, pa.string()).take(pa.array(row[put])),
                "band": band[put].astype(np.int16),
                "bucket": bucket[put],
            }
        ),
    )
    con.execute("INSERT INTO near_bands SELECT article_id, band, bucket FROM new_bands")
    return _Candidates(
        stored_row=(pairs // n_stored).astype(np.intp),
        stored_code=(pairs % n_stored).astype(np.intp),
        stored_names=stored_names,
        inner_later=(code // m).astype(np.intp),
        inner_earlier=(code % m).astype(np.intp),
    )


def _ranges(counts: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """``0..c-1`` for each ``c`` in ``counts``, concatenated."""
    return np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)


@dataclass(frozen=True)
class _Edges:
    """Verified near-duplicate pairs of a batch: new article ``new[k]`` (a row of the batch)
    with ``other[k]``, a stored article (an index into the stored candidates) when
    ``stored[k]``, else another row of the batch."""

    new: npt.NDArray[np.intp]
    other: npt.NDArray[np.intp]
    stored: npt.NDArray[np.bool_]
    score: npt.NDArray[np.float64]

    def where(self, mask: npt.NDArray[np.bool_]) -> _Edges:
        return _Edges(self.new[mask], self.other[mask], self.stored[mask], self.score[mask])


def _link_groups(
    con: duckdb.DuckDBPyConnection,
    rows: list[tuple[Any, ...]],
    sk: neardup.Sketches,
    old_names: Sequence[str],
    edges: _Edges,
    policies: Mapping[str, SourcePolicy],
    now: datetime,
) -> int:
    """Merge the verified edges into the stored groups and write the links that change.

    A stored article stands for its group by the group's canonical copy (its root). The new
    articles and the roots they reach form connected groups; each group's canonical copy is the
    earliest of them. New copies link to it; a root that loses its place is linked to it and its
    members re-pointed. Nothing else is rewritten, so a batch costs what it adds.

    Nodes are integers: the batch's rows ``0..n-1``, then the roots ``n..``.
    """
    n = len(rows)
    hit = np.unique(edges.other[edges.stored])
    _stage(con, "hit_ids", {"article_id": [old_names[k] for k in hit]})
    root_tab = con.execute(
        "SELECT h.article_id, coalesce(any_value(d.duplicate_of), h.article_id) AS root "
        "FROM hit_ids h LEFT JOIN duplicates d "
        "ON d.article_id = h.article_id AND d.level = 'near_duplicate' GROUP BY h.article_id"
    ).fetch_arrow_table()
    root_of = dict(
        zip(root_tab["article_id"].to_pylist(), root_tab["root"].to_pylist(), strict=True)
    )
    roots = sorted(set(root_of.values()))
    root_pos = {r: n + k for k, r in enumerate(roots)}
    # Edges to stored copies become edges to their roots (many collapse into one).
    hit_node = np.zeros(len(old_names), np.intp)
    hit_node[hit] = [root_pos[root_of[old_names[k]]] for k in hit]
    src = edges.new
    dst = edges.other.copy()
    dst[edges.stored] = hit_node[edges.other[edges.stored]]
    size = n + len(roots)
    top = np.zeros(size)  # best verified score of each node
    np.maximum.at(top, src, edges.score)
    np.maximum.at(top, dst, edges.score)
    graph = sparse.coo_matrix((np.ones(len(src)), (src, dst)), shape=(size, size))
    _, label = csgraph.connected_components(graph, directed=False)

    _stage(con, "root_ids", {"article_id": roots})
    meta = con.execute(
        "SELECT r.article_id, timezone('UTC', a.published_at), timezone('UTC', a.fetched_at), "
        "a.source, a.entry_key, s.signature, s.n_shingles FROM root_ids r "
        "JOIN articles a USING (article_id) LEFT JOIN near_signatures s USING (article_id)"
    ).fetchall()
    names = [r[0] for r in rows] + roots
    sources = [r[5] for r in rows] + [""] * len(roots)
    entry_keys = [r[6] for r in rows] + [""] * len(roots)
    valid = np.zeros(size, bool)  # a root missing from articles takes no part
    valid[:n] = True
    blobs = [b"\0" * 4 * NEAR_PARAMS.num_bins] * len(roots)
    n_shingles = np.zeros(len(roots), np.int64)  # no sketch: no direct score
    ranks: dict[int, tuple[Any, ...]] = {}
    for aid, published, fetched, source, entry_key, blob, count in meta:
        node = root_pos[aid]
        valid[node] = True
        sources[node], entry_keys[node] = source, entry_key
        ranks[node] = _rank(published, fetched, source, policies, aid)
        if blob is not None:
            blobs[node - n], n_shingles[node - n] = blob, count
    both = neardup.Sketches(
        np.vstack([sk.values, neardup.Sketches.from_blobs(blobs, [], NEAR_PARAMS.num_bins).values]),
        np.concatenate([sk.n_shingles, n_shingles]),
    )
    # Each group of two or more valid members: its canonical copy is its first by rank.
    linked = np.zeros(size, bool)
    linked[src], linked[dst] = True, True
    members = np.flatnonzero(linked & valid)
    big = np.bincount(label[members], minlength=size) >= 2
    members = members[big[label[members]]]
    if not len(members):
        return 0
    for node in members[members < n]:
        r = rows[node]
        ranks[int(node)] = _rank(r[3], r[4], r[5], policies, r[0])
    order = sorted(members.tolist(), key=ranks.__getitem__)
    canonical_of = np.full(size, -1, np.intp)
    for node in reversed(order):  # the first in rank order wins
        canonical_of[label[node]] = node
    canonical = canonical_of[label[members]]
    m, c = members[members != canonical], canonical[members != canonical]
    direct = neardup.similarity_rows(both, m, both, c, NEAR_PARAMS)
    # Its score with the canonical copy, else with its closest copy in the group.
    score = np.where(direct >= NEAR_PARAMS.threshold, direct, top[m])
    name_arr = pa.array(names, pa.string())
    take = pa.array(m)
    links = pa.table(
        {
            "source": pa.array(sources, pa.string()).take(take),
            "entry_key": pa.array(entry_keys, pa.string()).take(take),
            "article_id": name_arr.take(take),
            "duplicate_of": name_arr.take(pa.array(c)),
            "level": pa.array(["near_duplicate"] * len(m), pa.string()),
            "score": pa.array(np.round(score, 4)),
            "threshold": pa.array([NEAR_PARAMS.threshold] * len(m), pa.float64()),
            "detected_at": pa.array([now] * len(m), pa.timestamp("us", tz="UTC")),
            "run_id": pa.array([None] * len(m), pa.string()),
        }
    )
    moved = m >= n  # a new, earlier copy takes a stored group's place: its members follow
    if moved.any():
        _stage(
            con,
            "repoint",
            {"old": name_arr.take(pa.array(m[moved])), "new": name_arr.take(pa.array(c[moved]))},
        )
        con.execute(
            "UPDATE duplicates SET duplicate_of = r.new FROM repoint r "
            "WHERE duplicates.level = 'near_duplicate' AND duplicates.duplicate_of = r.old"
        )
    con.register("staged_near", links)
    con.execute(
        """
        INSERT INTO duplicates BY NAME
        SELECT * FROM staged_near s
        WHERE NOT EXISTS (SELECT 1 FROM duplicates d
                          WHERE d.source = s.source AND d.entry_key = s.entry_key)
        """
    )
    return int(np.count_nonzero(~moved))


# -- stories ---------------------------------------------------------------------------------
def _stories(
    con: duckdb.DuckDBPyConnection,
    batch: _Batch,
    raws: Mapping[str, stories.RawTerms],
    cache: _PassCache,
    policies: Mapping[str, SourcePolicy],
    params: stories.StoryParams,
    overrides: stories.Overrides,
    now: datetime,
    seconds: dict[str, float],
) -> int:
    t0 = time.perf_counter()
    rows = batch.rows
    copy_of = _copies_to_file(con, rows, batch.copies, params.window, policies)
    new_docs = [_doc(r, policies) for r in rows if r[0] not in copy_of]
    # Stored articles that became near copies of a new article (it is earlier) are filed too,
    # as they would have been had they arrived after it: arrival order does not matter.
    refiled, refiled_from = _stored_copies_to_file(con, new_docs, params.window, policies)
    missing = [d for d in new_docs if d.id not in raws]
    if missing:  # exact copies not filed (the original is outside the window): featurised here
        raws = {**raws, **stories.raw_term_frequencies(missing, params)}
    if not new_docs:  # only copies of clustered articles
        touched = _follow_originals(con, copy_of, [], params, now)
        _rebuild_stories(con, sorted(touched), now)
        return len(touched)
    featured = _ids_in(
        con,
        "SELECT article_id FROM ids_in JOIN story_featured USING (article_id)",
        [d.id for d in new_docs],
    )
    is_fresh = np.asarray([d.id not in featured for d in new_docs], dtype=bool)
    fresh = [d for d, f in zip(new_docs, is_fresh.tolist(), strict=True) if f]
    ids = [d.id for d in new_docs]
    vocabulary = stories.Vocabulary()
    counts = stories.TermCounts.encode(ids, raws, vocabulary)  # every term of the batch
    vocabulary_terms = pa.array(vocabulary.terms(), pa.string())
    # The fresh articles' document counts go to story_df, append-only (term, count) rows,
    # summed on lookup and compacted now and then: appending is ~40x faster in DuckDB than
    # updating counts in place.
    if fresh:
        per_column = counts.document_counts(is_fresh, len(vocabulary))
        where = np.flatnonzero(per_column)
        terms = vocabulary_terms.take(pa.array(where))
        _stage(con, "staged_df", {"term": terms, "df": pa.array(per_column[where])})
        con.execute("INSERT INTO story_df SELECT term, df FROM staged_df")
        cache.dfs.add(dict(zip(terms.to_pylist(), per_column[where].tolist(), strict=True)))
        _stage(
            con,
            "staged_featured",
            {
                "article_id": [d.id for d in fresh],
                "n_terms": [len(raws[d.id].terms) for d in fresh],
            },
        )
        con.execute("INSERT INTO story_featured SELECT * FROM staged_featured")
    n_row = con.execute("SELECT count(*) FROM story_featured").fetchone()
    n_docs = int(n_row[0]) if n_row else 0
    df = cache.dfs.lookup(con, set(vocabulary.terms()))
    fm = stories.featurise_matrix(ids, raws, df, n_docs, params, vocabulary, counts)
    # Each new article's blocking terms, one row each: the fresh ones are stored.
    owner = np.repeat(np.arange(len(new_docs)), [len(b) for b in fm.blocking])
    terms = vocabulary_terms.take(pa.array(np.concatenate(fm.blocking)))
    times = pa.array([d.time for d in new_docs], pa.timestamp("us", tz="UTC"))
    con.register(
        "staged_blocking",
        pa.table(
            {
                "article_id": pa.array(ids, pa.string()).take(owner),
                "term": terms,
                "article_time": times.take(owner),
                "fresh": is_fresh[owner],
            }
        ),
    )
    if fresh:
        con.execute(
            "INSERT INTO story_terms SELECT article_id, term, article_time "
            "FROM staged_blocking WHERE fresh"
        )
    t1 = time.perf_counter()
    neighbours, rowid_of = _neighbours(con, new_docs, params, overrides, policies, refiled)
    t2 = time.perf_counter()
    if neighbours:
        known = cache.raws.data
        missing = [d for d in neighbours if d.id not in known]
        n_raws = {d.id: known[d.id] for d in neighbours if d.id in known}
        if missing:
            texts = _texts(con, {d.id: rowid_of[d.id] for d in missing})
            missing = [replace(d, text=texts.get(d.id, "")) for d in missing]
            n_raws.update(stories.raw_term_frequencies(missing, params))
        df = cache.dfs.lookup(con, set().union(*(r.terms for r in n_raws.values())))
        fm = stories.FeatureMatrix.stack(
            [
                fm,
                stories.featurise_matrix(
                    [d.id for d in neighbours], n_raws, df, n_docs, params, vocabulary
                ),
            ]
        )
    t3 = time.perf_counter()
    assignments = stories.assign_stories(new_docs, neighbours, df, n_docs, params, overrides, fm)
    t4 = time.perf_counter()
    old_story = {d.id: d.story_id for d in neighbours}
    touched = {a.story_id for a in assignments} | {s for s in old_story.values() if s}
    _stage(
        con,
        "staged_assign",
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
        },
    )
    # Only rows that change are rewritten (a neighbour's assignment is usually unchanged).
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE changed_assign AS
        SELECT n.* FROM staged_assign n LEFT JOIN story_articles o USING (article_id)
        WHERE o.article_id IS NULL OR o.story_id <> n.story_id OR o.group_id <> n.group_id
           OR o.is_representative <> n.is_representative
           OR o.linked_to IS DISTINCT FROM n.linked_to OR o.score <> n.score
           OR o.cohesion <> n.cohesion OR o.reason <> n.reason
        """
    )
    con.execute(
        "DELETE FROM story_articles WHERE article_id IN (SELECT article_id FROM changed_assign)"
    )
    con.execute("INSERT INTO story_articles SELECT * FROM changed_assign")
    con.execute("DROP TABLE changed_assign")
    assigned = [a.article_id for a in assignments] + list(refiled)
    touched |= _follow_originals(con, {**copy_of, **refiled}, assigned, params, now)
    touched |= refiled_from
    if refiled:  # copies filed under a refiled article now point at its canonical copy
        _stage(con, "refiled", {"old": list(refiled), "new": list(refiled.values())})
        con.execute(
            "UPDATE story_articles SET linked_to = r.new FROM refiled r "
            "WHERE story_articles.reason = 'duplicate' AND story_articles.linked_to = r.old"
        )
    _rebuild_stories(con, sorted(touched), now)
    t5 = time.perf_counter()
    for key, dt in (("stories_vocabulary", t1 - t0), ("stories_neighbours", t2 - t1),
                    ("stories_featurise_neighbours", t3 - t2), ("stories_assign", t4 - t3),
                    ("stories_write", t5 - t4)):  # fmt: skip
        seconds[key] += dt
    return len(touched)


def _copy_pairs(
    con: duckdb.DuckDBPyConnection, ids: Sequence[str], levels: Sequence[str] = _EXACT
) -> dict[str, _Original]:
    """Copies among ``ids`` at ``levels`` (by default exact copies: the same text or canonical
    URL as an earlier article): copy -> its original."""
    _stage(con, "ids_in", {"article_id": ids})
    sql = _COPY_SQL.format(levels=", ".join(f"'{v}'" for v in levels))
    return {c: _Original(o, t, src) for c, o, t, src in con.execute(sql).fetchall()}


def _clustered_originals(
    con: duckdb.DuckDBPyConnection, copies: Mapping[str, _Original]
) -> set[str]:
    """The copies' originals that already have a story."""
    return _ids_in(
        con,
        "SELECT article_id FROM ids_in JOIN story_articles USING (article_id)",
        sorted({o.id for o in copies.values()}),
    )


def _filed(
    copies: Mapping[str, _Original],
    rows: Sequence[tuple[Any, ...]],
    clustered: Callable[[str], bool],
    window: timedelta,
    policies: Mapping[str, SourcePolicy],
) -> dict[str, str]:
    """The copies filed under their original's story: copy -> original (the first of a chain
    of copies). Clustering every copy of a text republished a hundred times would re-cluster
    ever larger groups of copies. A copy is clustered like any article when its original is not
    ``clustered``, lies outside the window, or when either source keeps its articles out of
    others' stories."""
    row_of = {r[0]: r for r in rows}

    def first(o: _Original) -> _Original:
        seen = {o.id}
        while o.id in copies and copies[o.id].id not in seen:
            o = copies[o.id]
            seen.add(o.id)
        return o

    filed = {}
    for c, o in copies.items():
        o = first(o)
        r = row_of[c]
        if (
            o.id not in copies
            and clustered(o.id)
            and _may_file((r[3] or r[4], r[5]), (o.time, o.source), window, policies)
        ):
            filed[c] = o.id
    return filed


def _may_file(
    copy: tuple[datetime | None, str],
    original: tuple[datetime | None, str],
    window: timedelta,
    policies: Mapping[str, SourcePolicy],
) -> bool:
    """Whether a copy (its time and source) is filed under its original's story: both are in
    the window (or undated), and both sources let their articles join others' stories."""
    (t, source), (t_original, source_original) = copy, original
    in_window = t is None or t_original is None or abs(t - t_original) <= window
    return in_window and all(
        policies.get(x, SourcePolicy()).stories for x in (source, source_original)
    )


def _copies_to_file(
    con: duckdb.DuckDBPyConnection,
    rows: list[tuple[Any, ...]],
    exact: Mapping[str, _Original],
    window: timedelta,
    policies: Mapping[str, SourcePolicy],
) -> dict[str, str]:
    """The batch's copies filed under their original (clustered, or in the batch): exact
    copies, and near-duplicates under their group's canonical copy (just linked)."""
    near = _copy_pairs(con, [r[0] for r in rows if r[0] not in exact], ("near_duplicate",))
    copies = {**near, **exact}
    if not copies:
        return {}
    clustered = _clustered_originals(con, copies)
    batch = {r[0] for r in rows}
    return _filed(copies, rows, lambda o: o in clustered or o in batch, window, policies)


def _stored_copies_to_file(
    con: duckdb.DuckDBPyConnection,
    new_docs: Sequence[stories.StoryDoc],
    window: timedelta,
    policies: Mapping[str, SourcePolicy],
) -> tuple[dict[str, str], set[str]]:
    """Clustered articles just linked as near copies of a new article (an earlier copy took
    their group over) that are to be filed under it: copy -> new article; and their stories."""
    times = {d.id: d.time for d in new_docs}
    _stage(con, "ids_in", {"article_id": list(times)})
    found = con.execute(
        """
        SELECT d.article_id, d.duplicate_of, timezone('UTC', coalesce(c.published_at,
               c.fetched_at)), c.source, n.source, s.story_id
        FROM ids_in i JOIN duplicates d ON d.duplicate_of = i.article_id
        JOIN story_articles s ON s.article_id = d.article_id
        JOIN articles c ON c.article_id = d.article_id
        JOIN articles n ON n.article_id = d.duplicate_of
        WHERE d.level = 'near_duplicate' AND s.reason <> 'duplicate'
        """
    ).fetchall()
    filed: dict[str, str] = {}
    stories_of: set[str] = set()
    for copy, new, t, copy_source, new_source, story in found:
        if _may_file((t, copy_source), (times[new], new_source), window, policies):
            filed[copy] = new
            stories_of.add(story)
    return filed, stories_of


def _follow_originals(
    con: duckdb.DuckDBPyConnection,
    copy_of: Mapping[str, str],
    assigned: Sequence[str],
    params: stories.StoryParams,
    now: datetime,
) -> set[str]:
    """File the batch's exact copies under their originals' stories, and move every stored
    copy whose original's story or group changed in this batch. Returns the stories touched."""
    _stage(con, "staged_copies", {"article_id": list(copy_of), "original": list(copy_of.values())})
    _stage(con, "assigned_ids", {"article_id": list(assigned)})
    con.execute(
        "DELETE FROM story_articles WHERE article_id IN (SELECT article_id FROM staged_copies)"
    )
    con.execute(
        """
        INSERT INTO story_articles
        SELECT c.article_id, o.story_id, o.group_id, false, c.original, 1.0, 1.0, ?,
               'duplicate', ?
        FROM staged_copies c JOIN story_articles o ON o.article_id = c.original
        """,
        [params.threshold, now],
    )
    con.execute(
        """
        UPDATE story_articles SET story_id = o.story_id, group_id = o.group_id
        FROM story_articles o JOIN assigned_ids USING (article_id)
        WHERE story_articles.reason = 'duplicate' AND story_articles.linked_to = o.article_id
          AND (story_articles.story_id <> o.story_id OR story_articles.group_id <> o.group_id)
        """
    )
    return {
        r[0]
        for r in con.execute(
            "SELECT DISTINCT s.story_id FROM staged_copies JOIN story_articles s USING (article_id)"
        ).fetchall()
    }


class _DocFrequencies:
    """Document frequencies read from ``story_df`` during one pass, kept current with the
    counts the pass adds, so each term is read once (``size`` terms at most, then it starts
    over)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data: dict[str, int] = {}

    def add(self, counts: Mapping[str, int]) -> None:
        """Count terms just appended to ``story_df`` (terms not yet read are read later)."""
        data = self.data
        for t in counts.keys() & data.keys():
            data[t] += counts[t]

    def lookup(self, con: duckdb.DuckDBPyConnection, terms: set[str]) -> Mapping[str, int]:
        """A mapping holding the document frequency of every stored term in ``terms``."""
        missing = terms - self.data.keys()
        if len(self.data) + len(missing) > self.size:
            self.data.clear()
            missing = terms
        self.data.update(_lookup_df(con, missing))
        return self.data


def _lookup_df(con: duckdb.DuckDBPyConnection, terms: set[str]) -> dict[str, int]:
    if not terms:
        return {}
    _stage(con, "wanted_terms", {"term": sorted(terms)})
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
    params: stories.StoryParams,
    overrides: stories.Overrides,
    policies: Mapping[str, SourcePolicy],
    leave_out: Collection[str] = (),
) -> tuple[list[stories.StoryDoc], dict[str, int]]:
    """Stored articles sharing a blocking term (``staged_blocking``) within the window, as
    whole groups (but for ``leave_out``), without their texts; and their rowids."""
    new_ids = [d.id for d in new_docs]
    new_set = set(new_ids)
    times = [d.time for d in new_docs if d.time is not None]
    window = params.window
    lo = (min(times) - window) if times and len(times) == len(new_docs) else datetime(1, 1, 1)
    hi = (max(times) + window) if times and len(times) == len(new_docs) else datetime(9999, 1, 1)
    _stage(con, "batch_ids", {"article_id": new_ids + list(leave_out)})
    partners = [
        b if a in new_set else a for a, b in overrides.must_link if (a in new_set) != (b in new_set)
    ]
    # Must-link partners' groups, and the groups the left-out articles leave (re-clustered
    # without them, so no story keeps the id of an article that left it).
    _stage(con, "partner_ids", {"article_id": pa.array(partners + list(leave_out), pa.string())})
    group_rows = con.execute(
        """
        WITH cand AS (
            SELECT DISTINCT t.article_id
            FROM staged_blocking n JOIN story_terms t USING (term)
            WHERE t.article_time BETWEEN ? AND ?
              AND t.article_id NOT IN (SELECT article_id FROM batch_ids)
            UNION
            SELECT article_id FROM partner_ids
        )
        SELECT DISTINCT s.group_id FROM cand JOIN story_articles s USING (article_id)
        """,
        [lo.replace(tzinfo=UTC), hi.replace(tzinfo=UTC)],
    ).fetchall()
    groups = [g[0] for g in group_rows]
    if not groups:
        return [], {}
    _stage(con, "group_ids", {"group_id": groups})
    rows = con.execute(
        """
        SELECT a.article_id, coalesce(a.title, ''), '', timezone('UTC', a.published_at),
               timezone('UTC', a.fetched_at), a.source, s.story_id, s.group_id, a.rowid
        FROM story_articles s JOIN group_ids USING (group_id) JOIN articles a USING (article_id)
        WHERE s.article_id NOT IN (SELECT article_id FROM batch_ids) AND s.reason <> 'duplicate'
        ORDER BY a.article_id
        """
    ).fetchall()  # texts are read later, only for those whose terms are not in memory
    return [_doc(r, policies, story_id=r[6], group_id=r[7]) for r in rows], {
        r[0]: r[8] for r in rows
    }


def _texts(con: duckdb.DuckDBPyConnection, rowid_of: Mapping[str, int]) -> dict[str, str]:
    """Texts of articles by id (``rowid_of``: id -> rowid)."""
    got = _by_rowid(con, "SELECT a.article_id, a.text FROM articles a ", rowid_of)
    return {aid: row[1] or "" for aid, row in got.items()}


def _singletons(con: duckdb.DuckDBPyConnection, rows: list[tuple[Any, ...]], now: datetime) -> None:
    """Story clustering off: every article is its own story."""
    ids = [r[0] for r in rows]
    _stage(con, "alone_ids", {"article_id": ids})
    con.execute("DELETE FROM story_articles WHERE article_id IN (SELECT article_id FROM alone_ids)")
    con.execute(
        "INSERT INTO story_articles SELECT article_id, article_id, article_id, true, NULL, 0, 0, "
        "0, 'alone', ? FROM alone_ids",
        [now],
    )
    _rebuild_stories(con, ids, now)


def _rebuild_stories(con: duckdb.DuckDBPyConnection, story_ids: list[str], now: datetime) -> None:
    """Rewrite the ``stories`` rows of ``story_ids``. Outlets as the ``article_outlets`` view
    names them, computed for the members only (the view would compute every article's)."""
    _stage(con, "touched_stories", {"story_id": story_ids})
    con.execute("DELETE FROM stories WHERE story_id IN (SELECT story_id FROM touched_stories)")
    con.execute(
        """
        INSERT INTO stories
        SELECT s.story_id,
               any_value(a.title) FILTER (WHERE a.article_id = s.story_id),
               s.story_id,
               min(coalesce(a.published_at, a.fetched_at)),
               max(coalesce(a.published_at, a.fetched_at)),
               count(*),
               count(DISTINCT coalesce(a.site_name, nullif(regexp_extract(
                   coalesce(a.canonical_url, a.url, ''), '^https?://(?:www\\.)?([^/:?#]+)', 1), ''),
                   a.source)),
               ?
        FROM story_articles s
        JOIN touched_stories USING (story_id)
        JOIN articles a USING (article_id)
        GROUP BY s.story_id
        """,
        [now],
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
