//! The device's half of files sync, without a server: the SHA-256 the file
//! store records, resumable and verified downloads into it, and records
//! that reference files through the sync state and its download queue.

use serde_json::json;
use sha2::{Digest, Sha256};

use super::{pass, raw_app_db, space, FAST};
use crate::stream::{FileCorruptKind, CHUNK_SIZE};
use crate::*;

fn vault() -> (tempfile::TempDir, Space, UnlockedVault) {
    let (dir, space) = space();
    let v = space
        .create_vault("acme", "alice", &pass("pw"), &FAST)
        .unwrap();
    v.add_app("cases", Capabilities::all()).unwrap();
    (dir, space, v)
}

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ seed.wrapping_mul(31))
        .collect()
}

fn read_all(store: &FileStore, name: &str) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    store
        .open_file(name)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Every file of the app's blob directory, by name.
fn blob_dir_files(space: &Space) -> Vec<String> {
    let root = space.root().join("acme").join("files");
    let mut out = Vec::new();
    for dir in std::fs::read_dir(root).unwrap() {
        for file in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            out.push(file.unwrap().file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    out
}

fn temp_blob(space: &Space) -> std::path::PathBuf {
    let root = space.root().join("acme").join("files");
    for dir in std::fs::read_dir(root).unwrap() {
        for file in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            if path.to_string_lossy().ends_with(".download") {
                return path;
            }
        }
    }
    panic!("no temporary download blob");
}

/// Writes `bytes` to a download in pieces of `piece` bytes (as ranges
/// arrive).
fn feed(download: &mut Download<'_>, bytes: &[u8], piece: usize) -> Result<()> {
    for part in bytes.chunks(piece) {
        download.write(part)?;
    }
    Ok(())
}

#[test]
fn put_records_the_sha256_and_an_older_row_gets_it_when_needed() {
    let (_d, _s, v) = vault();
    let files = v.app("cases").unwrap().files().unwrap();
    let photo = data(3 * CHUNK_SIZE + 5, 1);
    let info = files
        .put(
            "photo.jpg",
            &mut &photo[..],
            Some("image/jpeg"),
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(info.sha256.as_deref(), Some(sha256(&photo).as_str()));
    assert_eq!(files.sha256("photo.jpg").unwrap(), sha256(&photo));
    assert!(matches!(
        files.sha256("nope"),
        Err(Error::NoSuchFile { .. })
    ));
    drop(files);

    // A vault made before the column: the next open adds it, the row has
    // no hash until one is asked for, and then it is worked out from the
    // blob and kept.
    let db = raw_app_db(&v, "cases");
    db.execute_batch("ALTER TABLE coffer_files DROP COLUMN sha256")
        .unwrap();
    drop(db);
    let files = v.app("cases").unwrap().files().unwrap();
    assert_eq!(files.info("photo.jpg").unwrap().unwrap().sha256, None);
    assert_eq!(files.sha256("photo.jpg").unwrap(), sha256(&photo));
    assert_eq!(
        files.info("photo.jpg").unwrap().unwrap().sha256.as_deref(),
        Some(sha256(&photo).as_str())
    );
}

#[test]
fn a_download_interrupted_half_way_resumes_from_its_last_whole_chunk() {
    let (_d, space, v) = vault();
    let files = v.app("cases").unwrap().files().unwrap();
    let photo = data(5 * CHUNK_SIZE + 1234, 2);
    let sha = sha256(&photo);
    let size = photo.len() as u64;

    // Half way (in the middle of chunk 2), the process "dies": the
    // Download is dropped without a finish.
    let half = 2 * CHUNK_SIZE + CHUNK_SIZE / 2;
    let mut download = files
        .download("photo.jpg", &sha, size, Some("image/jpeg"))
        .unwrap();
    assert_eq!(download.offset(), 0);
    feed(&mut download, &photo[..half], 10_000).unwrap();
    assert_eq!(download.offset(), half as u64);
    drop(download);
    assert!(files.info("photo.jpg").unwrap().is_none());
    drop(files);

    // A new process: the download goes on from the last whole chunk, and
    // only the bytes from there are written again.
    let files = v.app("cases").unwrap().files().unwrap();
    let mut download = files
        .download("photo.jpg", &sha, size, Some("image/jpeg"))
        .unwrap();
    assert_eq!(download.offset(), 2 * CHUNK_SIZE as u64);
    assert!(download.discarded().is_none());
    let resumed_at = download.offset() as usize;

    // Cut again, this time inside a chunk's write on disk (a torn write):
    // the resume point is still the last whole chunk.
    feed(
        &mut download,
        &photo[resumed_at..4 * CHUNK_SIZE + 10],
        65_000,
    )
    .unwrap();
    drop(download);
    let temp = temp_blob(&space);
    let len = std::fs::metadata(&temp).unwrap().len();
    let torn = len - 700;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&temp)
        .unwrap()
        .set_len(torn)
        .unwrap();
    let mut download = files
        .download("photo.jpg", &sha, size, Some("image/jpeg"))
        .unwrap();
    assert_eq!(download.offset(), 3 * CHUNK_SIZE as u64);
    let from = download.offset() as usize;
    feed(&mut download, &photo[from..], 100_000).unwrap();
    let info = download.finish().unwrap();
    assert_eq!(info.size, size);
    assert_eq!(info.sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(info.content_type.as_deref(), Some("image/jpeg"));
    assert!(read_all(&files, "photo.jpg") == photo);
    // No temporary blob and no download state left.
    assert_eq!(blob_dir_files(&space).len(), 1);
    assert!(!blob_dir_files(&space)[0].starts_with('.'));
    assert_eq!(files.remove_orphans().unwrap(), 0);
    // The same version again starts a new download (nothing resumable).
    assert_eq!(
        files
            .download("photo.jpg", &sha, size, None)
            .unwrap()
            .offset(),
        0
    );
    assert!(files.abandon_download("photo.jpg").unwrap());
    assert_eq!(blob_dir_files(&space).len(), 1);
}

#[test]
fn a_download_that_does_not_match_keeps_the_previous_version_exactly() {
    let (_d, space, v) = vault();
    let files = v.app("cases").unwrap().files().unwrap();
    let v1 = data(2 * CHUNK_SIZE + 7, 3);
    files
        .put(
            "scan.pdf",
            &mut &v1[..],
            Some("application/pdf"),
            &mut |_| {},
        )
        .unwrap();
    let before = blob_dir_files(&space);
    let blob_bytes = std::fs::read(
        space
            .root()
            .join("acme/files")
            .read_dir()
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path()
            .join(&before[0]),
    )
    .unwrap();
    let v2 = data(3 * CHUNK_SIZE + 9, 4);
    let mut flipped = v2.clone();
    flipped[CHUNK_SIZE + 3] ^= 0x10;

    // A wrong byte: the hash does not match at the end.
    let mut download = files
        .download("scan.pdf", &sha256(&v2), v2.len() as u64, None)
        .unwrap();
    feed(&mut download, &flipped, 50_000).unwrap();
    assert!(matches!(
        download.finish(),
        Err(Error::DownloadMismatch {
            kind: DownloadMismatchKind::Sha256,
            ..
        })
    ));
    // More bytes than declared: refused at once.
    let mut download = files
        .download("scan.pdf", &sha256(&v2), v2.len() as u64, None)
        .unwrap();
    feed(&mut download, &v2, 50_000).unwrap();
    assert!(matches!(
        download.write(b"x"),
        Err(Error::DownloadMismatch {
            kind: DownloadMismatchKind::TooLong,
            ..
        })
    ));
    assert!(matches!(
        download.finish(),
        Err(Error::DownloadMismatch { .. })
    ));
    // Too few: kept, to resume.
    let mut download = files
        .download("scan.pdf", &sha256(&v2), v2.len() as u64, None)
        .unwrap();
    feed(&mut download, &v2[..100], 50_000).unwrap();
    assert!(matches!(
        download.finish(),
        Err(Error::DownloadIncomplete { offset: 100, .. })
    ));
    assert!(files.abandon_download("scan.pdf").unwrap());

    // The old version is exactly as it was: same blob, same bytes, same
    // metadata; no temporary blob left.
    assert_eq!(blob_dir_files(&space), before);
    let info = files.info("scan.pdf").unwrap().unwrap();
    assert_eq!(info.sha256.as_deref(), Some(sha256(&v1).as_str()));
    assert_eq!(info.content_type.as_deref(), Some("application/pdf"));
    assert!(read_all(&files, "scan.pdf") == v1);
    let dir = space.root().join("acme/files");
    let app_dir = dir.read_dir().unwrap().next().unwrap().unwrap().path();
    assert!(std::fs::read(app_dir.join(&before[0])).unwrap() == blob_bytes);

    // The right bytes switch it, and the old blob goes.
    let mut download = files
        .download(
            "scan.pdf",
            &sha256(&v2),
            v2.len() as u64,
            Some("application/pdf"),
        )
        .unwrap();
    feed(&mut download, &v2, 50_000).unwrap();
    download.finish().unwrap();
    assert!(read_all(&files, "scan.pdf") == v2);
    assert_eq!(blob_dir_files(&space).len(), 1);
    assert_ne!(blob_dir_files(&space), before);
}

#[test]
fn a_tampered_temporary_blob_is_detected_at_resume_and_started_again() {
    let (_d, space, v) = vault();
    let files = v.app("cases").unwrap().files().unwrap();
    let doc = data(4 * CHUNK_SIZE + 77, 5);
    let sha = sha256(&doc);
    let size = doc.len() as u64;
    let mut download = files.download("doc", &sha, size, None).unwrap();
    feed(&mut download, &doc[..3 * CHUNK_SIZE + 10], 30_000).unwrap();
    drop(download);

    // A bit flipped in chunk 1 of the temporary blob.
    let temp = temp_blob(&space);
    let mut bytes = std::fs::read(&temp).unwrap();
    bytes[stream::HEADER_LEN + CHUNK_SIZE + 16 + 100] ^= 1;
    std::fs::write(&temp, &bytes).unwrap();
    let mut download = files.download("doc", &sha, size, None).unwrap();
    assert_eq!(download.discarded(), Some(&FileCorruptKind::Chunk(1)));
    assert_eq!(download.offset(), 0);
    // The changed blob is gone; a new one (another salt) replaces it.
    assert!(!temp.exists());
    feed(&mut download, &doc, 30_000).unwrap();
    download.finish().unwrap();
    assert!(read_all(&files, "doc") == doc);

    // A torn chunk that comes again with other bytes is refused: the same
    // nonce never seals two plaintexts.
    let other = data(3 * CHUNK_SIZE, 6);
    let mut download = files
        .download("other", &sha256(&other), other.len() as u64, None)
        .unwrap();
    feed(&mut download, &other[..2 * CHUNK_SIZE + 5], 30_000).unwrap();
    drop(download);
    let temp = temp_blob(&space);
    let len = std::fs::metadata(&temp).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&temp)
        .unwrap()
        .set_len(len - 50)
        .unwrap();
    let mut download = files
        .download("other", &sha256(&other), other.len() as u64, None)
        .unwrap();
    assert_eq!(download.offset(), CHUNK_SIZE as u64);
    let mut changed = other[CHUNK_SIZE..].to_vec();
    changed[10] ^= 1;
    assert!(matches!(
        feed(&mut download, &changed, 30_000),
        Err(Error::DownloadMismatch {
            kind: DownloadMismatchKind::Rewritten,
            ..
        })
    ));
    assert!(!temp.exists());
    assert!(files.info("other").unwrap().is_none());
}

#[test]
fn orphans_of_downloads_are_removed_and_a_recorded_one_is_kept() {
    let (_d, space, v) = vault();
    let files = v.app("cases").unwrap().files().unwrap();
    let doc = data(2 * CHUNK_SIZE + 1, 7);
    let mut download = files
        .download("doc", &sha256(&doc), doc.len() as u64, None)
        .unwrap();
    feed(&mut download, &doc[..CHUNK_SIZE + 5], 10_000).unwrap();
    drop(download);
    let temp = temp_blob(&space);
    let dir = temp.parent().unwrap().to_owned();
    // Left by a download whose record is gone (a crash between the two).
    std::fs::write(
        dir.join(".0123456789abcdef0123456789abcdef.download"),
        b"old",
    )
    .unwrap();
    assert_eq!(files.remove_orphans().unwrap(), 1);
    assert!(temp.exists());
    assert_eq!(
        files
            .download("doc", &sha256(&doc), doc.len() as u64, None)
            .unwrap()
            .offset(),
        CHUNK_SIZE as u64
    );
    // Given up: its blob goes; a recorded download whose blob went is
    // forgotten by the next sweep.
    assert!(files.abandon_download("doc").unwrap());
    assert!(!temp.exists());
    assert!(!files.abandon_download("doc").unwrap());
    drop(
        files
            .download("doc", &sha256(&doc), doc.len() as u64, None)
            .unwrap(),
    );
    std::fs::remove_file(temp_blob(&space)).unwrap();
    assert_eq!(files.remove_orphans().unwrap(), 0);
    assert!(!files.abandon_download("doc").unwrap());
}

fn file_head(rev: &str, body: serde_json::Value, files: Vec<FileRef>) -> Side {
    Side {
        revision: rev.into(),
        base: None,
        deleted: false,
        body: Some(body),
        author: "bob".into(),
        files,
    }
}

fn pulled(id: &str, seq: u64, head: Side) -> PulledHead {
    PulledHead {
        collection: "c".into(),
        id: id.into(),
        seq,
        head,
        leaves: Vec::new(),
    }
}

fn file_ref(name: &str, bytes: &[u8]) -> FileRef {
    FileRef {
        name: name.into(),
        sha256: sha256(bytes),
        size: bytes.len() as u64,
        content_type: Some("image/jpeg".into()),
    }
}

const OTHER: &str = "99999999999999999999999999999999";

#[test]
fn records_reference_files_through_pending_changes_pulls_and_the_download_queue() {
    let (_d, _s, v) = vault();
    let app = v.app("cases").unwrap();
    let files = app.files().unwrap();
    let photo = data(1000, 8);
    files
        .put(
            "photo.jpg",
            &mut &photo[..],
            Some("image/jpeg"),
            &mut |_| {},
        )
        .unwrap();
    let mut records = app.records().unwrap();
    let origin = records.sync_origin().unwrap();

    // Attached at the version stored now, in the write's transaction.
    let record = records
        .put_with_files("c", "1", &json!({"n": 1}), None, &["photo.jpg"])
        .unwrap();
    assert_eq!(record.files, vec![file_ref("photo.jpg", &photo)]);
    assert_eq!(records.get("c", "1").unwrap().unwrap().files, record.files);
    // A name the store does not hold: refused, nothing changes.
    assert!(matches!(
        records.put_with_files("c", "1", &json!({"n": 2}), None, &["photo.jpg", "gone"]),
        Err(Error::NoSuchFile { name }) if name == "gone"
    ));
    assert!(matches!(
        records.put_with_files(
            "c",
            "1",
            &json!({"n": 2}),
            None,
            &["photo.jpg", "photo.jpg"]
        ),
        Err(Error::InvalidName { .. })
    ));
    assert_eq!(records.get("c", "1").unwrap().unwrap().version, 1);
    // A body-only edit keeps them; the pending change carries them.
    records.put("c", "1", &json!({"n": 3}), None).unwrap();
    let pending = records.pending_changes(10).unwrap();
    assert_eq!(pending[0].files, vec![file_ref("photo.jpg", &photo)]);
    // A deletion references none.
    records
        .put_with_files("c", "2", &json!({}), None, &["photo.jpg"])
        .unwrap();
    let gone = records.delete("c", "2", None).unwrap();
    assert!(gone.files.is_empty());

    // Pulled records: applied at once; a file not held at that version is
    // queued (one held at it is not), and the latest pulled head wins.
    let scan_v1 = data(3000, 9);
    let scan_v2 = data(4000, 10);
    let applied = records
        .apply_page(
            &origin,
            &[pulled(
                "10",
                1,
                file_head(
                    &format!("{OTHER}.1"),
                    json!({"s": 1}),
                    vec![
                        file_ref("scan.pdf", &scan_v1),
                        file_ref("photo.jpg", &photo),
                    ],
                ),
            )],
            "v1.1",
            true,
        )
        .unwrap();
    assert_eq!(applied.downloads_queued, 1);
    let taken = records.get("c", "10").unwrap().unwrap();
    assert_eq!(taken.body, json!({"s": 1}));
    assert_eq!(taken.files.len(), 2);
    records
        .apply_page(
            &origin,
            &[pulled(
                "11",
                2,
                file_head(
                    &format!("{OTHER}.2"),
                    json!({"s": 2}),
                    vec![file_ref("scan.pdf", &scan_v2)],
                ),
            )],
            "v1.2",
            true,
        )
        .unwrap();
    let queue = files.queued_downloads().unwrap();
    assert_eq!(queue.len(), 1);
    assert_eq!(queue[0].name, "scan.pdf");
    assert_eq!(queue[0].sha256, sha256(&scan_v2));
    assert_eq!(queue[0].size, scan_v2.len() as u64);
    assert_eq!(records.sync_state().unwrap().downloads_queued, 1);
    files
        .note_download_failure("scan.pdf", &sha256(&scan_v2), "not_found")
        .unwrap();
    let queue = files.queued_downloads().unwrap();
    assert_eq!(
        (queue[0].attempts, queue[0].last_failure.as_deref()),
        (1, Some("not_found"))
    );

    // The download ends its queue entry in the switch's transaction.
    let mut download = files
        .download(
            "scan.pdf",
            &sha256(&scan_v2),
            scan_v2.len() as u64,
            Some("image/jpeg"),
        )
        .unwrap();
    download.write(&scan_v2).unwrap();
    download.finish().unwrap();
    assert!(files.queued_downloads().unwrap().is_empty());
    assert_eq!(records.sync_state().unwrap().downloads_queued, 0);
    // A pulled head naming the version held now queues nothing.
    let applied = records
        .apply_page(
            &origin,
            &[pulled(
                "12",
                3,
                file_head(
                    &format!("{OTHER}.3"),
                    json!({}),
                    vec![file_ref("scan.pdf", &scan_v2)],
                ),
            )],
            "v1.3",
            true,
        )
        .unwrap();
    assert_eq!(applied.downloads_queued, 0);

    // A conflict keeps both sides' files; the server's side winning takes
    // its files, and queues what is missing.
    let mut local = records.get("c", "10").unwrap().unwrap();
    local.body = json!({"s": "local"});
    records
        .put_with_files("c", "10", &local.body, None, &["photo.jpg"])
        .unwrap();
    let p = records
        .pending_changes(10)
        .unwrap()
        .into_iter()
        .find(|p| p.id == "10")
        .unwrap();
    let own = format!("{origin}.{}", p.local_seq);
    records
        .acknowledge(&[Ack {
            collection: "c".into(),
            id: "10".into(),
            local_seq: p.local_seq,
            revision: own.clone(),
            outcome: AckOutcome::Conflict,
        }])
        .unwrap();
    let scan_v3 = data(5000, 11);
    let mut leaf = file_head(
        &own,
        json!({"s": "local"}),
        vec![file_ref("photo.jpg", &photo)],
    );
    leaf.author = "alice".into();
    records
        .apply_page(
            &origin,
            &[PulledHead {
                leaves: vec![leaf],
                ..pulled(
                    "10",
                    4,
                    file_head(
                        &format!("{OTHER}.4"),
                        json!({"s": "server"}),
                        vec![file_ref("scan.pdf", &scan_v3)],
                    ),
                )
            }],
            "v1.4",
            true,
        )
        .unwrap();
    let conflict = records.conflict("c", "10").unwrap().unwrap();
    assert_eq!(conflict.local_files, vec![file_ref("photo.jpg", &photo)]);
    assert_eq!(
        conflict.server.as_ref().unwrap().files,
        vec![file_ref("scan.pdf", &scan_v3)]
    );
    assert_eq!(
        conflict.leaves[0].files,
        vec![file_ref("photo.jpg", &photo)]
    );
    assert!(files.queued_downloads().unwrap().is_empty());
    records.resolve("c", "10", Resolution::KeepServer).unwrap();
    assert_eq!(
        records.get("c", "10").unwrap().unwrap().files,
        vec![file_ref("scan.pdf", &scan_v3)]
    );
    assert_eq!(
        files.queued_downloads().unwrap()[0].sha256,
        sha256(&scan_v3)
    );
}

#[test]
fn attaching_files_needs_the_files_capability_and_old_stores_gain_the_columns() {
    let (_d, _s, v) = vault();
    v.add_app("notes", Capabilities::none().with(Capability::Records))
        .unwrap();
    let mut records = v.app("notes").unwrap().records().unwrap();
    assert!(matches!(
        records.put_with_files("c", "1", &json!({}), None, &["x"]),
        Err(Error::CapabilityDenied {
            capability: "files",
            ..
        })
    ));
    // No names: a plain write.
    assert!(records
        .put_with_files("c", "1", &json!({}), None, &[])
        .unwrap()
        .files
        .is_empty());
    drop(records);

    // A record store from before files sync (sync schema 1, no columns).
    let mut records = v.app("cases").unwrap().records().unwrap();
    records.put("c", "1", &json!({"old": true}), None).unwrap();
    drop(records);
    let db = raw_app_db(&v, "cases");
    db.execute_batch(
        "ALTER TABLE coffer_records DROP COLUMN files;
         ALTER TABLE coffer_sync_sides DROP COLUMN files;
         UPDATE coffer_sync_meta SET value = '1' WHERE key = 'schema';",
    )
    .unwrap();
    drop(db);
    let app = v.app("cases").unwrap();
    let mut records = app.records().unwrap();
    assert_eq!(records.get("c", "1").unwrap().unwrap().files, vec![]);
    app.files()
        .unwrap()
        .put("a", &mut &b"abc"[..], None, &mut |_| {})
        .unwrap();
    let record = records
        .put_with_files("c", "1", &json!({"old": false}), None, &["a"])
        .unwrap();
    assert_eq!(record.files[0].sha256, sha256(b"abc"));
    assert_eq!(record.files[0].content_type, None);
}

#[test]
fn a_download_killed_between_its_rename_and_its_commit_goes_on() {
    let (_d, space, v) = vault();
    let files = v.app("cases").unwrap().files().unwrap();
    let doc = data(3 * CHUNK_SIZE + 11, 12);
    let (sha, size) = (sha256(&doc), doc.len() as u64);
    let mut download = files.download("doc", &sha, size, None).unwrap();
    feed(&mut download, &doc[..2 * CHUNK_SIZE + 1], 40_000).unwrap();
    drop(download);
    // As a finish leaves it after its rename, before its transaction: the
    // temporary blob under its blob name, no row pointing at it.
    let temp = temp_blob(&space);
    let name = temp.file_name().unwrap().to_string_lossy().into_owned();
    let blob = temp.with_file_name(&name[1..name.len() - ".download".len()]);
    std::fs::rename(&temp, &blob).unwrap();
    let mut download = files.download("doc", &sha, size, None).unwrap();
    assert_eq!(download.offset(), 2 * CHUNK_SIZE as u64);
    assert!(temp.exists() && !blob.exists());
    feed(&mut download, &doc[2 * CHUNK_SIZE..], 40_000).unwrap();
    download.finish().unwrap();
    assert!(read_all(&files, "doc") == doc);
    assert!(blob.exists() && !temp.exists());
}

/// Whether the app's blob directory holds a temporary download blob.
fn has_temp_blob(space: &Space) -> bool {
    blob_dir_files(space)
        .iter()
        .any(|f| f.ends_with(".download"))
}

#[test]
fn a_local_put_or_delete_drops_the_queued_and_unfinished_download_of_its_name() {
    let (_d, space, v) = vault();
    let app = v.app("cases").unwrap();
    let files = app.files().unwrap();
    let mut records = app.records().unwrap();
    let origin = records.sync_origin().unwrap();
    let older = data(3 * CHUNK_SIZE + 17, 20);
    let mine = data(2 * CHUNK_SIZE + 3, 21);
    let queue_older = |records: &mut RecordStore, seq: u64| {
        records
            .apply_page(
                &origin,
                &[pulled(
                    "1",
                    seq,
                    file_head(
                        &format!("{OTHER}.{seq}"),
                        json!({"v": seq}),
                        vec![file_ref("scan.pdf", &older)],
                    ),
                )],
                &format!("v1.{seq}"),
                true,
            )
            .unwrap();
    };

    // A pulled record asks for the older version; its download is cut
    // half way (queued, a temporary blob and its row left).
    queue_older(&mut records, 1);
    assert_eq!(files.queued_downloads().unwrap().len(), 1);
    let mut download = files
        .download("scan.pdf", &sha256(&older), older.len() as u64, None)
        .unwrap();
    feed(&mut download, &older[..CHUNK_SIZE + 9], 4096).unwrap();
    drop(download);
    assert!(has_temp_blob(&space));

    // The user stores their own version: nothing of the older one is
    // left to come back over it.
    files
        .put("scan.pdf", &mut &mine[..], None, &mut |_| {})
        .unwrap();
    assert!(files.queued_downloads().unwrap().is_empty());
    assert_eq!(records.sync_state().unwrap().downloads_queued, 0);
    assert!(!has_temp_blob(&space));
    assert!(!files.abandon_download("scan.pdf").unwrap());
    assert!(read_all(&files, "scan.pdf") == mine);

    // A download still under way when the put lands cannot switch either:
    // the put took its temporary blob and its row.
    let mut download = files
        .download("scan.pdf", &sha256(&older), older.len() as u64, None)
        .unwrap();
    feed(&mut download, &older, 4096).unwrap();
    files
        .put("scan.pdf", &mut &mine[..], None, &mut |_| {})
        .unwrap();
    assert!(matches!(
        download.finish(),
        Err(Error::DownloadMismatch {
            kind: DownloadMismatchKind::Superseded,
            ..
        })
    ));
    assert!(read_all(&files, "scan.pdf") == mine);

    // Even if it renamed its blob into place just before the put's
    // transaction (the temporary blob back on disk, its row gone), its
    // own transaction finds the row gone, switches nothing and removes
    // the blob.
    let mut download = files
        .download("scan.pdf", &sha256(&older), older.len() as u64, None)
        .unwrap();
    feed(&mut download, &older, 4096).unwrap();
    let temp = temp_blob(&space);
    let saved = std::fs::read(&temp).unwrap();
    files
        .put("scan.pdf", &mut &mine[..], None, &mut |_| {})
        .unwrap();
    assert!(!temp.exists());
    std::fs::write(&temp, &saved).unwrap();
    assert!(matches!(
        download.finish(),
        Err(Error::DownloadMismatch {
            kind: DownloadMismatchKind::Superseded,
            ..
        })
    ));
    assert!(read_all(&files, "scan.pdf") == mine);
    assert_eq!(
        blob_dir_files(&space).len(),
        1,
        "{:?}",
        blob_dir_files(&space)
    );

    // A delete drops them the same way.
    queue_older(&mut records, 2);
    assert_eq!(files.queued_downloads().unwrap().len(), 1);
    let mut download = files
        .download("scan.pdf", &sha256(&older), older.len() as u64, None)
        .unwrap();
    feed(&mut download, &older[..CHUNK_SIZE + 9], 4096).unwrap();
    drop(download);
    assert!(files.delete("scan.pdf").unwrap());
    assert!(files.queued_downloads().unwrap().is_empty());
    assert!(
        blob_dir_files(&space).is_empty(),
        "{:?}",
        blob_dir_files(&space)
    );

    // A later pulled record may ask again: then its version comes.
    queue_older(&mut records, 3);
    assert_eq!(files.queued_downloads().unwrap()[0].sha256, sha256(&older));
    // A finished download ends only the queue entry of its own version.
    let mut download = files
        .download("scan.pdf", &sha256(&older), older.len() as u64, None)
        .unwrap();
    feed(&mut download, &older, 4096).unwrap();
    download.finish().unwrap();
    assert!(files.queued_downloads().unwrap().is_empty());
    assert!(read_all(&files, "scan.pdf") == older);
}
