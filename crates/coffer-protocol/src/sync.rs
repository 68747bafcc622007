//! Record sync (docs/protocol.md, section 8; docs/formats/sync.md): the
//! device pushes the latest local state of each changed record and pulls
//! the organization's changes through a resumable cursor.
//!
//! - A **revision** has a global name: the 16-byte random **origin** of the
//!   device's record store and a local sequence number, written
//!   `<32 hex digits>.<seq>` ([`Revision`]). A retried push, or one that
//!   reaches a second server process, names the same revision, so the
//!   server recognises it.
//! - The server assigns every change a **sequence** per (organization,
//!   app), gap-free and in commit order, and keeps each record once, at its
//!   latest sequence. A pull reads the records after a cursor, in sequence
//!   order.
//! - A push whose base is not the server's head becomes a **conflict
//!   leaf**, kept beside the head until a later revision resolves it
//!   ([`PushOp::resolves`]). Nothing is dropped.
//!
//! ```
//! use coffer_protocol::sync::{Outcome, PushAnswer, Revision};
//! use coffer_protocol::Answer;
//!
//! let rev: Revision = "0123456789abcdef0123456789abcdef.7".parse().unwrap();
//! assert_eq!(rev.seq(), 7);
//! let body = br#"{"batch_id": "b-1", "results": [
//!   {"revision": "0123456789abcdef0123456789abcdef.7", "outcome": "applied", "seq": 41},
//!   {"revision": "0123456789abcdef0123456789abcdef.8", "outcome": "rejected",
//!    "code": "body_too_large", "message": "a record body is at most 4194304 bytes"}]}"#;
//! let answer = PushAnswer::decode(body).unwrap();
//! assert_eq!(answer.results[0].outcome, Outcome::Applied { seq: 41 });
//! // A newer server's outcome is kept as unknown: the device acts on none.
//! let newer = br#"{"batch_id": "b-1", "results": [
//!   {"revision": "0123456789abcdef0123456789abcdef.7", "outcome": "quarantined"}]}"#;
//! assert_eq!(PushAnswer::decode(newer).unwrap().results[0].outcome, Outcome::Unknown);
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{json_answer, json_body, Auth, Endpoint, Method};

/// Most operations in one push.
pub const MAX_PUSH_OPS: usize = 1000;
/// Largest record body, serialized JSON: 4 MiB (the device's own limit).
pub const MAX_RECORD_BODY: usize = 4 << 20;
/// Largest push request body: 16 MiB.
pub const MAX_PUSH_BODY: usize = 16 << 20;
/// Most records in one pull page.
pub const MAX_PULL_RECORDS: u32 = 1000;
/// A pull page stops adding records once their bodies pass this many bytes
/// (a page always holds at least one record, so one record of
/// [`MAX_RECORD_BODY`] still travels).
pub const PULL_PAGE_BYTES: usize = 2 << 20;
/// Most unresolved conflict leaves of one record: a conflicting push past
/// them is refused ([`RejectCode::TooManyLeaves`]) until the record is
/// resolved, so that a record with all its leaves stays readable.
pub const MAX_LEAVES: usize = 6;
/// Largest pull answer a device reads: a full page of bodies, and one
/// record of the largest size with [`MAX_LEAVES`] leaves as large, with room.
pub const MAX_PULL_ANSWER: usize = 40 << 20;
/// Longest collection name or record id, bytes.
pub const MAX_NAME: usize = 256;
/// Longest batch id, bytes.
pub const MAX_BATCH_ID: usize = 128;
/// Longest author name, bytes (a slot name on the device).
pub const MAX_AUTHOR: usize = 64;
/// Most files one record references.
pub const MAX_FILES: usize = 64;
/// Most conflict leaves one operation resolves.
pub const MAX_RESOLVES: usize = 64;

/// The origin of revisions the server makes itself (an admin's
/// resolution): sixteen zero bytes. No device draws it (a device's origin
/// is random, and one drawn as all zeroes is drawn again).
pub const SERVER_ORIGIN: [u8; 16] = [0; 16];

/// The global name of a revision: origin and local sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Revision {
    origin: [u8; 16],
    seq: u64,
}

/// A revision name that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a revision is 32 lower-case hex digits, a dot, and a sequence from 1 to 2^63-1")]
pub struct BadRevision;

