//! Storage for the device-facing control: the master key check, sealed
//! values, signing keys, policies, escrow, wipe orders, check-in and
//! device data. Sealing and unsealing happen above this layer: the store
//! only ever sees sealed text.

use super::{Store, StoreError};

/// Which table a sealed value lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedKind {
    /// `org_signing_keys.sealed_seed`, by organization id.
    OrgSigningKey,
    /// `escrow_keys.sealed_key`, by device id.
    Escrow,
    /// `org_data_keys.sealed_key`, by organization id: the key record
    /// bodies are sealed under ([`crate::record_seal`]).
    OrgDataKey,
}

impl SealedKind {
    /// The sealing context of the row `id`: binds a sealed value to its row.
    pub fn context(self, id: i64) -> String {
        match self {
            SealedKind::OrgSigningKey => format!("org-signing-key:{id}"),
            SealedKind::Escrow => format!("escrow:{id}"),
            SealedKind::OrgDataKey => format!("org-data-key:{id}"),
        }
    }
}

/// One sealed value and its row.
#[derive(Debug, Clone)]
pub struct SealedValue {
    /// Its table.
    pub kind: SealedKind,
    /// Its row (organization or device id).
    pub id: i64,
    /// The sealed text.
    pub sealed: String,
}

/// A new MAC for an audit row.
#[derive(Debug, Clone)]
pub struct AuditMac {
    /// The row.
    pub id: i64,
    /// Its MAC as read (none on rows older than MACs).
    pub old: Option<String>,
    /// Its MAC under the current key.
    pub new: String,
}

/// An organization's signing key as stored.
#[derive(Debug, Clone)]
pub struct SigningKeyRecord {
    /// Ed25519 public key, hex.
    pub public_key: String,
    /// The seed, sealed under the master key.
    pub sealed_seed: String,
}

/// A published policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRecord {
    /// Its version.
    pub version: i64,
    /// The signed canonical document.
    pub document: String,
    /// Ed25519 signature of `document`, hex.
    pub signature: String,
    /// Unix seconds.
    pub published_at: i64,
}

/// A policy to publish.
#[derive(Debug, Clone)]
pub struct NewPolicy {
    /// The organization.
    pub org_id: i64,
    /// Must be above every published version.
    pub version: i64,
    /// The signed canonical document.
    pub document: String,
    /// Its signature, hex.
    pub signature: String,
    /// The publishing user.
    pub published_by: i64,
}

/// A remote wipe order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WipeOrder {
    /// Its id.
    pub id: i64,
    /// The device.
    pub device_id: i64,
    /// `None`: the whole device; else the one user whose slot goes.
    pub user: Option<String>,
    /// Who ordered it (user id).
    pub ordered_by: i64,
    /// When, Unix seconds.
    pub ordered_at: i64,
    /// When the device reported it done.
    pub acknowledged_at: Option<i64>,
    /// When an admin cancelled it.
    pub cancelled_at: Option<i64>,
}

impl WipeOrder {
    /// Neither acknowledged nor cancelled.
    pub fn is_pending(&self) -> bool {
        self.acknowledged_at.is_none() && self.cancelled_at.is_none()
    }
}

/// The end of a wipe order: cancelled by an admin or acknowledged by the
/// device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WipeEnd {
    /// An admin calls it off.
    Cancel,
    /// The device reports it carried out.
    Acknowledge,
}

/// What ending a wipe order found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WipeEnded {
    /// Done now, or already done the same way (a retry).
    Ended,
    /// No such order on that device.
    NotFound,
    /// It had already ended the other way.
    AlreadyAcknowledged,
    /// It had already been cancelled.
    AlreadyCancelled,
}

/// What ending `order` the `end` way comes to: a pending order ends; a
/// retry of the same end is answered as done again; the other end is
/// refused.
pub(crate) fn ending(order: &WipeOrder, end: WipeEnd) -> WipeEnded {
    match (order.acknowledged_at, order.cancelled_at, end) {
        (None, None, _) => WipeEnded::Ended,
        (Some(_), _, WipeEnd::Acknowledge) | (None, Some(_), WipeEnd::Cancel) => WipeEnded::Ended,
        (Some(_), _, WipeEnd::Cancel) => WipeEnded::AlreadyAcknowledged,
        (None, Some(_), WipeEnd::Acknowledge) => WipeEnded::AlreadyCancelled,
    }
}

