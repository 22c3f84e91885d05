-- Scale to zero: how long a database may sit without client connections before it is
-- suspended (0 = never), and how long its last wake took.

ALTER TABLE databases ADD COLUMN idle_timeout_seconds INTEGER NOT NULL DEFAULT 300;
ALTER TABLE databases ADD COLUMN last_wake_ms INTEGER;
