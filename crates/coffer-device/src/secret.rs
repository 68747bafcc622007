//! Secret newtypes.
//!
//! Every secret lives in a [`secrecy::SecretBox`]: heap-allocated, zeroized on
//! drop, with no `Clone` and no `Debug` that could print it. The bytes are
//! reached only through `expose_secret()`, which is easy to grep for.

use rand_core::{CryptoRng, RngCore};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use unicode_normalization::UnicodeNormalization;
use zeroize::Zeroize;

use crate::error::{Error, Result};

/// Length of the vault key and of every derived key, in bytes.
pub const KEY_LEN: usize = 32;

/// Longest passphrase accepted, in bytes after normalization. Long enough for
/// any diceware phrase; short enough that a pasted file is caught.
pub const MAX_PASSPHRASE_LEN: usize = 1024;

/// A 256-bit key held in a zeroizing box.
pub(crate) struct Key256(SecretBox<[u8; KEY_LEN]>);

impl Key256 {
    /// Draws a fresh key from `rng`, writing it straight into its box.
    pub(crate) fn random(rng: &mut (impl RngCore + CryptoRng)) -> Result<Self> {
        let mut key = SecretBox::new(Box::new([0u8; KEY_LEN]));
        crate::hardening::pin(key.expose_secret());
        rng.try_fill_bytes(secrecy::ExposeSecretMut::expose_secret_mut(&mut key))?;
        Ok(Key256(key))
    }

    /// Builds a key by letting `fill` write into the zeroized box in place, so
    /// that no copy is left on the stack.
    pub(crate) fn fill_with<E>(
        fill: impl FnOnce(&mut [u8; KEY_LEN]) -> Result<(), E>,
    ) -> Result<Self, E> {
        let mut key = SecretBox::new(Box::new([0u8; KEY_LEN]));
        // Pinned before the secret is written, so it never sits in a page
        // that could be swapped out.
        crate::hardening::pin(key.expose_secret());
        fill(secrecy::ExposeSecretMut::expose_secret_mut(&mut key))?;
        Ok(Key256(key))
    }

    pub(crate) fn expose_secret(&self) -> &[u8; KEY_LEN] {
        self.0.expose_secret()
    }
}

/// The random 256-bit key of one vault. It is never written to disk
/// unwrapped: key slots hold it encrypted, and everything else uses keys
/// derived from it (see [`crate::subkey`]).
pub struct VaultKey(pub(crate) Key256);

impl VaultKey {
    /// A vault key from its bytes (an unlock agent's): moved into the
    /// pinned box, the copy zeroized.
    pub(crate) fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        VaultKey(Subkey::from_bytes(bytes).0)
    }
}

/// A key derived from the vault key for one purpose (and one app).
pub struct Subkey(pub(crate) Key256);

impl Subkey {
    /// A subkey from its bytes: for tests and tools that kept a key to prove
    /// it no longer opens anything (the bytes are moved into the box).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let mut bytes = bytes;
        let key = Key256::fill_with(|k| {
            *k = bytes;
            Ok::<(), ()>(())
        })
        .unwrap_or_else(|()| unreachable!("the closure cannot fail"));
        bytes.zeroize();
        Subkey(key)
    }

    /// The raw key bytes, for handing to a cipher (SQLCipher, an AEAD, …).
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        self.0.expose_secret()
    }
}

/// The key-encryption key a slot's KDF produces from its secret.
pub(crate) struct SlotKek(pub(crate) Key256);

/// A user's passphrase or PIN.
///
/// Normalized to Unicode NFC on construction, so that the same passphrase
/// typed through different input methods (composed or decomposed accents)
/// opens the same slot.
pub struct Passphrase(SecretString);

impl Passphrase {
    /// Takes ownership of `text`, normalizes it and zeroizes the original.
    ///
    /// Rejects an empty passphrase and one longer than
    /// [`MAX_PASSPHRASE_LEN`] bytes.
    pub fn new(mut text: String) -> Result<Self> {
        if text.len() > MAX_PASSPHRASE_LEN * 4 {
            // Far past any normalized length we accept: refuse before
            // allocating for normalization.
            text.zeroize();
            return Err(Error::InvalidPassphrase("it is longer than 1024 bytes"));
        }
        // NFC expands a string at most threefold: reserving up front means the
        // buffer never reallocates (which would free an unzeroized copy).
        let mut normalized = String::with_capacity(text.len() * 3);
        normalized.extend(text.nfc());
        text.zeroize();
        // An exact-size copy for the secret box, then scrub the working buffer
        // (turning it into a boxed str could shrink it with a realloc).
        let exact: Box<str> = normalized.as_str().into();
        normalized.zeroize();
        let passphrase = Passphrase(SecretString::from(exact));
        let len = passphrase.expose_secret().len();
        if len == 0 {
            return Err(Error::InvalidPassphrase("it is empty"));
        }
        if len > MAX_PASSPHRASE_LEN {
            return Err(Error::InvalidPassphrase("it is longer than 1024 bytes"));
        }
        Ok(passphrase)
    }

    /// The normalized passphrase text.
    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl std::str::FromStr for Passphrase {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Passphrase::new(s.to_owned())
    }
}
