-- A dead letter an operator replayed (its order sent again through the
-- outbox) is marked, so that failure groups count only the open ones and a
-- group replay never sends the same letter twice.
ALTER TABLE dead_letters ADD COLUMN replayed_at TEXT;
CREATE INDEX IF NOT EXISTS dead_letters_open ON dead_letters (created_at) WHERE replayed_at IS NULL;
