//! The device's endpoints (docs/protocol.md, sections 1 to 7).

use serde::{Deserialize, Serialize};

use crate::data::DeliveryAnswer;
use crate::policy::SignedPolicy;
use crate::{json_answer, json_body, Auth, Endpoint, Method, NoContent, WireSecret};

/// `POST /v1/enroll`: spends a one-time enrollment code.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enroll {
    /// The code an admin made.
    pub code: WireSecret,
    /// The device's name, shown to admins.
    pub name: String,
}

/// The answer to [`Enroll`].
#[derive(Debug, Serialize, Deserialize)]
pub struct EnrollAnswer {
    /// The new device's id.
    pub device_id: i64,
    /// Its organization.
    pub organization_id: i64,
    /// The device token (kept in the vault, encrypted).
    pub device_token: WireSecret,
    /// The release token (usable before unlock: check-in, wipe
    /// acknowledgement, escrow release).
    pub release_token: WireSecret,
    /// The organization's Ed25519 policy key, hex: the device pins it.
    pub policy_public_key: String,
}

impl EnrollAnswer {
    /// The policy key's 32 bytes, if it is hex of 32 bytes.
    pub fn policy_key(&self) -> Option<[u8; 32]> {
        let mut key = [0u8; 32];
        hex::decode_to_slice(&self.policy_public_key, &mut key).ok()?;
        Some(key)
    }
}

impl Endpoint for Enroll {
    type Answer = EnrollAnswer;
    const METHOD: Method = Method::Post;
    const PATH: &'static str = "/v1/enroll";
    const AUTH: Auth = Auth::None;
    fn body(&self) -> Option<(Vec<u8>, &'static str)> {
        json_body(self)
    }
}

/// `PUT /v1/device/escrow`: deposits (or replaces) the key of the device's
/// escrow slot, 16 to 64 bytes in hex.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DepositEscrow {
    /// The key, hex.
    pub escrow_key: WireSecret,
}

impl Endpoint for DepositEscrow {
    type Answer = NoContent;
    const METHOD: Method = Method::Put;
    const PATH: &'static str = "/v1/device/escrow";
    const AUTH: Auth = Auth::Device;
    fn body(&self) -> Option<(Vec<u8>, &'static str)> {
        json_body(self)
    }
}

/// Shortest and longest escrow key, bytes.
pub const ESCROW_KEY_LEN: std::ops::RangeInclusive<usize> = 16..=64;

/// `POST /v1/device/escrow/release`: with the release (or device) token
/// and a member's session in [`crate::USER_HEADER`], the escrow key.
#[derive(Debug)]
pub struct ReleaseEscrow;

/// The answer to [`ReleaseEscrow`].
#[derive(Debug, Serialize, Deserialize)]
pub struct EscrowReleased {
    /// The deposited key, hex.
    pub escrow_key: WireSecret,
    /// The user the session is of.
    pub user_id: i64,
    /// Their name.
    pub user: String,
}

impl Endpoint for ReleaseEscrow {
    type Answer = EscrowReleased;
    const METHOD: Method = Method::Post;
    const PATH: &'static str = "/v1/device/escrow/release";
    const AUTH: Auth = Auth::DeviceOrRelease;
}

/// `POST /v1/device/check-in`.
#[derive(Debug)]
pub struct CheckIn;

/// What a wipe order covers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WipeScope {
    /// The whole device: a crypto-erase of the vault.
    Device,
    /// One user's slot on it.
    User,
    /// A scope from a newer server: the device refuses to act on it.
    Unknown(String),
}

impl WipeScope {
    /// The scope's text.
    pub fn as_str(&self) -> &str {
        match self {
            WipeScope::Device => "device",
            WipeScope::User => "user",
            WipeScope::Unknown(text) => text,
        }
    }
}

impl Serialize for WipeScope {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for WipeScope {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match String::deserialize(deserializer)?.as_str() {
            "device" => WipeScope::Device,
            "user" => WipeScope::User,
            other => WipeScope::Unknown(other.to_owned()),
        })
    }
}

