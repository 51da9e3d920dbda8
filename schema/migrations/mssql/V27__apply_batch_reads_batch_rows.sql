-- dbo.apply_batch as V26 says: the batch's JSON read once, into dbo.batch_rows,
-- and every pass joins that table by key. Its statements and answers are
-- V22's. The last check reads "not final" as `NOT IN (processed, failed)`
-- and joins by the order's key alone, so it seeks each order by its key
-- rather than scanning the status index or the batch's range of ids.
ALTER PROCEDURE dbo.apply_batch (@rows NVARCHAR(MAX), @bodies VARBINARY(MAX), @headers NVARCHAR(MAX), @slot INT)
AS
BEGIN
    SET NOCOUNT ON;
    SET XACT_ABORT ON;
    DECLARE @now DATETIME2(3) = SYSUTCDATETIME();
    DECLARE @lo BIGINT, @hi BIGINT, @call UNIQUEIDENTIFIER = NEWID();
    BEGIN TRY
        BEGIN TRANSACTION;
        INSERT INTO dbo.batch_rows (call_id, n, k, x, o, u, t, r, l, lr, b, bn, hb, hn, counts)
        SELECT @call, j.n, j.k, j.x, j.o, j.u, j.t,
            CASE WHEN j.r IS NULL OR CHARINDEX(N'%', j.r) = 0 THEN j.r
                 WHEN CHARINDEX(N'%0', j.r) + CHARINDEX(N'%1', j.r) = 0
                 THEN REPLACE(REPLACE(REPLACE(j.r, N'%22', N'"'), N'%5C', N'\'), N'%25', N'%')
                 ELSE dbo.carried_text(j.r) END,
            CASE WHEN j.l IS NULL OR CHARINDEX(N'%', j.l) = 0 THEN j.l
                 WHEN CHARINDEX(N'%0', j.l) + CHARINDEX(N'%1', j.l) = 0
                 THEN REPLACE(REPLACE(REPLACE(j.l, N'%22', N'"'), N'%5C', N'\'), N'%25', N'%')
                 ELSE dbo.carried_text(j.l) END,
            CASE WHEN j.lr IS NULL OR CHARINDEX(N'%', j.lr) = 0 THEN j.lr
                 WHEN CHARINDEX(N'%0', j.lr) + CHARINDEX(N'%1', j.lr) = 0
                 THEN REPLACE(REPLACE(REPLACE(j.lr, N'%22', N'"'), N'%5C', N'\'), N'%25', N'%')
                 ELSE dbo.carried_text(j.lr) END,
            j.b, j.bn, j.hb, j.hn,
            CASE WHEN j.k = N'd' OR j.x IS NULL
                   OR NOT EXISTS (SELECT 1 FROM dbo.inbox i WITH (UPDLOCK, HOLDLOCK) WHERE i.outbox_id = j.x)
                 THEN 1 ELSE 0 END
        FROM OPENJSON(@rows) WITH (n INT '$.n', k NCHAR(1) '$.k', x UNIQUEIDENTIFIER '$.x', o BIGINT '$.o',
            u DECIMAL(18, 2) '$.u', t DECIMAL(18, 2) '$.t', r NVARCHAR(MAX) '$.r', l NVARCHAR(MAX) '$.l',
            lr NVARCHAR(MAX) '$.lr', b INT '$.b', bn INT '$.bn', hb INT '$.hb', hn INT '$.hn') AS j;
        SELECT @lo = MIN(b.o), @hi = MAX(b.o) FROM dbo.batch_rows b WHERE b.call_id = @call AND b.k <> N'd';
        UPDATE dbo.orders SET status = N'processed', unit_price = b.u, total_price = b.t, failure_reason = NULL,
            processed_at = @now
        OUTPUT @call, inserted.order_id, N'published', inserted.processed_at
        INTO dbo.call_moves (call_id, order_id, moved_from, processed_at)
        FROM dbo.batch_rows b
        WHERE b.call_id = @call AND dbo.orders.order_id = b.o AND dbo.orders.order_id BETWEEN @lo AND @hi
          AND b.k = N'p' AND b.counts = 1 AND dbo.orders.status = N'published';
        UPDATE dbo.orders SET status = N'processed', unit_price = b.u, total_price = b.t, failure_reason = NULL,
            processed_at = @now
        OUTPUT @call, inserted.order_id, N'pending', inserted.processed_at
        INTO dbo.call_moves (call_id, order_id, moved_from, processed_at)
        FROM dbo.batch_rows b
        WHERE b.call_id = @call AND dbo.orders.order_id = b.o AND dbo.orders.order_id BETWEEN @lo AND @hi
          AND b.k = N'p' AND b.counts = 1 AND dbo.orders.status = N'pending';
        UPDATE dbo.orders SET status = N'processed', unit_price = b.u, total_price = b.t, failure_reason = NULL,
            processed_at = @now
        OUTPUT @call, inserted.order_id, N'published', inserted.processed_at
        INTO dbo.call_moves (call_id, order_id, moved_from, processed_at)
        FROM dbo.batch_rows b
        WHERE b.call_id = @call AND dbo.orders.order_id = b.o AND dbo.orders.order_id BETWEEN @lo AND @hi
          AND b.k = N'p' AND b.counts = 1 AND dbo.orders.status = N'published';
        UPDATE dbo.orders SET status = N'failed', processed_at = @now, failure_reason = b.r
        OUTPUT @call, inserted.order_id, N'published', inserted.processed_at
        INTO dbo.call_moves (call_id, order_id, moved_from, processed_at)
        FROM dbo.batch_rows b
        WHERE b.call_id = @call AND dbo.orders.order_id = b.o AND dbo.orders.order_id BETWEEN @lo AND @hi
          AND b.k IN (N'f', N'r') AND b.counts = 1 AND dbo.orders.status = N'published';
        UPDATE dbo.orders SET status = N'failed', processed_at = @now, failure_reason = b.r
        OUTPUT @call, inserted.order_id, N'pending', inserted.processed_at
        INTO dbo.call_moves (call_id, order_id, moved_from, processed_at)
        FROM dbo.batch_rows b
        WHERE b.call_id = @call AND dbo.orders.order_id = b.o AND dbo.orders.order_id BETWEEN @lo AND @hi
          AND b.k IN (N'f', N'r') AND b.counts = 1 AND dbo.orders.status = N'pending';
        UPDATE dbo.orders SET status = N'failed', processed_at = @now, failure_reason = b.r
        OUTPUT @call, inserted.order_id, N'published', inserted.processed_at
        INTO dbo.call_moves (call_id, order_id, moved_from, processed_at)
        FROM dbo.batch_rows b
        WHERE b.call_id = @call AND dbo.orders.order_id = b.o AND dbo.orders.order_id BETWEEN @lo AND @hi
          AND b.k IN (N'f', N'r') AND b.counts = 1 AND dbo.orders.status = N'published';
        IF EXISTS (SELECT 1
                   FROM dbo.batch_rows b
                   JOIN dbo.orders o ON o.order_id = b.o
                   WHERE b.call_id = @call AND b.k <> N'd' AND b.counts = 1
                     AND o.status NOT IN (N'processed', N'failed'))
            THROW 50002, N'an order changed status under each pass of its move', 1;
        INSERT INTO dbo.dead_letters (dead_letter_id, order_id, reason, headers, body)
        SELECT b.l, b.o, b.lr, SUBSTRING(@headers, b.hb, b.hn), SUBSTRING(@bodies, b.b, b.bn)
        FROM dbo.batch_rows b
        WHERE b.call_id = @call
          AND (b.k = N'd' OR (b.k = N'r' AND b.counts = 1)
               OR (b.k = N'f' AND EXISTS (SELECT 1 FROM dbo.call_moves m
                                          WHERE m.call_id = @call AND m.order_id = b.o)))
          AND NOT EXISTS (SELECT 1 FROM dbo.dead_letters d WITH (UPDLOCK, HOLDLOCK) WHERE d.dead_letter_id = b.l)
        ORDER BY b.n;
        SELECT b.n, b.counts, m.moved_from, m.processed_at
        FROM dbo.batch_rows b
        LEFT JOIN dbo.call_moves m ON m.call_id = @call AND m.order_id = b.o AND b.k <> N'd'
        WHERE b.call_id = @call
        ORDER BY b.n;
        INSERT INTO dbo.inbox (outbox_id, order_id)
        SELECT b.x, b.o
        FROM dbo.batch_rows b
        WHERE b.call_id = @call AND b.k <> N'd' AND b.x IS NOT NULL AND b.counts = 1
          AND NOT EXISTS (SELECT 1 FROM dbo.inbox i WITH (UPDLOCK, HOLDLOCK) WHERE i.outbox_id = b.x);
        DECLARE @from_pending BIGINT, @from_published BIGINT, @processed BIGINT, @failed BIGINT;
        SELECT @from_pending = COUNT_BIG(CASE WHEN m.moved_from = N'pending' THEN 1 END),
            @from_published = COUNT_BIG(CASE WHEN m.moved_from = N'published' THEN 1 END),
            @processed = COUNT_BIG(CASE WHEN o.status = N'processed' THEN 1 END),
            @failed = COUNT_BIG(CASE WHEN o.status = N'failed' THEN 1 END)
        FROM dbo.call_moves m JOIN dbo.orders o ON o.order_id = m.order_id AND o.order_id BETWEEN @lo AND @hi
        WHERE m.call_id = @call;
        IF @from_pending + @from_published > 0
            UPDATE dbo.order_counts SET n = n + CASE status WHEN N'pending' THEN -@from_pending
                WHEN N'published' THEN -@from_published WHEN N'processed' THEN @processed
                WHEN N'failed' THEN @failed ELSE 0 END
            WHERE slot = @slot;
        DELETE FROM dbo.call_moves WHERE call_id = @call;
        DELETE FROM dbo.batch_rows WHERE call_id = @call;
        COMMIT TRANSACTION;
    END TRY
    BEGIN CATCH
        IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION;
        THROW;
    END CATCH;
END
