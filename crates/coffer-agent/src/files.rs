//! Files sync (docs/protocol.md, section 9), the device's side: the bytes
//! of the files that records reference, moved within a sync round.
//!
//! - **Before a push**, every file an operation of the batch references
//!   reaches the server: [`CreateUpload`] (the organization may hold it
//!   already: nothing is sent), then pieces of exactly the server's piece
//!   size from the stored file, each with its own SHA-256. The upload's id
//!   is kept in the vault's encrypted settings (`sync.upload.<app>.<sha256>`)
//!   from the moment the server gives it, so that a killed app or a cut
//!   connection asks the server where it stands ([`UploadOffset`], which is
//!   authoritative) and goes on from there. A file the server refuses
//!   before any byte (too large, over quota) holds its record back: the
//!   change stays pending and is reported.
//! - **After the pull**, the download queue the pulled records filled
//!   (`coffer_device::FileStore::queued_downloads`) is worked through:
//!   ranges of at most [`MAX_FETCH_RANGE`] from where the download stands
//!   (`coffer_device::Download::offset`: after an interruption, the last
//!   whole chunk), written to a temporary blob, switched into place only
//!   if the whole SHA-256 matches. A blob that does not match is refused
//!   and the device keeps its previous version.
//!
//! - **One file's failure is that file's**: a refusal of the file by the
//!   server (a `500` when its blob does not open, say), an answer that is
//!   not what was asked (a range of the wrong length, a piece's status
//!   that does not follow it), or bytes that do not match are reported in
//!   [`crate::AppSync::file_problems`] (a download stays queued, with its
//!   failure noted; an upload holds its record back), and the round goes
//!   on with the next file and the next app. Only what ends every request
//!   ends the round with an error: the connection is gone (unreachable,
//!   timed out, an answer cut off mid-body — indistinguishable from a cut
//!   link; the download resumes from its last whole chunk at the next
//!   round), the server is not the one trusted, the device itself is
//!   refused (`401`, `403`, `429`: its token, its organization, its rate),
//!   or the device's own stores fail.
//! - **A record the server refuses with `missing_file`** (its file is not
//!   on the server: collected meanwhile, or to come from another device)
//!   stays pending, not refused: the next round uploads what it can and
//!   pushes it again; each round reports it as a file problem.
//!
//! Each request's deadline grows with the bytes it moves, at a floor rate
//! of 16 KiB/s ([`crate::http::FLOOR_RATE`]), so a piece or a range gets
//! through a link of 128 kbit/s.
//!
//! Memory stays flat: one piece, or one range, at a time, zeroized once
//! sent or written (the agent's own buffers; copies inside the HTTP stack
//! are out of its reach). Nothing of a file's content or of the upload's
//! settings reaches an error or a log.

use std::collections::{HashMap, HashSet};

use coffer_device::{FileStore, UnlockedVault};
use coffer_protocol::files::{
    is_upload_id, BlobBytes, CreateUpload, FetchBlob, NewBlob, SendPiece, UploadCreated,
    UploadOffset, UploadStatus, MAX_FETCH_RANGE,
};
use coffer_protocol::sync::FileRef;
use coffer_protocol::{Endpoint, ErrorCode};

use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result, TransportError};
use crate::sync::{AppSync, SyncObserver};
use crate::{Client, Credentials};

/// Settings key prefix of unfinished uploads: `sync.upload.<app>.<sha256>`,
/// the upload's id and the file's size as JSON.
pub(crate) const UPLOAD: &str = "sync.upload.";

/// How often one file's upload may start over (an upload gone, an
/// inconsistent answer) within one round before the round gives up.
const MAX_RESTARTS: u32 = 4;
/// How often a piece is sent again after `checksum_mismatch` (damaged on
/// the way) before the round gives up.
const MAX_PIECE_RETRIES: u32 = 3;
/// How often a piece waits for a turn (the server's `503 rate_limited`: it
/// holds as many pieces as it takes at once) before the round gives up.
const MAX_PIECE_TURNS: u32 = 6;
/// How often the server may correct the offset within one file's upload.
const MAX_OFFSET_CORRECTIONS: u32 = 8;
/// How long a round waits, asking for the offset (no piece is sent), for a
/// server that says another request is still writing the very piece it
/// was sent (its offset did not move): then the file waits (reported, its
/// record held back), and the next round asks again. Sending the piece
/// again meanwhile would only be refused the same way, after every byte of
/// it crossed the link.
const BUSY_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);
/// The longest pause between two such questions, seconds (the server's
/// `Retry-After`, 1 if it gives none).
const MAX_BUSY_WAIT_SECS: u64 = 10;

