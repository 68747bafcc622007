//! Recovery keys: random keys shown once, in a form people can type.
//!
//! A recovery key is 160 random bits. It is written as 40 characters of
//! Crockford base32 (no I, L, O or U; case-insensitive; O read as 0, I and L
//! as 1) in eight groups of five:
//!
//! ```text
//! 4ZC8B-W1QJ6-0JXQX-2F3ZN-DH9NV-5WQ5S-T6RWZ-0P4KE
//! ```
//!
//! The first 32 characters encode the key; the last 8 encode a 40-bit
//! checksum, the first five bytes of SHA-256("coffer-recovery-key-v1" ‖ key).
//! A typo is caught before any slot is tried, except with probability 2^-40.
//! docs/formats/vault-header.md has the test vectors.

use data_encoding::Encoding;
use rand_core::{CryptoRng, RngCore};
use secrecy::{ExposeSecret, ExposeSecretMut, SecretBox, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use crate::error::Result;

/// Random bytes in a recovery key.
pub const RECOVERY_KEY_LEN: usize = 20;
const CHECKSUM_LEN: usize = 5;
const ENCODED_LEN: usize = (RECOVERY_KEY_LEN + CHECKSUM_LEN) * 8 / 5;
const GROUP: usize = 5;
const CHECKSUM_DOMAIN: &[u8] = b"coffer-recovery-key-v1";

/// Why text is not a recovery key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryKeyError {
    /// Not 40 characters once dashes and spaces are removed.
    #[error("expected 40 characters (8 groups of 5), found {0}")]
    Length(usize),
    /// A character outside the alphabet, at this position (1-based, dashes
    /// and spaces not counted). The character itself is not repeated.
    #[error("character {0} is not a recovery key character (0-9, A-Z without I, L, O, U)")]
    Character(usize),
    /// The checksum does not match: a character was mistyped.
    #[error("checksum mismatch: a character is mistyped")]
    Checksum,
}

/// A recovery key (or, later, a temporary key): 160 random bits.
pub struct RecoveryKey(SecretBox<[u8; RECOVERY_KEY_LEN]>);

fn crockford() -> Encoding {
    let mut spec = data_encoding::Specification::new();
    spec.symbols.push_str("0123456789ABCDEFGHJKMNPQRSTVWXYZ");
    // Crockford's forgiving reading: lower case, and O/I/L for 0/1/1.
    spec.translate.from.push_str("abcdefghjkmnpqrstvwxyzoOiIlL");
    spec.translate.to.push_str("ABCDEFGHJKMNPQRSTVWXYZ001111");
    // The specification is a constant that data-encoding accepts; a failure
    // here would be a programming error caught by every test.
    #[allow(clippy::expect_used)]
    spec.encoding()
        .expect("valid Crockford base32 specification")
}

fn checksum(key: &[u8; RECOVERY_KEY_LEN]) -> [u8; CHECKSUM_LEN] {
    let digest = Sha256::new()
        .chain_update(CHECKSUM_DOMAIN)
        .chain_update(key)
        .finalize();
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&digest[..CHECKSUM_LEN]);
    out
}

