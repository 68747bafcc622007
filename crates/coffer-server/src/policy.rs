//! Signed policies: the server's half. The document, its rules, canonical
//! JSON and verification are wire types (`coffer_protocol::policy`, shared
//! with devices); only the signing key lives here, since only the server
//! signs.

use rand_core::RngCore;
use ring::signature::{Ed25519KeyPair, KeyPair};
use zeroize::Zeroizing;

pub use coffer_protocol::policy::*;

/// An organization's signing key (its 32-byte Ed25519 seed).
pub struct SigningKey {
    seed: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    /// A new random key.
    pub fn generate() -> Result<SigningKey, String> {
        let mut seed = Zeroizing::new([0u8; 32]);
        rand_core::OsRng
            .try_fill_bytes(seed.as_mut_slice())
            .map_err(|e| e.to_string())?;
        Ok(SigningKey { seed })
    }

    /// The key from its seed (unsealed from the database).
    pub fn from_seed(seed: &[u8]) -> Option<SigningKey> {
        let seed: [u8; 32] = seed.try_into().ok()?;
        Some(SigningKey {
            seed: Zeroizing::new(seed),
        })
    }

    /// The seed, to seal.
    pub fn seed(&self) -> &[u8] {
        self.seed.as_slice()
    }

    fn pair(&self) -> Ed25519KeyPair {
        // Any 32 bytes are a valid Ed25519 seed.
        #[allow(clippy::expect_used)]
        Ed25519KeyPair::from_seed_unchecked(self.seed.as_slice()).expect("32-byte seed")
    }

    /// The public key, 32 bytes.
    pub fn public_key(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.pair().public_key().as_ref());
        out
    }

    /// The Ed25519 signature of `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.pair().sign(message).as_ref());
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_signature_by_the_signing_key_verifies_with_its_public_key() {
        let key = SigningKey::from_seed(&[9; 32]).unwrap();
        let signature = key.sign(b"policy");
        assert!(verify(&key.public_key(), b"policy", &signature));
        assert!(!verify(&key.public_key(), b"policz", &signature));
    }
}
