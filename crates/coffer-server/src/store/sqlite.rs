//! The SQLite backend: one connection (WAL, a busy timeout) used through
//! `spawn_blocking`, the one place where blocking database work meets the
//! async server.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

mod control;
mod files;
mod mqtt;
mod sync;
mod tenants;

use crate::audit::{chain_hash, AuditEvent, AuditRow, GENESIS};

use super::{
    db_error, now_unix, AuditSearch, Bootstrapped, DeviceRecord, Enrolled, LoginRecord, Member,
    MemberRole, Membership, Migrations, NewOwner, SessionRecord, StoreError, UsageKey, UsageRecord,
    UsageRow, AUDIT_COLUMNS, DEVICE_COLUMNS,
};

pub(super) const MIGRATIONS: Migrations = &[
    (1, include_str!("../../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../../migrations/sqlite/0002_sessions.sql")),
    (
        3,
        include_str!("../../migrations/sqlite/0003_rate_limits.sql"),
    ),
    (4, include_str!("../../migrations/sqlite/0004_audit.sql")),
    (5, include_str!("../../migrations/sqlite/0005_devices.sql")),
    (6, include_str!("../../migrations/sqlite/0006_usage.sql")),
    (7, include_str!("../../migrations/sqlite/0007_control.sql")),
    (
        8,
        include_str!("../../migrations/sqlite/0008_audit_mac.sql"),
    ),
    (
        9,
        include_str!("../../migrations/sqlite/0009_release_tokens.sql"),
    ),
    (10, include_str!("../../migrations/sqlite/0010_tenants.sql")),
    (
        11,
        include_str!("../../migrations/sqlite/0011_id_floors.sql"),
    ),
    (12, include_str!("../../migrations/sqlite/0012_sync.sql")),
    (13, include_str!("../../migrations/sqlite/0013_files.sql")),
    (14, include_str!("../../migrations/sqlite/0014_mqtt.sql")),
    (
        15,
        include_str!("../../migrations/sqlite/0015_audit_search.sql"),
    ),
];

/// A row of [`DEVICE_COLUMNS`].
pub(super) fn device_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRecord> {
    Ok(DeviceRecord {
        id: r.get(0)?,
        org_id: r.get(1)?,
        name: r.get(2)?,
        revoked: r.get(3)?,
        suspended: r.get(4)?,
    })
}

