-- The rows a relay holds are few, and a relay renews them every third of its
-- lease and gives them back at the end of a streak: a partial index lets both
-- find them by owner without reading the outbox's history.
CREATE INDEX IF NOT EXISTS outbox_leased ON outbox (lease_owner) WHERE lease_owner IS NOT NULL;
