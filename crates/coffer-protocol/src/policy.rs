//! Signed policies: what an organization's devices must enforce.
//!
//! An admin publishes [`Rules`] under a version number; the server writes
//! the signed document in canonical JSON (docs/formats/policy.md: object
//! keys sorted by their UTF-8 bytes, no white space, integers only) and
//! signs exactly those bytes with the organization's Ed25519 key. Devices
//! verify the bytes they received against the key they pinned at
//! enrollment, then parse them: nothing is re-encoded on the way, so the
//! canonical form matters only for producing the same bytes twice.

use std::collections::BTreeMap;

use ring::signature::{UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

/// The `format` field of every signed policy document.
pub const FORMAT: &str = "coffer-policy/1";

/// The highest policy version (2^31 − 1, `i32::MAX`); the lowest is 1.
///
/// Versions only go up, on the server and on every device, so a version at
/// the top of `i64` would leave nothing above it to publish, for good. This
/// bound leaves room for a publish a second for 68 years, is far from
/// overflow in any arithmetic on versions, and is a safe integer in
/// JavaScript (and an `int` in most languages). docs/formats/policy.md,
/// "The document".
pub const MAX_POLICY_VERSION: i64 = 2_147_483_647;

// A safe integer in JavaScript (below 2^53), and far from overflow.
const _: () = assert!(MAX_POLICY_VERSION < (1 << 53));

/// The most a published version may go above the organization's latest
/// (or above 0, for its first): room for date-like versions (20261201),
/// while reaching [`MAX_POLICY_VERSION`] — after which nothing can be
/// published — takes over twenty deliberate publishes, not one.
pub const MAX_POLICY_VERSION_STEP: i64 = 100_000_000;

/// Whether `version` is one a policy may have: 1 to [`MAX_POLICY_VERSION`].
pub fn valid_version(version: i64) -> bool {
    (1..=MAX_POLICY_VERSION).contains(&version)
}

/// What a device may do with an app's stores.
pub const CAPABILITIES: [&str; 5] = ["sql", "kv", "records", "files", "export"];

/// Passphrase rules, checked when a slot is added or changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassphraseRules {
    /// Fewest characters.
    pub min_length: u32,
    /// Fewest character classes (lower case, upper case, digits, other).
    pub min_classes: u32,
}

impl Default for PassphraseRules {
    fn default() -> Self {
        PassphraseRules {
            min_length: 8,
            min_classes: 1,
        }
    }
}

/// What a device does after too many failed unlocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailedAction {
    /// Lock out (the vault's own back-off and lockout).
    Lock,
    /// Crypto-erase the vault.
    Wipe,
}

/// Offline grace: how long a device may go without a check-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OfflineRules {
    /// Refuse to unlock after this many hours without a check-in (0: never).
    pub block_after_hours: u32,
    /// Wipe at the next unlock attempt after this many days (0: never).
    pub wipe_after_days: u32,
}

impl Default for OfflineRules {
    fn default() -> Self {
        OfflineRules {
            block_after_hours: 72,
            wipe_after_days: 30,
        }
    }
}

/// The weakest passphrase KDF a slot may keep (Argon2id parameters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KdfFloor {
    /// Memory, KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for KdfFloor {
    fn default() -> Self {
        KdfFloor {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

/// The rules of one policy version. Every field has a default, so an admin
/// writes only what differs; the signed document always holds them all, so
/// devices never guess.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rules {
    /// Passphrase rules.
    pub passphrase: PassphraseRules,
    /// Failed unlocks before `on_max_failed` (0: no limit beyond the
    /// vault's own lockout).
    pub max_failed_attempts: u32,
    /// What happens then.
    pub on_max_failed: FailedAction,
    /// Lock an unlocked vault after this many idle seconds (0: never).
    pub idle_lock_secs: u32,
    /// Offline grace.
    pub offline: OfflineRules,
    /// Capabilities per app; the app `"*"` applies to apps not named.
    pub apps: BTreeMap<String, Vec<String>>,
    /// Refuse to unlock under a debugger.
    pub refuse_debugger: bool,
    /// The weakest KDF a passphrase slot may keep.
    pub min_kdf: KdfFloor,
    /// How often a device checks in, seconds.
    pub check_in_secs: u32,
    /// The apps whose records (and files) sync with the control plane. An
    /// app that leaves this list is purged from the organization's devices
    /// (docs/protocol.md, section 8).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sync: Vec<String>,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            passphrase: PassphraseRules::default(),
            max_failed_attempts: 10,
            on_max_failed: FailedAction::Lock,
            idle_lock_secs: 300,
            offline: OfflineRules::default(),
            apps: BTreeMap::from([("*".to_owned(), CAPABILITIES.map(str::to_owned).to_vec())]),
            refuse_debugger: false,
            min_kdf: KdfFloor::default(),
            check_in_secs: 3600,
            sync: Vec::new(),
        }
    }
}

