//! The key-value store: the encrypted analog of a browser's localStorage.
//! Text keys, byte values, in the app's database (table `coffer_kv`).

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{Error, Result};

/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// Largest value: 16 MiB. Larger blobs belong in the file store.
pub const MAX_VALUE_LEN: usize = 16 << 20;

/// An app's key-value store.
pub struct KvStore {
    conn: Connection,
}

fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(Error::InvalidName {
            what: "key",
            name: String::new(),
            rule: "must be 1 to 1024 bytes",
        });
    }
    Ok(())
}

impl KvStore {
    pub(crate) fn open(conn: Connection) -> Result<Self> {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS coffer_kv (
                 key TEXT PRIMARY KEY,
                 value BLOB NOT NULL,
                 updated_at INTEGER NOT NULL DEFAULT (unixepoch())
             ) STRICT;",
        )
        .map_err(|e| Error::database("creating the key-value store", e))?;
        Ok(KvStore { conn })
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        check_key(key)?;
        self.conn
            .query_row("SELECT value FROM coffer_kv WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| Error::database("reading a key", e))
    }

    /// Sets `key` to `value`, replacing any previous value.
    pub fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        check_key(key)?;
        if value.len() > MAX_VALUE_LEN {
            return Err(Error::TooLarge {
                what: "key-value value",
                limit: MAX_VALUE_LEN as u64,
            });
        }
        self.conn
            .execute(
                "INSERT INTO coffer_kv (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = unixepoch()",
                params![key, value],
            )
            .map_err(|e| Error::database("writing a key", e))?;
        Ok(())
    }

    /// Deletes `key`; returns whether it was set.
    pub fn delete(&self, key: &str) -> Result<bool> {
        check_key(key)?;
        let n = self
            .conn
            .execute("DELETE FROM coffer_kv WHERE key = ?1", [key])
            .map_err(|e| Error::database("deleting a key", e))?;
        Ok(n > 0)
    }

    /// Keys starting with `prefix`, in byte order.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>> {
        // A range scan on the primary key, stopped at the first key past the
        // prefix: no LIKE/GLOB escaping to get wrong.
        let mut stmt = self
            .conn
            .prepare("SELECT key FROM coffer_kv WHERE key >= ?1 COLLATE BINARY ORDER BY key COLLATE BINARY")
            .map_err(|e| Error::database("listing keys", e))?;
        let mut rows = stmt
            .query([prefix])
            .map_err(|e| Error::database("listing keys", e))?;
        let mut keys = Vec::new();
        while let Some(row) = rows
            .next()
            .map_err(|e| Error::database("listing keys", e))?
        {
            let key: String = row.get(0).map_err(|e| Error::database("listing keys", e))?;
            if !key.starts_with(prefix) {
                break;
            }
            keys.push(key);
        }
        Ok(keys)
    }
}
