//! Storage for record sync (docs/server.md, "Record sync"): records at
//! their latest sequence, conflict leaves, the per-(organization, app)
//! counter and expiry floor, the change log, push batches and their
//! answers, author bindings, compaction. Bodies arrive and leave sealed
//! ([`crate::record_seal`]): the store never sees one in the clear.
//!
//! What a push does to each operation is decided once, for both backends,
//! by [`plan`]: each backend only loads the state it needs and writes what
//! the plan says, in one transaction that holds the counter row.

use std::collections::{HashMap, HashSet};

use coffer_protocol::sync::{
    LikelyDuplicate, OpResult, Outcome, ProvisionalAuthor, PushAnswer, RejectCode, Rejection,
    Revision, MAX_LEAVES,
};

use super::{Store, StoreError};

/// One checked operation of a push, sealed above the store.
#[derive(Debug, Clone)]
pub struct SyncOp {
    /// Its collection.
    pub collection: String,
    /// Its record id.
    pub id: String,
    /// Its revision.
    pub revision: Revision,
    /// The revision it was made on.
    pub base: Option<Revision>,
    /// A deletion.
    pub deleted: bool,
    /// The record seal of its content.
    pub sealed: Vec<u8>,
    /// The body MAC (none for a deletion).
    pub body_mac: Option<String>,
    /// The local author.
    pub author: String,
    /// The leaves it resolves.
    pub resolves: Vec<Revision>,
    /// [`coffer_protocol::sync::PushOp::digest`], hex.
    pub digest: String,
    /// The files it references: (SHA-256, size). Each must be a stored
    /// blob of the organization's app with that size, else the operation
    /// is rejected ([`RejectCode::MissingFile`]).
    pub files: Vec<(String, u64)>,
}

/// A push to store.
#[derive(Debug, Clone)]
pub struct NewPush {
    /// The device's organization.
    pub org_id: i64,
    /// The app.
    pub app: String,
    /// The pushing device.
    pub device_id: i64,
    /// The batch id.
    pub batch_id: String,
    /// [`coffer_protocol::sync::PushBatch::digest`], hex.
    pub digest: String,
    /// Each operation's revision, and the operation checked: sealed, or
    /// why it was refused.
    pub ops: Vec<(Revision, Result<SyncOp, Rejection>)>,
}

/// What storing a push came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushStored {
    /// The answer (a [`PushAnswer`] as JSON text): new, or stored by an
    /// earlier push of the same batch.
    Answer(String),
    /// Another batch was pushed under this id.
    BatchConflict,
}

/// A record as stored.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    /// Its app.
    pub app: String,
    /// Its collection.
    pub collection: String,
    /// Its id.
    pub id: String,
    /// Its latest change sequence.
    pub seq: i64,
    /// The head.
    pub revision: String,
    /// The head's base.
    pub base: Option<String>,
    /// A tombstone.
    pub deleted: bool,
    /// The head's record seal (empty when not asked for).
    pub sealed: Vec<u8>,
    /// The head's body MAC.
    pub body_mac: Option<String>,
    /// Who wrote the head.
    pub author: String,
    /// The device that pushed it (none: the server).
    pub device_id: Option<i64>,
    /// Waits for its author to be bound.
    pub provisional: bool,
    /// Unresolved leaves.
    pub leaves: i64,
    /// When the head was stored.
    pub updated_at: i64,
}

/// A conflict leaf as stored.
#[derive(Debug, Clone)]
pub struct StoredLeaf {
    /// Its record's collection.
    pub collection: String,
    /// Its record's id.
    pub id: String,
    /// Its revision.
    pub revision: String,
    /// Its base.
    pub base: Option<String>,
    /// A deletion.
    pub deleted: bool,
    /// Its record seal.
    pub sealed: Vec<u8>,
    /// Who wrote it.
    pub author: String,
}

