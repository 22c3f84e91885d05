-- The client addresses a database accepts: normalised CIDRs, comma-separated (see the proxy's
-- `AllowList`). NULL = any address.

ALTER TABLE databases ADD COLUMN allowed_cidrs TEXT;
