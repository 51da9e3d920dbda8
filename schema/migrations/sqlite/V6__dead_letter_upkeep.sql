-- Dead letters the broker refuses are tried a few times, then set aside as
-- undeliverable (kept and listed for operators, never again ahead of the
-- others); sent ones are deleted by retention. The unsent index covers the
-- publishing query's order (created_at, then rowid).
ALTER TABLE dead_letters ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE dead_letters ADD COLUMN last_error TEXT;
ALTER TABLE dead_letters ADD COLUMN undeliverable_at TEXT;
DROP INDEX IF EXISTS dead_letters_unsent;
CREATE INDEX IF NOT EXISTS dead_letters_unsent ON dead_letters (created_at)
    WHERE sent_at IS NULL AND undeliverable_at IS NULL;
CREATE INDEX IF NOT EXISTS dead_letters_sent ON dead_letters (sent_at) WHERE sent_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS dead_letters_undeliverable ON dead_letters (undeliverable_at)
    WHERE undeliverable_at IS NOT NULL;
