//! Key slots: each one wraps the vault key under a key derived from one
//! secret (a passphrase, a recovery key).
//!
//! A slot is 108 bytes in the header (docs/formats/vault-header.md):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | kind: 0 empty, 1 passphrase, 2 recovery, 3 temporary |
//! | 1 | 1 | KDF: 0 none, 1 Argon2id, 2 PBKDF2-HMAC-SHA256, 3 scrypt, 16 HKDF-SHA256 |
//! | 2 | 2 | reserved, 0 |
//! | 4 | 12 | KDF parameters p1, p2, p3 (u32 LE each) |
//! | 16 | 32 | salt |
//! | 48 | 12 | AES-GCM nonce |
//! | 60 | 48 | vault key encrypted with AES-256-GCM under the slot KEK, ‖ tag |
//!
//! The wrapping's associated data is `"coffer/v1/slot" ‖ vault id ‖ bytes
//! 0..48 of the slot`, so the kind, KDF, parameters and salt are bound to the
//! wrapped key, and a slot copied from another vault does not open. The slot's
//! position and the name in the encrypted metadata are covered by the header
//! MAC instead, so that swapping two slots is reported as tampering.

use hkdf::Hkdf;
use rand_core::{CryptoRng, RngCore};
use sha2::Sha256;

use crate::aead::{self, NONCE_LEN, TAG_LEN};
use crate::codec::Reader;
use crate::error::{CorruptKind, Error, Result};
use crate::header::VaultId;
use crate::kdf::{KdfLimits, KdfParams, SALT_LEN};
use crate::recovery::RecoveryKey;
use crate::secret::{Key256, Passphrase, SlotKek, VaultKey, KEY_LEN};

/// Size of one slot in the header.
pub const SLOT_LEN: usize = 108;
const BOUND_LEN: usize = 48;
const WRAPPED_LEN: usize = KEY_LEN + TAG_LEN;
const AAD_PREFIX: &[u8] = b"coffer/v1/slot";
const RECOVERY_KEK_INFO: &[u8] = b"coffer/v1/slot-kek/recovery";
const TEMPORARY_KEK_INFO: &[u8] = b"coffer/v1/slot-kek/temporary";

const KIND_EMPTY: u8 = 0;
const KIND_PASSPHRASE: u8 = 1;
const KIND_RECOVERY: u8 = 2;
const KIND_TEMPORARY: u8 = 3;

const KDF_ARGON2ID: u8 = 1;
const KDF_PBKDF2_SHA256: u8 = 2;
const KDF_SCRYPT: u8 = 3;
const KDF_HKDF_SHA256: u8 = 16;

/// What kind of secret opens a slot, and how its KEK is derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlotKind {
    /// A user's passphrase or PIN, stretched by a slow KDF.
    Passphrase(KdfParams),
    /// A random recovery key: 160 bits need no stretching, so HKDF-SHA256.
    Recovery,
    /// A random temporary key, like a recovery key but with an expiry (and
    /// optionally single use) recorded in the encrypted metadata.
    Temporary,
}

impl SlotKind {
    /// "passphrase" or "recovery".
    pub fn name(&self) -> &'static str {
        match self {
            SlotKind::Passphrase(_) => "passphrase",
            SlotKind::Recovery => "recovery",
            SlotKind::Temporary => "temporary",
        }
    }
}

/// A secret offered to open a vault.
#[non_exhaustive]
pub enum Credential<'a> {
    /// Tried against every passphrase slot.
    Passphrase(&'a Passphrase),
    /// A recovery or temporary key (they share one typed form): tried
    /// against every recovery and temporary slot.
    RecoveryKey(&'a RecoveryKey),
}

/// The public part of a key slot, as stored in the header.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct KeySlot {
    pub(crate) kind: SlotKind,
    salt: [u8; SALT_LEN],
    nonce: [u8; NONCE_LEN],
    wrapped: [u8; WRAPPED_LEN],
}

