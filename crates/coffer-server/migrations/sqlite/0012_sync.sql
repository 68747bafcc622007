-- Record sync (docs/server.md, "Record sync"). Bodies are stored only
-- sealed under the organization's data key (docs/formats/server-seal.md,
-- "Record seal"), itself sealed under the master key.

-- An organization's data key, sealed under the master key
-- (context `org-data-key:<org>`).
CREATE TABLE org_data_keys (
    org_id INTEGER PRIMARY KEY REFERENCES organizations (id) ON DELETE CASCADE,
    sealed_key TEXT NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

-- The change sequence of an (organization, app), and its expiry floor:
-- a cursor below the floor is answered 410 (compaction dropped changes
-- after it).
CREATE TABLE sync_counters (
    org_id INTEGER NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    app TEXT NOT NULL,
    last_seq INTEGER NOT NULL,
    floor INTEGER NOT NULL,
    PRIMARY KEY (org_id, app)
) STRICT;

-- Each record once, at its latest sequence. `sealed` is the record seal of
-- {body, files}; `body_mac` the keyed MAC of the body (likely duplicates).
CREATE TABLE sync_records (
    org_id INTEGER NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    app TEXT NOT NULL,
    collection TEXT NOT NULL,
    record_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    revision TEXT NOT NULL,
    base TEXT,
    deleted INTEGER NOT NULL,
    sealed BLOB NOT NULL,
    body_mac TEXT,
    author TEXT NOT NULL,
    device_id INTEGER,
    provisional INTEGER NOT NULL,
    leaves INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    changed_at INTEGER NOT NULL,
    PRIMARY KEY (org_id, app, collection, record_id)
) STRICT;
CREATE UNIQUE INDEX sync_records_by_seq ON sync_records (org_id, app, seq);
CREATE INDEX sync_records_by_mac ON sync_records (org_id, app, collection, body_mac);
CREATE INDEX sync_records_by_author ON sync_records (org_id, device_id, author) WHERE provisional = 1;

-- Conflict leaves, kept beside the head until resolved.
CREATE TABLE sync_leaves (
    org_id INTEGER NOT NULL,
    app TEXT NOT NULL,
    collection TEXT NOT NULL,
    record_id TEXT NOT NULL,
    revision TEXT NOT NULL,
    base TEXT,
    deleted INTEGER NOT NULL,
    sealed BLOB NOT NULL,
    author TEXT NOT NULL,
    device_id INTEGER,
    provisional INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (org_id, app, collection, record_id, revision),
    FOREIGN KEY (org_id, app, collection, record_id)
        REFERENCES sync_records (org_id, app, collection, record_id) ON DELETE CASCADE
) STRICT;

-- Every revision stored (head or leaf), with its operation's digest: a
-- retry is recognised, a reused name refused.
CREATE TABLE sync_revisions (
    org_id INTEGER NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    app TEXT NOT NULL,
    revision TEXT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (org_id, app, revision)
) STRICT;

-- Every sequence assigned, in order (gap-free until compaction).
CREATE TABLE sync_changes (
    org_id INTEGER NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    app TEXT NOT NULL,
    seq INTEGER NOT NULL,
    collection TEXT NOT NULL,
    record_id TEXT NOT NULL,
    revision TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (org_id, app, seq)
) STRICT;

-- Push batches and their answers: a retry gets the stored answer.
CREATE TABLE sync_batches (
    org_id INTEGER NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    app TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    answer TEXT,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (org_id, app, batch_id)
) STRICT;

-- A device's local author known to be a server user (an admin bound them).
CREATE TABLE sync_bindings (
    org_id INTEGER NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    device_id INTEGER NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    author TEXT NOT NULL,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    bound_at INTEGER NOT NULL,
    PRIMARY KEY (org_id, device_id, author)
) STRICT;

-- Which users a device's escrow key was released to: a local author of
-- that name on that device is verified.
CREATE TABLE escrow_releases (
    device_id INTEGER NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    released_at INTEGER NOT NULL,
    PRIMARY KEY (device_id, user_id)
) STRICT;
