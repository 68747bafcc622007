//! The whole-vault check (`coffer verify --deep`, as `restic check` or
//! `borg check`): every database page, every chunk of every stored file,
//! the audit chain, and the catalog against what is on disk.
//!
//! Unlocking already proves the header (its checksum and MAC). This reads
//! everything else once and reports each problem instead of stopping at the
//! first: a damaged file does not hide a damaged database. It writes no
//! data (every database is read with `query_only`; SQLite's own `-wal`
//! and `-shm` files come and go as at any open); `FileStore::remove_orphans`
//! is what deletes leftovers.

use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use crate::app::{files_dir, AppInfo, FILES_DIR};
use crate::store::catalog::{CATALOG_FILE, DATA_DIR};
use crate::store::database;
use crate::subkey::Purpose;
use crate::vault::UnlockedVault;
use crate::{Error, Result};

/// Most problems reported of one database (SQLite's own check stops at
/// 100 too): a destroyed file must not make a report of millions of lines.
const MAX_PROBLEMS_PER_DATABASE: usize = 100;

/// What kind of problem the check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// A database whose pages fail SQLCipher's authentication or SQLite's
    /// integrity check, or that does not open.
    DatabaseDamaged,
    /// An app the catalog lists whose database file is not on disk.
    DatabaseMissing,
    /// A stored file whose blob fails authentication (a chunk changed,
    /// cut, swapped or rolled back).
    FileDamaged,
    /// A stored file whose blob is not on disk.
    FileMissing,
    /// The audit log's chain is broken (an entry altered, removed, swapped,
    /// or the log cut).
    AuditChain,
    /// A file no database refers to (left by a crash, or put there).
    Orphan,
    /// A temporary file of a write that never finished.
    LeftoverTemporary,
}

impl ProblemKind {
    /// A stable name, for scripts.
    pub fn code(&self) -> &'static str {
        match self {
            ProblemKind::DatabaseDamaged => "database_damaged",
            ProblemKind::DatabaseMissing => "database_missing",
            ProblemKind::FileDamaged => "file_damaged",
            ProblemKind::FileMissing => "file_missing",
            ProblemKind::AuditChain => "audit_chain",
            ProblemKind::Orphan => "orphan",
            ProblemKind::LeftoverTemporary => "leftover_temporary",
        }
    }

    /// Whether the problem is damage to data (as opposed to a leftover that
    /// only takes space).
    pub fn is_damage(&self) -> bool {
        !matches!(self, ProblemKind::Orphan | ProblemKind::LeftoverTemporary)
    }
}

/// One problem: what, where (a path inside the vault directory, with the
/// app and file it holds where known) and SQLite's or the reader's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What kind.
    pub kind: ProblemKind,
    /// Where, e.g. `data/3f…a1.db (app 'notes')`.
    pub place: String,
    /// What was found.
    pub detail: String,
}

/// What the check read, and what it found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Databases checked page by page (the catalog and one per app).
    pub databases: usize,
    /// Stored files read to the end.
    pub files: usize,
    /// Bytes read: database files and stored files' plaintext.
    pub bytes: u64,
    /// Audit entries whose chain checked out.
    pub audit_entries: usize,
    /// Every problem found, in the order found.
    pub problems: Vec<Problem>,
}

impl CheckReport {
    /// Whether nothing at all was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    fn found(&mut self, kind: ProblemKind, place: impl Into<String>, detail: impl Into<String>) {
        self.problems.push(Problem {
            kind,
            place: place.into(),
            detail: detail.into(),
        });
    }
}

/// Progress of a check: bytes read so far of the total to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckProgress {
    /// Bytes read.
    pub done: u64,
    /// Bytes to read in all.
    pub total: u64,
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// SQLCipher's page authentication, then SQLite's structural check; the
/// problems in their words.
fn database_problems(conn: &Connection) -> std::result::Result<Vec<String>, rusqlite::Error> {
    let mut found = Vec::new();
    // One row per page whose HMAC fails; none when every page is authentic.
    let mut stmt = conn.prepare("PRAGMA cipher_integrity_check")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        if found.len() < MAX_PROBLEMS_PER_DATABASE {
            found.push(row.get::<_, String>(0)?);
        }
    }
    if !found.is_empty() {
        // The structure of pages that fail authentication means nothing.
        return Ok(found);
    }
    let mut stmt = conn.prepare(&format!(
        "PRAGMA integrity_check({MAX_PROBLEMS_PER_DATABASE})"
    ))?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let line: String = row.get(0)?;
        if line != "ok" {
            found.push(line);
        }
    }
    Ok(found)
}

/// Where the files of a vault are, relative to its directory, for a report.
fn relative(vault_dir: &Path, path: &Path) -> String {
    path.strip_prefix(vault_dir)
        .unwrap_or(path)
        .display()
        .to_string()
}