impl Rules {
    /// Checks that the rules make sense together; says what does not.
    pub fn check(&self) -> Result<(), String> {
        let p = &self.passphrase;
        if !(1..=1024).contains(&p.min_length) {
            return Err("passphrase.min_length must be 1 to 1024".into());
        }
        if !(1..=4).contains(&p.min_classes) {
            return Err("passphrase.min_classes must be 1 to 4".into());
        }
        if self.max_failed_attempts > 1000 {
            return Err("max_failed_attempts must be at most 1000".into());
        }
        let o = &self.offline;
        if o.block_after_hours > 24 * 3650 || o.wipe_after_days > 3650 {
            return Err("offline limits must be at most ten years".into());
        }
        if o.wipe_after_days != 0
            && o.block_after_hours != 0
            && u64::from(o.wipe_after_days) * 24 < u64::from(o.block_after_hours)
        {
            return Err("offline.wipe_after_days must not come before block_after_hours".into());
        }
        for (app, capabilities) in &self.apps {
            if app.is_empty() || app.len() > 64 {
                return Err("app names must be 1 to 64 characters".into());
            }
            // The refusal names the capabilities there are, never the one
            // given: it is the sender's text, of any length.
            if capabilities
                .iter()
                .any(|c| !CAPABILITIES.contains(&c.as_str()))
            {
                return Err(format!(
                    "an app is given an unknown capability (known: {})",
                    CAPABILITIES.join(", ")
                ));
            }
        }
        let k = &self.min_kdf;
        if k.memory_kib < 8 || k.iterations < 1 || !(1..=16).contains(&k.parallelism) {
            return Err(
                "min_kdf needs memory_kib >= 8, iterations >= 1, parallelism 1 to 16".into(),
            );
        }
        if !(60..=7 * 24 * 3600).contains(&self.check_in_secs) {
            return Err("check_in_secs must be 60 to 604800".into());
        }
        if self.sync.len() > 256 {
            return Err("sync lists at most 256 apps".into());
        }
        for (i, app) in self.sync.iter().enumerate() {
            if app.is_empty() || app.len() > 64 {
                return Err("app names must be 1 to 64 characters".into());
            }
            if self.sync[..i].contains(app) {
                return Err("sync names an app twice".into());
            }
        }
        Ok(())
    }
}

/// The document that is signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// Always [`FORMAT`].
    pub format: String,
    /// The organization the policy binds.
    pub organization_id: i64,
    /// Only ever goes up; 1 to [`MAX_POLICY_VERSION`].
    pub version: i64,
    /// When the server signed it, Unix seconds.
    pub issued_at: i64,
    /// The rules.
    pub rules: Rules,
}

/// Why canonical encoding failed.
#[derive(Debug, thiserror::Error)]
#[error("not canonical-JSON encodable: {0}")]
pub struct EncodeError(&'static str);

/// Canonical JSON (docs/formats/policy.md): object keys sorted by their
/// UTF-8 bytes, no insignificant white space, strings with serde_json's
/// escaping (only `"`, `\` and control characters escaped), numbers as
/// serde_json writes them (a policy document holds integers only).
pub fn canonical_json(value: &serde_json::Value) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    write_canonical(value, &mut out)?;
    Ok(out)
}

