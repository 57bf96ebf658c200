"""Evaluate dedup (near-duplicates, story clusters) THROUGH THE REAL PIPELINE on ../shared/dedup.

Every evaluation writes its articles as ``.jsonl`` files into a temporary folder (``id, url,
title, text, published, source``; the ``id`` becomes the entry's GUID and the URL is
``https://eval.invalid/<id>``), writes a temporary config with one ``files`` source over that
folder (``fetch_pages = false``, the warehouse in the same temporary folder), runs
``newsflow run --config CFG --json`` in a subprocess from the project root (the Prefect ingest
flow, which ends with ``cluster-stories``), then reads ``entries``, ``story_articles``,
``duplicates``, ``story_df`` and ``story_featured`` back from DuckDB (read-only) and scores them
with the metric helpers of ``bench/dedup_eval_core.py``. Next to each figure, ``core_same_input``
gives the pure core's figure on exactly the same input, so a gap between the two points at the
pipeline.

Evaluations (``--only``, default all four; ``--scale`` adds the slow one):

- ``ecb``: ECB+ dev, pairwise and B-cubed P/R/F1 against the gold stories (one run, the seeds
  mixed in when ``seeds`` is selected too);
- ``seeds``: the seed articles mixed into the ECB+ load: one story, and does anything join it?
- ``wire``: syndicated copies of the ECB+ bodies (the core's generator), loaded with the
  originals in the same run and, separately, in a second run (the incremental path);
- ``semeval``: SemEval-2022 pairs, pipeline decision (same story id) and score (the pipeline's
  ``pair_similarity`` with the warehouse's DF) against the human labels;
- ``--scale 10000,100000``: replicated and perturbed ECB+ (the core's generator) with dates over
  weeks, timed end to end; the dedup seconds come from the ``cluster-stories`` log line.

Prefect runs on a temporary local API (``PREFECT_HOME`` in the temporary folder;
``PREFECT_API_URL`` is removed from the child's environment), so there is no traffic beyond
loopback. Prints one JSON object and writes it to ``bench/out/dedup_eval.json``.

Usage::

    .venv/bin/python bench/dedup_eval.py [--only ecb,seeds,wire,semeval] [--scale 10000,100000]
                                         [--data ../shared/dedup] [--seeds ../shared/seeds]
                                         [--timeout SECONDS] [--keep] [--load-batch N]

``--only ''`` runs no quality evaluation (only ``--scale``); ``--timeout`` stops a run that takes
longer and reports how far it got; ``--keep`` leaves the warehouses and logs in the temporary
folder (its path is in the output).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import duckdb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import dedup_eval_core as core  # noqa: E402
from tasks.core import neardup, stories  # noqa: E402

SHARED = ROOT.parent / "shared"
DEFAULT_DATA = SHARED / "dedup"
DEFAULT_SEEDS = SHARED / "seeds"
OUT = ROOT / "bench" / "out" / "dedup_eval.json"
SOURCE = "eval"
EVALS = ("ecb", "seeds", "wire", "semeval")
EXACT_AND_NEAR = ("near_duplicate", "content_hash")
_CLUSTER_LOG = re.compile(
    r"clustered articles=(\d+) near_duplicates=(\d+) stories_touched=(\d+) seconds=(\{[^}]*\})"
)


# --- writing the input -----------------------------------------------------------------------


def eval_url(eval_id: str) -> str:
    """One distinct URL per eval article, so article identity never merges two of them."""
    return "https://eval.invalid/" + quote(eval_id, safe="")


def record(
    eval_id: str,
    title: str | None,
    text: str | None,
    published: str | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """One JSONL line as the ``files`` source reads it."""
    return {
        "id": eval_id,
        "url": eval_url(eval_id),
        "title": title,
        "text": text,
        "published": published,
        "source": source,
    }


def write_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


def write_config(
    work: Path, data: Path, sections: Mapping[str, Mapping[str, Any]] | None = None
) -> Path:
    """A config with the warehouse in ``work`` and one ``files`` source over ``data``."""
    secs: dict[str, dict[str, Any]] = {"fetch": {"fetch_pages": False}}
    for name, values in (sections or {}).items():
        secs.setdefault(name, {}).update(values)
    lines = ["[warehouse]", f"path = {_toml(work / 'news.duckdb')}", ""]
    for name, values in secs.items():
        lines += [f"[{name}]", *(f"{k} = {_toml(v)}" for k, v in values.items()), ""]
    lines += ["[[sources]]", f'name = "{SOURCE}"', 'kind = "files"', f"path = {_toml(data)}"]
    lines += ['glob = "*.jsonl"', ""]
    cfg = work / "newsflow.toml"
    cfg.write_text("\n".join(lines), encoding="utf-8")
    return cfg


# --- running the pipeline --------------------------------------------------------------------


class PipelineStopped(RuntimeError):
    """A ``newsflow run`` failed, was killed, or outlived ``--timeout`` (then it was stopped)."""

    def __init__(
        self, cfg: Path, why: str, seconds: float, phases: dict[str, float], log_tail: str
    ) -> None:
        super().__init__(f"newsflow run {why} after {seconds:.0f} s ({cfg}):\n{log_tail}")
        self.why = why
        self.seconds = seconds
        self.phases = phases


@dataclass
class PipelineRun:
    """One ``newsflow run`` subprocess: its summary and what it cost."""

    summary: dict[str, Any]
    wall_seconds: float
    clustered: int | None
    dedup_seconds: dict[str, float]
    phases: dict[str, float]
    max_rss_mb: float

    def brief(self) -> dict[str, Any]:
        s = self.summary
        return {
            "entries": s.get("entries"),
            "new_articles": s.get("new_articles"),
            "exact_duplicates": s.get("duplicates"),
            "near_duplicates": s.get("near_duplicates"),
            "item_errors": sum(o.get("errors", 0) for o in s.get("outcomes", [])),
            "run_seconds": round(self.wall_seconds, 2),
            "phases_seconds": self.phases,
            "clustered": self.clustered,
            "dedup_seconds": self.dedup_seconds,
        }


def _newsflow() -> str:
    exe = ROOT / ".venv" / "bin" / "newsflow"
    found = str(exe) if exe.exists() else shutil.which("newsflow")
    if not found:
        raise SystemExit("newsflow is not installed (make .venv first)")
    return found


_LOG_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d\.\d+) \| ", re.M)


def log_phases(log: str) -> dict[str, float]:
    """Seconds from the Prefect log: API start-up, loading (flow start to the last
    ``load-eval`` task), then to the end of the log (clustering, search index, bookkeeping)."""
    marks: dict[str, float] = {}
    last = None
    for line in log.splitlines():
        m = _LOG_TIME.match(line)
        if not m:
            continue
        t = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
        if last is not None and t < last - 43200:
            t += 86400  # past midnight
        last = t
        marks.setdefault("first", t)
        if "Beginning flow run" in line:
            marks.setdefault("flow", t)
        if f"Task run 'load-{SOURCE}' - Finished" in line:
            marks["loaded"] = t
        marks["end"] = t
    out: dict[str, float] = {}
    if "flow" in marks:
        out["prefect_startup"] = round(marks["flow"] - marks["first"], 2)
        if "loaded" in marks:
            out["load"] = round(marks["loaded"] - marks["flow"], 2)
            out["after_load"] = round(marks["end"] - marks["loaded"], 2)
    return out


def run_pipeline(
    cfg: Path, prefect_home: Path, tag: str, timeout: float | None = None
) -> PipelineRun:
    """``newsflow run --config CFG --json`` from the project root; logs beside the config."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(prefect_home)
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    out_path = cfg.parent / f"{tag}.stdout"
    err_path = cfg.parent / f"{tag}.stderr"
    timed_out = False
    with out_path.open("wb") as out, err_path.open("wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [_newsflow(), "run", "--config", str(cfg), "--json"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,  # its own process group: a timeout stops it and its server
        )
        # wait4 gives this child's own peak RSS (RUSAGE_CHILDREN would be the max over runs).
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if timeout is not None and time.perf_counter() - t0 > timeout:
                timed_out = True
                os.killpg(proc.pid, signal.SIGTERM)
                for _ in range(60):
                    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                    if pid:
                        break
                    time.sleep(0.5)
                else:
                    os.killpg(proc.pid, signal.SIGKILL)
                    _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        try:  # whatever the run left behind in its group (its Prefect server, if it was killed)
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    stdout = out_path.read_text(encoding="utf-8", errors="replace")
    stderr = err_path.read_text(encoding="utf-8", errors="replace")
    phases = log_phases(stderr)
    if timed_out or proc.returncode != 0 or "{" not in stdout:
        why = f"stopped by --timeout {timeout:.0f}" if timed_out else f"exited {proc.returncode}"
        if proc.returncode < 0 and not timed_out:
            why += f" (killed by signal {-proc.returncode}, not by this script)"
        raise PipelineStopped(cfg, why, wall, phases, stderr[-3000:] + stdout[-1000:])
    summary = json.loads(stdout[stdout.index("{") :])
    m = _CLUSTER_LOG.search(stderr) or _CLUSTER_LOG.search(stdout)
    seconds = {k: float(v) for k, v in ast.literal_eval(m.group(4)).items()} if m else {}
    return PipelineRun(
        summary=summary,
        wall_seconds=wall,
        clustered=int(m.group(1)) if m else None,
        # The total is the flow's own timer around clustering (the keys overlap: "stories"
        # includes every "stories_*" phase).
        dedup_seconds=(
            {**seconds, "total": round(float(summary.get("seconds", {}).get("dedup", 0.0)), 2)}
            if m
            else {}
        ),
        phases=phases,
        # The run's own peak (VmHWM; its ru_maxrss would include this process's size).
        max_rss_mb=round(float(summary.get("peak_rss_mb", {}).get("flow_process", 0.0)), 1),
    )


