-- The orders of a group placed together, the first of its two steps (see
-- V10 and `mssql/orders.rs`): one row each from @orders, a JSON array of
-- {"c": customer_name, "p": product_id, "q": quantity}, answered with the
-- rows as inserted, so the caller can tell each its id. A procedure, parsed
-- once per session: a whole group costs one short call, where one
-- `dbo.place_order` per order cost 1.6 ms of Babelfish's time each. Only
-- orders without an idempotency key come here, and only texts that JSON
-- carries unescaped (no `"`, `\` or control character): Babelfish's OPENJSON
-- leaves a string's escapes in. Text columns are read wider than the table's,
-- so a value too long fails the insert (2628) instead of being cut.
CREATE PROCEDURE dbo.insert_orders (@orders NVARCHAR(MAX))
AS
BEGIN
    SET NOCOUNT ON;
    INSERT INTO dbo.orders (customer_name, product_id, quantity)
    OUTPUT inserted.order_id, inserted.customer_name, inserted.product_id, inserted.quantity, inserted.created_at
    SELECT j.c, j.p, j.q
    FROM OPENJSON(@orders) WITH (c NVARCHAR(4000) '$.c', p NVARCHAR(4000) '$.p', q INT '$.q') AS j;
END
