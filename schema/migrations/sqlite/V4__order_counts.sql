-- Orders per status as counters, kept in the same transactions as every
-- status change, so that reading them costs O(1) however long the history.
CREATE TABLE IF NOT EXISTS order_counts (
    status  TEXT NOT NULL,
    slot    INTEGER NOT NULL,
    n       INTEGER NOT NULL,
    PRIMARY KEY (status, slot)
);

INSERT OR IGNORE INTO order_counts (status, slot, n)
SELECT s.status, 0, (SELECT COUNT(*) FROM orders o WHERE o.status = s.status)
FROM (SELECT 'pending' AS status UNION ALL SELECT 'published' UNION ALL SELECT 'processed' UNION ALL SELECT 'failed') s;
