//! The SQLite backend: one connection (WAL, a busy timeout) used through
//! `spawn_blocking`, the one place where blocking database work meets the
//! async server.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{params, Connection, TransactionBehavior};

use super::{db_error, now_unix, Bootstrapped, Migrations, NewOwner, StoreError};

const MIGRATIONS: Migrations = &[(1, include_str!("../../migrations/sqlite/0001_init.sql"))];

#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    pub(super) async fn open(path: PathBuf) -> Result<Self, StoreError> {
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection, StoreError> {
            let conn = Connection::open(&path).map_err(|e| db_error("opening")(&e))?;
            conn.execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 PRAGMA foreign_keys = ON;
                 PRAGMA busy_timeout = 5000;",
            )
            .map_err(|e| db_error("configuring")(&e))?;
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
            tx.execute(
                "INSERT INTO organizations (name, created_at) VALUES (?1, ?2)",
                params![owner.organization, now],
            )
            .map_err(|x| e(&x))?;
            let organization_id = tx.last_insert_rowid();
            tx.execute(
                "INSERT INTO users (name, password_hash, created_at) VALUES (?1, ?2, ?3)",
                params![owner.owner, owner.password_hash, now],
            )
            .map_err(|x| e(&x))?;
            let user_id = tx.last_insert_rowid();
            tx.execute(
                "INSERT INTO memberships (org_id, user_id, role) VALUES (?1, ?2, 'owner')",
                params![organization_id, user_id],
            )
            .map_err(|x| e(&x))?;
            tx.commit().map_err(|x| e(&x))?;
            Ok(Bootstrapped {
                organization_id,
                user_id,
            })
        })
        .await
    }
}
