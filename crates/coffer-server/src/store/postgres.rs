//! The PostgreSQL backend: a deadpool of tokio-postgres connections. Every
//! state is in the database, so several server processes can share it.

use std::str::FromStr;

use coffer_protocol::untrusted::Untrusted;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

mod control;
mod files;
mod mqtt;
mod sync;
mod tenants;

use crate::audit::{chain_hash, AuditEvent, AuditRow, GENESIS};

use super::{
    db_error as generic_error, now_unix, AuditSearch, Bootstrapped, DeviceRecord, Enrolled,
    LoginRecord, Member, MemberRole, Membership, Migrations, NewOwner, SessionRecord, StoreError,
    UsageKey, UsageRecord, UsageRow, AUDIT_COLUMNS, DEVICE_COLUMNS,
};

pub(super) const MIGRATIONS: Migrations = &[
    (1, include_str!("../../migrations/postgres/0001_init.sql")),
    (
        2,
        include_str!("../../migrations/postgres/0002_sessions.sql"),
    ),
    (
        3,
        include_str!("../../migrations/postgres/0003_rate_limits.sql"),
    ),
    (4, include_str!("../../migrations/postgres/0004_audit.sql")),
    (
        5,
        include_str!("../../migrations/postgres/0005_devices.sql"),
    ),
    (6, include_str!("../../migrations/postgres/0006_usage.sql")),
    (
        7,
        include_str!("../../migrations/postgres/0007_control.sql"),
    ),
    (
        8,
        include_str!("../../migrations/postgres/0008_audit_mac.sql"),
    ),
    (
        9,
        include_str!("../../migrations/postgres/0009_release_tokens.sql"),
    ),
    (
        10,
        include_str!("../../migrations/postgres/0010_tenants.sql"),
    ),
    (
        11,
        include_str!("../../migrations/postgres/0011_id_floors.sql"),
    ),
    (12, include_str!("../../migrations/postgres/0012_sync.sql")),
    (13, include_str!("../../migrations/postgres/0013_files.sql")),
    (14, include_str!("../../migrations/postgres/0014_mqtt.sql")),
    (
        15,
        include_str!("../../migrations/postgres/0015_audit_search.sql"),
    ),
];

/// Serializes audit appends across server processes: one chain, one order.
const AUDIT_LOCK: i64 = 0x6175_6469_7400;

/// A storage error from a PostgreSQL failure, with the server's own message
/// (tokio-postgres shows only "db error" by itself). Messages name tables
/// and constraints, never values.
fn db_error(op: &'static str) -> impl Fn(&dyn std::fmt::Display) -> StoreError {
    generic_error(op)
}

fn pg(op: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |e| {
        let message = match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => e.to_string(),
        };
        StoreError::Database { op, message }
    }
}

/// Who connects where, for an error message: user, host, port, database
/// (never the password).
struct Target {
    user: String,
    place: String,
    database: String,
}

fn connect_target(config: &tokio_postgres::Config) -> Target {
    use tokio_postgres::config::Host;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        #[cfg(unix)]
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("(no user)").to_owned();
    Target {
        database: config.get_dbname().unwrap_or(&user).to_owned(),
        user,
        place: format!("{host}:{port}"),
    }
}

/// The first connection's failure, in words that say what to check.
fn connect_error(at: &Target, e: deadpool_postgres::PoolError) -> StoreError {
    let Target {
        user,
        place,
        database,
    } = at;
    let message = match &e {
        deadpool_postgres::PoolError::Backend(e) => match e.as_db_error() {
            Some(db) => match db.code().code() {
                "28P01" => format!(
                    "PostgreSQL at {place} refused the password of role {user:?}: check the password (in the URL or PGPASSWORD)"
                ),
                "28000" => format!(
                    "PostgreSQL at {place} does not let role {user:?} connect to database {database:?} from here: check the role exists and pg_hba.conf ({})",
                    Untrusted::new(db.message()).at_most(300)
                ),
                "3D000" => format!(
                    "PostgreSQL at {place} has no database {database:?}: create it (createdb --owner {user} {database})"
                ),
                code => format!(
                    "PostgreSQL at {place}: {} ({})",
                    Untrusted::new(db.message()).at_most(300),
                    Untrusted::new(code)
                ),
            },
            None if e.to_string().contains("password missing") => format!(
                "PostgreSQL at {place} asks role {user:?} for a password and none was given: put it in PGPASSWORD (or the URL)"
            ),
            None if e.to_string().contains("TLS") => format!(
                "cannot reach PostgreSQL at {place} with TLS: this server connects without TLS, so leave sslmode out of the URL and keep the database on this host or a private network (docs/server.md, \"No TLS to PostgreSQL\")"
            ),
            None => format!("cannot reach PostgreSQL at {place}: {e} (is it running, and listening there?)"),
        },
        other => format!("cannot reach PostgreSQL at {place}: {other}"),
    };
    StoreError::Database {
        op: "connecting",
        message,
    }
}