struct Checker<'a> {
    vault: &'a UnlockedVault,
    dir: PathBuf,
    report: CheckReport,
    total: u64,
    progress: &'a mut dyn FnMut(CheckProgress),
}

impl Checker<'_> {
    fn advance(&mut self, bytes: u64) {
        self.report.bytes += bytes;
        (self.progress)(CheckProgress {
            done: self.report.bytes,
            total: self.total.max(self.report.bytes),
        });
    }

    /// Opens and checks one database; the connection when it opened.
    fn database(&mut self, path: &Path, purpose: Purpose<'_>, label: &str) -> Option<Connection> {
        let place = format!("{}{label}", relative(&self.dir, path));
        if !path.exists() {
            self.report.found(
                ProblemKind::DatabaseMissing,
                place,
                "the file is not on disk",
            );
            return None;
        }
        self.report.databases += 1;
        let opened = self
            .vault
            .subkey(purpose)
            .and_then(|key| database::open(path, &key, false));
        // Reads only: the check writes nothing to the databases it reads.
        let opened = opened.and_then(|conn| {
            conn.execute_batch("PRAGMA query_only = ON")
                .map(|()| conn)
                .map_err(|e| Error::database("checking", e))
        });
        let conn = match opened {
            Ok(conn) => conn,
            Err(e) => {
                self.report.found(
                    ProblemKind::DatabaseDamaged,
                    place,
                    format!("does not open: {e}"),
                );
                self.advance(file_len(path));
                return None;
            }
        };
        match database_problems(&conn) {
            Ok(lines) if lines.is_empty() => {}
            Ok(lines) => self
                .report
                .found(ProblemKind::DatabaseDamaged, place, lines.join("; ")),
            Err(e) => self.report.found(
                ProblemKind::DatabaseDamaged,
                place,
                Error::database("checking", e).to_string(),
            ),
        }
        self.advance(file_len(path));
        Some(conn)
    }

    fn app(&mut self, app: &AppInfo, db_path: &Path) {
        let label = format!(" (app '{}')", app.name);
        let Some(conn) = self.database(db_path, Purpose::AppDatabase(&app.id), &label) else {
            return;
        };
        let dir = files_dir(&self.dir, app);
        let stored = match stored_files(&conn) {
            Ok(stored) => stored,
            // No coffer_files table: the app never stored a file.
            Err(e) if e.to_string().contains("no such table") => Stored::default(),
            Err(e) => {
                let place = format!("{}{label}", relative(&self.dir, db_path));
                let detail = Error::database("listing stored files", e).to_string();
                self.report
                    .found(ProblemKind::DatabaseDamaged, place, detail);
                return;
            }
        };
        let key = match self.vault.subkey(Purpose::AppFiles(&app.id)) {
            Ok(key) => key,
            Err(e) => {
                self.report
                    .found(ProblemKind::FileDamaged, label, e.to_string());
                return;
            }
        };
        let mut known = HashSet::new();
        for file in &stored.files {
            known.insert(file.blob.clone());
            let place = format!(
                "files/{}/{}{label}, file '{}'",
                dir_name(&dir),
                file.blob,
                file.name
            );
            match crate::store::files::open_blob(&dir, &key, &file.blob, &file.salt, file.size) {
                Ok(mut reader) => {
                    self.report.files += 1;
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match reader.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => self.advance(n as u64),
                            Err(e) => {
                                self.report
                                    .found(ProblemKind::FileDamaged, place, e.to_string());
                                break;
                            }
                        }
                    }
                }
                Err(Error::FileCorrupt(crate::stream::FileCorruptKind::Missing)) => {
                    self.report.found(
                        ProblemKind::FileMissing,
                        place,
                        "the stored blob is missing",
                    )
                }
                Err(e) => self
                    .report
                    .found(ProblemKind::FileDamaged, place, e.to_string()),
            }
        }
        known.extend(stored.downloads.iter().cloned());
        self.leftovers(&dir, &known, &label);
    }

    /// Files in an app's blob directory that no row names.
    fn leftovers(&mut self, dir: &Path, known: &HashSet<String>, label: &str) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if known.contains(&name) {
                continue;
            }
            let place = format!("{}{label}", relative(&self.dir, &entry.path()));
            if name.starts_with('.') && (name.ends_with(".tmp") || name.ends_with(".download")) {
                self.report.found(
                    ProblemKind::LeftoverTemporary,
                    place,
                    "an unfinished write (FileStore::remove_orphans deletes it)",
                );
            } else {
                self.report
                    .found(ProblemKind::Orphan, place, "no stored file refers to it");
            }
        }
    }

    /// Databases under `data/` and blob directories under `files/` that no
    /// app of the catalog owns.
    fn unowned(&mut self, apps: &[AppInfo]) {
        let databases: HashSet<String> = apps.iter().map(|a| a.db_file.clone()).collect();
        if let Ok(entries) = fs::read_dir(self.dir.join(DATA_DIR)) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let base = ["-wal", "-shm", "-journal"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(&name);
                if !databases.contains(base) {
                    let place = relative(&self.dir, &entry.path());
                    self.report
                        .found(ProblemKind::Orphan, place, "no app of the catalog owns it");
                }
            }
        }
        let dirs: HashSet<String> = apps
            .iter()
            .map(|a| a.db_file.trim_end_matches(".db").to_owned())
            .collect();
        if let Ok(entries) = fs::read_dir(self.dir.join(FILES_DIR)) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !dirs.contains(&name) {
                    let place = relative(&self.dir, &entry.path());
                    self.report
                        .found(ProblemKind::Orphan, place, "no app of the catalog owns it");
                }
            }
        }
    }
}

