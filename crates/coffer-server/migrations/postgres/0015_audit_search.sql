-- The console's audit search (GET /v1/orgs/{org}/audit/events) reads one
-- organization's rows newest first: without this index it scans the
-- whole server's trail for each page.
CREATE INDEX audit_events_by_org ON audit_events (org_id, id);
