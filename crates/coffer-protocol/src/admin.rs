//! The admins' side of the control plane (docs/server.md): setup, users,
//! enrollment codes, devices, remote wipes, usage and the audit check, as
//! `coffer serve` answers them and `coffer admin` reads them.
//!
//! As everywhere in this crate, request bodies (and query strings) are
//! strict (`deny_unknown_fields`); answers are lenient: a newer server may
//! add fields, and optional ones may be absent.
//!
//! ```
//! use coffer_protocol::admin::{WipeOrders, WipeState};
//! use coffer_protocol::Answer;
//!
//! let body = br#"{"orders": [{"id": 3, "device_id": 7, "scope": "user",
//!   "user": "bob", "state": "cancelled", "ordered_by": 1,
//!   "ordered_at": 1795000000, "acknowledged_at": null,
//!   "cancelled_at": 1795000100}]}"#;
//! let listed = WipeOrders::decode(body).unwrap();
//! assert_eq!(listed.orders[0].state, WipeState::Cancelled);
//! ```

use serde::{Deserialize, Serialize};

use crate::device::WipeScope;
use crate::{Answer, WireSecret};

/// `POST /v1/setup`: spends the setup token the server printed at its
/// first start, creating the first organization and its owner.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Setup {
    /// The one-time setup token.
    pub setup_token: WireSecret,
    /// The first organization's name.
    pub organization: String,
    /// The owner's user name.
    pub owner: String,
    /// The owner's password.
    pub password: WireSecret,
}

/// The answer to [`Setup`] (`201 Created`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupAnswer {
    /// The new organization.
    pub organization_id: i64,
    /// Its owner.
    pub user_id: i64,
}

/// `GET /v1/me`: who a session belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeAnswer {
    /// The user.
    pub user_id: i64,
    /// Their name.
    pub user: String,
    /// Their organizations and roles.
    pub organizations: Vec<Membership>,
    /// One of the instance's operators (who manage organizations).
    #[serde(default)]
    pub operator: bool,
}

/// One organization a user belongs to, in [`MeAnswer`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The organization.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// owner, admin, member or auditor.
    pub role: String,
}

/// `GET /v1/audit/verify`: the audit trail's hash chain checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditReport {
    /// Whether every row, link and MAC checked.
    pub intact: bool,
    /// Rows checked.
    pub rows: u64,
    /// The first broken row (`null` when intact).
    #[serde(default)]
    pub broken_at: Option<i64>,
    /// Why it is broken (`null` when intact).
    #[serde(default)]
    pub problem: Option<String>,
    /// The organization whose rows were reported (`null`: the whole
    /// trail, for the instance's operators).
    #[serde(default)]
    pub organization_id: Option<i64>,
}

/// `POST /v1/orgs` (operators): a new organization and its first owner.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateOrganization {
    /// Its name: 1 to 64 letters, digits, spaces or `. _ - @`.
    pub name: String,
    /// The owner's user name (a new user).
    pub owner: String,
    /// The owner's initial password (handed over out of band).
    pub password: WireSecret,
}

/// The answer to [`CreateOrganization`] (`201 Created`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrganizationCreated {
    /// The new organization.
    pub organization_id: i64,
    /// Its owner.
    pub user_id: i64,
}

/// One organization as the operators see it: its size, not its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrganizationSummary {
    /// Its id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Whether it is suspended.
    pub suspended: bool,
    /// When it was suspended.
    #[serde(default)]
    pub suspended_at: Option<i64>,
    /// Its users.
    pub members: i64,
    /// Its devices (revoked ones included).
    pub devices: i64,
}

/// One of the instance's operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operator {
    /// The user.
    pub user_id: i64,
    /// Their name.
    pub user: String,
    /// Since when, Unix seconds.
    pub since: i64,
}

/// `GET /v1/operators` (operators): every operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorList {
    /// In user id order.
    pub operators: Vec<Operator>,
}

