//! Every wire type of coffer's control plane (docs/protocol.md), defined
//! once and used by both ends: `coffer serve` decodes requests and encodes
//! answers with these types, the device agent (`coffer-agent`) the other
//! way round. Nothing decodes protocol JSON by hand.
//!
//! Each endpoint is a type implementing [`Endpoint`]: its method, path,
//! credential, body and answer, in one place ([`device`], [`session`]).
//! The rules on unknown input follow the spec: request bodies are strict
//! (`deny_unknown_fields`: the server refuses what it does not know);
//! answers are lenient where a newer server may add fields (the device
//! ignores them) and keep an `Unknown` variant for kinds it may add (the
//! device then refuses to act); the signed policy is strict on purpose.
//!
//! ```
//! use coffer_protocol::device::CheckInAnswer;
//! use coffer_protocol::{Answer, Endpoint};
//!
//! let body = br#"{"server_time": 1795000000, "device_id": 7, "revoked": false,
//!   "policy_version": 3, "escrow_present": true,
//!   "wipe_orders": [{"id": 12, "scope": "user", "user": "carol", "ordered_at": 1794999000}]}"#;
//! let answer = CheckInAnswer::decode(body).unwrap();
//! assert_eq!(answer.wipe_orders[0].id, 12);
//! // A wipe order without an id is an error, never order 0.
//! assert!(CheckInAnswer::decode(br#"{"server_time": 1, "device_id": 7, "revoked": false,
//!   "escrow_present": true, "wipe_orders": [{"scope": "device", "ordered_at": 1}]}"#).is_err());
//! assert_eq!(coffer_protocol::device::CheckIn::PATH, "/v1/device/check-in");
//! ```
//!
//! It depends on serde, CBOR, SHA-256 and Ed25519 verification only: no
//! HTTP server, database driver or async runtime (checked in `.ci/run`).

pub mod admin;
pub mod data;
pub mod device;
pub mod error;
pub mod files;
pub mod mqtt;
pub mod policy;
mod secret;
pub mod session;
pub mod sync;
pub mod untrusted;

pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use secret::WireSecret;

/// The version of the protocol this crate speaks: the `/v1/` of every path.
pub const VERSION: u32 = 1;

/// The header that carries a device, release or session token.
pub const AUTH_HEADER: &str = "x-auth-token";

/// The header that carries a user's session beside a device's token
/// (escrow release).
pub const USER_HEADER: &str = "x-user-token";

/// Every name under which the API carries a credential, in a header or a
/// body field, and the usual names of others' APIs. A query string naming
/// any of them is refused (`credential_in_query`): a URL lands in proxy
/// and server logs and in browser history. Compared through
/// [`names_a_credential`]; a test checks that every [`WireSecret`] field of
/// this crate's types is listed.
pub const CREDENTIAL_NAMES: &[&str] = &[
    AUTH_HEADER,
    USER_HEADER,
    "token",
    "access_token",
    "auth",
    "authorization",
    "session",
    "api_key",
    "secret",
    "setup_token",
    "password",
    "old_password",
    "new_password",
    "code",
    "device_token",
    "release_token",
    "escrow_key",
];

/// Whether `name` (already percent-decoded) is one of
/// [`CREDENTIAL_NAMES`] in any spelling: case, separators (`-`, `_`, `.`,
/// spaces), brackets and control characters (a NUL) are ignored, so that
/// `Device-Token`, `device_token[]` and `device\0token` all name one.
pub fn names_a_credential(name: &str) -> bool {
    let folded = fold_name(name);
    !folded.is_empty() && CREDENTIAL_NAMES.iter().any(|c| fold_name(c) == folded)
}

/// A name reduced to its ASCII letters and digits, lower-cased.
fn fold_name(name: &str) -> String {
    name.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Largest request body the server accepts, bytes (docs/protocol.md).
pub const MAX_REQUEST_BODY: usize = 64 * 1024;

/// An HTTP method of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
    /// PATCH
    Patch,
}

impl Method {
    /// The method's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
        }
    }
}

/// Which credential an endpoint takes in [`AUTH_HEADER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// None (enrollment, login).
    None,
    /// A device token of a device not revoked.
    Device,
    /// A device token or the device's release token, even revoked (check-in,
    /// wipe acknowledgement); for escrow release also a user's session in
    /// [`USER_HEADER`].
    DeviceOrRelease,
    /// A user's session.
    Session,
}

/// An answer body, decoded from the bytes the server sent.
pub trait Answer: Sized {
    /// Decodes `body`; an answer missing a field it needs, or with a wrong
    /// type, is an error (never a default value).
    fn decode(body: &[u8]) -> Result<Self, serde_json::Error>;
}

