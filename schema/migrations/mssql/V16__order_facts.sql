-- One of the batch procedures of V12-V16 (see V12).
-- The facts the consumer decides on, for every order of a batch: @ids is a
-- comma-separated list of order ids, all between @lo and @hi. One row per
-- outbox row of each order (an order's messages may carry only those ids).
CREATE PROCEDURE dbo.order_facts (@ids NVARCHAR(MAX), @lo BIGINT, @hi BIGINT)
AS
BEGIN
    SET NOCOUNT ON;
    SELECT o.status, o.quantity, o.product_id, p.list_price, x.outbox_id, o.order_id, o.customer_name,
        o.product_id, o.quantity, o.status, o.unit_price, o.total_price, o.failure_reason, o.created_at,
        o.processed_at
    FROM dbo.orders o
    LEFT JOIN dbo.products p ON p.product_id = o.product_id
    LEFT JOIN dbo.outbox x ON x.order_id = o.order_id
    WHERE o.order_id IN (SELECT CAST(s.value AS BIGINT) FROM STRING_SPLIT(@ids, N',') AS s)
      AND o.order_id BETWEEN @lo AND @hi;
END
