-- One of the batch procedures of V12-V15 (see V12).
-- The inbox rows of a batch, each once, inside the caller's transaction:
-- @rows is a JSON array of {"x": outbox_id, "o": order_id}. Answers the ids
-- that were new.
CREATE PROCEDURE dbo.record_inboxes (@rows NVARCHAR(MAX))
AS
BEGIN
    SET NOCOUNT ON;
    INSERT INTO dbo.inbox (outbox_id, order_id)
    OUTPUT inserted.outbox_id
    SELECT v.x, v.o
    FROM OPENJSON(@rows) WITH (x UNIQUEIDENTIFIER '$.x', o BIGINT '$.o') AS v
    WHERE NOT EXISTS (SELECT 1 FROM dbo.inbox i WITH (UPDLOCK, HOLDLOCK) WHERE i.outbox_id = v.x);
END
