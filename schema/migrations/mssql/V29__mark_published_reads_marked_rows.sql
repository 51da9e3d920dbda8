-- dbo.mark_published (V25) reads its ids once, into dbo.marked_rows (V26),
-- and finds its rows by key from there. The statement that marks them has no
-- filter but the key: a row already published (another relay confirmed it
-- first) keeps its time and lease, by the SET's own test, so that the plan
-- is driven by the ids, not by a guess at how many rows are unpublished
-- (V26 says why such guesses fail on a queue table). The rows this call
-- marked are those that now carry its @now; only their orders move on
-- (guarded by `pending`), in a range of their ids as V13 explains, and the
-- counters move in the same transaction. Answers how many rows it marked.
ALTER PROCEDURE dbo.mark_published (@ids NVARCHAR(MAX), @slot INT)
AS
BEGIN
    SET NOCOUNT ON;
    SET XACT_ABORT ON;
    DECLARE @marked BIGINT, @advanced BIGINT, @lo BIGINT, @hi BIGINT;
    BEGIN TRY
        BEGIN TRANSACTION;
        DECLARE @now DATETIME2(3) = SYSUTCDATETIME();
        INSERT INTO dbo.marked_rows (session_id, outbox_id)
        SELECT DISTINCT @@SPID, CAST(s.value AS UNIQUEIDENTIFIER) FROM STRING_SPLIT(@ids, N',') AS s;
        UPDATE dbo.outbox SET published_at = COALESCE(dbo.outbox.published_at, @now),
            lease_owner = CASE WHEN dbo.outbox.published_at IS NULL THEN NULL ELSE dbo.outbox.lease_owner END,
            lease_until = CASE WHEN dbo.outbox.published_at IS NULL THEN NULL ELSE dbo.outbox.lease_until END,
            dead_at = CASE WHEN dbo.outbox.published_at IS NULL THEN NULL ELSE dbo.outbox.dead_at END
        FROM dbo.marked_rows m
        WHERE m.session_id = @@SPID AND dbo.outbox.outbox_id = m.outbox_id;
        UPDATE dbo.marked_rows SET order_id = x.order_id
        FROM dbo.outbox x
        WHERE dbo.marked_rows.session_id = @@SPID AND x.outbox_id = dbo.marked_rows.outbox_id
          AND x.published_at = @now;
        SELECT @marked = COUNT_BIG(m.order_id), @lo = MIN(m.order_id), @hi = MAX(m.order_id)
        FROM dbo.marked_rows m WHERE m.session_id = @@SPID;
        UPDATE dbo.orders SET status = N'published'
        FROM dbo.marked_rows m
        WHERE m.session_id = @@SPID AND dbo.orders.order_id = m.order_id
          AND dbo.orders.order_id BETWEEN @lo AND @hi AND dbo.orders.status = N'pending';
        SET @advanced = @@ROWCOUNT;
        UPDATE dbo.order_counts SET n = n + CASE WHEN status = N'pending' THEN -@advanced ELSE @advanced END
        WHERE status IN (N'pending', N'published') AND slot = @slot AND @advanced > 0;
        DELETE FROM dbo.marked_rows WHERE session_id = @@SPID;
        COMMIT TRANSACTION;
    END TRY
    BEGIN CATCH
        IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION;
        THROW;
    END CATCH;
    SELECT @marked;
END