impl Revision {
    /// The revision `seq` of `origin`. `seq` must be 1 to 2^63−1.
    pub fn new(origin: [u8; 16], seq: u64) -> Result<Revision, BadRevision> {
        if seq == 0 || i64::try_from(seq).is_err() {
            return Err(BadRevision);
        }
        Ok(Revision { origin, seq })
    }

    /// The origin: the record store (or, all zeroes, the server) that made it.
    pub fn origin(&self) -> [u8; 16] {
        self.origin
    }

    /// The origin's local sequence.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Whether the server made it (an admin's resolution).
    pub fn is_server_made(&self) -> bool {
        self.origin == SERVER_ORIGIN
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", hex::encode(self.origin), self.seq)
    }
}

impl FromStr for Revision {
    type Err = BadRevision;
    fn from_str(text: &str) -> Result<Revision, BadRevision> {
        let (origin, seq) = text.split_once('.').ok_or(BadRevision)?;
        if origin.len() != 32
            || !origin
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(BadRevision);
        }
        // Digits only, no sign, no leading zero: one spelling per revision.
        if seq.is_empty()
            || seq.len() > 19
            || seq.starts_with('0')
            || !seq.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(BadRevision);
        }
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(origin, &mut bytes).map_err(|_| BadRevision)?;
        Revision::new(bytes, seq.parse().map_err(|_| BadRevision)?)
    }
}

impl Serialize for Revision {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Revision {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A file a record references (its bytes travel by the files sync, which
/// delivers them before the record that names them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    /// The file's name in the app's file store.
    pub name: String,
    /// SHA-256 of its plaintext, 64 lower-case hex digits.
    pub sha256: String,
    /// Its length, bytes.
    pub size: u64,
    /// Its content type (e.g. `image/jpeg`), kept with the downloaded file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

/// One operation of a push: the latest local state of one record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushOp {
    /// The record's collection (1 to 256 bytes).
    pub collection: String,
    /// The record's id in it (1 to 256 bytes).
    pub id: String,
    /// This state's global name.
    pub revision: Revision,
    /// The server revision the local edit was made on; `None` for a record
    /// the device created.
    #[serde(default)]
    pub base: Option<Revision>,
    /// Whether the record is deleted (then `body` is `None`).
    #[serde(default)]
    pub deleted: bool,
    /// The JSON document; `None` exactly when deleted.
    #[serde(default)]
    pub body: Option<Value>,
    /// Files the record references.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileRef>,
    /// The local user who wrote it (the device's slot name).
    pub author: String,
    /// Conflict leaves this state resolves (it was made seeing them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolves: Vec<Revision>,
}

/// Why the server will not take one operation. The device keeps the local
/// change and reports it; it is not pushed again until it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RejectCode {
    /// A collection or record id breaks the naming rule.
    InvalidName,
    /// A body over [`MAX_RECORD_BODY`].
    BodyTooLarge,
    /// A body with a deletion, or none without one.
    InvalidBody,
    /// An author name that is empty or too long.
    InvalidAuthor,
    /// A file reference that is malformed, or too many of them.
    InvalidFiles,
    /// This revision name was pushed before with other content.
    RevisionReused,
    /// A revision that claims the server's origin.
    ReservedOrigin,
    /// Two operations of the batch name the same record.
    DuplicateRecord,
    /// A file it references has not reached the server.
    MissingFile,
    /// The record has [`MAX_LEAVES`] unresolved conflicts already.
    TooManyLeaves,
    /// A code this device does not know.
    #[serde(other)]
    Unknown,
}

impl RejectCode {
    /// The code as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::InvalidName => "invalid_name",
            RejectCode::BodyTooLarge => "body_too_large",
            RejectCode::InvalidBody => "invalid_body",
            RejectCode::InvalidAuthor => "invalid_author",
            RejectCode::InvalidFiles => "invalid_files",
            RejectCode::RevisionReused => "revision_reused",
            RejectCode::ReservedOrigin => "reserved_origin",
            RejectCode::DuplicateRecord => "duplicate_record",
            RejectCode::MissingFile => "missing_file",
            RejectCode::TooManyLeaves => "too_many_leaves",
            RejectCode::Unknown => "unknown",
        }
    }
}

/// A refused operation: the code and fixed words (never the operation's
/// own content).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Why.
    pub code: RejectCode,
    /// In words.
    pub message: &'static str,
}

/// Whether `name` is a valid collection name or record id: 1 to
/// [`MAX_NAME`] bytes. (The device's record store has the same rule.)
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME
}

