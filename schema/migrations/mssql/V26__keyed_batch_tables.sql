-- dbo.apply_batch (V22) reads its JSON parameter once, into dbo.batch_rows,
-- a process-keyed table as dbo.batch_moves is (V20), and every pass joins
-- that table by key. Its statements and answers are V22's, what changed is
-- where they read the batch from (V27).
--
-- Why: a join of a big table with `OPENJSON(@rows)` leaves the plan to
-- estimates the server cannot make well. The statistics of a queue table lag
-- its rows (a backlog built in seconds reads as "no row is pending"), and
-- the planner then scans the table and reads the JSON once per row it finds:
-- docs/performance.md shows the cost on the TDS engine. A keyed table
-- gives each join an index on both sides, so a wrong guess costs probes, not
-- a rescan. Each message's texts are decoded once here, and whether it
-- counts (its outbox id not yet in the inbox) is settled once, under the
-- inbox's key-range lock, before any order moves.
CREATE TABLE dbo.batch_rows (
    session_id INT              NOT NULL,
    n          INT              NOT NULL,
    k          NCHAR(1)         NOT NULL,
    x          UNIQUEIDENTIFIER NULL,
    o          BIGINT           NULL,
    u          DECIMAL(18, 2)   NULL,
    t          DECIMAL(18, 2)   NULL,
    r          NVARCHAR(MAX)    NULL,
    l          NVARCHAR(MAX)    COLLATE Latin1_General_100_BIN2 NULL,
    lr         NVARCHAR(MAX)    NULL,
    b          INT              NULL,
    bn         INT              NULL,
    hb         INT              NULL,
    hn         INT              NULL,
    counts     BIT              NOT NULL,
    CONSTRAINT pk_batch_rows PRIMARY KEY (session_id, n)
);

CREATE INDEX ix_batch_rows_order ON dbo.batch_rows (session_id, o);

-- The relay's confirmed ids, for dbo.mark_published (V29) as dbo.batch_rows
-- is for dbo.apply_batch: read from the parameter once, joined by key.
CREATE TABLE dbo.marked_rows (
    session_id INT              NOT NULL,
    outbox_id  UNIQUEIDENTIFIER NOT NULL,
    order_id   BIGINT           NULL,
    CONSTRAINT pk_marked_rows PRIMARY KEY (session_id, outbox_id)
);
