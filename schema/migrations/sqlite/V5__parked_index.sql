-- Parked rows are few: a partial index keeps counting and listing them
-- independent of the outbox's history.
CREATE INDEX IF NOT EXISTS outbox_parked ON outbox (dead_at) WHERE dead_at IS NOT NULL;
