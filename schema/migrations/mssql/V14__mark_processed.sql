-- One of the batch procedures of V12-V16 (see V12).
-- The consumer's plain cases, inside the transaction its caller opened: each
-- order of @rows (a JSON array of {"o": order_id, "u": unit_price,
-- "t": total_price}, every order_id between @lo and @hi) moved to processed,
-- once from each status it can leave (published, pending, published again),
-- so that the status it left is the one its pass names: Babelfish's
-- `deleted` is the row as a statement first saw it, before it waited on the
-- relay's `pending -> published`. Each pass answers the status it moved
-- from, the order's id and its processed_at.
CREATE PROCEDURE dbo.mark_processed (@rows NVARCHAR(MAX), @lo BIGINT, @hi BIGINT)
AS
BEGIN
    SET NOCOUNT ON;
    UPDATE dbo.orders SET status = N'processed', unit_price = v.u, total_price = v.t, failure_reason = NULL,
        processed_at = SYSUTCDATETIME()
    OUTPUT N'published', inserted.order_id, inserted.processed_at
    FROM OPENJSON(@rows) WITH (o BIGINT '$.o', u DECIMAL(18, 2) '$.u', t DECIMAL(18, 2) '$.t') AS v
    WHERE dbo.orders.order_id = v.o AND dbo.orders.order_id BETWEEN @lo AND @hi
      AND dbo.orders.status = N'published';
    UPDATE dbo.orders SET status = N'processed', unit_price = v.u, total_price = v.t, failure_reason = NULL,
        processed_at = SYSUTCDATETIME()
    OUTPUT N'pending', inserted.order_id, inserted.processed_at
    FROM OPENJSON(@rows) WITH (o BIGINT '$.o', u DECIMAL(18, 2) '$.u', t DECIMAL(18, 2) '$.t') AS v
    WHERE dbo.orders.order_id = v.o AND dbo.orders.order_id BETWEEN @lo AND @hi
      AND dbo.orders.status = N'pending';
    UPDATE dbo.orders SET status = N'processed', unit_price = v.u, total_price = v.t, failure_reason = NULL,
        processed_at = SYSUTCDATETIME()
    OUTPUT N'published', inserted.order_id, inserted.processed_at
    FROM OPENJSON(@rows) WITH (o BIGINT '$.o', u DECIMAL(18, 2) '$.u', t DECIMAL(18, 2) '$.t') AS v
    WHERE dbo.orders.order_id = v.o AND dbo.orders.order_id BETWEEN @lo AND @hi
      AND dbo.orders.status = N'published';
END
