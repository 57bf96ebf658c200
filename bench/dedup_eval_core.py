"""Evaluate the pure dedup core (tasks.core.neardup, tasks.core.stories) on ../shared/dedup.

Prints one JSON object. Nothing here touches DuckDB; ``bench/dedup_eval.py`` does the same through
the pipeline and reuses the metrics and data helpers below.

Usage::

    python bench/dedup_eval_core.py [--data ../shared/dedup] [--seeds ../shared/seeds]
                                    [--scale 10000,100000]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import resource
import time
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from itertools import combinations
from pathlib import Path
from typing import Any

from tasks.core import neardup, stories

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "dedup"
DEFAULT_SEEDS = HERE.parent.parent / "shared" / "seeds"


# --- metrics ---------------------------------------------------------------------------------


def _pairs(labels: Mapping[str, Hashable]) -> set[tuple[str, str]]:
    by: dict[Hashable, list[str]] = {}
    for doc_id, lab in labels.items():
        by.setdefault(lab, []).append(doc_id)
    return {(a, b) for ids in by.values() for a, b in combinations(sorted(ids), 2)}


def pairwise_prf(pred: Mapping[str, Hashable], gold: Mapping[str, Hashable]) -> dict[str, float]:
    """Pairwise precision, recall and F1 of a clustering (labels per id; ids of ``gold`` only)."""
    ids = set(gold)
    p = _pairs({i: lab for i, lab in pred.items() if i in ids})
    g = _pairs(gold)
    tp = len(p & g)
    prec = tp / len(p) if p else 1.0
    rec = tp / len(g) if g else 1.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"precision": prec, "recall": rec, "f1": f1, "pred_pairs": len(p), "gold_pairs": len(g)}


def bcubed_f1(pred: Mapping[str, Hashable], gold: Mapping[str, Hashable]) -> dict[str, float]:
    """B-cubed precision, recall and F1 (Bagga and Baldwin 1998) over the ids of ``gold``."""
    ids = sorted(gold)
    pc: dict[Hashable, set[str]] = {}
    gc: dict[Hashable, set[str]] = {}
    for i in ids:
        pc.setdefault(pred[i], set()).add(i)
        gc.setdefault(gold[i], set()).add(i)
    prec = rec = 0.0
    for i in ids:
        both = len(pc[pred[i]] & gc[gold[i]])
        prec += both / len(pc[pred[i]])
        rec += both / len(gc[gold[i]])
    prec, rec = prec / len(ids), rec / len(ids)
    return {"precision": prec, "recall": rec, "f1": 2 * prec * rec / (prec + rec)}


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties count one half)."""
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    n_pos = sum(labels)
    n_neg = len(labels) - n_pos
    if not n_pos or not n_neg:
        return float("nan")
    r_pos = sum(r for r, y in zip(ranks, labels, strict=True) if y)
    return (r_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def binary_prf(pred: Sequence[bool], gold: Sequence[bool]) -> dict[str, float]:
    """Precision, recall and F1 of binary decisions."""
    tp = sum(p and g for p, g in zip(pred, gold, strict=True))
    n_pred, n_gold = sum(pred), sum(gold)
    prec = tp / n_pred if n_pred else 1.0
    rec = tp / n_gold if n_gold else 1.0
    return {"precision": prec, "recall": rec, "f1": 2 * prec * rec / (prec + rec) if tp else 0.0}


# --- data ------------------------------------------------------------------------------------


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file."""
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def ecb_docs(rows: Iterable[Mapping[str, Any]]) -> list[stories.StoryDoc]:
    """ECB+ rows as story documents (undated, like the data)."""
    return [
        stories.StoryDoc(id=r["id"], title=r["title"] or "", text=r["text"] or "") for r in rows
    ]


def read_seed(path: Path) -> stories.StoryDoc:
    """A seed file: first line is the headline, the rest the body."""
    title, _, body = path.read_text(encoding="utf-8").strip().partition("\n")
    return stories.StoryDoc(id="seed:" + path.stem, title=title.strip(), text=body.strip())


def split_title(text: str) -> tuple[str, str]:
    """SemEval texts: headline up to the first newline, when it comes early."""
    head, sep, rest = text.partition("\n")
    return (head, rest) if sep and len(head) <= 300 else ("", text)


def document_frequencies(
    docs: Iterable[stories.StoryDoc], params: stories.StoryParams
) -> tuple[Counter[str], int]:
    """DF counts and N over ``docs``, as the pipeline's DF table would hold them."""
    df: Counter[str] = Counter()
    n = 0
    for d in docs:
        df.update(stories.document_terms(d.title, d.text, params))
        n += 1
    return df, n


_BOILER_HEAD = ["(Wire) -", "NEW YORK (Newswire) -", "By Staff Reporter |", "LONDON, (Agency) --"]
_BOILER_TAIL = [
    "Copyright 2024 Example Wire. All rights reserved. This material may not be published.",
    "Reporting by our correspondents; editing by the desk. Follow us for more updates.",
    "Sign up for our newsletter to get the top stories delivered to your inbox every morning.",
]
_HEADLINE_WORDS = "update latest live report news what we know developing breaking story".split()


def wire_copy(doc: stories.StoryDoc, rng: random.Random) -> stories.StoryDoc:
    """A syndicated copy: new headline, boilerplate before and after, last ~25% of sentences cut."""
    sentences = re.split(r"(?<=[.!?])\s+", doc.text.strip())
    keep = max(1, round(len(sentences) * rng.uniform(0.7, 0.85)))
    body = " ".join(sentences[:keep])
    head = " ".join(rng.sample(_HEADLINE_WORDS, 4)).capitalize()
    text = f"{rng.choice(_BOILER_HEAD)} {body}\n{rng.choice(_BOILER_TAIL)}"
    return stories.StoryDoc(id=doc.id + ":wire", title=head, text=text)


# --- incremental reference driver (what the pipeline does with SQL) ---------------------------


def _stamp(doc: stories.StoryDoc) -> float:
    t = doc.time
    return t.timestamp() if t is not None else math.nan


@dataclass
class MemoryStore:
    """In-memory stand-in for the warehouse tables the story step needs.

    Keeps per article: the document, its assignment (story, group) and its blocking terms, plus an
    inverted index ``term -> ids``. ``add`` loads neighbours exactly as the pipeline must.
    """

    df: Mapping[str, int]
    n_docs: int
    params: stories.StoryParams = field(default_factory=stories.StoryParams)
    overrides: stories.Overrides = field(default_factory=stories.Overrides)
    docs: dict[str, stories.StoryDoc] = field(default_factory=dict)
    assignments: dict[str, stories.Assignment] = field(default_factory=dict)
    postings: dict[str, list[str]] = field(default_factory=dict)
    stamps: dict[str, float] = field(default_factory=dict)
    prune: bool = False
    groups: dict[str, set[str]] = field(default_factory=dict)

    def add(self, batch: Sequence[stories.StoryDoc]) -> list[stories.Assignment]:
        """Assign a batch, loading neighbours by blocking terms, then whole groups."""
        feats = {
            f.article_id: f for f in stories.featurise(batch, self.df, self.n_docs, self.params)
        }
        terms = {i: f.blocking for i, f in feats.items()}
        # Candidates: stored articles sharing a blocking term and close enough in time. With
        # ``prune`` (batches fed in time order) postings older than the window are dropped; the
        # warehouse filters on time in SQL instead. Extra candidates are harmless.
        window = self.params.window.total_seconds()
        by_term: dict[str, list[float]] = {}
        for d in batch:
            for t in terms[d.id]:
                by_term.setdefault(t, []).append(_stamp(d))
        cand: set[str] = set()
        for t, stamps in by_term.items():
            posting = self.postings.get(t)
            if not posting:
                continue
            if any(math.isnan(x) for x in stamps):
                cand.update(posting)
                continue
            lo, hi = min(stamps) - window, max(stamps) + window
            if self.prune:
                posting[:] = [i for i in posting if not self.stamps[i] < lo]
            cand.update(i for i in posting if not (self.stamps[i] < lo or self.stamps[i] > hi))
        for a, b in self.overrides.must_link:
            for x, y in ((a, b), (b, a)):
                if x in terms and y in self.docs:
                    cand.add(y)
        group_ids = {self.assignments[c].group_id for c in cand}
        neighbours = [
            replace(self.docs[i], story_id=self.assignments[i].story_id, group_id=g)
            for g in sorted(group_ids)
            for i in sorted(self.groups[g])
        ]
        result = stories.assign_stories(
            batch, neighbours, self.df, self.n_docs, self.params, self.overrides, feats
        )
        for d in batch:
            if d.id not in self.docs:
                for t in terms[d.id]:
                    self.postings.setdefault(t, []).append(d.id)
            self.docs[d.id] = d
            self.stamps[d.id] = _stamp(d)
        for asg in result:
            old = self.assignments.get(asg.article_id)
            if old is not None:
                self.groups[old.group_id].discard(asg.article_id)
                if not self.groups[old.group_id]:
                    del self.groups[old.group_id]
            self.assignments[asg.article_id] = asg
            self.groups.setdefault(asg.group_id, set()).add(asg.article_id)
        return result

    def story_of(self) -> dict[str, str]:
        """Current story id per article."""
        return {i: a.story_id for i, a in self.assignments.items()}


# --- evaluations -----------------------------------------------------------------------------


def eval_ecb(rows: list[dict[str, Any]], params: stories.StoryParams) -> dict[str, Any]:
    """Cluster all ECB+ articles at once and score against the gold stories."""
    docs = ecb_docs(rows)
    df, n = document_frequencies(docs, params)
    result = stories.assign_stories(docs, [], df, n, params)
    pred = {a.article_id: a.story_id for a in result}
    gold = {r["id"]: r["story_id"] for r in rows}
    return {
        "pairwise": pairwise_prf(pred, gold),
        "bcubed": bcubed_f1(pred, gold),
        "n_articles": len(docs),
        "n_pred_stories": len(set(pred.values())),
        "n_gold_stories": len(set(gold.values())),
    }


def eval_seeds(
    rows: list[dict[str, Any]], seed_dir: Path, params: stories.StoryParams
) -> dict[str, Any]:
    """Mix the seed articles into ECB+: do they share a story, and does anything else join it?"""
    seeds = [read_seed(p) for p in sorted(seed_dir.glob("*.txt"))]
    docs = ecb_docs(rows) + seeds
    df, n = document_frequencies(docs, params)
    result = {a.article_id: a for a in stories.assign_stories(docs, [], df, n, params)}
    seed_stories = {result[s.id].story_id for s in seeds}
    joined = sorted(
        i for i, a in result.items() if a.story_id in seed_stories and not i.startswith("seed:")
    )
    sim = stories.pair_similarity(seeds[0], seeds[1], df, n, params) if len(seeds) > 1 else None
    return {
        "n_seeds": len(seeds),
        "one_story": len(seed_stories) == 1,
        "similarity": sim,
        "threshold": params.threshold,
        "others_joined": joined,
    }


def eval_wire(
    rows: list[dict[str, Any]],
    nd_params: neardup.NearDupParams,
    params: stories.StoryParams,
    min_words: int = 50,
) -> dict[str, Any]:
    """Near-duplicate recall on home-made wire copies, and cross-story false links."""
    rng = random.Random(7)
    docs = ecb_docs(rows)
    story = {r["id"]: r["story_id"] for r in rows}
    originals = [d for d in docs if len(d.text.split()) >= min_words]
    copies = [wire_copy(d, rng) for d in originals]
    for c in copies:
        story[c.id] = story[c.id.removesuffix(":wire")]
    all_docs = docs + copies
    sigs = dict(
        zip(
            [d.id for d in all_docs],
            neardup.compute_signatures((d.title + "\n" + d.text for d in all_docs), nd_params),
            strict=True,
        )
    )
    pairs = neardup.find_near_duplicates(sigs, nd_params)
    found = {(p.a, p.b) for p in pairs}
    hit = sum((o.id, o.id + ":wire") in found for o in originals)
    cross = [(p.a, p.b) for p in pairs if story[p.a] != story[p.b]]
    scores = sorted(
        neardup.similarity(sigs[o.id], sigs[o.id + ":wire"], nd_params) for o in originals
    )
    df, n = document_frequencies(all_docs, params)
    result = {a.article_id: a.story_id for a in stories.assign_stories(all_docs, [], df, n, params)}
    same_story = sum(result[o.id] == result[o.id + ":wire"] for o in originals)
    return {
        "n_copies": len(copies),
        "near_dup_recall": hit / len(copies),
        "near_dup_pairs": len(pairs),
        "cross_story_pairs": len(cross),
        "copy_score_min": scores[0],
        "copy_score_p05": scores[len(scores) // 20],
        "copy_in_original_story": same_story / len(copies),
    }


def eval_semeval(rows: list[dict[str, Any]], params: stories.StoryParams) -> dict[str, Any]:
    """Same-story score of each pair vs the human ``overall`` rating."""
    docs: dict[str, stories.StoryDoc] = {}
    for r in rows:
        for k in ("1", "2"):
            title, text = split_title(r["text" + k])
            docs[r["id" + k]] = stories.StoryDoc(id=r["id" + k], title=title, text=text)
    df, n = document_frequencies(docs.values(), params)
    scores = [stories.pair_similarity(docs[r["id1"]], docs[r["id2"]], df, n, params) for r in rows]
    gold = [bool(r["same_story"]) for r in rows]
    pred = [s >= params.threshold for s in scores]
    return {
        "n_pairs": len(rows),
        "n_same_story": sum(gold),
        "roc_auc_same_story": roc_auc(scores, gold),
        "roc_auc_loose": roc_auc(scores, [bool(r["same_story_loose"]) for r in rows]),
        "spearman_vs_overall": _spearman(scores, [-float(r["overall"]) for r in rows]),
        "at_threshold": {"threshold": params.threshold, **binary_prf(pred, gold)},
    }


def _spearman(x: Sequence[float], y: Sequence[float]) -> float:
    def ranks(v: Sequence[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mx) ** 2 for a in rx) ** 0.5
    vy = sum((b - my) ** 2 for b in ry) ** 0.5
    return float(cov / (vx * vy))


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation of two sequences (ties share their mean rank)."""
    return _spearman(x, y)


def synthetic_corpus(
    rows: list[dict[str, Any]], size: int, seed: int = 1
) -> list[stories.StoryDoc]:
    """Replicate ECB+ to ``size`` articles: each replica of a story gets its own week (stories
    start on different weekdays), its articles spread over two days, 10% of sentences dropped."""
    rng = random.Random(seed)
    base = datetime(2024, 1, 1)
    out: list[stories.StoryDoc] = []
    r = 0
    while len(out) < size:
        for row in rows:
            if len(out) >= size:
                break
            sents = re.split(r"(?<=[.!?])\s+", row["text"] or "")
            kept = [s for s in sents if rng.random() > 0.1] or sents
            story_no = int(re.sub(r"\D", "", row["story_id"].split("_")[0]) or 0)
            day = base + timedelta(days=7 * r + story_no % 7, hours=rng.uniform(0, 48))
            out.append(
                stories.StoryDoc(
                    id=f"r{r:04d}:{row['id']}",
                    title=row["title"] or "",
                    text=" ".join(kept),
                    published=day,
                )
            )
        r += 1
    return out


def eval_scale(
    rows: list[dict[str, Any]],
    size: int,
    nd_params: neardup.NearDupParams,
    params: stories.StoryParams,
    batch: int = 2000,
) -> dict[str, Any]:
    """Time the whole dedup core on ``size`` synthetic articles fed in time-ordered batches."""
    docs = sorted(synthetic_corpus(rows, size), key=lambda d: (d.time, d.id))
    df, n = document_frequencies(docs[: min(len(docs), 20000)], params)
    t0 = time.perf_counter()
    sigs = neardup.compute_signatures((d.title + "\n" + d.text for d in docs), nd_params)
    bands = [neardup.band_keys(s, nd_params) for s in sigs]
    t1 = time.perf_counter()
    store = MemoryStore(df=df, n_docs=n, params=params, prune=True)
    for i in range(0, len(docs), batch):
        store.add(docs[i : i + batch])
    t2 = time.perf_counter()
    n_stories = len(set(store.story_of().values()))
    largest_group = max(len(g) for g in store.groups.values())
    return {
        "articles": len(docs),
        "neardup_seconds": round(t1 - t0, 2),
        "stories_seconds": round(t2 - t1, 2),
        "total_seconds": round(t2 - t0, 2),
        "band_rows": sum(len(b) for b in bands),
        "stories": n_stories,
        "largest_group": largest_group,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    }


def main() -> None:
    """Run every evaluation and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seeds", type=Path, default=DEFAULT_SEEDS)
    parser.add_argument("--scale", default="", help="comma-separated sizes, e.g. 10000,100000")
    args = parser.parse_args()
    params = stories.StoryParams()
    nd_params = neardup.NearDupParams()
    ecb = load_jsonl(args.data / "ecbplus_dev.jsonl")
    report: dict[str, Any] = {
        "story_params": {**params.__dict__, "window": str(params.window)},
        "neardup_params": nd_params.__dict__,
        "ecbplus": eval_ecb(ecb, params),
        "semeval": eval_semeval(load_jsonl(args.data / "semeval2022_en_pairs_dev.jsonl"), params),
        "wire_copies": eval_wire(ecb, nd_params, params),
    }
    if args.seeds.is_dir():
        report["seeds"] = eval_seeds(ecb, args.seeds, params)
    for size in filter(None, args.scale.split(",")):
        report[f"scale_{size}"] = eval_scale(ecb, int(size), nd_params, params)
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
