-- Accounting: one row per request (docs/server.md, "Accounting").
CREATE TABLE usage_records (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    org_id INTEGER,
    user_id INTEGER,
    device_id INTEGER,
    method TEXT NOT NULL,
    route TEXT NOT NULL,
    status INTEGER NOT NULL,
    bytes_in INTEGER NOT NULL,
    bytes_out INTEGER NOT NULL,
    micros INTEGER NOT NULL
) STRICT;
CREATE INDEX usage_by_org_time ON usage_records (org_id, at);
