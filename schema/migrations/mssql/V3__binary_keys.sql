-- Keys compare as binary, as they do on SQLite: under the usual server
-- collation (SQL_Latin1_General_CP1_CI_AS) 'abC' and 'ABc' would be one
-- idempotency key and one product. customer_name grows to 200 UTF-16 units so
-- that every valid name (100 characters, each possibly outside the BMP) fits.
--
-- Each column is replaced, not altered: a new column of the new type, a copy,
-- the old column dropped and the new one renamed. Babelfish (Aurora's SQL
-- Server endpoint) refuses ALTER COLUMN with COLLATE or NOT NULL, which SQL
-- Server takes. A NOT NULL column is added with a default that is dropped
-- after the copy, except on Babelfish, whose defaults are no constraints that
-- can be dropped (there the default N'' stays, and no statement relies on it).
-- The copies run through EXEC because SQL Server compiles the
-- whole batch first, before the new columns exist. This file replaced a first
-- text of V3 (in migrations/mssql-superseded) that SQL Server had applied:
-- MssqlStore::connect accepts that text's checksum as this one's.
DROP INDEX ux_orders_idempotency_key ON dbo.orders;
ALTER TABLE dbo.orders ADD idempotency_key_v3 NVARCHAR(100) COLLATE Latin1_General_100_BIN2 NULL;
EXEC (N'UPDATE dbo.orders SET idempotency_key_v3 = idempotency_key');
ALTER TABLE dbo.orders DROP COLUMN idempotency_key;
EXEC sp_rename N'dbo.orders.idempotency_key_v3', N'idempotency_key', N'COLUMN';
CREATE UNIQUE INDEX ux_orders_idempotency_key ON dbo.orders (idempotency_key)
    WHERE idempotency_key IS NOT NULL;

ALTER TABLE dbo.orders ADD product_id_v3 NVARCHAR(50) COLLATE Latin1_General_100_BIN2 NOT NULL
    CONSTRAINT df_orders_product_v3 DEFAULT N'';
EXEC (N'UPDATE dbo.orders SET product_id_v3 = product_id');
IF SERVERPROPERTY(N'babelfish') IS NULL EXEC (N'ALTER TABLE dbo.orders DROP CONSTRAINT df_orders_product_v3');
ALTER TABLE dbo.orders DROP COLUMN product_id;
EXEC sp_rename N'dbo.orders.product_id_v3', N'product_id', N'COLUMN';

ALTER TABLE dbo.orders ADD customer_name_v3 NVARCHAR(200) NOT NULL CONSTRAINT df_orders_customer_v3 DEFAULT N'';
EXEC (N'UPDATE dbo.orders SET customer_name_v3 = customer_name');
IF SERVERPROPERTY(N'babelfish') IS NULL EXEC (N'ALTER TABLE dbo.orders DROP CONSTRAINT df_orders_customer_v3');
ALTER TABLE dbo.orders DROP COLUMN customer_name;
EXEC sp_rename N'dbo.orders.customer_name_v3', N'customer_name', N'COLUMN';

ALTER TABLE dbo.products DROP CONSTRAINT pk_products;
ALTER TABLE dbo.products ADD product_id_v3 NVARCHAR(50) COLLATE Latin1_General_100_BIN2 NOT NULL
    CONSTRAINT df_products_id_v3 DEFAULT N'';
EXEC (N'UPDATE dbo.products SET product_id_v3 = product_id');
IF SERVERPROPERTY(N'babelfish') IS NULL EXEC (N'ALTER TABLE dbo.products DROP CONSTRAINT df_products_id_v3');
ALTER TABLE dbo.products DROP COLUMN product_id;
EXEC sp_rename N'dbo.products.product_id_v3', N'product_id', N'COLUMN';
ALTER TABLE dbo.products ADD CONSTRAINT pk_products PRIMARY KEY (product_id);

ALTER TABLE dbo.outbox ADD lease_owner_v3 NVARCHAR(100) COLLATE Latin1_General_100_BIN2 NULL;
EXEC (N'UPDATE dbo.outbox SET lease_owner_v3 = lease_owner');
ALTER TABLE dbo.outbox DROP COLUMN lease_owner;
EXEC sp_rename N'dbo.outbox.lease_owner_v3', N'lease_owner', N'COLUMN';
