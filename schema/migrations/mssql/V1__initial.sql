-- orderflow initial schema (SQL Server). One batch, no GO separators: refinery
-- sends the file as a single batch inside its own transaction.
CREATE TABLE dbo.products (
    product_id  NVARCHAR(50)  NOT NULL CONSTRAINT pk_products PRIMARY KEY,
    name        NVARCHAR(200) NOT NULL,
    list_price  DECIMAL(18,2) NOT NULL
);

INSERT INTO dbo.products (product_id, name, list_price) VALUES
    (N'P123', N'Mechanical keyboard', 100.00),
    (N'P200', N'Wireless mouse', 25.50),
    (N'P300', N'27-inch monitor', 249.99),
    (N'P400', N'USB-C dock', 89.90),
    (N'P500', N'Noise-cancelling headset', 159.00),
    (N'P600', N'Laptop stand', 34.95);

CREATE TABLE dbo.orders (
    order_id         BIGINT IDENTITY(1,1) NOT NULL CONSTRAINT pk_orders PRIMARY KEY,
    customer_name    NVARCHAR(100) NOT NULL,
    product_id       NVARCHAR(50)  NOT NULL,
    quantity         INT           NOT NULL,
    status           NVARCHAR(16)  NOT NULL CONSTRAINT df_orders_status DEFAULT N'pending',
    unit_price       DECIMAL(18,2) NULL,
    total_price      DECIMAL(18,2) NULL,
    failure_reason   NVARCHAR(400) NULL,
    idempotency_key  NVARCHAR(100) NULL,
    created_at       DATETIME2(3)  NOT NULL CONSTRAINT df_orders_created DEFAULT SYSUTCDATETIME(),
    processed_at     DATETIME2(3)  NULL,
    CONSTRAINT ck_orders_status CHECK (status IN (N'pending', N'published', N'processed', N'failed'))
);

CREATE UNIQUE INDEX ux_orders_idempotency_key ON dbo.orders (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX ix_orders_status ON dbo.orders (status, created_at);

CREATE TABLE dbo.outbox (
    outbox_id        UNIQUEIDENTIFIER NOT NULL CONSTRAINT pk_outbox PRIMARY KEY,
    order_id         BIGINT           NOT NULL CONSTRAINT fk_outbox_orders REFERENCES dbo.orders (order_id),
    event_type       NVARCHAR(100)    NOT NULL,
    payload          NVARCHAR(MAX)    NOT NULL,
    traceparent      NVARCHAR(100)    NULL,
    tracestate       NVARCHAR(512)    NULL,
    created_at       DATETIME2(3)     NOT NULL CONSTRAINT df_outbox_created DEFAULT SYSUTCDATETIME(),
    attempts         INT              NOT NULL CONSTRAINT df_outbox_attempts DEFAULT 0,
    next_attempt_at  DATETIME2(3)     NOT NULL CONSTRAINT df_outbox_next DEFAULT SYSUTCDATETIME(),
    lease_owner      NVARCHAR(100)    NULL,
    lease_until      DATETIME2(3)     NULL,
    published_at     DATETIME2(3)     NULL,
    dead_at          DATETIME2(3)     NULL,
    last_error       NVARCHAR(1000)   NULL
);

-- Filtered: the relay only ever scans unpublished, unparked rows.
CREATE INDEX ix_outbox_due ON dbo.outbox (next_attempt_at)
    INCLUDE (lease_until)
    WHERE published_at IS NULL AND dead_at IS NULL;
CREATE INDEX ix_outbox_order ON dbo.outbox (order_id);

CREATE TABLE dbo.inbox (
    outbox_id     UNIQUEIDENTIFIER NOT NULL CONSTRAINT pk_inbox PRIMARY KEY,
    order_id      BIGINT           NOT NULL,
    processed_at  DATETIME2(3)     NOT NULL CONSTRAINT df_inbox_processed DEFAULT SYSUTCDATETIME()
);
