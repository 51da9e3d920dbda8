-- What lets the batch procedures (V21, V22) work set-based without a table
-- variable or a temporary table: on the TDS engine each of those creates a
-- table per call (10 ms a call, measured), and SQL Server recompiles around
-- temporary tables.
--
-- orders.placed_with: the id of the outbox row an order was placed with. It
-- ties each order `dbo.place_orders` inserts to its request (the request
-- brings the id), so its outbox row and its answer join by key, never by the
-- order's fields. NULL for orders placed before this migration.
ALTER TABLE dbo.orders ADD placed_with UNIQUEIDENTIFIER NULL;

-- The orders a consumer batch moved, kept for the rest of its call
-- (`dbo.apply_batch`): a process-keyed table (Erland Sommarskog, "How to
-- Share Data between Stored Procedures"), keyed by the session, written and
-- emptied inside the call's own transaction, so it is empty between calls.
CREATE TABLE dbo.batch_moves (
    session_id   INT          NOT NULL,
    order_id     BIGINT       NOT NULL,
    moved_from   NVARCHAR(16) NOT NULL,
    processed_at DATETIME2(3) NOT NULL,
    CONSTRAINT pk_batch_moves PRIMARY KEY (session_id, order_id)
);
