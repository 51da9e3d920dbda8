-- The rows a relay holds are few, and a relay renews them every third of its
-- lease and gives them back at the end of a streak: a filtered index lets both
-- seek them by owner instead of scanning (and locking their way through) the
-- outbox's history.
CREATE INDEX ix_outbox_leased ON dbo.outbox (lease_owner) WHERE lease_owner IS NOT NULL;
