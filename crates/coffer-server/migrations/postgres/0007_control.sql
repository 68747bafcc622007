-- Signed policies, key escrow, remote wipe and check-in, device data.
-- Secrets (organization signing keys, escrow keys) are stored only sealed
-- under the server's master key (docs/formats/server-seal.md), which never
-- reaches the database.

-- Which master key the database is under: a value sealed under it.
CREATE TABLE master_key_check (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    sealed TEXT NOT NULL
);

CREATE TABLE org_signing_keys (
    org_id BIGINT PRIMARY KEY REFERENCES organizations (id) ON DELETE CASCADE,
    public_key TEXT NOT NULL,
    sealed_seed TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE policies (
    org_id BIGINT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    version BIGINT NOT NULL,
    document TEXT NOT NULL,
    signature TEXT NOT NULL,
    published_by BIGINT NOT NULL REFERENCES users (id),
    published_at BIGINT NOT NULL,
    PRIMARY KEY (org_id, version)
);

CREATE TABLE escrow_keys (
    device_id BIGINT PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    sealed_key TEXT NOT NULL,
    deposited_at BIGINT NOT NULL
);

CREATE TABLE wipe_orders (
    id BIGSERIAL PRIMARY KEY,
    org_id BIGINT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    device_id BIGINT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    -- NULL: the whole device; else the name of the one user whose slot goes.
    user_name TEXT,
    ordered_by BIGINT NOT NULL REFERENCES users (id),
    ordered_at BIGINT NOT NULL,
    acknowledged_at BIGINT,
    cancelled_at BIGINT
);
CREATE INDEX wipe_orders_by_device ON wipe_orders (device_id);

ALTER TABLE devices ADD COLUMN last_seen_at BIGINT;
ALTER TABLE devices ADD COLUMN last_seen_address TEXT;

CREATE TABLE data_batches (
    device_id BIGINT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    batch_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    readings BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (device_id, batch_id)
);

CREATE TABLE readings (
    id BIGSERIAL PRIMARY KEY,
    org_id BIGINT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    device_id BIGINT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    batch_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    received_at BIGINT NOT NULL
);
CREATE INDEX readings_by_org_device_time ON readings (org_id, device_id, at);
CREATE INDEX readings_by_org_time ON readings (org_id, at);
