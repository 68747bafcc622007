//! The vault's catalog: which apps exist, their random ids and the random
//! names of their database files. It is itself a SQLCipher database
//! (`catalog.db`), keyed with the vault's `catalog` subkey, so that app names
//! never reach the disk in the clear.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand_core::{CryptoRng, RngCore};
use rusqlite::{params, Connection, OptionalExtension};

use crate::app::{AppInfo, Capabilities};
use crate::error::{Error, Result};
use crate::secret::Subkey;
use crate::store::database;

/// File name of the catalog inside the vault directory.
pub(crate) const CATALOG_FILE: &str = "catalog.db";
/// Directory of the apps' database files inside the vault directory.
pub(crate) const DATA_DIR: &str = "data";
const SCHEMA_VERSION: i64 = 2;

/// Version 2: the vault's own settings (enrollment with a control plane).
const SETTINGS_TABLE: &str = "CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
) STRICT;";

pub(crate) struct Catalog {
    conn: Connection,
    vault_dir: PathBuf,
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn random_hex(rng: &mut (impl RngCore + CryptoRng)) -> Result<String> {
    let mut bytes = [0u8; 16];
    rng.try_fill_bytes(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Catalog {
    /// Opens the catalog of the vault in `vault_dir`, creating it on first use.
    pub(crate) fn open(vault_dir: &Path, key: &Subkey) -> Result<Self> {
        let conn = database::open(&vault_dir.join(CATALOG_FILE), key, true)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| Error::database("reading the catalog", e))?;
        if version == 0 {
            conn.execute_batch(&format!(
                "BEGIN;
                 CREATE TABLE apps (
                     name TEXT PRIMARY KEY,
                     app_id TEXT NOT NULL UNIQUE,
                     db_file TEXT NOT NULL UNIQUE,
                     capabilities INTEGER NOT NULL,
                     created_at INTEGER NOT NULL
                 ) STRICT;
                 {SETTINGS_TABLE}
                 PRAGMA user_version = {SCHEMA_VERSION};
                 COMMIT;"
            ))
            .map_err(|e| Error::database("creating the catalog", e))?;
        } else if version == 1 {
            conn.execute_batch(&format!(
                "BEGIN;
                 {SETTINGS_TABLE}
                 PRAGMA user_version = {SCHEMA_VERSION};
                 COMMIT;"
            ))
            .map_err(|e| Error::database("upgrading the catalog", e))?;
        } else if version != SCHEMA_VERSION {
            return Err(Error::UnsupportedStoreVersion {
                store: "catalog",
                version,
            });
        }
        Ok(Catalog {
            conn,
            vault_dir: vault_dir.to_owned(),
        })
    }

    /// Writes a copy of the catalog under `key` to `path` (rotation).
    pub(crate) fn snapshot(&self, path: &Path, key: &Subkey) -> Result<()> {
        database::snapshot(&self.conn, path, key.expose_secret())
    }

    /// Path of an app's database file.
    pub(crate) fn database_path(&self, app: &AppInfo) -> PathBuf {
        self.vault_dir.join(DATA_DIR).join(&app.db_file)
    }

    /// A new app's catalog entry (random id and database file name), not yet
    /// recorded.
    pub(crate) fn new_app(
        name: &str,
        capabilities: Capabilities,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<AppInfo> {
        crate::app::validate_app_name(name)?;
        Ok(AppInfo {
            name: name.to_owned(),
            id: random_hex(rng)?,
            db_file: format!("{}.db", random_hex(rng)?),
            capabilities,
            created_at: now_unix(),
        })
    }

    /// Records a new app; [`Error::AppExists`] if the name is taken.
    pub(crate) fn insert(&self, app: &AppInfo) -> Result<()> {
        let inserted = self
            .conn
            .execute(
                "INSERT INTO apps (name, app_id, db_file, capabilities, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (name) DO NOTHING",
                params![
                    app.name,
                    app.id,
                    app.db_file,
                    app.capabilities.bits(),
                    app.created_at
                ],
            )
            .map_err(|e| Error::database("adding an app", e))?;
        if inserted == 0 {
            return Err(Error::AppExists {
                name: app.name.clone(),
            });
        }
        Ok(())
    }

    pub(crate) fn add(
        &self,
        name: &str,
        capabilities: Capabilities,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<AppInfo> {
        let app = Self::new_app(name, capabilities, rng)?;
        self.insert(&app)?;
        Ok(app)
    }

    /// Whether an app of this name exists.
    pub(crate) fn contains(&self, name: &str) -> Result<bool> {
        match self.get(name) {
            Ok(_) => Ok(true),
            Err(Error::NoSuchApp { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn list(&self) -> Result<Vec<AppInfo>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT name, app_id, db_file, capabilities, created_at FROM apps ORDER BY name",
            )
            .map_err(|e| Error::database("listing apps", e))?;
        let rows = stmt
            .query_map([], row_to_app)
            .map_err(|e| Error::database("listing apps", e))?;
        rows.map(|r| r.map_err(|e| Error::database("listing apps", e)))
            .collect()
    }

    pub(crate) fn get(&self, name: &str) -> Result<AppInfo> {
        self.conn
            .query_row(
                "SELECT name, app_id, db_file, capabilities, created_at FROM apps WHERE name = ?1",
                [name],
                row_to_app,
            )
            .optional()
            .map_err(|e| Error::database("finding an app", e))?
            .ok_or_else(|| Error::NoSuchApp { name: name.into() })
    }

    pub(crate) fn set_capabilities(&self, name: &str, capabilities: Capabilities) -> Result<()> {
        let changed = self
            .conn
            .execute(
                "UPDATE apps SET capabilities = ?2 WHERE name = ?1",
                params![name, capabilities.bits()],
            )
            .map_err(|e| Error::database("changing capabilities", e))?;
        if changed == 0 {
            return Err(Error::NoSuchApp { name: name.into() });
        }
        Ok(())
    }
}

impl Catalog {
    /// A setting of the vault.
    pub(crate) fn setting(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.conn
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| Error::database("reading a setting", e))
    }

    /// The keys of the settings starting with `prefix`, in order.
    pub(crate) fn setting_keys(&self, prefix: &str) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT key FROM settings WHERE substr(key, 1, length(?1)) = ?1 ORDER BY key")
            .map_err(|e| Error::database("listing settings", e))?;
        let rows = stmt
            .query_map([prefix], |r| r.get(0))
            .map_err(|e| Error::database("listing settings", e))?;
        rows.map(|r| r.map_err(|e| Error::database("listing settings", e)))
            .collect()
    }

    /// Sets (or, with `None`, removes) a setting of the vault.
    pub(crate) fn set_setting(&self, key: &str, value: Option<&[u8]>) -> Result<()> {
        match value {
            Some(value) => self.conn.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            ),
            None => self
                .conn
                .execute("DELETE FROM settings WHERE key = ?1", [key]),
        }
        .map(|_| ())
        .map_err(|e| Error::database("writing a setting", e))
    }
}

fn row_to_app(row: &rusqlite::Row<'_>) -> rusqlite::Result<AppInfo> {
    Ok(AppInfo {
        name: row.get(0)?,
        id: row.get(1)?,
        db_file: row.get(2)?,
        capabilities: Capabilities::from_bits(row.get(3)?),
        created_at: row.get(4)?,
    })
}

/// Unix seconds to a `SystemTime` (negative times clamp to the epoch).
/// Clamped to 9999-12-31: times come from files an attacker may have
/// crafted, and later dates break RFC 3339 formatting.
pub(crate) fn to_system_time(secs: i64) -> SystemTime {
    const MAX_SECS: u64 = 253_402_300_799;
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0).min(MAX_SECS))
}

/// The settings key that marks an app's old files for erasure (a purge
/// interrupted before they were gone is finished at the next purge).
pub(crate) const PURGE_PREFIX: &str = "purge:";

impl Catalog {
    /// Gives the app `name` a new random id and database file, in one
    /// transaction with a note of the old file (under [`PURGE_PREFIX`]), and
    /// pushes the old id out of the catalog's files (secure delete, WAL
    /// truncated): from the commit on, nothing on the disk derives the old
    /// database's key. Returns the old and the new entry.
    pub(crate) fn renew_app(
        &mut self,
        name: &str,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(AppInfo, AppInfo)> {
        let old = self.get(name)?;
        let mut new = Self::new_app(name, old.capabilities, rng)?;
        new.created_at = old.created_at;
        let op = |e| Error::database("purging an app", e);
        let tx = self.conn.transaction().map_err(op)?;
        tx.execute(
            "UPDATE apps SET app_id = ?2, db_file = ?3 WHERE name = ?1",
            params![name, new.id, new.db_file],
        )
        .map_err(op)?;
        tx.execute(
            "INSERT OR REPLACE INTO settings (key, value) VALUES (?1, ?2)",
            params![format!("{PURGE_PREFIX}{}", old.db_file), b"1".as_slice()],
        )
        .map_err(op)?;
        tx.commit().map_err(op)?;
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(op)?;
        Ok((old, new))
    }
}
