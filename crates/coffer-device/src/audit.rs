//! The vault's local audit log: security events, encrypted, in a MAC chain.
//!
//! Format (docs/formats/audit-log.md). `audit.log` is a 10-byte file header
//! (magic, version) followed by entries:
//!
//! ```text
//! seq u64 LE ‖ len u32 LE ‖ nonce[12] ‖ ciphertext[len] ‖ mac[32]
//! ciphertext = AES-256-GCM(audit-log key, nonce, event JSON, aad = ENTRY_LABEL ‖ seq)
//! mac        = HMAC-SHA256(audit-mac key, ENTRY_LABEL ‖ prev_mac ‖ seq ‖ len ‖ nonce ‖ ciphertext)
//! ```
//!
//! `prev_mac` is the previous entry's mac (32 zero bytes before the first):
//! editing an entry breaks its mac, deleting or swapping entries breaks the
//! sequence and the chain. Cutting entries off the end leaves a valid chain,
//! so `audit.head` anchors it: the count, the log's length and the last mac,
//! under their own HMAC tag, rewritten (atomically) after every append. A
//! crash between the append and the anchor leaves one entry past the
//! anchor, which is accepted (and adopted by the next append); a torn
//! append is cut off by the next append.
//!
//! Both keys derive from the vault key, so every entry needs the vault
//! open: failed passphrase attempts are counted in the clear `attempts`
//! file meanwhile and logged by the next successful unlock. A thief with a
//! copy of the disk can delete or roll back the log and its anchor together
//! (as any file); what he cannot do is forge, edit, reorder or cut entries
//! without the check saying so.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use serde_json::{json, Value};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::aead::{self, NONCE_LEN, TAG_LEN};
use crate::error::{Error, Result};
use crate::fsio::{self, FileLock};
use crate::secret::Subkey;

/// The log inside the vault directory.
pub(crate) const LOG_FILE: &str = "audit.log";
/// Its anchor.
pub(crate) const HEAD_FILE: &str = "audit.head";
const LOCK_FILE: &str = ".audit.lock";

const MAGIC: [u8; 8] = *b"\x89CFAUDT\n";
const HEAD_MAGIC: [u8; 8] = *b"\x89CFAHED\n";
/// Format version of both files.
pub const FORMAT_VERSION: u16 = 1;
const FILE_HEADER_LEN: usize = 10;
const ENTRY_LABEL: &[u8] = b"coffer/v1/audit-entry";
const HEAD_LABEL: &[u8] = b"coffer/v1/audit-head";
const MAC_LEN: usize = 32;
const ENTRY_FIXED_LEN: usize = 8 + 4 + NONCE_LEN + MAC_LEN;
const HEAD_LEN: usize = 8 + 2 + 8 + 8 + MAC_LEN + MAC_LEN;
/// Largest event, encrypted.
const MAX_ENTRY_LEN: usize = 64 * 1024;
/// Largest log read back: far beyond any device's history of events.
const MAX_LOG_LEN: usize = 256 * 1024 * 1024;

/// One event of the log.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct AuditEntry {
    /// Position in the chain, from 0.
    pub seq: u64,
    /// When it was recorded (device clock).
    pub at: SystemTime,
    /// What happened: `unlock`, `unlock_failed`, `slot_added`, …
    pub event: String,
    /// The event's details (slot names, counts; never a secret).
    pub details: Value,
}

/// What the check found wrong, at the first place it went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuditProblem {
    /// An entry's content or mac was changed.
    #[error("entry {seq} was altered")]
    Altered {
        /// The entry's position.
        seq: u64,
    },
    /// Entries are missing from the middle of the chain.
    #[error("entries are missing: expected entry {expected}, found entry {found}")]
    Missing {
        /// The entry that should come next.
        expected: u64,
        /// The entry found instead.
        found: u64,
    },
    /// Entries were moved.
    #[error("entries are out of order: expected entry {expected}, found entry {found}")]
    Reordered {
        /// The entry that should come next.
        expected: u64,
        /// The entry found instead.
        found: u64,
    },
    /// Entries were cut off the end.
    #[error("the log was truncated: {found} entries where {anchored} were recorded")]
    Truncated {
        /// Entries the anchor records.
        anchored: u64,
        /// Entries found.
        found: u64,
    },
    /// The log is gone, or was replaced by a fresh chain that does not start
    /// at the vault's creation.
    #[error("the audit log was deleted (or replaced by a new one)")]
    Deleted,
    /// More entries follow the anchor than a crash leaves (one): an older
    /// anchor may have been put back to hide entries cut off the end.
    #[error("{count} entries follow the anchor (a crash leaves at most one): an older anchor may hide a cut")]
    Unanchored {
        /// Entries past the anchor.
        count: u64,
    },
    /// The anchor was altered or removed, or disagrees with the log.
    #[error("the log's anchor (audit.head) is missing, altered or does not match the log")]
    Anchor,
    /// The bytes do not parse as a log of this version.
    #[error("the log is malformed at byte {offset}")]
    Malformed {
        /// Where parsing stopped.
        offset: u64,
    },
}

