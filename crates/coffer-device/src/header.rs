//! The vault header file: magic, version, vault id, sixteen key slots,
//! encrypted slot metadata, a MAC under the vault key and a checksum.
//!
//! Byte layout (all integers little-endian; docs/formats/vault-header.md is
//! the normative text, with test vectors):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `89 43 4F 46 46 45 52 0A` ("\x89COFFER\n") |
//! | 8 | 2 | format version, 1 |
//! | 10 | 2 | flags, 0 |
//! | 12 | 16 | vault id (random) |
//! | 28 | 1 | slot count, 16 |
//! | 29 | 3 | lockout: action (0 off, 1 lock, 2 wipe) ‖ u16 max failures |
//! | 32 | 16 × 108 | key slots ([`crate::keyslot`]) |
//! | 1760 | 4 | metadata ciphertext length L (16 ≤ L ≤ 65536) |
//! | 1764 | 12 | metadata nonce |
//! | 1776 | L | metadata, AES-256-GCM under the header-meta subkey, AAD = bytes 0..1764 |
//! | 1776+L | 32 | HMAC-SHA256 under the header-mac subkey over bytes 0..1776+L |
//! | 1808+L | 32 | SHA-256 over bytes 0..1808+L |
//!
//! The checksum needs no key, so damage is reported before any KDF runs. The
//! MAC needs the vault key: once a slot opens, any change anywhere in the
//! header — a swapped slot, an edited name, a replayed metadata blob — is
//! [`Error::Tampered`].

use hmac::{Hmac, Mac};
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};

use crate::aead::{self, NONCE_LEN, TAG_LEN};
use crate::codec::Reader;
use crate::error::{CorruptKind, Error, Result};
use crate::kdf::{KdfLimitError, KdfLimits};
use crate::keyslot::{KeySlot, SlotKind, SLOT_LEN};
use crate::secret::VaultKey;
use crate::subkey::{self, Purpose};

/// The first eight bytes of every header. The high-bit first byte and the
/// final newline catch 7-bit and line-ending mangling, as in PNG.
pub const MAGIC: [u8; 8] = *b"\x89COFFER\n";
/// The header format version this code writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Number of key slots in a header.
pub const SLOT_COUNT: usize = 16;
/// Largest metadata ciphertext.
pub const MAX_META_LEN: usize = 64 * 1024;

const PREFIX_LEN: usize = 32;
const SLOTS_END: usize = PREFIX_LEN + SLOT_COUNT * SLOT_LEN;
const META_NONCE_AT: usize = SLOTS_END + 4;
const META_AT: usize = META_NONCE_AT + NONCE_LEN;
const MAC_LEN: usize = 32;
const CHECKSUM_LEN: usize = 32;
/// Smallest well-formed header.
pub const MIN_HEADER_LEN: usize = META_AT + TAG_LEN + MAC_LEN + CHECKSUM_LEN;
/// Largest well-formed header.
pub const MAX_HEADER_LEN: usize = META_AT + MAX_META_LEN + MAC_LEN + CHECKSUM_LEN;

const META_VERSION: u8 = 1;
/// Longest slot name, in bytes.
pub const MAX_SLOT_NAME_LEN: usize = 64;

/// A vault's random 128-bit identifier. Not secret: it salts the subkeys and
/// binds slots to their vault.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct VaultId([u8; 16]);

impl VaultId {
    pub(crate) fn random(rng: &mut (impl RngCore + CryptoRng)) -> Result<Self> {
        let mut id = [0u8; 16];
        rng.try_fill_bytes(&mut id)?;
        Ok(VaultId(id))
    }

    /// A vault id from its 16 bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        VaultId(bytes)
    }

    /// The raw 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl std::fmt::Display for VaultId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for VaultId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VaultId({self})")
    }
}

/// Name and creation time of one slot (kept encrypted in the header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlotMeta {
    pub(crate) name: String,
    pub(crate) created_at: i64,
    /// Temporary keys: refused at or after this time (Unix seconds).
    pub(crate) expires_at: Option<i64>,
    /// Temporary keys: the slot is removed by the unlock that uses it.
    pub(crate) single_use: bool,
}

impl SlotMeta {
    pub(crate) fn new(name: String, created_at: i64) -> Self {
        SlotMeta {
            name,
            created_at,
            expires_at: None,
            single_use: false,
        }
    }
}

