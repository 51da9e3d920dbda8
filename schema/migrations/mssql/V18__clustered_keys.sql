-- Clustered keys that ascend as rows are written. SQL Server stores a table
-- in the order of its clustered index, the primary key unless told otherwise,
-- so a key that arrives in random order splits a full page on most inserts
-- and leaves the index fragmented (as users of NServiceBus.Persistence.Sql's
-- outbox report, its issue 778). See docs/sql-server.md, "Clustered keys".
--
-- dead_letters was clustered on dead_letter_id, the broker's message id. It is
-- now clustered on seq, its identity, and dead_letter_id stays unique through
-- a nonclustered constraint. Every row is kept: only the indexes are rebuilt.
--
-- outbox and inbox keep their uniqueidentifier keys: the ids written from now
-- on ascend in SQL Server's uniqueidentifier order (mssql/ids.rs). On SQL
-- Server their clustered indexes are rebuilt once, so that the pages the old
-- UUIDv7 keys left half full are compacted. The TDS engine here (Babelfish)
-- keeps tables as heaps and has no ALTER INDEX ... REBUILD: there it is skipped.
ALTER TABLE dbo.dead_letters DROP CONSTRAINT pk_dead_letters;
ALTER TABLE dbo.dead_letters ADD CONSTRAINT pk_dead_letters PRIMARY KEY CLUSTERED (seq);
ALTER TABLE dbo.dead_letters ADD CONSTRAINT ux_dead_letters_id UNIQUE NONCLUSTERED (dead_letter_id);

IF SERVERPROPERTY(N'babelfish') IS NULL EXEC (N'ALTER INDEX pk_outbox ON dbo.outbox REBUILD');
IF SERVERPROPERTY(N'babelfish') IS NULL EXEC (N'ALTER INDEX pk_inbox ON dbo.inbox REBUILD');