fn dir_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

struct StoredFile {
    name: String,
    blob: String,
    salt: String,
    size: i64,
}

#[derive(Default)]
struct Stored {
    files: Vec<StoredFile>,
    /// The temporary file names of recorded downloads.
    downloads: Vec<String>,
}

fn stored_files(conn: &Connection) -> rusqlite::Result<Stored> {
    let mut stmt = conn.prepare("SELECT name, blob, salt, size FROM coffer_files ORDER BY name")?;
    let files = stmt
        .query_map([], |r| {
            Ok(StoredFile {
                name: r.get(0)?,
                blob: r.get(1)?,
                salt: r.get(2)?,
                size: r.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let downloads = match conn.prepare("SELECT temp FROM coffer_file_downloads") {
        Ok(mut stmt) => stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?
            .iter()
            .map(|temp| crate::store::files::download_file(temp))
            .collect(),
        Err(_) => Vec::new(),
    };
    Ok(Stored { files, downloads })
}

/// The stored files' total plaintext size, for the progress total.
fn stored_bytes(conn: &Connection) -> u64 {
    conn.query_row("SELECT coalesce(sum(size), 0) FROM coffer_files", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|n| u64::try_from(n).unwrap_or(0))
    .unwrap_or(0)
}

impl UnlockedVault {
    /// Reads the whole vault and reports every problem found
    /// (docs/formats/stores.md, "Checking a vault"). `progress` is called
    /// as bytes are read. Errors only when the check itself cannot run (a
    /// locked session, say): damage is in the report.
    ///
    /// Run it when no other process writes to the vault: a put in progress
    /// elsewhere shows as a leftover temporary file.
    pub fn check(&self, progress: &mut dyn FnMut(CheckProgress)) -> Result<CheckReport> {
        // A locked session is the caller's error, not damage to report.
        self.subkey(Purpose::Catalog)?;
        let dir = self.vault().path().to_owned();
        let mut checker = Checker {
            vault: self,
            dir: dir.clone(),
            report: CheckReport::default(),
            total: 0,
            progress,
        };
        let catalog_path = dir.join(CATALOG_FILE);
        let catalog = checker.database(&catalog_path, Purpose::Catalog, " (the catalog)");
        // The list of apps comes from the catalog: when it does not open,
        // the apps' databases cannot be found (their names are in it).
        let mut listed = catalog.is_some();
        let apps = match &catalog {
            Some(_) => match self.apps() {
                Ok(apps) => apps,
                Err(e) => {
                    checker.report.found(
                        ProblemKind::DatabaseDamaged,
                        format!("{CATALOG_FILE} (the catalog)"),
                        format!("its list of apps cannot be read: {e}"),
                    );
                    // Without the list, nothing on disk can be told an
                    // orphan, and the apps' data cannot be found.
                    listed = false;
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        let paths: Vec<PathBuf> = apps
            .iter()
            .map(|app| dir.join(DATA_DIR).join(&app.db_file))
            .collect();
        checker.total = file_len(&catalog_path)
            + paths.iter().map(|p| file_len(p)).sum::<u64>()
            + apps
                .iter()
                .zip(&paths)
                .filter_map(|(app, path)| {
                    let key = self.subkey(Purpose::AppDatabase(&app.id)).ok()?;
                    database::open(path, &key, false)
                        .ok()
                        .map(|c| stored_bytes(&c))
                })
                .sum::<u64>();
        for (app, path) in apps.iter().zip(&paths) {
            checker.app(app, path);
        }
        if listed {
            checker.unowned(&apps);
        }
        match self.audit() {
            Ok(trail) => {
                checker.report.audit_entries = trail.entries.len();
                if let Some(problem) = trail.problem {
                    checker
                        .report
                        .found(ProblemKind::AuditChain, "audit.log", problem.to_string());
                }
            }
            Err(e) => checker
                .report
                .found(ProblemKind::AuditChain, "audit.log", e.to_string()),
        }
        Ok(checker.report)
    }
}
