"""Near-duplicate detection (dedup level 3): wire copies and lightly edited reprints.

Algorithm
---------
1. Normalise: NFKC, lower-case, split into ``\\w+`` words.
2. Shingle: every run of ``shingle_size`` consecutive words. A text shorter than that is one
   shingle. Words are hashed once with BLAKE2b (64 bit, keyed by the seed, so stable across
   processes and Python versions); shingle hashes are a polynomial over the word hashes followed
   by a SplitMix64 finaliser, all in vectorised numpy ``uint64`` arithmetic.
3. Sketch with *one-permutation MinHash* (Li, Owen and Zhang 2012): the top bits of a shingle's
   hash choose one of ``num_bins`` bins, the low 32 bits are its value, and each bin keeps its
   minimum. Empty bins are filled by *rotation densification* (Shrivastava and Li 2014): an empty
   bin borrows the value of the next non-empty bin to its right plus a per-distance offset. The
   probability that two signatures agree in a bin is (close to) the Jaccard similarity of their
   shingle sets, and the cost is O(shingles) per text instead of O(shingles x permutations).
4. LSH banding: the signature is cut into ``num_bins // band_rows`` bands; each band is hashed
   to a signed 64-bit bucket (band index mixed in). Two texts become candidates when they share a
   bucket in the same band; with 32 bands of 4 rows a pair with Jaccard 0.5 is a candidate with
   probability 0.87 and one at 0.6 with probability 0.99.
5. Verify candidates with :func:`estimate_jaccard` or :func:`estimate_containment` (the second
   uses the stored shingle counts, so a copy with a trimmed ending still scores high).

Persisting across runs: store each article's :class:`Signature` (``to_bytes()``: 4 bytes per bin,
plus ``n_shingles``) and one row per band ``(article_id, band, bucket)`` from :func:`band_keys`.
Candidates of a new article are ``SELECT DISTINCT b2.article_id FROM bands b1 JOIN bands b2
USING (band, bucket)``; every value here is deterministic, so rows written by earlier runs stay
valid as long as :class:`NearDupParams` is unchanged.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = [
    "NearDupParams",
    "NearDupPair",
    "Signature",
    "Sketches",
    "band_keys",
    "band_matrix",
    "compute_signature",
    "compute_signatures",
    "connected_groups",
    "estimate_containment",
    "estimate_jaccard",
    "find_near_duplicates",
    "normalise_words",
    "similarity_rows",
    "sketch_texts",
]

_WORD_RE = re.compile(r"\w+")
_MASK32 = np.uint64(0xFFFFFFFF)
_EMPTY = np.uint32(0xFFFFFFFF)
_U64 = npt.NDArray[np.uint64]


@dataclass(frozen=True)
class NearDupParams:
    """Parameters of the near-duplicate sketch. Changing any of them invalidates stored rows.

    Attributes:
        shingle_size: Words per shingle.
        num_bins: Signature length (bins of one-permutation MinHash); a power of two.
        band_rows: Bins per LSH band; ``num_bins`` must be a multiple of it.
        threshold: Minimum estimated similarity to call a pair a near duplicate.
        use_containment: Compare with containment (overlap / smaller set) instead of Jaccard.
        seed: Seed of the word hash; fixed so signatures are stable across runs.
    """

    shingle_size: int = 5
    num_bins: int = 128
    band_rows: int = 4
    threshold: float = 0.5
    use_containment: bool = True
    seed: int = 20240611

    def __post_init__(self) -> None:
        if self.shingle_size < 1:
            raise ValueError("shingle_size must be >= 1")
        if self.num_bins < 2 or self.num_bins & (self.num_bins - 1):
            raise ValueError("num_bins must be a power of two >= 2")
        if self.band_rows < 1 or self.num_bins % self.band_rows:
            raise ValueError("band_rows must divide num_bins")

    @property
    def num_bands(self) -> int:
        """Number of LSH bands."""
        return self.num_bins // self.band_rows


@dataclass(frozen=True)
class Signature:
    """MinHash signature of one text.

    Attributes:
        values: ``num_bins`` unsigned 32-bit minima (``0xFFFFFFFF`` everywhere for an empty text).
        n_shingles: Number of distinct shingles; used for the containment estimate.
    """

    values: tuple[int, ...]
    n_shingles: int

    @property
    def is_empty(self) -> bool:
        """True for a text without words; it never matches anything."""
        return self.n_shingles == 0

    def to_bytes(self) -> bytes:
        """Little-endian uint32 bins, for a BLOB column."""
        return np.asarray(self.values, dtype="<u4").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, n_shingles: int) -> Signature:
        """Inverse of :meth:`to_bytes`."""
        arr = np.frombuffer(data, dtype="<u4")
        return cls(tuple(int(v) for v in arr), n_shingles)


@dataclass(frozen=True)
class NearDupPair:
    """A verified near-duplicate pair, ``a < b``.

    Attributes:
        a: First id.
        b: Second id.
        score: Estimated similarity (containment or Jaccard, per the params).
        threshold: Threshold the score was compared against.
    """

    a: str
    b: str
    score: float
    threshold: float


@dataclass
class _WordHasher:
    """Caches the 64-bit hash of each word."""

    seed: int
    cache: dict[str, int] = field(default_factory=dict)

    def __call__(self, words: Sequence[str]) -> _U64:
        cache = self.cache
        try:
            return np.fromiter(map(cache.__getitem__, words), dtype=np.uint64, count=len(words))
        except KeyError:
            key = self.seed.to_bytes(8, "little")
            for w in set(words).difference(cache):
                digest = hashlib.blake2b(w.encode("utf-8"), digest_size=8, key=key).digest()
                cache[w] = int.from_bytes(digest, "little")
            return np.fromiter(map(cache.__getitem__, words), dtype=np.uint64, count=len(words))


_HASHERS: dict[int, _WordHasher] = {}
_CACHE_LIMIT = 500_000


def _hasher(seed: int) -> _WordHasher:
    """This process's word hasher for ``seed`` (its cache is kept across calls, bounded)."""
    h = _HASHERS.get(seed)
    if h is None or len(h.cache) > _CACHE_LIMIT:
        h = _HASHERS[seed] = _WordHasher(seed)
    return h


