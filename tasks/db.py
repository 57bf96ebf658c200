"""The warehouse: the only module that talks to DuckDB.

One writer. DuckDB lets one process open a file read-write (or many read-only), so the writer
opens the file only for the length of one operation (a batch load, a run record), holds a
thread lock while doing so, and never keeps a transaction open across network I/O. Readers
(``newsflow sql``, ``search``) open read-only connections between those operations; a writer
that finds the file busy waits, up to ``lock_timeout``, then fails with a clear message.

Loads are idempotent: rows are keyed (``entries`` by source and entry key, ``articles`` by
article id) and inserted by anti-join from a staged Arrow batch, so running the same input
twice leaves the same rows.
"""

from __future__ import annotations

import glob
import os
import threading
import time
import zlib
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from operator import attrgetter
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from config.settings import WarehouseSettings
from tasks.core.models import Article, Candidate, ItemError

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "warehouse" / "migrations"


class WarehouseBusyError(RuntimeError):
    """Another process holds the warehouse file for writing."""


def fts_extension_path() -> str:
    """The fts extension shipped by the ``duckdb-extension-fts`` package (loaded offline)."""
    import duckdb_extension_fts

    base = os.path.dirname(duckdb_extension_fts.__file__)
    found = glob.glob(
        os.path.join(base, "extensions", f"v{duckdb.__version__}", "*.duckdb_extension")
    )
    found = found or glob.glob(os.path.join(base, "extensions", "*", "fts.duckdb_extension"))
    if not found:
        raise RuntimeError(f"fts extension not found under {base}")
    return found[0]


_Config = dict[str, str | bool | int | float | list[str]]
_DUCKDB_CONFIG: _Config = {
    # Never reach for the network: extensions come from the PyPI package only.
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}


# The checkpoint that ends each short write operation appends the operation's rows as row
# groups of their own and merges nothing ("vacuum"): merging rewrites the last, big row group
# of `articles` (1.3 s CPU at 2.3 kB an article, every few batches), the load's largest cost.
# The small row groups are merged by the checkpoints of :meth:`Warehouse.session`, which keep
# DuckDB's vacuum (the clustering pass ends a session every few batches), and by a run's end
# once enough writes have piled up; both under ``MERGE_MEMORY``. A commit bigger than
# the checkpoint threshold checkpoints at once and skips the write-ahead log (written once).
_WRITER_SETTINGS = "SET max_vacuum_tasks = 0; SET checkpoint_threshold = '4MB'"

MERGE_MEMORY = "256MB"
"""DuckDB's memory limit for a checkpoint that merges row groups. At DuckDB's default limit
(80 % of RAM) the merge keeps every block it reads cached: merging the 100 row groups each of
20k pages' ``articles``, ``pages`` and ``entries`` took a process from 94 MB to 1.5 GB
(3.3 s); under 256MB it peaked at 342 MB (3.1 s), under 128MB at 206 MB (4.1 s), and under
64MB the checkpoint failed (a fatal error: a block could not be pinned)."""


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text or "conflicting" in text or "being used" in text


def open_connection(
    path: Path,
    *,
    read_only: bool,
    lock_timeout: float = 30.0,
    fts: bool = True,
    memory_limit: str | None = None,
) -> duckdb.DuckDBPyConnection:
    """Open the DuckDB file, waiting while another process holds it.

    ``fts`` loads the fts extension (for ``stem``, which search needs); loading it costs about
    0.1 s, so the writer's short operations go without.
    """
    deadline = time.monotonic() + lock_timeout
    delay = 0.02
    while True:
        try:
            config: _Config = dict(_DUCKDB_CONFIG)
            if memory_limit is not None:
                config["memory_limit"] = memory_limit
            con = duckdb.connect(str(path), read_only=read_only, config=config)
            break
        except duckdb.IOException as exc:
            if not _is_lock_error(exc) or time.monotonic() >= deadline:
                if _is_lock_error(exc):
                    raise WarehouseBusyError(
                        f"{path}: the warehouse is in use by another process "
                        f"(waited {lock_timeout:g}s): {exc}"
                    ) from exc
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
    if fts:
        _load_fts(con)
    return con


@dataclass(frozen=True)
class LoadResult:
    new_entries: int
    new_articles: int
    duplicates: int
    errors: int


def _now() -> datetime:
    return datetime.now(UTC)