fn write_canonical(value: &serde_json::Value, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    use serde_json::Value;
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => {
            let quoted = serde_json::to_string(s).map_err(|_| EncodeError("string"))?;
            out.extend_from_slice(quoted.as_bytes());
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let quoted = serde_json::to_string(key).map_err(|_| EncodeError("key"))?;
                out.extend_from_slice(quoted.as_bytes());
                out.push(b':');
                write_canonical(item, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

impl Document {
    /// The bytes that are signed.
    pub fn to_canonical(&self) -> Result<Vec<u8>, EncodeError> {
        let value = serde_json::to_value(self).map_err(|_| EncodeError("document"))?;
        canonical_json(&value)
    }
}

/// Whether `signature` is `public_key`'s Ed25519 signature of `message`.
pub fn verify(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(message, signature)
        .is_ok()
}

/// A signed policy as the server sends it (`GET /v1/device/policy`, `GET
/// /v1/orgs/{org}/policies/latest`, the answer to a publish).
///
/// `document` is kept as the exact text that arrived: the signature is
/// checked over those bytes, never over a re-encoding ([`SignedPolicy::verify`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPolicy {
    /// The version the server announces (must equal the document's).
    pub version: i64,
    /// The canonical JSON document, as signed.
    pub document: String,
    /// Ed25519 signature of `document`'s bytes, hex.
    pub signature: String,
    /// The organization's public key, hex: for people to compare; a device
    /// verifies with the key it pinned, never with this one.
    pub public_key: String,
    /// When it was published, Unix seconds (absent in a publish's answer:
    /// `None` is not sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<i64>,
}

/// `GET /v1/orgs/{org_id}/policies`: the latest published policies of an
/// organization, newest first (any member).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyHistory {
    /// The organization's public key, hex (every version is signed by it).
    pub public_key: String,
    /// Newest first, at most the query's `limit`.
    pub policies: Vec<PublishedPolicy>,
}

/// One version in a [`PolicyHistory`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPolicy {
    /// Its version.
    pub version: i64,
    /// The canonical JSON document, as signed.
    pub document: String,
    /// Ed25519 signature of `document`'s bytes, hex.
    pub signature: String,
    /// When it was published, Unix seconds.
    pub published_at: i64,
    /// The name of the user who published it.
    pub published_by: String,
}

/// The query of [`PolicyHistory`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyHistoryQuery {
    /// How many versions (1 to [`MAX_POLICY_HISTORY`], default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

/// The most versions one [`PolicyHistory`] answer holds.
pub const MAX_POLICY_HISTORY: i64 = 100;

/// Why a device refuses a signed policy (it keeps its last good one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyRefusal {
    /// The signature is not hex of 64 bytes.
    #[error("the signature is not hex of an Ed25519 signature")]
    MalformedSignature,
    /// The signature does not verify under the pinned key.
    #[error("its signature does not verify with the pinned organization key")]
    BadSignature,
    /// Signed, but not a policy document this device understands.
    #[error("it is not a policy document: {0}")]
    NotADocument(String),
    /// A format this version does not know.
    #[error("its format {0:?} is unknown")]
    UnknownFormat(String),
    /// Another organization's policy.
    #[error("it is another organization's (organization {found})")]
    OtherOrganization {
        /// The organization the document names.
        found: i64,
    },
    /// The announced version is not the signed one.
    #[error("its version is not the one the server announced")]
    VersionMismatch,
    /// A version outside 1 to [`MAX_POLICY_VERSION`]: holding it would
    /// leave nothing above it to accept.
    #[error("its version {found} is outside 1 to {MAX_POLICY_VERSION}")]
    VersionOutOfRange {
        /// The document's version.
        found: i64,
    },
    /// Not above the version held.
    #[error("version {found} is not above the version held ({held}): a downgrade")]
    Downgrade {
        /// The document's version.
        found: i64,
        /// The version the device holds.
        held: i64,
    },
    /// The rules break a rule of their own ([`Rules::check`]).
    #[error("its rules are invalid: {0}")]
    InvalidRules(String),
}

