-- Parked rows are few: a filtered index keeps counting and listing them
-- independent of the outbox's history.
CREATE INDEX ix_outbox_parked ON dbo.outbox (dead_at) WHERE dead_at IS NOT NULL;
