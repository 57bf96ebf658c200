"""What dedup computes from an article's text, in one pass: its near-duplicate sketch and its
story term frequencies. Pure and picklable, so worker processes can compute it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tasks.core import neardup, stories


@dataclass
class Features:
    """Sketches (row ``i`` is article ``i``) and raw term frequencies by article id."""

    sketches: neardup.Sketches
    raws: dict[str, stories.RawTerms]


def article_features(
    ids: Sequence[str],
    titles: Sequence[str],
    texts: Sequence[str],
    near: neardup.NearDupParams,
    params: stories.StoryParams,
    sketch: Sequence[bool] | None = None,
) -> Features:
    """Near-duplicate sketches (of the body) and story term frequencies (title and body).

    ``sketch[i]`` false leaves row ``i``'s sketch empty (an exact copy is represented by its
    original and needs none)."""
    docs = [stories.StoryDoc(i, t, x) for i, t, x in zip(ids, titles, texts, strict=True)]
    want = [k for k in range(len(texts)) if sketch is None or sketch[k]]
    sk = neardup.sketch_texts([texts[k] for k in want], near)
    values = np.zeros((len(texts), near.num_bins), dtype=np.uint32)
    n_shingles = np.zeros(len(texts), dtype=np.int64)
    values[want], n_shingles[want] = sk.values, sk.n_shingles
    return Features(
        neardup.Sketches(values, n_shingles), stories.raw_term_frequencies(docs, params)
    )