impl std::fmt::Debug for KeySlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Salt and wrapped key are not secret, but nobody needs them in logs.
        f.debug_struct("KeySlot")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl KeySlot {
    /// Wraps `vault_key` under a KEK derived from `credential`, with fresh
    /// salt and nonce from `rng`.
    pub(crate) fn wrap(
        vault_key: &VaultKey,
        vault_id: &VaultId,
        credential: &Credential<'_>,
        kind: SlotKind,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Self> {
        if let SlotKind::Passphrase(params) = kind {
            params.validate()?;
        }
        let mut salt = [0u8; SALT_LEN];
        let mut nonce = [0u8; NONCE_LEN];
        rng.try_fill_bytes(&mut salt)?;
        rng.try_fill_bytes(&mut nonce)?;
        let mut slot = KeySlot {
            kind,
            salt,
            nonce,
            wrapped: [0; WRAPPED_LEN],
        };
        let kek = slot.derive_kek(credential)?.ok_or(Error::InvalidKdfParams(
            "credential does not match the slot kind",
        ))?;
        let mut buf = Vec::with_capacity(WRAPPED_LEN);
        buf.extend_from_slice(vault_key.0.expose_secret());
        aead::seal(
            kek.0.expose_secret(),
            &slot.nonce,
            &slot.aad(vault_id),
            &mut buf,
        );
        slot.wrapped.copy_from_slice(&buf);
        // `buf` now holds only ciphertext and tag; nothing secret to zeroize.
        Ok(slot)
    }

    /// A slot from its fields, for tests that forge headers.
    #[cfg(test)]
    pub(crate) fn from_parts(
        kind: SlotKind,
        salt: [u8; SALT_LEN],
        nonce: [u8; NONCE_LEN],
        wrapped: &[u8],
    ) -> Self {
        let mut w = [0u8; WRAPPED_LEN];
        w.copy_from_slice(wrapped);
        KeySlot {
            kind,
            salt,
            nonce,
            wrapped: w,
        }
    }

    /// Tries to unwrap the vault key with `credential`. `Ok(None)` means this
    /// slot is of another kind, or the secret is wrong.
    pub(crate) fn unwrap_key(
        &self,
        vault_id: &VaultId,
        credential: &Credential<'_>,
    ) -> Result<Option<VaultKey>> {
        let Some(kek) = self.derive_kek(credential)? else {
            return Ok(None);
        };
        let aad = self.aad(vault_id);
        let key = Key256::fill_with(|out| {
            let mut buf = self.wrapped;
            let opened = aead::open(kek.0.expose_secret(), &self.nonce, &aad, &mut buf).map(|pt| {
                out.copy_from_slice(pt);
            });
            zeroize::Zeroize::zeroize(&mut buf);
            opened.ok_or(())
        });
        Ok(key.ok().map(VaultKey))
    }

    /// The KEK for `credential`, or `None` if it cannot open this kind.
    fn derive_kek(&self, credential: &Credential<'_>) -> Result<Option<SlotKek>> {
        match (&self.kind, credential) {
            (SlotKind::Passphrase(params), Credential::Passphrase(p)) => params
                .derive(p.expose_secret().as_bytes(), &self.salt)
                .map(Some),
            (SlotKind::Recovery | SlotKind::Temporary, Credential::RecoveryKey(k)) => {
                // One label per kind: a recovery key can never open a
                // temporary slot made from the same bytes, nor the reverse.
                let info = if self.kind == SlotKind::Recovery {
                    RECOVERY_KEK_INFO
                } else {
                    TEMPORARY_KEK_INFO
                };
                let hkdf = Hkdf::<Sha256>::new(Some(&self.salt), k.expose_secret());
                let kek = Key256::fill_with(|out| hkdf.expand(info, out))
                    // 32 bytes is far below HKDF-SHA256's output limit.
                    .unwrap_or_else(|_| unreachable!("HKDF-SHA256 can always expand 32 bytes"));
                Ok(Some(SlotKek(kek)))
            }
            _ => Ok(None),
        }
    }

    fn aad(&self, vault_id: &VaultId) -> Vec<u8> {
        let mut aad = Vec::with_capacity(AAD_PREFIX.len() + 16 + BOUND_LEN);
        aad.extend_from_slice(AAD_PREFIX);
        aad.extend_from_slice(vault_id.as_bytes());
        aad.extend_from_slice(&self.encode()[..BOUND_LEN]);
        aad
    }

    /// The slot's 108 bytes.
    pub(crate) fn encode(&self) -> [u8; SLOT_LEN] {
        let (kind, kdf, params) = match self.kind {
            SlotKind::Passphrase(KdfParams::Argon2id {
                memory_kib,
                iterations,
                parallelism,
            }) => (
                KIND_PASSPHRASE,
                KDF_ARGON2ID,
                [memory_kib, iterations, parallelism],
            ),
            SlotKind::Passphrase(KdfParams::Pbkdf2Sha256 { iterations }) => {
                (KIND_PASSPHRASE, KDF_PBKDF2_SHA256, [iterations, 0, 0])
            }
            SlotKind::Passphrase(KdfParams::Scrypt { log_n, r, p }) => {
                (KIND_PASSPHRASE, KDF_SCRYPT, [u32::from(log_n), r, p])
            }
            SlotKind::Recovery => (KIND_RECOVERY, KDF_HKDF_SHA256, [0, 0, 0]),
            SlotKind::Temporary => (KIND_TEMPORARY, KDF_HKDF_SHA256, [0, 0, 0]),
        };
        let mut out = [0u8; SLOT_LEN];
        out[0] = kind;
        out[1] = kdf;
        for (i, p) in params.iter().enumerate() {
            out[4 + 4 * i..8 + 4 * i].copy_from_slice(&p.to_le_bytes());
        }
        out[16..48].copy_from_slice(&self.salt);
        out[48..60].copy_from_slice(&self.nonce);
        out[60..].copy_from_slice(&self.wrapped);
        out
    }

    /// Parses one slot; `Ok(None)` for an empty (all-zero) slot. `index` is
    /// used in limit errors.
    pub(crate) fn decode(
        bytes: &[u8; SLOT_LEN],
        limits: &KdfLimits,
        index: usize,
    ) -> Result<Option<Self>> {
        let mut r = Reader::new(bytes);
        let kind = r.u8()?;
        let kdf = r.u8()?;
        let reserved = r.u16()?;
        let (p1, p2, p3) = (r.u32()?, r.u32()?, r.u32()?);
        let salt = r.array()?;
        let nonce = r.array()?;
        let wrapped = r.array()?;
        r.finish()?;
        if reserved != 0 {
            return Err(CorruptKind::Field("slot reserved bytes are not zero").into());
        }
        let kind = match (kind, kdf) {
            (KIND_EMPTY, _) => {
                if bytes.iter().any(|b| *b != 0) {
                    return Err(CorruptKind::Field("empty slot is not all zero").into());
                }
                return Ok(None);
            }
            (KIND_PASSPHRASE, kdf) => {
                let params = match kdf {
                    KDF_ARGON2ID => KdfParams::Argon2id {
                        memory_kib: p1,
                        iterations: p2,
                        parallelism: p3,
                    },
                    KDF_PBKDF2_SHA256 if p2 == 0 && p3 == 0 => {
                        KdfParams::Pbkdf2Sha256 { iterations: p1 }
                    }
                    KDF_SCRYPT => KdfParams::Scrypt {
                        log_n: u8::try_from(p1).map_err(|_| {
                            CorruptKind::Field("scrypt log2(N) does not fit a byte")
                        })?,
                        r: p2,
                        p: p3,
                    },
                    _ => return Err(CorruptKind::Field("unknown KDF for a passphrase slot").into()),
                };
                params.check_limits(limits, index)?;
                params
                    .validate()
                    .map_err(|_| CorruptKind::Field("KDF parameters out of range"))?;
                SlotKind::Passphrase(params)
            }
            (KIND_RECOVERY, KDF_HKDF_SHA256) if p1 == 0 && p2 == 0 && p3 == 0 => SlotKind::Recovery,
            (KIND_TEMPORARY, KDF_HKDF_SHA256) if p1 == 0 && p2 == 0 && p3 == 0 => {
                SlotKind::Temporary
            }
            (KIND_RECOVERY, _) => {
                return Err(CorruptKind::Field("invalid KDF for a recovery slot").into())
            }
            _ => return Err(CorruptKind::Field("unknown slot kind").into()),
        };
        Ok(Some(KeySlot {
            kind,
            salt,
            nonce,
            wrapped,
        }))
    }
}
