//! The server's master key, and the secrets it seals at rest.
//!
//! The master key (32 random bytes, from a key file or `COFFER_MASTER_KEY`)
//! never reaches the database. Two keys are derived from it with
//! HKDF-SHA256: the sealing key (AES-256-GCM) and an 8-byte key id stored
//! beside every sealed value, so that a value sealed under another key is
//! recognized as such instead of failing as "tampered".
//!
//! A sealed value (docs/formats/server-seal.md) is hex text:
//! `0x01 ‖ key_id[8] ‖ nonce[12] ‖ AES-256-GCM(plaintext) ‖ tag[16]`, with
//! the associated data `"coffer-server-seal/1" ‖ 0x00 ‖ key_id ‖ context`.
//! The context names the row the value belongs to (`escrow:17`), so a value
//! copied into another row does not open there.
//!
//! Rotation: start every server process with the new key and the old one
//! as the previous key; the first to start re-seals every value under the
//! new key ([`crate::serve`]), and values under either key open meanwhile.

use std::path::Path;

use hmac::{Hmac, Mac};
use rand_core::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use sha2::Sha256;
use zeroize::Zeroizing;

/// The version byte of a sealed value.
const SEAL_VERSION: u8 = 1;
const SEAL_LABEL: &[u8] = b"coffer-server-seal/1";
const KEY_ID_LEN: usize = 8;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// What went wrong with a master key or a sealed value. Never shows key
/// material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key file or variable does not hold 64 hex digits.
    #[error("the master key must be 64 hex digits (32 bytes): {0}")]
    Malformed(&'static str),
    /// The key file could not be read or written.
    #[error("master key file {path}: {message}")]
    File {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The key file can be read by others than its owner.
    #[error("master key file {0} is readable by other users: chmod 600 it")]
    Exposed(String),
    /// A sealed value is under a key this server does not have.
    #[error("a sealed value is under master key {found}, and this server has {have}: every server on one database needs the master key the database is under (--master-key-file, or COFFER_MASTER_KEY_FILE); a new key is taken on only by rotating (--previous-master-key-file)")]
    UnknownKey {
        /// The sealed value's key id.
        found: String,
        /// The ids this server holds.
        have: String,
    },
    /// The database's audit trail predates the master key.
    #[error("the audit trail's {rows} rows predate the master key and carry no MAC: anyone with write access to the database could have changed them. Start once with --adopt-unkeyed-audit-trail to put them under the key as they stand")]
    UnkeyedAudit {
        /// Rows without a MAC.
        rows: usize,
    },
    /// Values remain under a master key this server no longer has as its
    /// previous one.
    #[error("values are still sealed under the previous master key: start once more with --previous-master-key-file before dropping it")]
    Stale,
    /// A sealed value does not authenticate: altered, truncated, or moved
    /// to another row.
    #[error("a sealed value does not authenticate (altered, truncated or moved)")]
    Tampered,
    /// The system's random source failed.
    #[error("no randomness: {0}")]
    Random(String),
}

/// One master key and what is derived from it.
pub struct MasterKey {
    seal: Zeroizing<[u8; 32]>,
    audit: Zeroizing<[u8; 32]>,
    id: [u8; KEY_ID_LEN],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.id())
    }
}

