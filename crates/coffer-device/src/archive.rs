//! App archives: one app's database and files as one encrypted file, for
//! moving an app to another vault or device (`coffer export` / `import`).
//!
//! ```text
//! archive  = magic "\x89CFARCH\n" ‖ version u16 LE = 1 ‖ KDF id u8 = 1 (Argon2id) ‖ 0x00
//!            ‖ m u32 LE ‖ t u32 LE ‖ p u32 LE ‖ salt (32)            (56 bytes)
//!            ‖ a chunked stream (docs/formats/file-stream.md) whose files subkey
//!              is Argon2id(passphrase, salt, m, t, p), 32 bytes
//! stream plaintext = entry* ; the last entry is END
//! entry    = kind u8 ‖ name length u16 LE ‖ name (UTF-8)
//!            ‖ meta length u32 LE ‖ meta (JSON object) ‖ data length u64 LE ‖ data
//! kinds    = 1 MANIFEST (first; meta: app name, capabilities)
//!            2 DATABASE (once; meta: the snapshot's raw SQLCipher key;
//!              data: a SQLCipher snapshot of the app's database under that key)
//!            3 FILE (name: the stored name; meta: content type; data: plaintext)
//!            0 END (empty name, meta "{}", no data)
//! ```
//!
//! The KDF parameters and salt are not in the stream's AAD, but they decide
//! the key: changing them fails the first chunk, as a wrong passphrase does.
//! Import checks them against [`KdfLimits`] before deriving anything.
//! docs/formats/app-archive.md is the normative text.

use std::io::{self, Read, Seek, SeekFrom, Write};

use rand_core::{OsRng, RngCore};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::codec::Reader;
use crate::error::{Error, Result};
use crate::kdf::{KdfLimits, KdfParams, SALT_LEN};
use crate::secret::{Passphrase, Subkey};
use crate::stream::{ChunkReader, ChunkWriter, FileCorruptKind};

/// The first eight bytes of every app archive.
pub const MAGIC: [u8; 8] = *b"\x89CFARCH\n";
/// The archive format version this code writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Length of the archive's own header, before the chunked stream.
pub const HEADER_LEN: usize = 56;
const KDF_ARGON2ID: u8 = 1;
/// Longest entry name.
pub const MAX_NAME_LEN: usize = 1024;
/// Largest entry metadata.
pub const MAX_META_LEN: usize = 64 * 1024;

/// The kind of an archive entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// Must come last.
    End = 0,
    /// Must come first: the app's name and capabilities.
    Manifest = 1,
    /// The app's database snapshot.
    Database = 2,
    /// One stored file.
    File = 3,
}

/// The fixed part of an entry: everything but its data. No `Debug`: the
/// DATABASE entry's metadata holds the snapshot's key.
#[derive(Clone, PartialEq)]
pub struct EntryHeader {
    /// What the entry holds.
    pub kind: EntryKind,
    /// Its name (a file's stored name; empty otherwise).
    pub name: String,
    /// Its metadata.
    pub meta: Value,
    /// Length of the data that follows.
    pub data_len: u64,
}

/// Why an archive is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveErrorKind {
    /// Not an app archive.
    #[error("not a coffer app archive (bad magic number)")]
    BadMagic,
    /// Written by an unknown version.
    #[error("unsupported archive version {0}")]
    UnsupportedVersion(u16),
    /// A field or an entry breaks the format.
    #[error("invalid archive: {0}")]
    Invalid(&'static str),
}

fn invalid(what: &'static str) -> Error {
    Error::InvalidArchive(ArchiveErrorKind::Invalid(what))
}

/// Derives the archive's stream key from the passphrase.
fn archive_key(passphrase: &Passphrase, kdf: &KdfParams, salt: &[u8; SALT_LEN]) -> Result<Subkey> {
    let kek = kdf.derive(passphrase.expose_secret().as_bytes(), salt)?;
    Ok(Subkey(kek.0))
}

fn encode_header(kdf: &KdfParams, salt: &[u8; SALT_LEN]) -> Result<[u8; HEADER_LEN]> {
    let KdfParams::Argon2id {
        memory_kib,
        iterations,
        parallelism,
    } = *kdf
    else {
        return Err(Error::InvalidKdfParams("archives use Argon2id"));
    };
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[10] = KDF_ARGON2ID;
    h[12..16].copy_from_slice(&memory_kib.to_le_bytes());
    h[16..20].copy_from_slice(&iterations.to_le_bytes());
    h[20..24].copy_from_slice(&parallelism.to_le_bytes());
    h[24..].copy_from_slice(salt);
    Ok(h)
}