/// A page of the feed.
#[derive(Debug, Clone)]
pub enum PullPage {
    /// A tombstone above the cursor was dropped since the cursor was made.
    Expired,
    /// The cursor is above the counter: this feed is behind the reader
    /// (a database restored from a backup, or another one).
    Behind,
    /// The records after the cursor (with their leaves, by record), and
    /// whether more follow.
    Page {
        /// By sequence.
        records: Vec<StoredRecord>,
        /// Leaves of those records, oldest first.
        leaves: Vec<StoredLeaf>,
        /// More records follow the page.
        more: bool,
        /// The expiry floor: the cursor of a complete page is never below
        /// it (else the next pull would be refused).
        floor: i64,
    },
}

/// Which records an admin lists.
#[derive(Debug, Clone, Default)]
pub struct RecordFilter {
    /// Only this app.
    pub app: Option<String>,
    /// Only this collection.
    pub collection: Option<String>,
    /// Only records with leaves (or without).
    pub conflicts: Option<bool>,
    /// Only provisional records (or not).
    pub provisional: Option<bool>,
    /// After this (app, collection, id).
    pub after: Option<(String, String, String)>,
    /// At most this many.
    pub limit: i64,
    /// Read the sealed bodies too (an export).
    pub bodies: bool,
}

/// Seals a resolution's content for its new revision: (record seal, body
/// MAC).
pub type SealFor =
    Box<dyn FnOnce(&Revision) -> Result<(Vec<u8>, Option<String>), StoreError> + Send>;

/// A resolution to store: the new head's content, sealed for its
/// revision once the store has assigned it.
pub struct Resolution {
    /// The head the admin saw: refused as [`ResolveStored::Changed`] if it
    /// moved meanwhile.
    pub expected_head: String,
    /// The leaves the admin saw (any order): refused as
    /// [`ResolveStored::Changed`] if the record has others now.
    pub expected_leaves: Vec<String>,
    /// A deletion.
    pub deleted: bool,
    /// Seals the content for the new revision: (record seal, body MAC).
    pub seal: SealFor,
    /// The admin (user id), for the head's author.
    pub author: String,
    /// The SHA-256 of each file the new head references (those of the
    /// revision it keeps), for the files' garbage collection.
    pub files: Vec<String>,
}

/// Whether two lists of revisions name the same set.
pub(crate) fn same_set(a: &[String], b: &[String]) -> bool {
    let mut a: Vec<&String> = a.iter().collect();
    let mut b: Vec<&String> = b.iter().collect();
    a.sort();
    b.sort();
    a == b
}

/// What storing a resolution came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveStored {
    /// No such record.
    NotFound,
    /// It has no leaves.
    NotInConflict,
    /// Its head moved since the admin read it.
    Changed,
    /// Done: the new head, its sequence, the leaves resolved.
    Resolved(coffer_protocol::sync::Resolved),
}

/// What binding an author came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindStored {
    /// The device is not the organization's.
    NoDevice,
    /// The user is not a member of the organization.
    NoUser,
    /// Bound: records published, likely duplicates among them.
    Bound {
        /// Records published.
        published: u64,
        /// Published records another record of their collection has the
        /// body of.
        duplicates: Vec<LikelyDuplicate>,
    },
}

/// What a compaction dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Tombstones.
    pub tombstones: u64,
    /// Change-log rows.
    pub changes: u64,
    /// Batch answers.
    pub batches: u64,
}

/// The head of a record, as a push sees it.
#[derive(Debug, Clone)]
pub(super) struct Head {
    pub revision: Revision,
    pub base: Option<Revision>,
    pub deleted: bool,
    pub leaves: Vec<Revision>,
    /// The device that pushed the head (`None`: an admin's resolution).
    pub device_id: Option<i64>,
    /// Whether the head waits for its author to be bound.
    pub provisional: bool,
}

