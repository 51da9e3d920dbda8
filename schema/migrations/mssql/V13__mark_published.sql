-- One of the batch procedures of V12-V16 (see V12).
-- A whole batch confirmed in one call: the rows this call marks carry its
-- @now, so only their orders move on (guarded by `pending`, so a fast
-- consumer's `processed` is never overwritten), and the counters move in the
-- same transaction. Answers how many rows it marked. The orders are found
-- through the range of their ids, so they are locked in about ascending
-- order, as the consumer's move locks them (`dbo.mark_processed`, its rows
-- sorted by id): found through the outbox ids instead (time-ordered UUIDs,
-- random within a millisecond), they deadlocked with it on Babelfish, where
-- each deadlock waits out `deadlock_timeout` (1 s) before one side retries.
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
    SELECT @marked;
END