/// Everything the header holds, once authenticated and decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) vault_id: VaultId,
    pub(crate) created_at: i64,
    /// The latest time any unlock has seen (Unix seconds): time never runs
    /// backwards for expiry checks, whatever the system clock says.
    pub(crate) latest_seen: i64,
    pub(crate) lockout: Lockout,
    pub(crate) slots: [Option<(KeySlot, SlotMeta)>; SLOT_COUNT],
}

/// What happens after too many failed passphrase attempts. Kept in the
/// header's public part (bytes 29..32): it must be known while the vault is
/// locked. The MAC covers it, so an edit is caught at the next unlock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Lockout {
    /// No limit (back-off between attempts still applies).
    #[default]
    Off,
    /// After this many failures in a row, passphrase slots refuse to open:
    /// only a recovery or temporary key opens the vault (and resets it).
    Lock(u16),
    /// After this many failures in a row, the vault is wiped.
    Wipe(u16),
}

impl Lockout {
    fn encode(self) -> [u8; 3] {
        let (action, max) = match self {
            Lockout::Off => (0u8, 0u16),
            Lockout::Lock(n) => (1, n),
            Lockout::Wipe(n) => (2, n),
        };
        let m = max.to_le_bytes();
        [action, m[0], m[1]]
    }

    fn decode(bytes: [u8; 3]) -> Result<Self, CorruptKind> {
        let max = u16::from_le_bytes([bytes[1], bytes[2]]);
        match (bytes[0], max) {
            (0, 0) => Ok(Lockout::Off),
            (1, n) if n > 0 => Ok(Lockout::Lock(n)),
            (2, n) if n > 0 => Ok(Lockout::Wipe(n)),
            _ => Err(CorruptKind::Field("invalid lockout setting")),
        }
    }
}

/// A header as read from disk: structure checked, not yet authenticated.
pub(crate) struct SealedHeader {
    pub(crate) vault_id: VaultId,
    pub(crate) lockout: Lockout,
    pub(crate) slots: [Option<KeySlot>; SLOT_COUNT],
    bytes: Vec<u8>,
}

