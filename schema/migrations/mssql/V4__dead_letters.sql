-- Dead letters are recorded in the consumer's transaction and published to
-- the dead-letter queue afterwards, so a crash between the commit and the
-- send can never lose one.
CREATE TABLE dbo.dead_letters (
    seq             BIGINT IDENTITY(1,1) NOT NULL,
    dead_letter_id  NVARCHAR(200) COLLATE Latin1_General_100_BIN2 NOT NULL CONSTRAINT pk_dead_letters PRIMARY KEY,
    order_id        BIGINT         NULL,
    reason          NVARCHAR(1000) NOT NULL,
    headers         NVARCHAR(MAX)  NOT NULL,
    body            VARBINARY(MAX) NOT NULL,
    created_at      DATETIME2(3)   NOT NULL CONSTRAINT df_dead_letters_created DEFAULT SYSUTCDATETIME(),
    sent_at         DATETIME2(3)   NULL
);

CREATE INDEX ix_dead_letters_unsent ON dbo.dead_letters (seq) WHERE sent_at IS NULL;
