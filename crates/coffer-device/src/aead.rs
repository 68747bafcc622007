//! AES-256-GCM, as ring implements it, for slot wrapping and header metadata.
//!
//! Every key used here encrypts very few messages (one wrapped key per slot
//! KEK; one metadata blob per header write), so random 96-bit nonces are far
//! from the birthday bound.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use crate::secret::KEY_LEN;

/// AES-GCM nonce length.
pub(crate) const NONCE_LEN: usize = 12;
/// AES-GCM tag length.
pub(crate) const TAG_LEN: usize = 16;

fn key(bytes: &[u8; KEY_LEN]) -> LessSafeKey {
    // AES-256 takes exactly 32 bytes, which the type guarantees.
    LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, bytes)
            .unwrap_or_else(|_| unreachable!("a 32-byte key is valid for AES-256-GCM")),
    )
}

/// Encrypts `in_out` in place and appends the tag.
pub(crate) fn seal(
    key_bytes: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    in_out: &mut Vec<u8>,
) {
    key(key_bytes)
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), in_out)
        // ring fails only when the plaintext exceeds 64 GiB, which no caller does.
        .unwrap_or_else(|_| unreachable!("AES-GCM input far below its length limit"));
}

/// Decrypts `in_out` (ciphertext ‖ tag) in place; returns the plaintext, or
/// `None` if authentication fails.
pub(crate) fn open<'a>(
    key_bytes: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    in_out: &'a mut [u8],
) -> Option<&'a mut [u8]> {
    key(key_bytes)
        .open_in_place(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), in_out)
        .ok()
}
