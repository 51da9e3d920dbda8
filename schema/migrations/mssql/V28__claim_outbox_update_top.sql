-- dbo.claim_outbox (V24) as one `UPDATE TOP (@limit) ... WITH (UPDLOCK,
-- READPAST, ROWLOCK) ... OUTPUT`, SQL Server's own way to take rows off a
-- queue table: the predicates are tested once, on rows locked as they are
-- read, so no list of ids is built and matched again (that match, joined
-- with a queue table whose statistics lag its rows, is what V26 explains).
-- UPDATE TOP takes no ORDER BY: rows come in the order the plan reads them,
-- on SQL Server the due index (next_attempt_at), so the oldest first in
-- practice, not as a promise (none is made: the consumer takes messages in
-- any order, docs/sql-server.md "Units of work").
ALTER PROCEDURE dbo.claim_outbox (@owner NVARCHAR(100), @lease_ms INT, @limit INT)
AS
BEGIN
    SET NOCOUNT ON;
    SET XACT_ABORT ON;
    BEGIN TRY
        BEGIN TRANSACTION;
        DECLARE @now DATETIME2(3) = SYSUTCDATETIME();
        UPDATE TOP (@limit) dbo.outbox WITH (UPDLOCK, READPAST, ROWLOCK)
        SET lease_owner = @owner, lease_until = DATEADD(millisecond, @lease_ms, @now)
        OUTPUT inserted.outbox_id, inserted.order_id, inserted.event_type, inserted.payload, inserted.traceparent,
            inserted.tracestate, inserted.created_at, inserted.attempts
        WHERE published_at IS NULL AND dead_at IS NULL AND next_attempt_at <= @now
          AND (lease_until IS NULL OR lease_until < @now);
        COMMIT TRANSACTION;
    END TRY
    BEGIN CATCH
        IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION;
        THROW;
    END CATCH;
END
