"""Story terms: an article's text tokenised into raw term frequencies (see
:mod:`tasks.core.stories` for the terms and how clustering weighs them).

Apart from the clustering so that the processes that only tokenise (dedup's feature workers)
import no more than numpy: scipy and pyarrow, which clustering needs, took each worker 0.4 s
of CPU to import, at the end of every run."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np
import numpy.typing as npt


class TermParams(Protocol):
    """What tokenising needs of :class:`tasks.core.stories.StoryParams`."""

    @property
    def lead_words(self) -> int: ...
    @property
    def lead_weight(self) -> float: ...
    @property
    def entity_weight(self) -> float: ...


class TermDoc(Protocol):
    """What tokenising needs of :class:`tasks.core.stories.StoryDoc`."""

    @property
    def id(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def text(self) -> str: ...


_NUM = r"\d+(?:[.,]\d+)*"
_WORD_RE = re.compile(_NUM + r"|[^\W\d_]+(?:['’][^\W\d_]+)*")
# Runs of capitalised words and numbers that do not start a sentence (or the text).
_CAP = r"(?:[A-ZÀ-ÖØ-Þ][^\W_]*(?:['’][^\W_]+)?|" + _NUM + ")"
# The lookahead first: most positions fail on it at once, before the lookbehinds (2.4x faster).
_ENTITY_RE = re.compile(
    r"(?=[A-ZÀ-ÖØ-Þ]|\d)"
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
class Featuriser:
    """Turns articles into raw term frequencies; caches each token's terms within one call."""

    params: TermParams
    word_of: dict[str, str] = field(default_factory=dict)
    """Token -> its word term ("" for a stop word)."""
    entity_of: dict[str, str] = field(default_factory=dict)
    """Token -> its entity term ("" for a stop word)."""

    def raw(self, title: str, text: str) -> dict[str, float]:
        """Raw (lead- and entity-weighted) term frequencies of one article."""
        lw, ew = self.params.lead_weight, self.params.entity_weight
        n_lead = self.params.lead_words
        tf: dict[str, float] = {}
        get = tf.get
        body = _WORD_RE.findall(text)
        zones = ((_WORD_RE.findall(title), lw), (body[:n_lead], lw), (body[n_lead:], 1.0))
        for tokens, weight in zones:
            for word, count in Counter(self._terms(self.word_of, tokens)).items():
                if word:
                    tf[word] = get(word, 0.0) + count * weight
        cut = 0
        if len(body) > n_lead:
            for _, m in zip(range(n_lead), _WORD_RE.finditer(text), strict=False):
                cut = m.end()
        else:
            cut = len(text)
        spans = (("\n" + title, lw * ew), ("\n" + text[:cut], lw * ew), (text[cut:], ew))
        for zone, weight in spans:
            for run in _ENTITY_RE.findall(zone):
                prev = ""
                for key in self._terms(self.entity_of, run.split()):
                    if not key:
                        prev = ""
                        continue
                    tf[key] = get(key, 0.0) + weight
                    if prev:
                        pair = prev + "_" + key[2:]
                        tf[pair] = get(pair, 0.0) + weight
                    prev = key
        return tf

    def _terms(self, cache: dict[str, str], tokens: list[str]) -> list[str]:
        """Each token's term from ``cache`` (word or entity), filling both caches as needed."""
        try:
            return list(map(cache.__getitem__, tokens))
        except KeyError:
            for tok in set(tokens).difference(cache):
                word, low, _, _ = _token_info(tok)
                self.word_of[tok] = word
                self.entity_of[tok] = "e:" + low if word else ""
            return list(map(cache.__getitem__, tokens))


class RawTerms(NamedTuple):
    """One article's raw term frequencies: ``tf[k]`` is the frequency of ``terms[k]``. Packed
    so because dedup keeps a million of them in memory and gets them from worker processes:
    as a dict, one entry took 57 bytes besides its term string, packed 17."""

    terms: tuple[str, ...]
    tf: npt.NDArray[np.float64]

    @staticmethod
    def pack(tf: Mapping[str, float]) -> RawTerms:
        return RawTerms(tuple(tf), np.fromiter(tf.values(), np.float64, len(tf)))


def raw_term_frequencies(docs: Iterable[TermDoc], params: TermParams) -> dict[str, RawTerms]:
    """Each article's raw (lead- and entity-weighted) term frequencies, by id: the one
    tokenising pass; their terms are those whose document frequency the caller looks up."""
    featuriser = _featuriser(params)
    return {d.id: RawTerms.pack(featuriser.raw(d.title, d.text)) for d in docs}


_FEATURISERS: dict[tuple[int, float, float], Featuriser] = {}


def _featuriser(params: TermParams) -> Featuriser:
    """This process's featuriser for ``params`` (its token caches are kept, bounded)."""
    key = (params.lead_words, params.lead_weight, params.entity_weight)
    f = _FEATURISERS.get(key)
    if f is None or len(f.word_of) > 500_000:
        f = _FEATURISERS[key] = Featuriser(params)
    return f
