-- The consumer's batch applied in one call and one transaction (it replaces
-- V14-V15 and the message-by-message route). The consumer has read the
-- facts of the batch's orders (V16) and says for each message, in @rows (a
-- JSON array, texts carried as V19 says), what it is:
--   {"n": the caller's sequence number, "k": the kind, "x": its outbox id or
--    absent, "o": its order id or absent, "u"/"t": unit and total price (kind
--    p), "r": the order's failure reason (kinds f, r), "lr": the dead
--    letter's reason, "l": its id, "b"/"bn" and "hb"/"hn": where its body
--    starts in @bodies and its headers' JSON in @headers (from 1), and their
--    lengths (kinds f, r, d)}
-- Headers travel apart, their JSON made ASCII so that an offset counts alike
-- on every engine: a header may be long, and the TDS engine's OPENJSON cuts
-- a text at 4,000 characters.
-- Kinds: p, an order to process; f, an order to fail (unknown product); r, a
-- rejected message of its own order (fails it); d, a dead letter only.
-- The caller sends each outbox id and each order at most once among the
-- kinds p, f and r, and each dead letter id at most once (a batch that
-- repeats one goes in several calls): a test of the batch against itself
-- would read @rows again for every row.
-- - A message of kind p, f or r counts unless the inbox holds its outbox id
--   (one without an id always counts: the status guard dedupes). Only a
--   message that counts moves its order, and enters the inbox.
-- - An order moves once from each status it can leave (published, pending,
--   published again), so that the status it left is the one its pass names
--   (the TDS engine's `deleted` is the row as first seen, before the
--   statement waited on the relay's move); an order still not final after
--   the passes makes the call fail with 50002 (transient: done again). The
--   moves are kept in dbo.batch_moves (V20) for the rest of the call, by
--   order (the TDS engine refuses a column of the FROM clause in OUTPUT ...
--   INTO).
-- - Dead letters: every d, every r that counts, an f whose order moved; an
--   id the table holds is not written again; numbered (seq) in the order of "n".
-- - The counters move by what moved, in slot @slot.
-- It answers one row per message, in the order of "n": the number, whether
-- it counted, the status its order left (NULL: not moved) and the time.
-- No table variable (V20); every join with dbo.orders also names the range
-- `order_id BETWEEN @lo AND @hi`, which keeps the TDS engine's planner on the
-- primary key (it cannot know how many rows a JSON parameter holds). Carried texts are read as
-- dbo.place_orders reads them (V21), their common cases inline.
CREATE PROCEDURE dbo.apply_batch (@rows NVARCHAR(MAX), @bodies VARBINARY(MAX), @headers NVARCHAR(MAX), @slot INT)
AS
BEGIN
    SET NOCOUNT ON;
    SET XACT_ABORT ON;
    DECLARE @now DATETIME2(3) = SYSUTCDATETIME();
    DECLARE @lo BIGINT, @hi BIGINT;
    BEGIN TRY
        BEGIN TRANSACTION;
        SELECT @lo = MIN(j.o), @hi = MAX(j.o)
        FROM OPENJSON(@rows) WITH (k NCHAR(1) '$.k', o BIGINT '$.o') AS j WHERE j.k <> N'd';
        UPDATE dbo.orders SET status = N'processed', unit_price = j.u, total_price = j.t, failure_reason = NULL,
            processed_at = @now
        OUTPUT @@SPID, inserted.order_id, N'published', inserted.processed_at
        INTO dbo.batch_moves (session_id, order_id, moved_from, processed_at)
        FROM OPENJSON(@rows) WITH (n INT '$.n', k NCHAR(1) '$.k', x UNIQUEIDENTIFIER '$.x', o BIGINT '$.o',
            u DECIMAL(18, 2) '$.u', t DECIMAL(18, 2) '$.t') AS j
        WHERE dbo.orders.order_id = j.o AND dbo.orders.order_id BETWEEN @lo AND @hi AND j.k = N'p'
          AND dbo.orders.status = N'published'
          AND (j.x IS NULL OR NOT EXISTS (SELECT 1 FROM dbo.inbox i WITH (UPDLOCK, HOLDLOCK) WHERE i.outbox_id = j.x));
        UPDATE dbo.orders SET status = N'processed', unit_price = j.u, total_price = j.t, failure_reason = NULL,
            processed_at = @now
        OUTPUT @@SPID, inserted.order_id, N'pending', inserted.processed_at
        INTO dbo.batch_moves (session_id, order_id, moved_from, processed_at)
        FROM OPENJSON(@rows) WITH (n INT '$.n', k NCHAR(1) '$.k', x UNIQUEIDENTIFIER '$.x', o BIGINT '$.o',
            u DECIMAL(18, 2) '$.u', t DECIMAL(18, 2) '$.t') AS j
        WHERE dbo.orders.order_id = j.o AND dbo.orders.order_id BETWEEN @lo AND @hi AND j.k = N'p'
          AND dbo.orders.status = N'pending'
          AND (j.x IS NULL OR NOT EXISTS (SELECT 1 FROM dbo.inbox i WITH (UPDLOCK, HOLDLOCK) WHERE i.outbox_id = j.x));
        UPDATE dbo.orders SET status = N'processed', unit_price = j.u, total_price = j.t, failure_reason = NULL,
            processed_at = @now
        OUTPUT @@SPID, inserted.order_id, N'published', inserted.processed_at
        INTO dbo.batch_moves (session_id, order_id, moved_from, processed_at)
        FROM OPENJSON(@rows) WITH (n INT '$.n', k NCHAR(1) '$.k', x UNIQUEIDENTIFIER '$.x', o BIGINT '$.o',
            u DECIMAL(18, 2) '$.u', t DECIMAL(18, 2) '$.t') AS j
        WHERE dbo.orders.order_id = j.o AND dbo.orders.order_id BETWEEN @lo AND @hi AND j.k = N'p'
          AND dbo.orders.status = N'published'
          AND (j.x IS NULL OR NOT EXISTS (SELECT 1 FROM dbo.inbox i WITH (UPDLOCK, HOLDLOCK) WHERE i.outbox_id = j.x));
        UPDATE dbo.orders SET status = N'failed', processed_at = @now,
            failure_reason = CASE WHEN j.r IS NULL OR CHARINDEX(N'%', j.r) = 0 THEN j.r
                WHEN CHARINDEX(N'%0', j.r) + CHARINDEX(N'%1', j.r) = 0
                THEN REPLACE(REPLACE(REPLACE(j.r, N'%22', N'"'), N'%5C', N'\'), N'%25', N'%')
                ELSE dbo.carried_text(j.r) END
        OUTPUT @@SPID, inserted.order_id, N'published', inserted.processed_at
        INTO dbo.batch_moves (session_id, order_id, moved_from, processed_at)
        FROM OPENJSON(@rows) WITH (n INT '$.n', k NCHAR(1) '$.k', x UNIQUEIDENTIFIER '$.x', o BIGINT '$.o',
            r NVARCHAR(MAX) '$.r') AS j
        WHERE dbo.orders.order_id = j.o AND dbo.orders.order_id BETWEEN @lo AND @hi AND j.k IN (N'f', N'r')
          AND dbo.orders.status = N'published'
          AND (j.x IS NULL OR NOT EXISTS (SELECT 1 FROM dbo.inbox i WITH (UPDLOCK, HOLDLOCK) WHERE i.outbox_id = j.x));
        UPDATE dbo.orders SET status = N'failed', processed_at = @now,
            failure_reason = CASE WHEN j.r IS NULL OR CHARINDEX(N'%', j.r) = 0 THEN j.r
                WHEN CHARINDEX(N'%0', j.r) + CHARINDEX(N'%1', j.r) = 0
                THEN REPLACE(REPLACE(REPLACE(j.r, N'%22', N'"'), N'%5C', N'\'), N'%25', N'%')
                ELSE dbo.carried_text(j.r) END
        OUTPUT @@SPID, inserted.order_id, N'pending', inserted.processed_at
        INTO dbo.batch_moves (session_id, order_id, moved_from, processed_at)
        FROM OPENJSON(@rows) WITH (n INT '$.n', k NCHAR(1) '$.k', x UNIQUEIDENTIFIER '$.x', o BIGINT '$.o',
            r NVARCHAR(MAX) '$.r') AS j
        WHERE dbo.orders.order_id = j.o AND dbo.orders.order_id BETWEEN @lo AND @hi AND j.k IN (N'f', N'r')
          AND dbo.orders.status = N'pending'
          AND (j.x IS NULL OR NOT EXISTS (SELECT 1 FROM dbo.inbox i WITH (UPDLOCK, HOLDLOCK) WHERE i.outbox_id = j.x));
        UPDATE dbo.orders SET status = N'failed', processed_at = @now,
            failure_reason = CASE WHEN j.r IS NULL OR CHARINDEX(N'%', j.r) = 0 THEN j.r
                WHEN CHARINDEX(N'%0', j.r) + CHARINDEX(N'%1', j.r) = 0
                THEN REPLACE(REPLACE(REPLACE(j.r, N'%22', N'"'), N'%5C', N'\'), N'%25', N'%')
                ELSE dbo.carried_text(j.r) END
        OUTPUT @@SPID, inserted.order_id, N'published', inserted.processed_at
        INTO dbo.batch_moves (session_id, order_id, moved_from, processed_at)
        FROM OPENJSON(@rows) WITH (n INT '$.n', k NCHAR(1) '$.k', x UNIQUEIDENTIFIER '$.x', o BIGINT '$.o',
            r NVARCHAR(MAX) '$.r') AS j
        WHERE dbo.orders.order_id = j.o AND dbo.orders.order_id BETWEEN @lo AND @hi AND j.k IN (N'f', N'r')
          AND dbo.orders.status = N'published'
          AND (j.x IS NULL OR NOT EXISTS (SELECT 1 FROM dbo.inbox i WITH (UPDLOCK, HOLDLOCK) WHERE i.outbox_id = j.x));
        IF EXISTS (SELECT 1
                   FROM OPENJSON(@rows) WITH (k NCHAR(1) '$.k', x UNIQUEIDENTIFIER '$.x', o BIGINT '$.o') AS j
                   JOIN dbo.orders o ON o.order_id = j.o AND o.order_id BETWEEN @lo AND @hi
                   WHERE j.k <> N'd' AND o.status IN (N'pending', N'published')
                     AND (j.x IS NULL OR NOT EXISTS (SELECT 1 FROM dbo.inbox i WHERE i.outbox_id = j.x)))
            THROW 50002, N'an order changed status under each pass of its move', 1;
        INSERT INTO dbo.dead_letters (dead_letter_id, order_id, reason, headers, body)
        SELECT t.l, j.o, t.lr, SUBSTRING(@headers, j.hb, j.hn), SUBSTRING(@bodies, j.b, j.bn)
        FROM OPENJSON(@rows) WITH (n INT '$.n', k NCHAR(1) '$.k', x UNIQUEIDENTIFIER '$.x', o BIGINT '$.o',
            lr NVARCHAR(MAX) '$.lr', l NVARCHAR(MAX) '$.l', b INT '$.b', bn INT '$.bn', hb INT '$.hb',
            hn INT '$.hn') AS j
        CROSS APPLY (SELECT
            CASE WHEN j.l IS NULL OR CHARINDEX(N'%', j.l) = 0 THEN j.l
                 WHEN CHARINDEX(N'%0', j.l) + CHARINDEX(N'%1', j.l) = 0
                 THEN REPLACE(REPLACE(REPLACE(j.l, N'%22', N'"'), N'%5C', N'\'), N'%25', N'%')
                 ELSE dbo.carried_text(j.l) END AS l,
            CASE WHEN j.lr IS NULL OR CHARINDEX(N'%', j.lr) = 0 THEN j.lr
                 WHEN CHARINDEX(N'%0', j.lr) + CHARINDEX(N'%1', j.lr) = 0
                 THEN REPLACE(REPLACE(REPLACE(j.lr, N'%22', N'"'), N'%5C', N'\'), N'%25', N'%')
                 ELSE dbo.carried_text(j.lr) END AS lr) AS t
        WHERE (j.k = N'd'
               OR (j.k = N'r' AND (j.x IS NULL OR NOT EXISTS (SELECT 1 FROM dbo.inbox i WHERE i.outbox_id = j.x)))
               OR (j.k = N'f' AND EXISTS (SELECT 1 FROM dbo.batch_moves m WHERE m.session_id = @@SPID AND m.order_id = j.o)))
          AND NOT EXISTS (SELECT 1 FROM dbo.dead_letters d WITH (UPDLOCK, HOLDLOCK) WHERE d.dead_letter_id = t.l)
        ORDER BY j.n;
        SELECT j.n,
            CAST(CASE WHEN j.k = N'd' OR j.x IS NULL
                        OR NOT EXISTS (SELECT 1 FROM dbo.inbox i WHERE i.outbox_id = j.x) THEN 1 ELSE 0 END AS BIT),
            m.moved_from, m.processed_at
        FROM OPENJSON(@rows) WITH (n INT '$.n', k NCHAR(1) '$.k', x UNIQUEIDENTIFIER '$.x', o BIGINT '$.o') AS j
        LEFT JOIN dbo.batch_moves m ON m.session_id = @@SPID AND m.order_id = j.o AND j.k <> N'd'
        ORDER BY j.n;
        INSERT INTO dbo.inbox (outbox_id, order_id)
        SELECT j.x, j.o
        FROM OPENJSON(@rows) WITH (k NCHAR(1) '$.k', x UNIQUEIDENTIFIER '$.x', o BIGINT '$.o') AS j
        WHERE j.k <> N'd' AND j.x IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM dbo.inbox i WITH (UPDLOCK, HOLDLOCK) WHERE i.outbox_id = j.x);
        DECLARE @from_pending BIGINT, @from_published BIGINT, @processed BIGINT, @failed BIGINT;
        SELECT @from_pending = COUNT_BIG(CASE WHEN m.moved_from = N'pending' THEN 1 END),
            @from_published = COUNT_BIG(CASE WHEN m.moved_from = N'published' THEN 1 END),
            @processed = COUNT_BIG(CASE WHEN o.status = N'processed' THEN 1 END),
            @failed = COUNT_BIG(CASE WHEN o.status = N'failed' THEN 1 END)
        FROM dbo.batch_moves m JOIN dbo.orders o ON o.order_id = m.order_id AND o.order_id BETWEEN @lo AND @hi
        WHERE m.session_id = @@SPID;
        IF @from_pending + @from_published > 0
            UPDATE dbo.order_counts SET n = n + CASE status WHEN N'pending' THEN -@from_pending
                WHEN N'published' THEN -@from_published WHEN N'processed' THEN @processed
                WHEN N'failed' THEN @failed ELSE 0 END
            WHERE slot = @slot;
        DELETE FROM dbo.batch_moves WHERE session_id = @@SPID;
        COMMIT TRANSACTION;
    END TRY
    BEGIN CATCH
        IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION;
        THROW;
    END CATCH;
END