/// What a check-in tells the device.
#[derive(Debug, Clone)]
pub struct CheckIn {
    /// Pending wipe orders, oldest first.
    pub wipe_orders: Vec<WipeOrder>,
    /// The latest policy version, if any.
    pub policy_version: Option<i64>,
    /// Whether the server holds this device's escrow key.
    pub escrow_present: bool,
}

/// A device's activity, for the device list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceActivity {
    /// The device.
    pub device_id: i64,
    /// Last check-in, Unix seconds.
    pub last_seen_at: Option<i64>,
    /// Its peer address then.
    pub last_seen_address: Option<String>,
    /// Whether its escrow key is held.
    pub escrow: bool,
    /// Wipe orders not yet acknowledged or cancelled.
    pub pending_wipes: i64,
}

/// What storing a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchStored {
    /// Stored: this many readings.
    Stored(i64),
    /// The same batch was stored before (a retry): nothing stored now.
    Duplicate,
    /// Another batch was stored under this id.
    Conflict,
}

/// A batch to store.
#[derive(Debug, Clone)]
pub struct NewBatch {
    /// Its organization.
    pub org_id: i64,
    /// Its device.
    pub device_id: i64,
    /// The device's batch id.
    pub batch_id: String,
    /// Digest of its readings ([`crate::data::Batch::digest`]).
    pub digest: String,
    /// Body bytes, for accounting.
    pub bytes: i64,
    /// `(at, name, value as JSON text)` per reading.
    pub readings: Vec<(i64, String, String)>,
}

/// A query over stored readings.
#[derive(Debug, Clone, Default)]
pub struct ReadingQuery {
    /// Only this device.
    pub device_id: Option<i64>,
    /// Only readings taken at or after (Unix seconds).
    pub from: Option<i64>,
    /// Only readings taken before.
    pub to: Option<i64>,
    /// Only this name.
    pub name: Option<String>,
    /// Only rows after this id (paging).
    pub after: i64,
    /// At most this many rows.
    pub limit: i64,
    /// The newest rows first (by id) instead of the oldest.
    pub newest: bool,
}

impl ReadingQuery {
    /// The SQL order of the rows.
    pub(in crate::store) fn order(&self) -> &'static str {
        if self.newest {
            "id DESC"
        } else {
            "id"
        }
    }
}

impl Store {
    /// The value proving which master key the database is under.
    pub async fn master_key_check(&self) -> Result<Option<String>, StoreError> {
        dispatch!(self, s => s.master_key_check().await)
    }

    /// Every sealed value in the database.
    pub async fn sealed_values(&self) -> Result<Vec<SealedValue>, StoreError> {
        dispatch!(self, s => s.sealed_values().await)
    }

    /// Replaces sealed values, audit MACs and the master key check in one
    /// transaction (a master key rotation, or the first MACs of an older
    /// trail). Each value and MAC is replaced only if it still holds what
    /// was read, so one changed meanwhile is left alone. The check is
    /// compared and swapped: written only if it is still `old_check` (or,
    /// with `None`, if there is none yet); returns false, changing nothing,
    /// if another process changed it first.
    pub async fn reseal(
        &self,
        values: Vec<(SealedValue, String)>,
        audit_macs: Vec<AuditMac>,
        old_check: Option<&str>,
        new_check: &str,
    ) -> Result<bool, StoreError> {
        let old_check = old_check.map(str::to_owned);
        dispatch!(self, s => s.reseal(values, audit_macs, old_check, new_check).await)
    }

    /// How many audit rows carry a MAC that does not start with `prefix`
    /// (`<key id>:`): rows MACed under another master key.
    pub async fn foreign_audit_macs(&self, prefix: &str) -> Result<i64, StoreError> {
        dispatch!(self, s => s.foreign_audit_macs(prefix).await)
    }

    /// The device whose release token hashes to `token_hash`.
    pub async fn device_by_release_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<super::DeviceRecord>, StoreError> {
        dispatch!(self, s => s.device_by_release_token(token_hash).await)
    }

    /// The organization an unspent enrollment code belongs to, if any.
    pub async fn enrollment_code_org(&self, code_hash: &str) -> Result<Option<i64>, StoreError> {
        dispatch!(self, s => s.enrollment_code_org(code_hash).await)
    }

