-- Rate limits: one counter per key ("login-user:alice", "login-addr:192.0.2.7")
-- in fixed windows, shared by every server process.
CREATE TABLE rate_limits (
    key TEXT PRIMARY KEY,
    window_start BIGINT NOT NULL,
    count BIGINT NOT NULL
);
