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
Term frequency is sub-linear (``1 + ln tf``) and IDF is ``(ln((N + 1) / (df + 1)) + 1) ** idf_power``
with ``df``/``N`` *passed in*: the pipeline keeps the document frequency of every term returned by
:func:`document_terms` in a table. Similarity is the cosine of the L2-normalised vectors.

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
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

__all__ = [
    "Assignment",
    "Overrides",
    "StoryDoc",
    "StoryParams",
    "assign_stories",
    "blocking_terms",
    "choose_representative",
    "document_terms",
    "pair_similarity",
    "term_weights",
]

_TOKEN_RE = re.compile(r"([.!?:;]\s+|\n\s*)?(\d+(?:[.,]\d+)*|[^\W\d_]+(?:['’][^\W\d_]+)*)")
_STOP_WORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had
    has have having he her here hers herself him himself his how i if in into is it its itself just
    me more most my myself no nor not now of off on once only or other our ours ourselves out over
    own same she should so some such than that the their theirs them themselves then there these
    they this those through to too under until up very was we were what when where which while who
    whom why will with would you your yours yourself yourselves said says say also mr mrs ms one
    two new last told may according year years week day time people""".split()
)
_EPOCH = datetime(1970, 1, 1)
_FORBIDDEN = 1e6  # distance for pairs that must never merge; dominates any average


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

    threshold: float = 0.22
    window: timedelta = timedelta(days=3)
    lead_words: int = 60
    lead_weight: float = 2.0
    entity_weight: float = 1.0
    idf_power: float = 1.0
    blocking_size: int = 12


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


def _tokens(text: str) -> Iterable[tuple[str, bool]]:
    """Yield ``(token, starts_sentence)``."""
    first = True
    for boundary, tok in _TOKEN_RE.findall(text):
        yield tok, first or bool(boundary)
        first = False


def _weighted_terms(title: str, text: str, params: StoryParams) -> dict[str, float]:
    """Raw (lead- and entity-weighted) term frequencies of one article."""
    tf: dict[str, float] = {}
    n_body = 0
    for zone, is_title in ((title, True), (text, False)):
        prev: str | None = None
        for tok, starts in _tokens(zone):
            if is_title:
                w = params.lead_weight
            else:
                w = params.lead_weight if n_body < params.lead_words else 1.0
                n_body += 1
            low = tok.lower()
            if low.endswith(("'s", "’s")):
                low = low[:-2]
            is_num = low[:1].isdigit()
            if low in _STOP_WORDS or (len(low) < 2 and not is_num):
                prev = None
                continue
            word = low
            if not is_num and len(word) > 3 and word[-1] == "s" and word[-2] != "s":
                word = word[:-1]
            key = "w:" + word
            tf[key] = tf.get(key, 0.0) + w
            if is_num or (tok[0].isupper() and not starts):
                we = w * params.entity_weight
                key = "e:" + low
                tf[key] = tf.get(key, 0.0) + we
                if prev is not None:
                    key = "e:" + prev + "_" + low
                    tf[key] = tf.get(key, 0.0) + we
                prev = low
            else:
                prev = None
    return tf


def document_terms(title: str, text: str, params: StoryParams | None = None) -> frozenset[str]:
    """Distinct terms of an article; add 1 to each one's document frequency when storing it."""
    return frozenset(_weighted_terms(title, text, params or StoryParams()))


def _idf(df: int, n_docs: int, power: float) -> float:
    return float((math.log((n_docs + 1) / (df + 1)) + 1.0) ** power)


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
    raw = _weighted_terms(doc.title, doc.text, params)
    vec = {
        t: (1.0 + math.log(c)) * _idf(df.get(t, 0), n_docs, params.idf_power)
        for t, c in raw.items()
        if c >= 1.0
    }
    norm = math.sqrt(sum(v * v for v in vec.values()))
    return {t: v / norm for t, v in vec.items()} if norm > 0 else {}


def blocking_terms(weights: Mapping[str, float], params: StoryParams) -> list[str]:
    """The ``blocking_size`` heaviest terms (ties by term), for an inverted-index table.

    Persist one row ``(article_id, term)`` per returned term; the candidates of a new article are
    the stored articles sharing at least one of its terms (within the time window).
    """
    ranked = sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))
    return [t for t, _ in ranked[: params.blocking_size]]


def pair_similarity(
    a: StoryDoc, b: StoryDoc, df: Mapping[str, int], n_docs: int, params: StoryParams
) -> float:
    """Cosine similarity of two articles' TF-IDF vectors (the same-story score)."""
    wa = term_weights(a, df, n_docs, params)
    wb = term_weights(b, df, n_docs, params)
    if len(wb) < len(wa):
        wa, wb = wb, wa
    return sum(v * wb.get(t, 0.0) for t, v in wa.items())


def _rep_key(doc: StoryDoc) -> tuple[int, datetime, int, str]:
    t = doc.time
    if t is None:
        return (1, datetime.min, doc.source_priority, doc.id)
    return (0, t.replace(tzinfo=None) - (t.utcoffset() or timedelta(0)), doc.source_priority, doc.id)


def choose_representative(docs: Iterable[StoryDoc]) -> StoryDoc:
    """Canonical article: earliest time (undated last), then lowest source priority, then id."""
    return min(docs, key=_rep_key)