def normalise_words(text: str) -> list[str]:
    """Return the NFKC-normalised, lower-cased ``\\w+`` words of ``text``."""
    if not text.isascii():  # NFKC leaves ASCII as it is
        text = unicodedata.normalize("NFKC", text)
    return _WORD_RE.findall(text.lower())


def _mix64(x: _U64) -> _U64:
    """SplitMix64 finaliser, element-wise (wrapping uint64 arithmetic)."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _shingle_hashes(word_hashes: _U64, k: int) -> _U64:
    """Sorted hashes of all k-word shingles (a text shorter than k words is one shingle)."""
    n = len(word_hashes)
    if n == 0:
        return word_hashes
    k = min(k, n)
    acc = np.zeros(n - k + 1, dtype=np.uint64)
    prime = np.uint64(0x100000001B3)
    with np.errstate(over="ignore"):
        for j in range(k):
            acc = acc * prime + word_hashes[j : n - k + 1 + j]
    out = _mix64(acc)
    out.sort()
    return out


def _sketch(shingles: _U64, num_bins: int) -> npt.NDArray[np.uint32]:
    """One-permutation MinHash with rotation densification."""
    sig = np.full(num_bins, _EMPTY, dtype=np.uint32)
    if len(shingles) == 0:
        return sig
    bits = num_bins.bit_length() - 1
    bins = (shingles >> np.uint64(64 - bits)).astype(np.intp)
    vals = (shingles & _MASK32).astype(np.uint32)
    np.minimum.at(sig, bins, vals)
    filled = sig != _EMPTY
    if filled.all():
        return sig
    # Rotation: an empty bin takes the next filled bin to its right (circularly) plus an offset
    # proportional to the distance, so bins filled from different sources rarely collide.
    idx = np.arange(num_bins)
    filled_idx = idx[filled]
    pos = np.searchsorted(filled_idx, idx)
    src = filled_idx[pos % len(filled_idx)]
    dist = (src - idx) % num_bins
    offset = (dist.astype(np.uint64) * np.uint64(0x9E3779B1)) & _MASK32
    dense = (sig[src].astype(np.uint64) + offset) & _MASK32
    return np.where(filled, sig, dense.astype(np.uint32))


@dataclass(frozen=True)
class Sketches:
    """Signatures of many texts as arrays (what the pipeline stores and compares in bulk).

    Attributes:
        values: ``(n, num_bins)`` unsigned 32-bit minima, one row per text.
        n_shingles: Distinct shingles per text (0 for a text without words).
    """

    values: npt.NDArray[np.uint32]
    n_shingles: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.n_shingles)

    def signature(self, i: int) -> Signature:
        """Row ``i`` as a :class:`Signature`."""
        return Signature(tuple(self.values[i].tolist()), int(self.n_shingles[i]))

    @classmethod
    def from_blobs(
        cls, blobs: Sequence[bytes], n_shingles: Sequence[int], num_bins: int
    ) -> Sketches:
        """Rows from stored :meth:`Signature.to_bytes` blobs (one copy, no per-bin objects)."""
        values = np.frombuffer(b"".join(blobs), dtype="<u4").astype(np.uint32)
        return cls(values.reshape(len(blobs), num_bins), np.asarray(n_shingles, dtype=np.int64))


def sketch_texts(texts: Iterable[str], params: NearDupParams) -> Sketches:
    """Sketch many texts at once (word hashes are shared within the call).

    Args:
        texts: Texts to sketch (title and body as the caller sees fit; the same for all).
        params: Sketch parameters.
    """
    hasher = _hasher(params.seed)
    rows: list[npt.NDArray[np.uint32]] = []
    counts: list[int] = []
    for text in texts:
        shingles = _shingle_hashes(hasher(normalise_words(text)), params.shingle_size)
        rows.append(_sketch(shingles, params.num_bins))
        counts.append(int(np.count_nonzero(np.diff(shingles))) + 1 if len(shingles) else 0)
    values = np.vstack(rows) if rows else np.empty((0, params.num_bins), dtype=np.uint32)
    return Sketches(values, np.asarray(counts, dtype=np.int64))


def compute_signatures(texts: Iterable[str], params: NearDupParams) -> list[Signature]:
    """Compute the signatures of many texts (faster than one by one: word hashes are shared).

    Args:
        texts: Texts to sketch (title and body as the caller sees fit; the same for all).
        params: Sketch parameters.

    Returns:
        One :class:`Signature` per text, in input order.
    """
    sk = sketch_texts(texts, params)
    return [sk.signature(i) for i in range(len(sk))]


def compute_signature(text: str, params: NearDupParams) -> Signature:
    """Compute the signature of one text. See :func:`compute_signatures`."""
    return compute_signatures([text], params)[0]


def band_matrix(values: npt.NDArray[np.uint32], params: NearDupParams) -> npt.NDArray[np.int64]:
    """LSH buckets of many signatures: ``(n, num_bands)`` signed 64-bit ints.

    Row ``i`` equals :func:`band_keys` of signature ``i`` (rows of empty texts are meaningless:
    the caller skips texts without shingles).
    """
    n = len(values)
    vals = values.astype(np.uint64).reshape(n, params.num_bands, params.band_rows)
    acc = np.broadcast_to(
        np.arange(params.num_bands, dtype=np.uint64) + np.uint64(params.seed),
        (n, params.num_bands),
    ).copy()
    with np.errstate(over="ignore"):
        for j in range(params.band_rows):
            acc = _mix64(acc * np.uint64(0x100000001B3) + vals[:, :, j])
    return acc.view(np.int64)


def band_keys(sig: Signature, params: NearDupParams) -> list[int]:
    """Return the LSH bucket of each band, as signed 64-bit ints (index = band number).

    The band number is mixed into the bucket, so equal buckets in different bands do not
    collide even if the caller joins on the bucket alone. An empty text has no bands.

    Args:
        sig: Signature from :func:`compute_signatures`.
        params: The parameters the signature was computed with.

    Returns:
        ``params.num_bands`` buckets; persist as rows ``(article_id, band, bucket)``.
    """
    if sig.is_empty:
        return []
    values = np.asarray(sig.values, dtype=np.uint32).reshape(1, -1)
    return [int(v) for v in band_matrix(values, params)[0]]


def similarity_rows(
    a: Sketches,
    ia: npt.NDArray[np.intp],
    b: Sketches,
    ib: npt.NDArray[np.intp],
    params: NearDupParams,
) -> npt.NDArray[np.float64]:
    """Similarity of many pairs at once: ``a[ia[k]]`` with ``b[ib[k]]``, as :func:`similarity`."""
    if len(ia) == 0:
        return np.zeros(0)
    na = a.n_shingles[ia].astype(np.float64)
    nb = b.n_shingles[ib].astype(np.float64)
    j = np.count_nonzero(a.values[ia] == b.values[ib], axis=1) / a.values.shape[1]
    j = np.where((na == 0) | (nb == 0), 0.0, j)
    if not params.use_containment:
        return j
    with np.errstate(divide="ignore", invalid="ignore"):
        inter = j * (na + nb) / (1.0 + j)
        out = np.minimum(1.0, inter / np.minimum(na, nb))
    return np.where(j == 0.0, 0.0, out)


def estimate_jaccard(a: Signature, b: Signature) -> float:
    """Estimated Jaccard similarity of the shingle sets: the fraction of equal bins.

    Returns 1.0 for a signature compared with itself unless it is empty (0.0).
    """
    if a.is_empty or b.is_empty or len(a.values) != len(b.values):
        return 0.0
    va = np.asarray(a.values, dtype=np.uint32)
    vb = np.asarray(b.values, dtype=np.uint32)
    return float(np.count_nonzero(va == vb)) / len(va)


def estimate_containment(a: Signature, b: Signature) -> float:
    """Estimated share of the smaller shingle set that is in the larger one.

    From the Jaccard estimate ``J`` and the set sizes: ``|A & B| = J (|A| + |B|) / (1 + J)``.
    """
    j = estimate_jaccard(a, b)
    if j == 0.0:
        return 0.0
    inter = j * (a.n_shingles + b.n_shingles) / (1.0 + j)
    return min(1.0, inter / min(a.n_shingles, b.n_shingles))


def similarity(a: Signature, b: Signature, params: NearDupParams) -> float:
    """The similarity the params decide on (containment or Jaccard)."""
    return estimate_containment(a, b) if params.use_containment else estimate_jaccard(a, b)


def find_near_duplicates(
    signatures: Mapping[str, Signature],
    params: NearDupParams,
    *,
    blocked: Iterable[str] = (),
) -> list[NearDupPair]:
    """In-memory LSH join: all verified near-duplicate pairs among ``signatures``.

    The pipeline does the same with a SQL self-join on the band table; this is the reference
    implementation used by the tests and the evaluation.

    Args:
        signatures: Signature per article id.
        params: Sketch parameters (threshold included).
        blocked: Ids whose source disallows near-duplicate merging (``allow_near_merge=False``).

    Returns:
        Pairs sorted by ``(a, b)``.
    """
    skip = set(blocked)
    buckets: dict[tuple[int, int], list[str]] = {}
    for doc_id in sorted(signatures):
        if doc_id in skip:
            continue
        for band, key in enumerate(band_keys(signatures[doc_id], params)):
            buckets.setdefault((band, key), []).append(doc_id)
    seen: set[tuple[str, str]] = set()
    out: list[NearDupPair] = []
    for ids in buckets.values():
        for i, a in enumerate(ids):
            for b in ids[i + 1 :]:
                if (a, b) in seen:
                    continue
                seen.add((a, b))
                score = similarity(signatures[a], signatures[b], params)
                if score >= params.threshold:
                    out.append(NearDupPair(a, b, score, params.threshold))
    return sorted(out, key=lambda p: (p.a, p.b))


def connected_groups(pairs: Iterable[tuple[str, str]]) -> list[list[str]]:
    """Connected components of the graph the pairs draw (each sorted; groups by first id)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[str, list[str]] = {}
    for x in sorted(parent):
        groups.setdefault(find(x), []).append(x)
    return sorted(groups.values())
