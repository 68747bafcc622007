-- Accounting: one row per request (docs/server.md, "Accounting").
CREATE TABLE usage_records (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    org_id BIGINT,
    user_id BIGINT,
    device_id BIGINT,
    method TEXT NOT NULL,
    route TEXT NOT NULL,
    status INTEGER NOT NULL,
    bytes_in BIGINT NOT NULL,
    bytes_out BIGINT NOT NULL,
    micros BIGINT NOT NULL
);
CREATE INDEX usage_by_org_time ON usage_records (org_id, at);
