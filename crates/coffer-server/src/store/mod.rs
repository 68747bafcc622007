//! The server's storage: one repository type over two backends.
//!
//! The backend is chosen by the database URL: `postgres://…` (or
//! `postgresql://…`) for PostgreSQL, anything else a SQLite file
//! (`sqlite://PATH`, or just a path). Both apply the same schema from their
//! own migrations (`migrations/sqlite`, `migrations/postgres`), and the rest
//! of the server sees only [`Store`]. Nothing another server process needs
//! lives only in one process's memory: every state is in the database.

/// Runs the same call on whichever backend is in use.
macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Sqlite($s) => $call,
            Store::Postgres($s) => $call,
        }
    };
}

mod control;
mod files;
mod mqtt;
mod postgres;
mod sqlite;
mod sync;
mod tenants;

pub(crate) use sync::same_set as same_leaves;

pub use control::{
    AuditMac, BatchStored, CheckIn, DeviceActivity, NewBatch, NewPolicy, PolicyRecord,
    ReadingQuery, SealedKind, SealedValue, SigningKeyRecord, WipeEnd, WipeEnded, WipeOrder,
};

pub use sync::{
    decode_after, encode_after, BindStored, Compacted, NewPush, PullPage, PushStored, RecordFilter,
    Resolution, ResolveStored, StoredLeaf, StoredRecord, SyncOp,
};

pub use files::{
    Claim, Completed, Declared, FilesCollected, NewUpload, StoredBlob, StoredUpload, UploadState,
    GONE_KEPT_SECS,
};

pub use mqtt::{BrokerState, OutOfStep};
pub use tenants::{MemberRole, OperatorChange, OperatorRecord, OrganizationRecord};

use std::time::{SystemTime, UNIX_EPOCH};

/// A storage failure. Never carries the database URL (it may hold a
/// password) nor a row's content.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database URL is not one this server understands.
    #[error("invalid database URL: {0}")]
    InvalidUrl(&'static str),
    /// The database failed or refused an operation.
    #[error("database error while {op}: {message}")]
    Database {
        /// What the server was doing.
        op: &'static str,
        /// The driver's message.
        message: String,
    },
    /// The setup token is unknown, used, or replaced by a newer one.
    #[error("invalid setup token")]
    InvalidSetupToken,
    /// The server already has its first organization.
    #[error("the server is already set up")]
    AlreadyBootstrapped,
    /// The enrollment code is unknown, used or expired.
    #[error("invalid enrollment code")]
    InvalidCode,
    /// A name is taken.
    #[error("{0} already exists")]
    Exists(&'static str),
    /// A policy version is not above the latest published one.
    #[error("policy version {current} is already published: publish a higher one")]
    VersionNotNewer {
        /// The latest published version.
        current: i64,
    },
    /// A policy version too far above the latest published one
    /// ([`coffer_protocol::policy::MAX_POLICY_VERSION_STEP`]).
    #[error("policy version too far above the latest published one ({latest})")]
    VersionTooFar {
        /// The latest published version (0 for none).
        latest: i64,
    },
    /// The organization is not suspended (deletion needs it).
    #[error("the organization is not suspended")]
    NotSuspended,
    /// A whole-device wipe is pending: the device must carry it out first.
    #[error("a wipe of this device is pending")]
    WipePending,
    /// The device has been revoked.
    #[error("the device has been revoked")]
    DeviceRevoked,
}

pub(crate) fn db_error(op: &'static str) -> impl Fn(&dyn std::fmt::Display) -> StoreError {
    move |e| StoreError::Database {
        op,
        message: e.to_string(),
    }
}

/// What bootstrapping created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bootstrapped {
    /// The first organization.
    pub organization_id: i64,
    /// Its owner.
    pub user_id: i64,
}

/// A new organization and its first owner, a new user (at setup, or made
/// by an operator).
#[derive(Debug, Clone)]
pub struct NewOwner {
    /// Name of the organization.
    pub organization: String,
    /// The owner's user name.
    pub owner: String,
    /// The owner's password hash (Argon2id, PHC string): never the password.
    pub password_hash: String,
}

