-- A second, limited token per device: accepted only for escrow release,
-- check-in and wipe acknowledgement, so that a locked device (whose device
-- token is inside its vault) can let a new user log in online and can
-- learn of a wipe order. Kept only as its SHA-256.
CREATE TABLE device_release_tokens (
    device_id BIGINT PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    token_hash TEXT NOT NULL UNIQUE
);