/// The log as read back: the entries that check out, and the first problem.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct AuditTrail {
    /// Every entry up to the first problem, in order.
    pub entries: Vec<AuditEntry>,
    /// `None` when the whole log checks out.
    pub problem: Option<AuditProblem>,
}

/// The keys of one vault's log.
pub(crate) struct AuditKeys {
    pub(crate) log: Subkey,
    pub(crate) mac: Subkey,
}

struct RawEntry<'a> {
    seq: u64,
    nonce: [u8; NONCE_LEN],
    ciphertext: &'a [u8],
    mac: [u8; MAC_LEN],
    end: usize,
}

struct Anchor {
    count: u64,
    log_len: u64,
    last_mac: [u8; MAC_LEN],
}

fn entry_mac(
    keys: &AuditKeys,
    prev: &[u8; MAC_LEN],
    seq: u64,
    nonce: &[u8],
    ct: &[u8],
) -> [u8; MAC_LEN] {
    let mut mac = Hmac::<Sha256>::new_from_slice(keys.mac.expose_secret())
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(ENTRY_LABEL);
    mac.update(prev);
    mac.update(&seq.to_le_bytes());
    mac.update(&(ct.len() as u32).to_le_bytes());
    mac.update(nonce);
    mac.update(ct);
    mac.finalize().into_bytes().into()
}

fn entry_aad(seq: u64) -> Vec<u8> {
    let mut aad = ENTRY_LABEL.to_vec();
    aad.extend_from_slice(&seq.to_le_bytes());
    aad
}

/// Parses the entry at `offset`; `None` if the bytes there are not one.
fn parse_entry(bytes: &[u8], offset: usize) -> Option<RawEntry<'_>> {
    let fixed = bytes.get(offset..offset + 8 + 4 + NONCE_LEN)?;
    let seq = u64::from_le_bytes(fixed[..8].try_into().ok()?);
    let len = u32::from_le_bytes(fixed[8..12].try_into().ok()?) as usize;
    if !(TAG_LEN..=MAX_ENTRY_LEN).contains(&len) {
        return None;
    }
    let nonce: [u8; NONCE_LEN] = fixed[12..].try_into().ok()?;
    let ct_start = offset + fixed.len();
    let ciphertext = bytes.get(ct_start..ct_start + len)?;
    let mac: [u8; MAC_LEN] = bytes
        .get(ct_start + len..ct_start + len + MAC_LEN)?
        .try_into()
        .ok()?;
    Some(RawEntry {
        seq,
        nonce,
        ciphertext,
        mac,
        end: ct_start + len + MAC_LEN,
    })
}

fn head_tag(keys: &AuditKeys, body: &[u8]) -> [u8; MAC_LEN] {
    let mut mac = Hmac::<Sha256>::new_from_slice(keys.mac.expose_secret())
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(HEAD_LABEL);
    mac.update(body);
    mac.finalize().into_bytes().into()
}

fn encode_head(keys: &AuditKeys, anchor: &Anchor) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEAD_LEN);
    out.extend_from_slice(&HEAD_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&anchor.count.to_le_bytes());
    out.extend_from_slice(&anchor.log_len.to_le_bytes());
    out.extend_from_slice(&anchor.last_mac);
    let tag = head_tag(keys, &out);
    out.extend_from_slice(&tag);
    out
}

/// The anchor, if present and authentic.
fn read_head(dir: &Path, keys: &AuditKeys) -> Result<Option<Anchor>> {
    Ok(read_head_bytes(dir)?.and_then(|bytes| parse_head(&bytes, keys)))
}