class Warehouse:
    """The newsflow warehouse file. Thread-safe; one writer per process."""

    def __init__(
        self,
        path: Path | str,
        *,
        lock_timeout: float = 60.0,
        memory_limit: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.lock_timeout = lock_timeout
        self.memory_limit = memory_limit
        self._lock = threading.RLock()
        self._session: duckdb.DuckDBPyConnection | None = None

    @classmethod
    def configured(cls, settings: WarehouseSettings, *, lock_timeout: float = 60.0) -> Warehouse:
        """The warehouse the config's ``[warehouse]`` section names, with its settings."""
        return cls(settings.path, lock_timeout=lock_timeout, memory_limit=settings.memory_limit)

    # -- connections ----------------------------------------------------------------------
    @contextmanager
    def writer(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection for one operation, under the process-wide write lock.

        Inside :meth:`session` the session's connection is reused (no reopening, and no
        checkpoint per operation); otherwise the file is opened for this operation only.
        """
        with self._lock:
            if self._session is not None:
                yield self._session
                return
            con = self._open_read_write()
            try:
                con.execute(_WRITER_SETTINGS)
                yield con
            finally:
                con.close()

    @contextmanager
    def session(self) -> Iterator[None]:
        """Keep one writer connection open for a burst of operations (a bulk load).

        Commits then only append to the write-ahead log; the checkpoint that folds it into
        the file runs once, when the session ends. Readers wait for the session to end, so
        use it for bulk work, not for a long run.
        """
        with self._lock:
            if self._session is not None:
                yield
                return
            con = self._open_read_write()
            con.execute("SET checkpoint_threshold = '1GB'")
            self._session = con
        try:
            yield
        finally:
            with self._lock:
                self._session = None
                try:
                    self._merge_row_groups(con)
                finally:
                    con.close()

    def _merge_row_groups(self, con: duckdb.DuckDBPyConnection) -> None:
        """A checkpoint that merges the small row groups (DuckDB's vacuum, back on if the
        writer's settings had turned it off), under ``MERGE_MEMORY``."""
        con.execute("RESET max_vacuum_tasks")
        with self.capped(con, MERGE_MEMORY):
            con.execute("CHECKPOINT")

    def capped(self, con: duckdb.DuckDBPyConnection, limit: str) -> AbstractContextManager[None]:
        """A block of ``con``'s under DuckDB memory limit ``limit`` (see :func:`capped_memory`),
        unless ``warehouse.memory_limit`` is set: the user's own limit then holds."""
        return nullcontext() if self.memory_limit is not None else capped_memory(con, limit)

    def _open_read_write(self) -> duckdb.DuckDBPyConnection:
        """The file opened for writing (created, with its folder, if new): for :meth:`writer`
        and :meth:`session`, under the write lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return open_connection(
            self.path,
            read_only=False,
            lock_timeout=self.lock_timeout,
            fts=False,
            memory_limit=self.memory_limit,
        )

    @contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection (never writes, never holds the writer for long)."""
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no warehouse yet; run `newsflow run` first")
        with self._lock:
            con = open_connection(
                self.path,
                read_only=True,
                lock_timeout=self.lock_timeout,
                memory_limit=self.memory_limit,
            )
        try:
            yield con
        finally:
            con.close()

    # -- schema ---------------------------------------------------------------------------
    def migrate(self, directory: Path = MIGRATIONS_DIR) -> list[str]:
        """Apply the numbered migrations not yet applied, each in its own transaction."""
        applied_now: list[str] = []
        with self.writer() as con:
            con.execute(
                "CREATE TABLE IF NOT EXISTS _migrations "
                "(name TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)"
            )
            done = {r[0] for r in con.execute("SELECT name FROM _migrations").fetchall()}
            todo = [
                f
                for f in sorted(directory.glob("[0-9][0-9][0-9][0-9]_*.sql"))
                if f.name not in done
            ]
            if todo:
                _load_fts(con)  # the search macros call its ``stem``
            for f in todo:
                con.execute("BEGIN")
                try:
                    con.execute(f.read_text(encoding="utf-8"))
                    con.execute("INSERT INTO _migrations VALUES (?, ?)", [f.name, _now()])
                    con.execute("COMMIT")
                except Exception:
                    con.execute("ROLLBACK")
                    raise
                applied_now.append(f.name)
        return applied_now

    # -- sources and runs -----------------------------------------------------------------
    def register_sources(self, sources: Sequence[tuple[str, str, str]]) -> None:
        """Insert or update ``(name, kind, location)`` rows, keeping their fetch state."""
        with self.writer() as con:
            for name, kind, location in sources:
                con.execute(
                    "INSERT INTO sources (name, kind, location) VALUES (?, ?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, "
                    "location = excluded.location",
                    [name, kind, location],
                )

    def source_state(self, name: str) -> dict[str, Any]:
        """A source's fetch state: validators, failures in a row, when it may be fetched."""
        cols = ["etag", "last_modified", "location", "consecutive_failures", "next_fetch_at",
                "next_fetch_reason"]  # fmt: skip
        with self.writer() as con:
            row = con.execute(
                f"SELECT {', '.join(cols)} FROM sources WHERE name = ?", [name]
            ).fetchone()
        if row is None:
            return dict.fromkeys(cols) | {"consecutive_failures": 0}
        return dict(zip(cols, row, strict=True))

    def start_run(self, run_id: str, name: str | None, started_at: datetime) -> None:
        with self.writer() as con:
            con.execute(
                "INSERT INTO runs (run_id, flow_run_name, started_at, status) "
                "VALUES (?, ?, ?, 'running') ON CONFLICT (run_id) DO NOTHING",
                [run_id, name, started_at],
            )

    def finish_run(
        self, run_id: str, status: str, counts: dict[str, int], failed: list[str]
    ) -> None:
        with self.writer() as con:
            con.execute(
                "UPDATE runs SET ended_at = ?, status = ?, sources = ?, entries = ?, "
                "new_articles = ?, duplicates = ?, failures = ?, failed_sources = ? "
                "WHERE run_id = ?",
                [
                    _now(),
                    status,
                    counts.get("sources", 0),
                    counts.get("entries", 0),
                    counts.get("new_articles", 0),
                    counts.get("duplicates", 0),
                    counts.get("failures", 0),
                    failed,
                    run_id,
                ],
            )
            if _count_write(con) >= _MERGE_AFTER_WRITES:
                # Merge the small row groups of the operations before this one (once per so
                # many writes, not at every one).
                con.execute("UPDATE writer_state SET value = 0 WHERE key = 'writes_since_merge'")
                self._merge_row_groups(con)

    def record_fetch(
        self,
        run_id: str,
        source: str,
        *,
        started_at: datetime,
        status: str,
        http_status: int | None = None,
        nbytes: int = 0,
        entries: int = 0,
        new_articles: int = 0,
        duplicates: int = 0,
        errors: int = 0,
        pages_fetched: int = 0,
        error: str | None = None,
        warning: str | None = None,
        etag: str | None = None,
        last_modified: str | None = None,
        next_fetch_at: datetime | None = None,
        next_fetch_reason: str | None = None,
    ) -> None:
        """Record one source's outcome in ``fetches`` and its health in ``sources``.

        A ``deferred`` source (not due yet) only gets its ``fetches`` row.
        """
        now = _now()
        with self.writer() as con:
            con.execute("BEGIN")
            con.execute(
                "INSERT OR REPLACE INTO fetches VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    run_id, source, started_at, now, status, http_status, nbytes, entries,
                    new_articles, duplicates, errors, pages_fetched, error, warning,
                ],
            )  # fmt: skip
            _count_write(con)
            if status == "deferred":
                con.execute("COMMIT")
                return
            ok = status != "error"
            con.execute(
                """
                UPDATE sources SET
                    last_fetch_at = ?, last_status = ?, last_http_status = ?, last_error = ?,
                    last_ok_at = CASE WHEN ? THEN ? ELSE last_ok_at END,
                    consecutive_failures = CASE WHEN ? THEN 0 ELSE consecutive_failures + 1 END,
                    etag = CASE WHEN ? THEN coalesce(?, etag) ELSE etag END,
                    last_modified = CASE WHEN ? THEN coalesce(?, last_modified)
                                         ELSE last_modified END,
                    entries_total = entries_total + ?,
                    articles_total = articles_total + ?,
                    duplicates_total = duplicates_total + ?,
                    errors_total = errors_total + ?,
                    next_fetch_at = ?, next_fetch_reason = ?
                WHERE name = ?
                """,
                [
                    now, status, http_status, error, ok, now, ok, ok, etag, ok, last_modified,
                    entries, new_articles, duplicates, errors + (0 if ok else 1),
                    next_fetch_at, next_fetch_reason, source,
                ],
            )  # fmt: skip
            con.execute("COMMIT")

    # -- entries and articles -------------------------------------------------------------
    def known_entries(self, source: str, keys: Sequence[str]) -> set[str]:
        """Which of these entry keys the source has listed before."""
        if not keys:
            return set()
        with self.writer() as con:
            return _known_keys(con, source, keys)

    def plan_batch(
        self, source: str, keys: Sequence[str], article_ids: Sequence[str]
    ) -> tuple[set[str], set[str]]:
        """Which entry keys the source listed before, and which articles exist (one connection)."""
        with self.writer() as con:
            known = _known_keys(con, source, keys)
            with _staged(con, "staged_ids", {"article_id": article_ids}):
                existing = con.execute(
                    "SELECT article_id FROM articles JOIN staged_ids USING (article_id)"
                ).fetchall()
        return known, {r[0] for r in existing}

    def load_batch(
        self,
        run_id: str,
        linked: Sequence[tuple[Candidate, str]],
        articles: Sequence[Article],
        errors: Sequence[ItemError],
    ) -> LoadResult:
        """Load one batch in one transaction.

        ``linked`` are new entries with the article id they point at; ``articles`` the new
        articles. Entries whose article was brought by another entry, and new articles whose
        canonical URL or text repeats an existing article, get a ``duplicates`` row.

        One scan of ``articles`` finds what the batch needs to know (which of its articles
        exist, who brought the articles its entries point at, the originals its URLs and
        hashes repeat); the rows the tables lack are then appended as they are, with no
        anti-join over the big tables. Runs on one DuckDB thread: the statements are small,
        and a second thread cost twice the CPU on this machine for no gain.
        """
        now = _now()
        art_tbl = _articles_table(articles, run_id)
        ent_tbl = _entries_table(linked, now, run_id)
        with self.writer() as con, single_thread(con):
            con.execute("BEGIN")
            try:
                con.register("staged_articles", art_tbl)
                con.register("staged_entries", ent_tbl)
                found = _lookup_articles(con)
                new_art = _missing(
                    _first_per_key(art_tbl, ("article_id",)), ("article_id",), found.ids
                )
                new_articles = _append(con, "articles", new_art)
                new_ent = _first_per_key(ent_tbl, ("source", "entry_key"))
                new_entries = _append(
                    con,
                    "entries",
                    _missing(new_ent, ("source", "entry_key"), _existing_entries(con)),
                )
                dup_rows = _find_duplicates(con, art_tbl, ent_tbl, new_art, found, now, run_id)
                if dup_rows:
                    con.register("staged_dups", pa.Table.from_pylist(dup_rows))
                    con.execute(
                        "INSERT INTO duplicates SELECT * FROM staged_dups s WHERE NOT EXISTS "
                        "(SELECT 1 FROM duplicates t WHERE t.source = s.source "
                        "AND t.entry_key = s.entry_key)"
                    )
                pages = [a for a in articles if a.page_z is not None]
                if pages:
                    pages_tbl = pa.table(
                        {
                            "article_id": pa.array([a.article_id for a in pages], pa.string()),
                            "url": pa.array([a.url for a in pages], pa.string()),
                            "html": pa.nulls(len(pages), pa.string()),
                            "fetched_at": pa.array([a.fetched_at for a in pages], _UTC_US),
                            "extractor_version": pa.array(
                                [a.extractor_version for a in pages], pa.string()
                            ),
                            "html_zlib": pa.array([a.page_z for a in pages], pa.binary()),
                        }
                    )
                    pages_tbl = _first_per_key(pages_tbl, ("article_id",))
                    con.register("staged_pages", pages_tbl)
                    stored = con.execute(
                        "SELECT p.article_id FROM pages p SEMI JOIN staged_pages s "
                        "ON p.article_id = s.article_id"
                    ).fetchall()
                    _append(
                        con,
                        "pages",
                        _missing(pages_tbl, ("article_id",), {(r[0],) for r in stored}),
                    )
                _insert_item_errors(con, run_id, errors, now)
                _count_write(con)
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise
        # New articles that copy another (by canonical URL or text) count as duplicates only;
        # an entry whose article another entry brought is a duplicate, its article no copy.
        inserted = set(new_art.column("article_id").to_pylist())
        copies = {
            r["article_id"]
            for r in dup_rows
            if r["article_id"] in inserted and r["article_id"] != r["duplicate_of"]
        }
        return LoadResult(
            new_entries=new_entries,
            new_articles=new_articles - len(copies),
            duplicates=len(dup_rows),
            errors=len(errors),
        )

    def record_item_errors(self, run_id: str, errors: Sequence[ItemError]) -> None:
        if not errors:
            return
        with self.writer() as con:
            _insert_item_errors(con, run_id, errors, _now())

    def search_index_stale(self) -> bool:
        """True when some article is not in the full-text index yet."""
        with self.writer() as con:
            return _count(con, "articles") != _count(con, "search_docs")

    def refresh_search_index(self, *, rebuild: bool = False, compact: bool = False) -> int:
        """Index the articles the full-text index lacks (all of them with ``rebuild``).

        Incremental: only new articles are tokenized, in chunks of one transaction each (a
        chunk's documents, postings and term counts commit together), so an interrupted
        refresh leaves a consistent index and the next one carries on. The postings of small
        refreshes are sorted by term once enough have piled up (or now, with ``compact``), and
        sorted runs are merged as they pile up (all into one with ``compact``; see
        :func:`_merge_runs`). Returns how many articles were indexed.
        """
        with self.writer() as con:
            _load_fts(con)
            # A bounded cache for what spills (tokenizing, sorting): at 20k pages, the last
            # pass of the sources phase (a sort of every posting) took the run's process from
            # 790 to 1,160 MB. Deletes stay out of it (see _rewrite_postings_from).
            cap = partial(self.capped, con, INDEX_MEMORY)
            if rebuild:
                con.execute("BEGIN")
                _clear_search_index(con)
                con.execute("COMMIT")
            indexed = _count(con, "search_docs")
            new = _count(con, "articles") - indexed
            if new <= 0:
                if compact:
                    _sort_postings_tail(con, cap)
                    _merge_runs(con, cap, everything=True)
                return 0
            # A refresh this big, after a sorted index, adds sorted runs of its own (each chunk
            # is inserted in term order); smaller ones leave a tail to sort later.
            runs_of_own = new >= _SORTED_RUN_DOCS and _sorted_docs(con) == indexed
            try:
                with cap():
                    con.execute(
                        "CREATE OR REPLACE TEMP TABLE search_new AS "
                        "SELECT (SELECT coalesce(max(docid) + 1, 0) FROM search_docs) "
                        "       + row_number() OVER () - 1 AS docid, a.article_id, a.rowid AS rid "
                        "FROM articles a WHERE NOT EXISTS "
                        "(SELECT 1 FROM search_docs d WHERE d.article_id = a.article_id)"
                    )
                    bounds = con.execute("SELECT min(docid), max(docid) FROM search_new").fetchone()
                    first, last = (
                        (int(bounds[0]), int(bounds[1]))
                        if bounds and bounds[0] is not None
                        else (0, -1)
                    )
                    n = last - first + 1
                    lo = first
                    while lo <= last:
                        size = _chunk_docs(con, lo)
                        # no small last chunk: the one before takes it (1.5 times the size)
                        hi = last if last - lo < size + size // 2 else lo + size - 1
                        _index_chunk(con, lo, hi, run_of_own=runs_of_own)
                        lo = hi + 1
                if compact or last + 1 - _sorted_docs(con) >= _SORTED_RUN_DOCS:
                    _sort_postings_tail(con, cap)
                _merge_runs(con, cap, everything=compact)
            finally:
                con.execute("DROP TABLE IF EXISTS search_new")
                con.execute("DROP TABLE IF EXISTS search_chunk")
            return n

    def stored_pages(
        self, sources: Sequence[str] | None
    ) -> list[tuple[str, str | None, bytes | str]]:
        """``(article_id, url, page)`` of stored pages (raw bytes, or HTML stored decoded by
        older versions), for re-extraction."""
        only = "JOIN staged_sources USING (source)" if sources else ""
        with self.writer() as con, _staged(con, "staged_sources", {"source": sources or []}):
            rows = con.execute(
                f"SELECT p.article_id, coalesce(a.url, p.url), p.html, p.html_zlib FROM pages p "
                f"JOIN articles a USING (article_id) {only} ORDER BY p.article_id"
            ).fetchall()
        return [(aid, url, html if z is None else zlib.decompress(z)) for aid, url, html, z in rows]

    def update_texts(self, rows: Sequence[tuple[str, str, str, str]]) -> int:
        """Set ``(article_id, text, content_hash, extractor_version)``; returns rows changed."""
        if not rows:
            return 0
        with self.writer() as con:
            con.execute("BEGIN")
            con.register(
                "staged_texts",
                pa.table(
                    {
                        "article_id": [r[0] for r in rows],
                        "text": [r[1] for r in rows],
                        "content_hash": [r[2] for r in rows],
                        "extractor_version": [r[3] for r in rows],
                    }
                ),
            )
            changed = con.execute(
                "SELECT count(*) FROM staged_texts s JOIN articles a USING (article_id) "
                "WHERE a.text IS DISTINCT FROM s.text"
            ).fetchone()
            if changed and changed[0]:
                # Postings cannot drop one document's terms cheaply: the next refresh rebuilds
                # the index (re-extraction is rare and costs far more than indexing).
                _clear_search_index(con)
            con.execute(
                "UPDATE articles SET text = s.text, content_hash = s.content_hash, "
                "extractor_version = s.extractor_version, text_origin = 'page', "
                "fallback_reason = NULL "
                "FROM staged_texts s WHERE articles.article_id = s.article_id"
            )
            con.execute("COMMIT")
        return int(changed[0]) if changed else 0

    # -- reading --------------------------------------------------------------------------
    def query(
        self, sql: str, params: Sequence[Any] | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run read-only SQL; returns column names and rows."""
        with self.reader() as con:
            cur = con.execute(sql, params or [])
            cols = [d[0] for d in cur.description] if cur.description else []
            return cols, cur.fetchall()


# Write operations (each leaving small row groups) after which the end of a run merges them.
_MERGE_AFTER_WRITES = 64


def _count_write(con: duckdb.DuckDBPyConnection) -> int:
    """Count one more write operation since the last merge; returns the count."""
    row = con.execute(
        "UPDATE writer_state SET value = value + 1 WHERE key = 'writes_since_merge' RETURNING value"
    ).fetchone()
    return int(row[0]) if row else 0


@contextmanager
def _staged(
    con: duckdb.DuckDBPyConnection, name: str, columns: dict[str, Sequence[str]]
) -> Iterator[None]:
    """String columns registered as an Arrow table ``name`` for the block's queries.

    (A Python list bound as a parameter costs DuckDB 1.5 an ``import pandas`` attempt per
    element: 9.5 s per 100k.)
    """
    con.register(name, pa.table({k: pa.array(list(v), pa.string()) for k, v in columns.items()}))
    try:
        yield
    finally:
        con.unregister(name)


def _known_keys(con: duckdb.DuckDBPyConnection, source: str, keys: Sequence[str]) -> set[str]:
    if not keys:
        return set()
    with _staged(con, "staged_keys", {"entry_key": keys}):
        rows = con.execute(
            "SELECT entry_key FROM entries JOIN staged_keys USING (entry_key) WHERE source = ?",
            [source],
        ).fetchall()
    return {r[0] for r in rows}


def _insert_item_errors(
    con: duckdb.DuckDBPyConnection, run_id: str, errors: Sequence[ItemError], now: datetime
) -> None:
    if errors:
        con.executemany(
            "INSERT INTO item_errors VALUES (?,?,?,?,?,?,?)",
            [[run_id, e.source, e.item, e.stage, e.reason, e.detail, now] for e in errors],
        )


_ARTICLE_COLUMNS = (
    "article_id", "source", "entry_key", "url", "canonical_url", "title", "text", "author",
    "published_at", "site_name", "language", "tags", "content_hash", "fetched_at",
    "text_origin", "fallback_reason", "extractor_version",
)  # fmt: skip
_UTC_US = pa.timestamp("us", tz="UTC")
_STRING = pa.string()


def _articles_table(articles: Sequence[Article], run_id: str) -> pa.Table:
    """The batch as an Arrow table, built column by column with declared types."""
    cols: dict[str, pa.Array] = {}
    for name in _ARTICLE_COLUMNS:
        values = list(map(attrgetter(name), articles))
        if name == "tags":
            cols[name] = pa.array(values, pa.list_(pa.string()))
        elif name in ("published_at", "fetched_at"):
            cols[name] = pa.array(values, _UTC_US)
        else:
            cols[name] = pa.array(values, pa.string())
    cols["run_id"] = pa.repeat(pa.scalar(run_id, pa.string()), len(articles))
    return pa.table(cols)


def _entries_table(linked: Sequence[tuple[Candidate, str]], now: datetime, run_id: str) -> pa.Table:
    cands = [c for c, _ in linked]

    def col(name: str, kind: pa.DataType = _STRING) -> pa.Array:
        return pa.array(list(map(attrgetter(name), cands)), kind)

    return pa.table(
        {
            "source": col("source"),
            "entry_key": col("entry_key"),
            "key_kind": col("key_kind"),
            "guid": col("guid"),
            "url": col("url"),
            "canonical_url": col("canonical_url"),
            "title": col("title"),
            "published_at": col("published_at", _UTC_US),
            "article_id": pa.array([a for _, a in linked], pa.string()),
            "first_seen_at": pa.repeat(pa.scalar(now, _UTC_US), len(linked)),
            "run_id": pa.repeat(pa.scalar(run_id, pa.string()), len(linked)),
        }
    )


@contextmanager
def single_thread(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Run the block's statements on one DuckDB thread, then restore the setting."""
    row = con.execute("SELECT current_setting('threads')").fetchone()
    con.execute("SET threads = 1")
    try:
        yield
    finally:
        con.execute(f"SET threads = {int(row[0]) if row else 1}")


@contextmanager
def capped_memory(
    con: duckdb.DuckDBPyConnection, limit: str, restore: str | None = None
) -> Iterator[None]:
    """Hold DuckDB to ``limit`` (such as '512MB') for the block, then back to ``restore``, or
    to its default. For long work made of small statements, which spill when they must: DuckDB
    otherwise keeps the blocks it reads cached up to its limit (80 % of RAM). Without
    ``restore``, only for a connection opened without a limit of its own (``RESET`` returns to
    DuckDB's default)."""
    con.execute(f"SET memory_limit = '{limit}'")
    try:
        yield
    finally:
        con.execute(f"SET memory_limit = '{restore}'" if restore else "RESET memory_limit")


def _first_per_key(tbl: pa.Table, keys: tuple[str, ...]) -> pa.Table:
    """The table's rows, the first one of each key only (in staged order)."""
    if tbl.group_by(list(keys), use_threads=False).aggregate([]).num_rows == tbl.num_rows:
        return tbl  # the usual case: every key once
    seen: set[tuple[Any, ...]] = set()
    keep: list[int] = []
    for i, key in enumerate(zip(*(tbl.column(k).to_pylist() for k in keys), strict=True)):
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return tbl.take(keep)


def _missing(
    tbl: pa.Table, keys: tuple[str, ...], present: Collection[tuple[Any, ...]]
) -> pa.Table:
    """The table's rows whose key is not ``present``."""
    if not present:
        return tbl
    cols = [tbl.column(k).to_pylist() for k in keys]
    mask = [key not in present for key in zip(*cols, strict=True)]
    return tbl.filter(pa.array(mask, pa.bool_()))


def _append(con: duckdb.DuckDBPyConnection, table: str, rows: pa.Table) -> int:
    """Append the rows as they are (the caller left out the keys the table holds)."""
    if rows.num_rows:
        con.register("staged_append", rows)
        try:
            con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM staged_append")
        finally:
            con.unregister("staged_append")
    return int(rows.num_rows)


def _existing_entries(con: duckdb.DuckDBPyConnection) -> set[tuple[str, str]]:
    """The ``(source, entry_key)`` of ``staged_entries`` that ``entries`` holds already."""
    rows = con.execute(
        "SELECT e.source, e.entry_key FROM entries e SEMI JOIN staged_entries s "
        "ON e.source = s.source AND e.entry_key = s.entry_key"
    ).fetchall()
    return {(r[0], r[1]) for r in rows}


@dataclass(frozen=True)
class _Found:
    """What one scan of ``articles`` (before the batch's inserts) tells a batch.

    ``owner``: the source and entry key that brought each stored article the batch names (by
    id, canonical URL or hash); ``matches``: ``(canonical_url, content_hash, article_id)`` of
    those rows, earliest fetched (then published, then id) first.
    """

    owner: dict[str, tuple[str, str]]
    matches: list[tuple[str | None, str, str]]

    @property
    def ids(self) -> set[tuple[str]]:
        return {(aid,) for aid in self.owner}


def _lookup_articles(con: duckdb.DuckDBPyConnection) -> _Found:
    """The stored articles that ``staged_articles`` / ``staged_entries`` name by id, or whose
    canonical URL or content hash a staged article repeats (one scan of ``articles``)."""
    rows = con.execute(
        """
        SELECT article_id, source, entry_key, canonical_url, content_hash
        FROM articles
        WHERE article_id IN (SELECT article_id FROM staged_articles
                             UNION ALL SELECT article_id FROM staged_entries)
           OR canonical_url IN (SELECT canonical_url FROM staged_articles)
           OR content_hash IN (SELECT content_hash FROM staged_articles)
        ORDER BY fetched_at, published_at NULLS LAST, article_id
        """
    ).fetchall()
    return _Found(
        owner={r[0]: (r[1], r[2]) for r in rows}, matches=[(r[3], r[4], r[0]) for r in rows]
    )


def _find_duplicates(
    con: duckdb.DuckDBPyConnection,
    art_tbl: pa.Table,
    ent_tbl: pa.Table,
    inserted: pa.Table,
    found: _Found,
    now: datetime,
    run_id: str,
) -> list[dict[str, Any]]:
    """Duplicate links of a batch, decided inside its transaction (so batches serialise).

    1. An entry whose article was brought by another entry: level ``canonical_url``.
    2. A new article whose page names the canonical URL of another article: ``canonical_url``.
    3. A new article whose normalised text hashes like an earlier article's: ``content_hash``.
    The earlier article is the original: already loaded, else earliest published, then id.
    ``found`` is what the warehouse held before the batch, ``inserted`` the articles the
    batch added; an entry or article with a ``duplicates`` row already gets none. Whole
    columns are compared in Arrow; Python sees only the rows that share a key.
    """
    rows: list[dict[str, Any]] = []
    if ent_tbl.num_rows:
        # Who brought each entry's article: the stored one, else the one this batch added.
        owners = pa.concat_tables(
            [
                pa.table(
                    {
                        "article_id": pa.array(list(found.owner), _STRING),
                        "o_source": pa.array([o[0] for o in found.owner.values()], _STRING),
                        "o_key": pa.array([o[1] for o in found.owner.values()], _STRING),
                    }
                ),
                inserted.select(["article_id", "source", "entry_key"]).rename_columns(
                    ["article_id", "o_source", "o_key"]
                ),
            ]
        )
        joined = ent_tbl.select(["source", "entry_key", "article_id"]).join(
            owners, "article_id", join_type="inner", use_threads=False
        )
        other = joined.filter(
            pc.or_(
                pc.not_equal(joined["source"], joined["o_source"]),
                pc.not_equal(joined["entry_key"], joined["o_key"]),
            )
        )
        if other.num_rows:
            linked = list(
                zip(
                    other["source"].to_pylist(),
                    other["entry_key"].to_pylist(),
                    other["article_id"].to_pylist(),
                    strict=True,
                )
            )
            marked = _duplicate_keys(con, [(s, k) for s, k, _ in linked])
            for source, key, aid in linked:
                if (source, key) not in marked:
                    rows.append(_dup(source, key, aid, aid, "canonical_url", now, run_id))
    if not art_tbl.num_rows:
        return rows
    urls, hashes = art_tbl["canonical_url"], art_tbl["content_hash"]
    # Originals already in the warehouse (before this batch), by canonical URL and by hash;
    # an article filed as a copy of another (above the canonical-URL level) is none.
    known = found.matches
    if known:
        shares = pc.or_(
            pc.fill_null(_is_in(pa.array([k[0] for k in known], _STRING), urls), False),
            _is_in(pa.array([k[1] for k in known], _STRING), hashes),
        ).to_pylist()
        staged_ids = set(art_tbl["article_id"].to_pylist())
        known = [k for k, share in zip(known, shares, strict=True) if share]
        known = [k for k in known if k[2] not in staged_ids]
    if known:
        copies = _copies(con, [aid for _, _, aid in known])
        known = [k for k in known if k[2] not in copies]
    by_url: dict[str, str] = {}
    by_hash: dict[str, str] = {}
    for canon, chash, aid in known:
        if canon:
            by_url.setdefault(canon, aid)
        by_hash.setdefault(chash, aid)
    # Only an article sharing its canonical URL or hash with another one (staged or loaded)
    # can be, or make, a duplicate; the others are originals whatever the order.
    with_url = art_tbl.filter(pc.fill_null(pc.not_equal(urls, ""), False))
    shared_urls = _shared(with_url, "canonical_url") + list(by_url)
    shared_hashes = _shared(art_tbl, "content_hash") + list(by_hash)
    involved = pc.or_(
        pc.fill_null(_is_in(urls, pa.array(shared_urls, _STRING)), False),
        _is_in(hashes, pa.array(shared_hashes, _STRING)),
    )
    if not pc.any(involved).as_py():
        return rows
    staged = sorted(
        art_tbl.filter(involved)
        .select(
            ["article_id", "source", "entry_key", "canonical_url", "content_hash", "published_at"]
        )
        .to_pylist(),
        key=lambda r: (
            r["published_at"] is None,
            r["published_at"] or now,
            r["article_id"],
        ),
    )
    seen_ids: set[str] = set()
    for r in staged:
        if r["article_id"] in seen_ids:
            continue
        seen_ids.add(r["article_id"])
        canon, chash, aid = r["canonical_url"], r["content_hash"], r["article_id"]
        if canon and by_url.get(canon, aid) != aid:
            rows.append(
                _dup(r["source"], r["entry_key"], aid, by_url[canon], "canonical_url", now, run_id)
            )
        elif by_hash.get(chash, aid) != aid:
            rows.append(
                _dup(r["source"], r["entry_key"], aid, by_hash[chash], "content_hash", now, run_id)
            )
        else:
            if canon:
                by_url.setdefault(canon, aid)
            by_hash.setdefault(chash, aid)
    return rows


def _is_in(values: Any, value_set: Any) -> Any:
    """Which ``values`` are in ``value_set``, as SQL's ``IN``: null is in nothing."""
    return pc.is_in(values, value_set=value_set, skip_nulls=True)


def _shared(tbl: pa.Table, column: str) -> list[str]:
    """Values of ``column`` that more than one distinct article id of ``tbl`` carries."""
    counts = tbl.group_by(column, use_threads=False).aggregate([("article_id", "count_distinct")])
    return [
        str(v)
        for v in counts.filter(pc.greater(counts["article_id_count_distinct"], 1))[
            column
        ].to_pylist()
    ]


def _duplicate_keys(
    con: duckdb.DuckDBPyConnection, keys: Sequence[tuple[str, str]]
) -> set[tuple[str, str]]:
    """Which of these ``(source, entry_key)`` have a ``duplicates`` row."""
    with _staged(
        con, "staged_dup_keys", {"source": [s for s, _ in keys], "entry_key": [k for _, k in keys]}
    ):
        rows = con.execute(
            "SELECT d.source, d.entry_key FROM duplicates d SEMI JOIN staged_dup_keys s "
            "ON d.source = s.source AND d.entry_key = s.entry_key"
        ).fetchall()
    return {(r[0], r[1]) for r in rows}


def _copies(con: duckdb.DuckDBPyConnection, article_ids: Sequence[str]) -> set[str]:
    """Which of these articles are filed as copies of another (a duplicates row above the
    canonical-URL level)."""
    with _staged(con, "staged_copy_ids", {"article_id": article_ids}):
        rows = con.execute(
            "SELECT DISTINCT d.article_id FROM duplicates d SEMI JOIN staged_copy_ids s "
            "ON d.article_id = s.article_id WHERE d.level <> 'canonical_url'"
        ).fetchall()
    return {r[0] for r in rows}


def _dup(
    source: str, entry_key: str, article_id: str, of: str, level: str, now: datetime, run_id: str
) -> dict[str, Any]:
    return {
        "source": source,
        "entry_key": entry_key,
        "article_id": article_id,
        "duplicate_of": of,
        "level": level,
        "score": 1.0,
        "threshold": 1.0,
        "detected_at": now,
        "run_id": run_id,
    }


def search_sql(words: str, limit: int, source: str | None = None) -> tuple[str, list[Any]]:
    """Articles ranked by BM25 relevance to ``words`` (the ``search_articles`` table macro of
    migration 0011, over the index ``refresh_search_index`` maintains), duplicates left out.

    Reads the index only (``search_docs`` carries what is shown); equal scores at the cut
    are taken in index order, and shown by id. Scores are compared to 9 places: a sum's last
    bits depend on the order threads add its terms, and equal scores must not come out in a
    different order each time. Needs a connection with the fts extension loaded (for
    ``stem``), as readers have.

    The rows shown are read by row number: ``search_docs`` holds its documents in docid order
    with no gaps (documents are appended, and only ever deleted all together), so a row's
    number is its docid plus the number of the first row. A join by docid (which reads the
    table's docid column from the first to the last docid shown) stays behind for any row the
    row numbers missed: it reads nothing when they missed none.
    """
    only = "AND docid IN (SELECT docid FROM search_docs WHERE source = ?)" if source else ""
    sql = f"""
        WITH top AS (
            SELECT docid, score FROM search_articles(?)
            WHERE docid NOT IN (
                SELECT d.docid FROM duplicates x JOIN search_docs d USING (article_id)
                WHERE x.duplicate_of <> x.article_id)
            {only}
            ORDER BY round(score, 9) DESC, docid
            LIMIT ?
        ),
        by_rowid AS (
            SELECT docid, article_id, source, published_at, title, url FROM search_docs
            WHERE rowid IN (
                SELECT docid + (SELECT rowid - docid FROM search_docs LIMIT 1) FROM top)
        ),
        shown AS (
            SELECT top.docid, top.score, d.* EXCLUDE (docid)
            FROM top JOIN by_rowid d USING (docid)
            UNION ALL
            SELECT m.docid, m.score, d.article_id, d.source, d.published_at, d.title, d.url
            FROM (SELECT * FROM top WHERE docid NOT IN (SELECT docid FROM by_rowid)) m
            JOIN search_docs d USING (docid)
        )
        SELECT article_id, round(score, 3) AS score, source, published_at, title, url
        FROM shown
        ORDER BY round(shown.score, 9) DESC, article_id
    """
    params: list[Any] = [words, *([source] if source else []), limit]
    return sql, params


# Articles tokenized per transaction by ``refresh_search_index`` (bounds its memory): about
# _INDEX_CHUNK_CHARS characters of text and _INDEX_CHUNK articles at most (a last chunk
# smaller than half of that joins the one before); _INDEX_CHUNK_FALLBACK when their lengths
# cannot be read.
_INDEX_CHUNK = 100_000
_INDEX_CHUNK_CHARS = 8_000_000
_INDEX_CHUNK_FALLBACK = 1_000
INDEX_MEMORY = "256MB"
"""DuckDB's memory limit while the search index tokenizes and sorts, unless
``warehouse.memory_limit`` is set."""


# Documents whose postings, appended in small refreshes, are sorted by term together.
_SORTED_RUN_DOCS = 20_000


_Cap = Callable[[], AbstractContextManager[None]]
"""``cap()``: a block under an operation's DuckDB memory limit (see :meth:`Warehouse.capped`)."""


def _count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    row = con.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0


def _load_fts(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"LOAD '{fts_extension_path()}'")


def _clear_search_index(con: duckdb.DuckDBPyConnection) -> None:
    """Empty the full-text index (in the caller's transaction); the next refresh rebuilds it."""
    for table in ("search_docs", "search_postings", "search_terms", "search_runs"):
        con.execute(f"DELETE FROM {table}")
    _set_sorted_docs(con, 0)


def _index_chunk(con: duckdb.DuckDBPyConnection, lo: int, hi: int, *, run_of_own: bool) -> None:
    """Tokenize the articles numbered ``lo..hi`` in ``search_new`` and add them to the index,
    in one transaction: their documents, their postings in term order (a sorted run of their
    own with ``run_of_own``) and their terms' counts. Stems and stopwords are looked up once
    per distinct word.

    The articles are read by rowid: joined on their ids alone, every article's text was read
    (a 200-article refresh of a 14k-article warehouse took 0.54 s and 194 MB, by rowid 0.33 s
    and 53 MB). A checkpoint that merges row groups moves rowids; the chunk's are then looked
    up again by id."""
    con.execute("BEGIN")
    try:
        moved = con.execute(
            "SELECT count(*) FROM search_new n WHERE n.docid BETWEEN $lo AND $hi AND NOT EXISTS "
            "(SELECT 1 FROM articles a WHERE a.rowid = n.rid AND a.article_id = n.article_id)",
            {"lo": lo, "hi": hi},
        ).fetchone()
        if moved and moved[0]:
            con.execute(
                "UPDATE search_new SET rid = a.rowid FROM articles a WHERE "
                "a.article_id = search_new.article_id AND search_new.docid BETWEEN $lo AND $hi",
                {"lo": lo, "hi": hi},
            )
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE search_chunk AS
            WITH words AS (
                SELECT docid, w, count(*) AS tf
                FROM (SELECT n.docid,
                             unnest(search_tokenize(coalesce(a.title, '') || ' ' || a.text)) AS w
                      FROM search_new n JOIN articles a
                        ON a.rowid = n.rid AND a.article_id = n.article_id
                      WHERE n.docid BETWEEN $lo AND $hi)
                WHERE w <> ''
                GROUP BY ALL
            ),
            stems AS (
                SELECT w, stem(w, 'porter') AS term
                FROM (SELECT DISTINCT w FROM words)
                WHERE w NOT IN (SELECT word FROM search_stopwords)
            )
            SELECT docid, term, sum(tf)::INTEGER AS tf FROM words JOIN stems USING (w) GROUP BY ALL
            """,
            {"lo": lo, "hi": hi},
        )
        con.execute(
            """
            INSERT INTO search_docs
            SELECT n.docid, n.article_id, coalesce(c.len, 0), a.source, a.published_at,
                   a.title, a.url
            FROM search_new n JOIN articles a USING (article_id)
            LEFT JOIN (SELECT docid, sum(tf)::INTEGER AS len FROM search_chunk GROUP BY docid) c
                USING (docid)
            WHERE n.docid BETWEEN $lo AND $hi
            ORDER BY n.docid  -- stored in docid order: a search reads its rows by row number
            """,
            {"lo": lo, "hi": hi},
        )
        con.execute(
            "INSERT INTO search_postings SELECT c.term, c.docid, c.tf, d.len "
            "FROM search_chunk c JOIN search_docs d USING (docid) "
            "WHERE d.docid BETWEEN $lo AND $hi ORDER BY c.term, c.docid",
            {"lo": lo, "hi": hi},
        )
        # Terms met before get their counts raised; new ones are appended.
        con.execute(
            "CREATE OR REPLACE TEMP TABLE search_chunk_df AS "
            "SELECT term, count(*)::INTEGER AS df FROM search_chunk GROUP BY term"
        )
        con.execute(
            "UPDATE search_terms SET df = search_terms.df + c.df "
            "FROM search_chunk_df c WHERE search_terms.term = c.term"
        )
        con.execute(
            "INSERT INTO search_terms SELECT c.term, c.df FROM search_chunk_df c "
            "WHERE NOT EXISTS (SELECT 1 FROM search_terms t WHERE t.term = c.term) ORDER BY c.term"
        )
        con.execute("DROP TABLE search_chunk_df")
        if run_of_own:
            con.execute("INSERT INTO search_runs VALUES (?, ?)", [lo, hi + 1])
            _set_sorted_docs(con, hi + 1)
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise


def _chunk_docs(con: duckdb.DuckDBPyConnection, lo: int) -> int:
    """How many articles of ``search_new``, from docid ``lo``, to tokenize in one transaction:
    about ``_INDEX_CHUNK_CHARS`` characters, by the mean length of the next 256 (read by rowid,
    a narrow range), and ``_INDEX_CHUNK`` articles at most.

    Counting articles alone bounded nothing under ``INDEX_MEMORY``: 20k real pages (170 MB of
    text) in one chunk ran out of memory on one DuckDB thread (as on a one-core machine), and
    so did 1M generated articles in chunks of 53k on two. By characters both pass, in less
    memory (rebuilding 20k real pages: 493 MB instead of 632, 100k: 503 MB instead of 720)."""
    row = con.execute(
        "SELECT avg(length(coalesce(a.title, '') || ' ' || a.text)) "
        "FROM search_new n JOIN articles a ON a.rowid = n.rid AND a.article_id = n.article_id "
        "WHERE n.docid BETWEEN $lo AND $lo + 255",
        {"lo": lo},
    ).fetchone()
    if not row or row[0] is None:  # rowids moved (a merge): the chunk looks them up again
        return _INDEX_CHUNK_FALLBACK
    return max(1, min(_INDEX_CHUNK, int(_INDEX_CHUNK_CHARS / max(1.0, float(row[0])))))


def _sorted_docs(con: duckdb.DuckDBPyConnection) -> int:
    row = con.execute("SELECT value FROM writer_state WHERE key = 'search_sorted_docs'").fetchone()
    return int(row[0]) if row else 0


def _set_sorted_docs(con: duckdb.DuckDBPyConnection, value: int) -> None:
    con.execute("UPDATE writer_state SET value = ? WHERE key = 'search_sorted_docs'", [value])


def _sort_postings_tail(con: duckdb.DuckDBPyConnection, cap: _Cap) -> None:
    """Rewrite the postings of the documents indexed since the last sort in term order, as
    one run, so that a query's scan skips its row groups but the few that hold its terms."""
    since = _sorted_docs(con)
    total = _count(con, "search_docs")
    if total <= since:
        return
    con.execute("BEGIN")
    try:
        _rewrite_postings_from(con, since, cap)
        con.execute("INSERT INTO search_runs VALUES (?, ?)", [since, total])
        _set_sorted_docs(con, total)
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise


def _merge_runs(con: duckdb.DuckDBPyConnection, cap: _Cap, *, everything: bool = False) -> None:
    """Merge the newest sorted runs into one once they amount to half the run before them (or
    all runs, with ``everything``): a query reads a term's postings in each run, so few runs
    must remain, and each posting is rewritten a few times only as the index grows (a run is
    merged again once what came after it has grown to half its size)."""
    runs = con.execute(
        "SELECT first_docid, end_docid - first_docid FROM search_runs ORDER BY first_docid"
    ).fetchall()
    start = None
    for i in range(len(runs) - 1):
        if everything or runs[i][1] < 2 * sum(size for _, size in runs[i + 1 :]):
            start = i
            break
    if start is None:
        return
    since = int(runs[start][0])
    con.execute("BEGIN")
    try:
        # Terms appended by refreshes since go to their place too (a query's lookup of its
        # terms then skips all but a row group or so). Sorted first: nothing runs under the
        # cap once the transaction has deleted rows.
        with cap():
            con.execute(
                "CREATE OR REPLACE TEMP TABLE search_terms_sorted AS "
                "SELECT * FROM search_terms ORDER BY term"
            )
        _rewrite_postings_from(con, since, cap)
        end = con.execute("SELECT max(end_docid) FROM search_runs").fetchone()
        con.execute("DELETE FROM search_runs WHERE first_docid >= ?", [since])
        con.execute("INSERT INTO search_runs VALUES (?, ?)", [since, end[0] if end else since])
        con.execute("DELETE FROM search_terms")
        con.execute("INSERT INTO search_terms SELECT * FROM search_terms_sorted")  # in order
        con.execute("DROP TABLE search_terms_sorted")
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise


def _rewrite_postings_from(con: duckdb.DuckDBPyConnection, since: int, cap: _Cap) -> None:
    """Rewrite the postings of documents ``since`` on in term order (in the caller's
    transaction). All of them: a new table takes the old one's place (no copy to hold aside).

    The sorts run under ``cap`` (they spill); a ``DELETE`` never does, nor anything after it in
    its transaction: what it holds until the commit does not spill. Emptying a 1M-article
    index under 512MB ran out of memory, and DuckDB, unable to roll back, aborted the process.
    A sorted table read whole keeps its order (DuckDB preserves insertion order), so its rows
    are inserted as they are read, without a second sort.
    """
    if since == 0:
        con.execute(
            "CREATE TABLE search_postings_merged (term TEXT NOT NULL, docid INTEGER NOT NULL, "
            "tf INTEGER NOT NULL, len INTEGER NOT NULL)"
        )
        with cap():
            con.execute(
                "INSERT INTO search_postings_merged "
                "SELECT * FROM search_postings ORDER BY term, docid"
            )
        con.execute("DROP TABLE search_postings")
        con.execute("ALTER TABLE search_postings_merged RENAME TO search_postings")
        return
    with cap():
        con.execute(
            "CREATE OR REPLACE TEMP TABLE search_tail AS "
            "SELECT * FROM search_postings WHERE docid >= ? ORDER BY term, docid",
            [since],
        )
    con.execute("DELETE FROM search_postings WHERE docid >= ?", [since])
    con.execute("INSERT INTO search_postings SELECT * FROM search_tail")  # in order
    con.execute("DROP TABLE search_tail")