/// What a push needs to know before deciding.
#[derive(Debug, Default)]
pub(super) struct PushState {
    /// By (collection, id).
    pub heads: HashMap<(String, String), Head>,
    /// Stored revisions (of this batch's operations) and their digests.
    pub revisions: HashMap<String, String>,
    /// The batch's authors verified for the device.
    pub verified: HashSet<String>,
    /// The device of each leaf of the records the batch names.
    pub leaf_devices: HashMap<String, i64>,
    /// The stored blobs the batch's operations reference: size by SHA-256.
    pub blobs: HashMap<String, i64>,
}

/// One write of a push.
#[derive(Debug)]
pub(super) enum Write<'a> {
    /// The op becomes the head.
    Head {
        op: &'a SyncOp,
        seq: i64,
        provisional: bool,
        /// Leaves it resolves that exist.
        removed: Vec<Revision>,
        /// Leaves left after.
        leaves_left: i64,
    },
    /// The op is kept as a leaf of the record.
    Leaf {
        op: &'a SyncOp,
        seq: i64,
        provisional: bool,
        /// Earlier leaves of the same device and origin that it replaces
        /// (the device made it seeing them: its own later state).
        replaces: Vec<Revision>,
    },
}

impl Write<'_> {
    pub(super) fn op(&self) -> &SyncOp {
        match self {
            Write::Head { op, .. } | Write::Leaf { op, .. } => op,
        }
    }

    pub(super) fn seq(&self) -> i64 {
        match self {
            Write::Head { seq, .. } | Write::Leaf { seq, .. } => *seq,
        }
    }
}

/// What a push does.
#[derive(Debug)]
pub(super) struct Plan<'a> {
    /// The answer, as JSON text.
    pub answer: String,
    /// The writes, in sequence order.
    pub writes: Vec<Write<'a>>,
    /// The counter after.
    pub last_seq: i64,
}

impl NewPush {
    /// The checked operations.
    pub(super) fn checked(&self) -> impl Iterator<Item = &SyncOp> {
        self.ops.iter().filter_map(|(_, o)| o.as_ref().ok())
    }

    /// The distinct (collection, id) of the checked operations.
    pub(super) fn keys(&self) -> Vec<(String, String)> {
        let mut seen = HashSet::new();
        self.checked()
            .map(|o| (o.collection.clone(), o.id.clone()))
            .filter(|k| seen.insert(k.clone()))
            .collect()
    }

    /// The revisions of the checked operations, as text.
    pub(super) fn revisions(&self) -> Vec<String> {
        self.checked().map(|o| o.revision.to_string()).collect()
    }

    /// The distinct SHA-256 of the files the checked operations reference.
    pub(super) fn files(&self) -> Vec<String> {
        let set: HashSet<&str> = self
            .checked()
            .flat_map(|o| o.files.iter().map(|(sha, _)| sha.as_str()))
            .collect();
        set.into_iter().map(str::to_owned).collect()
    }

    /// The distinct authors of the checked operations.
    pub(super) fn authors(&self) -> Vec<String> {
        let set: HashSet<&str> = self.checked().map(|o| o.author.as_str()).collect();
        set.into_iter().map(str::to_owned).collect()
    }
}