# --- reading the warehouse -------------------------------------------------------------------


@dataclass
class Warehouse:
    """What the pipeline decided, keyed by eval id (the JSONL ``id``)."""

    path: Path
    article: dict[str, str] = field(default_factory=dict)  # eval id -> article id
    story: dict[str, str] = field(default_factory=dict)  # eval id -> story id
    eval_of: dict[str, str] = field(default_factory=dict)  # article id -> eval id
    duplicates: list[tuple[str, str, str, float]] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> Warehouse:
        wh = cls(path)
        with duckdb.connect(str(path), read_only=True) as con:
            for key, aid, sid in con.execute(
                "SELECT e.entry_key, e.article_id, s.story_id FROM entries e "
                "LEFT JOIN story_articles s USING (article_id) WHERE e.source = ?",
                [SOURCE],
            ).fetchall():
                eid = key.removeprefix("guid:")
                wh.article[eid] = aid
                wh.eval_of.setdefault(aid, eid)
                if sid is not None:
                    wh.story[eid] = sid
            wh.duplicates = con.execute(
                "SELECT article_id, duplicate_of, level, score FROM duplicates "
                "WHERE article_id <> duplicate_of"
            ).fetchall()
        return wh

    def dup_groups(self, levels: Sequence[str] = EXACT_AND_NEAR) -> dict[str, str]:
        """Article id -> root of its group of copies (links at ``levels``)."""
        groups = neardup.connected_groups(
            (a, b) for a, b, lev, _ in self.duplicates if lev in levels
        )
        return {x: g[0] for g in groups for x in g}  # the root is the group's smallest id

    def similarity(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """The pipeline's same-story score of eval-id pairs: ``stories.pair_similarity`` on the
        stored title and text, DF from ``story_df`` and N = the rows of ``story_featured``."""
        params = stories.StoryParams()
        ids = sorted({self.article[x] for p in pairs for x in p})
        with duckdb.connect(str(self.path), read_only=True) as con:
            # story_df may hold several rows per term (appended counts, summed on lookup).
            df = dict(
                con.execute("SELECT term, sum(df)::BIGINT FROM story_df GROUP BY term").fetchall()
            )
            n_row = con.execute("SELECT count(*) FROM story_featured").fetchone()
            docs = {
                aid: stories.StoryDoc(id=aid, title=title, text=text or "")
                for aid, title, text in con.execute(
                    "SELECT article_id, coalesce(title, ''), text FROM articles "
                    "WHERE article_id IN (SELECT unnest(?))",
                    [ids],
                ).fetchall()
            }
        n = int(n_row[0]) if n_row else 0
        return [
            stories.pair_similarity(docs[self.article[a]], docs[self.article[b]], df, n, params)
            for a, b in pairs
        ]

    def story_rows(self, eval_ids: Sequence[str]) -> list[dict[str, Any]]:
        """``story_articles`` evidence for some articles, ids mapped back to eval ids."""
        with duckdb.connect(str(self.path), read_only=True) as con:
            rows = con.execute(
                "SELECT article_id, story_id, linked_to, score, cohesion, reason "
                "FROM story_articles WHERE article_id IN (SELECT unnest(?))",
                [[self.article[i] for i in eval_ids if i in self.article]],
            ).fetchall()
        back = self.eval_of.get
        return [
            {
                "id": back(a, a),
                "story": back(s, s),
                "linked_to": back(lt, lt) if lt else None,
                "score": sc,
                "cohesion": co,
                "reason": r,
            }
            for a, s, lt, sc, co, r in sorted(rows, key=lambda r: back(r[0], r[0]))
        ]


# --- evaluations -----------------------------------------------------------------------------


@dataclass
class Context:
    """Temporary folders and settings shared by the evaluations of one invocation."""

    tmp: Path
    prefect_home: Path
    load_batch: int | None = None
    timeout: float | None = None

    def workdir(self, name: str) -> Path:
        w = self.tmp / name
        (w / "data").mkdir(parents=True, exist_ok=True)
        return w

    def config(self, work: Path, **sections: Mapping[str, Any]) -> Path:
        secs = dict(sections)
        if self.load_batch:
            secs["extract"] = {"batch_size": self.load_batch, **secs.get("extract", {})}
        return write_config(work, work / "data", secs)


def ecb_records(rows: Iterable[Mapping[str, Any]]) -> Iterable[dict[str, Any]]:
    return (record(r["id"], r["title"], r["text"], r["published"], r["source"]) for r in rows)


def seed_records(seed_dir: Path) -> list[dict[str, Any]]:
    return [
        record(d.id, d.title, d.text)
        for d in (core.read_seed(p) for p in sorted(seed_dir.glob("*.txt")))
    ]


def _r(x: Mapping[str, float]) -> dict[str, float]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in x.items()}


