-- One of the batch procedures of V12-V16 (see V12).
-- A whole batch confirmed in one call: the rows this call marks carry its
-- @now, so only their orders move on (guarded by `pending`, so a fast
-- consumer's `processed` is never overwritten), and the counters move in the
-- same transaction. Answers how many rows it marked.
CREATE PROCEDURE dbo.mark_published (@ids NVARCHAR(MAX), @slot INT)
AS
BEGIN
    SET NOCOUNT ON;
    BEGIN TRANSACTION;
    DECLARE @now DATETIME2(3) = SYSUTCDATETIME();
    UPDATE dbo.outbox SET published_at = @now, lease_owner = NULL, lease_until = NULL, dead_at = NULL
    WHERE outbox_id IN (SELECT CAST(s.value AS UNIQUEIDENTIFIER) FROM STRING_SPLIT(@ids, N',') AS s)
      AND published_at IS NULL;
    DECLARE @marked BIGINT = @@ROWCOUNT;
    UPDATE dbo.orders SET status = N'published'
    WHERE status = N'pending' AND order_id IN (
        SELECT x.order_id FROM dbo.outbox x
        WHERE x.published_at = @now
          AND x.outbox_id IN (SELECT CAST(s.value AS UNIQUEIDENTIFIER) FROM STRING_SPLIT(@ids, N',') AS s));
    DECLARE @advanced BIGINT = @@ROWCOUNT;
    UPDATE dbo.order_counts SET n = n + CASE WHEN status = N'pending' THEN -@advanced ELSE @advanced END
    WHERE status IN (N'pending', N'published') AND slot = @slot AND @advanced > 0;
    COMMIT TRANSACTION;
    SELECT @marked;
END
