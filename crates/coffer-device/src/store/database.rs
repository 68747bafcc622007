//! SQLCipher databases opened with a raw key.
//!
//! Every database of a vault (its catalog, each app's database) is a
//! SQLCipher file keyed with a 256-bit subkey given as a raw key
//! (`PRAGMA key = "x'…'"`), so SQLCipher's own PBKDF2 never runs: the slow
//! KDF already ran once, when the vault was unlocked.
//!
//! Settings, and why (docs/formats/stores.md):
//! - AES-256-CBC per page and 4096-byte pages (SQLCipher 4's defaults), with
//!   HMAC-SHA256 per page instead of the default HMAC-SHA512: as strong a MAC
//!   (256-bit key and tag), and with the CPU's SHA extensions it cut random
//!   point reads from 3.0× to 2.1× plain SQLite here (a variant benchmark since folded into coffer-bench). The
//!   HMAC makes any changed page an error. Every open must set the same
//!   algorithm, so it is set here and nowhere else.
//! - `journal_mode = WAL`, `synchronous = FULL`: a crash never corrupts,
//!   and a commit is durable when it returns (the file store deletes an old
//!   blob right after switching its row, so the switch must not roll back),
//!   and the WAL is encrypted like the database. WAL also spares every read
//!   transaction SQLCipher's decryption of page 1 to check for changes: with
//!   it, point reads measured 1.57× plain SQLite on a quiet machine and 1.99×
//!   under load (the goal is 1.6×; docs/benchmarks.md).
//! - `temp_store = MEMORY`: temporary tables and sort spills never reach the
//!   disk in the clear.
//! - `foreign_keys = ON`, `secure_delete = ON`: deleted content is
//!   overwritten in the (encrypted) file.
//! - `cipher_log_level = NONE`, before the key: SQLCipher otherwise writes
//!   its own lines ("ERROR CORE sqlcipher_page_cipher: hmac check failed")
//!   to the process's stderr, ahead of the caller's error (and inside a
//!   `--json` error stream). The error itself still reaches the caller as
//!   [`Error::Database`]. For diagnosis, `COFFER_SQLCIPHER_LOG=ERROR` (or
//!   `WARN`, `INFO`, `DEBUG`, `TRACE`) turns the lines back on.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::secret::Subkey;

/// Page cache per connection: 2 MiB (negative values are KiB in SQLite).
const CACHE_SIZE_KIB: i64 = 2048;

/// Names SQLCipher's log level to turn its stderr log back on, for diagnosis.
const LOG_LEVEL_VAR: &str = "COFFER_SQLCIPHER_LOG";

/// Sets SQLCipher's log level: `NONE` unless [`LOG_LEVEL_VAR`] names one of
/// SQLCipher's levels. The level is process-wide, and SQLCipher raises it to
/// `WARN` when it first initializes, so every connection sets it before its
/// key is used.
fn set_sqlcipher_log_level(conn: &Connection) -> Result<()> {
    const LEVELS: [&str; 5] = ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"];
    // Only a fixed word reaches the statement, never the variable's text.
    let level = std::env::var(LOG_LEVEL_VAR)
        .ok()
        .and_then(|v| {
            LEVELS
                .into_iter()
                .find(|l| l.eq_ignore_ascii_case(v.trim()))
        })
        .unwrap_or("NONE");
    conn.execute_batch(&format!("PRAGMA cipher_log_level = {level};"))
        .map_err(|e| Error::database("configuring", e))
}

/// Opens (creating if `create`) the SQLCipher database at `path` with `key`,
/// applies coffer's settings and checks that the key opens it.
pub(crate) fn open(path: &Path, key: &Subkey, create: bool) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create && !path.exists() {
        // SQLite would create the file 0644; an empty file is a valid new
        // database, so make it ourselves, readable by the owner only. SQLite
        // gives the -wal and -shm files the database file's mode.
        crate::fsio::create_private_file(path)?;
    }
    let conn =
        Connection::open_with_flags(path, flags).map_err(|e| Error::database("opening", e))?;
    set_sqlcipher_log_level(&conn)?;
    let hex = Zeroizing::new(hex_lower(key.expose_secret()));
    let pragma = Zeroizing::new(format!(
        "PRAGMA key = \"x'{}'\"; PRAGMA cipher_hmac_algorithm = HMAC_SHA256;",
        hex.as_str()
    ));
    // Never pass SQLite's error on: a syntax-error report quotes the
    // statement, and the statement holds the key.
    conn.execute_batch(&pragma).map_err(|_| keying_refused())?;
    // The first read proves the key: a wrong key or a damaged first page is
    // SQLITE_NOTADB here.
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_err(|e| Error::database("opening", e))?;
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA temp_store = MEMORY;
         PRAGMA foreign_keys = ON;
         PRAGMA secure_delete = ON;
         PRAGMA cache_size = -{CACHE_SIZE_KIB};"
    ))
    .map_err(|e| Error::database("configuring", e))?;
    Ok(conn)
}

/// The `PRAGMA key` (or `rekey`) statement for `key`, in a zeroizing string.
fn key_statement(pragma: &str, key: &[u8; 32]) -> Zeroizing<String> {
    let hex = Zeroizing::new(hex_lower(key));
    Zeroizing::new(format!("PRAGMA {pragma} = \"x'{}'\";", hex.as_str()))
}

