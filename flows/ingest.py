"""The ``ingest`` flow: every source (or the named ones) fetched, extracted, deduplicated and
loaded into the warehouse, concurrently per source, in batches.

Runs against Prefect's local ephemeral API by default and against a Prefect server when
``PREFECT_API_URL`` is set. Run it as ``newsflow run`` or ``python -m flows.ingest``.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import PrefectFuture, wait
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from config.settings import load_config
from tasks.db import Warehouse
from tasks.extract import ExtractOptions, Extractor
from tasks.fetch import Fetcher
from tasks.pipeline import RunContext, SourceOutcome, cluster_stories, ingest_source, unwalked


@dataclass
class RunSummary:
    run_id: str
    status: str
    sources: int = 0
    entries: int = 0
    new_articles: int = 0
    duplicates: int = 0
    failures: int = 0
    near_duplicates: int = 0
    stories_touched: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall seconds: sources (all, concurrently), dedup, search_index, flow (all)."""
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    """CPU seconds (user + system) per phase: the flow's own process (``*_parent``) and the
    worker processes it started and ended in that phase (``*_workers``: extraction, features)."""
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    rss_mb: dict[str, float] = field(default_factory=dict)
    """The flow process's resident set at the end of each phase, and its peak so far."""
    failed_sources: list[str] = field(default_factory=list)
    outcomes: list[SourceOutcome] = field(default_factory=list)
    warehouse: str = ""

    def counts(self) -> dict[str, int]:
        return {
            "sources": self.sources,
            "entries": self.entries,
            "new_articles": self.new_articles,
            "duplicates": self.duplicates,
            "failures": self.failures,
        }


def _cpu() -> tuple[float, float]:
    """CPU seconds so far of this process, and of its children that have ended."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux
        return 0.0


def _peak_rss_mb() -> float:
    """This process's peak resident set. On Linux its VmHWM: ``ru_maxrss`` carries over the
    peak of the process that started this one (fork, then exec), so a run started by a big
    process (a benchmark holding 20k pages) reported that process's size as its own."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Phases:
    """Wall and CPU seconds, and the resident set at the end, of the flow's phases."""

    def __init__(self, summary: RunSummary) -> None:
        self.summary = summary
        self.t, self.cpu = time.perf_counter(), _cpu()

    def end(self, name: str) -> None:
        t, cpu = time.perf_counter(), _cpu()
        s = self.summary
        s.seconds[name] = t - self.t
        s.cpu_seconds[f"{name}_parent"] = round(cpu[0] - self.cpu[0], 2)
        s.cpu_seconds[f"{name}_workers"] = round(cpu[1] - self.cpu[1], 2)
        s.rss_mb[f"after_{name}"] = round(_rss_mb(), 1)
        s.rss_mb[f"peak_by_end_of_{name}"] = round(_peak_rss_mb(), 1)
        self.t, self.cpu = t, cpu


INDEX_EVERY = 1_000
"""New articles loaded between two passes of the search index during a run (see _Indexer)."""


class _Indexer:
    """Indexes the loaded articles for full-text search in a thread while later batches are
    fetched and extracted, so that little indexing is left for after the last load.

    A pass (``refresh_search_index``: the articles not yet indexed) runs once ``every`` new
    articles have been loaded since the last one (``loaded``); ``finish`` waits for the pass
    under way and stops. The flow's own pass then indexes the rest, as before, and catches up
    on whatever a failed background pass left (the failure is logged).

    Not a pass per load: each has a cost of its own, taken from the extraction workers when
    they have every core (at 2,000 pages, a pass after each load took 7.9 s in all), and a
    bigger pass holds more memory (on a 20k-page warehouse: 1,000 articles 1.3 s and 150 MB,
    5,000 articles 4.7 s and 380 MB).

    Clustering is not done this way: a load decides exact copies against originals that
    clustering has not marked as near-duplicates yet, so clustering between two loads of one
    run would change which article a later copy is filed under.
    """

    def __init__(self, wh: Warehouse, every: int = INDEX_EVERY) -> None:
        self.wh = wh
        self.every = every
        self.seconds = 0.0
        self._loaded = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, name="search-index", daemon=True)
        self._thread.start()

    def loaded(self, n: int) -> None:
        with self._lock:  # sources load from several threads
            self._loaded += n
            if self._loaded < self.every:
                return
            self._loaded = 0
        self._wake.set()

    def finish(self) -> None:
        self._done = True
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._done:
                return
            t0 = time.perf_counter()
            try:
                self.wh.refresh_search_index()
            except Exception as exc:  # the flow's own pass catches up; a real fault shows there
                logging.getLogger("newsflow.search_index").warning(
                    "background search indexing failed, left to the end of the run: %r", exc
                )
                return
            finally:
                self.seconds += time.perf_counter() - t0


def _run_name() -> str:
    params = flow_run.parameters or {}
    names = params.get("source_names") or []
    return "ingest-" + ("-".join(names) if names else "all")