impl PushOp {
    /// The operation checked as the server checks it, before it touches
    /// the database (the same check runs on the device before it queues
    /// anything, so a change the server would refuse is reported at once).
    pub fn check(&self) -> Result<(), Rejection> {
        let reject = |code, message| Err(Rejection { code, message });
        if !valid_name(&self.collection) || !valid_name(&self.id) {
            return reject(
                RejectCode::InvalidName,
                "a collection or record id is 1 to 256 bytes",
            );
        }
        if self.revision.is_server_made() {
            return reject(
                RejectCode::ReservedOrigin,
                "the all-zero origin is the server's own",
            );
        }
        if self.author.is_empty() || self.author.len() > MAX_AUTHOR {
            return reject(RejectCode::InvalidAuthor, "an author is 1 to 64 bytes");
        }
        match (&self.body, self.deleted) {
            (Some(_), true) => {
                return reject(RejectCode::InvalidBody, "a deletion carries no body")
            }
            (None, false) | (Some(Value::Null), false) => {
                return reject(
                    RejectCode::InvalidBody,
                    "a record that is not deleted has a body",
                )
            }
            (Some(body), false) => {
                if body_len(body) > MAX_RECORD_BODY {
                    return reject(
                        RejectCode::BodyTooLarge,
                        "a record body is at most 4194304 bytes of JSON",
                    );
                }
            }
            (None, true) => {}
        }
        if self.files.len() > MAX_FILES || !self.files.iter().all(FileRef::is_valid) {
            return reject(
                RejectCode::InvalidFiles,
                "at most 64 files, each with a name of 1 to 256 bytes and a SHA-256 in hex",
            );
        }
        if self.resolves.len() > MAX_RESOLVES {
            return reject(RejectCode::InvalidBody, "at most 64 resolved leaves");
        }
        Ok(())
    }

    /// SHA-256 of the operation as encoded: the same revision pushed again
    /// with another digest is [`RejectCode::RevisionReused`].
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(serde_json::to_vec(self).unwrap_or_default()).into()
    }
}

/// The serialized length of a JSON value (without building the text).
pub fn body_len(body: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing to a counter cannot fail; a value serde cannot encode counts
    // as too large.
    match serde_json::to_writer(&mut count, body) {
        Ok(()) => count.0,
        Err(_) => usize::MAX,
    }
}

impl FileRef {
    fn is_valid(&self) -> bool {
        valid_name(&self.name)
            && crate::files::is_sha256_hex(&self.sha256)
            && self.size <= crate::files::MAX_FILE_SIZE
            && self
                .content_type
                .as_deref()
                .is_none_or(crate::files::is_content_type)
    }
}

/// A push's body: a batch of operations, at most one per record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushBatch {
    /// Unique per batch (1 to 128 bytes of `[A-Za-z0-9._-]`): a retry sends
    /// the same id and gets the same answer.
    pub batch_id: String,
    /// 1 to [`MAX_PUSH_OPS`] operations.
    pub ops: Vec<PushOp>,
}

/// A push refused as a whole (its operations are not looked at).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchRefusal {
    /// The batch id breaks its rule.
    #[error("a batch id is 1 to 128 bytes of letters, digits, '.', '_' and '-'")]
    BatchId,
    /// No operations, or too many.
    #[error("a push holds 1 to 1000 operations")]
    OpCount,
}

impl PushBatch {
    /// The batch's own rules (each operation is checked on its own, and
    /// answered on its own: [`PushOp::check`]).
    pub fn check(&self) -> Result<(), BatchRefusal> {
        let id_ok = !self.batch_id.is_empty()
            && self.batch_id.len() <= MAX_BATCH_ID
            && self
                .batch_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !id_ok {
            return Err(BatchRefusal::BatchId);
        }
        if self.ops.is_empty() || self.ops.len() > MAX_PUSH_OPS {
            return Err(BatchRefusal::OpCount);
        }
        Ok(())
    }

    /// SHA-256 of the batch as encoded: the same batch id with another
    /// digest is refused (`batch_conflict`).
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(serde_json::to_vec(self).unwrap_or_default()).into()
    }
}

