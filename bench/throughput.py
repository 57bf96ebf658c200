"""Cold ingest, warm re-run and memory, against plain Trafilatura, in one run side by side.

Serves the pages of ../shared/corpus/html, replicated under distinct URLs with a small text
change per copy (so dedup has real work), and a feed listing them (with an ETag), from
127.0.0.1. Then:

1. **bare**: plain Trafilatura (``bare_extraction`` with the pipeline's options) over the same
   pages, in the same number of worker processes: the machine's limit;
2. **cold**: ``newsflow run`` into a fresh warehouse; Prefect's start-up (process start to flow
   start) is reported apart from the flow's own time, with the stages in seconds;
3. **warm**: ``newsflow run`` again: the feed answers 304, no page is fetched;
4. **bare** again: ``cold_vs_bare_throughput`` compares the cold run with the mean of the two
   bare runs, one timed before it and one after, so that a slow spell of the machine in one of
   them weighs half (here one bare run alone has taken 38 to 54 s on the same pages).

Memory (``peak_rss_mb``): ``flow_process`` is the peak resident set of the ``newsflow run``
process alone (its VmHWM: ``ru_maxrss`` would carry over this process's own size, as the run
is started by fork and exec); ``largest_worker`` the largest peak (VmHWM, sampled every 0.2 s)
of any of its descendants (extraction and feature workers, Prefect's ephemeral API server);
``tree_sampled`` samples, every 0.2 s, the sum over the process and all its descendants and
keeps the peak, with ``parent_sampled`` the parent's share at the same samples.

    .venv/bin/python bench/throughput.py [--pages 2000] [--workers 2] [--skip-bare]
                                         [--profile | --py-spy]

``--profile`` runs the cold ingest under pyinstrument: the flow's main thread, and the
source's thread while it fetches, waits on the workers and loads (written to
bench/out/profile-<pages>.txt; the workers' own time is Trafilatura's, as in the bare run).
``--py-spy`` samples the whole cold run instead, every process of it, with py-spy (not a
dependency: ``.venv/bin/pip install py-spy``): where the CPU goes, by process and, in the run's
own process, by our function (``py_spy`` in the JSON; the samples in bench/out/pyspy-<pages>.raw).
Figures of a sampled run are the profile's, not the bench's.

Prints JSON (also written to bench/out/throughput-<pages>.json). Only loopback traffic.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from html import escape, unescape
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks.core.neardup import normalise_words  # noqa: E402
from tests.support.httpserver import Route, TestServer  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus"


def corpus_pages() -> list[tuple[str, bytes]]:
    with (CORPUS / "manifest.csv").open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "html"]
    return [(r["id"], (CORPUS / r["local_path"]).read_bytes()) for r in rows]


_HIDDEN = re.compile(
    rb"<(script|style|noscript|template|textarea)\b.*?</\1\s*>|<!--.*?-->", re.I | re.S
)
_TEXT_NODE = re.compile(rb">([^<>]{40,})<")


def _words(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("cp1252", "replace")
    return " ".join(normalise_words(unescape(text)))


def article_spans(html: bytes, text: str) -> list[tuple[int, int]]:
    """Byte spans of the page's text nodes that Trafilatura keeps in the article ``text``."""
    body = " ".join(normalise_words(text))
    masked = _HIDDEN.sub(lambda m: b" " * len(m.group(0)), html)
    spans = []
    for m in _TEXT_NODE.finditer(masked):
        words = _words(m.group(1))
        if len(words) >= 30 and words in body:
            spans.append(m.span(1))
    return spans


