//! Record bodies sealed at rest (docs/formats/server-seal.md, "Record
//! seal"): each organization has a random 32-byte **data key**, stored
//! sealed under the master key ([`crate::store::SealedKind::OrgDataKey`]);
//! every record body and every conflict leaf is sealed under it with
//! AES-256-GCM, bound to its row, so a database dump holds no body in the
//! clear and a sealed body copied to another row does not open there.
//!
//! A sealed record is bytes: `0x01 ‖ nonce[12] ‖ AES-256-GCM(plaintext) ‖
//! tag[16]`, the plaintext the JSON of `{"body": …, "files": […]}`, and the
//! associated data the label `coffer-record-seal/1`, the organization id
//! (decimal), the app, the collection, the record id and the revision,
//! each preceded by its length as 4 bytes big-endian.
//!
//! The **body MAC** (HMAC-SHA256 under a key derived from the data key
//! with HKDF-SHA256, info `coffer-record-mac/1`) of the app, the collection
//! and the body's JSON lets the server find likely duplicates without
//! unsealing anything.

use coffer_protocol::sync::FileRef;
use hmac::{Hmac, Mac};
use rand_core::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::keys::KeyError;

/// The version byte of a sealed record.
const RECORD_SEAL_VERSION: u8 = 1;
/// The first field of the associated data.
pub const RECORD_SEAL_LABEL: &str = "coffer-record-seal/1";
/// The first field of a body MAC's input, and the HKDF info of its key.
pub const RECORD_MAC_LABEL: &str = "coffer-record-mac/1";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// The row a sealed record belongs to: what its associated data binds.
#[derive(Debug, Clone, Copy)]
pub struct RecordPlace<'a> {
    /// The organization.
    pub org_id: i64,
    /// The app.
    pub app: &'a str,
    /// The collection.
    pub collection: &'a str,
    /// The record id.
    pub id: &'a str,
    /// The revision (of the head, or of the leaf).
    pub revision: &'a str,
}

impl RecordPlace<'_> {
    fn aad(&self) -> Vec<u8> {
        let org = self.org_id.to_string();
        let fields: [&[u8]; 6] = [
            RECORD_SEAL_LABEL.as_bytes(),
            org.as_bytes(),
            self.app.as_bytes(),
            self.collection.as_bytes(),
            self.id.as_bytes(),
            self.revision.as_bytes(),
        ];
        length_prefixed(&fields)
    }
}

/// Each field preceded by its length, 4 bytes big-endian: no field can run
/// into the next.
pub(crate) fn length_prefixed(fields: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(fields.iter().map(|f| f.len() + 4).sum());
    for field in fields {
        // Every field is far below 4 GiB (names are at most 256 bytes,
        // bodies 4 MiB).
        out.extend_from_slice(&u32::try_from(field.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(field);
    }
    out
}

/// What a sealed record holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordContent {
    /// The body (`None` for a deletion).
    pub body: Option<serde_json::Value>,
    /// The files it references.
    #[serde(default)]
    pub files: Vec<FileRef>,
}

/// An organization's data key. Never `Clone` or `Debug` with its bytes.
pub struct DataKey {
    aead: LessSafeKey,
    mac: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    /// The key from its 32 bytes (unsealed from the database).
    pub fn from_bytes(bytes: &[u8; 32]) -> DataKey {
        // A 32-byte key is always a valid AES-256 key.
        #[allow(clippy::expect_used)]
        let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("32-byte key"));
        let mut mac = Zeroizing::new([0u8; 32]);
        // 32 bytes are far below HKDF-SHA256's limit: expand cannot fail.
        let _ = hkdf::Hkdf::<Sha256>::new(None, bytes)
            .expand(RECORD_MAC_LABEL.as_bytes(), mac.as_mut_slice());
        DataKey { aead, mac }
    }

    /// A fresh random key, and its bytes to seal under the master key.
    pub fn generate() -> Result<(DataKey, Zeroizing<[u8; 32]>), KeyError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand_core::OsRng
            .try_fill_bytes(bytes.as_mut_slice())
            .map_err(|e| KeyError::Random(e.to_string()))?;
        Ok((DataKey::from_bytes(&bytes), bytes))
    }

    /// Seals `content` for its row, with a fresh random nonce.
    pub fn seal<T: Serialize>(
        &self,
        place: &RecordPlace<'_>,
        content: &T,
    ) -> Result<Vec<u8>, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand_core::OsRng
            .try_fill_bytes(&mut nonce)
            .map_err(|e| KeyError::Random(e.to_string()))?;
        let plaintext =
            Zeroizing::new(serde_json::to_vec(content).map_err(|_| KeyError::Tampered)?);
        Ok(self.seal_with_nonce(place, &plaintext, nonce))
    }

    /// Sealing with a given nonce: for the test vectors only (a nonce must
    /// never repeat under one key).
    #[doc(hidden)]
    pub fn seal_with_nonce(
        &self,
        place: &RecordPlace<'_>,
        plaintext: &[u8],
        nonce: [u8; 12],
    ) -> Vec<u8> {
        self.seal_bound(&place.aad(), plaintext, nonce)
    }

    /// `0x01 ‖ nonce ‖ AES-256-GCM(plaintext) ‖ tag` under this key with
    /// the associated data `aad`: the layout every seal under a data key
    /// shares (records here, file pieces in [`crate::blob_seal`]), each
    /// with associated data of its own.
    pub(crate) fn seal_bound(&self, aad: &[u8], plaintext: &[u8], nonce: [u8; 12]) -> Vec<u8> {
        let header = 1 + NONCE_LEN;
        let mut out = Vec::with_capacity(header + plaintext.len() + TAG_LEN);
        out.push(RECORD_SEAL_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        // Sealing only fails for absurd lengths (over 64 GiB): records are
        // at most 4 MiB, pieces 8 MiB.
        #[allow(clippy::expect_used)]
        let tag = self
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[header..],
            )
            .expect("sealing under a data key");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Opens, in place, a seal made by [`DataKey::seal_bound`] with the
    /// same associated data: `buf` holds the plaintext after. Anything
    /// else (another key, other associated data, a changed or cut byte,
    /// another version) is [`KeyError::Tampered`].
    pub(crate) fn open_bound(&self, aad: &[u8], buf: &mut Vec<u8>) -> Result<(), KeyError> {
        let header = 1 + NONCE_LEN;
        if buf.len() < header + TAG_LEN || buf[0] != RECORD_SEAL_VERSION {
            return Err(KeyError::Tampered);
        }
        let nonce: [u8; NONCE_LEN] = buf[1..header].try_into().map_err(|_| KeyError::Tampered)?;
        let len = self
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf[header..],
            )
            .map_err(|_| KeyError::Tampered)?
            .len();
        buf.truncate(header + len);
        buf.drain(..header);
        Ok(())
    }

    /// Opens a sealed record of the row `place`: its plaintext.
    pub fn open_bytes(
        &self,
        place: &RecordPlace<'_>,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let mut buf = Zeroizing::new(sealed.to_vec());
        self.open_bound(&place.aad(), &mut buf)?;
        Ok(buf)
    }

    /// Opens a sealed record of the row `place`.
    pub fn open(&self, place: &RecordPlace<'_>, sealed: &[u8]) -> Result<RecordContent, KeyError> {
        let plain = self.open_bytes(place, sealed)?;
        serde_json::from_slice(&plain).map_err(|_| KeyError::Tampered)
    }

    /// The body MAC of `body` in `app` and `collection`, hex: equal for
    /// equal bodies of one collection, and nothing else to whoever lacks
    /// the data key.
    pub fn body_mac(&self, app: &str, collection: &str, body: &serde_json::Value) -> String {
        let json = Zeroizing::new(serde_json::to_vec(body).unwrap_or_default());
        let input = Zeroizing::new(length_prefixed(&[
            RECORD_MAC_LABEL.as_bytes(),
            app.as_bytes(),
            collection.as_bytes(),
            &json,
        ]));
        // HMAC takes keys of any length.
        #[allow(clippy::expect_used)]
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(self.mac.as_slice()).expect("any key length");
        mac.update(&input);
        hex::encode(mac.finalize().into_bytes())
    }
}