fn read_head_bytes(dir: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(dir.join(HEAD_FILE)) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("reading", dir.join(HEAD_FILE), e)),
    }
}

/// The anchor in `bytes`, if they are one and authentic.
fn parse_head(bytes: &[u8], keys: &AuditKeys) -> Option<Anchor> {
    if bytes.len() != HEAD_LEN
        || bytes[..8] != HEAD_MAGIC
        || bytes[8..10] != FORMAT_VERSION.to_le_bytes()
    {
        return None;
    }
    let (body, tag) = bytes.split_at(HEAD_LEN - MAC_LEN);
    if !bool::from(head_tag(keys, body).ct_eq(tag)) {
        return None;
    }
    let u64_at = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().unwrap_or([0; 8]));
    let mut last_mac = [0u8; MAC_LEN];
    last_mac.copy_from_slice(&body[26..58]);
    Some(Anchor {
        count: u64_at(10),
        log_len: u64_at(18),
        last_mac,
    })
}

fn read_log(path: &Path) -> Result<Option<Vec<u8>>> {
    match fsio::read_limited(path, MAX_LOG_LEN) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Encrypts one event as entry `seq` after `prev`.
fn seal_entry(
    keys: &AuditKeys,
    seq: u64,
    prev: &[u8; MAC_LEN],
    plaintext: &[u8],
    nonce: [u8; NONCE_LEN],
) -> (Vec<u8>, [u8; MAC_LEN]) {
    let mut ciphertext = plaintext.to_vec();
    aead::seal(
        keys.log.expose_secret(),
        &nonce,
        &entry_aad(seq),
        &mut ciphertext,
    );
    let mac = entry_mac(keys, prev, seq, &nonce, &ciphertext);
    let mut out = Vec::with_capacity(ENTRY_FIXED_LEN + ciphertext.len());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(ciphertext.len() as u32).to_le_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    out.extend_from_slice(&mac);
    (out, mac)
}

fn file_header() -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out
}

/// The event kinds a genuine log may start with: the vault's creation, or
/// (after a rotation that found the old log damaged) the record of that.
const FIRST_EVENTS: [&str; 2] = ["vault_created", "audit_chain_broken"];

fn too_large() -> Error {
    Error::NotPermitted("the audit log has reached its size limit (256 MiB)")
}