/// What became of one operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// It is the record's head now, at this sequence.
    Applied {
        /// The change sequence it got.
        seq: u64,
    },
    /// This revision was stored before (a retry): nothing changed.
    Duplicate,
    /// Its base is not the head: it is kept as a conflict leaf of the
    /// record, beside the head, until a later revision resolves it.
    Conflict {
        /// The change sequence it got (the record changed: it has a leaf).
        seq: u64,
        /// The head it conflicts with (`None`: the record is gone from
        /// the server, compacted away).
        head: Option<Revision>,
    },
    /// The server will not take it.
    Rejected {
        /// Why.
        code: RejectCode,
        /// In words.
        message: String,
    },
    /// An outcome this device does not know: it acts on none.
    #[serde(other)]
    Unknown,
}

/// The result of one operation, named by its revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpResult {
    /// The operation's revision.
    pub revision: Revision,
    /// What became of it.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The answer to [`Push`]: one result per operation, in order. A retry of
/// the batch gets the same answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushAnswer {
    /// The batch.
    pub batch_id: String,
    /// One per operation, in the batch's order.
    pub results: Vec<OpResult>,
}

/// `POST /v1/device/sync/{app}/push` (device token).
#[derive(Debug)]
pub struct Push {
    /// The app (it must be in the signed policy's `sync` list).
    pub app: String,
    /// The operations.
    pub batch: PushBatch,
}

impl Endpoint for Push {
    type Answer = PushAnswer;
    const METHOD: Method = Method::Post;
    const PATH: &'static str = "/v1/device/sync/{app}/push";
    const AUTH: Auth = Auth::Device;
    fn path(&self) -> String {
        Self::PATH.replace("{app}", &crate::path_segment(&self.app))
    }
    fn body(&self) -> Option<(Vec<u8>, &'static str)> {
        json_body(&self.batch)
    }
}

/// `POST /v1/device/sync/{app}/purged` (device or release token): the
/// device has crypto-erased the app's synced data, as the server's
/// revocation or the policy's `sync` list told it (audited).
#[derive(Debug)]
pub struct Purged {
    /// The app.
    pub app: String,
}

impl Endpoint for Purged {
    type Answer = crate::NoContent;
    const METHOD: Method = Method::Post;
    const PATH: &'static str = "/v1/device/sync/{app}/purged";
    const AUTH: Auth = Auth::DeviceOrRelease;
    fn path(&self) -> String {
        Self::PATH.replace("{app}", &crate::path_segment(&self.app))
    }
}

/// A conflict leaf: a revision kept beside the head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Leaf {
    /// Its name.
    pub revision: Revision,
    /// The revision it was made on.
    #[serde(default)]
    pub base: Option<Revision>,
    /// Whether it deletes the record.
    #[serde(default)]
    pub deleted: bool,
    /// Its body (`None` for a deletion).
    #[serde(default)]
    pub body: Option<Value>,
    /// Its files.
    #[serde(default)]
    pub files: Vec<FileRef>,
    /// Who wrote it.
    #[serde(default)]
    pub author: String,
}

/// One record of a pull page, at its latest sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PulledRecord {
    /// Its collection.
    pub collection: String,
    /// Its id.
    pub id: String,
    /// Its latest change sequence.
    pub seq: u64,
    /// The head.
    pub revision: Revision,
    /// Whether the head deletes it (a tombstone).
    #[serde(default)]
    pub deleted: bool,
    /// The head's body (`None` for a tombstone).
    #[serde(default)]
    pub body: Option<Value>,
    /// The head's files.
    #[serde(default)]
    pub files: Vec<FileRef>,
    /// Who wrote the head.
    #[serde(default)]
    pub author: String,
    /// Conflict leaves not yet resolved.
    #[serde(default)]
    pub conflicts: Vec<Leaf>,
}

/// `GET /v1/device/sync/{app}/changes?after=CURSOR&limit=N` (device token):
/// the records changed after the cursor (all of them without one), in
/// sequence order. A cursor older than what the server keeps is refused
/// with 410 and `cursor_expired`: the device then pulls from the start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pull {
    /// The app.
    pub app: String,
    /// The cursor of the last page applied; `None` for the first pull.
    pub after: Option<String>,
    /// Most records in the page (1 to [`MAX_PULL_RECORDS`]; the server's
    /// default is the maximum).
    pub limit: Option<u32>,
}

/// A page of changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullAnswer {
    /// The records, by sequence.
    pub records: Vec<PulledRecord>,
    /// Opaque: the `after` of the next pull (the same cursor when the page
    /// is empty).
    pub cursor: String,
    /// Whether this page reaches the end of the feed as it stood.
    pub complete: bool,
}

