-- dbo.mark_published (V13) as every per-batch call now is: it owns its transaction
-- inside TRY/CATCH with XACT_ABORT, so an error rolls it back and reaches the
-- caller whatever the session's settings. Its statements are V13's.
ALTER PROCEDURE dbo.mark_published (@ids NVARCHAR(MAX), @slot INT)
AS
BEGIN
    SET NOCOUNT ON;
    SET XACT_ABORT ON;
    BEGIN TRY
        BEGIN TRANSACTION;
        DECLARE @now DATETIME2(3) = SYSUTCDATETIME();
        UPDATE dbo.outbox SET published_at = @now, lease_owner = NULL, lease_until = NULL, dead_at = NULL
        WHERE outbox_id IN (SELECT CAST(s.value AS UNIQUEIDENTIFIER) FROM STRING_SPLIT(@ids, N',') AS s)
          AND published_at IS NULL;
        DECLARE @marked BIGINT = @@ROWCOUNT;
        DECLARE @lo BIGINT, @hi BIGINT;
        SELECT @lo = MIN(x.order_id), @hi = MAX(x.order_id) FROM dbo.outbox x
        WHERE x.published_at = @now
          AND x.outbox_id IN (SELECT CAST(s.value AS UNIQUEIDENTIFIER) FROM STRING_SPLIT(@ids, N',') AS s);
        UPDATE dbo.orders SET status = N'published'
        WHERE order_id BETWEEN @lo AND @hi AND status = N'pending'
          AND EXISTS (SELECT 1 FROM dbo.outbox x
                      WHERE x.order_id = dbo.orders.order_id AND x.published_at = @now
                        AND x.outbox_id IN (SELECT CAST(s.value AS UNIQUEIDENTIFIER) FROM STRING_SPLIT(@ids, N',') AS s));
        DECLARE @advanced BIGINT = @@ROWCOUNT;
        UPDATE dbo.order_counts SET n = n + CASE WHEN status = N'pending' THEN -@advanced ELSE @advanced END
        WHERE status IN (N'pending', N'published') AND slot = @slot AND @advanced > 0;
        COMMIT TRANSACTION;
    END TRY
    BEGIN CATCH
        IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION;
        THROW;
    END CATCH;
    SELECT @marked;
END
