-- A dead letter an operator replayed (its order sent again through the
-- outbox) is marked, so that failure groups count only the open ones and a
-- group replay never sends the same letter twice. The index is made through
-- EXEC: SQL Server compiles a batch before the new column exists.
ALTER TABLE dbo.dead_letters ADD replayed_at DATETIME2(3) NULL;

EXEC (N'CREATE INDEX ix_dead_letters_open ON dbo.dead_letters (seq) WHERE replayed_at IS NULL');