impl Endpoint for Pull {
    type Answer = PullAnswer;
    const METHOD: Method = Method::Get;
    const PATH: &'static str = "/v1/device/sync/{app}/changes";
    const AUTH: Auth = Auth::Device;
    const MAX_ANSWER: usize = MAX_PULL_ANSWER;
    fn path(&self) -> String {
        let mut path = Self::PATH.replace("{app}", &crate::path_segment(&self.app));
        let mut sep = '?';
        if let Some(after) = &self.after {
            path.push_str(&format!("{sep}after={}", crate::path_segment(after)));
            sep = '&';
        }
        if let Some(limit) = self.limit {
            path.push_str(&format!("{sep}limit={limit}"));
        }
        path
    }
}

/// The query of [`Pull`], as the server decodes it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullQuery {
    /// The cursor.
    #[serde(default)]
    pub after: Option<String>,
    /// The page size.
    #[serde(default)]
    pub limit: Option<u32>,
}

/// The server's cursor: `v1.<sequence>.<floor>` — the last sequence the
/// reader has, and the expiry floor the server had when it answered.
/// Opaque to the device; parsed only by the server. The floor lets the
/// server tell a reader that missed a dropped tombstone (the floor has
/// since passed both numbers) from one that is only behind the floor
/// because it started reading after the drop (a first pull, page by page).
pub fn encode_cursor(seq: u64, floor: u64) -> String {
    format!("v1.{seq}.{floor}")
}

/// The (sequence, floor) a cursor stands for, if it is one the server made
/// (`v1.<seq>` without a floor, as early servers made them, has floor 0).
pub fn decode_cursor(cursor: &str) -> Option<(u64, u64)> {
    let number = |digits: &str| -> Option<u64> {
        if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits
            .parse::<u64>()
            .ok()
            .filter(|s| i64::try_from(*s).is_ok())
    };
    let rest = cursor.strip_prefix("v1.")?;
    match rest.split_once('.') {
        Some((seq, floor)) => Some((number(seq)?, number(floor)?)),
        None => Some((number(rest)?, 0)),
    }
}

json_answer!(PushAnswer, PullAnswer);

// The admins' side (owners and admins; auditors read): records, their
// conflicts, provisional authors. Reads of bodies are audited.

/// One record as an admin lists it (no body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordSummary {
    /// The app.
    pub app: String,
    /// Its collection.
    pub collection: String,
    /// Its id.
    pub id: String,
    /// Its latest change sequence.
    pub seq: u64,
    /// The head.
    pub revision: Revision,
    /// Whether the head is a tombstone.
    pub deleted: bool,
    /// Who wrote the head (a slot name on the device).
    pub author: String,
    /// The device that pushed the head (`None`: an admin's resolution).
    #[serde(default)]
    pub device_id: Option<i64>,
    /// Whether it waits for its author to be bound to a user (other
    /// devices do not see it meanwhile).
    #[serde(default)]
    pub provisional: bool,
    /// Unresolved conflict leaves.
    #[serde(default)]
    pub conflicts: u32,
    /// When the head was stored, Unix seconds.
    pub updated_at: i64,
}

/// `GET /v1/orgs/{org_id}/records?app=&collection=&conflicts=&provisional=&after=&limit=`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordsQuery {
    /// Only this app.
    #[serde(default)]
    pub app: Option<String>,
    /// Only this collection.
    #[serde(default)]
    pub collection: Option<String>,
    /// Only records with conflict leaves.
    #[serde(default)]
    pub conflicts: Option<bool>,
    /// Only provisional records.
    #[serde(default)]
    pub provisional: Option<bool>,
    /// The `next_after` of the previous page.
    #[serde(default)]
    pub after: Option<String>,
    /// Most records (1 to 10,000; default 1,000).
    #[serde(default)]
    pub limit: Option<u32>,
    /// `json` (default) or, for the export, `csv`.
    #[serde(default)]
    pub format: Option<String>,
}

/// A page of [`RecordSummary`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordList {
    /// The records, by app, collection and id.
    pub records: Vec<RecordSummary>,
    /// Give it as `after` for the next page; `None` at the end.
    #[serde(default)]
    pub next_after: Option<String>,
}

/// Another record with the same body: a likely duplicate, reported and
/// never merged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LikelyDuplicate {
    /// Its collection.
    pub collection: String,
    /// Its id.
    pub id: String,
    /// Whether it is provisional too.
    #[serde(default)]
    pub provisional: bool,
}

