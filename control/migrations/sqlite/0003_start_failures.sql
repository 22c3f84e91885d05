-- Why the last start of a database failed, when, and how many starts have failed in a row
-- (cleared by the next start that succeeds): shown to the tenant, and used to space out
-- the starts that clients' connections would otherwise retry at once.

ALTER TABLE databases ADD COLUMN last_error TEXT;
ALTER TABLE databases ADD COLUMN last_error_at INTEGER;
ALTER TABLE databases ADD COLUMN failed_starts INTEGER NOT NULL DEFAULT 0;