impl SignedPolicy {
    /// Verifies the policy as a device must (docs/protocol.md, "Policy"):
    /// the signature over the exact bytes of `document` under the key the
    /// device pinned, the format, the organization, the announced version,
    /// its range (1 to [`MAX_POLICY_VERSION`]) and no downgrade below
    /// `held`. Only then is the document parsed
    /// and returned.
    pub fn verify(
        &self,
        pinned_key: &[u8],
        organization_id: i64,
        held: Option<i64>,
    ) -> Result<Document, PolicyRefusal> {
        let signature = hex::decode(&self.signature)
            .ok()
            .filter(|s| s.len() == 64)
            .ok_or(PolicyRefusal::MalformedSignature)?;
        if !verify(pinned_key, self.document.as_bytes(), &signature) {
            return Err(PolicyRefusal::BadSignature);
        }
        let parsed: Document = serde_json::from_str(&self.document)
            .map_err(|e| PolicyRefusal::NotADocument(e.to_string()))?;
        if parsed.format != FORMAT {
            return Err(PolicyRefusal::UnknownFormat(parsed.format));
        }
        if parsed.organization_id != organization_id {
            return Err(PolicyRefusal::OtherOrganization {
                found: parsed.organization_id,
            });
        }
        if parsed.version != self.version {
            return Err(PolicyRefusal::VersionMismatch);
        }
        if !valid_version(parsed.version) {
            return Err(PolicyRefusal::VersionOutOfRange {
                found: parsed.version,
            });
        }
        if let Some(held) = held.filter(|held| parsed.version <= *held) {
            return Err(PolicyRefusal::Downgrade {
                found: parsed.version,
                held,
            });
        }
        parsed.rules.check().map_err(PolicyRefusal::InvalidRules)?;
        Ok(parsed)
    }
}

/// `POST /v1/orgs/{org}/policies`: the rules to sign under `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// Above every published version, and at most [`MAX_POLICY_VERSION`].
    pub version: i64,
    /// The rules; every field has a default.
    #[serde(default)]
    pub rules: Rules,
}

/// Why a publish is refused before anything is signed or stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishRefusal {
    /// A version outside 1 to [`MAX_POLICY_VERSION`].
    #[error("version must be 1 to {MAX_POLICY_VERSION}")]
    VersionOutOfRange {
        /// The version asked for.
        version: i64,
    },
    /// The rules break a rule of their own ([`Rules::check`]).
    #[error("{0}")]
    InvalidRules(String),
}

impl PublishRequest {
    /// Checks what can be checked without the published versions: the
    /// version's range, then the rules. (Whether the version is above every
    /// published one is the server's to say.)
    pub fn check(&self) -> Result<(), PublishRefusal> {
        if !valid_version(self.version) {
            return Err(PublishRefusal::VersionOutOfRange {
                version: self.version,
            });
        }
        self.rules.check().map_err(PublishRefusal::InvalidRules)
    }
}