/// Writes a consistent snapshot of `conn`'s main database to `path`, a new
/// SQLCipher file under `key` with coffer's cipher settings (no journal
/// setting: the snapshot is a single file).
pub(crate) fn snapshot(conn: &Connection, path: &Path, key: &[u8; 32]) -> Result<()> {
    crate::fsio::create_private_file(path)?;
    let hex = Zeroizing::new(format!("x'{}'", hex_lower(key)));
    let path_text = path.to_str().ok_or(Error::InvalidName {
        what: "path",
        name: String::new(),
        rule: "must be UTF-8",
    })?;
    conn.execute(
        "ATTACH DATABASE ?1 AS coffer_snapshot KEY ?2",
        [path_text, hex.as_str()],
    )
    .map_err(|_| keying_refused())?;
    // One read transaction around the copy: every table from one snapshot,
    // even if another process writes meanwhile. sqlcipher_export copies
    // schema and rows, not the header's user_version and application_id:
    // the catalog and apps' own schemas version themselves with them.
    let copied = (|| -> rusqlite::Result<()> {
        conn.execute_batch(
            "PRAGMA coffer_snapshot.cipher_hmac_algorithm = HMAC_SHA256;
             BEGIN;
             SELECT sqlcipher_export('coffer_snapshot');",
        )?;
        let user_version: i64 = conn.query_row("PRAGMA main.user_version", [], |r| r.get(0))?;
        let application_id: i64 = conn.query_row("PRAGMA main.application_id", [], |r| r.get(0))?;
        conn.execute_batch(&format!(
            "PRAGMA coffer_snapshot.user_version = {user_version};
             PRAGMA coffer_snapshot.application_id = {application_id};
             COMMIT;"
        ))
    })()
    .map_err(|e| Error::database("snapshotting", e));
    if copied.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    let detached = conn
        .execute_batch("DETACH DATABASE coffer_snapshot")
        .map_err(|e| Error::database("snapshotting", e));
    copied.and(detached)
}

/// Re-encrypts the (closed, single-file) database at `path` from `old` to
/// `new`, rewriting every page.
pub(crate) fn rekey(path: &Path, old: &[u8; 32], new: &Subkey) -> Result<()> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::database("opening", e))?;
    set_sqlcipher_log_level(&conn)?;
    conn.execute_batch(&key_statement("key", old))
        .and_then(|()| conn.execute_batch("PRAGMA cipher_hmac_algorithm = HMAC_SHA256;"))
        .map_err(|_| keying_refused())?;
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_err(|e| Error::database("opening", e))?;
    conn.execute_batch(&key_statement("rekey", new.expose_secret()))
        .map_err(|_| keying_refused())?;
    Ok(())
}

fn keying_refused() -> Error {
    Error::Database {
        op: "keying",
        kind: crate::error::DatabaseErrorKind::Other("SQLCipher refused the key statement".into()),
    }
}

/// What an app's own SQL connection ([`crate::App::database`]) refuses, in
/// words for the person whose statement was refused.
pub const SQL_CONFINEMENT: &str = "an app's own SQL cannot reach coffer's tables (coffer_*: use the key-value, record and file stores), ATTACH or DETACH a database, make virtual tables, call sqlcipher functions, or use a pragma other than the read-only ones (table_info, index_list, integrity_check, …)";

/// Whether `error` is the confinement's refusal (SQLite's "not authorized")
/// rather than a mistake in the statement.
pub fn refused_by_confinement(error: &rusqlite::Error) -> bool {
    error.sqlite_error_code() == Some(rusqlite::ErrorCode::AuthorizationForStatementDenied)
        || error.to_string().contains("not authorized")
}

/// Confines a connection handed to an app's own SQL: no access to coffer's
/// own tables (`coffer_*`: the key-value, record and file stores have their
/// own capabilities), no ATTACH (which could write a database in the clear),
/// no SQLCipher or storage pragmas, no virtual tables.
pub(crate) fn confine_app_connection(conn: &mut Connection) -> Result<()> {
    use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
    fn coffer_table(name: &str) -> bool {
        name.get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("coffer_"))
    }
    // The pragmas an app may use.
    const READABLE: &[&str] = &[
        "table_info",
        "table_xinfo",
        "table_list",
        "index_list",
        "index_info",
        "index_xinfo",
        "foreign_key_list",
        "foreign_key_check",
        "integrity_check",
        "quick_check",
        "data_version",
        "page_count",
        "freelist_count",
        "foreign_keys",
        "user_version",
    ];
    conn.authorizer(Some(|ctx: AuthContext<'_>| match ctx.action {
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => Authorization::Deny,
        AuthAction::CreateVtable { .. } | AuthAction::DropVtable { .. } => Authorization::Deny,
        AuthAction::Pragma { pragma_name, .. } => {
            // Every pragma listed only reads schema or state (the argument of
            // table_info and the like names a table), or sets a harmless flag
            // (foreign_keys, user_version).
            if READABLE.contains(&pragma_name.to_ascii_lowercase().as_str()) {
                Authorization::Allow
            } else {
                Authorization::Deny
            }
        }
        AuthAction::Function { function_name }
            if function_name.to_ascii_lowercase().starts_with("sqlcipher") =>
        {
            Authorization::Deny
        }
        AuthAction::Read { table_name, .. }
        | AuthAction::Insert { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::Delete { table_name }
        | AuthAction::CreateTable { table_name }
        | AuthAction::CreateTempTable { table_name }
        | AuthAction::DropTable { table_name }
        | AuthAction::DropTempTable { table_name }
        | AuthAction::CreateIndex { table_name, .. }
        | AuthAction::CreateTempIndex { table_name, .. }
        | AuthAction::DropIndex { table_name, .. }
        | AuthAction::CreateTrigger { table_name, .. }
        | AuthAction::CreateTempTrigger { table_name, .. }
        | AuthAction::DropTrigger { table_name, .. }
        | AuthAction::AlterTable { table_name, .. }
        | AuthAction::Analyze { table_name }
            if coffer_table(table_name) =>
        {
            Authorization::Deny
        }
        _ => Authorization::Allow,
    }))
    .map_err(|e| Error::database("confining an app's connection", e))
}

fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}