/// The server's storage.
#[derive(Clone)]
pub enum Store {
    /// An embedded SQLite file.
    Sqlite(sqlite::SqliteStore),
    /// A PostgreSQL server.
    Postgres(postgres::PostgresStore),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: show the backend only.
        write!(f, "Store({})", self.backend())
    }
}

pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Store {
    /// Connects to the database `url` names and brings its schema up to
    /// date (several server processes may do this at once).
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let store = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Store::Postgres(postgres::PostgresStore::connect(url).await?)
        } else {
            let path = url.strip_prefix("sqlite://").unwrap_or(url);
            if path.is_empty() {
                return Err(StoreError::InvalidUrl("no SQLite file path"));
            }
            Store::Sqlite(sqlite::SqliteStore::open(path.into()).await?)
        };
        store.migrate().await?;
        Ok(store)
    }

    /// "sqlite" or "postgres".
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.migrate().await,
            Store::Postgres(s) => s.migrate().await,
        }
    }

    /// The schema version in place.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(s) => s.schema_version().await,
            Store::Postgres(s) => s.schema_version().await,
        }
    }

    /// A trivial round trip: the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.schema_version().await.map(|_| ())
    }

    /// Whether the first organization exists.
    pub async fn is_bootstrapped(&self) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.is_bootstrapped().await,
            Store::Postgres(s) => s.is_bootstrapped().await,
        }
    }

    /// On a server not yet set up, replaces any pending setup token with
    /// the one whose SHA-256 hash is `token_hash`; returns false (and stores
    /// nothing) once the server is set up.
    pub async fn replace_setup_token(&self, token_hash: &str) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.replace_setup_token(token_hash).await,
            Store::Postgres(s) => s.replace_setup_token(token_hash).await,
        }
    }

    /// Whether `token_hash` is the hash of the pending setup token (a read
    /// only: [`Store::bootstrap`] spends it).
    pub async fn setup_token_pending(&self, token_hash: &str) -> Result<bool, StoreError> {
        dispatch!(self, s => s.setup_token_pending(token_hash).await)
    }

    /// Spends the setup token and creates the first organization and its
    /// owner, all in one transaction.
    pub async fn bootstrap(
        &self,
        token_hash: &str,
        owner: &NewOwner,
    ) -> Result<Bootstrapped, StoreError> {
        match self {
            Store::Sqlite(s) => s.bootstrap(token_hash, owner).await,
            Store::Postgres(s) => s.bootstrap(token_hash, owner).await,
        }
    }
}

/// The columns of a [`DeviceRecord`], in its fields' order, from `devices d`
/// (the same text for both backends).
pub(crate) const DEVICE_COLUMNS: &str = "d.id, d.org_id, d.name, d.revoked_at IS NOT NULL, \
     EXISTS (SELECT 1 FROM organizations o WHERE o.id = d.org_id AND o.suspended_at IS NOT NULL)";

/// A device, as the server knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The device.
    pub id: i64,
    /// Its organization.
    pub org_id: i64,
    /// The name it enrolled with.
    pub name: String,
    /// Revoked: its token is refused.
    pub revoked: bool,
    /// Its organization is suspended: refused like a revoked one, for now.
    pub suspended: bool,
}

/// What an enrollment created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enrolled {
    /// The new device.
    pub device_id: i64,
    /// Its organization (the code's).
    pub org_id: i64,
}

/// One request, as accounting records it.
#[derive(Debug, Clone, Default)]
pub struct UsageRecord {
    /// Unix seconds.
    pub at: i64,
    /// The organization concerned, if known.
    pub org_id: Option<i64>,
    /// The calling user, if a session.
    pub user_id: Option<i64>,
    /// The calling device, if a device token.
    pub device_id: Option<i64>,
    /// HTTP method.
    pub method: String,
    /// Route template (never the raw path).
    pub route: String,
    /// HTTP status.
    pub status: i32,
    /// Request body bytes.
    pub bytes_in: i64,
    /// Response body bytes.
    pub bytes_out: i64,
    /// Time to serve, in microseconds.
    pub micros: i64,
}

