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

import heapq
import math
import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

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
    "featurise_raw",
    "pair_similarity",
    "raw_term_frequencies",
    "term_weights",
]

_NUM = r"\d+(?:[.,]\d+)*"
_WORD_RE = re.compile(_NUM + r"|[^\W\d_]+(?:['’][^\W\d_]+)*")
# Runs of capitalised words and numbers that do not start a sentence (or the text).
_CAP = r"(?:[A-ZÀ-ÖØ-Þ][^\W_]*(?:['’][^\W_]+)?|" + _NUM + ")"
_ENTITY_RE = re.compile(
    r"(?:(?<![.!?:;\n]\s)(?<![.!?:;\n])\b" + _CAP + r"|\b" + _NUM + r")(?:[ \t]+" + _CAP + ")*"
)
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


_Info = tuple[str, str, bool, bool]  # (word term or "" for a stop word, lower, is_num, is_cap)
_STOP_INFO: _Info = ("", "", False, False)


def _token_info(tok: str) -> _Info:
    low = tok.lower()
    if low.endswith(("'s", "’s")):
        low = low[:-2]
    is_num = low[:1].isdigit()
    if low in _STOP_WORDS or (len(low) < 2 and not is_num):
        return _STOP_INFO
    word = low
    if not is_num and len(word) > 3 and word[-1] == "s" and word[-2] != "s":
        word = word[:-1]
    return ("w:" + word, low, is_num, tok[0].isupper())


@dataclass
class _Featuriser:
    """Turns articles into weighted terms; caches per token and per term within one call."""

    params: StoryParams
    df: Mapping[str, int]
    n_docs: int
    infos: dict[str, _Info] = field(default_factory=dict)
    idfs: dict[str, float] = field(default_factory=dict)

    def raw(self, title: str, text: str) -> dict[str, float]:
        """Raw (lead- and entity-weighted) term frequencies of one article."""
        lw, ew = self.params.lead_weight, self.params.entity_weight
        n_lead = self.params.lead_words
        tf: dict[str, float] = {}
        body = _WORD_RE.findall(text)
        self._add_words(tf, _WORD_RE.findall(title), lw)
        self._add_words(tf, body[:n_lead], lw)
        self._add_words(tf, body[n_lead:], 1.0)
        cut = 0
        if len(body) > n_lead:
            for _, m in zip(range(n_lead), _WORD_RE.finditer(text), strict=False):
                cut = m.end()
        else:
            cut = len(text)
        self._add_entities(tf, "\n" + title, lw * ew)
        self._add_entities(tf, "\n" + text[:cut], lw * ew)
        self._add_entities(tf, text[cut:], ew)
        return tf

    def _info(self, tok: str) -> _Info:
        info = self.infos.get(tok)
        if info is None:
            info = self.infos[tok] = _token_info(tok)
        return info

    def _add_words(self, tf: dict[str, float], tokens: list[str], weight: float) -> None:
        for tok, count in Counter(tokens).items():
            word = self._info(tok)[0]
            if word:
                tf[word] = tf.get(word, 0.0) + count * weight

    def _add_entities(self, tf: dict[str, float], zone: str, weight: float) -> None:
        for run in _ENTITY_RE.findall(zone):
            prev = ""
            for tok in run.split():
                word, low, _, _ = self._info(tok)
                if not word:
                    prev = ""
                    continue
                key = "e:" + low
                tf[key] = tf.get(key, 0.0) + weight
                if prev:
                    key = "e:" + prev + "_" + low
                    tf[key] = tf.get(key, 0.0) + weight
                prev = low

    def weights(self, title: str, text: str) -> dict[str, float]:
        """L2-normalised TF-IDF weights (empty for an article without terms)."""
        return self.normalise(self.raw(title, text))

    def normalise(self, raw: Mapping[str, float]) -> dict[str, float]:
        """TF-IDF weights from raw term frequencies, L2-normalised."""
        idfs = self.idfs
        vec: dict[str, float] = {}
        for t, c in raw.items():
            idf = idfs.get(t)
            if idf is None:
                base = math.log((self.n_docs + 1) / (self.df.get(t, 0) + 1)) + 1.0
                idf = idfs[t] = base**self.params.idf_power
            vec[t] = (1.0 + math.log(c) if c > 1.0 else c) * idf
        norm = math.sqrt(sum(v * v for v in vec.values()))
        return {t: v / norm for t, v in vec.items()} if norm > 0 else {}


def document_terms(title: str, text: str, params: StoryParams | None = None) -> frozenset[str]:
    """Distinct terms of an article; add 1 to each one's document frequency when storing it."""
    return frozenset(_Featuriser(params or StoryParams(), {}, 0).raw(title, text))


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
    return _Featuriser(params, df, n_docs).weights(doc.title, doc.text)


