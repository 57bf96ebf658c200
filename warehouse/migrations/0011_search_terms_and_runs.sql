-- Search without passes over postings it does not need. At 1M articles a query spent most of
-- its time reading postings: a rare term's rows lay in every separately sorted run (ten runs of
-- 100k articles: ten row groups read per term), and every query counted its terms' documents
-- from their postings (a term in every article: 1M rows counted).
--
-- `search_terms`: each term's document count, kept by each refresh, so that a query finds its
-- terms' weights and its selective terms by reading a few rows.
-- `search_runs`: the documents (`first_docid` up to, not including, `end_docid`) whose postings
-- are stored together in term order. A refresh merges its newest runs once they amount to half
-- the run before them (all of them after a big refresh), so few runs remain: a term's postings
-- lie in a few places, and the postings of all of them are read once per query.
-- `search_docs` is rewritten in docid order (and kept so), for a search to read the rows it
-- shows by row number: a join by docid read half the table to find ten rows.

CREATE TABLE search_terms (
    term    TEXT NOT NULL,
    df      INTEGER NOT NULL       -- documents holding the term
);

CREATE TABLE search_runs (
    first_docid INTEGER NOT NULL,
    end_docid   INTEGER NOT NULL
);

-- The existing postings as one run in term order, and their terms' counts.
CREATE TABLE search_postings_merged (
    term    TEXT NOT NULL,
    docid   INTEGER NOT NULL,
    tf      INTEGER NOT NULL,
    len     INTEGER NOT NULL
);
INSERT INTO search_postings_merged SELECT * FROM search_postings ORDER BY term, docid;
DROP MACRO TABLE search_articles;
DROP TABLE search_postings;
ALTER TABLE search_postings_merged RENAME TO search_postings;

INSERT INTO search_terms
SELECT term, count(*)::INTEGER FROM search_postings GROUP BY term ORDER BY term;

-- Documents in docid order (refreshes inserted each chunk's in no particular order), so that
-- a search reads the rows it shows by row number (docid plus the first row's number).
CREATE TABLE search_docs_ordered AS SELECT * FROM search_docs ORDER BY docid;
DROP TABLE search_docs;
ALTER TABLE search_docs_ordered RENAME TO search_docs;
INSERT INTO search_runs SELECT 0, count(*) FROM search_docs HAVING count(*) > 0;
UPDATE writer_state SET value = (SELECT count(*) FROM search_docs)
WHERE key = 'search_sorted_docs';

-- BM25 score (by docid) of every document matching a query (needs the fts extension loaded,
-- for `stem`): the same scores as 0010's. Documents must hold one of the query's selective
-- terms (in at most half the documents) when it has any. The weights come from
-- `search_terms`; postings are read once, those of the common terms for the candidates only.
CREATE MACRO search_articles(query) AS TABLE
WITH qterms AS (SELECT DISTINCT stem(unnest(search_tokenize(query)), 'porter') AS term),
stats AS (SELECT count(*) AS num_docs, avg(len) AS avgdl FROM search_docs),
terms AS (
    SELECT t.term, log(((stats.num_docs - t.df) + 0.5) / (t.df + 0.5) + 1) AS idf,
           t.df <= stats.num_docs / 2 AS selective
    FROM search_terms t, stats
    WHERE t.term IN (SELECT term FROM qterms)
),
candidates AS (
    SELECT DISTINCT docid FROM search_postings
    WHERE term IN (SELECT term FROM terms WHERE selective)
),
hits AS (
    SELECT term, docid, tf, len FROM search_postings
    WHERE term IN (SELECT term FROM terms)
      AND (docid IN (SELECT docid FROM candidates)
           OR NOT EXISTS (SELECT 1 FROM terms WHERE selective))
)
SELECT h.docid,
       sum(t.idf * (h.tf * 2.2) / (h.tf + 1.2 * (0.25 + 0.75 * h.len / stats.avgdl))) AS score
FROM hits h JOIN terms t USING (term), stats
GROUP BY h.docid;
