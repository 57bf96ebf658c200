"""Tests for tasks.core.stories: truth table, properties, policies and the seed pair."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.dedup_eval_core import MemoryStore, read_seed
from tasks.core.stories import (
    Overrides,
    StoryDoc,
    StoryParams,
    _average_linkage,
    _pair_cosines,
    assign_stories,
    blocking_terms,
    choose_representative,
    document_terms,
    featurise,
    pair_similarity,
)

T0 = datetime(2024, 3, 5, 8, 0, tzinfo=UTC)
SEEDS = Path(__file__).resolve().parents[3] / "shared" / "seeds"


def _doc(doc_id: str, title: str, text: str, hours: float | None = 0.0, **kw: object) -> StoryDoc:
    published = None if hours is None else T0 + timedelta(hours=hours)
    return StoryDoc(id=doc_id, title=title, text=text, published=published, **kw)  # type: ignore[arg-type]


QUAKE_LIMA = _doc(
    "a1",
    "Magnitude 6.1 earthquake shakes Lima",
    "A magnitude 6.1 earthquake struck near Lima, Peru, on Tuesday morning, the Geophysical "
    "Institute of Peru said. The quake was centred 40 km south of Callao at a depth of 30 km. "
    "Buildings swayed in Miraflores and residents ran into the streets. President Dina Boluarte "
    "said there were no immediate reports of deaths.",
)
QUAKE_LIMA_REWORDED = _doc(
    "a2",
    "Strong quake rattles Peru's capital",
    "Residents of Lima fled their homes on Tuesday when a 6.1-magnitude quake hit off the coast "
    "of Callao, according to Peru's Geophysical Institute. Dina Boluarte told reporters that no "
    "deaths had been reported so far, while firefighters checked damaged walls in Miraflores.",
    hours=3,
)
QUAKE_LIMA_WIRE = _doc(
    "a3",
    "UPDATE 1-Quake in Peru",
    "LIMA (Wire) - A magnitude 6.1 earthquake struck near Lima, Peru, on Tuesday morning, the "
    "Geophysical Institute of Peru said. The quake was centred 40 km south of Callao at a depth "
    "of 30 km. Buildings swayed in Miraflores and residents ran into the streets. Reporting by "
    "the Lima newsroom.",
    hours=1,
)
QUAKE_LIMA_NEXT_DAY = _doc(
    "a4",
    "Lima earthquake: Boluarte visits damaged Callao homes",
    "A day after the magnitude 6.1 earthquake near Lima, President Dina Boluarte toured "
    "damaged homes in Callao and Miraflores on Wednesday. Peru's Geophysical Institute recorded "
    "dozens of aftershocks south of Callao.",
    hours=28,
)
QUAKE_JAPAN = _doc(
    "b1",
    "Magnitude 7.4 earthquake hits Fukushima",
    "A magnitude 7.4 earthquake struck off Fukushima, Japan, late on Wednesday, the Japan "
    "Meteorological Agency said, triggering a tsunami warning for Miyagi. Prime Minister Fumio "
    "Kishida said the government was checking for damage at nuclear plants operated by Tepco.",
    hours=30,
)
FOOTBALL = _doc(
    "c1",
    "Arsenal beat Chelsea in London derby",
    "Bukayo Saka scored twice as Arsenal beat Chelsea 3-1 at the Emirates Stadium on Tuesday "
    "night. Mikel Arteta praised his side's pressing, while Mauricio Pochettino said Chelsea "
    "lacked intensity after the break.",
    hours=12,
)
ELECTION = _doc(
    "d1",
    "Portugal votes in snap election",
    "Voters in Portugal went to the polls on Sunday in a snap parliamentary election called "
    "after Prime Minister Antonio Costa resigned. Luis Montenegro's Democratic Alliance led in "
    "polls in Lisbon and Porto.",
    hours=5,
)
FILLER = [
    _doc(f"z{i}", title, text, hours=None)
    for i, (title, text) in enumerate(
        [
            (
                "Central bank holds rates",
                "The central bank kept interest rates unchanged on "
                "Thursday, citing sticky inflation and a slowing labour market.",
            ),
            (
                "Storm cuts power to thousands",
                "Heavy winds left thousands of homes without power "
                "on Monday as the storm moved north, officials said.",
            ),
            (
                "New museum opens",
                "The museum opened its doors on Saturday with an exhibition of "
                "modern art, drawing long queues in the rain.",
            ),
            (
                "Tech firm cuts jobs",
                "The company said on Wednesday it would cut 5 percent of its "
                "staff as demand for its devices slowed.",
            ),
            (
                "Train strike disrupts travel",
                "Commuters faced delays on Friday as rail workers "
                "walked out over pay, the union said.",
            ),
            (
                "Earthquake drill held in schools",
                "Pupils took part in an earthquake drill on "
                "Monday, practising how to shelter under desks when a quake strikes.",
            ),
        ]
    )
]
ARTICLES = [
    QUAKE_LIMA,
    QUAKE_LIMA_REWORDED,
    QUAKE_LIMA_WIRE,
    QUAKE_LIMA_NEXT_DAY,
    QUAKE_JAPAN,
    FOOTBALL,
    ELECTION,
]
CORPUS = ARTICLES + FILLER


def _df(docs: list[StoryDoc]) -> tuple[Counter[str], int]:
    df: Counter[str] = Counter()
    for d in docs:
        df.update(document_terms(d.title, d.text))
    return df, len(docs)


DF, N = _df(CORPUS)


def _stories(docs: list[StoryDoc], **kw: object) -> dict[str, str]:
    return {a.article_id: a.story_id for a in assign_stories(docs, [], DF, N, **kw)}  # type: ignore[arg-type]


def _partition(story_of: dict[str, str]) -> set[frozenset[str]]:
    by: dict[str, set[str]] = {}
    for doc_id, story in story_of.items():
        by.setdefault(story, set()).add(doc_id)
    return {frozenset(v) for v in by.values()}


TRUTH_TABLE = [
    ("a1", "a3", True, "wire copy"),
    ("a1", "a2", True, "same story, different wording"),
    ("a1", "a4", False, "next-day follow-up: a new event, outside the 24 h window"),
    ("a1", "b1", False, "same topic, different event"),
    ("a1", "c1", False, "unrelated"),
    ("b1", "c1", False, "unrelated"),
    ("d1", "c1", False, "unrelated"),
]


@pytest.mark.parametrize(("a", "b", "same", "case"), TRUTH_TABLE, ids=[c[3] for c in TRUTH_TABLE])
def test_truth_table(a: str, b: str, same: bool, case: str) -> None:
    story = _stories(CORPUS)
    assert (story[a] == story[b]) is same, case


def test_story_id_is_earliest_member_and_links_are_explained() -> None:
    result = {a.article_id: a for a in assign_stories(CORPUS, [], DF, N)}
    assert {result[i].story_id for i in ("a1", "a2", "a3")} == {"a1"}
    assert result["a4"].story_id == "a4"  # the next-day follow-up is a story of its own
    assert result["a1"].is_representative
    for i in ("a2", "a3"):
        a = result[i]
        assert a.reason == "similar"
        assert a.linked_to in {"a1", "a2", "a3"} - {i}
        assert a.score >= a.threshold == StoryParams().threshold
        assert a.cohesion >= a.threshold
    assert result["c1"].linked_to is None
    assert result["c1"].reason == "alone"


def test_pinned_terms_and_similarity() -> None:
    terms = document_terms("Arsenal beat Chelsea", "Saka scored twice at the Emirates Stadium.")
    assert sorted(terms) == [
        "e:chelsea",
        "e:emirates",
        "e:emirates_stadium",
        "e:stadium",
        "w:arsenal",
        "w:beat",
        "w:chelsea",
        "w:emirate",
        "w:saka",
        "w:scored",
        "w:stadium",
        "w:twice",
    ]
    assert pair_similarity(QUAKE_LIMA, QUAKE_LIMA_WIRE, DF, N, StoryParams()) == pytest.approx(
        0.75595, abs=1e-4
    )


def test_featurise_gives_blocking_terms_and_df_terms() -> None:
    (feat,) = featurise([QUAKE_LIMA], DF, N, StoryParams())
    assert feat.terms == document_terms(QUAKE_LIMA.title, QUAKE_LIMA.text)
    assert len(feat.blocking) == StoryParams().blocking_size
    assert set(feat.blocking) <= feat.terms
    assert {"e:lima", "e:peru", "e:6.1"} <= set(feat.blocking)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.sampled_from(["lima", "Peru", "quake", "Rescue", "aid", "storm", "Lima"]),
                 max_size=30),
        min_size=1, max_size=8,
    ),
    st.integers(0, 6),
)  # fmt: skip
def test_blocking_terms_of_a_batch_are_each_articles_heaviest(words, k) -> None:
    # The batch computes every article's blocking terms in one sort; each must equal the
    # heaviest terms of that article's own weights (ties by term), as stored for lookups.
    docs = [StoryDoc(f"a{i}", "", " ".join(w)) for i, w in enumerate(words)]
    params = replace(StoryParams(), blocking_size=k)
    feats = featurise(docs, {"lima": 3, "aid": 9}, 20, params)
    for f in feats:
        assert list(f.blocking) == blocking_terms(f.weights, params)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 40))
def test_pair_similarities_computed_in_steps_are_those_computed_at_once(seed, entries) -> None:
    # Pair similarities are computed a bounded number of stored entries at a time, so that
    # memory does not grow with the pairs: a step boundary must neither drop nor shift a pair.
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    matrix = sp.random(12, 30, density=0.3, format="csr", random_state=rng)
    left, right = rng.integers(0, 12, size=(2, int(rng.integers(0, 50))))
    at_once = (matrix[left].toarray() * matrix[right].toarray()).sum(axis=1)
    assert np.allclose(_pair_cosines(matrix, left, right, entries), at_once)


def test_time_window() -> None:
    late = replace(QUAKE_LIMA_REWORDED, published=T0 + timedelta(days=10))
    assert _stories([QUAKE_LIMA, late])["a2"] == "a2"
    undated = replace(QUAKE_LIMA_REWORDED, published=None)
    assert _stories([QUAKE_LIMA, undated])["a2"] == "a1"
    fetched = replace(QUAKE_LIMA_REWORDED, published=None, fetched=T0 + timedelta(days=10))
    assert _stories([QUAKE_LIMA, fetched])["a2"] == "a2"


def test_source_policy_disallows_merge() -> None:
    solo = replace(QUAKE_LIMA_REWORDED, allow_story_merge=False)
    result = {
        a.article_id: a for a in assign_stories([QUAKE_LIMA, solo, QUAKE_LIMA_WIRE], [], DF, N)
    }
    assert result["a2"].story_id == "a2"
    assert result["a2"].reason == "merge_disabled"
    assert result["a3"].story_id == "a1"


def test_overrides() -> None:
    cannot = Overrides(cannot_link=frozenset({("a3", "a1")}))
    story = _stories([QUAKE_LIMA, QUAKE_LIMA_WIRE], overrides=cannot)
    assert story["a1"] != story["a3"]
    must = Overrides(must_link=frozenset({("c1", "d1")}))
    result = {
        a.article_id: a for a in assign_stories([FOOTBALL, ELECTION], [], DF, N, overrides=must)
    }
    assert result["c1"].story_id == result["d1"].story_id
    assert result["d1"].reason == "must_link"


def test_representative_order() -> None:
    early = _doc("zz", "t", "x", hours=-1)
    tie_a = _doc("b", "t", "x", hours=0, source_priority=1)
    tie_b = _doc("c", "t", "x", hours=0, source_priority=0)
    undated = _doc("a", "t", "x", hours=None)
    assert choose_representative([tie_a, tie_b, undated, early]).id == "zz"
    assert choose_representative([tie_a, tie_b, undated]).id == "c"
    assert choose_representative([undated, replace(tie_a, source_priority=0)]).id == "b"


def test_average_linkage_does_not_chain() -> None:
    n = 6
    sim = np.eye(n)
    for i in range(n - 1):
        sim[i, i + 1] = sim[i + 1, i] = 0.4
    labels = _average_linkage(sim, 0.215)
    assert labels[0] != labels[-1]
    assert len(set(labels)) > 1


def test_empty_input_and_empty_text() -> None:
    assert assign_stories([], [], DF, N) == []
    (a,) = assign_stories([_doc("e", "", "")], [], DF, N)
    assert a.story_id == "e"


# --- properties ------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(st.permutations(CORPUS))
def test_order_independent(docs: list[StoryDoc]) -> None:
    assert _stories(list(docs)) == _stories(CORPUS)


@settings(max_examples=40, deadline=None)
@given(
    st.permutations(CORPUS),
    st.lists(st.integers(min_value=1, max_value=len(CORPUS) - 1), max_size=5),
)
def test_batch_split_independent(docs: list[StoryDoc], cuts: list[int]) -> None:
    store = MemoryStore(df=DF, n_docs=N)
    bounds = [0, *sorted(set(cuts)), len(docs)]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        store.add(list(docs[lo:hi]))
    assert store.story_of() == _stories(CORPUS)
    groups = {a.article_id: a.group_id for a in assign_stories(CORPUS, [], DF, N)}
    assert {i: a.group_id for i, a in store.assignments.items()} == groups


@settings(max_examples=20, deadline=None)
@given(st.sets(st.sampled_from(CORPUS), min_size=1))
def test_idempotent(docs: set[StoryDoc]) -> None:
    batch = sorted(docs, key=lambda d: d.id)
    store = MemoryStore(df=DF, n_docs=N)
    store.add(batch)
    before = dict(store.assignments)
    store.add(batch)
    assert store.assignments == before
    again = assign_stories([], list(store.docs.values()), DF, N)
    assert {a.article_id: a for a in again} == before


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(CORPUS))
def test_self_similarity_is_one(doc: StoryDoc) -> None:
    assert pair_similarity(doc, doc, DF, N, StoryParams()) == pytest.approx(1.0)


# --- seeds -----------------------------------------------------------------------------------


@pytest.mark.skipif(not SEEDS.is_dir(), reason="../shared/seeds not present")
def test_seed_articles_share_a_story() -> None:
    seeds = [read_seed(p) for p in sorted(SEEDS.glob("*.txt"))]
    assert len(seeds) == 2
    df, n = _df(seeds + CORPUS)
    result = {a.article_id: a.story_id for a in assign_stories(seeds + CORPUS, [], df, n)}
    assert result[seeds[0].id] == result[seeds[1].id]
    assert sum(s == result[seeds[0].id] for s in result.values()) == 2