/// `GET /v1/orgs/{org}/policy-key`: the key devices pin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyKey {
    /// The organization.
    pub organization_id: i64,
    /// Always `ed25519`.
    pub algorithm: String,
    /// 32 bytes, hex.
    pub public_key: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn canonical_json_sorts_keys() {
        let v = serde_json::json!({"b": [1, {"z": true, "a": null}], "a": "é\"\n"});
        assert_eq!(
            String::from_utf8(canonical_json(&v).unwrap()).unwrap(),
            "{\"a\":\"é\\\"\\n\",\"b\":[1,{\"a\":null,\"z\":true}]}"
        );
        assert_eq!(
            canonical_json(&serde_json::json!({"x": 1.5})).unwrap(),
            b"{\"x\":1.5}"
        );
    }

    #[test]
    fn a_signature_fails_after_any_byte_changes() {
        use ring::signature::KeyPair;
        let key = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[9; 32]).unwrap();
        let doc = Document {
            format: FORMAT.into(),
            organization_id: 1,
            version: 3,
            issued_at: 1_700_000_000,
            rules: Rules::default(),
        }
        .to_canonical()
        .unwrap();
        let signature = key.sign(&doc);
        let signature = signature.as_ref();
        let public = key.public_key().as_ref();
        assert!(verify(public, &doc, signature));
        for i in 0..doc.len() {
            let mut altered = doc.clone();
            altered[i] ^= 1;
            assert!(!verify(public, &altered, signature));
        }
        let other = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[8; 32]).unwrap();
        assert!(!verify(other.public_key().as_ref(), &doc, signature));
    }

    #[test]
    fn a_publish_answer_sends_no_published_at() {
        let mut answer = SignedPolicy {
            version: 3,
            document: "{}".into(),
            signature: "00".into(),
            public_key: "11".into(),
            published_at: None,
        };
        let text = serde_json::to_string(&answer).unwrap();
        assert!(!text.contains("published_at"), "{text}");
        assert_eq!(serde_json::from_str::<SignedPolicy>(&text).unwrap(), answer);
        answer.published_at = Some(1_795_000_000);
        let text = serde_json::to_string(&answer).unwrap();
        assert!(text.contains(r#""published_at":1795000000"#), "{text}");
    }

    #[test]
    fn the_version_bound_is_i32_max() {
        assert_eq!(MAX_POLICY_VERSION, i64::from(i32::MAX));
    }

    #[test]
    fn a_publish_outside_the_version_bound_is_refused() {
        let request = |version| PublishRequest {
            version,
            rules: Rules::default(),
        };
        for version in [i64::MIN, -1, 0, MAX_POLICY_VERSION + 1, i64::MAX] {
            assert_eq!(
                request(version).check(),
                Err(PublishRefusal::VersionOutOfRange { version }),
                "{version}"
            );
        }
        for version in [1, 2, MAX_POLICY_VERSION - 1, MAX_POLICY_VERSION] {
            assert_eq!(request(version).check(), Ok(()), "{version}");
        }
        assert_eq!(
            request(MAX_POLICY_VERSION + 1)
                .check()
                .unwrap_err()
                .to_string(),
            "version must be 1 to 2147483647"
        );
        // The version is checked before the rules.
        let mut bad_rules = request(3);
        bad_rules.rules.check_in_secs = 1;
        assert!(matches!(
            bad_rules.check(),
            Err(PublishRefusal::InvalidRules(_))
        ));
        bad_rules.version = i64::MAX;
        assert_eq!(
            bad_rules.check(),
            Err(PublishRefusal::VersionOutOfRange { version: i64::MAX })
        );
    }

    /// A policy of organization 1 at `version`, signed by the key of seed
    /// `[9; 32]`, and that key.
    fn signed(version: i64) -> (SignedPolicy, Vec<u8>) {
        use ring::signature::KeyPair;
        let key = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[9; 32]).unwrap();
        let document = Document {
            format: FORMAT.into(),
            organization_id: 1,
            version,
            issued_at: 1_700_000_000,
            rules: Rules::default(),
        }
        .to_canonical()
        .unwrap();
        let policy = SignedPolicy {
            version,
            signature: hex::encode(key.sign(&document)),
            document: String::from_utf8(document).unwrap(),
            public_key: hex::encode(key.public_key()),
            published_at: None,
        };
        (policy, key.public_key().as_ref().to_vec())
    }

    #[test]
    fn a_device_refuses_a_version_outside_the_bound() {
        for found in [i64::MIN, 0, MAX_POLICY_VERSION + 1, i64::MAX] {
            let (policy, key) = signed(found);
            for held in [None, Some(1), Some(MAX_POLICY_VERSION)] {
                assert_eq!(
                    policy.verify(&key, 1, held),
                    Err(PolicyRefusal::VersionOutOfRange { found }),
                    "{found} {held:?}"
                );
            }
        }
        // The bound itself is a version like any other, and above it there
        // is nothing: a device at the bound refuses only as a downgrade.
        let (policy, key) = signed(MAX_POLICY_VERSION);
        for held in [None, Some(1), Some(MAX_POLICY_VERSION - 1)] {
            assert_eq!(
                policy.verify(&key, 1, held).unwrap().version,
                MAX_POLICY_VERSION
            );
        }
        assert_eq!(
            policy.verify(&key, 1, Some(MAX_POLICY_VERSION)),
            Err(PolicyRefusal::Downgrade {
                found: MAX_POLICY_VERSION,
                held: MAX_POLICY_VERSION
            })
        );
    }

    #[test]
    fn rules_are_checked() {
        assert!(Rules::default().check().is_ok());
        let mut r = Rules::default();
        r.apps.insert("notes".into(), vec!["telepathy".into()]);
        let refused = r.check().unwrap_err();
        assert!(refused.contains("unknown capability"), "{refused}");
        assert!(
            !refused.contains("telepathy"),
            "the sender's text is not quoted"
        );
        let r = Rules {
            offline: OfflineRules {
                block_after_hours: 100,
                wipe_after_days: 1,
            },
            ..Rules::default()
        };
        assert!(r.check().is_err());
        let partial: Rules = serde_json::from_str(r#"{"passphrase": {"min_length": 12}}"#).unwrap();
        assert_eq!(partial.passphrase.min_length, 12);
        assert_eq!(partial.passphrase.min_classes, 1);
        assert!(serde_json::from_str::<Rules>(r#"{"typo": 1}"#).is_err());
    }
}