impl MasterKey {
    /// The key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> MasterKey {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(None, bytes);
        let mut seal = Zeroizing::new([0u8; 32]);
        let mut audit = Zeroizing::new([0u8; 32]);
        let mut id = [0u8; KEY_ID_LEN];
        // The lengths are far below HKDF-SHA256's limit: expand cannot fail.
        let _ = hk.expand(b"coffer-server seal key v1", seal.as_mut_slice());
        let _ = hk.expand(b"coffer-server audit key v1", audit.as_mut_slice());
        let _ = hk.expand(b"coffer-server key id v1", &mut id);
        MasterKey { seal, audit, id }
    }

    /// The key from 64 hex digits (surrounding white space ignored).
    pub fn from_hex(text: &str) -> Result<MasterKey, KeyError> {
        let text = text.trim();
        if text.len() != 64 {
            return Err(KeyError::Malformed("wrong length"));
        }
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text, bytes.as_mut_slice())
            .map_err(|_| KeyError::Malformed("not hex"))?;
        Ok(MasterKey::from_bytes(&bytes))
    }

    /// A fresh random key, and its hex form to keep.
    pub fn generate() -> Result<(MasterKey, Zeroizing<String>), KeyError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand_core::OsRng
            .try_fill_bytes(bytes.as_mut_slice())
            .map_err(|e| KeyError::Random(e.to_string()))?;
        let text = Zeroizing::new(hex::encode(bytes.as_slice()));
        Ok((MasterKey::from_bytes(&bytes), text))
    }

    /// Reads a key file (64 hex digits). Refuses a file others can read.
    pub fn load(path: &Path) -> Result<MasterKey, KeyError> {
        let file_error = |e: std::io::Error| KeyError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let meta = std::fs::metadata(path).map_err(file_error)?;
        if exposed(&meta) {
            return Err(KeyError::Exposed(path.display().to_string()));
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(file_error)?);
        MasterKey::from_hex(&text)
    }

    /// Reads the key file, or creates it (mode 0600) with a new key.
    pub fn load_or_create(path: &Path) -> Result<(MasterKey, bool), KeyError> {
        match std::fs::metadata(path) {
            Ok(_) => MasterKey::load(path).map(|k| (k, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (key, text) = MasterKey::generate()?;
                write_private(path, text.as_bytes()).map_err(|e| KeyError::File {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
                Ok((key, true))
            }
            Err(e) => Err(KeyError::File {
                path: path.display().to_string(),
                message: e.to_string(),
            }),
        }
    }

    /// The key id, 16 hex digits: safe to show and log.
    pub fn id(&self) -> String {
        hex::encode(self.id)
    }

    /// HMAC-SHA256 of an audit row's hash, hex.
    fn audit_tag(&self, hash: &str) -> String {
        hex::encode(self.audit_hmac(hash).finalize().into_bytes())
    }

    fn audit_hmac(&self, hash: &str) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        #[allow(clippy::expect_used)]
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(self.audit.as_slice()).expect("any key length");
        mac.update(AUDIT_LABEL);
        mac.update(hash.as_bytes());
        mac
    }

    fn aead(&self) -> LessSafeKey {
        // A 32-byte key is always a valid AES-256 key.
        #[allow(clippy::expect_used)]
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, self.seal.as_slice()).expect("32-byte key"))
    }

    fn aad(&self, context: &str) -> Vec<u8> {
        let mut aad = Vec::with_capacity(SEAL_LABEL.len() + 1 + KEY_ID_LEN + context.len());
        aad.extend_from_slice(SEAL_LABEL);
        aad.push(0);
        aad.extend_from_slice(&self.id);
        aad.extend_from_slice(context.as_bytes());
        aad
    }

    /// Seals `plaintext` for the row `context`, with a fresh random nonce.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<String, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand_core::OsRng
            .try_fill_bytes(&mut nonce)
            .map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(self.seal_with_nonce(context, plaintext, nonce))
    }

    /// Sealing with a given nonce: for the test vectors only (a nonce must
    /// never repeat under one key).
    #[doc(hidden)]
    pub fn seal_with_nonce(&self, context: &str, plaintext: &[u8], nonce: [u8; 12]) -> String {
        let mut out = Vec::with_capacity(1 + KEY_ID_LEN + NONCE_LEN + plaintext.len() + TAG_LEN);
        out.push(SEAL_VERSION);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce);
        let mut body = Zeroizing::new(plaintext.to_vec());
        // Sealing in place only fails for absurd lengths (over 64 GiB).
        #[allow(clippy::expect_used)]
        self.aead()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.aad(context)),
                &mut *body,
            )
            .expect("sealing a short value");
        out.extend_from_slice(&body);
        hex::encode(out)
    }

    fn open(&self, context: &str, bytes: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let nonce: [u8; NONCE_LEN] = bytes[1 + KEY_ID_LEN..1 + KEY_ID_LEN + NONCE_LEN]
            .try_into()
            .map_err(|_| KeyError::Tampered)?;
        let mut body = Zeroizing::new(bytes[1 + KEY_ID_LEN + NONCE_LEN..].to_vec());
        let len = self
            .aead()
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.aad(context)),
                &mut body,
            )
            .map_err(|_| KeyError::Tampered)?
            .len();
        body.truncate(len);
        Ok(body)
    }
}