    /// An organization's signing key.
    pub async fn org_signing_key(
        &self,
        org_id: i64,
    ) -> Result<Option<SigningKeyRecord>, StoreError> {
        dispatch!(self, s => s.org_signing_key(org_id).await)
    }

    /// Stores an organization's first signing key; a key already there
    /// (another process was first) is kept.
    pub async fn add_org_signing_key(
        &self,
        org_id: i64,
        key: &SigningKeyRecord,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.add_org_signing_key(org_id, key).await)
    }

    /// The latest policy of an organization.
    pub async fn latest_policy(&self, org_id: i64) -> Result<Option<PolicyRecord>, StoreError> {
        dispatch!(self, s => s.latest_policy(org_id).await)
    }

    /// The `limit` latest published policies of an organization, newest
    /// first, with the name of who published each.
    pub async fn policy_history(
        &self,
        org_id: i64,
        limit: i64,
    ) -> Result<Vec<(PolicyRecord, String)>, StoreError> {
        dispatch!(self, s => s.policy_history(org_id, limit).await)
    }

    /// Publishes a policy; [`StoreError::VersionNotNewer`] unless its
    /// version is above every published one (atomic across processes).
    pub async fn publish_policy(&self, policy: &NewPolicy) -> Result<(), StoreError> {
        dispatch!(self, s => s.publish_policy(policy).await)
    }

    /// Stores (or replaces) a device's sealed escrow key;
    /// [`StoreError::WipePending`] while a whole-device wipe is pending,
    /// [`StoreError::DeviceRevoked`] once the device is revoked (checked in
    /// the same transaction, so a revocation cannot be overtaken).
    pub async fn deposit_escrow(&self, device_id: i64, sealed: &str) -> Result<(), StoreError> {
        dispatch!(self, s => s.deposit_escrow(device_id, sealed).await)
    }

    /// A device's sealed escrow key.
    pub async fn escrow(&self, device_id: i64) -> Result<Option<String>, StoreError> {
        dispatch!(self, s => s.escrow(device_id).await)
    }

    /// Orders a wipe of a device of `org_id` (of one user's slot if `user`
    /// is given). A whole-device order deletes the escrow key in the same
    /// transaction. `None` if the organization has no such device.
    pub async fn order_wipe(
        &self,
        org_id: i64,
        device_id: i64,
        user: Option<&str>,
        ordered_by: i64,
    ) -> Result<Option<i64>, StoreError> {
        let user = user.map(str::to_owned);
        dispatch!(self, s => s.order_wipe(org_id, device_id, user, ordered_by).await)
    }

    /// The wipe orders of a device of `org_id`, oldest first; `None` if the
    /// organization has no such device.
    pub async fn wipe_orders(
        &self,
        org_id: i64,
        device_id: i64,
    ) -> Result<Option<Vec<WipeOrder>>, StoreError> {
        dispatch!(self, s => s.wipe_orders(org_id, device_id).await)
    }

    /// Ends a wipe order of `device_id`: cancelled or acknowledged.
    pub async fn end_wipe(
        &self,
        device_id: i64,
        order_id: i64,
        end: WipeEnd,
    ) -> Result<WipeEnded, StoreError> {
        dispatch!(self, s => s.end_wipe(device_id, order_id, end).await)
    }

    /// A device checks in: records when and from where, and returns what
    /// it must know.
    pub async fn check_in(&self, device_id: i64, address: &str) -> Result<CheckIn, StoreError> {
        let address = address.to_owned();
        dispatch!(self, s => s.check_in(device_id, address).await)
    }

    /// The activity of an organization's devices with ids above `after`,
    /// by id, at most `limit` (the same page as [`Store::devices`]).
    pub async fn device_activity(
        &self,
        org_id: i64,
        after: i64,
        limit: i64,
    ) -> Result<Vec<DeviceActivity>, StoreError> {
        dispatch!(self, s => s.device_activity(org_id, after, limit).await)
    }

    /// Stores a batch once: a retry (same id, same digest) stores nothing.
    pub async fn store_batch(&self, batch: NewBatch) -> Result<BatchStored, StoreError> {
        dispatch!(self, s => s.store_batch(batch).await)
    }

    /// Readings of an organization, by id.
    pub async fn readings(
        &self,
        org_id: i64,
        query: ReadingQuery,
    ) -> Result<Vec<crate::data::StoredReading>, StoreError> {
        dispatch!(self, s => s.readings(org_id, query).await)
    }
}
