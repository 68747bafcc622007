-- Record sync (docs/server.md, "Record sync"). Bodies are stored only
-- sealed under the organization's data key (docs/formats/server-seal.md,
-- "Record seal"), itself sealed under the master key.

-- An organization's data key, sealed under the master key
-- (context `org-data-key:<org>`).
CREATE TABLE org_data_keys (
    org_id BIGINT PRIMARY KEY REFERENCES organizations (id) ON DELETE CASCADE,
    sealed_key TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- The change sequence of an (organization, app), and its expiry floor:
-- a cursor below the floor is answered 410 (compaction dropped changes
-- after it).
CREATE TABLE sync_counters (
    org_id BIGINT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    app TEXT NOT NULL,
    last_seq BIGINT NOT NULL,
    floor BIGINT NOT NULL,
    PRIMARY KEY (org_id, app)
);

-- Each record once, at its latest sequence. `sealed` is the record seal of
-- {body, files}; `body_mac` the keyed MAC of the body (likely duplicates).
CREATE TABLE sync_records (
    org_id BIGINT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    app TEXT NOT NULL,
    collection TEXT NOT NULL,
    record_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    revision TEXT NOT NULL,
    base TEXT,
    deleted BOOLEAN NOT NULL,
    sealed BYTEA NOT NULL,
    body_mac TEXT,
    author TEXT NOT NULL,
    device_id BIGINT,
    provisional BOOLEAN NOT NULL,
    leaves BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    changed_at BIGINT NOT NULL,
    PRIMARY KEY (org_id, app, collection, record_id)
);
CREATE UNIQUE INDEX sync_records_by_seq ON sync_records (org_id, app, seq);
CREATE INDEX sync_records_by_mac ON sync_records (org_id, app, collection, body_mac);
CREATE INDEX sync_records_by_author ON sync_records (org_id, device_id, author) WHERE provisional;

-- Conflict leaves, kept beside the head until resolved.
CREATE TABLE sync_leaves (
    org_id BIGINT NOT NULL,
    app TEXT NOT NULL,
    collection TEXT NOT NULL,
    record_id TEXT NOT NULL,
    revision TEXT NOT NULL,
    base TEXT,
    deleted BOOLEAN NOT NULL,
    sealed BYTEA NOT NULL,
    author TEXT NOT NULL,
    device_id BIGINT,
    provisional BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (org_id, app, collection, record_id, revision),
    FOREIGN KEY (org_id, app, collection, record_id)
        REFERENCES sync_records (org_id, app, collection, record_id) ON DELETE CASCADE
);

-- Every revision stored (head or leaf), with its operation's digest: a
-- retry is recognised, a reused name refused.
CREATE TABLE sync_revisions (
    org_id BIGINT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    app TEXT NOT NULL,
    revision TEXT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (org_id, app, revision)
);

-- Every sequence assigned, in order (gap-free until compaction).
CREATE TABLE sync_changes (
    org_id BIGINT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    app TEXT NOT NULL,
    seq BIGINT NOT NULL,
    collection TEXT NOT NULL,
    record_id TEXT NOT NULL,
    revision TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (org_id, app, seq)
);

-- Push batches and their answers: a retry gets the stored answer.
CREATE TABLE sync_batches (
    org_id BIGINT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    app TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    answer TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (org_id, app, batch_id)
);

-- A device's local author known to be a server user (an admin bound them).
CREATE TABLE sync_bindings (
    org_id BIGINT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    device_id BIGINT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    author TEXT NOT NULL,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    bound_at BIGINT NOT NULL,
    PRIMARY KEY (org_id, device_id, author)
);

-- Which users a device's escrow key was released to: a local author of
-- that name on that device is verified.
CREATE TABLE escrow_releases (
    device_id BIGINT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    released_at BIGINT NOT NULL,
    PRIMARY KEY (device_id, user_id)
);