/// Decides every operation of `push` against `state` (loaded in the
/// transaction that holds the counter, which stood at `last_seq`): one
/// result per operation, in order, and the writes.
pub(super) fn plan<'a>(push: &'a NewPush, state: &PushState, mut last_seq: i64) -> Plan<'a> {
    let mut results = Vec::with_capacity(push.ops.len());
    let mut writes = Vec::new();
    let mut records = HashSet::new();
    let mut revisions: HashMap<String, &str> = HashMap::new();
    let rejected = |code, message: &str| Outcome::Rejected {
        code,
        message: message.to_owned(),
    };
    for (revision, entry) in &push.ops {
        let op = match entry {
            Ok(op) => op,
            Err(why) => {
                results.push((*revision, rejected(why.code, why.message)));
                continue;
            }
        };
        let outcome = (|| {
            if !records.insert((op.collection.as_str(), op.id.as_str())) {
                return rejected(
                    RejectCode::DuplicateRecord,
                    "two operations of the batch name the same record",
                );
            }
            let name = op.revision.to_string();
            let earlier = state
                .revisions
                .get(&name)
                .map(String::as_str)
                .or_else(|| revisions.get(&name).copied());
            if let Some(digest) = earlier {
                return if digest == op.digest {
                    Outcome::Duplicate
                } else {
                    rejected(
                        RejectCode::RevisionReused,
                        "this revision was pushed before with other content",
                    )
                };
            }
            // A record reaches the server only after its files: the device
            // keeps the change and pushes it again once they are uploaded.
            let stored = |(sha, size): &(String, u64)| {
                state.blobs.get(sha).copied() == i64::try_from(*size).ok()
            };
            if !op.files.iter().all(stored) {
                return rejected(
                    RejectCode::MissingFile,
                    "a file the record references has not reached the server: upload it first",
                );
            }
            let head = state.heads.get(&(op.collection.clone(), op.id.clone()));
            let provisional = !state.verified.contains(&op.author);
            let applies = match head {
                None => true,
                // An author not yet bound does not replace a published head
                // (it would hide the record from every other device): the
                // change waits as a provisional leaf, served to its device.
                Some(h) if provisional && !h.provisional => false,
                Some(h) => {
                    Some(h.revision) == op.base
                        // The same device's later state, made on the same
                        // base as its own head (it did not hear the answer).
                        || (h.revision.origin() == op.revision.origin()
                            && h.device_id == Some(push.device_id)
                            && h.revision.seq() < op.revision.seq()
                            && h.base == op.base)
                        || (h.deleted && op.deleted)
                }
            };
            // A device's later state replaces its own earlier leaf.
            let replaces: Vec<Revision> = head
                .map(|h| {
                    h.leaves
                        .iter()
                        .filter(|l| {
                            l.origin() == op.revision.origin()
                                && l.seq() < op.revision.seq()
                                && state.leaf_devices.get(&l.to_string()) == Some(&push.device_id)
                        })
                        .copied()
                        .collect()
                })
                .unwrap_or_default();
            // A record's leaves travel with it in every pull page: past
            // MAX_LEAVES, a page could outgrow what a device reads. The
            // device keeps the change and says so; resolving makes room.
            if !applies && head.is_some_and(|h| h.leaves.len() - replaces.len() >= MAX_LEAVES) {
                return rejected(
                    RejectCode::TooManyLeaves,
                    "the record has too many unresolved conflicts: resolve them first",
                );
            }
            revisions.insert(name, &op.digest);
            last_seq += 1;
            let seq = last_seq;
            let seq_u = u64::try_from(seq).unwrap_or(0);
            if applies {
                let existing = head.map(|h| h.leaves.as_slice()).unwrap_or_default();
                let removed: Vec<Revision> = existing
                    .iter()
                    .filter(|l| op.resolves.contains(l))
                    .copied()
                    .collect();
                let leaves_left = i64::try_from(existing.len() - removed.len()).unwrap_or(i64::MAX);
                writes.push(Write::Head {
                    op,
                    seq,
                    provisional,
                    removed,
                    leaves_left,
                });
                Outcome::Applied { seq: seq_u }
            } else {
                writes.push(Write::Leaf {
                    op,
                    seq,
                    provisional,
                    replaces,
                });
                Outcome::Conflict {
                    seq: seq_u,
                    head: head.map(|h| h.revision),
                }
            }
        })();
        results.push((op.revision, outcome));
    }
    let answer = PushAnswer {
        batch_id: push.batch_id.clone(),
        results: results
            .into_iter()
            .map(|(revision, outcome)| OpResult { revision, outcome })
            .collect(),
    };
    Plan {
        // A PushAnswer is plain data: encoding it cannot fail.
        answer: serde_json::to_string(&answer).unwrap_or_default(),
        writes,
        last_seq,
    }
}

