-- Files sync (docs/server.md, "File storage"). The bytes are not here: they
-- are objects in the blob storage (a local directory or an S3 bucket), each
-- piece sealed under the organization's data key
-- (docs/formats/server-seal.md, "Blob seal"). These tables say which
-- objects make which blob, which uploads are under way, and which records
-- reference which blob.

-- A stored file, content-addressed per (organization, app, SHA-256). Its
-- bytes are the pieces of the upload that completed it first:
-- objects `o<org>/<upload_id>/<index>`, every piece `piece_size` long but
-- the last.
CREATE TABLE sync_blobs (
    org_id INTEGER NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    app TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    content_type TEXT,
    upload_id TEXT NOT NULL,
    piece_size INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    -- Bumped by every push that references it, and by every declaration
    -- answered `stored`: garbage collection keeps a blob no record
    -- references for the sync retention after this.
    last_referenced_at INTEGER NOT NULL,
    -- Set when a piece of it was found missing or no longer opening (a
    -- late overlapping write, bit rot, a bucket restored out of step with
    -- the database): a declaration of the file then gets a new upload,
    -- whose completion replaces this row (the old pieces to the trash).
    broken_at INTEGER,
    PRIMARY KEY (org_id, app, sha256)
) STRICT;

-- An upload: open (state 0), complete (1: the blob is stored, by this
-- upload's pieces or by another's), or dropped (2: expired or failed its
-- whole-file check; its pieces are deleted, the row kept a while so that
-- the device hears `upload_gone`). `lease_until` and `lease` let one
-- request at a time write a piece, across server processes.
CREATE TABLE sync_uploads (
    upload_id TEXT PRIMARY KEY,
    org_id INTEGER NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    app TEXT NOT NULL,
    device_id INTEGER NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    content_type TEXT,
    piece_size INTEGER NOT NULL,
    received INTEGER NOT NULL,
    state INTEGER NOT NULL,
    lease TEXT,
    lease_until INTEGER,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;
CREATE INDEX sync_uploads_by_device ON sync_uploads (device_id, app, sha256);
CREATE INDEX sync_uploads_by_org ON sync_uploads (org_id, state);
CREATE INDEX sync_uploads_by_expiry ON sync_uploads (state, expires_at);

-- The blobs each record's head and conflict leaves reference (by
-- revision), kept by record sync: what garbage collection must keep.
CREATE TABLE sync_file_refs (
    org_id INTEGER NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    app TEXT NOT NULL,
    collection TEXT NOT NULL,
    record_id TEXT NOT NULL,
    revision TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (org_id, app, collection, record_id, revision, sha256)
) STRICT;
CREATE INDEX sync_file_refs_by_blob ON sync_file_refs (org_id, app, sha256);

-- Object prefixes to delete from the blob storage (`o<org>/<upload_id>/`,
-- or `o<org>/` for a deleted organization): written in the transaction
-- that lets go of them, emptied once the storage has deleted them, so a
-- failure of the storage leaves nothing behind for good. No foreign key:
-- an organization's prefix outlives its rows.
CREATE TABLE sync_object_trash (
    prefix TEXT PRIMARY KEY,
    since INTEGER NOT NULL
) STRICT;