/// `GET /v1/orgs/{org_id}/records/{app}/{collection}/{id}`: one record,
/// its body and its conflict leaves (the read is audited).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordDetail {
    /// What a listing shows.
    #[serde(flatten)]
    pub summary: RecordSummary,
    /// The head's body (`None` for a tombstone).
    #[serde(default)]
    pub body: Option<Value>,
    /// The head's files.
    #[serde(default)]
    pub files: Vec<FileRef>,
    /// The revision the head was made on.
    #[serde(default)]
    pub base: Option<Revision>,
    /// The unresolved leaves, oldest first.
    #[serde(default)]
    pub leaves: Vec<Leaf>,
    /// Records of the same collection with the same body.
    #[serde(default)]
    pub duplicates: Vec<LikelyDuplicate>,
}

/// `POST /v1/orgs/{org_id}/records/{app}/{collection}/{id}/resolve`
/// (owners, admins): ends a conflict with one new revision (made by the
/// server, [`SERVER_ORIGIN`]) that resolves every leaf. Exactly one of
/// `keep` (the head's or a leaf's revision, whose content it takes) and
/// `body` (new content) or `delete`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// Keep the content of this revision (the head or a leaf).
    #[serde(default)]
    pub keep: Option<Revision>,
    /// Or this new body.
    #[serde(default)]
    pub body: Option<Value>,
    /// Or delete the record.
    #[serde(default)]
    pub delete: bool,
    /// The leaves the admin saw: if the record's leaves are others now (a
    /// device pushed another conflict meanwhile), the resolution is refused
    /// with `conflicts_changed` rather than drop a leaf no one looked at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaves: Option<Vec<Revision>>,
}

/// The answer to [`ResolveRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    /// The new head.
    pub revision: Revision,
    /// Its change sequence.
    pub seq: u64,
    /// The leaves it resolved.
    pub resolved: Vec<Revision>,
}

/// A local author of a device whose records wait for an admin
/// (`GET /v1/orgs/{org_id}/sync/authors`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisionalAuthor {
    /// The device.
    pub device_id: i64,
    /// The author's name on it.
    pub author: String,
    /// Their provisional records.
    pub records: u64,
}

/// The provisional authors of an organization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisionalAuthors {
    /// By device and name.
    pub authors: Vec<ProvisionalAuthor>,
}

/// `POST /v1/orgs/{org_id}/sync/authors/bind` (owners, admins): the local
/// author `author` of device `device_id` is the server user `user_id`; their
/// provisional records are published (each gets a new sequence).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindAuthor {
    /// The device.
    pub device_id: i64,
    /// The author's name on it.
    pub author: String,
    /// The user they are.
    pub user_id: i64,
}

/// The answer to [`BindAuthor`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorBound {
    /// Records published.
    pub published: u64,
    /// Published records whose body another record of their collection
    /// has: likely duplicates, for an admin to look at.
    pub duplicates: Vec<LikelyDuplicate>,
}

json_answer!(
    RecordList,
    RecordDetail,
    Resolved,
    ProvisionalAuthors,
    AuthorBound
);

#[cfg(test)]
mod tests {
    use super::*;

    fn op() -> PushOp {
        PushOp {
            collection: "cases".into(),
            id: "c-1".into(),
            revision: Revision::new([7; 16], 1).unwrap(),
            base: None,
            deleted: false,
            body: Some(serde_json::json!({"name": "Amina"})),
            files: Vec::new(),
            author: "alice".into(),
            resolves: Vec::new(),
        }
    }

    #[test]
    fn a_revision_has_one_spelling() {
        let text = "0707070707070707070707070707070707070707"[..32].to_owned() + ".12";
        let rev: Revision = text.parse().unwrap();
        assert_eq!(rev.to_string(), text);
        for bad in [
            "",
            ".1",
            "0707070707070707070707070707070707.1",
            "07070707070707070707070707070707.0",
            "07070707070707070707070707070707.01",
            "07070707070707070707070707070707.+1",
            "07070707070707070707070707070707.-1",
            "0707070707070707070707070707070A.1",
            "07070707070707070707070707070707.9223372036854775808",
            "07070707070707070707070707070707",
            "07070707070707070707070707070707.1.2",
        ] {
            assert_eq!(bad.parse::<Revision>(), Err(BadRevision), "{bad}");
        }
        assert_eq!(Revision::new([1; 16], 0), Err(BadRevision));
    }

