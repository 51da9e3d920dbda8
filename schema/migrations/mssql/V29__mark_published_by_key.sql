-- dbo.mark_published (V25) with every statement driven by the ids, never
-- by a guess at how many rows are unpublished (V26 says why such guesses
-- fail on a queue table; the guessed plan read the list once per row).
-- - It counts what it will mark first: each id looked up by its key, under
--   an update lock, in a subquery per id (the TDS engine runs `OUTPUT
--   deleted` as a scan of the whole table). The relay sends each id once.
-- - The update is filtered by the key alone: a row already published
--   (another relay confirmed it first) keeps its time and lease by the SET's
--   own test.
-- - The rows it marked are those that now carry its @now, found by the index
--   on published_at (counted with their range: MIN and MAX alone let the
--   TDS engine walk the order_id index for the first row of @now); only their orders move on (guarded by `pending`), in
--   the range of their ids as V13 explains, and the counters move in the
--   same transaction. A row another relay marked in the same millisecond
--   shares @now: its order still moves once (the second call finds it
--   published), and each call counts only what it moved.
-- Answers how many rows it marked.
ALTER PROCEDURE dbo.mark_published (@ids NVARCHAR(MAX), @slot INT)
AS
BEGIN
    SET NOCOUNT ON;
    SET XACT_ABORT ON;
    DECLARE @marked BIGINT, @now_rows BIGINT, @advanced BIGINT, @lo BIGINT, @hi BIGINT;
    BEGIN TRY
        BEGIN TRANSACTION;
        DECLARE @now DATETIME2(3) = SYSUTCDATETIME();
        SELECT @marked = COUNT_BIG(*) FROM STRING_SPLIT(@ids, N',') AS s
        WHERE (SELECT COUNT_BIG(*) FROM dbo.outbox x WITH (UPDLOCK)
               WHERE x.outbox_id = CAST(s.value AS UNIQUEIDENTIFIER) AND x.published_at IS NULL) > 0;
        UPDATE dbo.outbox SET published_at = COALESCE(dbo.outbox.published_at, @now),
            lease_owner = CASE WHEN dbo.outbox.published_at IS NULL THEN NULL ELSE dbo.outbox.lease_owner END,
            lease_until = CASE WHEN dbo.outbox.published_at IS NULL THEN NULL ELSE dbo.outbox.lease_until END,
            dead_at = CASE WHEN dbo.outbox.published_at IS NULL THEN NULL ELSE dbo.outbox.dead_at END
        WHERE dbo.outbox.outbox_id IN (SELECT CAST(s.value AS UNIQUEIDENTIFIER) FROM STRING_SPLIT(@ids, N',') AS s);
        SELECT @now_rows = COUNT_BIG(*), @lo = MIN(x.order_id), @hi = MAX(x.order_id)
        FROM dbo.outbox x WHERE x.published_at = @now;
        SET @advanced = 0;
        IF @now_rows > 0
        BEGIN
            UPDATE dbo.orders SET status = N'published'
            WHERE order_id BETWEEN @lo AND @hi AND status = N'pending'
              AND EXISTS (SELECT 1 FROM dbo.outbox x WHERE x.order_id = dbo.orders.order_id AND x.published_at = @now);
            SET @advanced = @@ROWCOUNT;
        END;
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
