-- MQTT delivery (docs/server.md, "MQTT"): the broker clients issued to
-- devices, and what the broker was last told of each. No foreign key to
-- devices: the row outlives a deleted device or organization until the
-- broker's client is deleted too.
CREATE TABLE mqtt_clients (
    device_id BIGINT PRIMARY KEY,
    org_id BIGINT NOT NULL,
    issued_at BIGINT NOT NULL,
    -- 'pending' while being issued; else the state the broker confirmed.
    broker_state TEXT NOT NULL
        CHECK (broker_state IN ('pending', 'enabled', 'disabled', 'deleted'))
);
