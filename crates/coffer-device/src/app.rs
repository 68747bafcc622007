//! Apps: the unit of isolation inside a vault.
//!
//! Each app has a random id, its own subkeys (HKDF with that id) and its own
//! encrypted database. An [`App`] handle exposes only the stores its
//! [`Capabilities`] grant; asking for another is
//! [`Error::CapabilityDenied`]. For now capabilities are set locally (`coffer
//! app add --allow …`); the organization's signed policy will set them later.

use std::time::SystemTime;

use std::io::{self, Read, Seek, Write};

use rand_core::RngCore;
use rusqlite::Connection;
use serde_json::json;
use zeroize::Zeroizing;

use crate::archive::{ArchiveErrorKind, ArchiveReader, ArchiveWriter, EntryKind};
use crate::error::{Error, Result};
use crate::kdf::KdfParams;
use crate::secret::Passphrase;
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

    /// These capabilities without `c`.
    pub fn without(self, c: Capability) -> Self {
        Capabilities(self.0 & !c.bit())
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

/// The directory of an app's blobs: `files/<stem of its database file>/`.
pub(crate) fn files_dir(vault_dir: &std::path::Path, app: &AppInfo) -> std::path::PathBuf {
    vault_dir
        .join(FILES_DIR)
        .join(app.db_file.trim_end_matches(".db"))
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportSummary {
    /// Stored files in the archive.
    pub files: usize,
    /// Plaintext bytes (database snapshot and files).
    pub bytes: u64,
}

/// Reads an archive into a new app of `vault`: all or nothing.
pub(crate) fn import(
    vault: &UnlockedVault,
    catalog: &Catalog,
    input: impl Read + Seek,
    passphrase: &Passphrase,
    rename: Option<&str>,
    progress: &mut dyn FnMut(u64),
) -> Result<AppInfo> {
    let mut archive = ArchiveReader::open(input, passphrase, &crate::KdfLimits::default())?;
    let manifest = archive.next_entry()?;
    if manifest.kind != EntryKind::Manifest {
        return Err(Error::InvalidArchive(ArchiveErrorKind::Invalid(
            "the manifest must come first",
        )));
    }
    let name = match rename {
        Some(name) => name.to_owned(),
        None => manifest.meta["app"]
            .as_str()
            .ok_or(Error::InvalidArchive(ArchiveErrorKind::Invalid(
                "manifest names no app",
            )))?
            .to_owned(),
    };
    let mut capabilities = Capabilities::none();
    for c in manifest.meta["capabilities"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(c) = c.as_str().and_then(|c| c.parse::<Capability>().ok()) {
            capabilities = capabilities.with(c);
        }
    }
    if catalog.contains(&name)? {
        return Err(Error::AppExists { name });
    }
    let info = Catalog::new_app(&name, capabilities, &mut rand_core::OsRng)?;
    let db_path = catalog.database_path(&info);
    let files_dir = files_dir(vault.vault().path(), &info);
    let result = (|| -> Result<()> {
        let db = archive.next_entry()?;
        if db.kind != EntryKind::Database {
            return Err(Error::InvalidArchive(ArchiveErrorKind::Invalid(
                "the database must come second",
            )));
        }
        let key_hex = Zeroizing::new(db.meta["key"].as_str().unwrap_or("").to_owned());
        let mut snapshot_key = Zeroizing::new([0u8; 32]);
        if key_hex.len() != 64 || !key_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::InvalidArchive(ArchiveErrorKind::Invalid(
                "bad snapshot key",
            )));
        }
        for (i, byte) in snapshot_key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&key_hex[2 * i..2 * i + 2], 16).map_err(|_| {
                Error::InvalidArchive(ArchiveErrorKind::Invalid("bad snapshot key"))
            })?;
        }
        crate::fsio::create_private_file(&db_path)?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&db_path)
            .map_err(|e| Error::io("importing", &db_path, e))?;
        let copied = io::copy(&mut archive.data(), &mut file)
            .map_err(|e| Error::from_read("importing", e))?;
        file.sync_all()
            .map_err(|e| Error::io("importing", &db_path, e))?;
        drop(file);
        progress(copied);
        database::rekey(
            &db_path,
            &snapshot_key,
            &vault.subkey(Purpose::AppDatabase(&info.id))?,
        )?;

        let conn = database::open(
            &db_path,
            &vault.subkey(Purpose::AppDatabase(&info.id))?,
            false,
        )?;
        // The snapshot is foreign input: no trigger or view of it may touch
        // coffer's own tables, and its file rows (which name the source
        // vault's blobs) go with the table.
        let hooked: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type IN ('trigger', 'view')
                 AND instr(lower(coalesce(sql, '') || ' ' || tbl_name), 'coffer_') > 0",
                [],
                |r| r.get(0),
            )
            .map_err(|e| Error::database("importing", e))?;
        if hooked > 0 {
            return Err(Error::InvalidArchive(ArchiveErrorKind::Invalid(
                "the database snapshot has triggers or views on coffer's tables",
            )));
        }
        // The sync state is the source store's (its origin, its cursor, the
        // server's sides): an imported app starts its own, its records all
        // pending as this store's changes (the backfill at first open).
        conn.execute_batch(
            "DROP TABLE IF EXISTS coffer_files;
             DROP TABLE IF EXISTS coffer_file_downloads;
             DROP TABLE IF EXISTS coffer_file_queue;
             DROP TABLE IF EXISTS coffer_sync_meta;
             DROP TABLE IF EXISTS coffer_sync_records;
             DROP TABLE IF EXISTS coffer_sync_sides;",
        )
        .map_err(|e| Error::database("importing", e))?;
        let files = FileStore::open(
            conn,
            files_dir.clone(),
            vault.subkey(Purpose::AppFiles(&info.id))?,
        )?;
        let mut done = copied;
        loop {
            let entry = archive.next_entry()?;
            match entry.kind {
                EntryKind::End => break,
                EntryKind::File => {
                    let content_type = entry.meta["content_type"].as_str().map(str::to_owned);
                    let stored = files.put(
                        &entry.name,
                        &mut archive.data(),
                        content_type.as_deref(),
                        &mut |_| {},
                    )?;
                    if stored.size != entry.data_len {
                        return Err(Error::InvalidArchive(ArchiveErrorKind::Invalid(
                            "file entry cut short",
                        )));
                    }
                    done += entry.data_len;
                    progress(done);
                }
                _ => {
                    return Err(Error::InvalidArchive(ArchiveErrorKind::Invalid(
                        "unexpected entry",
                    )))
                }
            }
        }
        catalog.insert(&info)
    })();
    if result.is_err() {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db_path.display()));
        }
        let _ = std::fs::remove_dir_all(&files_dir);
    }
    result.map(|()| info)
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
        let key = self.vault.subkey(Purpose::AppDatabase(&self.info.id))?;
        database::open(&self.db_path, &key, true)
    }

    /// A connection to the app's own SQLCipher database, for its own schema.
    /// Tables named `coffer_*` belong to the key-value and record stores;
    /// what the connection refuses is [`crate::SQL_CONFINEMENT`], and
    /// [`crate::refused_by_confinement`] tells such a refusal apart.
    pub fn database(&self) -> Result<Connection> {
        self.require(Capability::Sql)?;
        let mut conn = self.open_database()?;
        database::confine_app_connection(&mut conn)?;
        Ok(conn)
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
        self.file_store()
    }

    /// Writes the whole app (its database and every stored file) to `out` as
    /// one archive protected by `passphrase` (docs/formats/app-archive.md).
    /// `progress` is called with the plaintext bytes written so far.
    pub fn export(
        &self,
        out: &mut dyn Write,
        passphrase: &Passphrase,
        kdf: &KdfParams,
        progress: &mut dyn FnMut(u64),
    ) -> Result<ExportSummary> {
        self.require(Capability::Export)?;
        let mut archive = ArchiveWriter::new(out, passphrase, kdf)?;
        let manifest = json!({
            "app": self.info.name,
            "capabilities": self.info.capabilities.iter().map(Capability::name).collect::<Vec<_>>(),
        });
        archive.entry(EntryKind::Manifest, "", &manifest, 0, &mut io::empty())?;

        let conn = self.open_database()?;
        let snapshot_path = self
            .db_path
            .with_file_name(format!(".{}.export.tmp", crate::fsio::random_suffix()?));
        let mut snapshot_key = Zeroizing::new([0u8; 32]);
        rand_core::OsRng.try_fill_bytes(snapshot_key.as_mut())?;
        let mut done = 0u64;
        let written = (|| -> Result<()> {
            database::snapshot(&conn, &snapshot_path, &snapshot_key)?;
            let mut file = std::fs::File::open(&snapshot_path)
                .map_err(|e| Error::io("exporting", &snapshot_path, e))?;
            let len = file
                .metadata()
                .map_err(|e| Error::io("exporting", &snapshot_path, e))?
                .len();
            let key_hex = Zeroizing::new(
                snapshot_key
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>(),
            );
            archive.entry(
                EntryKind::Database,
                "",
                &json!({"key": key_hex.as_str()}),
                len,
                &mut file,
            )?;
            done += len;
            progress(done);
            Ok(())
        })();
        let _ = std::fs::remove_file(&snapshot_path);
        written?;

        let files = self.file_store()?;
        let mut count = 0;
        for info in files.list()? {
            let mut reader = files.open_file(&info.name)?;
            // The length of the blob actually opened, not of the listing: a
            // file replaced in between is exported whole.
            let size = reader.len();
            let meta = json!({"content_type": info.content_type});
            archive.entry(EntryKind::File, &info.name, &meta, size, &mut reader)?;
            done += size;
            count += 1;
            progress(done);
        }
        archive.finish()?;
        self.vault.record(
            "app_exported",
            json!({"app": self.info.name, "files": count, "bytes": done}),
        )?;
        Ok(ExportSummary {
            files: count,
            bytes: done,
        })
    }

    fn file_store(&self) -> Result<FileStore> {
        let dir = files_dir(self.vault.vault().path(), &self.info);
        FileStore::open(
            self.open_database()?,
            dir,
            self.vault.subkey(Purpose::AppFiles(&self.info.id))?,
        )
    }

    /// The app's record store.
    pub fn records(&self) -> Result<RecordStore> {
        self.require(Capability::Records)?;
        // A record references files only where the app may use them.
        let files = if self.info.capabilities.allows(Capability::Files) {
            Some(crate::store::records::FileAccess {
                dir: files_dir(self.vault.vault().path(), &self.info),
                key: self.vault.subkey(Purpose::AppFiles(&self.info.id))?,
            })
        } else {
            None
        };
        RecordStore::open(
            self.open_database()?,
            self.vault.opened_slot_name(),
            self.info.name.clone(),
            files,
        )
    }
}