def load_ecb(
    ctx: Context, rows: list[dict[str, Any]], seed_dir: Path | None
) -> tuple[PipelineRun, Warehouse]:
    """One pipeline run over ECB+ (and the seeds when given)."""
    work = ctx.workdir("ecb")
    write_jsonl(work / "data" / "ecbplus.jsonl", ecb_records(rows))
    if seed_dir is not None:
        write_jsonl(work / "data" / "seeds.jsonl", seed_records(seed_dir))
    run = run_pipeline(ctx.config(work), ctx.prefect_home, "run")
    return run, Warehouse.read(work / "news.duckdb")


def eval_ecb(rows: list[dict[str, Any]], run: PipelineRun, wh: Warehouse) -> dict[str, Any]:
    """Pairwise and B-cubed scores of the stories the pipeline stored, against the gold ones."""
    params = stories.StoryParams()
    loaded = [r for r in rows if r["id"] in wh.story]
    gold = {r["id"]: r["story_id"] for r in loaded}
    pred = {i: wh.story[i] for i in gold}
    # The same with the lines the pipeline refused counted as lone articles (their real fate).
    gold_all = {r["id"]: r["story_id"] for r in rows}
    pred_all = {i: wh.story.get(i, "missing:" + i) for i in gold_all}
    ref = core.eval_ecb(loaded, params)
    pw = core.pairwise_prf(pred, gold)
    return {
        "run": run.brief(),
        "n_lines": len(rows),
        "n_loaded": len(loaded),
        "not_loaded": sorted(set(gold_all) - set(gold)),
        "pairwise": _r(pw),
        "bcubed": _r(core.bcubed_f1(pred, gold)),
        "n_pred_stories": len(set(pred.values())),
        "n_gold_stories": len(set(gold.values())),
        "targets_met": {
            "precision>=0.90": pw["precision"] >= 0.90,
            "recall>=0.85": pw["recall"] >= 0.85,
        },
        "all_lines_refused_as_singletons": {
            "pairwise": _r(core.pairwise_prf(pred_all, gold_all)),
            "bcubed": _r(core.bcubed_f1(pred_all, gold_all)),
        },
        "core_same_input": {
            "pairwise": _r(ref["pairwise"]),
            "bcubed": _r(ref["bcubed"]),
            "n_pred_stories": ref["n_pred_stories"],
        },
    }


