-- orderflow initial schema (SQLite). Every statement is idempotent so that
-- several services starting at once can never trip over each other.
CREATE TABLE IF NOT EXISTS products (
    product_id  TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    list_price  TEXT NOT NULL
);

INSERT OR IGNORE INTO products (product_id, name, list_price) VALUES
    ('P123', 'Mechanical keyboard', '100.00'),
    ('P200', 'Wireless mouse', '25.50'),
    ('P300', '27-inch monitor', '249.99'),
    ('P400', 'USB-C dock', '89.90'),
    ('P500', 'Noise-cancelling headset', '159.00'),
    ('P600', 'Laptop stand', '34.95');

CREATE TABLE IF NOT EXISTS orders (
    order_id         INTEGER PRIMARY KEY AUTOINCREMENT,
    customer_name    TEXT NOT NULL,
    product_id       TEXT NOT NULL,
    quantity         INTEGER NOT NULL,
    status           TEXT NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'published', 'processed', 'failed')),
    unit_price       TEXT,
    total_price      TEXT,
    failure_reason   TEXT,
    idempotency_key  TEXT UNIQUE,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    processed_at     TEXT
);

CREATE INDEX IF NOT EXISTS orders_status ON orders (status, created_at);

CREATE TABLE IF NOT EXISTS outbox (
    outbox_id        TEXT PRIMARY KEY,
    order_id         INTEGER NOT NULL REFERENCES orders (order_id),
    event_type       TEXT NOT NULL,
    payload          TEXT NOT NULL,
    traceparent      TEXT,
    tracestate       TEXT,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    lease_owner      TEXT,
    lease_until      TEXT,
    published_at     TEXT,
    dead_at          TEXT,
    last_error       TEXT
);

-- Only unpublished, unparked rows are ever scanned by the relay.
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (next_attempt_at)
    WHERE published_at IS NULL AND dead_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_order ON outbox (order_id);

CREATE TABLE IF NOT EXISTS inbox (
    outbox_id     TEXT PRIMARY KEY,
    order_id      INTEGER NOT NULL,
    processed_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