/// Appends one event to the log in `dir`. `event` names it; `details` must
/// be a JSON object and must never hold a secret.
pub(crate) fn append(dir: &Path, keys: &AuditKeys, event: &str, details: Value) -> Result<()> {
    let mut body = match details {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    body.insert("at".into(), json!(now_unix()));
    body.insert("event".into(), json!(event));
    let plaintext = Value::Object(body).to_string().into_bytes();
    if plaintext.len() + TAG_LEN > MAX_ENTRY_LEN {
        return Err(Error::NotPermitted("an audit event is too large"));
    }

    let _lock = FileLock::acquire(&dir.join(LOCK_FILE))?;
    let path = dir.join(LOG_FILE);
    let existing = read_log(&path)?;
    let len = existing.as_ref().map_or(0, Vec::len);
    if len > MAX_LOG_LEN {
        return Err(too_large());
    }
    let anchor = read_head(dir, keys)?;
    let (mut count, mut prev, mut end) = match &anchor {
        Some(a) => (a.count, a.last_mac, a.log_len as usize),
        None => (0, [0u8; MAC_LEN], FILE_HEADER_LEN),
    };
    let start_new = len < FILE_HEADER_LEN;
    let mut cut_torn_tail = false;
    if let Some(bytes) = existing.as_ref().filter(|_| !start_new) {
        if anchor.is_some() {
            // Every entry past the anchor that chains on from it was written
            // by a key holder whose anchor write did not happen (a crash):
            // adopt them all.
            while let Some(entry) = parse_entry(bytes, end) {
                let expected = entry_mac(keys, &prev, count, &entry.nonce, entry.ciphertext);
                if entry.seq != count || !bool::from(expected.ct_eq(&entry.mac)) {
                    break;
                }
                count += 1;
                prev = entry.mac;
                end = entry.end;
            }
        }
        if len > end {
            let remainder = len - end;
            // The anchored (or adopted) entry must really end here: its mac
            // is the last 32 bytes before `end`. Else bytes were inserted
            // before it, and cutting would destroy real entries.
            let chain_ends_here = end >= FILE_HEADER_LEN + MAC_LEN
                && bytes.get(end - MAC_LEN..end) == Some(&prev[..]);
            if anchor.is_some()
                && chain_ends_here
                && parse_entry(bytes, end).is_none()
                && remainder < ENTRY_FIXED_LEN + MAX_ENTRY_LEN
            {
                // Less than one entry, past a sound anchored chain: an
                // append torn by a crash. Cut it off.
                cut_torn_tail = true;
            } else {
                // Anything else is evidence: keep it and append after it
                // (the check reports it). Without an anchor nothing is
                // adopted either, so a deleted anchor stays visible.
                end = len;
            }
        } else if len < end {
            // Cut short by someone: append after what is left; the check
            // reports the gap.
            end = len;
        }
    }
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.try_fill_bytes(&mut nonce)?;
    let (entry, mac) = seal_entry(keys, count, &prev, &plaintext, nonce);

    if start_new {
        fsio::create_private_file(&path)?;
    }
    let write = (|| -> std::io::Result<usize> {
        use std::io::{Seek, SeekFrom};
        let mut file = OpenOptions::new().write(true).open(&path)?;
        if start_new {
            file.set_len(0)?;
            file.write_all(&file_header())?;
            end = FILE_HEADER_LEN;
        } else if cut_torn_tail {
            file.set_len(end as u64)?;
        }
        file.seek(SeekFrom::Start(end as u64))?;
        file.write_all(&entry)?;
        file.sync_all()?;
        Ok(end + entry.len())
    })();
    let new_len = write.map_err(|e| Error::io("writing", &path, e))?;
    fsio::write_atomic(
        &dir.join(HEAD_FILE),
        &encode_head(
            keys,
            &Anchor {
                count: count + 1,
                log_len: new_len as u64,
                last_mac: mac,
            },
        ),
    )
}

/// Reads and checks the whole log in `dir`.
pub(crate) fn read(dir: &Path, keys: &AuditKeys) -> Result<AuditTrail> {
    // Appends write the log, then the anchor: reading between the two
    // would see them disagree.
    let _lock = FileLock::acquire(&dir.join(LOCK_FILE))?;
    read_locked(dir, keys)
}

fn read_locked(dir: &Path, keys: &AuditKeys) -> Result<AuditTrail> {
    let head = read_head_bytes(dir)?;
    let log = read_log(&dir.join(LOG_FILE))?;
    if log.as_ref().is_some_and(|l| l.len() > MAX_LOG_LEN) {
        return Err(too_large());
    }
    Ok(check(log.as_deref(), head.as_deref(), keys))
}

/// Checks a log and its anchor, as bytes (`None`: the file is missing).
pub(crate) fn check(log: Option<&[u8]>, head: Option<&[u8]>, keys: &AuditKeys) -> AuditTrail {
    let anchor = head.and_then(|h| parse_head(h, keys));
    let head_present = head.is_some();
    let mut trail = AuditTrail {
        entries: Vec::new(),
        problem: None,
    };
    let Some(bytes) = log else {
        // Every vault writes its first entry when it is created.
        trail.problem = Some(match anchor {
            Some(a) => AuditProblem::Truncated {
                anchored: a.count,
                found: 0,
            },
            None if head_present => AuditProblem::Anchor,
            None => AuditProblem::Deleted,
        });
        return trail;
    };
    if bytes.len() < FILE_HEADER_LEN || bytes[..FILE_HEADER_LEN] != file_header()[..] {
        trail.problem = Some(AuditProblem::Malformed { offset: 0 });
        return trail;
    }
    // Every entry's sequence number, to tell a deletion from a swap.
    let mut all_seqs = Vec::new();
    let mut offset = FILE_HEADER_LEN;
    while let Some(entry) = parse_entry(bytes, offset) {
        all_seqs.push(entry.seq);
        offset = entry.end;
    }
    let parsed_to = offset;

    let mut prev = [0u8; MAC_LEN];
    let mut macs: Vec<([u8; MAC_LEN], usize)> = Vec::new();
    let mut offset = FILE_HEADER_LEN;
    let mut expected = 0u64;
    while let Some(entry) = parse_entry(bytes, offset) {
        if entry.seq != expected {
            trail.problem = Some(if all_seqs.contains(&expected) {
                AuditProblem::Reordered {
                    expected,
                    found: entry.seq,
                }
            } else {
                AuditProblem::Missing {
                    expected,
                    found: entry.seq,
                }
            });
            return trail;
        }
        let mac = entry_mac(keys, &prev, entry.seq, &entry.nonce, entry.ciphertext);
        if !bool::from(mac.ct_eq(&entry.mac)) {
            trail.problem = Some(AuditProblem::Altered { seq: entry.seq });
            return trail;
        }
        let Some(event) = open_entry(keys, &entry) else {
            trail.problem = Some(AuditProblem::Altered { seq: entry.seq });
            return trail;
        };
        let entry_view = to_entry(entry.seq, event);
        if entry.seq == 0 && !FIRST_EVENTS.contains(&entry_view.event.as_str()) {
            // A fresh chain where the vault's history was: the old log and
            // its anchor were deleted, and an append started over.
            trail.problem = Some(AuditProblem::Deleted);
            return trail;
        }
        trail.entries.push(entry_view);
        macs.push((entry.mac, entry.end));
        prev = entry.mac;
        expected += 1;
        offset = entry.end;
    }
    if parsed_to != bytes.len() {
        // Bytes that are no entry: only an append torn by a crash, shorter
        // than one entry and past a sound anchor, is harmless.
        let torn_tail = anchor.as_ref().is_some_and(|a| {
            a.count <= expected
                && a.log_len as usize <= parsed_to
                && bytes.len() - parsed_to < ENTRY_FIXED_LEN + MAX_ENTRY_LEN
        });
        if !torn_tail {
            trail.problem = Some(AuditProblem::Malformed {
                offset: parsed_to as u64,
            });
            return trail;
        }
    }
    trail.problem = match anchor {
        None if expected == 0 => Some(AuditProblem::Deleted),
        None => Some(AuditProblem::Anchor),
        Some(a) if a.count > expected => Some(AuditProblem::Truncated {
            anchored: a.count,
            found: expected,
        }),
        // Entries past the anchor are fine (a crash came between an append
        // and its anchor; they chain, so a key holder wrote them); the
        // anchor must name one of the entries, exactly.
        Some(a) => {
            let named = a
                .count
                .checked_sub(1)
                .and_then(|i| macs.get(usize::try_from(i).ok()?));
            match named {
                Some((mac, end))
                    if bool::from(mac.ct_eq(&a.last_mac)) && *end as u64 == a.log_len =>
                {
                    if expected > a.count + 1 {
                        Some(AuditProblem::Unanchored {
                            count: expected - a.count,
                        })
                    } else {
                        None
                    }
                }
                _ => Some(AuditProblem::Anchor),
            }
        }
    };
    trail
}

/// Decrypts one entry's event. The AES-GCM tag authenticates it (and its
/// sequence number) on its own, chain or no chain.
fn open_entry(keys: &AuditKeys, entry: &RawEntry<'_>) -> Option<Value> {
    let mut plain = entry.ciphertext.to_vec();
    aead::open(
        keys.log.expose_secret(),
        &entry.nonce,
        &entry_aad(entry.seq),
        &mut plain,
    )
    .and_then(|p| serde_json::from_slice::<Value>(p).ok())
}

fn to_entry(seq: u64, mut event: Value) -> AuditEntry {
    let at = event.get("at").and_then(Value::as_i64).unwrap_or(0);
    let name = event
        .get("event")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if let Value::Object(map) = &mut event {
        map.remove("at");
        map.remove("event");
    }
    AuditEntry {
        seq,
        at: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(at).unwrap_or(0)),
        event: name,
        details: event,
    }
}

