-- Organizations as tenants (docs/server.md, "Operators and organizations").
-- The instance's operators create, list, suspend and delete organizations
-- and read the whole audit trail; they are not members of any organization
-- by being operators. Setup makes the first one.
CREATE TABLE operators (
    user_id BIGINT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL
);
-- A server set up before operators existed: the owners of its first
-- organization (the one setup made) become its operators.
INSERT INTO operators (user_id, created_at)
    SELECT m.user_id, o.created_at FROM memberships m JOIN organizations o ON o.id = m.org_id
    WHERE m.role = 'owner' AND o.id = (SELECT min(id) FROM organizations);
-- A suspended organization's users and devices are refused at once.
ALTER TABLE organizations ADD COLUMN suspended_at BIGINT;
-- Rate-limit rows of windows that have ended are pruned by every count.
CREATE INDEX rate_limits_by_window ON rate_limits (window_start);
