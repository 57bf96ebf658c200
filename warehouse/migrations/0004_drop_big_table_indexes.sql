-- The big tables lose their primary keys and indexes. DuckDB rewrites an ART index whole at
-- every checkpoint, so a key on `articles` made each batch's commit cost grow with the
-- warehouse (2.6k articles/s at 100k articles). Uniqueness holds without them: there is one
-- writer at a time, and every insert is an anti-join on the key inside its transaction
-- (tests/test_crash.py checks exactly-once under SIGKILL and concurrent runs).

DROP VIEW article_outlets;
DROP INDEX articles_content_hash;

CREATE TABLE articles_new (
    article_id      TEXT NOT NULL,
    source          TEXT NOT NULL,
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
    text_origin     TEXT NOT NULL,
    fallback_reason TEXT,
    extractor_version TEXT,
    run_id          TEXT
);
INSERT INTO articles_new SELECT * FROM articles;
DROP TABLE articles;
ALTER TABLE articles_new RENAME TO articles;

CREATE TABLE entries_new AS SELECT * FROM entries WITH NO DATA;
INSERT INTO entries_new SELECT * FROM entries;
DROP TABLE entries;
ALTER TABLE entries_new RENAME TO entries;

CREATE TABLE pages_new (
    article_id    TEXT NOT NULL,
    url           TEXT,
    html          TEXT NOT NULL USING COMPRESSION zstd,
    fetched_at    TIMESTAMPTZ NOT NULL,
    extractor_version TEXT
);
INSERT INTO pages_new SELECT * FROM pages;
DROP TABLE pages;
ALTER TABLE pages_new RENAME TO pages;

CREATE TABLE duplicates_new AS SELECT * FROM duplicates WITH NO DATA;
INSERT INTO duplicates_new SELECT * FROM duplicates;
DROP TABLE duplicates;
ALTER TABLE duplicates_new RENAME TO duplicates;

CREATE TABLE near_signatures_new AS SELECT * FROM near_signatures WITH NO DATA;
INSERT INTO near_signatures_new SELECT * FROM near_signatures;
DROP TABLE near_signatures;
ALTER TABLE near_signatures_new RENAME TO near_signatures;

CREATE TABLE story_featured_new AS SELECT * FROM story_featured WITH NO DATA;
INSERT INTO story_featured_new SELECT * FROM story_featured;
DROP TABLE story_featured;
ALTER TABLE story_featured_new RENAME TO story_featured;

CREATE TABLE story_articles_new AS SELECT * FROM story_articles WITH NO DATA;
INSERT INTO story_articles_new SELECT * FROM story_articles;
DROP TABLE story_articles;
ALTER TABLE story_articles_new RENAME TO story_articles;

CREATE TABLE story_df_new AS SELECT * FROM story_df WITH NO DATA;
INSERT INTO story_df_new SELECT * FROM story_df;
DROP TABLE story_df;
ALTER TABLE story_df_new RENAME TO story_df;

CREATE VIEW article_outlets AS
SELECT article_id,
       coalesce(site_name,
                nullif(regexp_extract(coalesce(canonical_url, url, ''), '^https?://(?:www\.)?([^/:?#]+)', 1), ''),
                source) AS outlet
FROM articles;