/// The master key in use, and the one before it during a rotation.
#[derive(Debug)]
pub struct Keyring {
    current: MasterKey,
    previous: Option<MasterKey>,
}

/// The parts of a sealed value, before opening.
fn parse(sealed: &str) -> Result<(Zeroizing<Vec<u8>>, [u8; KEY_ID_LEN]), KeyError> {
    let bytes = Zeroizing::new(hex::decode(sealed).map_err(|_| KeyError::Tampered)?);
    if bytes.len() < 1 + KEY_ID_LEN + NONCE_LEN + TAG_LEN || bytes[0] != SEAL_VERSION {
        return Err(KeyError::Tampered);
    }
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&bytes[1..1 + KEY_ID_LEN]);
    Ok((bytes, id))
}

impl Keyring {
    /// A keyring with `current`, and `previous` while rotating away from it.
    pub fn new(current: MasterKey, previous: Option<MasterKey>) -> Keyring {
        Keyring { current, previous }
    }

    /// The key new values are sealed under.
    pub fn current(&self) -> &MasterKey {
        &self.current
    }

    /// Whether the key with this id (16 hex digits) is held.
    pub fn holds(&self, id: &str) -> bool {
        self.current.id() == id || self.previous.as_ref().is_some_and(|k| k.id() == id)
    }

    /// Whether a previous key is held (a rotation is under way).
    pub fn has_previous(&self) -> bool {
        self.previous.is_some()
    }

    /// Seals under the current key.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<String, KeyError> {
        self.current.seal(context, plaintext)
    }

    /// Opens a value sealed under the current or the previous key.
    pub fn open(&self, context: &str, sealed: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let (bytes, id) = parse(sealed)?;
        let key = [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.id == id)
            .ok_or_else(|| KeyError::UnknownKey {
                found: hex::encode(id),
                have: self.ids(),
            })?;
        key.open(context, &bytes)
    }

    /// The MAC of an audit row whose hash is `hash`: `<key id>:<HMAC-SHA256
    /// hex>` under the current key. It proves the row was written by a
    /// server holding the master key.
    pub fn audit_mac(&self, hash: &str) -> String {
        format!("{}:{}", self.current.id(), self.current.audit_tag(hash))
    }

    /// The key (current or previous) `mac` is under, if it verifies.
    fn audit_key_of(&self, hash: &str, mac: &str) -> Option<&MasterKey> {
        let (id, tag) = mac.split_once(':')?;
        let tag = hex::decode(tag).ok()?;
        let key = [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.id() == id)?;
        key.audit_hmac(hash).verify_slice(&tag).ok().map(|()| key)
    }

    /// Whether `mac` is a valid audit MAC of `hash` (under either key).
    pub fn audit_mac_valid(&self, hash: &str, mac: &str) -> bool {
        self.audit_key_of(hash, mac).is_some()
    }

    /// For a rotation: the MAC under the current key, if `mac` is valid
    /// under the previous one (an invalid MAC stays invalid).
    pub fn audit_remac(&self, hash: &str, mac: &str) -> Option<String> {
        let key = self.audit_key_of(hash, mac)?;
        (key.id != self.current.id).then(|| self.audit_mac(hash))
    }

    /// Whether `sealed` is under the current key (a rotation skips it).
    pub fn is_current(&self, sealed: &str) -> bool {
        parse(sealed).is_ok_and(|(_, id)| id == self.current.id)
    }

    fn ids(&self) -> String {
        let mut ids = self.current.id();
        if let Some(previous) = &self.previous {
            ids.push_str(" and ");
            ids.push_str(&previous.id());
        }
        ids
    }
}

/// The context of the value that proves which key a database is under.
pub const CHECK_CONTEXT: &str = "master-key-check";
/// What that value seals: the database is under this key, and every audit
/// row carries a MAC.
pub const CHECK_PLAINTEXT: &[u8] = b"coffer master key check v1";