#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    pub(super) async fn open(path: PathBuf) -> Result<Self, StoreError> {
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection, StoreError> {
            // A new database is made private before SQLite opens it: its
            // directory 0700, the file 0600 (SQLite gives the -wal and -shm
            // files the database's mode). Not an in-memory database or a
            // `file:` URI. The server refuses existing files that are not
            // private (serve.rs, `check_sqlite_permissions`).
            #[cfg(unix)]
            if !path.as_os_str().is_empty()
                && path.as_os_str() != ":memory:"
                && !path.to_string_lossy().starts_with("file:")
            {
                use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)
                        .map_err(|e| db_error("creating the database's directory")(&e))?;
                }
                match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(db_error("creating the database file")(&e)),
                }
            }
            let conn = Connection::open(&path).map_err(|e| db_error("opening")(&e))?;
            // secure_delete: what is deleted (an escrow key at a wipe order,
            // a revoked device's tokens, a deleted organization) is
            // overwritten with zeros in the file, not only unlinked.
            let configure = "PRAGMA busy_timeout = 5000;
                 PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 PRAGMA foreign_keys = ON;
                 PRAGMA secure_delete = ON;
                 PRAGMA cache_size = -65536;";
            // Switching a new database to WAL needs its exclusive lock. When
            // another connection (a second server starting on the same new
            // file) is between its read and its write, SQLite answers busy
            // at once, without waiting (waiting could deadlock): so wait
            // here, a little at a time, for up to five seconds.
            let mut waited = 0;
            loop {
                match conn.execute_batch(configure) {
                    Ok(()) => break,
                    Err(e)
                        if waited < 50
                            && matches!(
                                e.sqlite_error_code(),
                                Some(
                                    rusqlite::ErrorCode::DatabaseBusy
                                        | rusqlite::ErrorCode::DatabaseLocked
                                )
                            ) =>
                    {
                        waited += 1;
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                    Err(e) => return Err(db_error("configuring")(&e)),
                }
            }
            Ok(conn)
        })
        .await
        .map_err(|e| db_error("opening")(&e))??;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `work` on the connection in the blocking pool.
    async fn with<T: Send + 'static>(
        &self,
        op: &'static str,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            work(&mut conn)
        })
        .await
        .map_err(|e| db_error(op)(&e))?
    }

    pub(super) async fn migrate(&self) -> Result<(), StoreError> {
        self.with("migrating", |conn| {
            let e = db_error("migrating");
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|x| e(&x))?;
            tx.execute_batch(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                     version INTEGER PRIMARY KEY,
                     applied_at INTEGER NOT NULL
                 ) STRICT;",
            )
            .map_err(|x| e(&x))?;
            let current: i64 = tx
                .query_row(
                    "SELECT coalesce(max(version), 0) FROM schema_migrations",
                    [],
                    |r| r.get(0),
                )
                .map_err(|x| e(&x))?;
            for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
                tx.execute_batch(sql).map_err(|x| e(&x))?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                    params![version, now_unix()],
                )
                .map_err(|x| e(&x))?;
            }
            tx.commit().map_err(|x| e(&x))
        })
        .await
    }

    pub(super) async fn schema_version(&self) -> Result<i64, StoreError> {
        self.with("reading the schema version", |conn| {
            conn.query_row(
                "SELECT coalesce(max(version), 0) FROM schema_migrations",
                [],
                |r| r.get(0),
            )
            .map_err(|e| db_error("reading the schema version")(&e))
        })
        .await
    }

    pub(super) async fn is_bootstrapped(&self) -> Result<bool, StoreError> {
        self.with("counting organizations", |conn| {
            conn.query_row("SELECT EXISTS (SELECT 1 FROM organizations)", [], |r| {
                r.get(0)
            })
            .map_err(|e| db_error("counting organizations")(&e))
        })
        .await
    }

    pub(super) async fn replace_setup_token(&self, token_hash: &str) -> Result<bool, StoreError> {
        let token_hash = token_hash.to_owned();
        self.with("storing the setup token", move |conn| {
            let e = db_error("storing the setup token");
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|x| e(&x))?;
            let set_up: bool = tx
                .query_row("SELECT EXISTS (SELECT 1 FROM organizations)", [], |r| {
                    r.get(0)
                })
                .map_err(|x| e(&x))?;
            if set_up {
                return Ok(false);
            }
            tx.execute("DELETE FROM setup_tokens WHERE used_at IS NULL", [])
                .map_err(|x| e(&x))?;
            tx.execute(
                "INSERT INTO setup_tokens (token_hash, created_at) VALUES (?1, ?2)",
                params![token_hash, now_unix()],
            )
            .map_err(|x| e(&x))?;
            tx.commit().map_err(|x| e(&x))?;
            Ok(true)
        })
        .await
    }

    pub(super) async fn setup_token_pending(&self, token_hash: &str) -> Result<bool, StoreError> {
        let token_hash = token_hash.to_owned();
        self.with("reading the setup token", move |conn| {
            conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM setup_tokens WHERE token_hash = ?1 AND used_at IS NULL)",
                [token_hash],
                |r| r.get(0),
            )
            .map_err(|e| db_error("reading the setup token")(&e))
        })
        .await
    }

    pub(super) async fn bootstrap(
        &self,
        token_hash: &str,
        owner: &NewOwner,
    ) -> Result<Bootstrapped, StoreError> {
        let token_hash = token_hash.to_owned();
        let owner = owner.clone();
        self.with("setting up the server", move |conn| {
            let e = db_error("setting up the server");
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|x| e(&x))?;
            let set_up: bool = tx
                .query_row("SELECT EXISTS (SELECT 1 FROM organizations)", [], |r| r.get(0))
                .map_err(|x| e(&x))?;
            if set_up {
                return Err(StoreError::AlreadyBootstrapped);
            }
            let now = now_unix();
            let spent = tx
                .execute(
                    "UPDATE setup_tokens SET used_at = ?2 WHERE token_hash = ?1 AND used_at IS NULL",
                    params![token_hash, now],
                )
                .map_err(|x| e(&x))?;
            if spent != 1 {
                return Err(StoreError::InvalidSetupToken);
            }
            let created = tenants::insert_organization(&tx, &owner, now, "setting up the server")?;
            // The first owner is the instance's first operator.
            tx.execute(
                "INSERT INTO operators (user_id, created_at) VALUES (?1, ?2)",
                params![created.user_id, now],
            )
            .map_err(|x| e(&x))?;
            tx.commit().map_err(|x| e(&x))?;
            Ok(created)
        })
        .await
    }

    pub(super) async fn login_record(&self, name: &str) -> Result<Option<LoginRecord>, StoreError> {
        let name = name.to_owned();
        self.with("reading a user", move |conn| {
            conn.query_row(
                "SELECT id, password_hash, disabled FROM users WHERE name = ?1",
                [name],
                |r| {
                    Ok(LoginRecord {
                        user_id: r.get(0)?,
                        password_hash: r.get(1)?,
                        disabled: r.get::<_, i64>(2)? != 0,
                    })
                },
            )
            .optional()
            .map_err(|e| db_error("reading a user")(&e))
        })
        .await
    }

    pub(super) async fn create_session(
        &self,
        token_hash: &str,
        user_id: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let token_hash = token_hash.to_owned();
        self.with("creating a session", move |conn| {
            conn.execute(
                "INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![token_hash, user_id, now_unix(), expires_at],
            )
            .map(|_| ())
            .map_err(|e| db_error("creating a session")(&e))
        })
        .await
    }

    pub(super) async fn session(
        &self,
        token_hash: &str,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let token_hash = token_hash.to_owned();
        self.with("reading a session", move |conn| {
            conn.query_row(
                "SELECT s.user_id, u.name, s.expires_at, s.revoked_at IS NOT NULL, u.disabled
                 FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = ?1",
                [token_hash],
                |r| {
                    Ok(SessionRecord {
                        user_id: r.get(0)?,
                        user: r.get(1)?,
                        expires_at: r.get(2)?,
                        revoked: r.get(3)?,
                        disabled: r.get::<_, i64>(4)? != 0,
                    })
                },
            )
            .optional()
            .map_err(|e| db_error("reading a session")(&e))
        })
        .await
    }

    pub(super) async fn revoke_session(&self, token_hash: &str) -> Result<(), StoreError> {
        let token_hash = token_hash.to_owned();
        self.with("revoking a session", move |conn| {
            conn.execute(
                "UPDATE sessions SET revoked_at = ?2 WHERE token_hash = ?1 AND revoked_at IS NULL",
                params![token_hash, now_unix()],
            )
            .map(|_| ())
            .map_err(|e| db_error("revoking a session")(&e))
        })
        .await
    }

    pub(super) async fn memberships(&self, user_id: i64) -> Result<Vec<Membership>, StoreError> {
        self.with("listing memberships", move |conn| {
            let e = db_error("listing memberships");
            let mut stmt = conn
                .prepare(
                    "SELECT o.id, o.name, m.role FROM memberships m JOIN organizations o ON o.id = m.org_id
                     WHERE m.user_id = ?1 ORDER BY o.name",
                )
                .map_err(|x| e(&x))?;
            let rows = stmt
                .query_map([user_id], |r| {
                    Ok(Membership {
                        organization_id: r.get(0)?,
                        organization: r.get(1)?,
                        role: r.get(2)?,
                    })
                })
                .map_err(|x| e(&x))?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(|x| e(&x))
        })
        .await
    }

    pub(super) async fn members(&self, org_id: i64) -> Result<Vec<Member>, StoreError> {
        self.with("listing members", move |conn| {
            let e = db_error("listing members");
            let mut stmt = conn
                .prepare(
                    "SELECT u.id, u.name, m.role, u.disabled != 0, u.created_at
                     FROM memberships m JOIN users u ON u.id = m.user_id
                     WHERE m.org_id = ?1 ORDER BY u.name",
                )
                .map_err(|x| e(&x))?;
            let rows = stmt
                .query_map([org_id], |r| {
                    Ok(Member {
                        user_id: r.get(0)?,
                        name: r.get(1)?,
                        role: r.get(2)?,
                        disabled: r.get(3)?,
                        created_at: r.get(4)?,
                    })
                })
                .map_err(|x| e(&x))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(|x| e(&x))
        })
        .await
    }

    pub(super) async fn hit(&self, key: &str, window_start: i64) -> Result<i64, StoreError> {
        let key = key.to_owned();
        self.with("counting an attempt", move |conn| {
            // Counters of windows that have ended count nothing: dropped
            // here, so that the table holds one window's keys at most.
            conn.execute(
                "DELETE FROM rate_limits WHERE window_start < ?1",
                [window_start],
            )
            .map_err(|e| db_error("counting an attempt")(&e))?;
            conn.query_row(
                "INSERT INTO rate_limits (key, window_start, count) VALUES (?1, ?2, 1)
                 ON CONFLICT (key) DO UPDATE SET
                     count = CASE WHEN rate_limits.window_start = excluded.window_start
                                  THEN rate_limits.count + 1 ELSE 1 END,
                     window_start = excluded.window_start
                 RETURNING count",
                params![key, window_start],
                |r| r.get(0),
            )
            .map_err(|e| db_error("counting an attempt")(&e))
        })
        .await
    }

    pub(super) async fn clear_hits(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_owned();
        self.with("clearing attempts", move |conn| {
            conn.execute("DELETE FROM rate_limits WHERE key = ?1", [key])
                .map(|_| ())
                .map_err(|e| db_error("clearing attempts")(&e))
        })
        .await
    }

    pub(super) async fn append_audit(
        &self,
        event: AuditEvent,
        keys: std::sync::Arc<crate::keys::Keyring>,
    ) -> Result<(), StoreError> {
        self.with("recording an audit event", move |conn| {
            let e = db_error("recording an audit event");
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|x| e(&x))?;
            let prev: String = tx
                .query_row(
                    "SELECT hash FROM audit_events ORDER BY id DESC LIMIT 1",
                    [],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|x| e(&x))?
                .unwrap_or_else(|| GENESIS.to_owned());
            let at = now_unix();
            let hash = chain_hash(&prev, at, &event);
            let mac = keys.audit_mac(&hash);
            tx.execute(
                "INSERT INTO audit_events (at, org_id, actor, action, details, prev_hash, hash, mac)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    at,
                    event.org_id,
                    event.actor,
                    event.action,
                    event.details,
                    prev,
                    hash,
                    mac
                ],
            )
            .map_err(|x| e(&x))?;
            tx.commit().map_err(|x| e(&x))
        })
        .await
    }

    pub(super) async fn audit_search(
        &self,
        org_id: i64,
        search: &AuditSearch,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let search = search.clone();
        let like = search.like();
        self.with("searching the audit trail", move |conn| {
            let e = db_error("searching the audit trail");
            let mut stmt = conn
                .prepare(
                    &format!(
                    "SELECT {AUDIT_COLUMNS}
                     FROM audit_events
                     WHERE org_id = ?1 AND (?2 IS NULL OR action = ?2) AND (?3 IS NULL OR actor = ?3)
                       AND (?4 IS NULL OR lower(details) LIKE lower(?4) ESCAPE '\\') AND id < ?5
                     ORDER BY id DESC LIMIT ?6"
                ),
                )
                .map_err(|x| e(&x))?;
            let rows = stmt
                .query_map(
                    params![
                        org_id,
                        search.action,
                        search.actor,
                        like,
                        search.before.unwrap_or(i64::MAX),
                        search.limit
                    ],
                    audit_row,
                )
                .map_err(|x| e(&x))?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(|x| e(&x))
        })
        .await
    }

    pub(super) async fn audit_rows(&self) -> Result<Vec<AuditRow>, StoreError> {
        self.with("reading the audit trail", |conn| {
            let e = db_error("reading the audit trail");
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {AUDIT_COLUMNS}
                     FROM audit_events ORDER BY id"
                ))
                .map_err(|x| e(&x))?;
            let rows = stmt.query_map([], audit_row).map_err(|x| e(&x))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(|x| e(&x))
        })
        .await
    }

    /// Runs raw SQL: tests use it to tamper with the trail.
    #[cfg(feature = "test-support")]
    pub async fn execute_for_tests(&self, sql: &str) -> Result<(), StoreError> {
        let sql = sql.to_owned();
        self.with("tampering", move |conn| {
            conn.execute_batch(&sql)
                .map_err(|e| db_error("tampering")(&e))
        })
        .await
    }

    /// One integer from raw SQL, for tests.
    #[cfg(feature = "test-support")]
    pub async fn number_for_tests(&self, sql: &str) -> Result<i64, StoreError> {
        let sql = sql.to_owned();
        self.with("measuring", move |conn| {
            conn.query_row(&sql, [], |r| r.get(0))
                .map_err(|e| db_error("measuring")(&e))
        })
        .await
    }

    pub(super) async fn add_enrollment_code(
        &self,
        code_hash: &str,
        org_id: i64,
        created_by: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let code_hash = code_hash.to_owned();
        self.with("storing an enrollment code", move |conn| {
            conn.execute(
                "INSERT INTO enrollment_codes (code_hash, org_id, created_by, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![code_hash, org_id, created_by, now_unix(), expires_at],
            )
            .map(|_| ())
            .map_err(|e| db_error("storing an enrollment code")(&e))
        })
        .await
    }

    pub(super) async fn enroll(
        &self,
        code_hash: &str,
        name: &str,
        token_hash: &str,
        release_hash: &str,
    ) -> Result<Enrolled, StoreError> {
        let (code_hash, name, token_hash, release_hash) = (
            code_hash.to_owned(),
            name.to_owned(),
            token_hash.to_owned(),
            release_hash.to_owned(),
        );
        self.with("enrolling a device", move |conn| {
            let e = db_error("enrolling a device");
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|x| e(&x))?;
            let now = now_unix();
            let org_id: Option<i64> = tx
                .query_row(
                    "UPDATE enrollment_codes SET used_at = ?2
                     WHERE code_hash = ?1 AND used_at IS NULL AND expires_at > ?2
                       AND org_id NOT IN (SELECT id FROM organizations WHERE suspended_at IS NOT NULL)
                     RETURNING org_id",
                    params![code_hash, now],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|x| e(&x))?;
            let Some(org_id) = org_id else {
                return Err(StoreError::InvalidCode);
            };
            tx.execute(
                &format!(
                    "INSERT INTO devices (id, org_id, name, token_hash, enrolled_at) VALUES ({}, ?1, ?2, ?3, ?4)",
                    tenants::next_id("devices")
                ),
                params![org_id, name, token_hash, now],
            )
            .map_err(|x| e(&x))?;
            let device_id = tx.last_insert_rowid();
            tx.execute(
                "INSERT INTO device_release_tokens (device_id, token_hash) VALUES (?1, ?2)",
                params![device_id, release_hash],
            )
            .map_err(|x| e(&x))?;
            tx.commit().map_err(|x| e(&x))?;
            Ok(Enrolled { device_id, org_id })
        })
        .await
    }

    pub(super) async fn device_by_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        let token_hash = token_hash.to_owned();
        self.with("reading a device", move |conn| {
            conn.query_row(
                &format!("SELECT {DEVICE_COLUMNS} FROM devices d WHERE d.token_hash = ?1"),
                [token_hash],
                device_record,
            )
            .optional()
            .map_err(|e| db_error("reading a device")(&e))
        })
        .await
    }

    pub(super) async fn rotate_device_token(
        &self,
        device_id: i64,
        old_hash: &str,
        new_hash: &str,
    ) -> Result<bool, StoreError> {
        let (old_hash, new_hash) = (old_hash.to_owned(), new_hash.to_owned());
        self.with("rotating a device token", move |conn| {
            conn.execute(
                "UPDATE devices SET token_hash = ?3 WHERE id = ?1 AND token_hash = ?2 AND revoked_at IS NULL",
                params![device_id, old_hash, new_hash],
            )
            .map(|n| n == 1)
            .map_err(|e| db_error("rotating a device token")(&e))
        })
        .await
    }

    pub(super) async fn devices(
        &self,
        org_id: i64,
        after: i64,
        limit: i64,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        self.with("listing devices", move |conn| {
            let e = db_error("listing devices");
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {DEVICE_COLUMNS} FROM devices d WHERE d.org_id = ?1 AND d.id > ?2
                     ORDER BY d.id LIMIT ?3"
                ))
                .map_err(|x| e(&x))?;
            let rows = stmt
                .query_map([org_id, after, limit], device_record)
                .map_err(|x| e(&x))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(|x| e(&x))
        })
        .await
    }

    pub(super) async fn revoke_device(
        &self,
        org_id: i64,
        device_id: i64,
    ) -> Result<bool, StoreError> {
        self.with("revoking a device", move |conn| {
            let e = db_error("revoking a device");
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|x| e(&x))?;
            let exists: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM devices WHERE id = ?2 AND org_id = ?1)",
                    params![org_id, device_id],
                    |r| r.get(0),
                )
                .map_err(|x| e(&x))?;
            if !exists {
                return Ok(false);
            }
            tx.execute(
                "UPDATE devices SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![device_id, now_unix()],
            )
            .map_err(|x| e(&x))?;
            // A revoked device's escrow key can never be released: delete it.
            tx.execute("DELETE FROM escrow_keys WHERE device_id = ?1", [device_id])
                .map_err(|x| e(&x))?;
            tx.commit().map_err(|x| e(&x))?;
            Ok(true)
        })
        .await
    }

    pub(super) async fn add_member(
        &self,
        org_id: i64,
        name: &str,
        password_hash: &str,
        role: &str,
    ) -> Result<i64, StoreError> {
        let (name, password_hash, role) =
            (name.to_owned(), password_hash.to_owned(), role.to_owned());
        self.with("adding a user", move |conn| {
            let e = db_error("adding a user");
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|x| e(&x))?;
            let taken: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM users WHERE name = ?1)",
                    [&name],
                    |r| r.get(0),
                )
                .map_err(|x| e(&x))?;
            if taken {
                return Err(StoreError::Exists("a user of that name"));
            }
            tx.execute(
                "INSERT INTO users (name, password_hash, created_at) VALUES (?1, ?2, ?3)",
                params![name, password_hash, now_unix()],
            )
            .map_err(|x| e(&x))?;
            let user_id = tx.last_insert_rowid();
            tx.execute(
                "INSERT INTO memberships (org_id, user_id, role) VALUES (?1, ?2, ?3)",
                params![org_id, user_id, role],
            )
            .map_err(|x| e(&x))?;
            tx.commit().map_err(|x| e(&x))?;
            Ok(user_id)
        })
        .await
    }

    pub(super) async fn member_role(
        &self,
        org_id: i64,
        user_id: i64,
    ) -> Result<Option<MemberRole>, StoreError> {
        self.with("reading a membership", move |conn| {
            conn.query_row(
                "SELECT m.role, o.suspended_at IS NOT NULL
                 FROM memberships m JOIN organizations o ON o.id = m.org_id
                 WHERE m.org_id = ?1 AND m.user_id = ?2",
                params![org_id, user_id],
                |r| {
                    Ok(MemberRole {
                        role: r.get(0)?,
                        suspended: r.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(|e| db_error("reading a membership")(&e))
        })
        .await
    }

    pub(super) async fn set_role(
        &self,
        org_id: i64,
        user_id: i64,
        role: &str,
    ) -> Result<(), StoreError> {
        let role = role.to_owned();
        self.with("changing a role", move |conn| {
            conn.execute(
                "UPDATE memberships SET role = ?3 WHERE org_id = ?1 AND user_id = ?2",
                params![org_id, user_id, role],
            )
            .map(|_| ())
            .map_err(|e| db_error("changing a role")(&e))
        })
        .await
    }

    pub(super) async fn remove_member(&self, org_id: i64, user_id: i64) -> Result<(), StoreError> {
        self.with("removing a user", move |conn| {
            let e = db_error("removing a user");
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|x| e(&x))?;
            tx.execute(
                "DELETE FROM memberships WHERE org_id = ?1 AND user_id = ?2",
                params![org_id, user_id],
            )
            .map_err(|x| e(&x))?;
            // A user left in no organization (and not an operator) can no longer do anything:
            // end their sessions and disable them.
            let orphan: bool = tx
                .query_row(
                    "SELECT NOT EXISTS (SELECT 1 FROM memberships WHERE user_id = ?1)
                        AND NOT EXISTS (SELECT 1 FROM operators WHERE user_id = ?1)",
                    [user_id],
                    |r| r.get(0),
                )
                .map_err(|x| e(&x))?;
            if orphan {
                tx.execute("UPDATE users SET disabled = 1 WHERE id = ?1", [user_id])
                    .map_err(|x| e(&x))?;
                tx.execute(
                    "UPDATE sessions SET revoked_at = ?2 WHERE user_id = ?1 AND revoked_at IS NULL",
                    params![user_id, now_unix()],
                )
                .map_err(|x| e(&x))?;
            }
            tx.commit().map_err(|x| e(&x))
        })
        .await
    }

    pub(super) async fn set_password(
        &self,
        user_id: i64,
        password_hash: &str,
        keep_session: &str,
    ) -> Result<(), StoreError> {
        let (password_hash, keep_session) = (password_hash.to_owned(), keep_session.to_owned());
        self.with("setting a password", move |conn| {
            let e = db_error("setting a password");
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|x| e(&x))?;
            tx.execute(
                "UPDATE users SET password_hash = ?2 WHERE id = ?1",
                params![user_id, password_hash],
            )
            .map_err(|x| e(&x))?;
            tx.execute(
                "UPDATE sessions SET revoked_at = ?3
                 WHERE user_id = ?1 AND token_hash <> ?2 AND revoked_at IS NULL",
                params![user_id, keep_session, now_unix()],
            )
            .map_err(|x| e(&x))?;
            tx.commit().map_err(|x| e(&x))
        })
        .await
    }

    pub(super) async fn password_hash(&self, user_id: i64) -> Result<Option<String>, StoreError> {
        self.with("reading a user", move |conn| {
            conn.query_row(
                "SELECT password_hash FROM users WHERE id = ?1",
                [user_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| db_error("reading a user")(&e))
        })
        .await
    }

    pub(super) async fn record_usage(&self, u: UsageRecord) -> Result<(), StoreError> {
        self.with("recording usage", move |conn| {
            conn.execute(
                "INSERT INTO usage_records (at, org_id, user_id, device_id, method, route, status, bytes_in, bytes_out, micros)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![u.at, u.org_id, u.user_id, u.device_id, u.method, u.route, u.status, u.bytes_in, u.bytes_out, u.micros],
            )
            .map(|_| ())
            .map_err(|e| db_error("recording usage")(&e))
        })
        .await
    }

    pub(super) async fn usage(
        &self,
        org_id: i64,
        from: i64,
        to: i64,
        by: UsageKey,
    ) -> Result<Vec<UsageRow>, StoreError> {
        self.with("summing usage", move |conn| {
            let e = db_error("summing usage");
            let sql = format!(
                "SELECT {key}, count(*), coalesce(sum(bytes_in), 0), coalesce(sum(bytes_out), 0), coalesce(sum(micros), 0)
                 FROM usage_records WHERE org_id = ?1 AND at >= ?2 AND at < ?3
                 GROUP BY 1 ORDER BY 1",
                key = by.column()
            );
            let mut stmt = conn.prepare(&sql).map_err(|x| e(&x))?;
            let rows = stmt
                .query_map(params![org_id, from, to], |r| {
                    Ok(UsageRow {
                        key: r.get(0)?,
                        requests: r.get(1)?,
                        bytes_in: r.get(2)?,
                        bytes_out: r.get(3)?,
                        micros: r.get(4)?,
                    })
                })
                .map_err(|x| e(&x))?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(|x| e(&x))
        })
        .await
    }

    pub(super) async fn set_disabled(
        &self,
        user_id: i64,
        disabled: bool,
    ) -> Result<(), StoreError> {
        self.with("disabling a user", move |conn| {
            let e = db_error("disabling a user");
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|x| e(&x))?;
            tx.execute(
                "UPDATE users SET disabled = ?2 WHERE id = ?1",
                params![user_id, i64::from(disabled)],
            )
            .map_err(|x| e(&x))?;
            if disabled {
                tx.execute(
                    "UPDATE sessions SET revoked_at = ?2 WHERE user_id = ?1 AND revoked_at IS NULL",
                    params![user_id, now_unix()],
                )
                .map_err(|x| e(&x))?;
            }
            tx.commit().map_err(|x| e(&x))
        })
        .await
    }
}

/// The columns of [`AUDIT_COLUMNS`] as an audit row.
fn audit_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRow> {
    Ok(AuditRow {
        id: r.get(0)?,
        at: r.get(1)?,
        event: AuditEvent {
            org_id: r.get(2)?,
            actor: r.get(3)?,
            action: r.get(4)?,
            details: r.get(5)?,
        },
        prev_hash: r.get(6)?,
        hash: r.get(7)?,
        mac: r.get(8)?,
    })
}
