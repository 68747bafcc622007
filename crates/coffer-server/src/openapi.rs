//! The OpenAPI 3.1 document served at `/openapi.json`: every endpoint, who
//! may call it, and the error shape. Kept next to the routes in one list;
//! the test `every_documented_endpoint_exists` calls each one.

use serde_json::{json, Map, Value};

/// (method, path, summary, who may call it: "none", "session", "device",
/// "device and session", "setup token" or "enrollment code").
pub const ENDPOINTS: &[(&str, &str, &str, &str)] = &[
    (
        "get",
        "/healthz",
        "Liveness of the process (no database work)",
        "none",
    ),
    ("get", "/readyz", "Readiness: the database answers", "none"),
    ("get", "/openapi.json", "This document", "none"),
    (
        "get",
        "/metrics",
        "Prometheus metrics of this process",
        "none",
    ),
    (
        "post",
        "/v1/setup",
        "Create the first organization and its owner, once",
        "setup token",
    ),
    (
        "post",
        "/v1/login",
        "Exchange a user name and password for a session token",
        "none",
    ),
    (
        "post",
        "/v1/logout",
        "Revoke the calling session",
        "session",
    ),
    (
        "get",
        "/v1/me",
        "The calling user and their organizations",
        "session",
    ),
    (
        "post",
        "/v1/me/password",
        "Change one's own password (the old one required)",
        "session",
    ),
    (
        "get",
        "/v1/audit/verify",
        "Check the whole audit trail's chain (the server's operators)",
        "session",
    ),
    (
        "get",
        "/v1/orgs/{org_id}/audit/verify",
        "Check the audit trail, reported for this organization's rows (owners, admins, auditors)",
        "session",
    ),
    (
        "get",
        "/v1/orgs/{org_id}/audit/events",
        "Search the organization's audit rows, newest first: ?action=&actor=&q=&before=&limit= (owners, admins, auditors)",
        "session",
    ),
    (
        "post",
        "/v1/orgs",
        "Create an organization and its first owner (operators)",
        "session",
    ),
    (
        "get",
        "/v1/orgs",
        "Every organization (operators)",
        "session",
    ),
    (
        "get",
        "/v1/operators",
        "The server's operators (operators)",
        "session",
    ),
    (
        "put",
        "/v1/operators/{user_id}",
        "Make an enabled user an operator (operators)",
        "session",
    ),
    (
        "delete",
        "/v1/operators/{user_id}",
        "Stop a user being an operator; never the last (operators)",
        "session",
    ),
    (
        "get",
        "/v1/orgs/{org_id}",
        "One organization's name, size and state (operators, its owners)",
        "session",
    ),
    (
        "delete",
        "/v1/orgs/{org_id}",
        "Delete a suspended organization and everything of it (operators)",
        "session",
    ),
    (
        "post",
        "/v1/orgs/{org_id}/suspend",
        "Suspend an organization: its users and devices are refused at once (operators)",
        "session",
    ),
    (
        "post",
        "/v1/orgs/{org_id}/resume",
        "Resume a suspended organization (operators)",
        "session",
    ),
    (
        "get",
        "/v1/orgs/{org_id}/users",
        "The members, by name, with role and disabled state (owners, admins, auditors)",
        "session",
    ),
    (
        "post",
        "/v1/orgs/{org_id}/users",
        "Add a user with a role (owners; admins for members and auditors)",
        "session",
    ),
    (
        "put",
        "/v1/orgs/{org_id}/users/{user_id}/role",
        "Change a user's role",
        "session",
    ),
    (
        "delete",
        "/v1/orgs/{org_id}/users/{user_id}",
        "Remove a user from the organization",
        "session",
    ),
    (
        "post",
        "/v1/orgs/{org_id}/users/{user_id}/disable",
        "Disable a user of this organization alone (their sessions end)",
        "session",
    ),
    (
        "post",
        "/v1/orgs/{org_id}/users/{user_id}/enable",
        "Enable a disabled user again",
        "session",
    ),
    (
        "get",
        "/v1/orgs/{org_id}/usage",
        "Requests, bytes and time over a range, by organization, user or device (owners, admins, auditors)",
        "session",
    ),
    (
        "post",
        "/v1/orgs/{org_id}/enrollment-codes",
        "A one-time device enrollment code (owners, admins)",
        "session",
    ),
    (
        "get",
        "/v1/orgs/{org_id}/devices",
        "The organization's devices (owners, admins, auditors)",
        "session",
    ),
    (
        "get",
        "/v1/orgs/{org_id}/devices/{device_id}",
        "One device: name, state, last check-in, escrow, pending wipes (owners, admins, auditors)",
        "session",
    ),
    (
        "post",
        "/v1/orgs/{org_id}/devices/{device_id}/revoke",
        "Revoke a device's token (owners, admins)",
        "session",
    ),
    (
        "post",
        "/v1/enroll",
        "Enroll a device with a code; returns its token",
        "enrollment code",
    ),
    ("get", "/v1/device", "The calling device", "device"),
    (
        "post",
        "/v1/device/token",
        "Rotate the calling device's token",
        "device",
    ),
    (
        "get",
        "/v1/orgs/{org_id}/policy-key",
        "The organization's Ed25519 policy key (any member)",
        "session",
    ),
    (
        "post",
        "/v1/orgs/{org_id}/policies",
        "Sign and publish a policy version above every published one (owners, admins)",
        "session",
    ),
    (
        "get",
        "/v1/orgs/{org_id}/policies",
        "The latest published versions, newest first, with who published each (any member; ?limit=1..100)",
        "session",
    ),
    (
        "get",
        "/v1/orgs/{org_id}/policies/latest",
        "The latest signed policy (any member)",
        "session",
    ),
    (
        "post",
        "/v1/orgs/{org_id}/devices/{device_id}/wipe",
        "Order a wipe of a device, or of one user's slot on it (owners, admins)",
        "session",
    ),
    (
        "get",
        "/v1/orgs/{org_id}/devices/{device_id}/wipes",
        "A device's wipe orders and their state (owners, admins, auditors)",
        "session",
    ),
    (
        "post",
        "/v1/orgs/{org_id}/devices/{device_id}/wipes/{order_id}/cancel",
        "Cancel a pending wipe order (owners, admins)",
        "session",
    ),
    (
        "get",
        "/v1/orgs/{org_id}/data",
        "Query or export (format=csv) device readings (owners, admins, auditors)",
        "session",
    ),
    (
        "get",
        "/v1/device/policy",
        "The latest signed policy of the device's organization",
        "device",
    ),
    (
        "put",
        "/v1/device/escrow",
        "Deposit or replace the device's escrow key",
        "device",
    ),
    (
        "post",
        "/v1/device/escrow/release",
        "Release the device's escrow key to a member of its organization (session in X-User-Token)",
        "device and session",
    ),
    (
        "post",
        "/v1/device/check-in",
        "Check in: wipe orders, policy version, server time (also for a revoked device)",
        "device",
    ),
    (
        "post",
        "/v1/device/wipes/{order_id}/ack",
        "Acknowledge a wipe carried out (also for a revoked device)",
        "device",
    ),
    (
        "post",
        "/v1/device/data",
        "Deliver a batch of readings (application/json or application/cbor)",
        "device",
    ),
    (
        "post",
        "/v1/device/mqtt",
        "The device's access to the MQTT broker: a new password each time (404 mqtt_not_configured without a broker)",
        "device",
    ),
    (
        "post",
        "/v1/device/sync/{app}/push",
        "Push a batch of record changes of an app the policy syncs (one result per operation)",
        "device",
    ),
    (
        "get",
        "/v1/device/sync/{app}/changes",
        "Pull the records changed after a cursor, by sequence (410 cursor_expired: start again)",
        "device",
    ),
    (
        "post",
        "/v1/device/sync/{app}/purged",
        "Report an app crypto-erased as the revocation or the policy said (also for a revoked device)",
        "device",
    ),
    (
        "post",
        "/v1/device/files/{app}/uploads",
        "Declare a file to upload (size, SHA-256, content type): stored already, the device's unfinished upload of it, or a new one (413 file_too_large, quota_exceeded)",
        "device",
    ),
    (
        "get",
        "/v1/device/files/{app}/uploads/{id}",
        "Where an upload stands: its offset, piece size, expiry (410 upload_gone)",
        "device",
    ),
    (
        "patch",
        "/v1/device/files/{app}/uploads/{id}",
        "Send one piece at Upload-Offset with its Upload-Checksum (application/offset+octet-stream), acknowledged once durable; the last completes the upload (409 upload_offset_mismatch with the right Upload-Offset, 422 checksum_mismatch, 422 blob_mismatch)",
        "device",
    ),
    (
        "get",
        "/v1/device/files/{app}/blobs/{sha256}",
        "A file of the device's organization and app, whole or one Range (206; 416 range_not_satisfiable)",
        "device",
    ),
    (
        "get",
        "/v1/orgs/{org_id}/files/{app}/{sha256}",
        "One of the organization's files, whole or one Range (owners, admins; audited)",
        "session",
    ),
    (
        "get",
        "/v1/orgs/{org_id}/records",
        "List synced records, no bodies (owners, admins, auditors)",
        "session",
    ),
    (
        "get",
        "/v1/orgs/{org_id}/records/export",
        "Export synced records with their bodies, JSON or CSV (owners, admins, auditors; audited)",
        "session",
    ),
    (
        "get",
        "/v1/orgs/{org_id}/records/{app}/{collection}/{id}",
        "One record: body, conflict leaves, likely duplicates (owners, admins, auditors; audited)",
        "session",
    ),
    (
        "post",
        "/v1/orgs/{org_id}/records/{app}/{collection}/{id}/resolve",
        "Resolve a record's conflict: keep a revision, a new body, or delete (owners, admins)",
        "session",
    ),
    (
        "get",
        "/v1/orgs/{org_id}/sync/authors",
        "Local authors whose records are provisional (owners, admins, auditors)",
        "session",
    ),
    (
        "post",
        "/v1/orgs/{org_id}/sync/authors/bind",
        "Bind a device's local author to a user and publish their records (owners, admins)",
        "session",
    ),
];

/// The document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for (method, path, summary, auth) in ENDPOINTS {
        let security = match *auth {
            "session" | "device" => json!([{"token": []}]),
            "device and session" => json!([{"token": [], "userToken": []}]),
            _ => json!([]),
        };
        let parameters: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "integer"}}))
            .collect();
        let operation = json!({
            "summary": summary,
            "x-caller": auth,
            "security": security,
            "parameters": parameters,
            "responses": {
                "2XX": {"description": "success (JSON, or no content)"},
                "4XX": {"description": "refused", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                "5XX": {"description": "server failure (cause in the server's log)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            },
        });
        let entry = paths
            .entry(path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(methods) = entry {
            methods.insert(method.to_string(), operation);
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "coffer control plane",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "docs/server.md describes every endpoint, the roles and the limits.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "token": {"type": "apiKey", "in": "header", "name": "X-Auth-Token"},
                "userToken": {"type": "apiKey", "in": "header", "name": "X-User-Token"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {
                            "code": {"type": "string", "description": "stable, for programs"},
                            "message": {"type": "string", "description": "for people"},
                        },
                    }},
                },
            },
        },
    })
}