    #[test]
    fn an_operation_is_checked_before_anything_is_stored() {
        assert_eq!(op().check(), Ok(()));
        let code = |op: PushOp| op.check().unwrap_err().code;
        assert_eq!(
            code(PushOp {
                collection: String::new(),
                ..op()
            }),
            RejectCode::InvalidName
        );
        assert_eq!(
            code(PushOp {
                id: "x".repeat(257),
                ..op()
            }),
            RejectCode::InvalidName
        );
        assert_eq!(
            code(PushOp {
                deleted: true,
                ..op()
            }),
            RejectCode::InvalidBody
        );
        assert_eq!(code(PushOp { body: None, ..op() }), RejectCode::InvalidBody);
        assert_eq!(
            code(PushOp {
                body: Some(Value::Null),
                ..op()
            }),
            RejectCode::InvalidBody
        );
        assert_eq!(
            code(PushOp {
                author: String::new(),
                ..op()
            }),
            RejectCode::InvalidAuthor
        );
        assert_eq!(
            code(PushOp {
                revision: Revision::new(SERVER_ORIGIN, 3).unwrap(),
                ..op()
            }),
            RejectCode::ReservedOrigin
        );
        let big = Value::String("x".repeat(MAX_RECORD_BODY));
        assert_eq!(
            code(PushOp {
                body: Some(big),
                ..op()
            }),
            RejectCode::BodyTooLarge
        );
        let bad_file = FileRef {
            name: "p.jpg".into(),
            sha256: "zz".into(),
            size: 1,
            content_type: None,
        };
        assert_eq!(
            code(PushOp {
                files: vec![bad_file],
                ..op()
            }),
            RejectCode::InvalidFiles
        );
        let deletion = PushOp {
            deleted: true,
            body: None,
            ..op()
        };
        assert_eq!(deletion.check(), Ok(()));
    }

    #[test]
    fn a_body_is_measured_as_it_is_encoded() {
        let body = serde_json::json!({"a": [1, 2, "three"], "b": null});
        assert_eq!(body_len(&body), serde_json::to_vec(&body).unwrap().len());
    }

    #[test]
    fn a_batch_is_strict_and_its_digest_follows_its_content() {
        let batch = PushBatch {
            batch_id: "b-1".into(),
            ops: vec![op()],
        };
        assert_eq!(batch.check(), Ok(()));
        let text = serde_json::to_string(&batch).unwrap();
        let back: PushBatch = serde_json::from_str(&text).unwrap();
        assert_eq!(back.digest(), batch.digest());
        let mut other = batch.clone();
        other.ops[0].body = Some(serde_json::json!({"name": "Amina B."}));
        assert_ne!(other.digest(), batch.digest());
        assert!(
            serde_json::from_str::<PushBatch>(r#"{"batch_id":"b","ops":[],"extra":1}"#).is_err()
        );
        assert_eq!(
            PushBatch {
                batch_id: "b/1".into(),
                ops: vec![op()]
            }
            .check(),
            Err(BatchRefusal::BatchId)
        );
        assert_eq!(
            PushBatch {
                batch_id: "b".into(),
                ops: Vec::new()
            }
            .check(),
            Err(BatchRefusal::OpCount)
        );
    }

    #[test]
    fn cursors_round_trip_and_refuse_what_the_server_did_not_make() {
        assert_eq!(decode_cursor(&encode_cursor(0, 0)), Some((0, 0)));
        assert_eq!(
            decode_cursor(&encode_cursor(123_456, 99)),
            Some((123_456, 99))
        );
        assert_eq!(decode_cursor("v1.17"), Some((17, 0)));
        for bad in [
            "",
            "v1.",
            "v2.3",
            "v1.-3",
            "v1.3x",
            "v1.99999999999999999999",
            "3",
            "v1.3.",
            "v1..3",
            "v1.3.4.5",
            "v1.3.-4",
        ] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }

    #[test]
    fn pull_paths_escape_the_app_and_cursor() {
        let pull = Pull {
            app: "notes".into(),
            after: Some("v1.9".into()),
            limit: Some(50),
        };
        assert_eq!(
            pull.path(),
            "/v1/device/sync/notes/changes?after=v1.9&limit=50"
        );
        let first = Pull {
            app: "a b".into(),
            after: None,
            limit: None,
        };
        assert_eq!(first.path(), "/v1/device/sync/a%20b/changes");
    }
}