/// No body (`204 No Content`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NoContent;

impl Answer for NoContent {
    fn decode(_body: &[u8]) -> Result<Self, serde_json::Error> {
        Ok(NoContent)
    }
}

/// Implements [`Answer`] as JSON for answer types.
macro_rules! json_answer {
    ($($t:ty),* $(,)?) => {
        $(impl $crate::Answer for $t {
            fn decode(body: &[u8]) -> Result<Self, serde_json::Error> {
                serde_json::from_slice(body)
            }
        })*
    };
}
pub(crate) use json_answer;

json_answer!(
    ErrorBody,
    policy::SignedPolicy,
    policy::PolicyKey,
    policy::PolicyHistory
);

/// One endpoint: a request value that knows its method, path, credential
/// and body, and the type of its answer. Server and device use the same
/// constants.
pub trait Endpoint {
    /// The answer on success.
    type Answer: Answer;
    /// The method.
    const METHOD: Method;
    /// The path, with `{name}` for path parameters (as the router has it).
    const PATH: &'static str;
    /// The credential it takes.
    const AUTH: Auth;
    /// The largest answer a client reads, bytes.
    const MAX_ANSWER: usize = DEFAULT_MAX_ANSWER;
    /// The path with this request's parameters filled in.
    fn path(&self) -> String {
        Self::PATH.to_owned()
    }
    /// The body and its content type, if any.
    fn body(&self) -> Option<(Vec<u8>, &'static str)> {
        None
    }
    /// Headers beyond the credential and the content type (a piece's
    /// offset and digest, a range), as lower-case names and values.
    fn headers(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}

/// A JSON body for [`Endpoint::body`].
/// Largest answer of most endpoints, bytes: far above any of them (a
/// policy is a few KiB), far below what would hurt a device. A pull page of
/// records is larger ([`sync::MAX_PULL_ANSWER`]).
pub const DEFAULT_MAX_ANSWER: usize = 1024 * 1024;

/// `text` as one path segment or query value: every byte but
/// `[A-Za-z0-9._~-]` percent-encoded (RFC 3986), so a name cannot add a
/// segment, a query or a fragment.
pub fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) fn json_body<T: serde::Serialize>(value: &T) -> Option<(Vec<u8>, &'static str)> {
    // Serializing these plain structs cannot fail (string keys, no maps
    // with non-string keys); an empty body would be refused by the server.
    Some((
        serde_json::to_vec(value).unwrap_or_default(),
        "application/json",
    ))
}

#[cfg(test)]
mod credential_names {
    use super::*;

    /// Every field of this crate's types that holds a [`WireSecret`],
    /// read from the source itself: a new one cannot be left off the list.
    fn secret_fields() -> Vec<String> {
        let sources = [
            include_str!("admin.rs"),
            include_str!("data.rs"),
            include_str!("device.rs"),
            include_str!("error.rs"),
            include_str!("policy.rs"),
            include_str!("session.rs"),
            include_str!("sync.rs"),
        ];
        let mut fields = Vec::new();
        for source in sources {
            for line in source.lines() {
                let line = line.trim();
                let Some((name, ty)) = line.strip_prefix("pub ").and_then(|l| l.split_once(':'))
                else {
                    continue;
                };
                if ty.contains("WireSecret") && !name.contains(' ') {
                    fields.push(name.to_owned());
                }
            }
        }
        fields
    }

    #[test]
    fn every_secret_field_of_the_api_is_a_credential_name() {
        let fields = secret_fields();
        // The scan works: it finds the fields known today.
        for known in [
            "password",
            "device_token",
            "release_token",
            "escrow_key",
            "code",
        ] {
            assert!(fields.iter().any(|f| f == known), "{known} not found");
        }
        for field in &fields {
            assert!(
                names_a_credential(field),
                "{field} carries a WireSecret: add it to CREDENTIAL_NAMES"
            );
        }
    }

    #[test]
    fn credential_names_match_in_any_spelling() {
        for name in [
            "token",
            "TOKEN",
            "device_token",
            "Device-Token",
            "device.token",
            "device\0token",
            "device_token[]",
            " release_token ",
            "x-auth-token",
            "X_Auth_Token",
            "xauthtoken",
            "old_password",
            "code",
            "setup_token",
            "escrow_key",
        ] {
            assert!(names_a_credential(name), "{name:?}");
        }
        // The API's own query parameters are not credentials.
        for name in [
            "from", "to", "by", "format", "device", "name", "after", "limit", "", "\0", "--",
        ] {
            assert!(!names_a_credential(name), "{name:?}");
        }
    }
}