def variant(html: bytes, k: int, spans: list[tuple[int, int]], host: str | None) -> bytes:
    """Copy ``k`` of a page, as another site would republish it, lightly edited.

    The article text changes: `` (update k)`` goes into up to three of its paragraphs (``spans``,
    the text nodes the original's extraction keeps; picked by ``k``), so the copy's text is a
    near duplicate of the original's, never an exact one. The page's own host (``host``, from
    its canonical URL) becomes ``c<k>.<host>`` in every absolute link, so the copy names a
    canonical URL of its own instead of the original's (which would make it a duplicate by URL).
    """
    if k == 0:
        return html
    n = len(spans)
    for i in sorted({(k * 7 + j * n // 3) % n for j in range(min(3, n))}, reverse=True):
        s, e = spans[i]
        cut = html.find(b". ", s, e)
        if cut < 0:
            cut = html.find(b" ", (s + e) // 2, e)
        cut = cut + 1 if cut >= 0 else e
        html = html[:cut] + f" (update {k})".encode() + html[cut:]
    if host:
        html = re.sub(rb"//" + re.escape(host.encode()) + rb"\b", f"//c{k}.{host}".encode(), html)
    return html


def _article_of(page: bytes) -> tuple[str, str | None]:
    """Text and canonical host of a page, extracted as the pipeline does (run in a worker)."""
    import trafilatura

    doc = trafilatura.bare_extraction(page, url=_BASE_URL, **_OPTIONS)
    if doc is None or isinstance(doc, dict):
        return "", None
    host = urlsplit(doc.url).hostname if doc.url and doc.url != _BASE_URL else None
    return doc.text or "", host


def build_site(server: TestServer, n: int, workers: int) -> tuple[list[tuple[str, bytes]], int]:
    """Register ``n`` pages and the feed; return (url, body) of every page, and how many of
    the corpus's pages have article text to edit."""
    base = corpus_pages()
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        found = list(pool.map(_article_of, [html for _, html in base]))
    spans = [article_spans(html, text) for (_, html), (text, _) in zip(base, found, strict=True)]
    pages = []
    for i in range(n):
        pid, html = base[i % len(base)]
        b = i % len(base)
        body = variant(html, i // len(base), spans[b], found[b][1])
        path = f"/p/{i}/{pid}.html"
        server.set(path, Route(body=body))
        pages.append((server.url(path), body))
    items = "".join(
        f"<item><guid>{i}</guid><title>page {i}</title><link>{escape(u)}</link></item>"
        for i, (u, _) in enumerate(pages)
    )
    feed = f'<rss version="2.0"><channel><title>bench</title>{items}</channel></rss>'
    server.set(
        "/feed.xml", Route(body=feed.encode(), content_type="application/rss+xml", etag='"b1"')
    )
    return pages, sum(1 for s in spans if s)


_BASE_URL = "http://127.0.0.1/base.html"
_OPTIONS: dict[str, Any] = {
    "with_metadata": True, "include_comments": False, "include_tables": True,
    "favor_precision": False,
}  # fmt: skip
"""The pipeline's options (config/settings.py defaults), as ``tasks.extract`` passes them."""


def _bare_one(args: tuple[bytes, str]) -> int:
    import trafilatura

    doc = trafilatura.bare_extraction(args[0], url=args[1], **_OPTIONS)
    return len(doc.text or "") if doc is not None and not isinstance(doc, dict) else 0


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def bare(pages: list[tuple[str, bytes]], workers: int) -> dict[str, Any]:
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        chunk = max(1, len(pages) // (workers * 16))
        sizes = list(pool.map(_bare_one, [(b, u) for u, b in pages], chunksize=chunk))
    seconds = time.perf_counter() - t0
    return {
        "seconds": round(seconds, 2),
        "pages_per_s": round(len(pages) / seconds, 1),
        "with_text": sum(1 for s in sizes if s),
        "cpu_seconds_workers": round(_children_cpu() - cpu0, 1),
    }


def _status_kb(pid: int, field: str = "VmRSS") -> int:
    """A size from /proc/<pid>/status (VmRSS: now; VmHWM: the peak), in kB (0 once gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(root: int) -> list[int]:
    """``root`` and its descendants (from /proc)."""
    parent_of: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent_of[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(c for c, p in parent_of.items() if p == pid)
    return tree


class TreeSampler(threading.Thread):
    """Peak RSS of a process and of its whole tree, sampled every 0.2 s, and the largest peak
    (VmHWM) of any descendant."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.stop = pid, threading.Event()
        self.peak_tree_kb = self.peak_parent_kb = self.peak_child_kb = 0

    def run(self) -> None:
        while not self.stop.wait(0.2):
            tree = _tree(self.pid)
            sizes = [_status_kb(p) for p in tree]
            self.peak_parent_kb = max(self.peak_parent_kb, sizes[0])
            self.peak_tree_kb = max(self.peak_tree_kb, sum(sizes))
            for p in tree[1:]:
                self.peak_child_kb = max(self.peak_child_kb, _status_kb(p, "VmHWM"))


_PROFILED = """
import sys
from pathlib import Path
from pyinstrument import Profiler
import tasks.pipeline as tp
from flows.cli import main

out = Path(sys.argv.pop(1))
source_profile = Profiler(interval=0.005, async_mode="disabled")  # its own thread
inner = tp.process_batches

def process_batches(*args, **kwargs):
    source_profile.start()
    try:
        return inner(*args, **kwargs)
    finally:
        source_profile.stop()

tp.process_batches = process_batches
flow_profile = Profiler(interval=0.005)
flow_profile.start()
try:
    main()
finally:
    flow_profile.stop()
    out.write_text(
        "== source thread (fetch, extract wait, load) ==\\n"
        + source_profile.output_text(show_all=False)
        + "\\n== main thread (start-up, flow, dedup, search index) ==\\n"
        + flow_profile.output_text(show_all=False)
    )
"""


def newsflow_run(cfg: Path, profile: Path | None = None, spy: Path | None = None) -> dict[str, Any]:
    env = {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        # A loaded machine starts the ephemeral API slowly (20 s is Prefect's default limit);
        # the start-up is reported apart, so waiting longer changes no figure.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        **os.environ,
    }
    cpu_tree0, cpu_own0 = _children_cpu(), _own_cpu()
    t0 = time.perf_counter()
    started = datetime.now().astimezone()
    cmd = [str(ROOT / ".venv/bin/newsflow")]
    if profile is not None:
        cmd = [str(ROOT / ".venv/bin/python"), "-c", _PROFILED, str(profile)]
    if spy is not None:
        cmd = [_py_spy(), "record", "--subprocesses", "--nonblocking", "--rate", str(SPY_RATE),
               "--format", "raw", "--output", str(spy), "--", *cmd]  # fmt: skip
    with subprocess.Popen(
        [*cmd, "run", "--config", str(cfg), "--json"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as proc:  # fmt: skip
        sampler = TreeSampler(proc.pid)
        sampler.start()
        stdout, stderr = proc.communicate()
        sampler.stop.set()
    wall = time.perf_counter() - t0
    cpu = {
        # the run's process and every descendant it waited for (workers, Prefect's API server)
        "newsflow_tree": round(_children_cpu() - cpu_tree0, 1),
        # this process meanwhile: mostly the test server answering the page requests
        "bench_server": round(_own_cpu() - cpu_own0, 1),
    }
    if proc.returncode not in (0, 1) or "{" not in stdout:
        print(stderr[-4000:], file=sys.stderr)
        raise SystemExit(proc.returncode)
    # (raw_decode: py-spy, when it samples the run, writes lines of its own after the JSON)
    summary, _ = json.JSONDecoder().raw_decode(stdout[stdout.index("{") :])
    summary["peak_rss_mb"]["largest_worker"] = sampler.peak_child_kb / 1024
    summary["peak_rss_mb"]["tree_sampled"] = sampler.peak_tree_kb / 1024
    summary["peak_rss_mb"]["parent_sampled"] = sampler.peak_parent_kb / 1024
    import duckdb

    con = duckdb.connect(str(json.loads(json.dumps(summary["warehouse"]))), read_only=True)
    (flow_started, flow_ended) = con.execute(
        "SELECT started_at, ended_at FROM runs WHERE run_id = ?", [summary["run_id"]]
    ).fetchone()
    levels = dict(
        con.execute(
            "SELECT level, count(*) FROM duplicates WHERE run_id = ? GROUP BY level ORDER BY 1",
            [summary["run_id"]],
        ).fetchall()
    )
    con.close()
    flow = summary["seconds"]["flow"]
    return {
        "wall_seconds": round(wall, 2),
        "prefect_startup_seconds": round((flow_started - started).total_seconds(), 2),
        "flow_seconds": round(flow, 2),
        "flow_recorded_seconds": round((flow_ended - flow_started).total_seconds(), 2),
        "cpu_seconds": cpu,
        "duplicates_by_level": levels,
        "summary": summary,
    }


SPY_RATE = 25
"""py-spy's samples per second: each sample of a busy thread stands for 1/25 CPU-second."""


def _py_spy() -> str:
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(ROOT / ".venv/bin"))
    if found is None:
        raise SystemExit("--py-spy needs py-spy: .venv/bin/pip install py-spy")
    return found


def spy_summary(raw: Path, top: int = 15) -> dict[str, Any]:
    """CPU-seconds by process kind and, in the run's own process, by the innermost function of
    ours (tasks/, flows/) on the stack, else the package running (py-spy's raw samples: one
    line per distinct stack, ``process ...;...;frame;frame count``)."""
    by_kind: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        parts = stack.split(";")
        procs = [p for p in parts if p.startswith("process ")]
        frames = [p for p in parts if not p.startswith("process ")]
        n = int(count)
        if len(procs) <= 1:
            kind = "newsflow run (the flow's process)"
        elif "uvicorn" in procs[-1]:
            kind = "Prefect API server"
        elif any("_extract_chunk" in f for f in frames):
            kind = "extraction workers"
        elif any("article_features" in f for f in frames):
            kind = "dedup feature workers"
        else:
            kind = "other processes (idle workers, start-up)"
        by_kind[kind] += n
        if len(procs) <= 1 and frames:
            mine = [f for f in frames if re.search(r"\((tasks|flows)/", f)]
            if mine:
                ours[re.sub(r":\d+\)$", ")", mine[-1])] += n
            else:
                leaf = re.search(r"\(([\w<>]+)", frames[-1])
                ours[f"(outside our code) {leaf.group(1) if leaf else frames[-1]}"] += n
    return {
        "cpu_seconds_by_process": {k: round(v / SPY_RATE, 1) for k, v in by_kind.most_common()},
        "flow_process_top": {k: round(v / SPY_RATE, 2) for k, v in ours.most_common(top)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pages", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-bare", action="store_true")
    ap.add_argument("--profile", action="store_true", help="profile the cold run (pyinstrument)")
    ap.add_argument("--py-spy", action="store_true", help="sample the cold run's processes")
    args = ap.parse_args()
    if not (CORPUS / "manifest.csv").exists():
        print(json.dumps({"skipped": "../shared/corpus absent"}))
        return
    out: dict[str, Any] = {"pages": args.pages, "workers": args.workers}
    with TestServer() as server, tempfile.TemporaryDirectory() as tmp:
        pages, edited = build_site(server, args.pages, args.workers)
        out["input"] = {"corpus_pages": len(corpus_pages()), "with_article_text_edited": edited}
        bare_runs = [] if args.skip_bare else [bare(pages, args.workers)]
        cfg = Path(tmp) / "bench.toml"
        cfg.write_text(
            f'[warehouse]\npath = "{tmp}/news.duckdb"\n'
            f"[extract]\nworkers = {args.workers}\n"
            f'[[sources]]\nname = "bench"\nkind = "feed"\nurl = "{server.url("/feed.xml")}"\n'
        )
        hits_before = len(server.requests)
        dest = ROOT / "bench" / "out"
        dest.mkdir(exist_ok=True)
        spy = dest / f"pyspy-{args.pages}.raw" if args.py_spy else None
        cold = newsflow_run(cfg, dest / f"profile-{args.pages}.txt" if args.profile else None, spy)
        page_hits_cold = len(server.requests) - hits_before
        hits_before = len(server.requests)
        warm = newsflow_run(cfg)
        page_hits_warm = len(server.requests) - hits_before - 1  # minus the feed's 304
        if bare_runs:
            bare_runs.append(bare(pages, args.workers))
    s = cold["summary"]
    o = s["outcomes"][0]
    out["cold"] = {
        "prefect_startup_seconds": cold["prefect_startup_seconds"],
        "flow_seconds": cold["flow_seconds"],
        "pages_per_s": round(o["pages_fetched"] / cold["flow_seconds"], 1),
        "stages_seconds": {
            **{k: round(v, 2) for k, v in o["stage_seconds"].items()},
            "dedup": round(s["seconds"]["dedup"], 2),
            "search_index": round(s["seconds"]["search_index"], 2),
            # indexed in a thread while later batches were fetched and extracted (overlapping them)
            "search_index_during_load": round(
                s["seconds"].get("search_index_during_sources", 0.0), 2
            ),
        },
        "requests": page_hits_cold,
        "new_articles": s["new_articles"],
        "duplicates_exact": s["duplicates"],
        "near_duplicates": s["near_duplicates"],
        "duplicates_by_level": cold["duplicates_by_level"],
        "share_of_pages": {
            "exact_copies": round(s["duplicates"] / max(1, o["pages_fetched"]), 3),
            "near_duplicates": round(s["near_duplicates"] / max(1, o["pages_fetched"]), 3),
        },
        "cpu_seconds": {**cold["cpu_seconds"], **s.get("cpu_seconds", {})},
        "peak_rss_mb": {k: round(v, 1) for k, v in s["peak_rss_mb"].items()},
        "rss_mb": s.get("rss_mb", {}),
    }
    out["warm"] = {
        "flow_seconds": warm["flow_seconds"],
        "prefect_startup_seconds": warm["prefect_startup_seconds"],
        "page_fetches": page_hits_warm,
        "fraction_of_cold": round(warm["flow_seconds"] / cold["flow_seconds"], 3),
    }
    if spy is not None:
        out["py_spy"] = spy_summary(spy)
    if bare_runs:
        seconds = statistics.mean(b["seconds"] for b in bare_runs)
        out["bare_trafilatura"] = {
            "seconds": round(seconds, 2),
            "pages_per_s": round(len(pages) / seconds, 1),
            "runs": bare_runs,  # before the cold run, after the warm one
        }
        out["cold_vs_bare_throughput"] = round(
            out["cold"]["pages_per_s"] / out["bare_trafilatura"]["pages_per_s"], 3
        )
    (dest / f"throughput-{args.pages}.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