/// Serializes migrations across server processes (an arbitrary constant).
const MIGRATION_LOCK: i64 = 0x636f_6666_6572;

/// A row of [`DEVICE_COLUMNS`].
pub(super) fn device_record(r: &tokio_postgres::Row) -> DeviceRecord {
    DeviceRecord {
        id: r.get(0),
        org_id: r.get(1),
        name: r.get(2),
        revoked: r.get(3),
        suspended: r.get(4),
    }
}

#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
}

impl PostgresStore {
    pub(super) async fn connect(url: &str) -> Result<Self, StoreError> {
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|_| StoreError::InvalidUrl("not a valid postgres:// URL"))?;
        // libpq's convention, so that the password need not be in the URL
        // (which a process list or a shell history could show).
        if config.get_password().is_none() {
            if let Some(password) = std::env::var_os("PGPASSWORD") {
                config.password(password.as_encoded_bytes());
            }
        }
        let at = connect_target(&config);
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(16)
            .build()
            .map_err(|e| db_error("connecting")(&e))?;
        // Fail at start, not at the first request, if the server is
        // unreachable, and say what to check.
        drop(pool.get().await.map_err(|e| connect_error(&at, e))?);
        Ok(PostgresStore { pool })
    }

    async fn client(&self, op: &'static str) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| db_error(op)(&e))
    }

    pub(super) async fn migrate(&self) -> Result<(), StoreError> {
        let op = "migrating";
        let mut client = self.client(op).await?;
        let tx = client.transaction().await.map_err(pg(op))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg(op))?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version BIGINT PRIMARY KEY,
                 applied_at BIGINT NOT NULL
             );",
        )
        .await
        .map_err(pg(op))?;
        let current: i64 = tx
            .query_one(
                "SELECT coalesce(max(version), 0) FROM schema_migrations",
                &[],
            )
            .await
            .map_err(pg(op))?
            .get(0);
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            tx.batch_execute(sql).await.map_err(pg(op))?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                &[version, &now_unix()],
            )
            .await
            .map_err(pg(op))?;
        }
        tx.commit().await.map_err(pg(op))
    }

    pub(super) async fn schema_version(&self) -> Result<i64, StoreError> {
        let op = "reading the schema version";
        let client = self.client(op).await?;
        let row = client
            .query_one(
                "SELECT coalesce(max(version), 0) FROM schema_migrations",
                &[],
            )
            .await
            .map_err(pg(op))?;
        Ok(row.get(0))
    }

    pub(super) async fn is_bootstrapped(&self) -> Result<bool, StoreError> {
        let op = "counting organizations";
        let client = self.client(op).await?;
        let row = client
            .query_one("SELECT EXISTS (SELECT 1 FROM organizations)", &[])
            .await
            .map_err(pg(op))?;
        Ok(row.get(0))
    }

    pub(super) async fn replace_setup_token(&self, token_hash: &str) -> Result<bool, StoreError> {
        let op = "storing the setup token";
        let mut client = self.client(op).await?;
        let tx = client.transaction().await.map_err(pg(op))?;
        let set_up: bool = tx
            .query_one("SELECT EXISTS (SELECT 1 FROM organizations)", &[])
            .await
            .map_err(pg(op))?
            .get(0);
        if set_up {
            return Ok(false);
        }
        tx.execute("DELETE FROM setup_tokens WHERE used_at IS NULL", &[])
            .await
            .map_err(pg(op))?;
        tx.execute(
            "INSERT INTO setup_tokens (token_hash, created_at) VALUES ($1, $2)",
            &[&token_hash, &now_unix()],
        )
        .await
        .map_err(pg(op))?;
        tx.commit().await.map_err(pg(op))?;
        Ok(true)
    }

    pub(super) async fn setup_token_pending(&self, token_hash: &str) -> Result<bool, StoreError> {
        let op = "reading the setup token";
        let client = self.client(op).await?;
        Ok(client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM setup_tokens WHERE token_hash = $1 AND used_at IS NULL)",
                &[&token_hash],
            )
            .await
            .map_err(pg(op))?
            .get(0))
    }

    pub(super) async fn bootstrap(
        &self,
        token_hash: &str,
        owner: &NewOwner,
    ) -> Result<Bootstrapped, StoreError> {
        let op = "setting up the server";
        let mut client = self.client(op).await?;
        let tx = client.transaction().await.map_err(pg(op))?;
        let now = now_unix();
        // The token row is locked by the update: of two concurrent setups
        // (through two server processes), one spends it, the other finds it
        // spent.
        let spent = tx
            .execute(
                "UPDATE setup_tokens SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL",
                &[&token_hash, &now],
            )
            .await
            .map_err(pg(op))?;
        let set_up: bool = tx
            .query_one("SELECT EXISTS (SELECT 1 FROM organizations)", &[])
            .await
            .map_err(pg(op))?
            .get(0);
        if set_up {
            return Err(StoreError::AlreadyBootstrapped);
        }
        if spent != 1 {
            return Err(StoreError::InvalidSetupToken);
        }
        let created = tenants::insert_organization(&tx, owner, now, op).await?;
        // The first owner is the instance's first operator.
        tx.execute(
            "INSERT INTO operators (user_id, created_at) VALUES ($1, $2)",
            &[&created.user_id, &now],
        )
        .await
        .map_err(pg(op))?;
        tx.commit().await.map_err(pg(op))?;
        Ok(created)
    }

    pub(super) async fn login_record(&self, name: &str) -> Result<Option<LoginRecord>, StoreError> {
        let op = "reading a user";
        let client = self.client(op).await?;
        let row = client
            .query_opt(
                "SELECT id, password_hash, disabled FROM users WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(pg(op))?;
        Ok(row.map(|r| LoginRecord {
            user_id: r.get(0),
            password_hash: r.get(1),
            disabled: r.get(2),
        }))
    }

    pub(super) async fn create_session(
        &self,
        token_hash: &str,
        user_id: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let op = "creating a session";
        let client = self.client(op).await?;
        client
            .execute(
                "INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
                &[&token_hash, &user_id, &now_unix(), &expires_at],
            )
            .await
            .map(|_| ())
            .map_err(pg(op))
    }

    pub(super) async fn session(
        &self,
        token_hash: &str,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let op = "reading a session";
        let client = self.client(op).await?;
        let row = client
            .query_opt(
                "SELECT s.user_id, u.name, s.expires_at, s.revoked_at IS NOT NULL, u.disabled
                 FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = $1",
                &[&token_hash],
            )
            .await
            .map_err(pg(op))?;
        Ok(row.map(|r| SessionRecord {
            user_id: r.get(0),
            user: r.get(1),
            expires_at: r.get(2),
            revoked: r.get(3),
            disabled: r.get(4),
        }))
    }

    pub(super) async fn revoke_session(&self, token_hash: &str) -> Result<(), StoreError> {
        let op = "revoking a session";
        let client = self.client(op).await?;
        client
            .execute(
                "UPDATE sessions SET revoked_at = $2 WHERE token_hash = $1 AND revoked_at IS NULL",
                &[&token_hash, &now_unix()],
            )
            .await
            .map(|_| ())
            .map_err(pg(op))
    }

    pub(super) async fn memberships(&self, user_id: i64) -> Result<Vec<Membership>, StoreError> {
        let op = "listing memberships";
        let client = self.client(op).await?;
        let rows = client
            .query(
                "SELECT o.id, o.name, m.role FROM memberships m JOIN organizations o ON o.id = m.org_id
                 WHERE m.user_id = $1 ORDER BY o.name",
                &[&user_id],
            )
            .await
            .map_err(pg(op))?;
        Ok(rows
            .into_iter()
            .map(|r| Membership {
                organization_id: r.get(0),
                organization: r.get(1),
                role: r.get(2),
            })
            .collect())
    }

    pub(super) async fn members(&self, org_id: i64) -> Result<Vec<Member>, StoreError> {
        let op = "listing members";
        let client = self.client(op).await?;
        let rows = client
            .query(
                "SELECT u.id, u.name, m.role, u.disabled, u.created_at
                 FROM memberships m JOIN users u ON u.id = m.user_id
                 WHERE m.org_id = $1 ORDER BY u.name",
                &[&org_id],
            )
            .await
            .map_err(pg(op))?;
        Ok(rows
            .into_iter()
            .map(|r| Member {
                user_id: r.get(0),
                name: r.get(1),
                role: r.get(2),
                disabled: r.get(3),
                created_at: r.get(4),
            })
            .collect())
    }

    pub(super) async fn hit(&self, key: &str, window_start: i64) -> Result<i64, StoreError> {
        let op = "counting an attempt";
        let client = self.client(op).await?;
        // Counters of windows that have ended count nothing: dropped here,
        // so that the table holds one window's keys at most.
        client
            .execute(
                "DELETE FROM rate_limits WHERE window_start < $1",
                &[&window_start],
            )
            .await
            .map_err(pg(op))?;
        let row = client
            .query_one(
                "INSERT INTO rate_limits (key, window_start, count) VALUES ($1, $2, 1)
                 ON CONFLICT (key) DO UPDATE SET
                     count = CASE WHEN rate_limits.window_start = excluded.window_start
                                  THEN rate_limits.count + 1 ELSE 1 END,
                     window_start = excluded.window_start
                 RETURNING count",
                &[&key, &window_start],
            )
            .await
            .map_err(pg(op))?;
        Ok(row.get(0))
    }

    pub(super) async fn clear_hits(&self, key: &str) -> Result<(), StoreError> {
        let op = "clearing attempts";
        let client = self.client(op).await?;
        client
            .execute("DELETE FROM rate_limits WHERE key = $1", &[&key])
            .await
            .map(|_| ())
            .map_err(pg(op))
    }

    pub(super) async fn append_audit(
        &self,
        event: AuditEvent,
        keys: std::sync::Arc<crate::keys::Keyring>,
    ) -> Result<(), StoreError> {
        let op = "recording an audit event";
        let mut client = self.client(op).await?;
        let tx = client.transaction().await.map_err(pg(op))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])
            .await
            .map_err(pg(op))?;
        let prev: String = tx
            .query_opt(
                "SELECT hash FROM audit_events ORDER BY id DESC LIMIT 1",
                &[],
            )
            .await
            .map_err(pg(op))?
            .map(|r| r.get(0))
            .unwrap_or_else(|| GENESIS.to_owned());
        let at = now_unix();
        let hash = chain_hash(&prev, at, &event);
        let mac = keys.audit_mac(&hash);
        tx.execute(
            "INSERT INTO audit_events (at, org_id, actor, action, details, prev_hash, hash, mac)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &at,
                &event.org_id,
                &event.actor,
                &event.action,
                &event.details,
                &prev,
                &hash,
                &mac,
            ],
        )
        .await
        .map_err(pg(op))?;
        tx.commit().await.map_err(pg(op))
    }

    pub(super) async fn audit_search(
        &self,
        org_id: i64,
        search: &AuditSearch,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let op = "searching the audit trail";
        let client = self.client(op).await?;
        let like = search.like();
        let before = search.before.unwrap_or(i64::MAX);
        let rows = client
            .query(
                &format!(
                    "SELECT {AUDIT_COLUMNS}
                 FROM audit_events
                 WHERE org_id = $1 AND ($2::text IS NULL OR action = $2)
                   AND ($3::text IS NULL OR actor = $3)
                   AND ($4::text IS NULL OR lower(details) LIKE lower($4) ESCAPE '\\') AND id < $5
                 ORDER BY id DESC LIMIT $6"
                ),
                &[
                    &org_id,
                    &search.action,
                    &search.actor,
                    &like,
                    &before,
                    &search.limit,
                ],
            )
            .await
            .map_err(pg(op))?;
        Ok(rows.into_iter().map(|r| audit_row(&r)).collect())
    }

    pub(super) async fn audit_rows(&self) -> Result<Vec<AuditRow>, StoreError> {
        let op = "reading the audit trail";
        let client = self.client(op).await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {AUDIT_COLUMNS}
                 FROM audit_events ORDER BY id"
                ),
                &[],
            )
            .await
            .map_err(pg(op))?;
        Ok(rows.into_iter().map(|r| audit_row(&r)).collect())
    }

    /// Runs raw SQL: tests use it to tamper with the trail.
    #[cfg(feature = "test-support")]
    pub async fn execute_for_tests(&self, sql: &str) -> Result<(), StoreError> {
        let op = "tampering";
        let client = self.client(op).await?;
        client.batch_execute(sql).await.map_err(pg(op))
    }

    /// One integer from raw SQL, for tests (cast it to BIGINT).
    #[cfg(feature = "test-support")]
    pub async fn number_for_tests(&self, sql: &str) -> Result<i64, StoreError> {
        let op = "measuring";
        let client = self.client(op).await?;
        Ok(client.query_one(sql, &[]).await.map_err(pg(op))?.get(0))
    }

    pub(super) async fn add_enrollment_code(
        &self,
        code_hash: &str,
        org_id: i64,
        created_by: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let op = "storing an enrollment code";
        let client = self.client(op).await?;
        client
            .execute(
                "INSERT INTO enrollment_codes (code_hash, org_id, created_by, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&code_hash, &org_id, &created_by, &now_unix(), &expires_at],
            )
            .await
            .map(|_| ())
            .map_err(pg(op))
    }

    pub(super) async fn enroll(
        &self,
        code_hash: &str,
        name: &str,
        token_hash: &str,
        release_hash: &str,
    ) -> Result<Enrolled, StoreError> {
        let op = "enrolling a device";
        let mut client = self.client(op).await?;
        let tx = client.transaction().await.map_err(pg(op))?;
        let now = now_unix();
        // The row lock makes a code single-use across server processes.
        let org_id: Option<i64> = tx
            .query_opt(
                "UPDATE enrollment_codes SET used_at = $2
                 WHERE code_hash = $1 AND used_at IS NULL AND expires_at > $2
                   AND org_id NOT IN (SELECT id FROM organizations WHERE suspended_at IS NOT NULL)
                 RETURNING org_id",
                &[&code_hash, &now],
            )
            .await
            .map_err(pg(op))?
            .map(|r| r.get(0));
        let Some(org_id) = org_id else {
            return Err(StoreError::InvalidCode);
        };
        let device_id: i64 = tx
            .query_one(
                "INSERT INTO devices (org_id, name, token_hash, enrolled_at) VALUES ($1, $2, $3, $4) RETURNING id",
                &[&org_id, &name, &token_hash, &now],
            )
            .await
            .map_err(pg(op))?
            .get(0);
        tx.execute(
            "INSERT INTO device_release_tokens (device_id, token_hash) VALUES ($1, $2)",
            &[&device_id, &release_hash],
        )
        .await
        .map_err(pg(op))?;
        tx.commit().await.map_err(pg(op))?;
        Ok(Enrolled { device_id, org_id })
    }

    pub(super) async fn device_by_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        let op = "reading a device";
        let client = self.client(op).await?;
        let row = client
            .query_opt(
                &format!("SELECT {DEVICE_COLUMNS} FROM devices d WHERE d.token_hash = $1"),
                &[&token_hash],
            )
            .await
            .map_err(pg(op))?;
        Ok(row.as_ref().map(device_record))
    }

    pub(super) async fn rotate_device_token(
        &self,
        device_id: i64,
        old_hash: &str,
        new_hash: &str,
    ) -> Result<bool, StoreError> {
        let op = "rotating a device token";
        let client = self.client(op).await?;
        client
            .execute(
                "UPDATE devices SET token_hash = $3 WHERE id = $1 AND token_hash = $2 AND revoked_at IS NULL",
                &[&device_id, &old_hash, &new_hash],
            )
            .await
            .map(|n| n == 1)
            .map_err(pg(op))
    }

    pub(super) async fn devices(
        &self,
        org_id: i64,
        after: i64,
        limit: i64,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        let op = "listing devices";
        let client = self.client(op).await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {DEVICE_COLUMNS} FROM devices d WHERE d.org_id = $1 AND d.id > $2
                     ORDER BY d.id LIMIT $3"
                ),
                &[&org_id, &after, &limit],
            )
            .await
            .map_err(pg(op))?;
        Ok(rows.iter().map(device_record).collect())
    }

    pub(super) async fn revoke_device(
        &self,
        org_id: i64,
        device_id: i64,
    ) -> Result<bool, StoreError> {
        let op = "revoking a device";
        let mut client = self.client(op).await?;
        let tx = client.transaction().await.map_err(pg(op))?;
        let exists = tx
            .query_opt(
                "SELECT 1 FROM devices WHERE id = $2 AND org_id = $1 FOR UPDATE",
                &[&org_id, &device_id],
            )
            .await
            .map_err(pg(op))?
            .is_some();
        if !exists {
            return Ok(false);
        }
        tx.execute(
            "UPDATE devices SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            &[&device_id, &now_unix()],
        )
        .await
        .map_err(pg(op))?;
        // A revoked device's escrow key can never be released: delete it.
        tx.execute(
            "DELETE FROM escrow_keys WHERE device_id = $1",
            &[&device_id],
        )
        .await
        .map_err(pg(op))?;
        tx.commit().await.map_err(pg(op))?;
        Ok(true)
    }

    pub(super) async fn add_member(
        &self,
        org_id: i64,
        name: &str,
        password_hash: &str,
        role: &str,
    ) -> Result<i64, StoreError> {
        let op = "adding a user";
        let mut client = self.client(op).await?;
        let tx = client.transaction().await.map_err(pg(op))?;
        let user_id: Option<i64> = tx
            .query_opt(
                "INSERT INTO users (name, password_hash, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO NOTHING RETURNING id",
                &[&name, &password_hash, &now_unix()],
            )
            .await
            .map_err(pg(op))?
            .map(|r| r.get(0));
        let Some(user_id) = user_id else {
            return Err(StoreError::Exists("a user of that name"));
        };
        tx.execute(
            "INSERT INTO memberships (org_id, user_id, role) VALUES ($1, $2, $3)",
            &[&org_id, &user_id, &role],
        )
        .await
        .map_err(pg(op))?;
        tx.commit().await.map_err(pg(op))?;
        Ok(user_id)
    }

    pub(super) async fn member_role(
        &self,
        org_id: i64,
        user_id: i64,
    ) -> Result<Option<MemberRole>, StoreError> {
        let op = "reading a membership";
        let client = self.client(op).await?;
        let row = client
            .query_opt(
                "SELECT m.role, o.suspended_at IS NOT NULL
                 FROM memberships m JOIN organizations o ON o.id = m.org_id
                 WHERE m.org_id = $1 AND m.user_id = $2",
                &[&org_id, &user_id],
            )
            .await
            .map_err(pg(op))?;
        Ok(row.map(|r| MemberRole {
            role: r.get(0),
            suspended: r.get(1),
        }))
    }

    pub(super) async fn set_role(
        &self,
        org_id: i64,
        user_id: i64,
        role: &str,
    ) -> Result<(), StoreError> {
        let op = "changing a role";
        let client = self.client(op).await?;
        client
            .execute(
                "UPDATE memberships SET role = $3 WHERE org_id = $1 AND user_id = $2",
                &[&org_id, &user_id, &role],
            )
            .await
            .map(|_| ())
            .map_err(pg(op))
    }

    pub(super) async fn remove_member(&self, org_id: i64, user_id: i64) -> Result<(), StoreError> {
        let op = "removing a user";
        let mut client = self.client(op).await?;
        let tx = client.transaction().await.map_err(pg(op))?;
        tx.execute(
            "DELETE FROM memberships WHERE org_id = $1 AND user_id = $2",
            &[&org_id, &user_id],
        )
        .await
        .map_err(pg(op))?;
        // A user left in no organization (and not an operator) can no longer do anything: end
        // their sessions and disable them.
        let orphan: bool = tx
            .query_one(
                "SELECT NOT EXISTS (SELECT 1 FROM memberships WHERE user_id = $1)
                    AND NOT EXISTS (SELECT 1 FROM operators WHERE user_id = $1)",
                &[&user_id],
            )
            .await
            .map_err(pg(op))?
            .get(0);
        if orphan {
            tx.execute(
                "UPDATE users SET disabled = TRUE WHERE id = $1",
                &[&user_id],
            )
            .await
            .map_err(pg(op))?;
            tx.execute(
                "UPDATE sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
                &[&user_id, &now_unix()],
            )
            .await
            .map_err(pg(op))?;
        }
        tx.commit().await.map_err(pg(op))
    }

    pub(super) async fn set_password(
        &self,
        user_id: i64,
        password_hash: &str,
        keep_session: &str,
    ) -> Result<(), StoreError> {
        let op = "setting a password";
        let mut client = self.client(op).await?;
        let tx = client.transaction().await.map_err(pg(op))?;
        tx.execute(
            "UPDATE users SET password_hash = $2 WHERE id = $1",
            &[&user_id, &password_hash],
        )
        .await
        .map_err(pg(op))?;
        tx.execute(
            "UPDATE sessions SET revoked_at = $3
             WHERE user_id = $1 AND token_hash <> $2 AND revoked_at IS NULL",
            &[&user_id, &keep_session, &now_unix()],
        )
        .await
        .map_err(pg(op))?;
        tx.commit().await.map_err(pg(op))
    }

    pub(super) async fn password_hash(&self, user_id: i64) -> Result<Option<String>, StoreError> {
        let op = "reading a user";
        let client = self.client(op).await?;
        let row = client
            .query_opt("SELECT password_hash FROM users WHERE id = $1", &[&user_id])
            .await
            .map_err(pg(op))?;
        Ok(row.map(|r| r.get(0)))
    }

    pub(super) async fn record_usage(&self, u: UsageRecord) -> Result<(), StoreError> {
        let op = "recording usage";
        let client = self.client(op).await?;
        client
            .execute(
                "INSERT INTO usage_records (at, org_id, user_id, device_id, method, route, status, bytes_in, bytes_out, micros)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                &[&u.at, &u.org_id, &u.user_id, &u.device_id, &u.method, &u.route, &u.status, &u.bytes_in, &u.bytes_out, &u.micros],
            )
            .await
            .map(|_| ())
            .map_err(pg(op))
    }

    pub(super) async fn usage(
        &self,
        org_id: i64,
        from: i64,
        to: i64,
        by: UsageKey,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let op = "summing usage";
        let client = self.client(op).await?;
        let sql = format!(
            "SELECT {key}, count(*)::BIGINT, coalesce(sum(bytes_in), 0)::BIGINT, coalesce(sum(bytes_out), 0)::BIGINT, coalesce(sum(micros), 0)::BIGINT
             FROM usage_records WHERE org_id = $1 AND at >= $2 AND at < $3
             GROUP BY 1 ORDER BY 1",
            key = by.column()
        );
        let rows = client
            .query(&sql, &[&org_id, &from, &to])
            .await
            .map_err(pg(op))?;
        Ok(rows
            .into_iter()
            .map(|r| UsageRow {
                key: r.get(0),
                requests: r.get(1),
                bytes_in: r.get(2),
                bytes_out: r.get(3),
                micros: r.get(4),
            })
            .collect())
    }

    pub(super) async fn set_disabled(
        &self,
        user_id: i64,
        disabled: bool,
    ) -> Result<(), StoreError> {
        let op = "disabling a user";
        let mut client = self.client(op).await?;
        let tx = client.transaction().await.map_err(pg(op))?;
        tx.execute(
            "UPDATE users SET disabled = $2 WHERE id = $1",
            &[&user_id, &disabled],
        )
        .await
        .map_err(pg(op))?;
        if disabled {
            tx.execute(
                "UPDATE sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
                &[&user_id, &now_unix()],
            )
            .await
            .map_err(pg(op))?;
        }
        tx.commit().await.map_err(pg(op))
    }
}

/// The columns of [`AUDIT_COLUMNS`] as an audit row.
fn audit_row(r: &tokio_postgres::Row) -> AuditRow {
    AuditRow {
        id: r.get(0),
        at: r.get(1),
        event: AuditEvent {
            org_id: r.get(2),
            actor: r.get(3),
            action: r.get(4),
            details: r.get(5),
        },
        prev_hash: r.get(6),
        hash: r.get(7),
        mac: r.get(8),
    }
}
