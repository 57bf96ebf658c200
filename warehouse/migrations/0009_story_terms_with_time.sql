-- Story candidates are the stored articles sharing a blocking term *within the time window*.
-- Each blocking-term row now carries its article's time (published, else fetched), and the table
-- is kept in time order, so the lookup reads the row groups of the window only (zone maps) and
-- not every article that ever used a recurring term.
CREATE TABLE story_terms_timed AS
SELECT t.article_id, t.term, coalesce(a.published_at, a.fetched_at) AS article_time
FROM story_terms t LEFT JOIN articles a USING (article_id)
ORDER BY article_time, t.article_id;
DROP TABLE story_terms;
ALTER TABLE story_terms_timed RENAME TO story_terms;