def _epoch(t: datetime | None) -> float:
    """Seconds since the epoch (naive times are taken as UTC); NaN when undated."""
    if t is None:
        return math.nan
    return (t.replace(tzinfo=None) - (t.utcoffset() or timedelta(0)) - _EPOCH).total_seconds()


def _within_window(a: float, b: float, window: timedelta) -> bool:
    return not abs(a - b) > window.total_seconds()


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


def _matrix(vectors: Sequence[Mapping[str, float]]) -> sp.csr_matrix:
    vocab: dict[str, int] = {}
    indptr = [0]
    indices: list[int] = []
    data: list[float] = []
    for vec in vectors:
        for t, v in vec.items():
            indices.append(vocab.setdefault(t, len(vocab)))
            data.append(v)
        indptr.append(len(indices))
    return sp.csr_matrix(
        (np.asarray(data), np.asarray(indices, dtype=np.int64), np.asarray(indptr)),
        shape=(len(vectors), max(len(vocab), 1)),
    )


def _average_linkage(sim: npt.NDArray[np.float64], threshold: float) -> list[int]:
    """Flat average-linkage clusters cut at ``threshold`` (labels in first-seen order)."""
    n = len(sim)
    if n == 1:
        return [0]
    dist = 1.0 - sim
    np.fill_diagonal(dist, 0.0)
    dist = np.clip(dist, 0.0, None)
    tree = linkage(squareform(dist, checks=False), method="average")
    raw = fcluster(tree, t=1.0 - threshold + 1e-12, criterion="distance")
    first: dict[int, int] = {}
    return [first.setdefault(int(c), len(first)) for c in raw]


def assign_stories(
    new_docs: Sequence[StoryDoc],
    neighbours: Sequence[StoryDoc],
    df: Mapping[str, int],
    n_docs: int,
    params: StoryParams | None = None,
    overrides: Overrides | None = None,
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
    weights = [term_weights(d, df, n_docs, params) for d in docs]
    matrix = _matrix(weights)
    must = {(pos[a], pos[b]) for a, b in overrides.pairs("must_link") if a in pos and b in pos}
    cannot = {(pos[a], pos[b]) for a, b in overrides.pairs("cannot_link") if a in pos and b in pos}
    cannot -= must
    mergeable = [d.allow_story_merge for d in docs]
    times = [_epoch(d.time) for d in docs]

    # 1. candidate pairs through the blocking terms, 2. edges, 3. groups.
    postings: dict[str, list[int]] = {}
    for i, w in enumerate(weights):
        if mergeable[i]:
            for t in blocking_terms(w, params):
                postings.setdefault(t, []).append(i)
    cand: set[tuple[int, int]] = set()
    for members in postings.values():
        for k, i in enumerate(members):
            for j in members[k + 1 :]:
                if (i, j) not in cannot and _within_window(times[i], times[j], params.window):
                    cand.add((i, j))
    best = np.zeros(n)
    uf = _UnionFind(n)
    if cand:
        pairs = np.array(sorted(cand), dtype=np.int64)
        sims = np.asarray(matrix[pairs[:, 0]].multiply(matrix[pairs[:, 1]]).sum(axis=1)).ravel()
        np.maximum.at(best, pairs[:, 0], sims)
        np.maximum.at(best, pairs[:, 1], sims)
        for (i, j), s in zip(pairs.tolist(), sims.tolist(), strict=True):
            if s >= params.threshold:
                uf.union(i, j)
    for i, j in must:
        uf.union(i, j)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(uf.find(i), []).append(i)

    out: list[Assignment] = []
    for members in groups.values():
        out.extend(
            _cluster_group(members, docs, matrix, times, mergeable, must, cannot, best, params)
        )
    return sorted(out, key=lambda a: a.article_id)


def _cluster_group(
    members: list[int],
    docs: Sequence[StoryDoc],
    matrix: sp.csr_matrix,
    times: Sequence[float],
    mergeable: Sequence[bool],
    must: Collection[tuple[int, int]],
    cannot: Collection[tuple[int, int]],
    best: npt.NDArray[np.float64],
    params: StoryParams,
) -> list[Assignment]:
    """Average-linkage clustering of one group (members sorted by id)."""
    group_id = docs[members[0]].id
    m = len(members)
    sub = matrix[members]
    sim = np.asarray((sub @ sub.T).todense(), dtype=np.float64)
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
        for k in ks:
            doc = docs[members[k]]
            others = [o for o in ks if o != k]
            if not others:
                reason = "alone" if mergeable[members[k]] else "merge_disabled"
                out.append(
                    Assignment(doc.id, rep.id, group_id, True, None, float(best[members[k]]), 0.0,
                               params.threshold, reason)
                )
                continue
            top = max(others, key=lambda o: (sim[k, o], -o))
            forced = (min(members[k], members[top]), max(members[k], members[top])) in must
            out.append(
                Assignment(
                    article_id=doc.id,
                    story_id=rep.id,
                    group_id=group_id,
                    is_representative=doc.id == rep.id,
                    linked_to=docs[members[top]].id,
                    score=float(sim[k, top]),
                    cohesion=float(np.mean(sim[k, others])),
                    threshold=params.threshold,
                    reason="must_link" if forced else "similar",
                )
            )
    return out
