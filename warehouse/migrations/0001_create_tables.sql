-- newsflow warehouse, first schema. Applied files are never edited: changes go in a new file.
-- Times are UTC TIMESTAMPTZ columns ending in _at. Large text columns use zstd compression
-- (checkpoints 10x faster than the default on article text).

CREATE TABLE sources (
    name              TEXT PRIMARY KEY,
    kind              TEXT NOT NULL,              -- feed | files
    location          TEXT NOT NULL,              -- URL or folder
    etag              TEXT,                       -- conditional GET state, sent back next time
    last_modified     TEXT,
    last_fetch_at     TIMESTAMPTZ,
    last_status       TEXT,                       -- ok | not_modified | error
    last_http_status  INTEGER,
    last_error        TEXT,
    last_ok_at        TIMESTAMPTZ,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    entries_total     BIGINT NOT NULL DEFAULT 0,
    articles_total    BIGINT NOT NULL DEFAULT 0,
    duplicates_total  BIGINT NOT NULL DEFAULT 0,
    errors_total      BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE runs (
    run_id        TEXT PRIMARY KEY,               -- Prefect flow-run id when run by Prefect
    flow_run_name TEXT,
    started_at    TIMESTAMPTZ NOT NULL,
    ended_at      TIMESTAMPTZ,
    status        TEXT NOT NULL,                  -- running | completed | completed_with_failures | crashed
    sources       INTEGER NOT NULL DEFAULT 0,
    entries       INTEGER NOT NULL DEFAULT 0,
    new_articles  INTEGER NOT NULL DEFAULT 0,
    duplicates    INTEGER NOT NULL DEFAULT 0,
    failures      INTEGER NOT NULL DEFAULT 0,
    failed_sources TEXT[]
);

-- One row per source per run.
CREATE TABLE fetches (
    run_id        TEXT NOT NULL,
    source        TEXT NOT NULL,
    started_at    TIMESTAMPTZ NOT NULL,
    ended_at      TIMESTAMPTZ,
    status        TEXT NOT NULL,                  -- ok | not_modified | error
    http_status   INTEGER,
    bytes         BIGINT NOT NULL DEFAULT 0,
    entries       INTEGER NOT NULL DEFAULT 0,      -- entries the source listed
    new_articles  INTEGER NOT NULL DEFAULT 0,
    duplicates    INTEGER NOT NULL DEFAULT 0,
    errors        INTEGER NOT NULL DEFAULT 0,      -- item errors (pages, files, lines)
    pages_fetched INTEGER NOT NULL DEFAULT 0,
    error         TEXT,                           -- why the source failed
    warning       TEXT,                           -- survivable problem (ill-formed but readable)
    PRIMARY KEY (run_id, source)
);

-- Every entry a source listed, keyed by GUID, else canonical URL, else content.
CREATE TABLE entries (
    source        TEXT NOT NULL,
    entry_key     TEXT NOT NULL,
    key_kind      TEXT NOT NULL,                  -- guid | url | content
    guid          TEXT,
    url           TEXT,
    canonical_url TEXT,
    title         TEXT,
    published_at  TIMESTAMPTZ,
    article_id    TEXT NOT NULL,
    first_seen_at TIMESTAMPTZ NOT NULL,
    run_id        TEXT,
    PRIMARY KEY (source, entry_key)
);

CREATE TABLE articles (
    article_id      TEXT PRIMARY KEY,             -- hash of the canonical URL (else of the content)
    source          TEXT NOT NULL,                -- the source that brought it first
    entry_key       TEXT NOT NULL,
    url             TEXT,
    canonical_url   TEXT,
    title           TEXT,
    text            TEXT NOT NULL USING COMPRESSION zstd,
    author          TEXT,
    published_at    TIMESTAMPTZ,
    site_name       TEXT,
    language        TEXT,
    tags            TEXT[],
    content_hash    TEXT NOT NULL,
    fetched_at      TIMESTAMPTZ NOT NULL,
    text_origin     TEXT NOT NULL,                -- page | file | jsonl | feed_content | feed_summary
    fallback_reason TEXT,                         -- why the page's text was not used
    extractor_version TEXT,
    run_id          TEXT
);
CREATE INDEX articles_content_hash ON articles (content_hash);

-- Raw pages, kept so `newsflow reprocess` can re-extract without refetching.
CREATE TABLE pages (
    article_id    TEXT PRIMARY KEY,
    url           TEXT,
    html          TEXT NOT NULL USING COMPRESSION zstd,
    fetched_at    TIMESTAMPTZ NOT NULL,
    extractor_version TEXT
);

-- Each entry that repeats an article: the article it repeats, at which level, and why.
-- level: guid | canonical_url (the entry points at an existing article) or
--        content_hash (a new URL whose text is an existing article's; the article is kept).
CREATE TABLE duplicates (
    source        TEXT NOT NULL,
    entry_key     TEXT NOT NULL,
    article_id    TEXT NOT NULL,                  -- the entry's own article
    duplicate_of  TEXT NOT NULL,                  -- the article it repeats
    level         TEXT NOT NULL,
    score         DOUBLE NOT NULL DEFAULT 1.0,
    threshold     DOUBLE NOT NULL DEFAULT 1.0,
    detected_at   TIMESTAMPTZ NOT NULL,
    run_id        TEXT,
    PRIMARY KEY (source, entry_key)
);

-- Per-item problems: a page that failed, a file that could not be read, a bad JSONL line.
CREATE TABLE item_errors (
    run_id        TEXT,
    source        TEXT NOT NULL,
    item          TEXT NOT NULL,
    stage         TEXT NOT NULL,                  -- fetch | extract | read | parse
    reason        TEXT NOT NULL,
    detail        TEXT,
    occurred_at   TIMESTAMPTZ NOT NULL
);