/// Which way a file moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileDirection {
    /// From this device to the server.
    Upload,
    /// From the server to this device.
    Download,
}

/// A file that did not move in a round, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    /// Which way it was to move.
    pub direction: FileDirection,
    /// Its name in the app's file store.
    pub name: String,
    /// The version: SHA-256 of its plaintext, hex.
    pub sha256: String,
    /// Why, as a stable code: the server's (`file_too_large`,
    /// `quota_exceeded`, `blob_mismatch`: the upload did not match its
    /// SHA-256, `not_found`: the server does not hold the blob), or the
    /// device's: `download_mismatch` (the bytes fetched are not the file:
    /// refused, the previous version kept), `file_corrupt` (the stored
    /// file to upload fails its authentication), `file_changed` (it was
    /// replaced while being uploaded), `capability_denied` (the app may
    /// not read its files); `missing_file`: the server refused the record
    /// because it does not hold this file (the record stays pending and
    /// is pushed again at the next round). A failure of this one file that
    /// did not end the round is its server's code (`internal` for a `500`,
    /// `http_<status>` for an answer without coffer's code) or
    /// `bad_answer` (an answer that is not what was asked).
    pub code: String,
}

/// Whether `e`, met while moving one file, ends the whole round rather
/// than that file: the connection is gone or the server is not the one
/// trusted, the server refused the device itself (its credential, its
/// organization, its rate: `401`, `403`, `429` and their codes), or the
/// device's own stores failed. A refusal of the file (any other status)
/// and an answer that is not what was asked are the file's.
pub(crate) fn ends_round(e: &Error) -> bool {
    match e {
        Error::Transport(TransportError::TooLarge { .. }) => false,
        Error::Refused { status, code, .. } => {
            matches!(status, 401 | 403 | 429)
                || matches!(
                    code,
                    ErrorCode::Unauthenticated
                        | ErrorCode::InvalidToken
                        | ErrorCode::TokenExpired
                        | ErrorCode::OrganizationSuspended
                        | ErrorCode::Forbidden
                        | ErrorCode::AppNotSynced
                        | ErrorCode::WipePending
                        | ErrorCode::RateLimited
                )
        }
        Error::BadAnswer { .. } => false,
        _ => true,
    }
}

/// The stable code a file's own failure is reported with.
fn problem_code(e: &Error) -> String {
    match e {
        Error::Refused { status, code, .. } if code.as_str().is_empty() => {
            format!("http_{status}")
        }
        Error::Refused { code, .. } => code.as_str().to_owned(),
        _ => "bad_answer".to_owned(),
    }
}

/// What became of one file an operation references.
enum Upload {
    /// The server holds it (now, or already).
    Held,
    /// The server will not take it: the operation is held back.
    Refused(String),
}

/// The round's files state for one app.
pub(crate) struct FileSync<'a> {
    vault: &'a UnlockedVault,
    app: &'a str,
    client: &'a Client,
    credentials: Credentials<'a>,
    store: Option<FileStore>,
    /// Versions the server holds, as learnt in this round.
    held: HashSet<String>,
    /// Versions it refused in this round, with its code.
    refused: HashMap<String, String>,
}

fn bad(endpoint: &'static str, problem: &str) -> Error {
    Error::BadAnswer {
        endpoint,
        problem: problem.to_owned(),
    }
}

fn refused_with(e: &Error) -> Option<&ErrorCode> {
    match e {
        Error::Refused { code, .. } => Some(code),
        _ => None,
    }
}

