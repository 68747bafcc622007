//! The server's audit trail: every admin and security action, in an
//! append-only table whose rows are chained by SHA-256.
//!
//! `hash = SHA-256("coffer/v1/audit-trail" ‖ prev_hash ‖ at ‖ org ‖ actor ‖
//! action ‖ details)`, each field length-prefixed, `prev_hash` the previous
//! row's hash (64 zeros for the first), and each row's hash is MACed under a
//! key derived from the master key ([`crate::keys::Keyring::audit_mac`]), so
//! that recomputing the hashes after an edit needs that key. Appends are serialized across
//! server processes (an advisory lock on PostgreSQL, an immediate
//! transaction on SQLite), so the chain has one order.

use sha2::{Digest, Sha256};

/// An event to record.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    /// The organization concerned, if any.
    pub org_id: Option<i64>,
    /// Who did it: "user:alice", "device:17", "anonymous@192.0.2.7".
    pub actor: String,
    /// What: "setup", "login", "login_failed", "logout", …
    pub action: String,
    /// JSON details; never a secret.
    pub details: String,
}

/// A stored row, as the chain check reads it.
#[derive(Debug, Clone)]
pub struct AuditRow {
    /// Row id (insertion order).
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    /// The event.
    pub event: AuditEvent,
    /// The previous row's hash, as stored.
    pub prev_hash: String,
    /// This row's hash, as stored.
    pub hash: String,
    /// `<key id>:<HMAC-SHA256 of the hash>` under the master key.
    pub mac: Option<String>,
}

/// The hash before the first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash of a row with these fields after `prev_hash`.
pub fn chain_hash(prev_hash: &str, at: i64, event: &AuditEvent) -> String {
    let mut h = Sha256::new();
    h.update(b"coffer/v1/audit-trail");
    let org = event.org_id.map(|o| o.to_string()).unwrap_or_default();
    for field in [
        prev_hash.as_bytes(),
        at.to_string().as_bytes(),
        org.as_bytes(),
        event.actor.as_bytes(),
        event.action.as_bytes(),
        event.details.as_bytes(),
    ] {
        h.update((field.len() as u64).to_le_bytes());
        h.update(field);
    }
    hex::encode(h.finalize())
}

/// What the chain check found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChainReport {
    /// Rows checked.
    pub rows: u64,
    /// The first row whose content does not match its hash (edited), or
    /// whose link does not match the row before (deleted or inserted rows).
    pub broken_at: Option<i64>,
    /// Why.
    pub problem: Option<String>,
}

/// Walks `rows` (in id order) and checks every hash, link and MAC.
pub fn check_chain(rows: &[AuditRow], keys: &crate::keys::Keyring) -> ChainReport {
    let mut prev = GENESIS.to_owned();
    for row in rows {
        let broken = |problem: &str| ChainReport {
            rows: rows.len() as u64,
            broken_at: Some(row.id),
            problem: Some(problem.to_owned()),
        };
        if row.prev_hash != prev {
            return broken("its link does not match the row before: rows were deleted or inserted");
        }
        if chain_hash(&prev, row.at, &row.event) != row.hash {
            return broken("its content does not match its hash: the row was edited");
        }
        match row.mac.as_deref() {
            Some(mac) if keys.audit_mac_valid(&row.hash, mac) => {}
            Some(mac) => match mac.split_once(':') {
                Some((id, _)) if !keys.holds(id) => {
                    return broken(&format!(
                        "its MAC is under master key {id}, which this server does not hold: a rotation not finished, or a forged row"
                    ))
                }
                _ => {
                    return broken(
                        "its MAC does not verify under the server's key: the chain was rewritten from this row on",
                    )
                }
            },
            None => {
                return broken(
                    "it has no MAC: it was written by someone without the server's key",
                )
            }
        }
        prev = row.hash.clone();
    }
    ChainReport {
        rows: rows.len() as u64,
        broken_at: None,
        problem: None,
    }
}
