-- Signed policies, key escrow, remote wipe and check-in, device data.
-- Secrets (organization signing keys, escrow keys) are stored only sealed
-- under the server's master key (docs/formats/server-seal.md), which never
-- reaches the database.

-- Which master key the database is under: a value sealed under it.
CREATE TABLE master_key_check (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    sealed TEXT NOT NULL
) STRICT;

CREATE TABLE org_signing_keys (
    org_id INTEGER PRIMARY KEY REFERENCES organizations (id) ON DELETE CASCADE,
    public_key TEXT NOT NULL,
    sealed_seed TEXT NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE policies (
    org_id INTEGER NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    document TEXT NOT NULL,
    signature TEXT NOT NULL,
    published_by INTEGER NOT NULL REFERENCES users (id),
    published_at INTEGER NOT NULL,
    PRIMARY KEY (org_id, version)
) STRICT;

CREATE TABLE escrow_keys (
    device_id INTEGER PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    sealed_key TEXT NOT NULL,
    deposited_at INTEGER NOT NULL
) STRICT;

CREATE TABLE wipe_orders (
    id INTEGER PRIMARY KEY,
    org_id INTEGER NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    device_id INTEGER NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    -- NULL: the whole device; else the name of the one user whose slot goes.
    user_name TEXT,
    ordered_by INTEGER NOT NULL REFERENCES users (id),
    ordered_at INTEGER NOT NULL,
    acknowledged_at INTEGER,
    cancelled_at INTEGER
) STRICT;
CREATE INDEX wipe_orders_by_device ON wipe_orders (device_id);

ALTER TABLE devices ADD COLUMN last_seen_at INTEGER;
ALTER TABLE devices ADD COLUMN last_seen_address TEXT;

CREATE TABLE data_batches (
    device_id INTEGER NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    batch_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    readings INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (device_id, batch_id)
) STRICT;

CREATE TABLE readings (
    id INTEGER PRIMARY KEY,
    org_id INTEGER NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    device_id INTEGER NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    batch_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    received_at INTEGER NOT NULL
) STRICT;
CREATE INDEX readings_by_org_device_time ON readings (org_id, device_id, at);
CREATE INDEX readings_by_org_time ON readings (org_id, at);
