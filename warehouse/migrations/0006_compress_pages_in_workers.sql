-- Raw pages (the bytes as served) are compressed (zlib) by the extraction workers, in parallel, and stored as a BLOB;
-- DuckDB's own compression of 150 kB strings cost the single writer ~2 ms a page.
ALTER TABLE pages ADD COLUMN html_zlib BLOB;
ALTER TABLE pages ALTER COLUMN html DROP NOT NULL;