/// Parses the archive header; checks the KDF against `limits`.
pub fn parse_header(
    bytes: &[u8; HEADER_LEN],
    limits: &KdfLimits,
) -> Result<(KdfParams, [u8; SALT_LEN])> {
    let mut r = Reader::new(bytes);
    if r.take(8)? != MAGIC {
        return Err(Error::InvalidArchive(ArchiveErrorKind::BadMagic));
    }
    let version = r.u16()?;
    if version != FORMAT_VERSION {
        return Err(Error::InvalidArchive(ArchiveErrorKind::UnsupportedVersion(
            version,
        )));
    }
    if r.u8()? != KDF_ARGON2ID || r.u8()? != 0 {
        return Err(invalid("unknown KDF"));
    }
    let kdf = KdfParams::Argon2id {
        memory_kib: r.u32()?,
        iterations: r.u32()?,
        parallelism: r.u32()?,
    };
    kdf.check_limits(limits, 0)?;
    kdf.validate()
        .map_err(|_| invalid("KDF parameters out of range"))?;
    Ok((kdf, r.array()?))
}

/// Writes an archive: header, then entries through [`ArchiveWriter::entry`],
/// then [`ArchiveWriter::finish`].
pub struct ArchiveWriter<W: Write> {
    stream: ChunkWriter<W>,
}

impl<W: Write> ArchiveWriter<W> {
    /// Starts an archive protected by `passphrase` (Argon2id with `kdf`).
    pub fn new(mut out: W, passphrase: &Passphrase, kdf: &KdfParams) -> Result<Self> {
        let mut salt = [0u8; SALT_LEN];
        OsRng.try_fill_bytes(&mut salt)?;
        let header = encode_header(kdf, &salt)?;
        let key = archive_key(passphrase, kdf, &salt)?;
        out.write_all(&header)
            .map_err(|e| Error::stream_io("writing an archive", e))?;
        Ok(ArchiveWriter {
            stream: ChunkWriter::new(&key, out, &mut OsRng)?,
        })
    }

    /// Writes one entry whose data (exactly `data_len` bytes) comes from `data`.
    pub fn entry(
        &mut self,
        kind: EntryKind,
        name: &str,
        meta: &Value,
        data_len: u64,
        data: &mut dyn Read,
    ) -> Result<()> {
        let meta = serde_json::to_vec(meta).map_err(|_| invalid("metadata not serializable"))?;
        if name.len() > MAX_NAME_LEN || meta.len() > MAX_META_LEN {
            return Err(invalid("entry name or metadata too long"));
        }
        let io_err = |e| Error::stream_io("writing an archive", e);
        let mut head = Vec::with_capacity(15 + name.len() + meta.len());
        head.push(kind as u8);
        head.extend_from_slice(&(name.len() as u16).to_le_bytes());
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        head.extend_from_slice(&meta);
        head.extend_from_slice(&data_len.to_le_bytes());
        self.stream.write_all(&head).map_err(io_err)?;
        let copied = io::copy(&mut data.take(data_len), &mut self.stream)
            .map_err(|e| Error::from_read("writing an archive", e))?;
        if copied != data_len {
            return Err(Error::stream_io(
                "writing an archive",
                io::Error::new(io::ErrorKind::UnexpectedEof, "entry data ended early"),
            ));
        }
        Ok(())
    }

    /// Writes the END entry and the final chunk; returns the output.
    pub fn finish(mut self) -> Result<W> {
        self.entry(EntryKind::End, "", &json!({}), 0, &mut io::empty())?;
        self.stream
            .finish()
            .map_err(|e| Error::stream_io("writing an archive", e))
    }
}

/// A chunk writer positioned after an archive header, for writing raw
/// stream plaintext: only the fuzzing entry points use it.
#[cfg(feature = "fuzzing")]
pub(crate) fn raw_archive(
    passphrase: &Passphrase,
    kdf: &KdfParams,
) -> Result<ChunkWriter<Vec<u8>>> {
    let mut salt = [0u8; SALT_LEN];
    OsRng.try_fill_bytes(&mut salt)?;
    let header = encode_header(kdf, &salt)?;
    let key = archive_key(passphrase, kdf, &salt)?;
    ChunkWriter::new(&key, header.to_vec(), &mut OsRng)
}

/// The archive's stream starts after its header: present it to the
/// chunk reader as a file of its own.
struct Offset<R> {
    inner: R,
    base: u64,
}

impl<R: Read> Read for Offset<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl<R: Seek> Seek for Offset<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(n) => self.inner.seek(SeekFrom::Start(self.base + n))?,
            other => self.inner.seek(other)?,
        };
        pos.checked_sub(self.base).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the archive's stream",
            )
        })
    }
}

/// Reads an archive's entries in order.
pub struct ArchiveReader<R: Read + Seek> {
    stream: ChunkReader<Offset<R>>,
    pos: u64,
    /// Data bytes of the current entry not yet read.
    pending: u64,
}

