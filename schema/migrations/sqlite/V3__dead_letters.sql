-- Dead letters are recorded in the consumer's transaction and published to
-- the dead-letter queue afterwards, so a crash between the commit and the
-- send can never lose one. Idempotent like V1.
CREATE TABLE IF NOT EXISTS dead_letters (
    dead_letter_id  TEXT PRIMARY KEY,
    order_id        INTEGER,
    reason          TEXT NOT NULL,
    headers         TEXT NOT NULL,
    body            BLOB NOT NULL,
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    sent_at         TEXT
);

CREATE INDEX IF NOT EXISTS dead_letters_unsent ON dead_letters (created_at) WHERE sent_at IS NULL;