impl<'a> FileSync<'a> {
    pub(crate) fn new(
        vault: &'a UnlockedVault,
        app: &'a str,
        client: &'a Client,
        credentials: Credentials<'a>,
    ) -> Self {
        FileSync {
            vault,
            app,
            client,
            credentials,
            store: None,
            held: HashSet::new(),
            refused: HashMap::new(),
        }
    }

    /// The app's file store, opened on first use; `None` if the app's
    /// capabilities do not grant it.
    fn store(&mut self) -> Result<Option<&FileStore>> {
        if self.store.is_none() {
            match self.vault.app(self.app)?.files() {
                Ok(store) => self.store = Some(store),
                Err(coffer_device::Error::CapabilityDenied { .. }) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(self.store.as_ref())
    }

    fn send<E: Endpoint>(&self, request: &E) -> Result<E::Answer> {
        self.client.send(request, self.credentials)
    }

    fn upload_key(&self, sha256: &str) -> String {
        format!("{UPLOAD}{}.{sha256}", self.app)
    }

    /// The upload id kept for `sha256` of `size` bytes, if one is.
    fn saved_upload(&self, sha256: &str, size: u64) -> Result<Option<String>> {
        let Some(bytes) = self.vault.setting(&self.upload_key(sha256))? else {
            return Ok(None);
        };
        let saved: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
        let id = saved.as_ref().and_then(|v| {
            let id = v["id"].as_str()?;
            (is_upload_id(id) && v["size"].as_u64() == Some(size)).then(|| id.to_owned())
        });
        if id.is_none() {
            // Damaged, or of another size: the server tells again.
            self.forget(sha256)?;
        }
        Ok(id)
    }

    fn save_upload(&self, sha256: &str, id: &str, size: u64) -> Result<()> {
        let value = serde_json::json!({"id": id, "size": size});
        self.vault
            .set_setting(&self.upload_key(sha256), Some(value.to_string().as_bytes()))?;
        Ok(())
    }

    fn forget(&self, sha256: &str) -> Result<()> {
        self.vault.set_setting(&self.upload_key(sha256), None)?;
        Ok(())
    }

    /// Whether every file of an operation is on the server (uploading what
    /// is not): `false` holds the operation back (a file was refused, or
    /// its upload failed; the change stays pending). A file whose version
    /// is no longer stored here is left to the server: it may hold it from
    /// another device, or it refuses the record (`missing_file`: the
    /// change stays pending, see [`FileSync::missing_on_server`]).
    pub(crate) fn ensure_uploaded(
        &mut self,
        files: &[FileRef],
        report: &mut AppSync,
        observer: &mut dyn SyncObserver,
    ) -> Result<bool> {
        let mut ready = true;
        for file in files {
            if self.held.contains(&file.sha256) {
                continue;
            }
            if self.refused.contains_key(&file.sha256) {
                ready = false;
                continue;
            }
            if !self.holds_locally(file)? {
                continue;
            }
            let uploaded = match self.upload(file, report, observer) {
                Ok(uploaded) => uploaded,
                // This file's failure: its record waits, the round goes on
                // (an unfinished upload's id stays kept, to resume).
                Err(e) if !ends_round(&e) => Upload::Refused(problem_code(&e)),
                Err(e) => return Err(e),
            };
            match uploaded {
                Upload::Held => {
                    self.held.insert(file.sha256.clone());
                }
                Upload::Refused(code) => {
                    report.file_problems.push(FileProblem {
                        direction: FileDirection::Upload,
                        name: file.name.clone(),
                        sha256: file.sha256.clone(),
                        code: code.clone(),
                    });
                    self.refused.insert(file.sha256.clone(), code);
                    ready = false;
                }
            }
        }
        Ok(ready)
    }

    /// The server refused an operation that references `files` with
    /// `missing_file`: the change stays pending (the caller records it as
    /// waiting, `coffer_device::AckOutcome::Waiting`) and is pushed again
    /// at the next round, which uploads what it can first. Each file the round did not see on the server
    /// (or, if it saw them all — collected since —, each file) is reported
    /// once, and forgotten as held, so that a later operation of the round
    /// asks the server again.
    pub(crate) fn missing_on_server(&mut self, files: &[FileRef], report: &mut AppSync) {
        let unseen: Vec<&FileRef> = files
            .iter()
            .filter(|f| !self.held.contains(&f.sha256))
            .collect();
        let missing = if unseen.is_empty() {
            files.iter().collect()
        } else {
            unseen
        };
        for file in missing {
            self.held.remove(&file.sha256);
            let code = coffer_protocol::sync::RejectCode::MissingFile.as_str();
            let known = report.file_problems.iter().any(|p| {
                p.direction == FileDirection::Upload
                    && p.name == file.name
                    && p.sha256 == file.sha256
                    && p.code == code
            });
            if !known {
                report.file_problems.push(FileProblem {
                    direction: FileDirection::Upload,
                    name: file.name.clone(),
                    sha256: file.sha256.clone(),
                    code: code.to_owned(),
                });
            }
        }
    }

    /// Whether the file store holds `file` at its version.
    fn holds_locally(&mut self, file: &FileRef) -> Result<bool> {
        let Some(store) = self.store()? else {
            return Ok(false);
        };
        match store.info(&file.name)? {
            Some(info) if info.size == file.size => match store.sha256(&file.name) {
                Ok(sha256) => Ok(sha256 == file.sha256),
                // Damaged here: the server may hold it from elsewhere.
                Err(coffer_device::Error::FileCorrupt(_)) => Ok(false),
                Err(e) => Err(e.into()),
            },
            _ => Ok(false),
        }
    }

    /// Brings one stored file to the server, resuming its upload if one is
    /// kept.
    fn upload(
        &mut self,
        file: &FileRef,
        report: &mut AppSync,
        observer: &mut dyn SyncObserver,
    ) -> Result<Upload> {
        let size = file.size;
        for _ in 0..MAX_RESTARTS {
            let status = match self.saved_upload(&file.sha256, size)? {
                Some(id) => match self.send(&UploadOffset {
                    app: self.app.to_owned(),
                    id: id.clone(),
                }) {
                    Ok(status) if status.id == id => status,
                    Ok(_) => {
                        self.forget(&file.sha256)?;
                        return Err(bad(UploadOffset::PATH, "the status names another upload"));
                    }
                    // Expired, or no longer this device's: start again.
                    Err(e)
                        if matches!(
                            refused_with(&e),
                            Some(ErrorCode::UploadGone | ErrorCode::NotFound)
                        ) =>
                    {
                        self.forget(&file.sha256)?;
                        continue;
                    }
                    Err(e) => return Err(e),
                },
                None => {
                    let created = self.send(&CreateUpload {
                        app: self.app.to_owned(),
                        blob: NewBlob {
                            sha256: file.sha256.clone(),
                            size,
                            content_type: file.content_type.clone(),
                        },
                    });
                    match created {
                        Ok(UploadCreated { stored: true, .. }) => return Ok(Upload::Held),
                        Ok(UploadCreated {
                            upload: Some(status),
                            ..
                        }) if status.is_consistent(size) => {
                            self.save_upload(&file.sha256, &status.id, size)?;
                            status
                        }
                        Ok(_) => {
                            return Err(bad(
                                CreateUpload::PATH,
                                "neither stored nor a consistent upload",
                            ))
                        }
                        Err(e) => match refused_with(&e) {
                            Some(code @ (ErrorCode::FileTooLarge | ErrorCode::QuotaExceeded)) => {
                                return Ok(Upload::Refused(code.as_str().to_owned()))
                            }
                            _ => return Err(e),
                        },
                    }
                }
            };
            if !status.is_consistent(size) {
                // CreateUpload gives an unfinished upload back at its
                // offset: forgetting it costs nothing.
                self.forget(&file.sha256)?;
                return Err(bad(UploadOffset::PATH, "an inconsistent upload status"));
            }
            match self.send_pieces(file, status, report, observer)? {
                Some(outcome) => {
                    self.forget(&file.sha256)?;
                    if matches!(outcome, Upload::Held) {
                        report.files_uploaded += 1;
                    }
                    return Ok(outcome);
                }
                // Gone meanwhile: again from zero.
                None => self.forget(&file.sha256)?,
            }
        }
        Err(bad(CreateUpload::PATH, "the upload keeps starting over"))
    }

    /// Sends the pieces of `file` from where `status` stands, one at a
    /// time, read from the stored file. `None` when the upload is gone (the
    /// caller starts again).
    fn send_pieces(
        &mut self,
        file: &FileRef,
        mut status: UploadStatus,
        report: &mut AppSync,
        observer: &mut dyn SyncObserver,
    ) -> Result<Option<Upload>> {
        let (app, size, id) = (self.app.to_owned(), file.size, status.id.clone());
        let corrupt = || Ok(Some(Upload::Refused("file_corrupt".into())));
        let mut reader = match self.store()?.map(|store| store.open_file(&file.name)) {
            Some(Ok(reader)) => reader,
            Some(Err(coffer_device::Error::FileCorrupt(_))) => return corrupt(),
            Some(Err(e)) => return Err(e.into()),
            None => return Ok(Some(Upload::Refused("capability_denied".into()))),
        };
        if reader.len() != size {
            // Replaced since it was checked: the record's version is gone.
            return Ok(Some(Upload::Refused("file_changed".into())));
        }
        let (mut retries, mut corrections, mut turns) = (0, 0, 0);
        observer.file_progress(
            self.app,
            FileDirection::Upload,
            &file.name,
            status.offset,
            size,
        );
        loop {
            if status.complete {
                return Ok(Some(Upload::Held));
            }
            let offset = status.offset;
            let n = status.piece_size.min(size - offset);
            // The file's bytes: zeroized when dropped, and once sent.
            let mut data = Zeroizing::new(vec![0u8; usize::try_from(n).unwrap_or(0)]);
            let mut filled = 0;
            while filled < data.len() {
                let got = match reader.read_at(offset + filled as u64, &mut data[filled..]) {
                    Ok(got) => got,
                    // Damaged since it was checked: nothing of it is sent.
                    Err(coffer_device::Error::FileCorrupt(_)) => return corrupt(),
                    Err(e) => return Err(e.into()),
                };
                if got == 0 {
                    return Ok(Some(Upload::Refused("file_changed".into())));
                }
                filled += got;
            }
            let mut piece = SendPiece {
                app: app.clone(),
                id: id.clone(),
                offset,
                data: std::mem::take(&mut *data),
            };
            let sent = self.send(&piece);
            piece.data.zeroize();
            match sent {
                Ok(next) => {
                    let moved = if next.complete { size } else { offset + n };
                    if next.id != id || !next.is_consistent(size) || next.offset != moved {
                        return Err(bad(
                            SendPiece::PATH,
                            "the piece's answer does not follow it",
                        ));
                    }
                    report.bytes_uploaded += n;
                    retries = 0;
                    turns = 0;
                    status = next;
                    observer.file_progress(
                        self.app,
                        FileDirection::Upload,
                        &file.name,
                        status.offset,
                        size,
                    );
                }
                Err(e) => match refused_with(&e) {
                    Some(ErrorCode::UploadOffsetMismatch)
                        if corrections < MAX_OFFSET_CORRECTIONS =>
                    {
                        corrections += 1;
                        let now = self.send(&UploadOffset {
                            app: app.clone(),
                            id: id.clone(),
                        })?;
                        if now.id != id || !now.is_consistent(size) {
                            return Err(bad(UploadOffset::PATH, "an inconsistent upload status"));
                        }
                        status = if now.offset == offset && !now.complete {
                            // Still at this piece: another request (one
                            // whose connection was cut, say) is writing it.
                            self.wait_while_busy(&e, &id, offset, size)?
                        } else {
                            now
                        };
                    }
                    Some(ErrorCode::ChecksumMismatch) if retries < MAX_PIECE_RETRIES => {
                        retries += 1;
                    }
                    // The server holds as many pieces in memory as it takes
                    // at once (503, nothing of this one kept): wait the turn
                    // it names, then send the piece again.
                    Some(ErrorCode::RateLimited)
                        if turns < MAX_PIECE_TURNS
                            && matches!(e, Error::Refused { status: 503, .. }) =>
                    {
                        turns += 1;
                        let secs = match e {
                            Error::Refused {
                                retry_after: Some(secs),
                                ..
                            } => secs.clamp(1, MAX_BUSY_WAIT_SECS),
                            _ => 2,
                        };
                        std::thread::sleep(std::time::Duration::from_secs(secs));
                    }
                    Some(ErrorCode::UploadGone) => return Ok(None),
                    Some(ErrorCode::BlobMismatch) => {
                        return Ok(Some(Upload::Refused(
                            ErrorCode::BlobMismatch.as_str().to_owned(),
                        )))
                    }
                    _ => return Err(e),
                },
            }
        }
    }

    /// Asks where upload `id` stands, at the pace the server's refusal `e`
    /// asks for, until it moves past `offset` (the request that was
    /// writing that piece ended) or [`BUSY_PATIENCE`] runs out (then `e`:
    /// the round ends, the next one asks again).
    fn wait_while_busy(&self, e: &Error, id: &str, offset: u64, size: u64) -> Result<UploadStatus> {
        let pause = match e {
            Error::Refused {
                retry_after: Some(secs),
                ..
            } => (*secs).clamp(1, MAX_BUSY_WAIT_SECS),
            _ => 1,
        };
        let pause = std::time::Duration::from_secs(pause);
        let started = std::time::Instant::now();
        while started.elapsed() + pause <= BUSY_PATIENCE {
            std::thread::sleep(pause);
            let now = self.send(&UploadOffset {
                app: self.app.to_owned(),
                id: id.to_owned(),
            })?;
            if now.id != id || !now.is_consistent(size) {
                return Err(bad(UploadOffset::PATH, "an inconsistent upload status"));
            }
            if now.offset != offset || now.complete {
                return Ok(now);
            }
        }
        Err(match e {
            Error::Refused {
                status,
                code,
                message,
                retry_after,
            } => Error::Refused {
                status: *status,
                code: code.clone(),
                message: message.clone(),
                retry_after: *retry_after,
            },
            _ => bad(SendPiece::PATH, "the upload stays busy"),
        })
    }

    /// Works through the app's download queue: each file fetched in
    /// ranges from where its download stands, checked, and switched into
    /// place. A file that fails on its own (the server refuses it or does
    /// not hold it, its answer is not the range asked for, its bytes do not
    /// match) stays queued with the failure noted (the next round tries
    /// again), is reported, and the next file goes on; the previous
    /// version of the file stays. Only what ends the round
    /// ([`ends_round`]) is an error.
    pub(crate) fn download_all(
        &mut self,
        report: &mut AppSync,
        observer: &mut dyn SyncObserver,
    ) -> Result<()> {
        let app = self.app.to_owned();
        self.store()?;
        let Some(store) = self.store.as_ref() else {
            // Queued for an app that may not keep files here: they wait.
            return Ok(());
        };
        for queued in store.queued_downloads()? {
            let (name, sha256, size) = (&queued.name, &queued.sha256, queued.size);
            // Held already (a file stored before hashes were recorded, or
            // put here meanwhile): nothing to fetch.
            let held = match store.info(name)? {
                Some(info) if info.size == size => match store.sha256(name) {
                    Ok(have) => have == *sha256,
                    // A damaged stored file is replaced by the download.
                    Err(coffer_device::Error::FileCorrupt(_)) => false,
                    Err(e) => return Err(e.into()),
                },
                _ => false,
            };
            if held {
                store.dequeue_download(name, sha256)?;
                continue;
            }
            let fetched = download_one(
                self.client,
                self.credentials,
                store,
                &app,
                &queued,
                report,
                observer,
            )?;
            if let Some(code) = fetched {
                store.note_download_failure(name, sha256, &code)?;
                report.file_problems.push(FileProblem {
                    direction: FileDirection::Download,
                    name: name.clone(),
                    sha256: sha256.clone(),
                    code,
                });
            }
        }
        Ok(())
    }
}

/// Fetches one queued file into the store from where its download stands
/// and switches it into place. `Some(code)` when this file failed on its
/// own (it stays queued); an error only for what ends the round.
fn download_one(
    client: &Client,
    credentials: Credentials<'_>,
    store: &FileStore,
    app: &str,
    queued: &coffer_device::QueuedDownload,
    report: &mut AppSync,
    observer: &mut dyn SyncObserver,
) -> Result<Option<String>> {
    let (name, sha256, size) = (&queued.name, &queued.sha256, queued.size);
    let mismatch = || Ok(Some("download_mismatch".to_owned()));
    let mut download = store.download(name, sha256, size, queued.content_type.as_deref())?;
    observer.file_progress(app, FileDirection::Download, name, download.offset(), size);
    while download.offset() < size {
        let first = download.offset();
        let last = first.saturating_add(MAX_FETCH_RANGE).min(size) - 1;
        let fetched = client.send(
            &FetchBlob {
                app: app.to_owned(),
                sha256: sha256.clone(),
                range: (first, last),
            },
            credentials,
        );
        // The file's bytes: zeroized once written (or refused).
        let bytes = match fetched {
            Ok(BlobBytes(bytes)) => Zeroizing::new(bytes),
            Err(e) if ends_round(&e) => return Err(e),
            Err(e) => return Ok(Some(problem_code(&e))),
        };
        // Exactly the range asked for, before a byte of it is kept.
        if bytes.len() as u64 != last - first + 1 {
            return Ok(Some("bad_answer".to_owned()));
        }
        match download.write(&bytes) {
            Ok(()) => {}
            Err(coffer_device::Error::DownloadMismatch { kind, .. }) => {
                return match kind {
                    // Stored or deleted here meanwhile: the user's version
                    // stays, nothing is wanted any more.
                    coffer_device::DownloadMismatchKind::Superseded => Ok(None),
                    _ => mismatch(),
                };
            }
            Err(e) => return Err(e.into()),
        }
        report.bytes_downloaded += bytes.len() as u64;
        observer.file_progress(app, FileDirection::Download, name, download.offset(), size);
    }
    match download.finish() {
        Ok(_) => {
            report.files_downloaded += 1;
            Ok(None)
        }
        Err(coffer_device::Error::DownloadMismatch {
            kind: coffer_device::DownloadMismatchKind::Superseded,
            ..
        }) => Ok(None),
        Err(coffer_device::Error::DownloadMismatch { .. }) => mismatch(),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: u16, code: ErrorCode) -> Error {
        Error::Refused {
            status,
            code,
            message: String::new(),
            retry_after: None,
        }
    }

    #[test]
    fn a_files_own_failure_is_told_apart_from_one_that_ends_the_round() {
        // The file's: the server refuses it, or answers what was not asked.
        for e in [
            refused(500, ErrorCode::Internal),
            refused(503, ErrorCode::Internal),
            refused(404, ErrorCode::NotFound),
            refused(416, ErrorCode::RangeNotSatisfiable),
            refused(409, ErrorCode::UploadOffsetMismatch),
            refused(502, ErrorCode::Unknown(String::new())),
            bad(FetchBlob::PATH, "short"),
            Error::Transport(TransportError::TooLarge { limit: 1 }),
        ] {
            assert!(!ends_round(&e), "{e:?}");
        }
        assert_eq!(problem_code(&refused(500, ErrorCode::Internal)), "internal");
        assert_eq!(
            problem_code(&refused(502, ErrorCode::Unknown(String::new()))),
            "http_502"
        );
        assert_eq!(problem_code(&bad(FetchBlob::PATH, "short")), "bad_answer");
        // The round's: the connection, the device's credential, its
        // organization, its rate, its own stores.
        for e in [
            Error::Transport(TransportError::Unreachable("cut".into())),
            Error::Transport(TransportError::TimedOut),
            Error::Transport(TransportError::Untrusted),
            Error::Transport(TransportError::Redirected { status: 302 }),
            refused(401, ErrorCode::InvalidToken),
            refused(401, ErrorCode::Unknown("revoked".into())),
            refused(403, ErrorCode::OrganizationSuspended),
            refused(403, ErrorCode::AppNotSynced),
            refused(429, ErrorCode::RateLimited),
            refused(400, ErrorCode::TokenExpired),
            Error::Device(coffer_device::Error::Busy),
        ] {
            assert!(ends_round(&e), "{e:?}");
        }
    }
}