def eval_seeds(rows: list[dict[str, Any]], seed_dir: Path, wh: Warehouse) -> dict[str, Any]:
    """The seeds mixed into the ECB+ load: do they share a story, and does anything join it?"""
    seeds = [r["id"] for r in seed_records(seed_dir)]
    missing = [s for s in seeds if s not in wh.story]
    seed_stories = {wh.story[s] for s in seeds if s in wh.story}
    joined = sorted(i for i, s in wh.story.items() if s in seed_stories and i not in seeds)
    sim = wh.similarity([(seeds[0], seeds[1])])[0] if len(seeds) > 1 and not missing else None
    ref = core.eval_seeds([r for r in rows if r["id"] in wh.story], seed_dir, stories.StoryParams())
    return {
        "n_seeds": len(seeds),
        "not_loaded": missing,
        "one_story": len(seed_stories) == 1 and not missing,
        "others_joined": joined,
        "similarity": round(sim, 4) if sim is not None else None,
        "threshold": stories.StoryParams().threshold,
        "story_articles": wh.story_rows(seeds),
        "core_same_input": {
            "one_story": ref["one_story"],
            "similarity": round(ref["similarity"], 4) if ref["similarity"] else None,
            "others_joined": ref["others_joined"],
        },
    }


def wire_copies(rows: list[dict[str, Any]], min_words: int = 50) -> list[stories.StoryDoc]:
    """The core's wire copies (same seed and order as ``dedup_eval_core.eval_wire``)."""
    rng = random.Random(7)
    return [core.wire_copy(d, rng) for d in core.ecb_docs(rows) if len(d.text.split()) >= min_words]


