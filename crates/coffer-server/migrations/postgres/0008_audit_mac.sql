-- Every audit row carries an HMAC of its hash under a key derived from the
-- server's master key ("<key id>:<hex>"), so that a chain recomputed by
-- someone with write access to the database but without the key is
-- detected. Rows written before this migration get theirs only when the
-- operator starts the server once with --adopt-unkeyed-audit-trail.
ALTER TABLE audit_events ADD COLUMN mac TEXT;
