"""What dedup computes from an article's text, in one pass: its near-duplicate sketch and its
story term frequencies. Pure and picklable, so worker processes can compute it; also the
initializer of those processes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from tasks.core import neardup, terms


class _Doc(NamedTuple):
    id: str
    title: str
    text: str


@dataclass
class Features:
    """Sketches (row ``i`` is article ``i``) and raw term frequencies by article id."""

    sketches: neardup.Sketches
    raws: dict[str, terms.RawTerms]


def article_features(
    ids: Sequence[str],
    titles: Sequence[str],
    texts: Sequence[str],
    near: neardup.NearDupParams,
    params: terms.TermParams,
    sketch: Sequence[bool] | None = None,
) -> Features:
    """Near-duplicate sketches (of the body) and story term frequencies (title and body).

    ``sketch[i]`` false leaves row ``i``'s sketch empty (an exact copy is represented by its
    original and needs none)."""
    docs = [_Doc(i, t, x) for i, t, x in zip(ids, titles, texts, strict=True)]
    want = [k for k in range(len(texts)) if sketch is None or sketch[k]]
    sk = neardup.sketch_texts([texts[k] for k in want], near)
    values = np.zeros((len(texts), near.num_bins), dtype=np.uint32)
    n_shingles = np.zeros(len(texts), dtype=np.int64)
    values[want], n_shingles[want] = sk.values, sk.n_shingles
    return Features(neardup.Sketches(values, n_shingles), terms.raw_term_frequencies(docs, params))


def lower_priority() -> None:
    """The initializer of dedup's feature workers, which yield to the writer. It is the run's
    critical path: with two workers on two cores at equal priority it got two thirds of a core
    while they ran, and they then sat idle a batch ahead (100k articles: 57 s at equal
    priority, 50 s so). Here, not in :mod:`tasks.dedup`: a worker imports the module of its
    initializer, and that one's imports (DuckDB, pyarrow, scipy) cost each worker 0.2 s."""
    if hasattr(os, "nice"):
        os.nice(10)
