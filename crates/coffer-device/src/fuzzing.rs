//! Entry points for the cargo-fuzz targets (feature `fuzzing` only).

use crate::header::{self, SealedHeader};
use crate::secret::{Key256, VaultKey};
use crate::KdfLimits;
use sha2::{Digest, Sha256};

/// Parses `data` as a header, twice: as it is, and with its trailing
/// SHA-256 checksum recomputed (as an attacker editing the file would), so
/// that mutations reach the field parsers behind the checksum. Whatever
/// parses is then authenticated with the seed corpus's vault key.
pub fn header(data: &[u8]) {
    parse_and_authenticate(data.to_vec());
    if data.len() >= 32 {
        let mut fixed = data.to_vec();
        let body = fixed.len() - 32;
        let sum: [u8; 32] = Sha256::digest(&fixed[..body]).into();
        fixed[body..].copy_from_slice(&sum);
        parse_and_authenticate(fixed);
    }
}

fn parse_and_authenticate(bytes: Vec<u8>) {
    if let Ok(sealed) = SealedHeader::parse(bytes, &KdfLimits::default()) {
        let _ = sealed.authenticate(&fixed_key());
    }
}

/// Decodes `data` as the header's decrypted slot metadata.
pub fn metadata(data: &[u8]) {
    let _ = header::decode_meta(data);
}

/// The vault key of docs/test-vectors/vault-header-v1.json, whose header is
/// the seed of the `header` target (fuzz/seeds/header/vector-v1.bin).
const VECTOR_VAULT_KEY: [u8; 32] = [
    0xc6, 0x4e, 0x31, 0x22, 0xdb, 0x7a, 0x1d, 0xce, 0xe1, 0xc4, 0x0a, 0x61, 0xd8, 0xc4, 0x12, 0x8b,
    0x5b, 0x67, 0xac, 0xf8, 0x0e, 0x22, 0x4e, 0xc0, 0x4a, 0xba, 0x4e, 0xf2, 0x89, 0xb1, 0x2e, 0x3e,
];

/// The key the seed corpus is sealed with.
pub fn fixed_key() -> VaultKey {
    VaultKey(
        Key256::fill_with(|k| {
            *k = VECTOR_VAULT_KEY;
            Ok::<(), ()>(())
        })
        .unwrap_or_else(|()| unreachable!("the closure cannot fail")),
    )
}

/// Opens `data` as an encrypted file under a fixed files key and reads it
/// to the end, then at a few offsets chosen from the data itself; and
/// scans it as an unfinished file to resume (`stream::scan_for_resume`).
pub fn file_stream(data: &[u8]) {
    use std::io::Read;
    let key = crate::secret::Subkey(
        Key256::fill_with(|k| {
            *k = [0x42; 32];
            Ok::<(), ()>(())
        })
        .unwrap_or_else(|()| unreachable!("the closure cannot fail")),
    );
    // The same bytes as an unfinished file, resumed under the salt its
    // header names (so that mutations reach the chunks' authentication),
    // and written on.
    if let Some(salt) = data
        .get(12..crate::stream::HEADER_LEN)
        .and_then(|s| <[u8; crate::stream::SALT_LEN]>::try_from(s).ok())
    {
        let scanned = crate::stream::scan_for_resume(
            &key,
            &salt,
            &mut std::io::Cursor::new(data),
            &mut |_| {},
        );
        if let Ok(crate::stream::Resumable::Partial { chunks, torn }) = scanned {
            use std::io::Write;
            let mut writer =
                crate::stream::ChunkWriter::resume(&key, Vec::new(), salt, chunks, torn);
            let _ = writer.write_all(&[0u8; 100]);
            let _ = writer.finish();
        }
    }
    let Ok(mut reader) = crate::stream::ChunkReader::open(&key, std::io::Cursor::new(data)) else {
        return;
    };
    let mut out = Vec::new();
    let _ = reader.read_to_end(&mut out);
    let mut buf = [0u8; 100];
    for offset in data.iter().take(4).map(|b| u64::from(*b) * 700) {
        let _ = reader.read_at(offset, &mut buf);
    }
}

/// Builds a well-formed archive whose stream plaintext is `data`, then reads
/// its entries until an error or the END entry: this drives the entry parser
/// (behind the encryption, where mutations could not reach it) with
/// arbitrary bytes. Also parses `data` as an archive file directly.
pub fn archive(data: &[u8]) {
    use std::io::{Cursor, Read, Write};
    let passphrase =
        crate::Passphrase::new("fuzz".into()).unwrap_or_else(|_| unreachable!("valid passphrase"));
    let kdf = crate::KdfParams::Argon2id {
        memory_kib: 8,
        iterations: 1,
        parallelism: 1,
    };
    let limits = KdfLimits::default();
    if let Ok(mut reader) =
        crate::archive::ArchiveReader::open(Cursor::new(data), &passphrase, &limits)
    {
        let _ = reader.next_entry();
    }
    let Ok(mut out) = crate::archive::raw_archive(&passphrase, &kdf) else {
        return;
    };
    if out.write_all(data).is_err() {
        return;
    }
    let Ok(bytes) = out.finish() else { return };
    let Ok(mut reader) =
        crate::archive::ArchiveReader::open(Cursor::new(bytes), &passphrase, &limits)
    else {
        return;
    };
    for _ in 0..64 {
        match reader.next_entry() {
            Ok(entry) if entry.kind == crate::archive::EntryKind::End => return,
            Ok(_) => {
                let mut sink = Vec::new();
                if reader.data().read_to_end(&mut sink).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// Checks `data` as an audit log (the first 90 bytes as its anchor when
/// there are that many, the rest as `audit.log`) under the keys of
/// docs/test-vectors/audit-log-v1.json, and again as a log with no anchor.
pub fn audit_log(data: &[u8]) {
    let keys = crate::audit::AuditKeys {
        log: crate::Subkey::from_bytes([0x11; 32]),
        mac: crate::Subkey::from_bytes([0x22; 32]),
    };
    let _ = crate::audit::check(Some(data), None, &keys);
    if data.len() >= 90 {
        let (head, log) = data.split_at(90);
        let _ = crate::audit::check(Some(log), Some(head), &keys);
    }
}
