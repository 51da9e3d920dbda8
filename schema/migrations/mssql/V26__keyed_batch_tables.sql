-- dbo.apply_batch (V22) reads its JSON parameter once, into dbo.batch_rows,
-- and every pass joins that table by key. The orders it moved wait in
-- dbo.call_moves (V20's dbo.batch_moves keyed anew, under a new name so
-- that V22's procedure works until V27 replaces it, and V30 drops the
-- old table). Rows in both belong to one call: a NEWID() the call draws, not
-- the session, so a lookup meets only its own call's rows (the TDS engine
-- keeps a deleted row's index entry until its vacuum, and a session's key
-- gathered thousands of them a minute). The procedure's statements and
-- answers stay V22's, only where they read the batch from changes (V27).
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
    call_id    UNIQUEIDENTIFIER NOT NULL,
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
    CONSTRAINT pk_batch_rows PRIMARY KEY (call_id, n)
);

CREATE INDEX ix_batch_rows_order ON dbo.batch_rows (call_id, o);

CREATE TABLE dbo.call_moves (
    call_id      UNIQUEIDENTIFIER NOT NULL,
    order_id     BIGINT           NOT NULL,
    moved_from   NVARCHAR(16)     NOT NULL,
    processed_at DATETIME2(3)     NOT NULL,
    CONSTRAINT pk_call_moves PRIMARY KEY (call_id, order_id)
);