impl Store {
    /// An organization's sealed data key.
    pub async fn org_data_key(&self, org_id: i64) -> Result<Option<String>, StoreError> {
        dispatch!(self, s => s.org_data_key(org_id).await)
    }

    /// Stores an organization's first data key; a key already there
    /// (another process was first) is kept: read it back.
    pub async fn add_org_data_key(&self, org_id: i64, sealed: &str) -> Result<(), StoreError> {
        dispatch!(self, s => s.add_org_data_key(org_id, sealed).await)
    }

    /// Records that `device_id`'s escrow key was released to `user_id`:
    /// that user's name, as a local author of the device, is verified.
    pub async fn record_escrow_release(
        &self,
        device_id: i64,
        user_id: i64,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.record_escrow_release(device_id, user_id).await)
    }

    /// Stores a push in one transaction: each operation applied, kept as a
    /// conflict leaf, recognised as a duplicate or rejected, and the answer
    /// kept for a retry of the batch.
    pub async fn sync_push(&self, push: NewPush) -> Result<PushStored, StoreError> {
        dispatch!(self, s => s.sync_push(push).await)
    }

    /// The records of `app` after the sequence `after` (from the start
    /// with `None`), not provisional, by sequence: at most `limit`, and
    /// stopping once their sealed bodies pass `max_bytes` (at least one).
    /// One snapshot.
    pub async fn sync_pull(
        &self,
        org_id: i64,
        app: &str,
        after: Option<(i64, i64)>,
        limit: i64,
        max_bytes: usize,
        device_id: i64,
    ) -> Result<PullPage, StoreError> {
        let app = app.to_owned();
        dispatch!(self, s => s.sync_pull(org_id, app, after, limit, max_bytes, device_id).await)
    }

    /// Records of an organization, by app, collection and id.
    pub async fn sync_records(
        &self,
        org_id: i64,
        filter: RecordFilter,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        dispatch!(self, s => s.sync_records(org_id, filter).await)
    }

    /// One record (sealed body included) and its leaves.
    pub async fn sync_record(
        &self,
        org_id: i64,
        app: &str,
        collection: &str,
        id: &str,
    ) -> Result<Option<(StoredRecord, Vec<StoredLeaf>)>, StoreError> {
        let (app, collection, id) = (app.to_owned(), collection.to_owned(), id.to_owned());
        dispatch!(self, s => s.sync_record(org_id, app, collection, id).await)
    }

    /// Other records of the collection whose body MAC is `body_mac`.
    pub async fn sync_duplicates(
        &self,
        org_id: i64,
        app: &str,
        collection: &str,
        id: &str,
        body_mac: &str,
    ) -> Result<Vec<LikelyDuplicate>, StoreError> {
        let (app, collection, id, mac) = (
            app.to_owned(),
            collection.to_owned(),
            id.to_owned(),
            body_mac.to_owned(),
        );
        dispatch!(self, s => s.sync_duplicates(org_id, app, collection, id, mac).await)
    }

    /// Ends a record's conflict: a new head made by the server (origin
    /// [`coffer_protocol::sync::SERVER_ORIGIN`], its local sequence the
    /// change sequence it gets) that resolves every leaf.
    pub async fn sync_resolve(
        &self,
        org_id: i64,
        app: &str,
        collection: &str,
        id: &str,
        resolution: Resolution,
    ) -> Result<ResolveStored, StoreError> {
        let (app, collection, id) = (app.to_owned(), collection.to_owned(), id.to_owned());
        dispatch!(self, s => s.sync_resolve(org_id, app, collection, id, resolution).await)
    }

    /// The local authors of the organization's devices whose records are
    /// provisional.
    pub async fn sync_authors(&self, org_id: i64) -> Result<Vec<ProvisionalAuthor>, StoreError> {
        dispatch!(self, s => s.sync_authors(org_id).await)
    }

    /// Binds the local author `author` of `device_id` to `user_id` and
    /// publishes their provisional records and leaves (each record gets a
    /// new sequence), in one transaction.
    pub async fn sync_bind(
        &self,
        org_id: i64,
        device_id: i64,
        author: &str,
        user_id: i64,
    ) -> Result<BindStored, StoreError> {
        let author = author.to_owned();
        dispatch!(self, s => s.sync_bind(org_id, device_id, author, user_id).await)
    }

    /// Compaction: for each organization, with a retention of the larger
    /// of `retention_secs` and its policy's offline wipe delay plus seven
    /// days, drops tombstones without leaves, change-log rows and batch
    /// answers older than that, and raises each app's expiry floor to the
    /// highest sequence dropped.
    pub async fn compact_sync(
        &self,
        now_unix: i64,
        retention_secs: i64,
    ) -> Result<Compacted, StoreError> {
        let mut total = Compacted::default();
        let orgs = dispatch!(self, s => s.sync_orgs().await)?;
        for org_id in orgs {
            let retention = self.sync_retention_of(org_id, retention_secs).await?;
            let cutoff = now_unix.saturating_sub(retention);
            let done = dispatch!(self, s => s.compact_sync_org(org_id, cutoff).await)?;
            total.tombstones += done.tombstones;
            total.changes += done.changes;
            total.batches += done.batches;
        }
        Ok(total)
    }
}

