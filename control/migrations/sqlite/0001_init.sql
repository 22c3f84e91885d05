-- Tenants, their databases, and issued tokens. Times are seconds since the epoch.

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

CREATE TABLE databases (
    id          TEXT PRIMARY KEY,            -- also the instance id on its host
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    name        TEXT NOT NULL,
    engine      TEXT NOT NULL,               -- redis | mysql
    plan        TEXT NOT NULL,
    status      TEXT NOT NULL,               -- see DatabaseStatus
    port        INTEGER NOT NULL DEFAULT 0,  -- last port the instance listened on
    password    TEXT NOT NULL,               -- the internal user's; only the proxy uses it
    created_at  INTEGER NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,            -- the JWT's jti
    tenant_id   TEXT REFERENCES tenants(id), -- NULL for the operator's tokens
    database    TEXT,                        -- scope, if any
    role        TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER,
    created_at  INTEGER NOT NULL
);

CREATE INDEX tokens_revoked ON tokens (revoked_at) WHERE revoked_at IS NOT NULL;
