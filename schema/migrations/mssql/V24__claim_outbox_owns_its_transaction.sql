-- dbo.claim_outbox (V12) as every per-batch call now is: it owns its transaction
-- inside TRY/CATCH with XACT_ABORT, so an error rolls it back and reaches the
-- caller whatever the session's settings. Its statements are V12's.
ALTER PROCEDURE dbo.claim_outbox (@owner NVARCHAR(100), @lease_ms INT, @limit INT)
AS
BEGIN
    SET NOCOUNT ON;
    SET XACT_ABORT ON;
    BEGIN TRY
        BEGIN TRANSACTION;
        DECLARE @now DATETIME2(3) = SYSUTCDATETIME();
        DECLARE @ids NVARCHAR(MAX) = (
            SELECT STRING_AGG(CONVERT(NVARCHAR(MAX), d.outbox_id), N',')
            FROM (SELECT TOP (@limit) x.outbox_id FROM dbo.outbox x WITH (UPDLOCK, READPAST, ROWLOCK)
                  WHERE x.published_at IS NULL AND x.dead_at IS NULL AND x.next_attempt_at <= @now
                    AND (x.lease_until IS NULL OR x.lease_until < @now)
                  ORDER BY x.next_attempt_at) AS d);
        UPDATE dbo.outbox SET lease_owner = @owner, lease_until = DATEADD(millisecond, @lease_ms, @now)
        OUTPUT inserted.outbox_id, inserted.order_id, inserted.event_type, inserted.payload, inserted.traceparent,
            inserted.tracestate, inserted.created_at, inserted.attempts
        WHERE outbox_id IN (SELECT CAST(s.value AS UNIQUEIDENTIFIER) FROM STRING_SPLIT(@ids, N',') AS s)
          AND published_at IS NULL AND dead_at IS NULL AND next_attempt_at <= @now
          AND (lease_until IS NULL OR lease_until < @now);
        COMMIT TRANSACTION;
    END TRY
    BEGIN CATCH
        IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION;
        THROW;
    END CATCH;
END
