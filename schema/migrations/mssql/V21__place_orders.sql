-- A group of orders placed in one call and one transaction: the only way an
-- order is placed (it replaces V8-V10's three routes). @orders is a JSON
-- array with one object per order, its texts carried (V19):
-- {"n": the caller's sequence number, "c": customer_name, "p": product_id,
--  "q": quantity, "k": idempotency_key or absent, "x": the id of its outbox
--  row, "e": the event's JSON without its order id and time (what follows
--  `{"order_id":0`, up to its closing brace), "tp"/"ts": the trace context or
--  absent}. It answers one row per order, in the order of "n", carrying "n":
-- whether the order is new, and the order.
--
-- A key that names an order already answers that order. The caller sends
-- each key at most once (a group that repeats one goes in several calls): a
-- test of the group against itself would read @orders again for every row. Each new order carries its request's outbox id
-- (`placed_with`, V20), by which its outbox row and its answer find it; the
-- ids the insert takes lie between IDENT_CURRENT read before it and after
-- it, so those joins seek a short range of the primary key. No table variable (V20).
-- Counts come from rows, not @@ROWCOUNT (0 after an INSERT ... SELECT on the
-- TDS engine). Text columns are read wider than the table's, so a value too
-- long fails the insert (2628) and the group; the caller then places each of
-- its orders alone. Style 126 gives `yyyy-mm-ddThh:mi:ss.mmm` on SQL Server
-- and a space for the `T` on the TDS engine, hence the REPLACE. The counter
-- slot follows the session, so concurrent writers rarely share a row. Each
-- carried text is read by V19's rules, its common cases inline (a text with
-- no `%`, or with no control character): a call of dbo.carried_text costs the
-- TDS engine 0.6 ms, and the event text of every order holds a `%22`.
CREATE PROCEDURE dbo.place_orders (@orders NVARCHAR(MAX), @event_type NVARCHAR(100), @count INT, @keyed BIT)
AS
BEGIN
    SET NOCOUNT ON;
    SET XACT_ABORT ON;
    BEGIN TRY
        BEGIN TRANSACTION;
        DECLARE @from BIGINT = COALESCE(IDENT_CURRENT(N'dbo.orders'), 0), @to BIGINT;
        INSERT INTO dbo.orders (customer_name, product_id, quantity, idempotency_key, placed_with)
        SELECT t.c, t.p, j.q, t.k, j.x
        FROM OPENJSON(@orders) WITH (n INT '$.n', c NVARCHAR(MAX) '$.c', p NVARCHAR(MAX) '$.p', q INT '$.q',
            k NVARCHAR(MAX) '$.k', x UNIQUEIDENTIFIER '$.x') AS j
        CROSS APPLY (SELECT
            CASE WHEN j.c IS NULL OR CHARINDEX(N'%', j.c) = 0 THEN j.c
                 WHEN CHARINDEX(N'%0', j.c) + CHARINDEX(N'%1', j.c) = 0
                 THEN REPLACE(REPLACE(REPLACE(j.c, N'%22', N'"'), N'%5C', N'\'), N'%25', N'%')
                 ELSE dbo.carried_text(j.c) END AS c,
            CASE WHEN j.p IS NULL OR CHARINDEX(N'%', j.p) = 0 THEN j.p
                 WHEN CHARINDEX(N'%0', j.p) + CHARINDEX(N'%1', j.p) = 0
                 THEN REPLACE(REPLACE(REPLACE(j.p, N'%22', N'"'), N'%5C', N'\'), N'%25', N'%')
                 ELSE dbo.carried_text(j.p) END AS p,
            CASE WHEN j.k IS NULL OR CHARINDEX(N'%', j.k) = 0 THEN j.k
                 WHEN CHARINDEX(N'%0', j.k) + CHARINDEX(N'%1', j.k) = 0
                 THEN REPLACE(REPLACE(REPLACE(j.k, N'%22', N'"'), N'%5C', N'\'), N'%25', N'%')
                 ELSE dbo.carried_text(j.k) END AS k) AS t
        WHERE j.k IS NULL
           OR NOT EXISTS (SELECT 1 FROM dbo.orders o WITH (UPDLOCK, HOLDLOCK) WHERE o.idempotency_key = t.k);
        SET @to = IDENT_CURRENT(N'dbo.orders');
        INSERT INTO dbo.outbox (outbox_id, order_id, event_type, payload, traceparent, tracestate, created_at)
        OUTPUT inserted.outbox_id, inserted.order_id, inserted.created_at
        SELECT j.x, o.order_id, @event_type,
            CONCAT(N'{"order_id":', o.order_id, t.e, N',"created_at":"',
                REPLACE(CONVERT(NVARCHAR(30), o.created_at, 126), N' ', N'T'), N'Z"}'),
            t.tp, t.ts, o.created_at
        FROM OPENJSON(@orders) WITH (x UNIQUEIDENTIFIER '$.x', e NVARCHAR(MAX) '$.e', tp NVARCHAR(MAX) '$.tp',
            ts NVARCHAR(MAX) '$.ts') AS j
        JOIN dbo.orders o ON o.order_id BETWEEN @from AND @to AND o.placed_with = j.x
        CROSS APPLY (SELECT
            CASE WHEN j.e IS NULL OR CHARINDEX(N'%', j.e) = 0 THEN j.e
                 WHEN CHARINDEX(N'%0', j.e) + CHARINDEX(N'%1', j.e) = 0
                 THEN REPLACE(REPLACE(REPLACE(j.e, N'%22', N'"'), N'%5C', N'\'), N'%25', N'%')
                 ELSE dbo.carried_text(j.e) END AS e,
            CASE WHEN j.tp IS NULL OR CHARINDEX(N'%', j.tp) = 0 THEN j.tp
                 WHEN CHARINDEX(N'%0', j.tp) + CHARINDEX(N'%1', j.tp) = 0
                 THEN REPLACE(REPLACE(REPLACE(j.tp, N'%22', N'"'), N'%5C', N'\'), N'%25', N'%')
                 ELSE dbo.carried_text(j.tp) END AS tp,
            CASE WHEN j.ts IS NULL OR CHARINDEX(N'%', j.ts) = 0 THEN j.ts
                 WHEN CHARINDEX(N'%0', j.ts) + CHARINDEX(N'%1', j.ts) = 0
                 THEN REPLACE(REPLACE(REPLACE(j.ts, N'%22', N'"'), N'%5C', N'\'), N'%25', N'%')
                 ELSE dbo.carried_text(j.ts) END AS ts) AS t;
        -- Without keys every order was inserted (or the call failed); with
        -- them, the orders that carry their request's outbox id.
        DECLARE @placed BIGINT = @count;
        IF @keyed = 1
            SELECT @placed = COUNT_BIG(*)
            FROM OPENJSON(@orders) WITH (x UNIQUEIDENTIFIER '$.x') AS j
            JOIN dbo.orders o ON o.order_id BETWEEN @from AND @to AND o.placed_with = j.x;
        IF @placed > 0
            UPDATE dbo.order_counts SET n = n + @placed WHERE status = N'pending' AND slot = @@SPID % 16;
        -- A key's request that placed nothing: the order its key names.
        IF @keyed = 1
            SELECT j.n, o.order_id, o.customer_name, o.product_id, o.quantity, o.status, o.unit_price,
                o.total_price, o.failure_reason, o.created_at, o.processed_at
            FROM OPENJSON(@orders) WITH (n INT '$.n', k NVARCHAR(MAX) '$.k', x UNIQUEIDENTIFIER '$.x') AS j
            CROSS APPLY (SELECT
                CASE WHEN j.k IS NULL OR CHARINDEX(N'%', j.k) = 0 THEN j.k
                     WHEN CHARINDEX(N'%0', j.k) + CHARINDEX(N'%1', j.k) = 0
                     THEN REPLACE(REPLACE(REPLACE(j.k, N'%22', N'"'), N'%5C', N'\'), N'%25', N'%')
                     ELSE dbo.carried_text(j.k) END AS k) AS t
            JOIN dbo.orders o ON o.idempotency_key = t.k
            WHERE j.k IS NOT NULL AND (o.placed_with IS NULL OR o.placed_with <> j.x);
        COMMIT TRANSACTION;
    END TRY
    BEGIN CATCH
        IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION;
        THROW;
    END CATCH;
END