def score_wire(
    rows: list[dict[str, Any]], copies: list[stories.StoryDoc], wh: Warehouse
) -> dict[str, Any]:
    """Near-duplicate recall of the copies and cross-story damage, from the warehouse."""
    gold = {r["id"]: r["story_id"] for r in rows}
    for c in copies:
        gold[c.id] = gold[c.id.removesuffix(":wire")]
    loaded = [
        c.id for c in copies if c.id in wh.article and c.id.removesuffix(":wire") in wh.article
    ]
    group = wh.dup_groups()
    own: dict[str, tuple[str, str, float]] = {}  # article -> (duplicate_of, level, score)
    linked: dict[str, set[str]] = {}  # article -> articles it is directly linked with
    for a, b, level, score in wh.duplicates:
        if level in EXACT_AND_NEAR:
            own[a] = (b, level, score)
            linked.setdefault(a, set()).add(b)
            linked.setdefault(b, set()).add(a)
    hit = direct = 0
    levels: Counter[str] = Counter()
    scores: list[float] = []
    missed: list[str] = []
    for cid in loaded:
        ca, oa = wh.article[cid], wh.article[cid.removesuffix(":wire")]
        if ca in group and group.get(oa) == group[ca]:
            hit += 1
        else:
            missed.append(cid)
        direct += oa in linked.get(ca, set())
        if ca in own:
            levels[own[ca][1]] += 1
            scores.append(own[ca][2])
        else:  # the copy is its group's canonical article, or alone
            levels["canonical" if ca in group else "none"] += 1
    cross_links = [
        (wh.eval_of.get(a, a), wh.eval_of.get(b, b), lv, s)
        for a, b, lv, s in wh.duplicates
        if gold.get(wh.eval_of.get(a, ""), "?a") != gold.get(wh.eval_of.get(b, ""), "?b")
    ]
    other_story = sorted(
        c for c in loaded if wh.story.get(c) != wh.story.get(c.removesuffix(":wire"))
    )
    scores.sort()
    ids = [i for i in gold if i in wh.story]
    pw = core.pairwise_prf({i: wh.story[i] for i in ids}, {i: gold[i] for i in ids})
    recall = hit / len(loaded) if loaded else float("nan")
    return {
        "n_copies": len(copies),
        "n_loaded": len(loaded),
        "near_dup_recall": round(recall, 4),
        "direct_link_recall": round(direct / len(loaded), 4) if loaded else None,
        "missed": missed,
        "link_levels": dict(levels),
        "copy_score_min": scores[0] if scores else None,
        "copy_score_p05": scores[len(scores) // 20] if scores else None,
        "cross_story_dup_links": len(cross_links),
        "cross_story_dup_examples": cross_links[:5],
        "copies_in_other_story": len(other_story),
        "copies_in_other_story_ids": other_story[:20],
        "stories_pairwise_with_copies": _r(pw),
        "targets_met": {"recall>=0.99": recall >= 0.99, "zero_cross_story": not other_story},
    }


def eval_wire(ctx: Context, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Copies loaded with their originals in one run, and in a second run after them."""
    rows = [r for r in rows if (r["text"] or "").strip()]
    copies = wire_copies(rows)
    copy_lines = [record(c.id, c.title, c.text) for c in copies]
    out: dict[str, Any] = {}
    for mode in ("same_run", "second_run"):
        work = ctx.workdir(f"wire_{mode}")
        write_jsonl(work / "data" / "a_ecbplus.jsonl", ecb_records(rows))
        cfg = ctx.config(work)
        runs = []
        if mode == "second_run":
            runs.append(run_pipeline(cfg, ctx.prefect_home, "run1"))
        write_jsonl(work / "data" / "b_wire.jsonl", copy_lines)
        runs.append(run_pipeline(cfg, ctx.prefect_home, f"run{len(runs) + 1}"))
        out[mode] = {
            "runs": [r.brief() for r in runs],
            **score_wire(rows, copies, Warehouse.read(work / "news.duckdb")),
        }
    ref = core.eval_wire(rows, neardup.NearDupParams(), stories.StoryParams())
    out["core_same_input"] = {
        k: ref[k]
        for k in (
            "near_dup_recall",
            "cross_story_pairs",
            "copy_score_min",
            "copy_in_original_story",
        )
    }
    return out


def eval_semeval(ctx: Context, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each pair's two texts loaded once; same story id, and the pipeline's own score."""
    docs: dict[str, dict[str, Any]] = {}
    for r in rows:
        for k in ("1", "2"):
            eid = "semeval:" + str(r["id" + k])
            title, text = core.split_title(r["text" + k])
            docs.setdefault(eid, record(eid, title or None, text))
    work = ctx.workdir("semeval")
    write_jsonl(work / "data" / "semeval.jsonl", docs.values())
    run = run_pipeline(ctx.config(work), ctx.prefect_home, "run")
    wh = Warehouse.read(work / "news.duckdb")
    pairs = [("semeval:" + str(r["id1"]), "semeval:" + str(r["id2"])) for r in rows]
    ok = [i for i, (a, b) in enumerate(pairs) if a in wh.story and b in wh.story]
    kept = [rows[i] for i in ok]
    scores = wh.similarity([pairs[i] for i in ok])
    same = [wh.story[pairs[i][0]] == wh.story[pairs[i][1]] for i in ok]
    gold = [bool(r["same_story"]) for r in kept]
    threshold = stories.StoryParams().threshold
    ref = core.eval_semeval(rows, stories.StoryParams())
    return {
        "run": run.brief(),
        "n_pairs": len(rows),
        "n_pairs_loaded": len(kept),
        "n_docs": len(docs),
        "n_same_story": sum(gold),
        "roc_auc_same_story": round(core.roc_auc(scores, gold), 4),
        "roc_auc_loose": round(
            core.roc_auc(scores, [bool(r["same_story_loose"]) for r in kept]), 4
        ),
        "spearman_vs_overall": round(
            core.spearman(scores, [-float(r["overall"]) for r in kept]), 4
        ),
        "pipeline_decision": _r(core.binary_prf(same, gold)),
        "at_threshold": {
            "threshold": threshold,
            **_r(core.binary_prf([s >= threshold for s in scores], gold)),
        },
        "decision_vs_threshold_disagree": sum(
            d != (s >= threshold) for d, s in zip(same, scores, strict=True)
        ),
        "core_same_input": {
            "roc_auc_same_story": round(ref["roc_auc_same_story"], 4),
            "spearman_vs_overall": round(ref["spearman_vs_overall"], 4),
            "at_threshold": _r(ref["at_threshold"]),
        },
    }


def eval_scale(ctx: Context, rows: list[dict[str, Any]], size: int) -> dict[str, Any]:
    """Replicated ECB+ (a week per replica, two days per story), loaded and clustered."""
    rows = [r for r in rows if (r["text"] or "").strip()]  # the pipeline refuses empty texts
    docs = core.synthetic_corpus(rows, size)
    work = ctx.workdir(f"scale_{size}")
    per_file = 2000  # about 4 MB: the files source refuses files over fetch.max_bytes (10 MB)
    for k in range(0, len(docs), per_file):
        write_jsonl(
            work / "data" / f"scale_{k // per_file:04d}.jsonl",
            (
                record(
                    d.id, d.title, d.text, d.published.isoformat() + "Z" if d.published else None
                )
                for d in docs[k : k + per_file]
            ),
        )
    try:
        run = run_pipeline(ctx.config(work), ctx.prefect_home, "run", ctx.timeout)
    except PipelineStopped as exc:
        return {"articles": len(docs), **scale_progress(exc, work / "news.duckdb")}
    wh = Warehouse.read(work / "news.duckdb")
    if len(wh.story) < len(docs):
        raise RuntimeError(f"only {len(wh.story)} of {len(docs)} articles clustered ({work})")
    story_of = {r["id"]: r["story_id"] for r in rows}
    gold = {d.id: (d.id.split(":", 1)[0], story_of[d.id.split(":", 1)[1]]) for d in docs}
    gold = {i: g for i, g in gold.items() if i in wh.story}
    pred = {i: wh.story[i] for i in gold}
    sizes = Counter(pred.values())
    levels = Counter(lv for _, _, lv, _ in wh.duplicates)
    return {
        "articles": len(docs),
        "files": -(-len(docs) // per_file),
        **run.brief(),
        "max_rss_mb": run.max_rss_mb,
        "dedup_target_met(<60s at 100k)": (
            run.dedup_seconds.get("total", float("inf")) < 60 if size >= 100000 else None
        ),
        "stories": len(sizes),
        "largest_story": max(sizes.values()) if sizes else 0,
        "duplicate_links": dict(levels),
        "pairwise": _r(core.pairwise_prf(pred, gold)),
        "core_one_shot_pairwise": _core_one_shot(docs, gold) if size <= 20000 else None,
    }


def _core_one_shot(docs: list[stories.StoryDoc], gold: Mapping[str, Any]) -> dict[str, float]:
    """The pure core on the same synthetic articles, all at once (DF over all of them)."""
    params = stories.StoryParams()
    df, n = core.document_frequencies(docs, params)
    pred = {a.article_id: a.story_id for a in stories.assign_stories(docs, [], df, n, params)}
    return _r(core.pairwise_prf(pred, gold))


def scale_progress(exc: PipelineStopped, db: Path) -> dict[str, Any]:
    """How far a stopped run got: rows committed before the stop (clustering commits per batch
    of 2000 articles)."""
    out: dict[str, Any] = {
        "run_failed": exc.why,
        "run_seconds": round(exc.seconds, 1),
        "phases_seconds": exc.phases,
    }
    try:
        with duckdb.connect(str(db), read_only=True) as con:
            for name, sql in (
                ("articles_loaded", "SELECT count(*) FROM articles"),
                ("articles_clustered", "SELECT count(*) FROM story_articles"),
                ("near_signatures", "SELECT count(*) FROM near_signatures"),
            ):
                row = con.execute(sql).fetchone()
                out[name] = row[0] if row else None
    except duckdb.Error as err:
        out["warehouse_unreadable"] = str(err)
    return out


# --- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seeds", type=Path, default=DEFAULT_SEEDS)
    parser.add_argument(
        "--only", default=",".join(EVALS), help="comma-separated: " + ",".join(EVALS)
    )
    parser.add_argument("--scale", default="", help="comma-separated sizes, e.g. 10000,100000")
    parser.add_argument(
        "--load-batch", type=int, default=None, help="extract.batch_size of the runs"
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="stop a scale run after this many seconds"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary warehouses")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = sorted(set(only) - set(EVALS))
    if unknown:
        parser.error(f"--only: unknown evaluation(s) {', '.join(unknown)}")
    sizes = [int(x) for x in args.scale.split(",") if x.strip()]
    if not (args.data / "ecbplus_dev.jsonl").exists():
        print(json.dumps({"skipped": f"{args.data} absent"}))
        return
    if "seeds" in only and not args.seeds.is_dir():
        only.remove("seeds")
    ecb = core.load_jsonl(args.data / "ecbplus_dev.jsonl")
    report: dict[str, Any] = {"evaluations": only, "scale": sizes}
    tmp = Path(tempfile.mkdtemp(prefix="newsflow-dedup-eval-"))
    ctx = Context(
        tmp=tmp, prefect_home=tmp / "prefect", load_batch=args.load_batch, timeout=args.timeout
    )
    t0 = time.perf_counter()
    try:
        if "ecb" in only or "seeds" in only:
            run, wh = load_ecb(ctx, ecb, args.seeds if "seeds" in only else None)
            if "ecb" in only:
                report["ecbplus"] = eval_ecb(ecb, run, wh)
            if "seeds" in only:
                report["seeds"] = eval_seeds(ecb, args.seeds, wh)
        if "wire" in only:
            report["wire_copies"] = eval_wire(ctx, ecb)
        semeval = args.data / "semeval2022_en_pairs_dev.jsonl"
        if "semeval" in only and not semeval.exists():
            report["semeval"] = {"skipped": f"{semeval} absent"}
        elif "semeval" in only:
            report["semeval"] = eval_semeval(ctx, core.load_jsonl(semeval))
        for size in sizes:
            report[f"scale_{size}"] = eval_scale(ctx, ecb, size)
    finally:
        if args.keep:
            report["kept"] = str(tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(report, indent=2, default=str)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
