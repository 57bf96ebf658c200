"""Same-story clustering (dedup level 4): one event, different wording, different outlets.

Features
--------
Each article becomes a sparse TF-IDF vector over two kinds of terms:

* ``w:<word>``: lower-cased content words (stop words dropped, a plural ``s`` stripped);
* ``e:<token>`` and ``e:<token>_<token>``: entity-like tokens, i.e. capitalised words that do not
  start a sentence, numbers and dates (month names are capitalised), plus bigrams of adjacent
  ones. These carry the event specifics (who, where, when, how many) that separate two different
  earthquakes or two different rehab check-ins which share all their topic words.

Words in the title and the first ``lead_words`` words of the body count ``lead_weight`` times.
Term frequency is sub-linear (``1 + ln tf``) and IDF is
``(ln((N + 1) / (df + 1)) + 1) ** idf_power`` with ``df``/``N`` *passed in*: the pipeline keeps
the document frequency of every term returned by :func:`document_terms` (or
:func:`featurise`) in a table. Similarity is the cosine of the L2-normalised vectors.

Clustering
----------
1. *Edges*: two articles are linked when they share a blocking term (one of their
   ``blocking_size`` heaviest terms, see :func:`blocking_terms`), their times are within
   ``window`` of each other (undated articles match any time), both sources allow story merging,
   no override forbids it, and their cosine is at least ``threshold``; or when an override forces
   it.
2. *Groups*: connected components of those edges. They are only the unit of work: every story is
   inside one group, because average linkage never joins two clusters without a pair at or above
   the threshold.
3. *Stories*: inside each group, average-linkage agglomerative clustering (UPGMA) on cosine
   distance, cut at ``1 - threshold``. A pair outside the window counts as similarity 0, a
   forbidden pair (override or source policy) as an infinite distance, so it can never merge.
   Average linkage does not chain: a long series of weak links does not pull two unrelated
   articles together, since every member must be similar to the cluster on average.
4. *Ids*: the representative of a story is its earliest article (published, else fetched time;
   undated last), then the lowest ``source_priority``, then the smallest id; the story id is the
   representative's id, and the group id is the smallest article id of the group.

Incremental use and order independence
--------------------------------------
Everything above is a deterministic function of the *set* of articles (ids are sorted before any
tie can matter) given fixed ``df``/``N``. For a batch of new articles the pipeline passes as
``neighbours`` every stored article of every *group* that contains an article sharing a blocking
term with a new article (plus any override partner): the new groups are unions of those and the
new articles, so reclustering them gives the same result as clustering everything at once.
:func:`assign_stories` returns an :class:`Assignment` for every article it was given, new or not,
and the pipeline upserts all of them (a late, earlier-published article can change a story id).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import chain

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
from scipy.cluster.hierarchy import linkage
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import squareform

from tasks.core.terms import Featuriser, RawTerms, raw_term_frequencies

__all__ = [
    "ArticleFeatures",
    "Assignment",
    "Overrides",
    "StoryDoc",
    "StoryParams",
    "assign_stories",
    "blocking_terms",
    "choose_representative",
    "document_terms",
    "featurise",
    "FeatureMatrix",
    "Vocabulary",
    "featurise_matrix",
    "TermCounts",
    "pair_similarity",
    "RawTerms",
    "raw_term_frequencies",
    "term_weights",
]

_EPOCH = datetime(1970, 1, 1)
_FORBIDDEN = 1e6  # distance for pairs that must never merge; dominates any average
PAIR_ENTRIES = 2_000_000
"""Stored entries (both rows of each pair) that one step of :func:`_pair_cosines` copies, a few
tens of MB. Copying the rows of every pair at once took 150 MB at 10k articles, and grew with
the number of pairs."""


@dataclass(frozen=True)
class StoryParams:
    """Parameters of story clustering (defaults tuned on the ECB+ dev half).

    Attributes:
        threshold: Minimum cosine for an edge and minimum average-linkage similarity of a story.
        window: Maximum time between two linked articles.
        lead_words: Body words after the title that count as the lead.
        lead_weight: Weight of title and lead words (body words weigh 1).
        entity_weight: Weight of entity-like terms relative to plain words.
        idf_power: Exponent of the IDF; above 1 favours rare terms.
        blocking_size: Number of heaviest terms per article used as blocking keys.
    """

    threshold: float = 0.215
    window: timedelta = timedelta(hours=24)
    lead_words: int = 60
    lead_weight: float = 2.0
    entity_weight: float = 1.5
    idf_power: float = 1.0
    blocking_size: int = 20


@dataclass(frozen=True)
class StoryDoc:
    """One article as story clustering sees it.

    Attributes:
        id: Article id (unique, sortable).
        title: Headline.
        text: Body text.
        published: Publication time, if known.
        fetched: Fetch time; used when ``published`` is missing.
        source_priority: Lower is preferred when choosing the representative.
        allow_story_merge: False when the source's articles must stay alone.
        story_id: Current story of a stored article (None for a new one).
        group_id: Current group of a stored article (None for a new one).
    """

    id: str
    title: str
    text: str
    published: datetime | None = None
    fetched: datetime | None = None
    source_priority: int = 0
    allow_story_merge: bool = True
    story_id: str | None = None
    group_id: str | None = None

    @property
    def time(self) -> datetime | None:
        """Publication time, else fetch time, else None."""
        return self.published if self.published is not None else self.fetched


@dataclass(frozen=True)
class Overrides:
    """Manual decisions, as unordered id pairs.

    Attributes:
        must_link: Pairs that always belong to one story.
        cannot_link: Pairs that never do (a must-link pair wins over a cannot-link one).
    """

    must_link: frozenset[tuple[str, str]] = frozenset()
    cannot_link: frozenset[tuple[str, str]] = frozenset()

    def pairs(self, which: str) -> set[tuple[str, str]]:
        """Return ``must_link`` or ``cannot_link`` with each pair ordered ``(min, max)``."""
        src = self.must_link if which == "must_link" else self.cannot_link
        return {(min(a, b), max(a, b)) for a, b in src if a != b}


@dataclass(frozen=True)
class Assignment:
    """Story of one article, with the evidence for it.

    Attributes:
        article_id: The article.
        story_id: Id of the story's representative article.
        group_id: Smallest article id of the article's group (persist it; see module docstring).
        is_representative: True for the story's canonical article.
        linked_to: Most similar other member of the story (None when alone).
        score: Cosine with ``linked_to`` (for a lone article: its best candidate's cosine).
        cohesion: Mean cosine with the other members of the story (0.0 when alone).
        threshold: The threshold the link was judged against.
        reason: ``"similar"``, ``"must_link"``, ``"alone"`` or ``"merge_disabled"``.
    """

    article_id: str
    story_id: str
    group_id: str
    is_representative: bool
    linked_to: str | None
    score: float
    cohesion: float
    threshold: float
    reason: str


def document_terms(title: str, text: str, params: StoryParams | None = None) -> frozenset[str]:
    """Distinct terms of an article; add 1 to each one's document frequency when storing it."""
    return frozenset(Featuriser(params or StoryParams()).raw(title, text))


def term_weights(
    doc: StoryDoc, df: Mapping[str, int], n_docs: int, params: StoryParams
) -> dict[str, float]:
    """L2-normalised TF-IDF weights of one article (empty for an article without terms).

    Args:
        doc: The article.
        df: Document frequency per term (missing terms count as 0).
        n_docs: Number of documents the frequencies were counted over.
        params: Feature parameters.
    """
    fm = featurise_matrix([doc.id], raw_term_frequencies([doc], params), df, n_docs, params)
    return fm.weights(0)


class Vocabulary:
    """Column numbers of terms, shared by the feature matrices of one clustering pass."""

    def __init__(self) -> None:
        self.index: defaultdict[str, int] = defaultdict()
        self.index.default_factory = self.index.__len__  # a new term gets the next number
        self._terms: list[str] = []

    def columns(self, terms: Iterable[str], count: int) -> npt.NDArray[np.int64]:
        """Column of each term (new terms are numbered on the way)."""
        return np.fromiter(map(self.index.__getitem__, terms), dtype=np.int64, count=count)

    def terms(self) -> list[str]:
        """The term of each column (index = column)."""
        if len(self._terms) < len(self.index):
            self._terms = list(self.index)
        return self._terms

    def __len__(self) -> int:
        return len(self.index)


@dataclass
class FeatureMatrix:
    """Normalised TF-IDF vectors of many articles (one CSR row each) and their blocking terms.

    Attributes:
        ids: Article id of each row.
        rows: L2-normalised TF-IDF weights; columns are ``vocabulary`` numbers.
        blocking: Columns of each row's blocking terms (see :func:`blocking_terms`).
        vocabulary: Term of each column (shared; may have grown since this matrix was made).
    """

    ids: list[str]
    rows: sp.csr_matrix
    blocking: list[npt.NDArray[np.int64]]
    vocabulary: Vocabulary

    def weights(self, i: int) -> dict[str, float]:
        """Row ``i`` as ``{term: weight}``."""
        a, b = self.rows.indptr[i], self.rows.indptr[i + 1]
        terms = self.vocabulary.terms()
        return dict(
            zip(
                [terms[c] for c in self.rows.indices[a:b].tolist()],
                self.rows.data[a:b].tolist(),
                strict=True,
            )
        )

    def blocking_terms(self, i: int) -> tuple[str, ...]:
        terms = self.vocabulary.terms()
        return tuple(terms[c] for c in self.blocking[i].tolist())

    def take(self, ids: Sequence[str]) -> FeatureMatrix:
        """The rows of ``ids``, in that order."""
        pos = {d: k for k, d in enumerate(self.ids)}
        order = [pos[d] for d in ids]
        return FeatureMatrix(list(ids), self.rows[order], [self.blocking[k] for k in order],
                             self.vocabulary)  # fmt: skip

    @staticmethod
    def from_features(feats: Sequence[ArticleFeatures], vocabulary: Vocabulary) -> FeatureMatrix:
        """Rows from :func:`featurise` output (weights as computed there)."""
        lengths = [len(f.weights) for f in feats]
        total = sum(lengths)
        cols = vocabulary.columns(chain.from_iterable(f.weights for f in feats), total)
        data = np.fromiter(
            chain.from_iterable(f.weights.values() for f in feats), np.float64, total
        )
        indptr = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        rows = sp.csr_matrix((data, cols, indptr), shape=(len(feats), max(len(vocabulary), 1)))
        blocking = [vocabulary.columns(f.blocking, len(f.blocking)) for f in feats]
        return FeatureMatrix([f.article_id for f in feats], rows, blocking, vocabulary)

    @staticmethod
    def stack(parts: Sequence[FeatureMatrix]) -> FeatureMatrix:
        """Rows of several matrices over one vocabulary, one after the other."""
        vocabulary = parts[0].vocabulary
        width = max(len(vocabulary), 1)
        rows = [sp.csr_matrix((p.rows.data, p.rows.indices, p.rows.indptr),
                              shape=(p.rows.shape[0], width)) for p in parts]  # fmt: skip
        return FeatureMatrix(
            [i for p in parts for i in p.ids],
            sp.vstack(rows, format="csr") if rows else sp.csr_matrix((0, width)),
            [b for p in parts for b in p.blocking],
            vocabulary,
        )


@dataclass
class TermCounts:
    """Raw term frequencies of many articles as columns of a :class:`Vocabulary`: row ``i``'s
    terms are ``cols[indptr[i]:indptr[i + 1]]``, with frequencies ``tf`` there."""

    cols: npt.NDArray[np.int64]
    tf: npt.NDArray[np.float64]
    indptr: npt.NDArray[np.int64]

    @staticmethod
    def encode(
        ids: Sequence[str], raws: Mapping[str, RawTerms], vocabulary: Vocabulary
    ) -> TermCounts:
        """The rows of ``ids`` from :func:`raw_term_frequencies` (new terms get columns)."""
        lengths = np.fromiter((len(raws[i].terms) for i in ids), dtype=np.int64, count=len(ids))
        total = int(lengths.sum())
        cols = vocabulary.columns(chain.from_iterable(raws[i].terms for i in ids), total)
        tf = np.concatenate([raws[i].tf for i in ids]) if ids else np.empty(0, np.float64)
        return TermCounts(cols, tf, np.concatenate([[0], np.cumsum(lengths)]))

    def document_counts(self, rows: npt.NDArray[np.bool_], width: int) -> npt.NDArray[np.int64]:
        """Number of the ``rows`` (a mask) that have each column, for ``width`` columns."""
        keep = np.repeat(rows, np.diff(self.indptr))
        return np.bincount(self.cols[keep], minlength=width)


def featurise_matrix(
    ids: Sequence[str],
    raws: Mapping[str, RawTerms],
    df: Mapping[str, int],
    n_docs: int,
    params: StoryParams,
    vocabulary: Vocabulary | None = None,
    counts: TermCounts | None = None,
) -> FeatureMatrix:
    """TF-IDF rows and blocking terms of many articles from :func:`raw_term_frequencies`
    (``counts``: the rows already encoded in ``vocabulary``; ``raws`` is then not read).

    Term frequency is sub-linear (``1 + ln tf`` above 1), IDF is
    ``(ln((N + 1) / (df + 1)) + 1) ** idf_power``, rows are L2-normalised. Vectorised: the only
    per-term Python work is looking up each term's column and, once per distinct term, its df.
    """
    vocabulary = vocabulary if vocabulary is not None else Vocabulary()
    if counts is None:
        counts = TermCounts.encode(ids, raws, vocabulary)
    cols, tf, indptr = counts.cols, counts.tf, counts.indptr
    present = np.zeros(len(vocabulary), dtype=bool)
    present[cols] = True
    uniq = np.flatnonzero(present)  # the distinct columns, without sorting every term
    terms = vocabulary.terms()
    # None (a term without a count) becomes NaN, then 0.
    dfs = np.array(list(map(df.get, map(terms.__getitem__, uniq.tolist()))), dtype=np.float64)
    idf = np.zeros(len(vocabulary))
    idf[uniq] = (np.log((n_docs + 1) / (np.nan_to_num(dfs, nan=0.0) + 1)) + 1.0) ** params.idf_power
    w = np.where(tf > 1.0, 1.0 + np.log(np.maximum(tf, 1.0)), tf) * idf[cols]
    row_of = np.repeat(np.arange(len(ids)), np.diff(indptr))
    norms = np.sqrt(np.bincount(row_of, weights=w * w, minlength=len(ids)))
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(norms[row_of] > 0, w / norms[row_of], 0.0)
    rows = sp.csr_matrix((w, cols, indptr), shape=(len(ids), max(len(vocabulary), 1)))
    blocking = _heaviest_rows(w, cols, row_of, indptr, uniq, terms, params.blocking_size)
    return FeatureMatrix(list(ids), rows, blocking, vocabulary)


def _heaviest_rows(
    weights: npt.NDArray[np.float64],
    cols: npt.NDArray[np.int64],
    row_of: npt.NDArray[np.int64],
    indptr: npt.NDArray[np.int64],
    uniq: npt.NDArray[np.int64],
    terms: list[str],
    k: int,
) -> list[npt.NDArray[np.int64]]:
    """:func:`_heaviest` of every CSR row at once: one sort by row, weight (descending) and
    term (the ranks of the ``uniq`` columns' terms).

    That exact sort runs on a superset of each row's ``k`` heaviest, found first by one
    integer sort of (row, weight rounded down to 2**-39): an entry whose rounded weight is
    below its row's ``k``-th cannot be among them. (A three-key sort of every entry cost
    five times as much.)"""
    n = len(indptr) - 1
    if k <= 0 or not len(weights):
        return [np.empty(0, dtype=np.int64) for _ in range(n)]
    coarse = np.floor((1.0 - np.clip(weights, 0.0, 1.0)) * float(1 << 39)).astype(np.int64)
    by_coarse = np.argsort((row_of << 40) | coarse)
    lengths = np.diff(indptr)
    kth = indptr[:-1] + np.minimum(lengths, k) - 1  # sorted position of each row's k-th
    cut = np.full(n, -1, dtype=np.int64)
    has = lengths > 0
    cut[has] = coarse[by_coarse[kth[has]]]
    cand = np.flatnonzero(coarse <= cut[row_of])  # in row order, as the rows are
    weights, cols, row_of = weights[cand], cols[cand], row_of[cand]
    counts = np.bincount(row_of, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    by_term = pc.sort_indices(pa.array([terms[c] for c in uniq.tolist()], pa.string()))
    rank = np.zeros(int(uniq.max()) + 1, dtype=np.int64)
    rank[uniq[by_term.to_numpy()]] = np.arange(len(uniq))
    order = np.lexsort((rank[cols], -weights, row_of))
    position = np.arange(len(order)) - starts[row_of[order]]
    chosen = order[position < k]
    counts = np.bincount(row_of[chosen], minlength=n)
    return np.split(cols[chosen], np.cumsum(counts)[:-1])


def _heaviest(
    weights: npt.NDArray[np.float64], cols: npt.NDArray[np.int64], terms: list[str], k: int
) -> npt.NDArray[np.int64]:
    """Columns of the ``k`` heaviest terms, ties broken by term."""
    if k <= 0 or not len(weights):
        return np.empty(0, dtype=np.int64)
    if len(weights) > k:
        cut = np.partition(weights, len(weights) - k)[len(weights) - k]
        keep = np.flatnonzero(weights >= cut)
    else:
        keep = np.arange(len(weights))
    top = cols[keep].tolist()
    ranked = sorted(zip((-weights[keep]).tolist(), [terms[c] for c in top], top, strict=True))
    return np.asarray([c for _, _, c in ranked[:k]], dtype=np.int64)


def blocking_terms(weights: Mapping[str, float], params: StoryParams) -> list[str]:
    """The ``blocking_size`` heaviest terms (ties by term), for an inverted-index table.

    Persist one row ``(article_id, term)`` per returned term; the candidates of a new article are
    the stored articles sharing at least one of its terms (within the time window).
    """
    vocabulary = Vocabulary()
    cols = vocabulary.columns(weights, len(weights))
    values = np.fromiter(weights.values(), np.float64, len(weights))
    terms = vocabulary.terms()
    return [terms[c] for c in _heaviest(values, cols, terms, params.blocking_size).tolist()]


@dataclass(frozen=True)
class ArticleFeatures:
    """What the pipeline stores for a new article.

    Attributes:
        article_id: The article.
        terms: Distinct terms: add 1 to each one's row in the DF table (and 1 to N).
        blocking: Blocking terms: one ``(article_id, term)`` row each in the inverted index.
        weights: Normalised TF-IDF vector (not stored).
    """

    article_id: str
    terms: frozenset[str]
    blocking: tuple[str, ...]
    weights: Mapping[str, float] = field(default_factory=dict, repr=False, compare=False)


def featurise(
    docs: Iterable[StoryDoc], df: Mapping[str, int], n_docs: int, params: StoryParams
) -> list[ArticleFeatures]:
    """Terms and blocking terms of many articles in one pass (input order kept)."""
    docs = list(docs)
    raws = raw_term_frequencies(docs, params)
    fm = featurise_matrix([d.id for d in docs], raws, df, n_docs, params)
    return [
        ArticleFeatures(d.id, frozenset(raws[d.id].terms), fm.blocking_terms(k), fm.weights(k))
        for k, d in enumerate(docs)
    ]


def pair_similarity(
    a: StoryDoc, b: StoryDoc, df: Mapping[str, int], n_docs: int, params: StoryParams
) -> float:
    """Cosine similarity of two articles' TF-IDF vectors (the same-story score)."""
    featuriser = Featuriser(params)
    raws = {"a": RawTerms.pack(featuriser.raw(a.title, a.text)),
            "b": RawTerms.pack(featuriser.raw(b.title, b.text))}  # fmt: skip
    fm = featurise_matrix(["a", "b"], raws, df, n_docs, params)
    return float(fm.rows[0].multiply(fm.rows[1]).sum())


def _rep_key(doc: StoryDoc) -> tuple[int, datetime, int, str]:
    t = doc.time
    if t is None:
        return (1, datetime.min, doc.source_priority, doc.id)
    return (
        0,
        t.replace(tzinfo=None) - (t.utcoffset() or timedelta(0)),
        doc.source_priority,
        doc.id,
    )


def choose_representative(docs: Iterable[StoryDoc]) -> StoryDoc:
    """Canonical article: earliest time (undated last), then lowest source priority, then id."""
    return min(docs, key=_rep_key)


def _epoch(t: datetime | None) -> float:
    """Seconds since the epoch (naive times are taken as UTC); NaN when undated."""
    if t is None:
        return math.nan
    return (t.replace(tzinfo=None) - (t.utcoffset() or timedelta(0)) - _EPOCH).total_seconds()


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def _average_linkage(sim: npt.NDArray[np.float64], threshold: float) -> list[int]:
    """Flat average-linkage clusters cut at ``threshold`` (labels in first-seen order)."""
    n = len(sim)
    if n == 1:
        return [0]
    if n == 2:  # one merge or none: the cut fcluster would make below
        return [0, 0] if max(1.0 - sim[0, 1], 0.0) <= 1.0 - threshold + 1e-12 else [0, 1]
    dist = 1.0 - sim
    np.fill_diagonal(dist, 0.0)
    dist = np.clip(dist, 0.0, None)
    tree = linkage(squareform(dist, checks=False), method="average")
    # The flat cut: average linkage never merges below an earlier merge (no inversions), so
    # the clusters are the subtrees joined at or below the cut (scipy's fcluster, less checking).
    cut = 1.0 - threshold + 1e-12
    uf = _UnionFind(2 * n - 1)
    for k, (a, b, height) in enumerate(tree[:, :3].tolist()):
        if height <= cut:
            uf.union(int(a), n + k)
            uf.union(int(b), n + k)
    first: dict[int, int] = {}
    return [first.setdefault(uf.find(i), len(first)) for i in range(n)]


def assign_stories(
    new_docs: Sequence[StoryDoc],
    neighbours: Sequence[StoryDoc],
    df: Mapping[str, int],
    n_docs: int,
    params: StoryParams | None = None,
    overrides: Overrides | None = None,
    features: Mapping[str, ArticleFeatures] | FeatureMatrix | None = None,
) -> list[Assignment]:
    """Cluster new articles together with the stored articles they may join.

    Args:
        new_docs: Articles of this run.
        neighbours: Stored articles: all members of every group that has an article sharing a
            blocking term with a new article (see the module docstring). An id present in both
            lists is taken from ``new_docs``.
        df: Document frequency per term.
        n_docs: Number of documents ``df`` was counted over.
        params: Clustering parameters.
        overrides: Manual must-link / cannot-link pairs.
        features: Output of :func:`featurise` by article id, or of :func:`featurise_matrix`,
            computed with the same ``df``, ``n_docs`` and ``params``; articles found here are
            not featurised again.

    Returns:
        One assignment per distinct input article, sorted by article id. Stored articles whose
        story or group changed must be updated as well.
    """
    params = params or StoryParams()
    overrides = overrides or Overrides()
    by_id = {d.id: d for d in neighbours}
    by_id.update({d.id: d for d in new_docs})
    ids = sorted(by_id)
    docs = [by_id[i] for i in ids]
    n = len(docs)
    if n == 0:
        return []
    pos = {d: i for i, d in enumerate(ids)}
    fm = _feature_rows(docs, df, n_docs, params, features)
    matrix = fm.rows
    must = {(pos[a], pos[b]) for a, b in overrides.pairs("must_link") if a in pos and b in pos}
    cannot = {(pos[a], pos[b]) for a, b in overrides.pairs("cannot_link") if a in pos and b in pos}
    cannot -= must
    mergeable = [d.allow_story_merge for d in docs]
    times = [_epoch(d.time) for d in docs]

    # 1. candidate pairs through the blocking terms, 2. edges, 3. groups.
    blocks = [fm.blocking[i] if mergeable[i] else np.empty(0, np.int64) for i in range(n)]
    rows = np.repeat(np.arange(n), [len(b) for b in blocks])
    cols = np.concatenate(blocks) if blocks else np.empty(0, np.int64)
    shared = sp.csr_matrix(
        (np.ones(len(rows)), (rows, cols)), shape=(n, max(len(fm.vocabulary), 1))
    )
    pairs_coo = sp.triu(shared @ shared.T, k=1).tocoo()
    left = pairs_coo.row.astype(np.int64)
    right = pairs_coo.col.astype(np.int64)
    stamps = np.asarray(times, dtype=np.float64)
    keep = ~(np.abs(stamps[left] - stamps[right]) > params.window.total_seconds())
    left, right = left[keep], right[keep]
    best = np.zeros(n)
    if len(left):
        sims = _pair_cosines(matrix, left, right)
        np.maximum.at(best, left, sims)
        np.maximum.at(best, right, sims)
        hit = sims >= params.threshold
        left, right = left[hit], right[hit]
        if cannot:
            apart = [
                (i, j) not in cannot for i, j in zip(left.tolist(), right.tolist(), strict=True)
            ]
            left, right = left[np.asarray(apart, dtype=bool)], right[np.asarray(apart, dtype=bool)]
    if must:
        left = np.concatenate([left, np.asarray([i for i, _ in must], dtype=np.int64)])
        right = np.concatenate([right, np.asarray([j for _, j in must], dtype=np.int64)])
    # Groups: connected components, members in id order.
    graph = sp.coo_matrix((np.ones(len(left)), (left, right)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    order = np.argsort(labels, kind="stable")
    cuts = np.cumsum(np.bincount(labels))[:-1]
    members_of = [m.tolist() for m in np.split(order, cuts)]
    within = iter(_within_group_similarities(matrix, [m for m in members_of if len(m) > 1]))
    out: list[Assignment] = []
    for members in members_of:
        sim = next(within) if len(members) > 1 else np.ones((1, 1))
        out.extend(_cluster_group(members, docs, sim, times, mergeable, must, cannot, best, params))
    return sorted(out, key=lambda a: a.article_id)


def _pair_cosines(
    matrix: sp.csr_matrix,
    left: npt.NDArray[np.int64],
    right: npt.NDArray[np.int64],
    entries: int = PAIR_ENTRIES,
) -> npt.NDArray[np.float64]:
    """Dot product of rows ``left[k]`` and ``right[k]`` of ``matrix`` (their cosine, the rows
    being L2-normalised) for every ``k``, copying about ``entries`` stored entries at a time
    (a single pair may exceed it)."""
    out = np.empty(len(left), dtype=np.float64)
    if not len(left):
        return out
    nnz = np.diff(matrix.indptr)
    cost = np.cumsum(nnz[left] + nnz[right])
    ends = np.searchsorted(cost, np.arange(entries, int(cost[-1]), entries), "right")
    bounds = np.unique(np.concatenate([[0], ends, [len(left)]]))
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        out[a:b] = np.asarray(matrix[left[a:b]].multiply(matrix[right[a:b]]).sum(axis=1)).ravel()
    return out


def _within_group_similarities(
    matrix: sp.csr_matrix, groups: Sequence[list[int]]
) -> list[npt.NDArray[np.float64]]:
    """Cosine similarity of every pair within each group, as one dense matrix per group (ones
    on the diagonal), computed for all groups in one sparse operation."""
    if not groups:
        return []
    upper = {n: np.triu_indices(n, 1) for n in {len(g) for g in groups}}
    left = np.concatenate([np.asarray(g)[upper[len(g)][0]] for g in groups])
    right = np.concatenate([np.asarray(g)[upper[len(g)][1]] for g in groups])
    values = _pair_cosines(matrix, left, right)
    out: list[npt.NDArray[np.float64]] = []
    at = 0
    for g in groups:
        n = len(g)
        a, b = upper[n]
        sim = np.eye(n)
        sim[a, b] = sim[b, a] = values[at : at + len(a)]
        at += len(a)
        out.append(sim)
    return out


def _feature_rows(
    docs: Sequence[StoryDoc],
    df: Mapping[str, int],
    n_docs: int,
    params: StoryParams,
    features: Mapping[str, ArticleFeatures] | FeatureMatrix | None,
) -> FeatureMatrix:
    """Feature rows of ``docs`` in their order: given ones reused, the others computed."""
    if isinstance(features, FeatureMatrix):
        vocabulary, parts = features.vocabulary, [features]
        known = set(features.ids)
    else:
        vocabulary, given = Vocabulary(), [f for f in (features or {}).values()]
        parts = [FeatureMatrix.from_features(given, vocabulary)] if given else []
        known = {f.article_id for f in given}
    rest = [d for d in docs if d.id not in known]
    if rest:
        raws = raw_term_frequencies(rest, params)
        parts.append(featurise_matrix([d.id for d in rest], raws, df, n_docs, params, vocabulary))
    return FeatureMatrix.stack(parts).take([d.id for d in docs])


def _cluster_group(
    members: list[int],
    docs: Sequence[StoryDoc],
    sim: npt.NDArray[np.float64],
    times: Sequence[float],
    mergeable: Sequence[bool],
    must: Collection[tuple[int, int]],
    cannot: Collection[tuple[int, int]],
    best: npt.NDArray[np.float64],
    params: StoryParams,
) -> list[Assignment]:
    """Average-linkage clustering of one group (members sorted by id; ``sim`` their pairwise
    similarities, which this may change)."""
    group_id = docs[members[0]].id
    if len(members) == 1:  # the common case, without the matrix work
        g = members[0]
        reason = "alone" if mergeable[g] else "merge_disabled"
        return [Assignment(group_id, group_id, group_id, True, None, float(best[g]), 0.0,
                           params.threshold, reason)]  # fmt: skip
    local = {g: k for k, g in enumerate(members)}
    stamps = np.array([times[g] for g in members])
    apart = np.abs(stamps[:, None] - stamps[None, :]) > params.window.total_seconds()
    sim[apart] = 0.0  # NaN (undated) compares False: undated articles match any time
    for k, g in enumerate(members):
        if not mergeable[g]:
            sim[k, :] = sim[:, k] = 1.0 - _FORBIDDEN
    for i, j in cannot:
        if i in local and j in local:
            sim[local[i], local[j]] = sim[local[j], local[i]] = 1.0 - _FORBIDDEN
    for i, j in must:
        if i in local and j in local:
            sim[local[i], local[j]] = sim[local[j], local[i]] = 1.0
    labels = _average_linkage(sim, params.threshold)
    clusters: dict[int, list[int]] = {}
    for k, lab in enumerate(labels):
        clusters.setdefault(lab, []).append(k)

    out: list[Assignment] = []
    for ks in clusters.values():
        rep = choose_representative(docs[members[k]] for k in ks)
        if len(ks) == 1:
            k = ks[0]
            reason = "alone" if mergeable[members[k]] else "merge_disabled"
            out.append(Assignment(docs[members[k]].id, rep.id, group_id, True, None,
                                  float(best[members[k]]), 0.0, params.threshold,
                                  reason))  # fmt: skip
            continue
        # Each member's closest other member (ties: the first by id) and mean similarity.
        block = sim[np.ix_(ks, ks)]
        off = ~np.eye(len(ks), dtype=bool)
        others = block[off].reshape(len(ks), len(ks) - 1)
        masked = np.where(off, block, -np.inf)
        tops = np.argmax(masked, axis=1).tolist()
        cohesion = others.mean(axis=1).tolist()
        for r, k in enumerate(ks):
            doc, top = docs[members[k]], ks[tops[r]]
            forced = (min(members[k], members[top]), max(members[k], members[top])) in must
            out.append(
                Assignment(
                    article_id=doc.id,
                    story_id=rep.id,
                    group_id=group_id,
                    is_representative=doc.id == rep.id,
                    linked_to=docs[members[top]].id,
                    score=float(block[r, tops[r]]),
                    cohesion=float(cohesion[r]),
                    threshold=params.threshold,
                    reason="must_link" if forced else "similar",
                )
            )
    return out