fn from_entry(entry: &AuditEntry) -> Value {
    let mut v = entry.details.clone();
    if let Value::Object(map) = &mut v {
        let at = entry
            .at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        map.insert("at".into(), json!(at));
        map.insert("event".into(), json!(entry.event));
    }
    v
}

/// Rotation: writes the log again under `new` keys into `staging`, entry
/// for entry (same sequence, same events, fresh nonces, a new chain).
///
/// If the old log fails its check, the entries before the problem are
/// carried, then an `audit_chain_broken` entry naming the problem, then
/// every later entry whose own AES-GCM tag still authenticates it (marked
/// `salvaged`, with its old sequence number), and an
/// `audit_entry_unreadable` stand-in for each that does not: a rotation
/// never launders tampering, and destroys no evidence it can read.
pub(crate) fn reencrypt(
    dir: &Path,
    old: &AuditKeys,
    staging: &Path,
    new: &AuditKeys,
) -> Result<u64> {
    let _lock = FileLock::acquire(&dir.join(LOCK_FILE))?;
    let trail = read_locked(dir, old)?;
    let mut events: Vec<Value> = trail.entries.iter().map(from_entry).collect();
    if let Some(problem) = &trail.problem {
        events.push(json!({
            "at": now_unix(),
            "event": "audit_chain_broken",
            "problem": problem.to_string(),
        }));
        if let Some(bytes) = read_log(&dir.join(LOG_FILE))?.filter(|b| b.len() <= MAX_LOG_LEN) {
            let mut offset = FILE_HEADER_LEN;
            let mut index = 0;
            while offset < bytes.len() {
                let Some(entry) = parse_entry(&bytes, offset) else {
                    // Bytes that are no entry (inserted, or damaged): skip to
                    // the next place where an entry parses and its own tag
                    // opens, and say how much was skipped.
                    let resume = (offset + 1..bytes.len())
                        .find(|&o| {
                            parse_entry(&bytes, o).is_some_and(|e| open_entry(old, &e).is_some())
                        })
                        .unwrap_or(bytes.len());
                    events.push(json!({
                        "at": now_unix(),
                        "event": "audit_bytes_unreadable",
                        "offset": offset,
                        "len": resume - offset,
                    }));
                    offset = resume;
                    continue;
                };
                if index >= trail.entries.len() {
                    let carried = match open_entry(old, &entry) {
                        Some(mut event) => {
                            if let Value::Object(map) = &mut event {
                                map.insert("salvaged".into(), json!(true));
                                map.insert("original_seq".into(), json!(entry.seq));
                            }
                            event
                        }
                        None => json!({
                            "at": now_unix(),
                            "event": "audit_entry_unreadable",
                            "original_seq": entry.seq,
                        }),
                    };
                    // Never past the entry size limit: the new log must read.
                    events.push(if carried.to_string().len() + TAG_LEN > MAX_ENTRY_LEN {
                        json!({
                            "at": now_unix(),
                            "event": "audit_entry_too_large_to_carry",
                            "original_seq": entry.seq,
                        })
                    } else {
                        carried
                    });
                }
                index += 1;
                offset = entry.end;
            }
        }
    }
    let mut out = file_header();
    let mut prev = [0u8; MAC_LEN];
    let count = events.len() as u64;
    for (seq, event) in events.iter().enumerate() {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.try_fill_bytes(&mut nonce)?;
        let (entry, mac) = seal_entry(new, seq as u64, &prev, event.to_string().as_bytes(), nonce);
        out.extend_from_slice(&entry);
        prev = mac;
    }
    let head = encode_head(
        new,
        &Anchor {
            count,
            log_len: out.len() as u64,
            last_mac: prev,
        },
    );
    for (name, bytes) in [(LOG_FILE, &out), (HEAD_FILE, &head)] {
        let path: PathBuf = staging.join(name);
        fsio::create_private_file(&path)?;
        fs::write(&path, bytes).map_err(|e| Error::io("writing", &path, e))?;
    }
    Ok(count)
}

/// Builds a whole log and its anchor from given events and nonces, for the
/// test vectors.
#[cfg(test)]
pub(crate) fn log_for_vectors(
    keys: &AuditKeys,
    events: &[(&[u8], [u8; NONCE_LEN])],
) -> (Vec<u8>, Vec<u8>) {
    let mut log = file_header();
    let mut prev = [0u8; MAC_LEN];
    for (seq, (plaintext, nonce)) in events.iter().enumerate() {
        let (entry, mac) = seal_entry(keys, seq as u64, &prev, plaintext, *nonce);
        log.extend_from_slice(&entry);
        prev = mac;
    }
    let head = encode_head(
        keys,
        &Anchor {
            count: events.len() as u64,
            log_len: log.len() as u64,
            last_mac: prev,
        },
    );
    (log, head)
}
