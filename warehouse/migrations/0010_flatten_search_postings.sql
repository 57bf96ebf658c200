-- Postings as one row per (term, document), appended in term order; each indexed article
-- carries what a search shows (source, date, title, URL), so a search reads no `articles`. The per-term lists of
-- 0007 made every query read the lists of all the terms stored near its own (DuckDB cannot
-- skip inside list data): 0.5 s at 300k articles. Rows in term order let the scan skip every
-- row group whose terms are out of range. Each refresh appends its postings sorted by term;
-- small refreshes leave an unsorted tail that a later refresh sorts in one go (see
-- `search_sorted_docs`).

CREATE TABLE search_postings_flat (
    term    TEXT NOT NULL,
    docid   INTEGER NOT NULL,
    tf      INTEGER NOT NULL,
    len     INTEGER NOT NULL               -- the document's length, for BM25 without a join
);
INSERT INTO search_postings_flat
SELECT p.term, p.docid, p.tf, d.len
FROM (SELECT term, unnest(docids) AS docid, unnest(tfs) AS tf FROM search_postings) p
JOIN search_docs d USING (docid)
ORDER BY p.term, p.docid;
DROP MACRO TABLE search_articles;
DROP TABLE search_postings;
ALTER TABLE search_postings_flat RENAME TO search_postings;

CREATE TABLE search_docs_new AS
SELECT d.docid, d.article_id, d.len, a.source, a.published_at, a.title, a.url
FROM search_docs d JOIN articles a USING (article_id)
ORDER BY d.docid;
DROP TABLE search_docs;
ALTER TABLE search_docs_new RENAME TO search_docs;

-- Documents (docid below this) whose postings are sorted by term in runs of their own.
INSERT INTO writer_state SELECT 'search_sorted_docs', count(*) FROM search_docs;

-- BM25 score (by docid) of every document matching a query (needs the fts extension loaded,
-- for `stem`). Documents must hold one of the query's selective terms (in at most half the
-- documents) when it has any: one holding only near-ubiquitous terms scores near zero and
-- cannot reach the top. Reads the postings of the query's terms only.
CREATE MACRO search_articles(query) AS TABLE
WITH qterms AS (SELECT DISTINCT stem(unnest(search_tokenize(query)), 'porter') AS term),
hits AS (
    SELECT term, docid, tf, len FROM search_postings WHERE term IN (SELECT term FROM qterms)
),
stats AS (SELECT count(*) AS num_docs, avg(len) AS avgdl FROM search_docs),
df AS (SELECT term, count(*) AS df FROM hits GROUP BY term),
selective AS (SELECT term FROM df, stats WHERE df.df <= stats.num_docs / 2),
candidates AS (
    SELECT DISTINCT docid FROM hits
    WHERE term IN (SELECT term FROM selective) OR NOT EXISTS (SELECT 1 FROM selective)
)
SELECT h.docid,
       sum(log(((stats.num_docs - df.df) + 0.5) / (df.df + 0.5) + 1)
           * (h.tf * 2.2) / (h.tf + 1.2 * (0.25 + 0.75 * h.len / stats.avgdl))) AS score
FROM hits h JOIN df USING (term), stats
WHERE h.docid IN (SELECT docid FROM candidates)
GROUP BY h.docid;
