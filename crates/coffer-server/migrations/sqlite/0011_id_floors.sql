-- Ids are never given twice. SQLite gives a new row the highest id in its
-- table plus one, so once the organization (or device) with the highest
-- id is deleted, the next one would get its id — and with it the deleted
-- one's audit rows (which keep their organization id) and rate-limit
-- counters. Deleting an organization records the highest ids here first,
-- and new organizations and devices are numbered above them.
-- (PostgreSQL's sequences never give an id twice: the table stays empty
-- there.)
CREATE TABLE id_floors (
    kind TEXT PRIMARY KEY CHECK (kind IN ('organizations', 'devices')),
    floor INTEGER NOT NULL
) STRICT;
