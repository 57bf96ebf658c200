-- The writer's bookkeeping. Short write operations checkpoint without merging row groups
-- (merging rewrote the last big row group of `articles` every few batches): each leaves row
-- groups of its own, counted here, and the end of a run merges them once enough have piled up.
CREATE TABLE writer_state (
    key   TEXT NOT NULL,
    value BIGINT NOT NULL
);
INSERT INTO writer_state VALUES ('writes_since_merge', 0);
