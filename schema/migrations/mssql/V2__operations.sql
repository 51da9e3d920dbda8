-- Operations: an audit trail of requeues and retries, and indexes for the
-- retention jobs.
CREATE TABLE dbo.outbox_audit (
    audit_id      BIGINT IDENTITY(1,1) NOT NULL CONSTRAINT pk_outbox_audit PRIMARY KEY,
    outbox_id     UNIQUEIDENTIFIER NOT NULL,
    order_id      BIGINT           NOT NULL,
    action        NVARCHAR(32)     NOT NULL,
    requested_by  NVARCHAR(200)    NOT NULL,
    requested_at  DATETIME2(3)     NOT NULL CONSTRAINT df_outbox_audit_at DEFAULT SYSUTCDATETIME()
);

CREATE INDEX ix_outbox_published ON dbo.outbox (published_at) WHERE published_at IS NOT NULL;
CREATE INDEX ix_inbox_processed ON dbo.inbox (processed_at);