/// The data keys unsealed so far, by organization (they never change: a
/// master key rotation re-seals them, it does not replace them).
#[derive(Debug, Default)]
pub struct DataKeys(std::sync::Mutex<std::collections::HashMap<i64, std::sync::Arc<DataKey>>>);

impl DataKeys {
    /// The cached key of `org_id`.
    pub fn get(&self, org_id: i64) -> Option<std::sync::Arc<DataKey>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&org_id)
            .cloned()
    }

    /// Caches the key of `org_id`.
    pub fn put(&self, org_id: i64, key: std::sync::Arc<DataKey>) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(org_id, key);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn place(revision: &str) -> RecordPlace<'_> {
        RecordPlace {
            org_id: 1,
            app: "cases",
            collection: "children",
            id: "c-1",
            revision,
        }
    }

    #[test]
    fn a_sealed_record_opens_only_in_its_row() {
        let key = DataKey::from_bytes(&[3; 32]);
        let content = RecordContent {
            body: Some(serde_json::json!({"name": "Amina"})),
            files: Vec::new(),
        };
        let rev = "0101010101010101010101010101010101.1";
        let sealed = key.seal(&place(rev), &content).unwrap();
        assert_eq!(key.open(&place(rev), &sealed).unwrap(), content);
        assert!(key.open(&place("x"), &sealed).is_err());
        let moved = RecordPlace {
            id: "c-2",
            ..place(rev)
        };
        assert!(key.open(&moved, &sealed).is_err());
        // Fields cannot run into each other.
        let a = RecordPlace {
            collection: "ab",
            id: "c",
            ..place(rev)
        };
        let b = RecordPlace {
            collection: "a",
            id: "bc",
            ..place(rev)
        };
        assert_ne!(a.aad(), b.aad());
        assert!(DataKey::from_bytes(&[4; 32])
            .open(&place(rev), &sealed)
            .is_err());
    }

    #[test]
    fn equal_bodies_have_equal_macs_in_one_collection_only() {
        let key = DataKey::from_bytes(&[3; 32]);
        let body = serde_json::json!({"name": "Amina", "age": 7});
        let same = serde_json::json!({"age": 7, "name": "Amina"});
        assert_eq!(key.body_mac("a", "c", &body), key.body_mac("a", "c", &same));
        assert_ne!(key.body_mac("a", "c", &body), key.body_mac("a", "d", &body));
        assert_ne!(
            key.body_mac("a", "c", &body),
            DataKey::from_bytes(&[4; 32]).body_mac("a", "c", &body)
        );
    }
}