/// A pending wipe order, as a check-in returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WipeOrder {
    /// The order's id (acknowledged by it).
    pub id: i64,
    /// What it covers.
    pub scope: WipeScope,
    /// The user, for [`WipeScope::User`].
    #[serde(default)]
    pub user: Option<String>,
    /// When it was ordered, Unix seconds.
    pub ordered_at: i64,
}

/// The answer to [`CheckIn`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckInAnswer {
    /// The server's clock, Unix seconds: the offline grace counts from it.
    pub server_time: i64,
    /// The device.
    pub device_id: i64,
    /// Whether its token was revoked.
    pub revoked: bool,
    /// The latest published policy version (none yet: `null`).
    #[serde(default)]
    pub policy_version: Option<i64>,
    /// Whether the server holds an escrow key for the device.
    pub escrow_present: bool,
    /// Every pending wipe order, oldest first.
    pub wipe_orders: Vec<WipeOrder>,
}

/// Why a check-in's answer is not acted on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckInProblem {
    /// The answer is about another device.
    #[error("the answer is about device {found}, not this one ({expected})")]
    OtherDevice {
        /// This device.
        expected: i64,
        /// The answer's.
        found: i64,
    },
    /// A wipe order's id is not a positive number.
    #[error("wipe order {0} has an invalid id")]
    InvalidOrderId(i64),
    /// A wipe order of a kind this version does not know.
    #[error("wipe order {id} has the unknown scope {scope:?}")]
    UnknownScope {
        /// The order.
        id: i64,
        /// Its scope.
        scope: String,
    },
    /// A one-user order that names no user.
    #[error("wipe order {0} is for one user but names none")]
    UserMissing(i64),
    /// A server time before 2001 or past the year 36000: a broken clock or
    /// a forged answer.
    #[error("the server's time {0} is not plausible")]
    ImplausibleTime(i64),
}

impl CheckInAnswer {
    /// Checks that the answer can be acted on by device `device_id`: every
    /// wipe order has an id and a known scope (with its user), and the
    /// server's time is plausible. A device acts on nothing before this.
    pub fn check(&self, device_id: i64) -> Result<(), CheckInProblem> {
        if self.device_id != device_id {
            return Err(CheckInProblem::OtherDevice {
                expected: device_id,
                found: self.device_id,
            });
        }
        if !(978_307_200..=(1i64 << 40)).contains(&self.server_time) {
            return Err(CheckInProblem::ImplausibleTime(self.server_time));
        }
        for order in &self.wipe_orders {
            if order.id < 1 {
                return Err(CheckInProblem::InvalidOrderId(order.id));
            }
            match &order.scope {
                WipeScope::Device => {}
                WipeScope::User if order.user.as_deref().is_some_and(|u| !u.is_empty()) => {}
                WipeScope::User => return Err(CheckInProblem::UserMissing(order.id)),
                WipeScope::Unknown(scope) => {
                    return Err(CheckInProblem::UnknownScope {
                        id: order.id,
                        scope: scope.clone(),
                    })
                }
            }
        }
        Ok(())
    }
}

impl Endpoint for CheckIn {
    type Answer = CheckInAnswer;
    const METHOD: Method = Method::Post;
    const PATH: &'static str = "/v1/device/check-in";
    const AUTH: Auth = Auth::DeviceOrRelease;
}

/// `POST /v1/device/wipes/{order_id}/ack`: a wipe carried out.
#[derive(Debug)]
pub struct AcknowledgeWipe {
    /// The order.
    pub order_id: i64,
}

impl Endpoint for AcknowledgeWipe {
    type Answer = NoContent;
    const METHOD: Method = Method::Post;
    const PATH: &'static str = "/v1/device/wipes/{order_id}/ack";
    const AUTH: Auth = Auth::DeviceOrRelease;
    fn path(&self) -> String {
        Self::PATH.replace("{order_id}", &self.order_id.to_string())
    }
}

