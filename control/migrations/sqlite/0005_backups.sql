-- Backups: one row per backup, kept after its database is deleted (that is what makes an
-- undelete possible), and the per-database keys they are encrypted with, sealed by the
-- installation's master key (`backup.key` in the data directory).

CREATE TABLE backups (
    id             TEXT PRIMARY KEY,            -- b-<hex>; also names its objects
    tenant_id      TEXT NOT NULL REFERENCES tenants(id),
    database_id    TEXT NOT NULL,               -- the database's id when taken
    database_name  TEXT NOT NULL,
    engine         TEXT NOT NULL,               -- redis | mysql
    plan           TEXT NOT NULL,               -- the database's plan when taken
    name           TEXT,
    kind           TEXT NOT NULL,               -- manual | scheduled | final | pre_restore | post_restore
    status         TEXT NOT NULL,               -- queued | running | completed | failed
    reason         TEXT,                        -- why it failed
    format         TEXT,                        -- xbstream | rdb | tar
    hot            INTEGER NOT NULL DEFAULT 0,  -- taken from the running server
    parent_id      TEXT REFERENCES backups(id), -- the backup an incremental one builds on
    object_key     TEXT,
    plain_bytes    INTEGER NOT NULL DEFAULT 0,
    stored_bytes   INTEGER NOT NULL DEFAULT 0,
    sha256         TEXT,                        -- of the stored object
    position       TEXT,                        -- JSON: time, binlog file/position, GTID
    data_version   TEXT,                        -- the data's fingerprint when taken
    created_at     INTEGER NOT NULL,
    started_at     INTEGER,
    completed_at   INTEGER,
    expires_at     INTEGER                      -- deleted then (a final backup's undo window)
);

CREATE INDEX backups_by_database ON backups (tenant_id, database_name, created_at);
CREATE INDEX backups_unfinished ON backups (status) WHERE status IN ('queued', 'running');

-- A database's backup schedule and retention, and what its schedule last did.
CREATE TABLE backup_schedules (
    database_id    TEXT PRIMARY KEY,
    every          TEXT NOT NULL,               -- an interval ("1d", "6h") or a cron expression
    keep_count     INTEGER NOT NULL,            -- scheduled backups kept at least ...
    keep_days      INTEGER NOT NULL,            -- ... and those younger than this
    last_run_at    INTEGER,
    last_result    TEXT,                        -- completed | unchanged | failed: reason
    last_backup_id TEXT
);

-- Change-log files archived for point-in-time recovery, per database and timeline (a restore
-- starts a new one): closed MariaDB binary log files whole, Redis append-only files by the
-- byte ranges appended between archive passes (one row and object per range).
CREATE TABLE log_archive (
    database_id   TEXT NOT NULL,
    timeline      TEXT NOT NULL,
    name          TEXT NOT NULL,              -- binlog.000007, appendonly.aof.3.incr.aof
    "offset"      INTEGER NOT NULL DEFAULT 0, -- where in the file this range starts
    plain_bytes   INTEGER NOT NULL,
    stored_bytes  INTEGER NOT NULL,
    sha256        TEXT NOT NULL,
    object_key    TEXT NOT NULL,
    archived_at   INTEGER NOT NULL,
    modified      INTEGER,                    -- the file's change time (a Redis base: its data's)
    continued_by  TEXT,                       -- a Redis base: the first increment after it
    PRIMARY KEY (database_id, timeline, name, "offset")
);

-- Scheduled deletion: the database is deleted (the safe way) at this time.
ALTER TABLE databases ADD COLUMN expires_at INTEGER;

CREATE TABLE backup_keys (
    database_id  TEXT PRIMARY KEY,
    wrapped      BLOB NOT NULL,
    created_at   INTEGER NOT NULL
);