/// `GET /v1/orgs` (operators): every organization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrganizationList {
    /// In id order.
    pub organizations: Vec<OrganizationSummary>,
}

/// `POST /v1/orgs/{org_id}/enrollment-codes`: a one-time code that
/// enrolls one device.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEnrollmentCode {
    /// How long it stays valid, seconds (default a day, at most 7 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_for_secs: Option<i64>,
}

/// The answer to [`NewEnrollmentCode`] (`201 Created`).
#[derive(Debug, Serialize, Deserialize)]
pub struct EnrollmentCode {
    /// The code, for `coffer enroll --code` (the server keeps only its
    /// hash).
    pub code: WireSecret,
    /// When it stops working, Unix seconds.
    pub expires_at: i64,
}

/// `POST /v1/orgs/{org_id}/users`: a new user of the organization, with an
/// initial password given to them out of band.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddUser {
    /// Their name.
    pub user: String,
    /// The initial password.
    pub password: WireSecret,
    /// owner, admin, member or auditor.
    pub role: String,
}

/// The answer to [`AddUser`] (`201 Created`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserAdded {
    /// The new user.
    pub user_id: i64,
}

/// `PUT /v1/orgs/{org_id}/users/{user_id}/role` (answer: `204 No
/// Content`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetRole {
    /// owner, admin, member or auditor.
    pub role: String,
}

/// `POST /v1/me/password`: a user sets their own password (answer: `204
/// No Content`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    /// The current password.
    pub old_password: WireSecret,
    /// The new one.
    pub new_password: WireSecret,
}

/// `GET /v1/orgs/{org_id}/audit/events`: the organization's audit rows
/// that match the query, newest first (owners, admins, auditors).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvents {
    /// Newest first.
    pub events: Vec<AuditEventView>,
    /// Give it as `before` for the next (older) page; `None` on the last.
    #[serde(default)]
    pub next_before: Option<i64>,
}

/// One audit row in [`AuditEvents`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEventView {
    /// Its id (the trail's order).
    pub id: i64,
    /// When, Unix seconds.
    pub at: i64,
    /// Who: `user:ID`, `device:ID`, `server`…
    pub actor: String,
    /// What: `device_revoked`, `policy_published`…
    pub action: String,
    /// The row's details, as recorded (JSON).
    pub details: serde_json::Value,
}

/// The query of [`AuditEvents`]; every filter is optional.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only this action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Only this actor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Only rows whose details hold this text (1 to 128 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    /// Only rows older than this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<i64>,
    /// At most this many (1 to [`MAX_AUDIT_PAGE`], default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

/// The largest page of [`AuditEvents`].
pub const MAX_AUDIT_PAGE: i64 = 500;

/// `GET /v1/orgs/{org_id}/users`: the organization's members, by name
/// (owners, admins and auditors).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberList {
    /// By name.
    pub members: Vec<MemberSummary>,
}

/// One member in a [`MemberList`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSummary {
    /// The user.
    pub id: i64,
    /// Their name.
    pub name: String,
    /// owner, admin, member or auditor.
    pub role: String,
    /// Whether the account is disabled (no login, no session).
    pub disabled: bool,
    /// When the account was made, Unix seconds.
    pub created_at: i64,
}

/// `GET /v1/orgs/{org_id}/devices`: the organization's devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceList {
    /// By id.
    pub devices: Vec<DeviceSummary>,
    /// Give it as `after` for the next page; `None` on the last (and
    /// always without `limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<i64>,
}

/// The query of [`DeviceList`]: without `limit`, every device at once.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceListQuery {
    /// Only devices with ids above this (a page's `next_after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<i64>,
    /// At most this many (1 to [`MAX_DEVICE_PAGE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

/// The largest page of a [`DeviceList`].
pub const MAX_DEVICE_PAGE: i64 = 1000;