impl RecoveryKey {
    /// Draws a new recovery key.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Result<Self> {
        let mut key = SecretBox::new(Box::new([0u8; RECOVERY_KEY_LEN]));
        rng.try_fill_bytes(key.expose_secret_mut())?;
        Ok(RecoveryKey(key))
    }

    /// Parses typed text: dashes, spaces and case are ignored; the checksum
    /// must match.
    pub fn parse(text: &str) -> Result<Self, RecoveryKeyError> {
        // Sized up front so that no reallocation leaves a partial copy behind.
        let mut compact = zeroize::Zeroizing::new(Vec::with_capacity(text.len()));
        compact.extend(
            text.bytes()
                .filter(|b| !matches!(b, b'-' | b' ' | b'\t' | b'\n' | b'\r')),
        );
        Self::parse_compact(&compact)
    }

    fn parse_compact(compact: &[u8]) -> Result<Self, RecoveryKeyError> {
        if compact.len() != ENCODED_LEN {
            return Err(RecoveryKeyError::Length(compact.len()));
        }
        let mut decoded = [0u8; RECOVERY_KEY_LEN + CHECKSUM_LEN];
        let result = match crockford().decode_mut(compact, &mut decoded) {
            Err(partial) => Err(RecoveryKeyError::Character(partial.error.position + 1)),
            Ok(_) => {
                let mut key = SecretBox::new(Box::new([0u8; RECOVERY_KEY_LEN]));
                key.expose_secret_mut()
                    .copy_from_slice(&decoded[..RECOVERY_KEY_LEN]);
                let expected = checksum(key.expose_secret());
                if bool::from(expected.ct_eq(&decoded[RECOVERY_KEY_LEN..])) {
                    Ok(RecoveryKey(key))
                } else {
                    Err(RecoveryKeyError::Checksum)
                }
            }
        };
        decoded.zeroize();
        result
    }

    /// The key as people type it: eight dash-separated groups of five.
    pub fn display(&self) -> SecretString {
        let mut raw = [0u8; RECOVERY_KEY_LEN + CHECKSUM_LEN];
        raw[..RECOVERY_KEY_LEN].copy_from_slice(self.0.expose_secret());
        raw[RECOVERY_KEY_LEN..].copy_from_slice(&checksum(self.0.expose_secret()));
        let mut compact = crockford().encode(&raw);
        raw.zeroize();
        let mut grouped = String::with_capacity(ENCODED_LEN + ENCODED_LEN / GROUP);
        for (i, c) in compact.chars().enumerate() {
            if i > 0 && i % GROUP == 0 {
                grouped.push('-');
            }
            grouped.push(c);
        }
        compact.zeroize();
        SecretString::from(grouped)
    }

    pub(crate) fn expose_secret(&self) -> &[u8; RECOVERY_KEY_LEN] {
        self.0.expose_secret()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(bytes: [u8; RECOVERY_KEY_LEN]) -> RecoveryKey {
        RecoveryKey(SecretBox::new(Box::new(bytes)))
    }

    #[test]
    fn display_and_parse_round_trip() {
        let mut rng = rand_core::OsRng;
        for _ in 0..100 {
            let k = RecoveryKey::generate(&mut rng).unwrap();
            let shown = k.display();
            assert_eq!(shown.expose_secret().len(), 47);
            let back = RecoveryKey::parse(shown.expose_secret()).unwrap();
            assert_eq!(back.expose_secret(), k.expose_secret());
            // Forgiving reading: lower case, no dashes, spaces.
            let lower = shown.expose_secret().to_lowercase().replace('-', " ");
            assert_eq!(
                RecoveryKey::parse(&lower).unwrap().expose_secret(),
                k.expose_secret()
            );
        }
    }

    #[test]
    fn every_single_character_typo_is_caught() {
        let k = key([7; RECOVERY_KEY_LEN]);
        let shown = k.display().expose_secret().to_owned();
        let alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
        for (i, original) in shown.char_indices().filter(|(_, c)| *c != '-') {
            for replacement in alphabet.chars().filter(|c| *c != original) {
                let mut typo = shown.clone();
                typo.replace_range(i..i + 1, &replacement.to_string());
                assert_eq!(
                    RecoveryKey::parse(&typo).err(),
                    Some(RecoveryKeyError::Checksum),
                    "typo at {i}"
                );
            }
        }
    }

    #[test]
    fn adjacent_transpositions_are_caught() {
        let k = key(*b"transpositions-test!");
        let compact: Vec<char> = k
            .display()
            .expose_secret()
            .chars()
            .filter(|c| *c != '-')
            .collect();
        for i in 0..compact.len() - 1 {
            if compact[i] == compact[i + 1] {
                continue;
            }
            let mut swapped = compact.clone();
            swapped.swap(i, i + 1);
            let text: String = swapped.into_iter().collect();
            assert_eq!(
                RecoveryKey::parse(&text).err(),
                Some(RecoveryKeyError::Checksum)
            );
        }
    }

    #[test]
    fn wrong_length_and_bad_characters_are_typed_errors() {
        assert_eq!(
            RecoveryKey::parse("ABCDE-FGHJK").err(),
            Some(RecoveryKeyError::Length(10))
        );
        let shown = key([1; RECOVERY_KEY_LEN])
            .display()
            .expose_secret()
            .replacen('0', "U", 1);
        assert!(matches!(
            RecoveryKey::parse(&shown).err(),
            Some(RecoveryKeyError::Character(_))
        ));
    }

    #[test]
    fn crockford_aliases_read_as_digits() {
        let k = key([0; RECOVERY_KEY_LEN]);
        let shown = k.display().expose_secret().to_owned();
        let aliased = shown.replace('0', "o").replace('1', "l");
        assert_eq!(
            RecoveryKey::parse(&aliased).unwrap().expose_secret(),
            &[0; 20]
        );
    }
}