def blocking_terms(weights: Mapping[str, float], params: StoryParams) -> list[str]:
    """The ``blocking_size`` heaviest terms (ties by term), for an inverted-index table.

    Persist one row ``(article_id, term)`` per returned term; the candidates of a new article are
    the stored articles sharing at least one of its terms (within the time window).
    """
    k = params.blocking_size
    if not weights or k <= 0:
        return []
    cut = heapq.nlargest(k, weights.values())[-1]
    ranked = sorted((-v, t) for t, v in weights.items() if v >= cut)
    return [t for _, t in ranked[:k]]


@dataclass(frozen=True)
class ArticleFeatures:
    """What the pipeline stores for a new article.

    Attributes:
        article_id: The article.
        terms: Distinct terms: add 1 to each one's row in the DF table (and 1 to N).
        blocking: Blocking terms: one ``(article_id, term)`` row each in the inverted index.
        weights: Normalised TF-IDF vector; not stored, but can be handed to
            :func:`assign_stories` so the new articles are not featurised twice.
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
    return featurise_raw(docs, raw_term_frequencies(docs, params), df, n_docs, params)


def raw_term_frequencies(
    docs: Iterable[StoryDoc], params: StoryParams
) -> dict[str, dict[str, float]]:
    """Each article's raw (lead- and entity-weighted) term frequencies, by id: the one
    tokenising pass; its keys are the terms whose document frequency the caller looks up."""
    featuriser = _Featuriser(params, {}, 0)
    return {d.id: featuriser.raw(d.title, d.text) for d in docs}


def featurise_raw(
    docs: Iterable[StoryDoc],
    raws: Mapping[str, Mapping[str, float]],
    df: Mapping[str, int],
    n_docs: int,
    params: StoryParams,
) -> list[ArticleFeatures]:
    """:func:`featurise` from :func:`raw_term_frequencies` (no second tokenising pass)."""
    featuriser = _Featuriser(params, df, n_docs)
    out: list[ArticleFeatures] = []
    for d in docs:
        raw = raws[d.id]
        w = featuriser.normalise(raw)
        out.append(ArticleFeatures(d.id, frozenset(raw), tuple(blocking_terms(w, params)), w))
    return out


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


def _matrix(vectors: Sequence[Mapping[str, float]]) -> sp.csr_matrix:
    vocab: dict[str, int] = {}
    indptr = [0]
    indices: list[int] = []
    data: list[float] = []
    add = vocab.setdefault
    for vec in vectors:
        indices.extend([add(t, len(vocab)) for t in vec])
        data.extend(vec.values())
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
    features: Mapping[str, ArticleFeatures] | None = None,
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
        features: Output of :func:`featurise` by article id, computed with the same ``df``,
            ``n_docs`` and ``params``; articles found here are not featurised again.

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
    featuriser = _Featuriser(params, df, n_docs)
    known = features or {}
    weights = [
        known[d.id].weights if d.id in known else featuriser.weights(d.title, d.text) for d in docs
    ]
    matrix = _matrix(weights)
    must = {(pos[a], pos[b]) for a, b in overrides.pairs("must_link") if a in pos and b in pos}
    cannot = {(pos[a], pos[b]) for a, b in overrides.pairs("cannot_link") if a in pos and b in pos}
    cannot -= must
    mergeable = [d.allow_story_merge for d in docs]
    times = [_epoch(d.time) for d in docs]

    # 1. candidate pairs through the blocking terms, 2. edges, 3. groups.
    term_ids: dict[str, int] = {}
    rows: list[int] = []
    cols: list[int] = []
    for i, w in enumerate(weights):
        if mergeable[i]:
            for t in blocking_terms(w, params):
                rows.append(i)
                cols.append(term_ids.setdefault(t, len(term_ids)))
    shared = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, max(len(term_ids), 1)))
    pairs_coo = sp.triu(shared @ shared.T, k=1).tocoo()
    left = pairs_coo.row.astype(np.int64)
    right = pairs_coo.col.astype(np.int64)
    stamps = np.asarray(times, dtype=np.float64)
    keep = ~(np.abs(stamps[left] - stamps[right]) > params.window.total_seconds())
    left, right = left[keep], right[keep]
    best = np.zeros(n)
    uf = _UnionFind(n)
    if len(left):
        sims = np.asarray(matrix[left].multiply(matrix[right]).sum(axis=1)).ravel()
        np.maximum.at(best, left, sims)
        np.maximum.at(best, right, sims)
        hit = sims >= params.threshold
        for i, j in zip(left[hit].tolist(), right[hit].tolist(), strict=True):
            if (i, j) not in cannot:
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
                    Assignment(
                        doc.id,
                        rep.id,
                        group_id,
                        True,
                        None,
                        float(best[members[k]]),
                        0.0,
                        params.threshold,
                        reason,
                    )
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
