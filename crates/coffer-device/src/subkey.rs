//! Subkeys derived from the vault key: one per purpose, and per app.
//!
//! `subkey = HKDF-SHA256(ikm = vault key, salt = vault id,
//!                       info = "coffer/v1/" ‖ label [‖ 0x00 ‖ app id])`
//!
//! The label set is closed (one [`Purpose`] variant each), so the NUL byte
//! unambiguously separates the label from an app id, whatever the app id
//! contains. docs/formats/vault-header.md lists the labels with test vectors.

use hkdf::Hkdf;
use sha2::Sha256;

use crate::header::VaultId;
use crate::secret::{Key256, Subkey, VaultKey};

const INFO_PREFIX: &[u8] = b"coffer/v1/";

/// What a derived key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Purpose<'a> {
    /// HMAC-SHA256 key authenticating the whole vault header.
    HeaderMac,
    /// AES-256-GCM key encrypting the header's slot names and dates.
    HeaderMeta,
    /// HMAC key of the vault's local audit chain.
    AuditMac,
    /// AES-256-GCM key encrypting the local audit log's entries.
    AuditLog,
    /// Raw SQLCipher key of the vault's catalog (its list of apps).
    Catalog,
    /// Raw SQLCipher key of one app's database.
    AppDatabase(&'a str),
    /// Key from which one app's per-file keys are derived.
    AppFiles(&'a str),
    /// Key of one app's record store.
    AppRecords(&'a str),
}

impl Purpose<'_> {
    /// The label written into the HKDF info.
    pub fn label(&self) -> &'static str {
        match self {
            Purpose::HeaderMac => "header-mac",
            Purpose::HeaderMeta => "header-meta",
            Purpose::AuditMac => "audit-mac",
            Purpose::AuditLog => "audit-log",
            Purpose::Catalog => "catalog",
            Purpose::AppDatabase(_) => "app-database",
            Purpose::AppFiles(_) => "app-files",
            Purpose::AppRecords(_) => "app-records",
        }
    }

    fn app(&self) -> Option<&str> {
        match self {
            Purpose::AppDatabase(app) | Purpose::AppFiles(app) | Purpose::AppRecords(app) => {
                Some(app)
            }
            _ => None,
        }
    }

    /// The full HKDF info string.
    pub fn info(&self) -> Vec<u8> {
        let mut info = INFO_PREFIX.to_vec();
        info.extend_from_slice(self.label().as_bytes());
        if let Some(app) = self.app() {
            info.push(0);
            info.extend_from_slice(app.as_bytes());
        }
        info
    }
}

/// Derives the subkey for `purpose` in the vault `vault_id`.
pub(crate) fn derive(vault_key: &VaultKey, vault_id: &VaultId, purpose: Purpose<'_>) -> Subkey {
    let hkdf = Hkdf::<Sha256>::new(Some(vault_id.as_bytes()), vault_key.0.expose_secret());
    let key = Key256::fill_with(|out| hkdf.expand(&purpose.info(), out))
        // 32 bytes is far below HKDF-SHA256's 8160-byte output limit.
        .unwrap_or_else(|_| unreachable!("HKDF-SHA256 can always expand 32 bytes"));
    Subkey(key)
}