/// Checks that `name` is a valid slot name.
pub(crate) fn validate_slot_name(name: &str) -> Result<()> {
    let rule = if name.is_empty() || name.len() > MAX_SLOT_NAME_LEN {
        Some("must be 1 to 64 bytes")
    } else if name.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else if name.trim() != name {
        Some("must not start or end with white space")
    } else {
        None
    };
    match rule {
        Some(rule) => Err(Error::InvalidName {
            what: "slot name",
            name: name.escape_debug().to_string(),
            rule,
        }),
        None => Ok(()),
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn header_mac(vault_key: &VaultKey, vault_id: &VaultId) -> Hmac<Sha256> {
    let key = subkey::derive(vault_key, vault_id, Purpose::HeaderMac);
    // HMAC accepts keys of any length.
    Hmac::<Sha256>::new_from_slice(key.expose_secret())
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"))
}

impl SealedHeader {
    /// Parses header bytes. Checks, in order: magic, length, checksum,
    /// version, then every field; slot KDF parameters are held to `limits`.
    pub(crate) fn parse(bytes: Vec<u8>, limits: &KdfLimits) -> Result<Self> {
        if bytes.len() >= MAGIC.len() && bytes[..MAGIC.len()] != MAGIC {
            return Err(CorruptKind::BadMagic.into());
        }
        if bytes.len() < MIN_HEADER_LEN {
            return Err(CorruptKind::Truncated.into());
        }
        if bytes.len() > MAX_HEADER_LEN {
            return Err(CorruptKind::TooLarge.into());
        }
        let (body, checksum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        if sha256(body) != checksum {
            // Say "truncated" when the declared length shows the file is short.
            let declared = u32::from_le_bytes([
                bytes[SLOTS_END],
                bytes[SLOTS_END + 1],
                bytes[SLOTS_END + 2],
                bytes[SLOTS_END + 3],
            ]) as usize;
            let truncated = declared <= MAX_META_LEN
                && bytes.len() < META_AT + declared + MAC_LEN + CHECKSUM_LEN;
            return Err(if truncated {
                CorruptKind::Truncated
            } else {
                CorruptKind::Checksum
            }
            .into());
        }

        let mut r = Reader::new(body);
        r.take(MAGIC.len())?;
        let version = r.u16()?;
        if version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        if r.u16()? != 0 {
            return Err(CorruptKind::Field("unknown header flags").into());
        }
        let vault_id = VaultId(r.array()?);
        if usize::from(r.u8()?) != SLOT_COUNT {
            return Err(CorruptKind::Field("slot count is not 16").into());
        }
        let lockout = Lockout::decode(r.array()?)?;
        let mut slots: [Option<KeySlot>; SLOT_COUNT] = Default::default();
        // Unlocking may run every passphrase slot: bound their sum too.
        let mut total_work = 0.0;
        for (index, slot) in slots.iter_mut().enumerate() {
            *slot = KeySlot::decode(&r.array()?, limits, index)?;
            if let Some(KeySlot {
                kind: SlotKind::Passphrase(params),
                ..
            }) = slot
            {
                total_work += params.work_fraction(limits);
                if total_work > limits.max_total_work {
                    return Err(KdfLimitError {
                        slot: index,
                        what: "total KDF work of all slots (% of one slot's cap)",
                        // Rounded apart (the value up, the cap down), so that
                        // a sum just over the cap never reads "800, above …
                        // cap of 800".
                        value: (total_work * 100.0).ceil() as u64,
                        limit: (limits.max_total_work * 100.0).floor() as u64,
                    }
                    .into());
                }
            }
        }
        let meta_len = r.u32()? as usize;
        if !(TAG_LEN..=MAX_META_LEN).contains(&meta_len) {
            return Err(CorruptKind::Field("metadata length out of range").into());
        }
        r.take(NONCE_LEN + meta_len + MAC_LEN)?;
        r.finish()?;
        Ok(SealedHeader {
            vault_id,
            lockout,
            slots,
            bytes,
        })
    }

    /// Verifies the MAC with `vault_key` and decrypts the metadata.
    pub(crate) fn authenticate(&self, vault_key: &VaultKey) -> Result<Header> {
        let mac_at = self.bytes.len() - CHECKSUM_LEN - MAC_LEN;
        let mut mac = header_mac(vault_key, &self.vault_id);
        mac.update(&self.bytes[..mac_at]);
        mac.verify_slice(&self.bytes[mac_at..mac_at + MAC_LEN])
            .map_err(|_| Error::Tampered)?;

        let meta_key = subkey::derive(vault_key, &self.vault_id, Purpose::HeaderMeta);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&self.bytes[META_NONCE_AT..META_AT]);
        let mut meta = self.bytes[META_AT..mac_at].to_vec();
        let plain = aead::open(
            meta_key.expose_secret(),
            &nonce,
            &self.bytes[..META_NONCE_AT],
            &mut meta,
        )
        .ok_or(Error::Tampered)?;
        let (created_at, latest_seen, names) = decode_meta(plain)?;

        let mut slots: [Option<(KeySlot, SlotMeta)>; SLOT_COUNT] = Default::default();
        for (index, (slot, meta)) in self.slots.iter().zip(names).enumerate() {
            slots[index] = match (slot, meta) {
                (Some(slot), Some(meta)) => Some((slot.clone(), meta)),
                (None, None) => None,
                _ => return Err(CorruptKind::Field("metadata does not match the slots").into()),
            };
        }
        Ok(Header {
            vault_id: self.vault_id,
            created_at,
            latest_seen,
            lockout: self.lockout,
            slots,
        })
    }
}

impl Header {
    /// Encodes, encrypts and authenticates the header with a fresh metadata
    /// nonce from `rng`.
    pub(crate) fn seal(
        &self,
        vault_key: &VaultKey,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.try_fill_bytes(&mut nonce)?;
        Ok(self.seal_inner(vault_key, &nonce))
    }

    /// Seals with a given metadata nonce: only the test vectors and property
    /// tests may choose one (a repeated nonce under one key is a break).
    #[cfg(test)]
    pub(crate) fn seal_with_nonce(&self, vault_key: &VaultKey, nonce: &[u8; NONCE_LEN]) -> Vec<u8> {
        self.seal_inner(vault_key, nonce)
    }

    fn seal_inner(&self, vault_key: &VaultKey, nonce: &[u8; NONCE_LEN]) -> Vec<u8> {
        let mut meta = encode_meta(self);
        let mut out = Vec::with_capacity(META_AT + meta.len() + TAG_LEN + MAC_LEN + CHECKSUM_LEN);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(self.vault_id.as_bytes());
        out.push(SLOT_COUNT as u8);
        out.extend_from_slice(&self.lockout.encode());
        for slot in &self.slots {
            match slot {
                Some((slot, _)) => out.extend_from_slice(&slot.encode()),
                None => out.extend_from_slice(&[0u8; SLOT_LEN]),
            }
        }
        let meta_len = u32::try_from(meta.len() + TAG_LEN).unwrap_or_else(|_| {
            unreachable!("16 slots of ≤ 64-byte names fit in far less than 4 GiB")
        });
        out.extend_from_slice(&meta_len.to_le_bytes());
        out.extend_from_slice(nonce);
        let meta_key = subkey::derive(vault_key, &self.vault_id, Purpose::HeaderMeta);
        aead::seal(
            meta_key.expose_secret(),
            nonce,
            &out[..META_NONCE_AT],
            &mut meta,
        );
        out.extend_from_slice(&meta);
        let mac = header_mac(vault_key, &self.vault_id)
            .chain_update(&out)
            .finalize()
            .into_bytes();
        out.extend_from_slice(&mac);
        let checksum = sha256(&out);
        out.extend_from_slice(&checksum);
        out
    }
}

/// Metadata plaintext: version, vault creation time, latest time seen, then
/// one entry per used slot in ascending index order.
fn encode_meta(header: &Header) -> Vec<u8> {
    let used: Vec<(usize, &SlotMeta)> = header
        .slots
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.as_ref().map(|(_, m)| (i, m)))
        .collect();
    let mut out = vec![META_VERSION];
    out.extend_from_slice(&header.created_at.to_le_bytes());
    out.extend_from_slice(&header.latest_seen.to_le_bytes());
    out.push(used.len() as u8);
    for (index, meta) in used {
        out.push(index as u8);
        out.push(meta.name.len() as u8);
        out.extend_from_slice(meta.name.as_bytes());
        out.extend_from_slice(&meta.created_at.to_le_bytes());
        out.push(u8::from(meta.single_use) | (u8::from(meta.expires_at.is_some()) << 1));
        out.extend_from_slice(&meta.expires_at.unwrap_or(0).to_le_bytes());
    }
    out
}

type SlotMetas = [Option<SlotMeta>; SLOT_COUNT];

pub(crate) fn decode_meta(plain: &[u8]) -> Result<(i64, i64, SlotMetas)> {
    let mut r = Reader::new(plain);
    if r.u8()? != META_VERSION {
        return Err(CorruptKind::Field("unknown metadata version").into());
    }
    let created_at = r.i64()?;
    let latest_seen = r.i64()?;
    let count = usize::from(r.u8()?);
    let mut metas: SlotMetas = Default::default();
    let mut previous: Option<usize> = None;
    for _ in 0..count {
        let index = usize::from(r.u8()?);
        if index >= SLOT_COUNT || previous.is_some_and(|p| p >= index) {
            return Err(CorruptKind::Field("metadata slot index out of order").into());
        }
        previous = Some(index);
        let len = usize::from(r.u8()?);
        let name = std::str::from_utf8(r.take(len)?)
            .map_err(|_| CorruptKind::Field("slot name is not UTF-8"))?
            .to_owned();
        validate_slot_name(&name).map_err(|_| CorruptKind::Field("invalid slot name"))?;
        if metas.iter().flatten().any(|m| m.name == name) {
            return Err(CorruptKind::Field("duplicate slot name").into());
        }
        let created_at = r.i64()?;
        let flags = r.u8()?;
        let expires_at = r.i64()?;
        if flags & !0b11 != 0 || (flags & 0b10 == 0 && expires_at != 0) {
            return Err(CorruptKind::Field("invalid slot flags").into());
        }
        metas[index] = Some(SlotMeta {
            name,
            created_at,
            expires_at: (flags & 0b10 != 0).then_some(expires_at),
            single_use: flags & 0b01 != 0,
        });
    }
    r.finish()?;
    Ok((created_at, latest_seen, metas))
}
