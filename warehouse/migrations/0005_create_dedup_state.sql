-- Small bookkeeping values of the dedup stage (e.g. story_df's size at its last compaction:
-- story_df is append-only and summed on lookup).
CREATE TABLE dedup_state (
    key   TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
