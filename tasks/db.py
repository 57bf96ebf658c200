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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

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


_DUCKDB_CONFIG = {
    # Never reach for the network: extensions come from the PyPI package only.
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text or "conflicting" in text or "being used" in text


def open_connection(
    path: Path, *, read_only: bool, lock_timeout: float = 30.0
) -> duckdb.DuckDBPyConnection:
    """Open the DuckDB file, waiting while another process holds it."""
    deadline = time.monotonic() + lock_timeout
    delay = 0.02
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only, config=dict(_DUCKDB_CONFIG))
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
    con.execute(f"LOAD '{fts_extension_path()}'")
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

    def __init__(self, path: Path | str, *, lock_timeout: float = 60.0) -> None:
        self.path = Path(path)
        self.lock_timeout = lock_timeout
        self._lock = threading.RLock()
        self._session: duckdb.DuckDBPyConnection | None = None

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
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = open_connection(self.path, read_only=False, lock_timeout=self.lock_timeout)
            try:
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
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = open_connection(self.path, read_only=False, lock_timeout=self.lock_timeout)
            con.execute("SET checkpoint_threshold = '1GB'")
            self._session = con
        try:
            yield
        finally:
            with self._lock:
                self._session = None
                try:
                    con.execute("CHECKPOINT")
                finally:
                    con.close()

    @contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection (never writes, never holds the writer for long)."""
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no warehouse yet; run `newsflow run` first")
        with self._lock:
            con = open_connection(self.path, read_only=True, lock_timeout=self.lock_timeout)
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
            for f in sorted(directory.glob("[0-9][0-9][0-9][0-9]_*.sql")):
                if f.name in done:
                    continue
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
            existing = con.execute(
                "SELECT article_id FROM articles WHERE article_id IN (SELECT unnest(?))",
                [list(article_ids)],
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
        """
        now = _now()
        art_tbl = _articles_table(articles, run_id)
        ent_tbl = _entries_table(linked, now, run_id)
        with self.writer() as con:
            con.execute("BEGIN")
            try:
                con.register("staged_articles", art_tbl)
                con.register("staged_entries", ent_tbl)
                new_articles = _insert_new(
                    con,
                    "articles",
                    "staged_articles",
                    "s.article_id = t.article_id",
                    partition="article_id",
                )
                new_entries = _insert_new(
                    con,
                    "entries",
                    "staged_entries",
                    "s.source = t.source AND s.entry_key = t.entry_key",
                    partition="source, entry_key",
                )
                dup_rows = _find_duplicates(con, art_tbl, ent_tbl, now, run_id)
                if dup_rows:
                    con.register("staged_dups", pa.Table.from_pylist(dup_rows))
                    con.execute(
                        "INSERT INTO duplicates SELECT * FROM staged_dups s WHERE NOT EXISTS "
                        "(SELECT 1 FROM duplicates t WHERE t.source = s.source "
                        "AND t.entry_key = s.entry_key)"
                    )
                pages = [a for a in articles if a.page_z is not None]
                if pages:
                    con.register(
                        "staged_pages",
                        pa.table(
                            {
                                "article_id": [a.article_id for a in pages],
                                "url": [a.url for a in pages],
                                "html": pa.nulls(len(pages), pa.string()),
                                "fetched_at": [a.fetched_at for a in pages],
                                "extractor_version": [a.extractor_version for a in pages],
                                "html_zlib": pa.array([a.page_z for a in pages], pa.binary()),
                            }
                        ),
                    )
                    _insert_new(
                        con, "pages", "staged_pages", "s.article_id = t.article_id",
                        partition="article_id",
                    )  # fmt: skip
                _insert_item_errors(con, run_id, errors, now)
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise
        staged_ids = set(art_tbl.column("article_id").to_pylist())
        article_dups = sum(1 for r in dup_rows if r["article_id"] in staged_ids)
        return LoadResult(
            new_entries=new_entries,
            new_articles=new_articles - article_dups,
            duplicates=len(dup_rows),
            errors=len(errors),
        )

    def record_item_errors(self, run_id: str, errors: Sequence[ItemError]) -> None:
        if not errors:
            return
        with self.writer() as con:
            _insert_item_errors(con, run_id, errors, _now())

    def search_index_stale(self) -> bool:
        """True when the full-text index is missing or does not cover every article."""
        with self.writer() as con:
            n = con.execute("SELECT count(*) FROM articles").fetchone()
            try:
                indexed = con.execute("SELECT count(*) FROM fts_main_articles.docs").fetchone()
            except duckdb.CatalogException:
                return bool(n and n[0])
        return n != indexed

    def refresh_search_index(self) -> None:
        """Rebuild the BM25 full-text index over article titles and text."""
        with self.writer() as con:
            n = con.execute("SELECT count(*) FROM articles").fetchone()
            if n and n[0]:
                con.execute(
                    "PRAGMA create_fts_index('articles', 'article_id', 'title', 'text', "
                    "stemmer = 'porter', stopwords = 'english', strip_accents = 1, "
                    "lower = 1, overwrite = 1)"
                )

    def stored_pages(
        self, sources: Sequence[str] | None
    ) -> list[tuple[str, str | None, bytes | str]]:
        """``(article_id, url, page)`` of stored pages (raw bytes, or HTML stored decoded by
        older versions), for re-extraction."""
        where = "WHERE a.source IN (SELECT unnest(?))" if sources else ""
        with self.writer() as con:
            rows = con.execute(
                f"SELECT p.article_id, coalesce(a.url, p.url), p.html, p.html_zlib FROM pages p "
                f"JOIN articles a USING (article_id) {where} ORDER BY p.article_id",
                [list(sources)] if sources else [],
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


def _known_keys(con: duckdb.DuckDBPyConnection, source: str, keys: Sequence[str]) -> set[str]:
    rows = con.execute(
        "SELECT entry_key FROM entries WHERE source = ? AND entry_key IN (SELECT unnest(?))",
        [source, list(keys)],
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


def _insert_new(
    con: duckdb.DuckDBPyConnection, table: str, staged: str, match: str, *, partition: str
) -> int:
    """Anti-join insert (fast, idempotent); the first staged row of each key wins."""
    before = con.execute(f"SELECT count(*) FROM {table}").fetchone()
    dupes = con.execute(f"SELECT count(*) - count(DISTINCT ({partition})) FROM {staged}").fetchone()
    source = (
        f"(SELECT * EXCLUDE (_rn) FROM (SELECT *, row_number() OVER (PARTITION BY {partition}) "
        f"AS _rn FROM {staged}) WHERE _rn = 1)"
        if dupes and dupes[0]
        else staged
    )
    con.execute(
        f"INSERT INTO {table} BY NAME SELECT * FROM {source} s "
        f"WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE {match})"
    )
    after = con.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(after[0]) - int(before[0]) if before and after else 0


def _articles_table(articles: Sequence[Article], run_id: str) -> pa.Table:
    cols: dict[str, list[Any]] = {
        name: []
        for name in (
            "article_id", "source", "entry_key", "url", "canonical_url", "title", "text",
            "author", "published_at", "site_name", "language", "tags", "content_hash",
            "fetched_at", "text_origin", "fallback_reason", "extractor_version",
        )
    }  # fmt: skip
    for a in articles:
        for name in cols:
            v = getattr(a, name)
            cols[name].append(list(v) if name == "tags" else v)
    cols["run_id"] = [run_id] * len(articles)
    schema = pa.schema(
        [
            (n, pa.list_(pa.string()))
            if n == "tags"
            else (n, pa.timestamp("us", tz="UTC"))
            if n in ("published_at", "fetched_at")
            else (n, pa.string())
            for n in cols
        ]
    )
    return pa.table(cols, schema=schema)


def _entries_table(linked: Sequence[tuple[Candidate, str]], now: datetime, run_id: str) -> pa.Table:
    return pa.table(
        {
            "source": [c.source for c, _ in linked],
            "entry_key": [c.entry_key for c, _ in linked],
            "key_kind": [c.key_kind for c, _ in linked],
            "guid": [c.guid for c, _ in linked],
            "url": [c.url for c, _ in linked],
            "canonical_url": [c.canonical_url for c, _ in linked],
            "title": [c.title for c, _ in linked],
            "published_at": pa.array(
                [c.published_at for c, _ in linked], type=pa.timestamp("us", tz="UTC")
            ),
            "article_id": [a for _, a in linked],
            "first_seen_at": pa.array([now] * len(linked), type=pa.timestamp("us", tz="UTC")),
            "run_id": [run_id] * len(linked),
        }
    )


def _find_duplicates(
    con: duckdb.DuckDBPyConnection,
    art_tbl: pa.Table,
    ent_tbl: pa.Table,
    now: datetime,
    run_id: str,
) -> list[dict[str, Any]]:
    """Duplicate links of a batch, decided inside its transaction (so batches serialise).

    1. An entry whose article was brought by another entry: level ``canonical_url``.
    2. A new article whose page names the canonical URL of another article: ``canonical_url``.
    3. A new article whose normalised text hashes like an earlier article's: ``content_hash``.
    The earlier article is the original: already loaded, else earliest published, then id.
    """
    rows: list[dict[str, Any]] = []
    if ent_tbl.num_rows:
        for source, entry_key, article_id in con.execute(
            """
            SELECT e.source, e.entry_key, e.article_id
            FROM staged_entries e JOIN articles a USING (article_id)
            WHERE NOT (a.source = e.source AND a.entry_key = e.entry_key)
              AND NOT EXISTS (SELECT 1 FROM duplicates d
                              WHERE d.source = e.source AND d.entry_key = e.entry_key)
            """
        ).fetchall():
            rows.append(
                _dup(source, entry_key, article_id, article_id, "canonical_url", now, run_id)
            )
    if not art_tbl.num_rows:
        return rows
    # Originals already in the warehouse (before this batch), by canonical URL and by hash.
    known = con.execute(
        """
        SELECT a.canonical_url, a.content_hash, a.article_id, a.published_at
        FROM articles a
        WHERE (a.canonical_url IN (SELECT canonical_url FROM staged_articles)
               OR a.content_hash IN (SELECT content_hash FROM staged_articles))
          AND a.article_id NOT IN (SELECT article_id FROM staged_articles)
          AND NOT EXISTS (SELECT 1 FROM duplicates d
                          WHERE d.article_id = a.article_id AND d.level <> 'canonical_url')
        ORDER BY a.fetched_at, a.published_at NULLS LAST, a.article_id
        """
    ).fetchall()
    by_url: dict[str, str] = {}
    by_hash: dict[str, str] = {}
    for canon, chash, aid, _pub in known:
        if canon:
            by_url.setdefault(canon, aid)
        by_hash.setdefault(chash, aid)
    staged = sorted(
        art_tbl.select(
            ["article_id", "source", "entry_key", "canonical_url", "content_hash", "published_at"]
        ).to_pylist(),
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
    """BM25 full-text query over the index ``refresh_search_index`` builds.

    The same scores as the fts extension's ``match_bm25`` (k = 1.2, b = 0.75), computed as one
    set-based query over the postings of the query's terms (``match_bm25`` is evaluated row by
    row: 2 s on a million articles). Documents must contain one of the query's selective terms
    (in at most half the documents) when it has any: one that contains only near-ubiquitous
    terms scores near zero and cannot reach the top.
    """
    where = "AND a.source = ?" if source else ""
    sql = f"""
        WITH tokens AS (
            SELECT DISTINCT stem(unnest(fts_main_articles.tokenize(?)), 'porter') AS term
        ),
        qterms AS (SELECT d.termid, d.df FROM fts_main_articles.dict d JOIN tokens USING (term)),
        stats AS (SELECT num_docs, avgdl FROM fts_main_articles.stats),
        -- Terms in at most half the documents pick the candidates; a term in nearly every
        -- document (IDF near 0) only adds to their scores, so its long posting list is not
        -- scanned whole. Without a selective term, every posting counts.
        selective AS (
            SELECT termid FROM qterms, stats WHERE qterms.df <= stats.num_docs / 2
        ),
        candidates AS (
            SELECT DISTINCT t.docid FROM fts_main_articles.terms t JOIN selective USING (termid)
        ),
        tf AS (
            SELECT t.docid, t.termid, count(*) AS tf
            FROM fts_main_articles.terms t JOIN qterms USING (termid)
            WHERE NOT EXISTS (SELECT 1 FROM selective)
               OR t.docid IN (SELECT docid FROM candidates)
            GROUP BY t.docid, t.termid
        ),
        scores AS (
            SELECT tf.docid,
                   sum(log(((stats.num_docs - q.df) + 0.5) / (q.df + 0.5) + 1)
                       * (tf.tf * 2.2) / (tf.tf + 1.2 * (0.25 + 0.75 * d.len / stats.avgdl)))
                       AS score
            FROM tf JOIN qterms q USING (termid) JOIN fts_main_articles.docs d USING (docid),
                 stats
            GROUP BY tf.docid
        )
        SELECT a.article_id, round(s.score, 3) AS score, a.source, a.published_at, a.title, a.url
        FROM scores s
        JOIN fts_main_articles.docs d USING (docid)
        JOIN articles a ON a.article_id = d.name
        WHERE true {where}
          AND NOT EXISTS (SELECT 1 FROM duplicates x
                          WHERE x.article_id = a.article_id AND x.duplicate_of <> a.article_id)
        ORDER BY s.score DESC, a.article_id
        LIMIT ?
    """
    params: list[Any] = [words, *([source] if source else []), limit]
    return sql, params
