-- Operations: an audit trail of requeues and retries, and indexes for the
-- retention jobs. Idempotent like V1.
CREATE TABLE IF NOT EXISTS outbox_audit (
    audit_id      INTEGER PRIMARY KEY AUTOINCREMENT,
    outbox_id     TEXT NOT NULL,
    order_id      INTEGER NOT NULL,
    action        TEXT NOT NULL,
    requested_by  TEXT NOT NULL,
    requested_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE INDEX IF NOT EXISTS outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS inbox_processed ON inbox (processed_at);
