-- Our own full-text index (BM25 over title and text), maintained incrementally: a refresh
-- indexes only the articles not yet in `search_docs`, in one transaction per chunk, so a run
-- killed midway leaves a consistent index that the next run completes. It replaces the fts
-- extension's index, which could only be rebuilt whole (about 2 minutes at 1M articles) and
-- whose `terms` table, one row per token in no useful order, every query scanned whole.
-- Analysis is the extension's (its tokenizer, English stopwords, Porter stems via its `stem`),
-- so the scores are those of its `match_bm25` (k = 1.2, b = 0.75).

DROP SCHEMA IF EXISTS fts_main_articles CASCADE;

-- The fts extension's English list (571 words, one repeated).
CREATE TABLE search_stopwords (word TEXT NOT NULL);
INSERT INTO search_stopwords
SELECT DISTINCT unnest(regexp_split_to_array(trim('
    a a''s able about above according accordingly across actually after afterwards again against
    ain''t all allow allows almost alone along already also although always am among amongst an
    and another any anybody anyhow anyone anything anyway anyways anywhere apart appear
    appreciate appropriate are aren''t around as aside ask asking associated at available away
    awfully b be became because become becomes becoming been before beforehand behind being
    believe below beside besides best better between beyond both brief but by c c''mon c''s came
    can can''t cannot cant cause causes certain certainly changes clearly co com come comes
    concerning consequently consider considering contain containing contains corresponding could
    couldn''t course currently d definitely described despite did didn''t different do does
    doesn''t doing don''t done down downwards during e each edu eg eight either else elsewhere
    enough entirely especially et etc even ever every everybody everyone everything everywhere
    ex exactly example except f far few fifth first five followed following follows for former
    formerly forth four from further furthermore g get gets getting given gives go goes going
    gone got gotten greetings h had hadn''t happens hardly has hasn''t have haven''t having he
    he''s hello help hence her here here''s hereafter hereby herein hereupon hers herself hi him
    himself his hither hopefully how howbeit however i i''d i''ll i''m i''ve ie if ignored
    immediate in inasmuch inc indeed indicate indicated indicates inner insofar instead into
    inward is isn''t it it''d it''ll it''s its itself j just k keep keeps kept know known knows
    l last lately later latter latterly least less lest let let''s like liked likely little look
    looking looks ltd m mainly many may maybe me mean meanwhile merely might more moreover most
    mostly much must my myself n name namely nd near nearly necessary need needs neither never
    nevertheless new next nine no nobody non none noone nor normally not nothing novel now
    nowhere o obviously of off often oh ok okay old on once one ones only onto or other others
    otherwise ought our ours ourselves out outside over overall own p particular particularly
    per perhaps placed please plus possible presumably probably provides q que quite qv r rather
    rd re really reasonably regarding regardless regards relatively respectively right s said
    same saw say saying says second secondly see seeing seem seemed seeming seems seen self
    selves sensible sent serious seriously seven several shall she should shouldn''t since six
    so some somebody somehow someone something sometime sometimes somewhat somewhere soon sorry
    specified specify specifying still sub such sup sure t t''s take taken tell tends th than
    thank thanks thanx that that''s thats the their theirs them themselves then thence there
    there''s thereafter thereby therefore therein theres thereupon these they they''d they''ll
    they''re they''ve think third this thorough thoroughly those though three through throughout
    thru thus to together too took toward towards tried tries truly try trying twice two u un
    under unfortunately unless unlikely until unto up upon us use used useful uses using usually
    uucp v value various very via viz vs w want wants was wasn''t way we we''d we''ll we''re
    we''ve welcome well went were weren''t what what''s whatever when whence whenever where
    where''s whereafter whereas whereby wherein whereupon wherever whether which while whither
    who who''s whoever whole whom whose why will willing wish with within without won''t wonder
    would wouldn''t x y yes yet you you''d you''ll you''re you''ve your yours yourself
    yourselves z zero
'), '\s+'));

-- One row per indexed article: its document number (dense, from 0) and length in terms.
CREATE TABLE search_docs (
    docid       INTEGER NOT NULL,
    article_id  TEXT NOT NULL,
    len         INTEGER NOT NULL
);

-- Postings: the documents holding a term and how often (two aligned lists, by docid). Each
-- refresh appends one row per term it met; a term's rows are merged now and then. Few rows
-- (terms x refreshes), so a query finds its terms' postings without scanning every posting.
CREATE TABLE search_postings (
    term    TEXT NOT NULL,
    docids  INTEGER[] NOT NULL,
    tfs     INTEGER[] NOT NULL
);

-- The extension's tokenizer: lower case, accents stripped, digits and punctuation split.
CREATE MACRO search_tokenize(s) AS string_split_regex(
    regexp_replace(lower(strip_accents(CAST(s AS VARCHAR))),
                   '[0-9!@#$%^&*()_+={}\[\]:;<>,.?~\\/\|''"`-]+', ' ', 'g'),
    '\s+');

-- BM25 score of every article matching a query (needs the fts extension loaded, for `stem`).
-- Articles must hold one of the query's selective terms (in at most half the documents) when
-- it has any: one holding only near-ubiquitous terms scores near zero and cannot reach the
-- top, and the long postings of such a term are then only read for the candidates.
CREATE MACRO search_articles(query) AS TABLE
WITH qterms AS (SELECT DISTINCT stem(unnest(search_tokenize(query)), 'porter') AS term),
hits AS (SELECT term, docids, tfs FROM search_postings WHERE term IN (SELECT term FROM qterms)),
stats AS (SELECT count(*) AS num_docs, avg(len) AS avgdl FROM search_docs),
df AS (SELECT term, sum(len(docids)) AS df FROM hits GROUP BY term),
selective AS (SELECT term FROM df, stats WHERE df.df <= stats.num_docs / 2),
candidates AS (
    SELECT DISTINCT unnest(docids) AS docid FROM hits WHERE term IN (SELECT term FROM selective)
),
tf AS (SELECT term, unnest(docids) AS docid, unnest(tfs) AS tf FROM hits)
SELECT d.article_id,
       sum(log(((stats.num_docs - df.df) + 0.5) / (df.df + 0.5) + 1)
           * (tf.tf * 2.2) / (tf.tf + 1.2 * (0.25 + 0.75 * d.len / stats.avgdl))) AS score
FROM tf JOIN df USING (term) JOIN search_docs d USING (docid), stats
WHERE NOT EXISTS (SELECT 1 FROM selective) OR tf.docid IN (SELECT docid FROM candidates)
GROUP BY d.article_id;
