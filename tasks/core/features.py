"""What dedup computes from an article's text, in one pass: its near-duplicate sketch and its
story term frequencies. Pure and picklable, so worker processes can compute it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tasks.core import neardup, stories


@dataclass
class Features:
    """Sketches (row ``i`` is article ``i``) and raw term frequencies by article id."""

    sketches: neardup.Sketches
    raws: dict[str, dict[str, float]]


def article_features(
    ids: Sequence[str],
    titles: Sequence[str],
    texts: Sequence[str],
    near: neardup.NearDupParams,
    params: stories.StoryParams,
) -> Features:
    """Near-duplicate sketches (of the body) and story term frequencies (title and body)."""
    docs = [stories.StoryDoc(i, t, x) for i, t, x in zip(ids, titles, texts, strict=True)]
    return Features(neardup.sketch_texts(texts, near), stories.raw_term_frequencies(docs, params))