/// What a usage summary groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageKey {
    /// The whole organization (one row).
    Organization,
    /// Per user.
    User,
    /// Per device.
    Device,
    /// Per hour (UTC), keyed by the hour's first second.
    Hour,
    /// Per day (UTC), keyed by its first second.
    Day,
    /// Per seven days from the Unix epoch (a Thursday), keyed by the first
    /// second.
    Week,
}

impl UsageKey {
    /// The SQL expression rows are grouped by (the same on both backends:
    /// integer division of a 64-bit integer).
    fn column(self) -> &'static str {
        match self {
            UsageKey::Organization => "org_id",
            UsageKey::User => "user_id",
            UsageKey::Device => "device_id",
            UsageKey::Hour => "(at / 3600) * 3600",
            UsageKey::Day => "(at / 86400) * 86400",
            UsageKey::Week => "(at / 604800) * 604800",
        }
    }
}

/// One group of a usage summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    /// The organization, user or device id (none: requests without one).
    pub key: Option<i64>,
    /// Requests.
    pub requests: i64,
    /// Request bytes.
    pub bytes_in: i64,
    /// Response bytes.
    pub bytes_out: i64,
    /// Total serving time, microseconds.
    pub micros: i64,
}

/// What a login checks.
pub struct LoginRecord {
    /// The user.
    pub user_id: i64,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// A disabled user cannot log in.
    pub disabled: bool,
}

impl std::fmt::Debug for LoginRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRecord")
            .field("user_id", &self.user_id)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

/// A session as stored (found by its token's hash).
#[derive(Debug, Clone)]
pub struct SessionRecord {
    /// Whose session.
    pub user_id: i64,
    /// The user's name.
    pub user: String,
    /// Unix seconds after which it no longer counts.
    pub expires_at: i64,
    /// Logged out or revoked.
    pub revoked: bool,
    /// The user has been disabled since.
    pub disabled: bool,
}

/// A user's role in one organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The organization.
    pub organization_id: i64,
    /// Its name.
    pub organization: String,
    /// owner, admin, member or auditor.
    pub role: String,
}

/// The columns of an audit row, in the order both backends map them.
pub(crate) const AUDIT_COLUMNS: &str =
    "id, at, org_id, actor, action, details, prev_hash, hash, mac";

/// What an audit search keeps (every field optional but the limit).
#[derive(Debug, Clone, Default)]
pub struct AuditSearch {
    /// Only this action.
    pub action: Option<String>,
    /// Only this actor (`user:7`, `device:3`).
    pub actor: Option<String>,
    /// Only rows whose details hold this text.
    pub text: Option<String>,
    /// Only rows older than this id (a page's `next_before`).
    pub before: Option<i64>,
    /// At most this many.
    pub limit: i64,
}

impl AuditSearch {
    /// The text as a `LIKE` pattern, its `%`, `_` and `\` taken literally.
    pub(crate) fn like(&self) -> Option<String> {
        self.text.as_ref().map(|t| {
            let escaped = t
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("%{escaped}%")
        })
    }
}

/// One member of an organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The user.
    pub user_id: i64,
    /// Their name.
    pub name: String,
    /// owner, admin, member or auditor.
    pub role: String,
    /// Whether the account is disabled.
    pub disabled: bool,
    /// When the account was made, Unix seconds.
    pub created_at: i64,
}

impl Store {
    /// The password hash of the user `name`, for a login.
    pub async fn login_record(&self, name: &str) -> Result<Option<LoginRecord>, StoreError> {
        dispatch!(self, s => s.login_record(name).await)
    }