impl<R: Read + Seek> ArchiveReader<R> {
    /// Opens an archive with its passphrase. A wrong passphrase (or a damaged
    /// first chunk) is [`Error::WrongArchivePassphrase`].
    pub fn open(mut input: R, passphrase: &Passphrase, limits: &KdfLimits) -> Result<Self> {
        let io_err = |e| Error::stream_io("reading an archive", e);
        input.seek(SeekFrom::Start(0)).map_err(io_err)?;
        let mut header = [0u8; HEADER_LEN];
        input.read_exact(&mut header).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => Error::FileCorrupt(FileCorruptKind::Truncated),
            _ => io_err(e),
        })?;
        let (kdf, salt) = parse_header(&header, limits)?;
        let key = archive_key(passphrase, &kdf, &salt)?;
        let stream = ChunkReader::open(
            &key,
            Offset {
                inner: input,
                base: HEADER_LEN as u64,
            },
        )?;
        let mut reader = ArchiveReader {
            stream,
            pos: 0,
            pending: 0,
        };
        // Prove the key on the first chunk now, so that a wrong passphrase is
        // reported as such rather than as a damaged entry.
        let mut probe = [0u8; 1];
        match reader.stream.read_at(0, &mut probe) {
            Err(Error::FileCorrupt(FileCorruptKind::Chunk(0))) => {
                return Err(Error::WrongArchivePassphrase)
            }
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        Ok(reader)
    }

    fn read_exact(&mut self, out: &mut [u8]) -> Result<()> {
        let mut done = 0;
        while done < out.len() {
            let n = self.stream.read_at(self.pos, &mut out[done..])?;
            if n == 0 {
                return Err(invalid("entry cut short"));
            }
            done += n;
            self.pos += n as u64;
        }
        Ok(())
    }

    /// The next entry's header. The previous entry's data must have been
    /// read (or is skipped here).
    pub fn next_entry(&mut self) -> Result<EntryHeader> {
        self.pos += self.pending;
        self.pending = 0;
        let mut fixed = [0u8; 3];
        self.read_exact(&mut fixed)?;
        let kind = match fixed[0] {
            0 => EntryKind::End,
            1 => EntryKind::Manifest,
            2 => EntryKind::Database,
            3 => EntryKind::File,
            _ => return Err(invalid("unknown entry kind")),
        };
        let name_len = usize::from(u16::from_le_bytes([fixed[1], fixed[2]]));
        if name_len > MAX_NAME_LEN {
            return Err(invalid("entry name too long"));
        }
        let mut name = vec![0u8; name_len];
        self.read_exact(&mut name)?;
        let name = String::from_utf8(name).map_err(|_| invalid("entry name is not UTF-8"))?;
        let mut len = [0u8; 4];
        self.read_exact(&mut len)?;
        let meta_len = u32::from_le_bytes(len) as usize;
        if meta_len > MAX_META_LEN {
            return Err(invalid("entry metadata too long"));
        }
        let mut meta = Zeroizing::new(vec![0u8; meta_len]);
        self.read_exact(&mut meta)?;
        let meta: Value =
            serde_json::from_slice(&meta).map_err(|_| invalid("entry metadata is not JSON"))?;
        if !meta.is_object() {
            return Err(invalid("entry metadata is not a JSON object"));
        }
        let mut len = [0u8; 8];
        self.read_exact(&mut len)?;
        let data_len = u64::from_le_bytes(len);
        if data_len > self.stream.len().saturating_sub(self.pos) {
            return Err(invalid("entry data runs past the end of the archive"));
        }
        if kind == EntryKind::End && (data_len != 0 || self.pos != self.stream.len()) {
            return Err(invalid("data after the end entry"));
        }
        if kind == EntryKind::End {
            // Authenticates the final chunk: the archive really ends here.
            let mut probe = [0u8; 1];
            self.stream.read_at(self.pos, &mut probe)?;
        }
        self.pending = data_len;
        Ok(EntryHeader {
            kind,
            name,
            meta,
            data_len,
        })
    }

    /// A reader over the current entry's data.
    pub fn data(&mut self) -> EntryData<'_, R> {
        EntryData { archive: self }
    }
}

/// The data of the current entry, as a [`Read`].
pub struct EntryData<'a, R: Read + Seek> {
    archive: &'a mut ArchiveReader<R>,
}

impl<R: Read + Seek> Read for EntryData<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let a = &mut *self.archive;
        let want = out
            .len()
            .min(usize::try_from(a.pending).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = a
            .stream
            .read_at(a.pos, &mut out[..want])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "entry cut short",
            ));
        }
        a.pos += n as u64;
        a.pending -= n as u64;
        Ok(n)
    }
}
