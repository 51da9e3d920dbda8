-- Keys compare as binary, as they do on SQLite: under the usual server
-- collation (SQL_Latin1_General_CP1_CI_AS) 'abC' and 'ABc' would be one
-- idempotency key and one product. Indexed columns are re-indexed around the
-- change. customer_name grows to 200 UTF-16 units so that every valid name
-- (100 characters, each possibly outside the BMP) fits.
DROP INDEX ux_orders_idempotency_key ON dbo.orders;
ALTER TABLE dbo.orders ALTER COLUMN idempotency_key NVARCHAR(100) COLLATE Latin1_General_100_BIN2 NULL;
CREATE UNIQUE INDEX ux_orders_idempotency_key ON dbo.orders (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
ALTER TABLE dbo.orders ALTER COLUMN product_id NVARCHAR(50) COLLATE Latin1_General_100_BIN2 NOT NULL;
ALTER TABLE dbo.orders ALTER COLUMN customer_name NVARCHAR(200) NOT NULL;
ALTER TABLE dbo.products DROP CONSTRAINT pk_products;
ALTER TABLE dbo.products ALTER COLUMN product_id NVARCHAR(50) COLLATE Latin1_General_100_BIN2 NOT NULL;
ALTER TABLE dbo.products ADD CONSTRAINT pk_products PRIMARY KEY (product_id);
ALTER TABLE dbo.outbox ALTER COLUMN lease_owner NVARCHAR(100) COLLATE Latin1_General_100_BIN2 NULL;
