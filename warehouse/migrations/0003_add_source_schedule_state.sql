-- Politeness: when each source may be fetched again, and why (what the server asked for, or
-- a backoff after failures). A run skips a source before that time.
ALTER TABLE sources ADD COLUMN next_fetch_at TIMESTAMPTZ;
ALTER TABLE sources ADD COLUMN next_fetch_reason TEXT;