def summary_markdown(s: RunSummary) -> str:
    lines = [
        f"# Ingest run `{s.run_id}`: {s.status}",
        "",
        f"- sources: **{s.sources}**, failed: **{s.failures}**",
        f"- entries listed: **{s.entries}**",
        f"- new articles: **{s.new_articles}**",
        f"- duplicates: **{s.duplicates}** exact, **{s.near_duplicates}** near",
        f"- stories touched: **{s.stories_touched}**",
        "",
        "| source | status | HTTP | entries | new | duplicates | item errors | pages | error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for o in s.outcomes:
        err = (o.error or "").replace("|", "\\|")[:200]
        lines.append(
            f"| {o.source} | {o.status} | {o.http_status or ''} | {o.entries} | "
            f"{o.new_articles} | {o.duplicates} | {o.errors} | {o.pages_fetched} | {err} |"
        )
    return "\n".join(lines)


@flow(name="ingest", flow_run_name=_run_name, log_prints=False)
def ingest(
    config_path: str | None = None,
    source_names: list[str] | None = None,
    paths: list[str] | None = None,
    cluster: bool = True,
    force: bool = False,
) -> RunSummary:
    """Ingest the configured sources (all enabled ones, or those named) into the warehouse.

    Args:
        config_path: The config file (default ``$NEWSFLOW_CONFIG`` or ``config/newsflow.toml``).
        source_names: Only these sources.
        paths: Only these files of the (files) sources: what a watched inbox's event names.
        cluster: Cluster the new articles at the end (off when a load-event trigger does it).
        force: Fetch feeds even before the time their servers asked for.
    """
    logger = get_run_logger()
    settings = load_config(config_path)
    sources = settings.select(source_names)
    run_id = str(flow_run.id or uuid.uuid4())
    wh = Warehouse.configured(settings.warehouse)
    wh.migrate()
    wh.register_sources([(s.name, s.kind, s.location) for s in settings.sources])
    wh.start_run(run_id, flow_run.name, datetime.now(UTC))
    ex = settings.extract
    extractor = Extractor(
        ex.workers,
        ExtractOptions(
            favor_precision=ex.favor_precision,
            include_comments=ex.include_comments,
            include_tables=ex.include_tables,
            min_chars=ex.min_chars,
        ),
    )
    default_pages = settings.fetch.fetch_pages
    if any(s.kind == "files" or (default_pages if s.fetch_pages is None else s.fetch_pages)
           for s in sources):  # fmt: skip
        extractor.warm()  # the workers start while the feeds are fetched
    summary = RunSummary(run_id=run_id, status="running", warehouse=str(settings.warehouse.path))
    t_flow = time.perf_counter()
    phases = _Phases(summary)
    indexer = _Indexer(wh)
    try:
        feed_hosts = [urlsplit(s.url).hostname or "" for s in sources if s.url]
        with Fetcher(settings.fetch, trusted_hosts=feed_hosts) as fetcher:
            ctx = RunContext(run_id, settings, wh, fetcher, extractor, indexer.loaded)
            runner: ThreadPoolTaskRunner[Any] = ThreadPoolTaskRunner(
                max_workers=max(1, min(8, len(sources)))
            )
            with runner:
                futures = [
                    runner.submit(
                        ingest_source,
                        {"source": s, "ctx": unwalked(ctx), "only": paths, "force": force},
                    )
                    for s in sources
                ]
                wait(list[PrefectFuture[Any]](futures))
                for s, fut in zip(sources, futures, strict=True):
                    if fut.state.is_completed():
                        summary.outcomes.append(fut.result())
                    else:
                        err = fut.state.message or "crashed"
                        summary.outcomes.append(SourceOutcome(s.name, status="error", error=err))
    finally:
        extractor.close()
        indexer.finish()
    for o in summary.outcomes:
        summary.sources += 1
        summary.entries += o.entries
        summary.new_articles += o.new_articles
        summary.duplicates += o.duplicates
        if o.status == "error":
            summary.failures += 1
            summary.failed_sources.append(o.source)
    phases.end("sources")
    # Clustering and the search index also catch up on what an interrupted run loaded.
    summary.seconds["search_index_during_sources"] = indexer.seconds
    if cluster:
        dedup = cluster_stories(unwalked(settings), wh)
        summary.near_duplicates = dedup.near_duplicates
        summary.stories_touched = dedup.stories_touched
    phases.end("dedup")
    if summary.new_articles or summary.duplicates or wh.search_index_stale():
        wh.refresh_search_index()
    phases.end("search_index")
    summary.status = "completed_with_failures" if summary.failures else "completed"
    wh.finish_run(run_id, summary.status, summary.counts(), summary.failed_sources)
    summary.seconds["flow"] = time.perf_counter() - t_flow
    # The workers' peaks are not known here: a spawned worker's ru_maxrss starts at this
    # process's size when it was started (see _peak_rss_mb).
    summary.peak_rss_mb = {"flow_process": _peak_rss_mb()}
    create_markdown_artifact(
        key="ingest-summary", markdown=summary_markdown(summary), description="Ingest run counts"
    )
    create_table_artifact(
        key="failed-sources",
        table=[
            {"source": o.source, "error": o.error or "", "http_status": o.http_status}
            for o in summary.outcomes
            if o.status == "error"
        ],
        description=f"Sources that failed in this run ({summary.failures})",
    )
    if summary.failed_sources:
        logger.error("failed sources: %s", ", ".join(summary.failed_sources))
    logger.info(
        "run done status=%s sources=%d entries=%d new=%d duplicates=%d failures=%d",
        summary.status, summary.sources, summary.entries, summary.new_articles,
        summary.duplicates, summary.failures,
    )  # fmt: skip
    return summary


def summary_dict(s: RunSummary) -> dict[str, object]:
    return asdict(s)


if __name__ == "__main__":
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    cfg = sys.argv[1] if len(sys.argv) > 1 else None
    result = ingest(cfg if cfg is None else str(Path(cfg)))
    sys.stdout.write(f"{result.status}: {result.new_articles} new articles\n")
