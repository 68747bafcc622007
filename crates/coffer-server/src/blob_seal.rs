//! File pieces sealed at rest (docs/formats/server-seal.md, "Blob seal"):
//! every piece object of an upload — and so of the blob it completes — is
//! sealed under the organization's data key ([`crate::record_seal`]) with
//! AES-256-GCM, bound to its place in its file, so whoever holds the blob
//! storage (a disk, a bucket, an object-store operator) reads no byte of
//! any file, and a piece swapped with another, moved to another index,
//! upload, file or organization, cut short or changed does not open.
//!
//! A sealed piece is `0x01 ‖ nonce[12] ‖ AES-256-GCM(piece) ‖ tag[16]`
//! (the record seal's layout), the associated data the label
//! `coffer-blob-seal/1`, the organization id (decimal), the app, the file's
//! SHA-256 (hex), the upload id, the file's size, the piece size and the
//! piece's index (decimal), each preceded by its length as 4 bytes
//! big-endian.

use rand_core::RngCore;

use crate::keys::KeyError;
use crate::record_seal::{length_prefixed, DataKey};

/// The first field of a piece's associated data.
pub const BLOB_SEAL_LABEL: &str = "coffer-blob-seal/1";

/// What a sealed piece is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PiecePlace<'a> {
    /// The organization.
    pub org_id: i64,
    /// The app.
    pub app: &'a str,
    /// The whole file's SHA-256, 64 lower-case hex digits.
    pub sha256: &'a str,
    /// The upload whose pieces these are (32 lower-case hex digits).
    pub upload_id: &'a str,
    /// The whole file's length, bytes.
    pub size: u64,
    /// The upload's piece size, bytes.
    pub piece_size: u64,
    /// The piece's index (its offset over the piece size).
    pub index: u64,
}

impl PiecePlace<'_> {
    fn aad(&self) -> Vec<u8> {
        let (org, size, piece_size, index) = (
            self.org_id.to_string(),
            self.size.to_string(),
            self.piece_size.to_string(),
            self.index.to_string(),
        );
        length_prefixed(&[
            BLOB_SEAL_LABEL.as_bytes(),
            org.as_bytes(),
            self.app.as_bytes(),
            self.sha256.as_bytes(),
            self.upload_id.as_bytes(),
            size.as_bytes(),
            piece_size.as_bytes(),
            index.as_bytes(),
        ])
    }
}

/// `piece` sealed for `place` under `key`, with a fresh random nonce.
pub fn seal_piece(
    key: &DataKey,
    place: &PiecePlace<'_>,
    piece: &[u8],
) -> Result<Vec<u8>, KeyError> {
    let mut nonce = [0u8; 12];
    rand_core::OsRng
        .try_fill_bytes(&mut nonce)
        .map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(seal_piece_with_nonce(key, place, piece, nonce))
}

/// Sealing with a given nonce: for the test vectors only (a nonce must
/// never repeat under one key).
#[doc(hidden)]
pub fn seal_piece_with_nonce(
    key: &DataKey,
    place: &PiecePlace<'_>,
    piece: &[u8],
    nonce: [u8; 12],
) -> Vec<u8> {
    key.seal_bound(&place.aad(), piece, nonce)
}

/// The piece a sealed object holds, if it was sealed for `place` under
/// `key` and is whole; else [`KeyError::Tampered`] (never other bytes).
/// Opened in the object's own buffer: one piece in memory, not two.
pub fn open_piece(
    key: &DataKey,
    place: &PiecePlace<'_>,
    sealed: Vec<u8>,
) -> Result<Vec<u8>, KeyError> {
    let mut buf = sealed;
    key.open_bound(&place.aad(), &mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn place(index: u64) -> PiecePlace<'static> {
        PiecePlace {
            org_id: 3,
            app: "cases",
            sha256: "ab",
            upload_id: "0f0f",
            size: 10,
            piece_size: 4,
            index,
        }
    }

    #[test]
    fn a_piece_opens_only_in_its_place() {
        let key = DataKey::from_bytes(&[7; 32]);
        let sealed = seal_piece(&key, &place(1), b"5678").unwrap();
        assert_eq!(sealed.len(), 1 + 12 + 4 + 16);
        assert_eq!(
            open_piece(&key, &place(1), sealed.clone()).unwrap(),
            b"5678"
        );
        let elsewhere = [
            place(0),
            PiecePlace {
                org_id: 4,
                ..place(1)
            },
            PiecePlace {
                app: "notes",
                ..place(1)
            },
            PiecePlace {
                sha256: "ac",
                ..place(1)
            },
            PiecePlace {
                upload_id: "0f0e",
                ..place(1)
            },
            PiecePlace {
                size: 11,
                ..place(1)
            },
            PiecePlace {
                piece_size: 5,
                ..place(1)
            },
        ];
        for other in elsewhere {
            assert!(matches!(
                open_piece(&key, &other, sealed.clone()),
                Err(KeyError::Tampered)
            ));
        }
        assert!(open_piece(&DataKey::from_bytes(&[8; 32]), &place(1), sealed.clone()).is_err());
        let mut flipped = sealed.clone();
        flipped[15] ^= 1;
        assert!(open_piece(&key, &place(1), flipped).is_err());
        assert!(open_piece(&key, &place(1), sealed[..sealed.len() - 1].to_vec()).is_err());
        assert!(open_piece(&key, &place(1), Vec::new()).is_err());
        let mut version = sealed;
        version[0] = 2;
        assert!(open_piece(&key, &place(1), version).is_err());
    }

    #[test]
    fn fields_cannot_run_into_each_other() {
        let a = PiecePlace {
            app: "ab",
            sha256: "c",
            ..place(0)
        };
        let b = PiecePlace {
            app: "a",
            sha256: "bc",
            ..place(0)
        };
        assert_ne!(a.aad(), b.aad());
    }
}