const AUDIT_LABEL: &[u8] = b"coffer-server audit mac v1\0";

#[cfg(unix)]
fn exposed(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o077 != 0
}

#[cfg(not(unix))]
fn exposed(_meta: &std::fs::Metadata) -> bool {
    false
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    // The new name must survive a crash too.
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(byte: u8) -> MasterKey {
        MasterKey::from_bytes(&[byte; 32])
    }

    #[test]
    fn a_sealed_value_opens_only_in_its_row_and_unaltered() {
        let ring = Keyring::new(key(1), None);
        let sealed = ring.seal("escrow:1", b"the escrow key").unwrap();
        assert_eq!(&*ring.open("escrow:1", &sealed).unwrap(), b"the escrow key");
        assert!(matches!(
            ring.open("escrow:2", &sealed),
            Err(KeyError::Tampered)
        ));
        let bytes = hex::decode(&sealed).unwrap();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[i] ^= 1 << bit;
                // A flipped key id names a key this server does not hold;
                // any other flip fails authentication.
                assert!(matches!(
                    ring.open("escrow:1", &hex::encode(&flipped)),
                    Err(KeyError::Tampered | KeyError::UnknownKey { .. })
                ));
            }
        }
        for len in 0..bytes.len() {
            assert!(matches!(
                ring.open("escrow:1", &hex::encode(&bytes[..len])),
                Err(KeyError::Tampered)
            ));
        }
    }

    #[test]
    fn a_rotation_keyring_opens_both_and_seals_under_the_new() {
        let old = Keyring::new(key(1), None);
        let sealed_old = old.seal("c", b"v").unwrap();
        let ring = Keyring::new(key(2), Some(key(1)));
        assert_eq!(&*ring.open("c", &sealed_old).unwrap(), b"v");
        assert!(!ring.is_current(&sealed_old));
        let sealed_new = ring.seal("c", b"v").unwrap();
        assert!(ring.is_current(&sealed_new));
        // The old key alone cannot open the new value, and says why.
        assert!(matches!(
            old.open("c", &sealed_new),
            Err(KeyError::UnknownKey { .. })
        ));
    }

    #[test]
    fn audit_macs_verify_under_either_key_and_move_to_the_new_one() {
        let old = Keyring::new(key(1), None);
        let mac = old.audit_mac("abc");
        assert!(old.audit_mac_valid("abc", &mac));
        assert!(!old.audit_mac_valid("abd", &mac));
        assert!(!old.audit_mac_valid("abc", "nonsense"));
        assert!(old.audit_remac("abc", &mac).is_none(), "already current");
        let ring = Keyring::new(key(2), Some(key(1)));
        assert!(ring.audit_mac_valid("abc", &mac));
        let moved = ring.audit_remac("abc", &mac).unwrap();
        assert!(Keyring::new(key(2), None).audit_mac_valid("abc", &moved));
        assert!(!Keyring::new(key(2), None).audit_mac_valid("abc", &mac));
        assert!(
            ring.audit_remac("abd", &mac).is_none(),
            "a bad MAC stays bad"
        );
    }

    #[test]
    fn debug_shows_the_id_only() {
        let k = key(7);
        assert_eq!(format!("{k:?}"), format!("MasterKey({})", k.id()));
        assert!(matches!(
            MasterKey::from_hex("zz"),
            Err(KeyError::Malformed("wrong length"))
        ));
        assert!(matches!(
            MasterKey::from_hex(&"g".repeat(64)),
            Err(KeyError::Malformed("not hex"))
        ));
        assert_eq!(MasterKey::from_hex(&"07".repeat(32)).unwrap().id(), k.id());
    }

    #[test]
    fn a_key_file_is_created_private_and_refused_when_exposed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let (created, new) = MasterKey::load_or_create(&path).unwrap();
        assert!(new);
        let (loaded, new) = MasterKey::load_or_create(&path).unwrap();
        assert!(!new);
        assert_eq!(created.id(), loaded.id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(MasterKey::load(&path), Err(KeyError::Exposed(_))));
        }
    }
}
