//! Storage for MQTT delivery (docs/server.md, "MQTT"): which devices were
//! given a client on the broker, and what the broker was last told of
//! each, so that a revocation, a suspension or a wipe order reaches the
//! broker even when it was down at the time ([`crate::mqtt`] reconciles).
//!
//! The statements are written once for both backends: SQLite reads `$1`,
//! `$2`… as parameters numbered in order of first appearance, which is
//! their order here.

use super::{Store, StoreError};

/// What a device's broker client should be, or was last confirmed to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerState {
    /// Being issued: the broker's answer is not in yet.
    Pending,
    /// May connect and publish to its topic.
    Enabled,
    /// Kept, but refused (a suspended organization, a wipe order): the
    /// broker drops its connection.
    Disabled,
    /// Gone (a revoked or deleted device).
    Deleted,
}

impl BrokerState {
    /// The column's text.
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerState::Pending => "pending",
            BrokerState::Enabled => "enabled",
            BrokerState::Disabled => "disabled",
            BrokerState::Deleted => "deleted",
        }
    }

    pub(super) fn from_db(text: &str) -> BrokerState {
        match text {
            "enabled" => BrokerState::Enabled,
            "disabled" => BrokerState::Disabled,
            "deleted" => BrokerState::Deleted,
            _ => BrokerState::Pending,
        }
    }
}

/// A device's broker client whose confirmed state is not the one it
/// should have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfStep {
    /// The device.
    pub device_id: i64,
    /// Its organization (of when the client was issued).
    pub org_id: i64,
    /// What the broker last confirmed.
    pub broker: BrokerState,
    /// What it should be.
    pub desired: BrokerState,
}

/// The state a device's client should have, over `devices d` left-joined
/// with `organizations o`: deleted for a revoked or missing device,
/// disabled while its organization is suspended or a whole-device wipe
/// was ordered (and not cancelled: once wiped, the device's credential
/// is gone with its vault), else enabled.
const STANDING: &str = "CASE \
     WHEN d.id IS NULL OR d.revoked_at IS NOT NULL THEN 'deleted' \
     WHEN o.suspended_at IS NOT NULL OR EXISTS (SELECT 1 FROM wipe_orders w \
         WHERE w.device_id = d.id AND w.user_name IS NULL AND w.cancelled_at IS NULL) \
         THEN 'disabled' \
     ELSE 'enabled' END";

pub(super) fn standing_sql() -> String {
    format!(
        "SELECT {STANDING} FROM devices d JOIN organizations o ON o.id = d.org_id \
         WHERE d.id = $1 AND d.org_id = $2"
    )
}

pub(super) fn out_of_step_sql() -> String {
    format!(
        "SELECT device_id, org_id, broker_state, desired FROM ( \
             SELECT c.device_id, c.org_id, c.broker_state, {STANDING} AS desired \
             FROM mqtt_clients c \
             LEFT JOIN devices d ON d.id = c.device_id \
             LEFT JOIN organizations o ON o.id = d.org_id) s \
         WHERE broker_state <> desired ORDER BY device_id LIMIT $1"
    )
}

pub(super) const NOTE_SQL: &str =
    "INSERT INTO mqtt_clients (device_id, org_id, issued_at, broker_state) \
     VALUES ($1, $2, $3, $4) \
     ON CONFLICT (device_id) DO UPDATE SET org_id = $2, issued_at = $3, broker_state = $4";

pub(super) const CONFIRM_SQL: &str =
    "UPDATE mqtt_clients SET broker_state = $1 WHERE device_id = $2 AND broker_state = $3";

pub(super) const FORGET_SQL: &str =
    "DELETE FROM mqtt_clients WHERE device_id = $1 AND broker_state = $2";

impl Store {
    /// What the broker client of device `device_id` of `org_id` should be
    /// now; `None` if there is no such device in that organization.
    pub async fn mqtt_standing(
        &self,
        org_id: i64,
        device_id: i64,
    ) -> Result<Option<BrokerState>, StoreError> {
        dispatch!(self, s => s.mqtt_standing(org_id, device_id).await)
    }

    /// Notes what the broker holds of the device's client, whatever the
    /// row said: `pending` while it is being issued, `enabled` once the
    /// broker made it. From then on it is reconciled.
    pub async fn mqtt_note(
        &self,
        org_id: i64,
        device_id: i64,
        state: BrokerState,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.mqtt_note(org_id, device_id, super::now_unix(), state).await)
    }

    /// Records that the broker confirmed `now` for the device's client,
    /// if its row still says `was` (a newer issue or reconciliation wins);
    /// a confirmed deletion removes the row. Whether the row said `was`.
    pub async fn mqtt_confirm(
        &self,
        device_id: i64,
        was: BrokerState,
        now: BrokerState,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.mqtt_confirm(device_id, was, now).await)
    }

    /// Up to `limit` device clients whose confirmed state is not the one
    /// they should have, in device order.
    pub async fn mqtt_out_of_step(&self, limit: i64) -> Result<Vec<OutOfStep>, StoreError> {
        dispatch!(self, s => s.mqtt_out_of_step(limit).await)
    }
}