    /// Records a new session under its token's hash.
    pub async fn create_session(
        &self,
        token_hash: &str,
        user_id: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.create_session(token_hash, user_id, expires_at).await)
    }

    /// The session whose token hashes to `token_hash`, if any.
    pub async fn session(&self, token_hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        dispatch!(self, s => s.session(token_hash).await)
    }

    /// Revokes a session (logout): refused at once by every server process.
    pub async fn revoke_session(&self, token_hash: &str) -> Result<(), StoreError> {
        dispatch!(self, s => s.revoke_session(token_hash).await)
    }

    /// Counts one attempt under `key` in the window starting at
    /// `window_start`; returns the attempts in that window so far (this one
    /// included). Atomic across server processes.
    pub async fn hit(&self, key: &str, window_start: i64) -> Result<i64, StoreError> {
        dispatch!(self, s => s.hit(key, window_start).await)
    }

    /// Forgets the attempts under `key` (a successful login).
    pub async fn clear_hits(&self, key: &str) -> Result<(), StoreError> {
        dispatch!(self, s => s.clear_hits(key).await)
    }

    /// Stores a one-time enrollment code (by hash) for `org_id`.
    pub async fn add_enrollment_code(
        &self,
        code_hash: &str,
        org_id: i64,
        created_by: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.add_enrollment_code(code_hash, org_id, created_by, expires_at).await)
    }

    /// Spends an enrollment code (once, before it expires) and creates the
    /// device with the token whose hash is `token_hash` and the release
    /// token whose hash is `release_hash`.
    pub async fn enroll(
        &self,
        code_hash: &str,
        name: &str,
        token_hash: &str,
        release_hash: &str,
    ) -> Result<Enrolled, StoreError> {
        dispatch!(self, s => s.enroll(code_hash, name, token_hash, release_hash).await)
    }

    /// The device whose token hashes to `token_hash`.
    pub async fn device_by_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        dispatch!(self, s => s.device_by_token(token_hash).await)
    }

    /// Replaces a device's token; false if the old one no longer holds.
    pub async fn rotate_device_token(
        &self,
        device_id: i64,
        old_hash: &str,
        new_hash: &str,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.rotate_device_token(device_id, old_hash, new_hash).await)
    }

    /// The devices of an organization with ids above `after`, by id, at
    /// most `limit`.
    pub async fn devices(
        &self,
        org_id: i64,
        after: i64,
        limit: i64,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        dispatch!(self, s => s.devices(org_id, after, limit).await)
    }

    /// Revokes a device of `org_id` (again: a no-op) and deletes its escrow
    /// key; false if there is no such device there.
    pub async fn revoke_device(&self, org_id: i64, device_id: i64) -> Result<bool, StoreError> {
        dispatch!(self, s => s.revoke_device(org_id, device_id).await)
    }

    /// Creates the user `name` as a member of `org_id` with `role`.
    pub async fn add_member(
        &self,
        org_id: i64,
        name: &str,
        password_hash: &str,
        role: &str,
    ) -> Result<i64, StoreError> {
        dispatch!(self, s => s.add_member(org_id, name, password_hash, role).await)
    }

    /// The role of `user_id` in `org_id` and whether the organization is
    /// suspended, if a member.
    pub async fn member_role(
        &self,
        org_id: i64,
        user_id: i64,
    ) -> Result<Option<MemberRole>, StoreError> {
        dispatch!(self, s => s.member_role(org_id, user_id).await)
    }

    /// Changes a member's role.
    pub async fn set_role(&self, org_id: i64, user_id: i64, role: &str) -> Result<(), StoreError> {
        dispatch!(self, s => s.set_role(org_id, user_id, role).await)
    }

    /// Removes a member; a user left in no organization is disabled and
    /// their sessions revoked.
    pub async fn remove_member(&self, org_id: i64, user_id: i64) -> Result<(), StoreError> {
        dispatch!(self, s => s.remove_member(org_id, user_id).await)
    }

    /// Disables (ending their sessions) or enables a user account.
    pub async fn set_disabled(&self, user_id: i64, disabled: bool) -> Result<(), StoreError> {
        dispatch!(self, s => s.set_disabled(user_id, disabled).await)
    }

    /// Replaces a user's password hash and ends every session of theirs
    /// but `keep_session` (the hash of the one that changed it): whoever
    /// knew the old password is out.
    pub async fn set_password(
        &self,
        user_id: i64,
        password_hash: &str,
        keep_session: &str,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.set_password(user_id, password_hash, keep_session).await)
    }

    /// A user's password hash.
    pub async fn password_hash(&self, user_id: i64) -> Result<Option<String>, StoreError> {
        dispatch!(self, s => s.password_hash(user_id).await)
    }

    /// Records one request.
    pub async fn record_usage(&self, record: UsageRecord) -> Result<(), StoreError> {
        dispatch!(self, s => s.record_usage(record).await)
    }

    /// Usage of `org_id` in `[from, to)`, grouped by `by`.
    pub async fn usage(
        &self,
        org_id: i64,
        from: i64,
        to: i64,
        by: UsageKey,
    ) -> Result<Vec<UsageRow>, StoreError> {
        dispatch!(self, s => s.usage(org_id, from, to, by).await)
    }

    /// Appends an event to the audit trail, chained to the last one.
    /// The row's hash is MACed under the master key (`keys`).
    pub async fn append_audit(
        &self,
        event: crate::audit::AuditEvent,
        keys: std::sync::Arc<crate::keys::Keyring>,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.append_audit(event, keys).await)
    }

    /// Every row of the audit trail, in order.
    pub async fn audit_rows(&self) -> Result<Vec<crate::audit::AuditRow>, StoreError> {
        dispatch!(self, s => s.audit_rows().await)
    }

    /// One organization's audit rows that match `search`, newest first.
    pub async fn audit_search(
        &self,
        org_id: i64,
        search: &AuditSearch,
    ) -> Result<Vec<crate::audit::AuditRow>, StoreError> {
        dispatch!(self, s => s.audit_search(org_id, search).await)
    }

    /// Runs raw SQL against the database: for tests that play the attacker
    /// with write access to it. Not used by the server.
    #[cfg(feature = "test-support")]
    pub async fn execute_for_tests(&self, sql: &str) -> Result<(), StoreError> {
        dispatch!(self, s => s.execute_for_tests(sql).await)
    }

    /// The one integer a raw SQL query answers (a count, a sum): for tests
    /// that measure what a request left behind. Not used by the server.
    #[cfg(feature = "test-support")]
    pub async fn number_for_tests(&self, sql: &str) -> Result<i64, StoreError> {
        dispatch!(self, s => s.number_for_tests(sql).await)
    }

    /// The organizations a user belongs to, with their role.
    pub async fn memberships(&self, user_id: i64) -> Result<Vec<Membership>, StoreError> {
        dispatch!(self, s => s.memberships(user_id).await)
    }

    /// The members of an organization, by name.
    pub async fn members(&self, org_id: i64) -> Result<Vec<Member>, StoreError> {
        dispatch!(self, s => s.members(org_id).await)
    }
}

/// The migrations of one backend, in order: (version, SQL).
pub(crate) type Migrations = &'static [(i64, &'static str)];

#[cfg(test)]
mod tests {
    /// One schema: both backends apply the same versions, every migration
    /// file of each backend is applied, and none is left out.
    #[test]
    fn the_backends_migrate_in_step() {
        let versions = |m: super::Migrations| m.iter().map(|(v, _)| *v).collect::<Vec<_>>();
        assert_eq!(
            versions(super::sqlite::MIGRATIONS),
            versions(super::postgres::MIGRATIONS)
        );
        let expected: Vec<i64> = (1..=super::sqlite::MIGRATIONS.len() as i64).collect();
        assert_eq!(versions(super::sqlite::MIGRATIONS), expected);
        for backend in ["sqlite", "postgres"] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(backend);
            let files = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
            assert_eq!(
                files,
                expected.len(),
                "{backend}: a migration file is not applied"
            );
        }
    }
}
