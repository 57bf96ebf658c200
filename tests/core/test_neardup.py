"""Tests for tasks.core.neardup: truth table, pinned values and properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.core.neardup import (
    NearDupParams,
    Signature,
    band_keys,
    compute_signature,
    compute_signatures,
    estimate_containment,
    estimate_jaccard,
    find_near_duplicates,
    normalise_words,
    similarity,
)

P = NearDupParams()

ORIGINAL = (
    "A magnitude 6.1 earthquake struck near Lima, Peru, on Tuesday morning, the Geophysical "
    "Institute of Peru said. The quake was centred 40 km south of Callao at a depth of 30 km. "
    "Buildings swayed in Miraflores and residents ran into the streets. President Dina Boluarte "
    "said there were no immediate reports of deaths. Firefighters inspected several old houses "
    "in the historic centre, where a wall collapsed onto a parked car. Schools were evacuated as "
    "a precaution and classes will resume on Wednesday, the education ministry said."
)
WIRE_COPY = (
    "UPDATE 1-Quake in Peru\nLIMA (Wire) - A magnitude 6.1 earthquake struck near Lima, Peru, on "
    "Tuesday morning, the Geophysical Institute of Peru said. The quake was centred 40 km south "
    "of Callao at a depth of 30 km. Buildings swayed in Miraflores and residents ran into the "
    "streets. President Dina Boluarte said there were no immediate reports of deaths. "
    "Firefighters inspected several old houses in the historic centre, where a wall collapsed "
    "onto a parked car.\nCopyright 2024 Example Wire. All rights reserved."
)
LIGHT_EDIT = ORIGINAL.replace("Tuesday morning", "Tuesday").replace("ran into", "rushed into")
REWORDED = (
    "Residents of Lima fled their homes on Tuesday when a 6.1-magnitude quake hit off the coast of "
    "Callao, according to Peru's Geophysical Institute. Dina Boluarte told reporters that no "
    "deaths had been reported so far, while firefighters checked damaged walls in Miraflores."
)
OTHER_EVENT = (
    "A magnitude 7.4 earthquake struck off Fukushima, Japan, late on Wednesday, the Japan "
    "Meteorological Agency said, triggering a tsunami warning for Miyagi. Prime Minister Fumio "
    "Kishida said the government was checking for damage at nuclear plants operated by Tepco."
)

TRUTH_TABLE = [
    (ORIGINAL, ORIGINAL, True, "identical"),
    (ORIGINAL, ORIGINAL.upper().replace(".", " ."), True, "case and punctuation only"),
    (ORIGINAL, WIRE_COPY, True, "wire copy: new headline, boilerplate, trimmed ending"),
    (ORIGINAL, LIGHT_EDIT, True, "light edit"),
    (ORIGINAL, REWORDED, False, "same story, different wording"),
    (ORIGINAL, OTHER_EVENT, False, "same topic, different event"),
    (ORIGINAL, "", False, "empty text"),
]


@pytest.mark.parametrize(("a", "b", "dup", "case"), TRUTH_TABLE, ids=[c[3] for c in TRUTH_TABLE])
def test_truth_table(a: str, b: str, dup: bool, case: str) -> None:
    sa, sb = compute_signatures([a, b], P)
    assert (similarity(sa, sb, P) >= P.threshold) is dup, case
    found = find_near_duplicates({"a": sa, "b": sb}, P)
    assert bool(found) is dup, case


def test_pinned_signature() -> None:
    sig = compute_signature(
        "The quick brown fox jumps over the lazy dog near the river bank today.", P
    )
    assert sig.values[:4] == (1128399483, 1820700881, 3461232416, 806796655)
    assert sig.n_shingles == 10
    assert len(sig.values) == P.num_bins
    assert band_keys(sig, P)[:2] == [-3013983495443664567, 1954771110970474909]


def test_normalise_words() -> None:
    assert normalise_words("Ｆｕｌｌwidth, CAFÉ's 6.1-magnitude!") == [
        "fullwidth",
        "café",
        "s",
        "6",
        "1",
        "magnitude",
    ]


def test_empty_and_short_texts() -> None:
    empty = compute_signature("", P)
    assert empty.is_empty
    assert band_keys(empty, P) == []
    assert estimate_jaccard(empty, empty) == 0.0
    short = compute_signature("Breaking news", P)
    assert short.n_shingles == 1
    assert estimate_jaccard(short, compute_signature("breaking NEWS!", P)) == 1.0


def test_band_keys_shape() -> None:
    sig = compute_signature(ORIGINAL, P)
    keys = band_keys(sig, P)
    assert len(keys) == P.num_bands == 32
    assert all(-(2**63) <= k < 2**63 for k in keys)


def test_allow_near_merge_false_is_never_paired() -> None:
    sa, sb = compute_signatures([ORIGINAL, WIRE_COPY], P)
    assert find_near_duplicates({"a": sa, "b": sb}, P, blocked={"b"}) == []


def test_params_validation() -> None:
    with pytest.raises(ValueError):
        NearDupParams(num_bins=100)
    with pytest.raises(ValueError):
        NearDupParams(band_rows=3)
    with pytest.raises(ValueError):
        NearDupParams(shingle_size=0)


texts = st.text(alphabet=st.sampled_from("abcdefg hij KLM.,\n"), min_size=0, max_size=400)
word_lists = st.lists(
    st.sampled_from("the a quake lima peru struck on tuesday km".split()), max_size=80
)


@settings(max_examples=60, deadline=None)
@given(texts)
def test_similarity_with_itself_is_one(text: str) -> None:
    sig = compute_signature(text, P)
    assert estimate_jaccard(sig, sig) == (0.0 if sig.is_empty else 1.0)
    assert estimate_containment(sig, sig) == (0.0 if sig.is_empty else 1.0)


@settings(max_examples=60, deadline=None)
@given(word_lists, word_lists)
def test_symmetric_and_bounded(a: list[str], b: list[str]) -> None:
    sa, sb = compute_signatures([" ".join(a), " ".join(b)], P)
    for f in (estimate_jaccard, estimate_containment):
        assert f(sa, sb) == f(sb, sa)
        assert 0.0 <= f(sa, sb) <= 1.0


@settings(max_examples=40, deadline=None)
@given(texts)
def test_bytes_roundtrip_and_batch_equals_single(text: str) -> None:
    sig = compute_signature(text, P)
    assert Signature.from_bytes(sig.to_bytes(), sig.n_shingles) == sig
    assert compute_signatures(["other text", text], P)[1] == sig


@settings(max_examples=30, deadline=None)
@given(st.permutations([ORIGINAL, WIRE_COPY, LIGHT_EDIT, REWORDED, OTHER_EVENT, ""]))
def test_find_near_duplicates_order_independent(order: list[str]) -> None:
    ids = {
        t: f"id{i}"
        for i, t in enumerate([ORIGINAL, WIRE_COPY, LIGHT_EDIT, REWORDED, OTHER_EVENT, ""])
    }
    sigs = dict(zip([ids[t] for t in order], compute_signatures(order, P), strict=True))
    pairs = find_near_duplicates(sigs, P)
    assert {(p.a, p.b) for p in pairs} == {("id0", "id1"), ("id0", "id2"), ("id1", "id2")}
    again = find_near_duplicates(dict(reversed(list(sigs.items()))), P)
    assert again == pairs


def test_connected_groups_are_components_in_a_stable_order() -> None:
    from tasks.core.neardup import connected_groups

    assert connected_groups([("b", "a"), ("x", "y"), ("c", "b")]) == [["a", "b", "c"], ["x", "y"]]
    assert connected_groups([]) == []