/// One device in a [`DeviceList`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSummary {
    /// The device.
    pub id: i64,
    /// The name it enrolled with.
    pub name: String,
    /// Whether its token was revoked.
    pub revoked: bool,
    /// Its last check-in, Unix seconds (`null`: never).
    #[serde(default)]
    pub last_seen_at: Option<i64>,
    /// Its peer address then.
    #[serde(default)]
    pub last_seen_address: Option<String>,
    /// Whether the server holds its escrow key.
    pub escrow: bool,
    /// Wipe orders neither acknowledged nor cancelled.
    pub pending_wipes: i64,
}

/// `POST /v1/orgs/{org_id}/devices/{device_id}/wipe`: a remote wipe of the
/// whole device, or of one user's slot on it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderWipe {
    /// Only this user's slot; absent: the whole device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// The answer to [`OrderWipe`] (`201 Created`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WipeOrdered {
    /// The order's id.
    pub id: i64,
    /// The device.
    pub device_id: i64,
    /// What it covers.
    pub scope: WipeScope,
    /// The user, for [`WipeScope::User`] (else `null`).
    #[serde(default)]
    pub user: Option<String>,
}

/// Where a wipe order stands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WipeState {
    /// Not yet carried out.
    Pending,
    /// The device reported it carried out.
    Acknowledged,
    /// An admin called it off.
    Cancelled,
    /// A state from a newer server.
    Unknown(String),
}

impl WipeState {
    /// The state's text.
    pub fn as_str(&self) -> &str {
        match self {
            WipeState::Pending => "pending",
            WipeState::Acknowledged => "acknowledged",
            WipeState::Cancelled => "cancelled",
            WipeState::Unknown(text) => text,
        }
    }
}

impl std::fmt::Display for WipeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for WipeState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for WipeState {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match String::deserialize(deserializer)?.as_str() {
            "pending" => WipeState::Pending,
            "acknowledged" => WipeState::Acknowledged,
            "cancelled" => WipeState::Cancelled,
            other => WipeState::Unknown(other.to_owned()),
        })
    }
}

/// `GET /v1/orgs/{org_id}/devices/{device_id}/wipes`: every wipe order of
/// a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WipeOrders {
    /// Oldest first.
    pub orders: Vec<WipeOrderStatus>,
}

/// One order in [`WipeOrders`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WipeOrderStatus {
    /// The order's id.
    pub id: i64,
    /// The device.
    pub device_id: i64,
    /// What it covers.
    pub scope: WipeScope,
    /// The user, for [`WipeScope::User`] (else `null`).
    #[serde(default)]
    pub user: Option<String>,
    /// Where it stands.
    pub state: WipeState,
    /// Who ordered it (user id).
    pub ordered_by: i64,
    /// When, Unix seconds.
    pub ordered_at: i64,
    /// When the device reported it carried out.
    #[serde(default)]
    pub acknowledged_at: Option<i64>,
    /// When it was cancelled.
    #[serde(default)]
    pub cancelled_at: Option<i64>,
}

/// The query of `GET /v1/orgs/{org_id}/usage`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// From, Unix seconds (default: all time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<i64>,
    /// To, Unix seconds, exclusive (default: all time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<i64>,
    /// `org` (the default), `user`, `device`, or a time bucket: `hour`,
    /// `day` or `week` (UTC; each row's `id` is its bucket's first second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// `json` (the default, [`UsageReport`]) or `csv` ([`Csv`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// Usage over a time range (`GET /v1/orgs/{org_id}/usage`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    /// The organization.
    pub organization_id: i64,
    /// From, Unix seconds.
    pub from: i64,
    /// To, Unix seconds, exclusive.
    pub to: i64,
    /// What the rows are of: `org`, `user`, `device`, `hour`, `day` or `week`.
    pub by: String,
    /// One per organization, user or device.
    pub rows: Vec<UsageRow>,
}

/// One row of a [`UsageReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRow {
    /// The organization, user or device, or the time bucket's first second
    /// (`null`: requests without one).
    #[serde(default)]
    pub id: Option<i64>,
    /// Requests.
    pub requests: i64,
    /// Request bytes.
    pub bytes_in: i64,
    /// Response bytes.
    pub bytes_out: i64,
    /// Total serving time, microseconds.
    pub micros: i64,
}

