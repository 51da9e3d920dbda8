-- The second step of a group placed together (V9): the OrderPlacedV1 outbox
-- row of each order and the pending counter, from @rows, a JSON array of
-- {"x": outbox_id, "o": order_id, "c": customer_name, "p": product_id,
-- "q": quantity, "at": created_at, "tp": traceparent, "ts": tracestate}
-- (the last two absent for none). The payload is the event as
-- `OrderPlacedV1` serialises it (the contract test compares the two), built
-- here because its quotes could not cross OPENJSON on Babelfish; the texts
-- are the same plain ones as in V9. Style 126 gives `yyyy-mm-ddThh:mi:ss.mmm`
-- on SQL Server and a space for the `T` on Babelfish, hence the REPLACE.
CREATE PROCEDURE dbo.insert_outbox (@rows NVARCHAR(MAX))
AS
BEGIN
    SET NOCOUNT ON;
    INSERT INTO dbo.outbox (outbox_id, order_id, event_type, payload, traceparent, tracestate, created_at)
    SELECT j.x, j.o, N'OrderPlacedV1',
        CONCAT(N'{"order_id":', j.o, N',"customer_name":"', j.c, N'","product_id":"', j.p, N'","quantity":', j.q,
            N',"version":1,"outbox_id":"', LOWER(CONVERT(NVARCHAR(36), j.x)), N'","created_at":"',
            REPLACE(CONVERT(NVARCHAR(30), j.at, 126), N' ', N'T'), N'Z"}'),
        j.tp, j.ts, j.at
    FROM OPENJSON(@rows) WITH (x UNIQUEIDENTIFIER '$.x', o BIGINT '$.o', c NVARCHAR(4000) '$.c',
        p NVARCHAR(4000) '$.p', q INT '$.q', at DATETIME2(3) '$.at', tp NVARCHAR(4000) '$.tp',
        ts NVARCHAR(4000) '$.ts') AS j;
    -- Counted from the rows asked for: Babelfish's @@ROWCOUNT after an INSERT ... SELECT is 0.
    DECLARE @placed BIGINT = (SELECT COUNT_BIG(*) FROM OPENJSON(@rows));
    UPDATE dbo.order_counts SET n = n + @placed WHERE status = N'pending' AND slot = @@SPID % 16;
END
