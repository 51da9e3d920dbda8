-- One of the batch procedures of V12-V16 (see V12).
-- The end of the consumer's batch, inside the transaction its caller opened
-- and commits: the inbox rows of the messages whose orders it moved, each
-- once (@rows, a JSON array of {"x": outbox_id, "o": order_id}), and the
-- per-status counters in one of their sixteen slots.
CREATE PROCEDURE dbo.record_batch (@rows NVARCHAR(MAX), @pending BIGINT, @published BIGINT, @processed BIGINT,
    @failed BIGINT, @slot INT)
AS
BEGIN
    SET NOCOUNT ON;
    INSERT INTO dbo.inbox (outbox_id, order_id)
    SELECT v.x, v.o
    FROM OPENJSON(@rows) WITH (x UNIQUEIDENTIFIER '$.x', o BIGINT '$.o') AS v
    WHERE NOT EXISTS (SELECT 1 FROM dbo.inbox i WITH (UPDLOCK, HOLDLOCK) WHERE i.outbox_id = v.x);
    IF @pending <> 0 OR @published <> 0 OR @processed <> 0 OR @failed <> 0
        UPDATE dbo.order_counts SET n = n + CASE status WHEN N'pending' THEN @pending
            WHEN N'published' THEN @published WHEN N'processed' THEN @processed WHEN N'failed' THEN @failed
            ELSE 0 END
        WHERE slot = @slot;
END
