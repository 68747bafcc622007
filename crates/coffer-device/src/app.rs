//! Apps: the unit of isolation inside a vault.
//!
//! Each app has a random id, its own subkeys (HKDF with that id) and its own
//! encrypted database. An [`App`] handle exposes only the stores its
//! [`Capabilities`] grant; asking for another is
//! [`Error::CapabilityDenied`]. For now capabilities are set locally (`coffer
//! app add --allow …`); the organization's signed policy will set them later.

use std::time::SystemTime;

use rusqlite::Connection;

use crate::error::{Error, Result};
use crate::store::catalog::{self, Catalog};
use crate::store::database;
use crate::store::files::FileStore;
use crate::store::kv::KvStore;
use crate::store::records::RecordStore;
use crate::subkey::Purpose;
use crate::vault::UnlockedVault;

/// Directory of the apps' encrypted blobs inside the vault directory.
pub(crate) const FILES_DIR: &str = "files";

/// One thing an app may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Capability {
    /// Run its own SQL on its database.
    Sql,
    /// Use the key-value store.
    Kv,
    /// Use the record store.
    Records,
    /// Use the file store.
    Files,
    /// Export its data.
    Export,
}

const ALL: [Capability; 5] = [
    Capability::Sql,
    Capability::Kv,
    Capability::Records,
    Capability::Files,
    Capability::Export,
];

impl Capability {
    /// The name used in the CLI, JSON and policies.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Sql => "sql",
            Capability::Kv => "kv",
            Capability::Records => "records",
            Capability::Files => "files",
            Capability::Export => "export",
        }
    }

    fn bit(self) -> i64 {
        1 << (self as u8)
    }
}

impl std::str::FromStr for Capability {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ALL.into_iter()
            .find(|c| c.name() == s)
            .ok_or(Error::InvalidName {
                what: "capability",
                name: s.escape_debug().to_string(),
                rule: "must be one of sql, kv, records, files, export",
            })
    }
}

/// The set of capabilities granted to an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Capabilities(i64);

impl Capabilities {
    /// Every capability.
    pub fn all() -> Self {
        Capabilities(ALL.iter().map(|c| c.bit()).sum())
    }

    /// No capability.
    pub fn none() -> Self {
        Capabilities(0)
    }

    /// These capabilities and `c`.
    pub fn with(self, c: Capability) -> Self {
        Capabilities(self.0 | c.bit())
    }

    /// Whether `c` is granted.
    pub fn allows(self, c: Capability) -> bool {
        self.0 & c.bit() != 0
    }

    /// The granted capabilities, in a fixed order.
    pub fn iter(self) -> impl Iterator<Item = Capability> {
        ALL.into_iter().filter(move |c| self.allows(*c))
    }

    pub(crate) fn bits(self) -> i64 {
        self.0
    }

    /// Unknown bits (from a newer coffer) are dropped: never granted.
    pub(crate) fn from_bits(bits: i64) -> Self {
        Capabilities(bits & Capabilities::all().0)
    }
}

/// An app as the catalog records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppInfo {
    /// Unique name within the vault.
    pub name: String,
    /// Random id: the subkeys of the app are derived from it, so an app
    /// removed and added again under the same name gets new keys.
    pub id: String,
    /// Random file name of the app's database (under `data/`).
    pub(crate) db_file: String,
    /// What the app may do.
    pub capabilities: Capabilities,
    pub(crate) created_at: i64,
}

impl AppInfo {
    /// When the app was added.
    pub fn created_at(&self) -> SystemTime {
        catalog::to_system_time(self.created_at)
    }
}

/// Checks an app name: the same rule as vault names (1 to 64 of
/// `a-z 0-9 . _ -`, starting with a letter or digit).
pub fn validate_app_name(name: &str) -> Result<()> {
    crate::space::validate_vault_name(name).map_err(|e| match e {
        Error::InvalidName { name, rule, .. } => Error::InvalidName {
            what: "app name",
            name,
            rule,
        },
        other => other,
    })
}

/// A handle on one app of an unlocked vault.
pub struct App<'v> {
    vault: &'v UnlockedVault,
    info: AppInfo,
    db_path: std::path::PathBuf,
}

impl std::fmt::Debug for App<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl<'v> App<'v> {
    pub(crate) fn new(vault: &'v UnlockedVault, catalog: &Catalog, info: AppInfo) -> Self {
        let db_path = catalog.database_path(&info);
        App {
            vault,
            info,
            db_path,
        }
    }

    /// What the catalog records about this app.
    pub fn info(&self) -> &AppInfo {
        &self.info
    }

    fn require(&self, capability: Capability) -> Result<()> {
        if self.info.capabilities.allows(capability) {
            Ok(())
        } else {
            Err(Error::CapabilityDenied {
                app: self.info.name.clone(),
                capability: capability.name(),
            })
        }
    }

    /// Opens the app's encrypted database (created on first use).
    fn open_database(&self) -> Result<Connection> {
        let key = self.vault.subkey(Purpose::AppDatabase(&self.info.id));
        database::open(&self.db_path, &key, true)
    }

    /// A connection to the app's own SQLCipher database, for its own schema.
    /// Tables named `coffer_*` belong to the key-value and record stores.
    pub fn database(&self) -> Result<Connection> {
        self.require(Capability::Sql)?;
        self.open_database()
    }

    /// The app's key-value store.
    pub fn kv(&self) -> Result<KvStore> {
        self.require(Capability::Kv)?;
        KvStore::open(self.open_database()?)
    }

    /// The app's file store. Blobs live under `files/<id of the app's
    /// database file>/` in the vault directory, under random names.
    pub fn files(&self) -> Result<FileStore> {
        self.require(Capability::Files)?;
        let stem = self.info.db_file.trim_end_matches(".db");
        let dir = self.vault.vault().path().join(FILES_DIR).join(stem);
        FileStore::open(
            self.open_database()?,
            dir,
            self.vault.subkey(Purpose::AppFiles(&self.info.id)),
        )
    }

    /// The app's record store.
    pub fn records(&self) -> Result<RecordStore> {
        self.require(Capability::Records)?;
        RecordStore::open(self.open_database()?)
    }
}