impl Store {
    /// The retention of `org_id`'s sync history and unreferenced files:
    /// the larger of `retention_secs` and its policy's offline wipe delay
    /// plus seven days (a device offline that long still finds what it
    /// references).
    pub(crate) async fn sync_retention_of(
        &self,
        org_id: i64,
        retention_secs: i64,
    ) -> Result<i64, StoreError> {
        let wipe_days = match self.latest_policy(org_id).await? {
            Some(p) => serde_json::from_str::<coffer_protocol::policy::Document>(&p.document)
                .map(|d| i64::from(d.rules.offline.wipe_after_days))
                .unwrap_or(0),
            None => 0,
        };
        Ok(retention_secs.max(wipe_days * 86_400 + 7 * 86_400))
    }
}

/// The new head's revision of a resolution at sequence `seq`.
pub(super) fn server_revision(seq: i64) -> Result<Revision, StoreError> {
    Revision::new(
        coffer_protocol::sync::SERVER_ORIGIN,
        u64::try_from(seq).unwrap_or(0),
    )
    .map_err(|e| super::db_error("resolving")(&e))
}

/// A stored revision's text, parsed (stored by the server: it parses).
pub(super) fn revision(text: &str) -> Result<Revision, StoreError> {
    text.parse()
        .map_err(|e: coffer_protocol::sync::BadRevision| super::db_error("reading a revision")(&e))
}

/// The encoded cursor of an admin listing: the last (app, collection, id).
pub fn encode_after(app: &str, collection: &str, id: &str) -> String {
    hex::encode(serde_json::to_vec(&[app, collection, id]).unwrap_or_default())
}

/// The (app, collection, id) of an admin listing's cursor.
pub fn decode_after(text: &str) -> Option<(String, String, String)> {
    let bytes = hex::decode(text).ok()?;
    let [a, c, i]: [String; 3] = serde_json::from_slice(&bytes).ok()?;
    Some((a, c, i))
}

/// Where a page ends: the last sequence in it (none: empty), and whether
/// more follow. `sizes` holds up to `limit + 1` (sequence, sealed bytes).
pub(super) fn page_cut(sizes: &[(i64, i64)], limit: i64, max_bytes: usize) -> (Option<i64>, bool) {
    let limit = usize::try_from(limit).unwrap_or(0);
    let mut bytes = 0usize;
    let mut taken = 0usize;
    for (_, size) in sizes.iter().take(limit) {
        if taken > 0 && bytes >= max_bytes {
            break;
        }
        bytes = bytes.saturating_add(usize::try_from(*size).unwrap_or(0));
        taken += 1;
    }
    let last = taken.checked_sub(1).map(|i| sizes[i].0);
    (last, sizes.len() > taken)
}
