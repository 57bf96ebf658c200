-- Dedup levels 3 and 4: near-duplicates (MinHash-LSH) and story clusters (TF-IDF, average
-- linkage), with everything kept that explains a merge, and manual overrides.

-- MinHash signature and LSH band buckets of each article's normalised text.
CREATE TABLE near_signatures (
    article_id  TEXT PRIMARY KEY,
    signature   BLOB NOT NULL,
    n_shingles  INTEGER NOT NULL
);
CREATE TABLE near_bands (
    article_id  TEXT NOT NULL,
    band        SMALLINT NOT NULL,
    bucket      BIGINT NOT NULL
);

-- The warehouse's own vocabulary: document frequency per term, and each article's heaviest
-- terms (the inverted index that finds story candidates).
CREATE TABLE story_df (
    term        TEXT PRIMARY KEY,
    df          BIGINT NOT NULL
);
CREATE TABLE story_terms (
    article_id  TEXT NOT NULL,
    term        TEXT NOT NULL
);
CREATE TABLE story_featured (
    article_id  TEXT PRIMARY KEY,
    n_terms     INTEGER NOT NULL
);

-- The story of each article and why: the article it is most similar to, the cosine, the
-- mean cosine to the rest of its story, and the threshold it was judged against.
CREATE TABLE story_articles (
    article_id  TEXT PRIMARY KEY,
    story_id    TEXT NOT NULL,
    group_id    TEXT NOT NULL,
    is_representative BOOLEAN NOT NULL,
    linked_to   TEXT,
    score       DOUBLE NOT NULL,
    cohesion    DOUBLE NOT NULL,
    threshold   DOUBLE NOT NULL,
    reason      TEXT NOT NULL,               -- similar | must_link | alone | merge_disabled
    assigned_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE stories (
    story_id    TEXT PRIMARY KEY,            -- the representative article's id
    title       TEXT,                        -- the representative's headline
    representative_id TEXT NOT NULL,
    first_seen_at TIMESTAMPTZ,               -- earliest publication (else fetch) time
    last_seen_at  TIMESTAMPTZ,
    n_articles  INTEGER NOT NULL,
    n_outlets   INTEGER NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);

-- Manual decisions that every later run respects: 'split' (never the same story or
-- near-duplicate) or 'merge' (always the same story).
CREATE TABLE merge_overrides (
    article_id  TEXT NOT NULL,
    other_id    TEXT NOT NULL,
    action      TEXT NOT NULL CHECK (action IN ('split', 'merge')),
    note        TEXT,
    created_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (article_id, other_id)
);

-- Where an article's outlet is needed: its site name, else its URL's host, else its source.
CREATE VIEW article_outlets AS
SELECT article_id,
       coalesce(site_name,
                nullif(regexp_extract(coalesce(canonical_url, url, ''), '^https?://(?:www\.)?([^/:?#]+)', 1), ''),
                source) AS outlet
FROM articles;