/// The query of `GET /v1/orgs/{org_id}/data`: readings by device, time
/// range and name, in id order, a page at a time (the answer is a
/// [`crate::data::ReadingsPage`], or CSV with `format=csv`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadingsQuery {
    /// Only this device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<i64>,
    /// Readings taken at or after, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<i64>,
    /// Readings taken before, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<i64>,
    /// Only readings of this name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Readings with ids above this (a page's `next_after`).
    #[serde(default)]
    pub after: i64,
    /// Most readings in the page (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// The newest `limit` readings, newest first, instead of a page from
    /// the oldest (then there is no `next_after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest: Option<bool>,
    /// `json` (the default) or `csv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// A CSV answer (`format=csv`), as the text the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Csv(pub String);

impl Answer for Csv {
    fn decode(body: &[u8]) -> Result<Self, serde_json::Error> {
        String::from_utf8(body.to_vec())
            .map(Csv)
            .map_err(|_| serde::de::Error::custom("the CSV is not UTF-8"))
    }
}

crate::json_answer!(
    Operator,
    OperatorList,
    OrganizationCreated,
    OrganizationSummary,
    OrganizationList,
    SetupAnswer,
    MeAnswer,
    AuditReport,
    AuditEvents,
    EnrollmentCode,
    UserAdded,
    DeviceList,
    DeviceSummary,
    MemberList,
    WipeOrdered,
    WipeOrders,
    UsageReport,
);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn requests_are_strict_and_leave_out_what_is_not_given() {
        assert!(serde_json::from_str::<SetRole>(r#"{"role": "admin", "x": 1}"#).is_err());
        assert!(serde_json::from_str::<OrderWipe>(r#"{"user": null, "all": true}"#).is_err());
        assert_eq!(
            serde_json::from_str::<OrderWipe>("{}").unwrap(),
            OrderWipe::default()
        );
        assert_eq!(serde_json::to_string(&OrderWipe::default()).unwrap(), "{}");
        assert_eq!(
            serde_json::to_string(&NewEnrollmentCode {
                valid_for_secs: Some(60)
            })
            .unwrap(),
            r#"{"valid_for_secs":60}"#
        );
        let setup: Setup = serde_json::from_str(
            r#"{"setup_token": "t", "organization": "Acme", "owner": "alice", "password": "p"}"#,
        )
        .unwrap();
        assert_eq!(setup.setup_token.expose_secret(), "t");
        assert!(!format!("{setup:?}").contains("\"p\""));
    }

    #[test]
    fn answers_keep_nulls_and_ignore_new_fields() {
        let report = AuditReport {
            intact: true,
            rows: 4,
            broken_at: None,
            problem: None,
            organization_id: None,
        };
        assert_eq!(
            serde_json::to_string(&report).unwrap(),
            r#"{"intact":true,"rows":4,"broken_at":null,"problem":null,"organization_id":null}"#
        );
        let decoded = AuditReport::decode(br#"{"intact": true, "rows": 4, "newer": 1}"#).unwrap();
        assert_eq!(decoded, report);
        // A field it needs missing, or of the wrong type: an error.
        assert!(AuditReport::decode(br#"{"rows": 4}"#).is_err());
        assert!(UserAdded::decode(br#"{"user_id": "7"}"#).is_err());
        let code = EnrollmentCode::decode(br#"{"code": "abc", "expires_at": 9}"#).unwrap();
        assert_eq!(code.code.expose_secret(), "abc");
        let state: WipeState = serde_json::from_str(r#""exploded""#).unwrap();
        assert_eq!(state, WipeState::Unknown("exploded".into()));
        assert_eq!(serde_json::to_string(&state).unwrap(), r#""exploded""#);
        assert_eq!(Csv::decode(b"a,b\n").unwrap(), Csv("a,b\n".into()));
        assert!(Csv::decode(&[0xff]).is_err());
    }
}
