-- dbo.mark_published (V25) with every statement driven by its own ids, never
-- by a guess at how many rows are unpublished (V26 says why such guesses fail
-- on a queue table; the guessed plan read the list once per row).
-- - It first looks each id up by its key (CROSS APPLY, one seek per id, under
--   an update lock): how many rows it will mark and the range of their
--   orders. The `TOP (1)` (the key is unique) keeps the TDS engine from
--   flattening the APPLY into a join it would plan on a guess. (The TDS engine runs `OUTPUT deleted` as a scan of the whole
--   table, and counts every row a key-only update touched.) The relay sends
--   each id once.
-- - The update is filtered by the key alone: a row already published
--   (another relay confirmed it first) keeps its time and lease by the SET's
--   own test.
-- - Only the orders of the rows it marked move on: in their range, as V13
--   explains, guarded by `pending`, each found with its outbox row by the
--   order's key and this call's @now. A row another relay marked in the same
--   millisecond shares @now: if its order lies in this range it moves once
--   all the same (the later call finds it published), and each call counts
--   only what it moved. The counters move in the same transaction.
-- Answers how many rows it marked.
ALTER PROCEDURE dbo.mark_published (@ids NVARCHAR(MAX), @slot INT)
AS
BEGIN
    SET NOCOUNT ON;
    SET XACT_ABORT ON;
    DECLARE @marked BIGINT, @advanced BIGINT = 0, @lo BIGINT, @hi BIGINT;
    BEGIN TRY
        BEGIN TRANSACTION;
        DECLARE @now DATETIME2(3) = SYSUTCDATETIME();
        SELECT @marked = COUNT_BIG(x.order_id), @lo = MIN(x.order_id), @hi = MAX(x.order_id)
        FROM STRING_SPLIT(@ids, N',') AS s
        CROSS APPLY (SELECT TOP (1) o.order_id FROM dbo.outbox o WITH (UPDLOCK)
                     WHERE o.outbox_id = CAST(s.value AS UNIQUEIDENTIFIER) AND o.published_at IS NULL) AS x;
        UPDATE dbo.outbox SET published_at = COALESCE(dbo.outbox.published_at, @now),
            lease_owner = CASE WHEN dbo.outbox.published_at IS NULL THEN NULL ELSE dbo.outbox.lease_owner END,
            lease_until = CASE WHEN dbo.outbox.published_at IS NULL THEN NULL ELSE dbo.outbox.lease_until END,
            dead_at = CASE WHEN dbo.outbox.published_at IS NULL THEN NULL ELSE dbo.outbox.dead_at END
        WHERE dbo.outbox.outbox_id IN (SELECT CAST(s.value AS UNIQUEIDENTIFIER) FROM STRING_SPLIT(@ids, N',') AS s);
        IF @marked > 0
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
