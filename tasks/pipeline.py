"""Prefect tasks of the ingest flow, one per stage and source: ``fetch-<source>``,
``pages-<source>``, ``extract-<source>``, ``load-<source>``, wrapped per source by
``source-<source>``.

Work is batched (``extract.batch_size`` entries at a time: fetched, extracted, loaded), so a
run costs a handful of task runs per source, not one per article, and memory stays bounded.
Expected failures (:class:`SourceError`) are recorded in ``fetches``/``sources`` and the run goes
on; anything else is logged at critical and re-raised.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.runtime import task_run
from prefect.utilities.annotations import quote

from config.settings import Settings, Source
from tasks.core.entries import (
    build_article,
    candidates_from_feed,
    chunked,
    provisional_article_id,
)
from tasks.core.errors import FetchError, SourceError
from tasks.core.feeds import parse_feed
from tasks.core.models import Article, Candidate, Extracted, HttpResult, ItemError
from tasks.core.politeness import next_fetch_after_failure, next_fetch_after_success
from tasks.core.urls import canonicalize_url, entry_key
from tasks.db import Warehouse
from tasks.dedup import DedupResult, cluster_pending
from tasks.extract import EXTRACTOR_VERSION, Extractor, PendingExtraction
from tasks.fetch import Fetcher
from tasks.files import FileScan, list_files, read_file

_FEED_ACCEPT = (
    "application/rss+xml, application/atom+xml, application/feed+json, "
    "application/xml;q=0.9, text/xml;q=0.9, application/json;q=0.8, */*;q=0.5"
)


T = TypeVar("T")


@dataclass
class RunContext:
    """What every task of one run shares (never hashed: tasks use ``NO_CACHE``)."""

    run_id: str
    settings: Settings
    warehouse: Warehouse
    fetcher: Fetcher
    extractor: Extractor
    on_loaded: Callable[[int], None] | None = None
    """Called with the number of new articles after each batch that brought some is loaded
    (the flow's indexer)."""


@dataclass
class SourceOutcome:
    source: str
    status: str = "ok"  # ok | not_modified | error
    http_status: int | None = None
    nbytes: int = 0
    entries: int = 0
    new_articles: int = 0
    duplicates: int = 0
    errors: int = 0
    pages_fetched: int = 0
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    """Wall seconds per stage: fetch (feed and pages), extract, load."""

    def timed(self, stage: str, since: float) -> None:
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + time.perf_counter() - since


@dataclass
class FeedListing:
    result: HttpResult
    candidates: list[Candidate]
    warning: str | None
    ttl_minutes: int | None = None


# -- fetch -----------------------------------------------------------------------------------
def _retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only transient fetch errors (timeouts, 429, 5xx)."""
    try:
        state.result()
    except FetchError as exc:
        return exc.transient
    except Exception:
        return False
    return False


@task(name="fetch", task_run_name="fetch-{source.name}", cache_policy=NO_CACHE)
def fetch_feed(source: Source, ctx: RunContext, state: dict[str, Any]) -> FeedListing:
    """GET the feed (conditional on the stored ETag/Last-Modified) and parse it.

    A 304 Not Modified gives a listing with no candidates.
    """
    logger = get_run_logger()
    assert source.url is not None
    fs = ctx.settings.fetch
    try:
        result = ctx.fetcher.get(
            source.url,
            source=source.name,
            etag=state.get("etag"),
            last_modified=state.get("last_modified"),
            accept=_FEED_ACCEPT,
        )
    except FetchError as exc:
        attempt = int(task_run.run_count or 1)
        if exc.transient and attempt <= fs.retries:
            planned = fs.retry_backoff * 2 ** (attempt - 1)
            if exc.retry_after is not None:
                if exc.retry_after > fs.max_retry_after:
                    raise FetchError(
                        source.name,
                        f"{exc.message} (Retry-After {exc.retry_after:g}s is longer than "
                        f"fetch.max_retry_after)",
                        status=exc.status,
                        retry_after=exc.retry_after,
                    ) from exc
                time.sleep(max(0.0, exc.retry_after - planned))
            logger.warning("fetch failed, will retry source=%s error=%s", source.name, exc.message)
        raise
    if result.not_modified:
        logger.info("not modified source=%s status=304", source.name)
        return FeedListing(result=result, candidates=[], warning=None)
    feed = parse_feed(result.body, result.url, source.name, result.headers.get("content-type"))
    if feed.warning:
        logger.warning(
            "ill-formed feed, read anyway source=%s problem=%s", source.name, feed.warning
        )
    logger.info(
        "fetched source=%s status=%s bytes=%d entries=%d",
        source.name, result.status, len(result.body), len(feed.entries),
    )  # fmt: skip
    cands = candidates_from_feed(source.name, feed, location=source.url)
    return FeedListing(
        result=result, candidates=cands, warning=feed.warning, ttl_minutes=feed.ttl_minutes
    )


# Page bodies and extracted texts go into the caller's ``sink``, never out as a task's result:
# Prefect keeps every task result of a flow run alive until the run ends (to link upstream
# dependencies), which made memory grow with the number of pages. Parameters live as long:
# a task run nested in ``source-<name>`` stays a child of that task's transaction (its
# rollback hook holds the engine, which holds the parameters) until ``source-<name>`` ends.
# So the caller empties every list it hands to a task once it has used it (``_release``).
# And it hands them over ``unwalked``: Prefect otherwise walks every parameter, field by field,
# for futures to wait on; that took 55 ms of CPU per task run for a batch of 200 articles.


def unwalked(value: T) -> T:
    """``value`` as a task's parameter that Prefect does not walk (``quote``); the task gets
    ``value`` itself."""
    return cast(T, quote(value))


def _release(*handed: list[Any]) -> None:
    """Empty lists that were a nested task's parameters, so the retained run holds nothing."""
    for items in handed:
        items.clear()


@task(name="pages", task_run_name="pages-{source.name}", cache_policy=NO_CACHE)
def fetch_pages(
    source: Source,
    ctx: RunContext,
    urls: list[str],
    sink: list[HttpResult | FetchError],
    on_page: Callable[[int, HttpResult | FetchError], None] | None = None,
) -> int:
    """Fetch the article pages of new entries, concurrently, within the run's bounds;
    ``on_page(i, result)`` as each arrives."""
    sink.extend(ctx.fetcher.get_many(urls, source=source.name, on_result=on_page))
    return len(sink)


def _not_html(res: HttpResult) -> str | None:
    """The content type of a page that is neither HTML nor XML (None when it is either)."""
    ctype = res.headers.get("content-type", "text/html").lower()
    return ctype if "html" not in ctype and "xml" not in ctype and ctype.strip() else None


@task(name="extract", task_run_name="extract-{source.name}", cache_policy=NO_CACHE)
def extract_pages(
    source: Source,
    ctx: RunContext,
    extraction: PendingExtraction,
    sink: list[Extracted],
) -> int:
    """Collect Trafilatura's results for a batch from the run's worker processes."""
    sink.extend(extraction())
    return len(sink)


@task(name="load", task_run_name="load-{source.name}", cache_policy=NO_CACHE)
def load_batch(
    source: Source,
    ctx: RunContext,
    linked: list[tuple[Candidate, str]],
    articles: list[Article],
    errors: list[ItemError],
) -> tuple[int, int, int]:
    """Load one batch into the warehouse in one transaction: (new articles, duplicates, errors)."""
    r = ctx.warehouse.load_batch(ctx.run_id, linked, articles, errors)
    return r.new_articles, r.duplicates, r.errors


@task(name="cluster-stories", task_run_name="cluster-stories", cache_policy=NO_CACHE)
def cluster_stories(settings: Settings, wh: Warehouse) -> DedupResult:
    """Near-duplicates and story clusters for every article not yet clustered."""
    logger = get_run_logger()
    r = cluster_pending(wh, settings)
    logger.info(
        "clustered articles=%d near_duplicates=%d stories_touched=%d seconds=%s",
        r.articles, r.near_duplicates, r.stories_touched,
        {k: round(v, 2) for k, v in r.seconds.items()},
    )  # fmt: skip
    return r


# -- one source, batch by batch --------------------------------------------------------------
def _fetch_pages_for(source: Source, ctx: RunContext) -> bool:
    return ctx.settings.fetch.fetch_pages if source.fetch_pages is None else source.fetch_pages


@dataclass
class _Batch:
    """A batch between its two halves: planned, pages fetched, extraction under way."""

    linked: list[tuple[Candidate, str]]
    existing: set[str]
    ids: dict[str, str]
    todo: list[Candidate]
    errors: list[ItemError]
    problem_of: dict[str, str]
    jobs: list[Candidate]
    extraction: PendingExtraction | None


def prepare_batch(
    source: Source, ctx: RunContext, batch: list[Candidate], out: SourceOutcome
) -> _Batch | None:
    """First half: which entries are new, fetch their pages, start their extraction."""
    # The same entry listed twice in one feed counts once.
    batch = list({c.entry_key: c for c in reversed(batch)}.values())[::-1]
    ids_all = {c.entry_key: provisional_article_id(c) for c in batch}
    known, existing = ctx.warehouse.plan_batch(
        source.name, list(ids_all), list(set(ids_all.values()))
    )
    new = [c for c in batch if c.entry_key not in known]
    if not new:
        return None
    ids = {c.entry_key: ids_all[c.entry_key] for c in new}
    linked = [(c, ids[c.entry_key]) for c in new]
    # Only entries whose article is new need work; the rest are linked to what is there.
    todo = [c for c in new if ids[c.entry_key] not in existing]
    todo = list({ids[c.entry_key]: c for c in reversed(todo)}.values())[::-1]
    errors: list[ItemError] = []
    html_of: dict[str, bytes | str] = {}  # raw bytes: the workers decode them
    problem_of: dict[str, str] = {}
    want_pages = _fetch_pages_for(source, ctx)
    # Pages are fetched for feed entries only: files and JSONL lines bring their own text.
    to_fetch = [
        c
        for c in todo
        if want_pages
        and c.fallback_origin in ("feed_content", "feed_summary", "none")
        and c.html is None
        and c.url
        and c.url.startswith(("http://", "https://"))
    ]
    n_inline = sum(1 for c in todo if c.html is not None)
    # Pages go to the workers as they arrive, not once the whole batch is in.
    stream = ctx.extractor.stream(len(to_fetch) + n_inline)
    if to_fetch:
        t0 = time.perf_counter()
        results: list[HttpResult | FetchError] = []
        urls = [c.url for c in to_fetch if c.url]

        def on_page(i: int, res: HttpResult | FetchError) -> None:
            if stream is not None and isinstance(res, HttpResult) and _not_html(res) is None:
                stream.add(to_fetch[i].entry_key, res.body, to_fetch[i].url)

        fetch_pages(source, unwalked(ctx), unwalked(urls), unwalked(results), on_page)
        for c, res in zip(to_fetch, results, strict=True):
            item = c.url or c.entry_key
            if isinstance(res, FetchError):
                problem_of[c.entry_key] = f"page fetch failed: {res.message}"
                errors.append(ItemError(source.name, item, "fetch", res.reason, res.message))
                continue
            out.pages_fetched += 1
            ctype = _not_html(res)
            if ctype is not None:
                problem_of[c.entry_key] = f"page is not HTML ({ctype})"
                errors.append(ItemError(source.name, item, "fetch", "not_html", ctype))
                continue
            if stream is None:
                html_of[c.entry_key] = res.body
        _release(results, urls)
        out.timed("fetch", t0)
    for c in todo:
        if c.html is not None:
            if stream is None:
                html_of[c.entry_key] = c.html
            else:
                stream.add(c.entry_key, c.html, c.url)
    extraction: PendingExtraction | None
    if stream is not None:
        by_key = {c.entry_key: c for c in todo}
        jobs = [by_key[k] for k in stream.keys]
        extraction = stream.close()
    else:
        jobs = [c for c in todo if c.entry_key in html_of]
        extraction = (
            ctx.extractor.submit([(html_of[c.entry_key], c.url) for c in jobs]) if jobs else None
        )
    # The pool holds the pages until they are extracted; nothing else here needs them.
    return _Batch(linked, existing, ids, todo, errors, problem_of, jobs, extraction)


def finish_batch(source: Source, ctx: RunContext, b: _Batch, out: SourceOutcome) -> None:
    """Second half: collect the extraction, build the articles, load them."""
    extracted: dict[str, Extracted] = {}
    if b.extraction is not None:
        t0 = time.perf_counter()
        results_x: list[Extracted] = []
        extract_pages(source, unwalked(ctx), b.extraction, unwalked(results_x))
        out.timed("extract", t0)
        extracted = {c.entry_key: x for c, x in zip(b.jobs, results_x, strict=True)}
        _release(results_x)
    now = datetime.now(UTC)
    articles: list[Article] = []
    built: set[str] = set()
    errors = b.errors
    for c in b.todo:
        x = extracted.get(c.entry_key)
        if x is not None and x.text is None:
            errors.append(
                ItemError(source.name, c.location or c.url or c.entry_key, "extract",
                          (x.error or "no_text").split(":")[0], x.error or "")
            )  # fmt: skip
        art = build_article(
            c,
            x,
            fetched_at=now,
            page_z=x.page_z if x is not None else None,
            page_problem=b.problem_of.get(c.entry_key),
            extractor_version=EXTRACTOR_VERSION,
        )
        if art is None:
            errors.append(
                ItemError(source.name, c.location or c.url or c.entry_key, "extract", "no_text",
                          b.problem_of.get(c.entry_key) or (x.error if x else None)
                          or "the entry has no text and no page to extract")
            )  # fmt: skip
            continue
        articles.append(art)
        built.add(b.ids[c.entry_key])
    # Entries whose article could not be built (no text at all) are not loaded: a later run
    # retries them.
    linked = [(c, aid) for c, aid in b.linked if aid in b.existing or aid in built]
    t0 = time.perf_counter()
    n_new, n_dup, n_err = load_batch(
        source, unwalked(ctx), unwalked(linked), unwalked(articles), unwalked(errors)
    )
    _release(linked, articles, errors)
    out.timed("load", t0)
    if ctx.on_loaded is not None and n_new:
        ctx.on_loaded(n_new)
    out.new_articles += n_new
    out.duplicates += n_dup
    out.errors += n_err


def process_batches(
    source: Source, ctx: RunContext, batches: Iterable[list[Candidate]], out: SourceOutcome
) -> None:
    """Double-buffered: while batch k is extracted (worker processes) and loaded, the pages of
    batch k+1 are fetched and queued for extraction, so the workers never wait."""
    pending: _Batch | None = None
    for batch in batches:
        prepared = prepare_batch(source, ctx, batch, out)
        if pending is not None:
            finish_batch(source, ctx, pending, out)
        pending = prepared
    if pending is not None:
        finish_batch(source, ctx, pending, out)


def _file_batches(
    source: Source, ctx: RunContext, out: SourceOutcome, only: set[Path] | None
) -> Iterator[list[Candidate]]:
    """Read a folder in batches; pages and texts already loaded are not read again.

    ``only``: read just these files (a watched inbox's new files), if they are in the folder.
    """
    assert source.path is not None
    root = source.path.resolve()
    size = ctx.settings.extract.batch_size
    paths = list(list_files(source.name, source.path, source.glob))
    if only is not None:
        paths = [p for p in paths if p.resolve() in only]
    out.entries = 0
    single = [p for p in paths if p.suffix.lower() in {".html", ".htm", ".txt", ".md"}]
    keys = {p: _path_key(p) for p in single}
    known: set[str] = set()
    for i in range(0, len(single), 5000):
        chunk = [keys[p] for p in single[i : i + 5000]]
        known |= ctx.warehouse.known_entries(source.name, chunk)
    todo = [p for p in paths if p not in keys or keys[p] not in known]
    out.entries += len(paths) - len(todo)
    for i in range(0, len(todo), size):
        scan = FileScan()
        for p in todo[i : i + size]:
            read_file(source.name, p, root, ctx.settings.fetch.max_bytes, scan)
        out.nbytes += scan.nbytes
        out.entries += len(scan.candidates)
        out.warnings.extend(scan.warnings)
        if scan.errors:
            ctx.warehouse.record_item_errors(ctx.run_id, scan.errors)
            out.errors += len(scan.errors)
        yield from chunked(scan.candidates, size)


def _path_key(p: Path) -> str:
    canonical = canonicalize_url(p.resolve().as_uri())
    return entry_key(None, canonical, str(p))[0]


@task(name="source", task_run_name="source-{source.name}", cache_policy=NO_CACHE)
def ingest_source(
    source: Source, ctx: RunContext, only: list[str] | None = None, force: bool = False
) -> SourceOutcome:
    """Run one source end to end and record its outcome; a failure is recorded, not raised.

    A feed is not fetched before the time its server asked for (or its failure backoff) unless
    ``force``; ``only`` restricts a files source to those files.
    """
    logger = get_run_logger()
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    out = SourceOutcome(source=source.name)
    fs = ctx.settings.fetch
    etag = last_modified = None
    next_at: datetime | None = None
    next_reason: str | None = None
    state: dict[str, Any] = {}
    try:
        batches: Iterable[list[Candidate]]
        if source.kind == "feed":
            state = ctx.warehouse.source_state(source.name)
            if state.get("location") not in (None, source.url):
                state = {}  # the URL changed: the old validators mean nothing to the new server
            due = state.get("next_fetch_at")
            if due is not None and started < due and not force:
                out.status = "deferred"
                logger.info(
                    "not due source=%s until=%s reason=%s",
                    source.name, due.isoformat(), state.get("next_fetch_reason"),
                )  # fmt: skip
                ctx.warehouse.record_fetch(
                    ctx.run_id, source.name, started_at=started, status="deferred",
                    error=f"not due until {due.isoformat()} ({state.get('next_fetch_reason')})",
                )  # fmt: skip
                return out
            fetch = fetch_feed.with_options(
                retries=fs.retries,
                retry_delay_seconds=[fs.retry_backoff * 2**i for i in range(fs.retries)],
                retry_condition_fn=_retry_transient,
            )
            t_fetch = time.perf_counter()
            listing = fetch(source, unwalked(ctx), state)
            out.timed("fetch", t_fetch)
            out.http_status = listing.result.status
            out.nbytes = len(listing.result.body)
            out.entries = len(listing.candidates)
            if listing.result.not_modified:
                out.status = "not_modified"
            if listing.warning:
                out.warnings.append(listing.warning)
            etag, last_modified = listing.result.etag, listing.result.last_modified
            next_at, next_reason = next_fetch_after_success(
                listing.result.headers, listing.ttl_minutes, started, fs.max_server_delay
            )
            batches = chunked(listing.candidates, ctx.settings.extract.batch_size)
        else:
            wanted = {Path(p).resolve() for p in only} if only is not None else None
            batches = _file_batches(source, ctx, out, wanted)
        process_batches(source, ctx, batches, out)
    except SourceError as exc:
        out.status, out.error = "error", exc.message
        if isinstance(exc, FetchError) and exc.status:
            out.http_status = exc.status
        if source.kind == "feed":
            failures = int(state.get("consecutive_failures") or 0) + 1
            retry_after = exc.retry_after if isinstance(exc, FetchError) else None
            next_at, next_reason = next_fetch_after_failure(
                failures, retry_after, started, fs.failure_backoff, fs.failure_backoff_max
            )
        logger.error(
            "source failed source=%s reason=%s error=%s", source.name, exc.reason, exc.message
        )
    except Exception as exc:
        logger.critical("unexpected failure source=%s error=%r", source.name, exc)
        ctx.warehouse.record_fetch(
            ctx.run_id, source.name, started_at=started, status="error",
            error=f"unexpected {type(exc).__name__}: {exc}", nbytes=out.nbytes,
            entries=out.entries, new_articles=out.new_articles, duplicates=out.duplicates,
            errors=out.errors, pages_fetched=out.pages_fetched,
        )  # fmt: skip
        raise
    out.seconds = time.perf_counter() - t0
    ctx.warehouse.record_fetch(
        ctx.run_id,
        source.name,
        started_at=started,
        status=out.status,
        http_status=out.http_status,
        nbytes=out.nbytes,
        entries=out.entries,
        new_articles=out.new_articles,
        duplicates=out.duplicates,
        errors=out.errors,
        pages_fetched=out.pages_fetched,
        error=out.error,
        warning="; ".join(out.warnings)[:2000] or None,
        etag=etag,
        last_modified=last_modified,
        next_fetch_at=next_at,
        next_fetch_reason=next_reason,
    )
    _emit_outcome(ctx, source, out, state)
    if out.status != "error":
        logger.info(
            "source done source=%s status=%s entries=%d new=%d duplicates=%d errors=%d "
            "pages=%d seconds=%.2f",
            source.name, out.status, out.entries, out.new_articles, out.duplicates,
            out.errors, out.pages_fetched, out.seconds,
        )  # fmt: skip
    return out


ARTICLES_LOADED = "newsflow.articles.loaded"
SOURCE_FAILED = "newsflow.source.failed"


def _emit_outcome(
    ctx: RunContext, source: Source, out: SourceOutcome, state: dict[str, Any]
) -> None:
    """``newsflow.articles.loaded`` after a load, ``newsflow.source.failed`` after a failure."""
    resource = {
        "prefect.resource.id": f"newsflow.source.{source.name}",
        "prefect.resource.name": source.name,
        "newsflow.source.kind": source.kind,
    }
    payload: dict[str, Any] = {
        "source": source.name,
        "run_id": ctx.run_id,
        "entries": out.entries,
        "new_articles": out.new_articles,
        "duplicates": out.duplicates,
        "errors": out.errors,
    }
    if out.status == "error":
        failures = int(state.get("consecutive_failures") or 0) + 1
        # As a label, automations can match it: "fail three runs in a row" is failures == 3.
        resource["newsflow.consecutive_failures"] = str(failures)
        emit_event(
            SOURCE_FAILED,
            resource=resource,
            payload=payload | {"error": out.error, "consecutive_failures": failures},
        )
    elif out.new_articles or out.duplicates:
        emit_event(ARTICLES_LOADED, resource=resource, payload=payload)