/// `GET /v1/device/policy`: the organization's latest signed policy.
#[derive(Debug)]
pub struct DevicePolicy;

impl Endpoint for DevicePolicy {
    type Answer = SignedPolicy;
    const METHOD: Method = Method::Get;
    const PATH: &'static str = "/v1/device/policy";
    const AUTH: Auth = Auth::Device;
}

/// `POST /v1/device/data`: one batch of readings, JSON or CBOR
/// (docs/formats/data-batch.md), sent as the bytes queued.
#[derive(Debug)]
pub struct Deliver {
    /// The encoded batch.
    pub body: Vec<u8>,
    /// `application/json` or `application/cbor`.
    pub content_type: &'static str,
}

impl Endpoint for Deliver {
    type Answer = DeliveryAnswer;
    const METHOD: Method = Method::Post;
    const PATH: &'static str = "/v1/device/data";
    const AUTH: Auth = Auth::Device;
    fn body(&self) -> Option<(Vec<u8>, &'static str)> {
        Some((self.body.clone(), self.content_type))
    }
}

/// `POST /v1/device/token`: a new device token (the old one ends at once).
#[derive(Debug)]
pub struct RotateDeviceToken;

/// The answer to [`RotateDeviceToken`].
#[derive(Debug, Serialize, Deserialize)]
pub struct DeviceTokenRotated {
    /// The new token.
    pub device_token: WireSecret,
}

impl Endpoint for RotateDeviceToken {
    type Answer = DeviceTokenRotated;
    const METHOD: Method = Method::Post;
    const PATH: &'static str = "/v1/device/token";
    const AUTH: Auth = Auth::Device;
}

json_answer!(
    EnrollAnswer,
    EscrowReleased,
    CheckInAnswer,
    DeviceTokenRotated
);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::Answer;

    fn answer(orders: &str) -> Result<CheckInAnswer, serde_json::Error> {
        CheckInAnswer::decode(
            format!(
                r#"{{"server_time": 1795000000, "device_id": 7, "revoked": false,
                "policy_version": null, "escrow_present": true, "wipe_orders": {orders}}}"#
            )
            .as_bytes(),
        )
    }

    #[test]
    fn hostile_check_in_answers_are_refused_before_anything_acts() {
        // Missing or mistyped fields are decoding errors, not defaults.
        assert!(answer(r#"[{"scope": "device", "ordered_at": 1}]"#).is_err());
        assert!(answer(r#"[{"id": "12", "scope": "device", "ordered_at": 1}]"#).is_err());
        assert!(CheckInAnswer::decode(br#"{"server_time": 1795000000}"#).is_err());
        // Decodable, but not to be acted on.
        let unknown = answer(r#"[{"id": 3, "scope": "galaxy", "ordered_at": 1}]"#).unwrap();
        assert_eq!(
            unknown.check(7),
            Err(CheckInProblem::UnknownScope {
                id: 3,
                scope: "galaxy".into()
            })
        );
        let nameless = answer(r#"[{"id": 4, "scope": "user", "ordered_at": 1}]"#).unwrap();
        assert_eq!(nameless.check(7), Err(CheckInProblem::UserMissing(4)));
        let zero = answer(r#"[{"id": 0, "scope": "device", "ordered_at": 1}]"#).unwrap();
        assert_eq!(zero.check(7), Err(CheckInProblem::InvalidOrderId(0)));
        let fine =
            answer(r#"[{"id": 5, "scope": "user", "user": "carol", "ordered_at": 1}]"#).unwrap();
        assert_eq!(fine.check(7), Ok(()));
        assert_eq!(
            fine.check(8),
            Err(CheckInProblem::OtherDevice {
                expected: 8,
                found: 7
            })
        );
        // A newer server's extra fields are ignored.
        assert!(answer(r#"[]"#).is_ok());
    }

    #[test]
    fn paths_fill_their_parameters() {
        assert_eq!(
            AcknowledgeWipe { order_id: 12 }.path(),
            "/v1/device/wipes/12/ack"
        );
    }
}
