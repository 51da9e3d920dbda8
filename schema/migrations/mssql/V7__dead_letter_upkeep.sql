-- Dead letters the broker refuses are tried a few times, then set aside as
-- undeliverable (kept and listed for operators, never again ahead of the
-- others), and sent ones are deleted by retention. Indexes on new columns are made through
-- EXEC: SQL Server compiles a batch before the new columns exist.
ALTER TABLE dbo.dead_letters ADD attempts INT NOT NULL CONSTRAINT df_dead_letters_attempts DEFAULT 0;

ALTER TABLE dbo.dead_letters ADD last_error NVARCHAR(1000) NULL;

ALTER TABLE dbo.dead_letters ADD undeliverable_at DATETIME2(3) NULL;

DROP INDEX ix_dead_letters_unsent ON dbo.dead_letters;

EXEC (N'CREATE INDEX ix_dead_letters_unsent ON dbo.dead_letters (seq) WHERE sent_at IS NULL AND undeliverable_at IS NULL');

CREATE INDEX ix_dead_letters_sent ON dbo.dead_letters (sent_at) WHERE sent_at IS NOT NULL;

EXEC (N'CREATE INDEX ix_dead_letters_undeliverable ON dbo.dead_letters (undeliverable_at) WHERE undeliverable_at IS NOT NULL');
