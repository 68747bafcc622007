//! Files sync, the server's side: resumable uploads (offsets, per-piece
//! digests, the whole file's hash, expiry), ranged downloads, storage once
//! per organization and app, isolation between organizations, records
//! that reference files, sealing at rest, tampering, the admins' audited
//! fetch, limits, accounting and garbage collection — on SQLite and on
//! PostgreSQL, on a local directory and on a real S3-compatible server
//! (s3s-fs) on loopback; and two server processes on one PostgreSQL and
//! one bucket taking the pieces of one upload in turn.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use coffer_protocol::files::{piece_checksum, MIN_PIECE_SIZE};
use coffer_server::blobs::{BlobStorage, PieceName};
use coffer_server::testing::S3Server;
use coffer_server::Server;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::postgres::Postgres;
use support::{add_people, enrollment, error_code, get, login, post, set_up, Running};

/// Every stored object must be free of it: the files carry it in the clear.
const MARKER: &str = "MARKER-f11e5-only-in-a-file";
const PIECE: u64 = MIN_PIECE_SIZE; // 64 KiB
const PASSWORD: &str = "correct horse battery";

/// `len` bytes of a file numbered `seed`, with the marker in every 4 KiB.
fn file(seed: u8, len: usize) -> Vec<u8> {
    let mut state = u64::from(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut bytes: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    for at in (0..len.saturating_sub(MARKER.len())).step_by(4096) {
        bytes[at..at + MARKER.len()].copy_from_slice(MARKER.as_bytes());
    }
    bytes
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Where the blobs are: a local directory, or s3s-fs.
enum Blobs {
    Local(tempfile::TempDir),
    S3(S3Server),
}

impl Blobs {
    fn local() -> Blobs {
        Blobs::Local(tempfile::tempdir().unwrap())
    }

    fn s3() -> Blobs {
        Blobs::S3(S3Server::start("coffer-files"))
    }

    fn storage(&self) -> BlobStorage {
        match self {
            Blobs::Local(dir) => BlobStorage::local(dir.path().join("blobs")).unwrap(),
            Blobs::S3(s3) => s3.storage(),
        }
    }

    /// The directory whose files are the stored objects (s3s-fs keeps a
    /// bucket as a directory).
    fn root(&self) -> PathBuf {
        match self {
            Blobs::Local(dir) => dir.path().join("blobs"),
            Blobs::S3(s3) => s3.root().join(&s3.bucket),
        }
    }

    /// Everything the storage holds on disk (for s3s-fs, its metadata
    /// files too).
    fn everything(&self) -> PathBuf {
        match self {
            Blobs::Local(dir) => dir.path().join("blobs"),
            Blobs::S3(s3) => s3.root(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Blobs::Local(_) => "local",
            Blobs::S3(_) => "s3",
        }
    }
}

/// Every regular file under `dir` (recursively), as (path, bytes).
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

/// The piece objects of `upload` in the store (their names end in 8 digits).
fn pieces_of(blobs: &Blobs, org: i64, upload: &str) -> Vec<PathBuf> {
    let dir = blobs.root().join(format!("o{org}")).join(upload);
    let mut pieces: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| {
            d.map(|e| e.unwrap().path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.len() == 8 && n.bytes().all(|b| b.is_ascii_digit()))
                })
                .collect()
        })
        .unwrap_or_default();
    pieces.sort();
    pieces
}

struct Device {
    id: i64,
    token: String,
}

struct World {
    server: Running,
    http: reqwest::Client,
    org: i64,
    admin: String,
    admin_id: i64,
    url: String,
}

async fn start(url: &str, storage: BlobStorage, tune: impl FnOnce(Server) -> Server) -> Running {
    Running::start_configured(url, move |s| {
        tune(s.with_blob_storage(storage).with_piece_size(PIECE))
    })
    .await
}

impl World {
    async fn new(url: &str, server: Running) -> World {
        let http = reqwest::Client::new();
        let org = set_up(&server, &http).await;
        let admin = login(&server, &http, "alice", PASSWORD).await.unwrap();
        let me: Value = get(&http, server.url("/v1/me"), &admin)
            .await
            .json()
            .await
            .unwrap();
        let world = World {
            admin_id: me["user_id"].as_i64().unwrap(),
            server,
            http,
            org,
            admin,
            url: url.to_owned(),
        };
        world
            .publish(world.org, &world.admin.clone(), 1, &["cases"])
            .await;
        world
    }

    async fn publish(&self, org: i64, admin: &str, version: i64, apps: &[&str]) {
        let r = post(
            &self.http,
            self.server.url(&format!("/v1/orgs/{org}/policies")),
            admin,
            json!({"version": version, "rules": {"sync": apps}}),
        )
        .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }

    async fn device_of(&self, org: i64, admin: &str, admin_id: i64, name: &str) -> Device {
        let e = enrollment(&self.server, &self.http, org, admin, name).await;
        let device = Device {
            id: e["device_id"].as_i64().unwrap(),
            token: e["device_token"].as_str().unwrap().to_owned(),
        };
        let r = post(
            &self.http,
            self.server
                .url(&format!("/v1/orgs/{org}/sync/authors/bind")),
            admin,
            json!({"device_id": device.id, "author": "alice", "user_id": admin_id}),
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);
        device
    }

    async fn device(&self, name: &str) -> Device {
        self.device_of(self.org, &self.admin, self.admin_id, name)
            .await
    }

    async fn store(&self) -> coffer_server::Store {
        coffer_server::Store::open(&self.url).await.unwrap()
    }
}

async fn create_at(
    server: &Running,
    http: &reqwest::Client,
    device: &Device,
    app: &str,
    body: Value,
) -> (StatusCode, Value) {
    let r = post(
        http,
        server.url(&format!("/v1/device/files/{app}/uploads")),
        &device.token,
        body,
    )
    .await;
    let status = r.status();
    (status, r.json().await.unwrap())
}

async fn create(w: &World, device: &Device, bytes: &[u8]) -> (StatusCode, Value) {
    create_at(
        &w.server,
        &w.http,
        device,
        "cases",
        json!({"sha256": sha(bytes), "size": bytes.len(), "content_type": "image/jpeg"}),
    )
    .await
}

async fn send_to(
    server: &Running,
    http: &reqwest::Client,
    device: &Device,
    id: &str,
    offset: u64,
    piece: &[u8],
) -> reqwest::Response {
    send_raw(
        server,
        http,
        device,
        id,
        offset,
        piece,
        &piece_checksum(piece),
    )
    .await
}

async fn send_raw(
    server: &Running,
    http: &reqwest::Client,
    device: &Device,
    id: &str,
    offset: u64,
    piece: &[u8],
    checksum: &str,
) -> reqwest::Response {
    http.patch(server.url(&format!("/v1/device/files/cases/uploads/{id}")))
        .header("x-auth-token", &device.token)
        .header("content-type", "application/offset+octet-stream")
        .header("upload-offset", offset.to_string())
        .header("upload-checksum", checksum)
        .body(piece.to_vec())
        .send()
        .await
        .unwrap()
}

/// Sends the pieces of `bytes` from `from` on; the last answer's JSON.
async fn send_rest(w: &World, device: &Device, id: &str, bytes: &[u8], from: u64) -> Value {
    let mut offset = from;
    let mut last = Value::Null;
    while offset < bytes.len() as u64 {
        let end = (offset + PIECE).min(bytes.len() as u64);
        let r = send_to(
            &w.server,
            &w.http,
            device,
            id,
            offset,
            &bytes[offset as usize..end as usize],
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK, "piece at {offset}");
        assert_eq!(
            r.headers()["upload-offset"].to_str().unwrap(),
            end.to_string()
        );
        last = r.json().await.unwrap();
        assert_eq!(last["offset"], end);
        offset = end;
    }
    last
}

/// Uploads a whole file from `device`; its upload id.
async fn upload(w: &World, device: &Device, bytes: &[u8]) -> String {
    let (status, created) = create(w, device, bytes).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["upload"]["id"].as_str().unwrap().to_owned();
    let done = send_rest(w, device, &id, bytes, 0).await;
    assert_eq!(done["complete"], true, "{done}");
    id
}

async fn status_of(w: &World, device: &Device, id: &str) -> reqwest::Response {
    get(
        &w.http,
        w.server
            .url(&format!("/v1/device/files/cases/uploads/{id}")),
        &device.token,
    )
    .await
}

async fn fetch_from(
    server: &Running,
    http: &reqwest::Client,
    device: &Device,
    sha256: &str,
    range: Option<&str>,
) -> reqwest::Response {
    let mut request = http
        .get(server.url(&format!("/v1/device/files/cases/blobs/{sha256}")))
        .header("x-auth-token", &device.token);
    if let Some(range) = range {
        request = request.header("range", range);
    }
    request.send().await.unwrap()
}

async fn fetch(w: &World, device: &Device, sha256: &str, range: Option<&str>) -> reqwest::Response {
    fetch_from(&w.server, &w.http, device, sha256, range).await
}

async fn push(w: &World, device: &Device, batch: &str, files: Value) -> Value {
    let r = post(
        &w.http,
        w.server.url("/v1/device/sync/cases/push"),
        &device.token,
        json!({"batch_id": batch, "ops": [{
            "collection": "cases", "id": format!("c-{batch}"),
            "revision": format!("{}.1", hex::encode([device.id as u8 + 0x10; 16])),
            "body": {"photo": true}, "author": "alice", "files": files,
        }]}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json::<Value>().await.unwrap()["results"][0].clone()
}

fn file_ref(bytes: &[u8], size: usize) -> Value {
    json!([{"name": "photo.jpg", "sha256": sha(bytes), "size": size}])
}

/// The suite every (database, storage) pair runs.
async fn suite(url: &str, blobs: &Blobs) {
    let w = World::new(url, start(url, blobs.storage(), |s| s).await).await;
    let d1 = w.device("tablet-1").await;
    let d2 = w.device("tablet-2").await;
    let photo = file(1, (4 * PIECE + 44_000) as usize);
    let photo_sha = sha(&photo);

    // An app the policy does not sync, and a declaration that breaks the
    // rules.
    let (status, body) = create_at(
        &w.server,
        &w.http,
        &d1,
        "notes",
        json!({"sha256": photo_sha, "size": 5}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "app_not_synced");
    let (status, body) = create_at(
        &w.server,
        &w.http,
        &d1,
        "cases",
        json!({"sha256": "AB".repeat(32), "size": 5}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["code"], "invalid_body");

    // A new upload, at 0, with the server's piece size.
    let (status, created) = create(&w, &d1, &photo).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["stored"], false);
    let up = &created["upload"];
    let id = up["id"].as_str().unwrap().to_owned();
    assert_eq!(up["offset"], 0);
    assert_eq!(up["piece_size"], PIECE);
    assert_eq!(up["size"], photo.len());
    assert_eq!(up["complete"], false);

    // The first piece, then a status query, then on from its offset.
    let r = send_to(&w.server, &w.http, &d1, &id, 0, &photo[..PIECE as usize]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = status_of(&w, &d1, &id).await;
    assert_eq!(r.status(), StatusCode::OK);
    let at: Value = r.json().await.unwrap();
    assert_eq!(at["offset"], PIECE);
    // Another device's upload is not there for d2.
    assert_eq!(
        status_of(&w, &d2, &id).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status_of(&w, &d1, &"0".repeat(32)).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status_of(&w, &d1, "../../etc").await.status(),
        StatusCode::NOT_FOUND
    );

    // A wrong offset: 409 with the right one, then corrected.
    let r = send_to(&w.server, &w.http, &d1, &id, 0, &photo[..PIECE as usize]).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(r.headers()["upload-offset"], PIECE.to_string().as_str());
    assert_eq!(error_code(r).await, "upload_offset_mismatch");
    let r = send_to(
        &w.server,
        &w.http,
        &d1,
        &id,
        PIECE,
        &photo[PIECE as usize..2 * PIECE as usize],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);

    // A piece whose digest is wrong: refused, nothing kept.
    let third = &photo[2 * PIECE as usize..3 * PIECE as usize];
    let r = send_raw(
        &w.server,
        &w.http,
        &d1,
        &id,
        2 * PIECE,
        third,
        &piece_checksum(b"other bytes"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_code(r).await, "checksum_mismatch");
    let at: Value = status_of(&w, &d1, &id).await.json().await.unwrap();
    assert_eq!(at["offset"], 2 * PIECE);
    let storage = blobs.storage();
    assert!(matches!(
        storage.get(&PieceName::new(w.org, &id, 2).unwrap()).await,
        Err(coffer_server::blobs::BlobError::NotFound)
    ));
    // A piece of the wrong length, the wrong type, broken headers.
    let r = send_to(&w.server, &w.http, &d1, &id, 2 * PIECE, &third[..100]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "invalid_piece");
    let longer = [third, b"and more"].concat();
    let r = send_to(&w.server, &w.http, &d1, &id, 2 * PIECE, &longer).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "invalid_piece");
    let r = w
        .http
        .patch(
            w.server
                .url(&format!("/v1/device/files/cases/uploads/{id}")),
        )
        .header("x-auth-token", &d1.token)
        .header("content-type", "application/octet-stream")
        .header("upload-offset", (2 * PIECE).to_string())
        .header("upload-checksum", piece_checksum(third))
        .body(third.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = send_raw(&w.server, &w.http, &d1, &id, 2 * PIECE, third, "md5 xyz").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "invalid_piece");

    // Declared again by the same device: the same upload, where it stands.
    let (status, again) = create(&w, &d1, &photo).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["upload"]["id"], id.as_str());
    assert_eq!(again["upload"]["offset"], 2 * PIECE);
    let done = send_rest(&w, &d1, &id, &photo, 2 * PIECE).await;
    assert_eq!(done["complete"], true);
    assert_eq!(done["offset"], photo.len());
    let r = status_of(&w, &d1, &id).await;
    assert_eq!(r.json::<Value>().await.unwrap()["complete"], true);
    // A piece after the end is answered with the end.
    let r = send_to(
        &w.server,
        &w.http,
        &d1,
        &id,
        4 * PIECE,
        &photo[4 * PIECE as usize..],
    )
    .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(
        r.headers()["upload-offset"],
        photo.len().to_string().as_str()
    );

    // Stored: declared again from either device, nothing to send.
    for device in [&d1, &d2] {
        let (status, body) = create(&w, device, &photo).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({"stored": true, "upload": null}));
    }

    // The whole file, and ranges of it.
    let r = fetch(&w, &d2, &photo_sha, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.content_length(), Some(photo.len() as u64));
    assert_eq!(r.headers()["etag"], format!("\"{photo_sha}\"").as_str());
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    assert_eq!(r.bytes().await.unwrap(), photo.as_slice());
    let len = photo.len() as u64;
    for (range, first, last) in [
        ("bytes=0-9", 0, 9),
        ("bytes=65530-65545", 65_530, 65_545),
        ("bytes=100-200000", 100, 200_000),
        ("bytes=-100", len - 100, len - 1),
        ("bytes=262144-", 262_144, len - 1),
        ("bytes=0-99999999", 0, len - 1),
    ] {
        let r = fetch(&w, &d1, &photo_sha, Some(range)).await;
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes {first}-{last}/{len}").as_str()
        );
        assert_eq!(r.content_length(), Some(last - first + 1));
        assert_eq!(
            r.bytes().await.unwrap(),
            &photo[first as usize..=last as usize],
            "{range}"
        );
    }
    for bad in [
        format!("bytes={len}-"),
        "bytes=0-1,5-6".to_owned(),
        "items=0-1".to_owned(),
    ] {
        let r = fetch(&w, &d1, &photo_sha, Some(&bad)).await;
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{bad}");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes */{len}").as_str()
        );
        assert_eq!(error_code(r).await, "range_not_satisfiable");
    }
    assert_eq!(
        fetch(&w, &d1, &sha(b"never uploaded"), None).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        fetch(&w, &d1, "x", None).await.status(),
        StatusCode::NOT_FOUND
    );

    // The objects: the upload's five pieces, none of the file in the clear.
    assert_eq!(pieces_of(blobs, w.org, &id).len(), 5);
    let stored = files_under(&blobs.everything());
    assert!(!stored.is_empty());
    for (path, bytes) in &stored {
        assert!(
            !bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
            "{} holds the plaintext",
            path.display()
        );
        let name = path.to_string_lossy();
        assert!(
            !name.contains(&photo_sha[..16]),
            "an object name shows the hash"
        );
    }

    // The empty file is stored at once.
    let (status, body) = create_at(
        &w.server,
        &w.http,
        &d1,
        "cases",
        json!({"sha256": sha(b""), "size": 0}),
    )
    .await;
    assert_eq!(
        (status, body["stored"].clone()),
        (StatusCode::OK, json!(true))
    );
    let r = fetch(&w, &d2, &sha(b""), None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.bytes().await.unwrap().is_empty());

    // A whole file that does not match its declared hash: dropped, then
    // gone; its pieces deleted.
    let liar = file(2, (PIECE + 1000) as usize);
    let (status, created) = create_at(
        &w.server,
        &w.http,
        &d1,
        "cases",
        json!({"sha256": sha(b"something else"), "size": liar.len()}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let liar_id = created["upload"]["id"].as_str().unwrap().to_owned();
    let r = send_to(
        &w.server,
        &w.http,
        &d1,
        &liar_id,
        0,
        &liar[..PIECE as usize],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = send_to(
        &w.server,
        &w.http,
        &d1,
        &liar_id,
        PIECE,
        &liar[PIECE as usize..],
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_code(r).await, "blob_mismatch");
    let r = status_of(&w, &d1, &liar_id).await;
    assert_eq!(r.status(), StatusCode::GONE);
    assert_eq!(error_code(r).await, "upload_gone");
    let r = send_to(
        &w.server,
        &w.http,
        &d1,
        &liar_id,
        0,
        &liar[..PIECE as usize],
    )
    .await;
    assert_eq!(r.status(), StatusCode::GONE);
    assert!(pieces_of(blobs, w.org, &liar_id).is_empty());

    // The same file from two devices at once: both upload, the first to
    // complete wins, the other's pieces go; one blob, one set of objects.
    let shared = file(3, (2 * PIECE + 5) as usize);
    let (_, c1) = create(&w, &d1, &shared).await;
    let (_, c2) = create(&w, &d2, &shared).await;
    let (u1, u2) = (
        c1["upload"]["id"].as_str().unwrap().to_owned(),
        c2["upload"]["id"].as_str().unwrap().to_owned(),
    );
    assert_ne!(u1, u2);
    send_rest(&w, &d2, &u2, &shared, 0).await;
    let done = send_rest(&w, &d1, &u1, &shared, 0).await;
    assert_eq!(done["complete"], true, "the loser hears the file is stored");
    let db = w.store().await;
    let blob = db
        .files_blob(w.org, "cases", &sha(&shared))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(blob.upload_id, u2);
    assert_eq!(
        db.number_for_tests(&format!(
            "SELECT count(*) FROM sync_blobs WHERE sha256 = '{}'",
            sha(&shared)
        ))
        .await
        .unwrap(),
        1
    );
    assert_eq!(pieces_of(blobs, w.org, &u2).len(), 3);
    assert!(pieces_of(blobs, w.org, &u1).is_empty());
    assert_eq!(
        fetch(&w, &d1, &sha(&shared), None)
            .await
            .bytes()
            .await
            .unwrap(),
        shared.as_slice()
    );

    // A device of another organization learns nothing of the photo.
    let r = post(
        &w.http,
        w.server.url("/v1/orgs"),
        &w.admin,
        json!({"name": "Other", "owner": "olga", "password": PASSWORD}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    let (other, olga_id) = (
        created["organization_id"].as_i64().unwrap(),
        created["user_id"].as_i64().unwrap(),
    );
    let olga = login(&w.server, &w.http, "olga", PASSWORD).await.unwrap();
    w.publish(other, &olga, 1, &["cases"]).await;
    let stranger = w.device_of(other, &olga, olga_id, "elsewhere").await;
    let (status, body) = create(&w, &stranger, &photo).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["stored"], false);
    assert_eq!(
        fetch(&w, &stranger, &photo_sha, None).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(
            &w.http,
            w.server
                .url(&format!("/v1/orgs/{}/files/cases/{photo_sha}", w.org)),
            &olga
        )
        .await
        .status(),
        StatusCode::NOT_FOUND
    );

    // A record reaches the server only after its files.
    let missing = file(4, 1000);
    let result = push(&w, &d1, "p-1", file_ref(&missing, missing.len())).await;
    assert_eq!(result["outcome"], "rejected", "{result}");
    assert_eq!(result["code"], "missing_file");
    let result = push(&w, &d1, "p-2", file_ref(&photo, photo.len() + 1)).await;
    assert_eq!(result["code"], "missing_file", "the size must match");
    let result = push(&w, &stranger, "p-3", file_ref(&photo, photo.len())).await;
    assert_eq!(
        result["code"], "missing_file",
        "another organization's file"
    );
    let result = push(&w, &d1, "p-4", file_ref(&photo, photo.len())).await;
    assert_eq!(result["outcome"], "applied", "{result}");
    upload(&w, &d2, &missing).await;
    let result = push(&w, &d2, "p-5", file_ref(&missing, missing.len())).await;
    assert_eq!(result["outcome"], "applied", "{result}");
    assert_eq!(
        db.number_for_tests(&format!(
            "SELECT count(*) FROM sync_file_refs WHERE org_id = {} AND sha256 = '{photo_sha}'",
            w.org
        ))
        .await
        .unwrap(),
        1
    );

    // The admins' fetch: owners and admins, audited; not members or
    // auditors.
    let path = format!("/v1/orgs/{}/files/cases/{photo_sha}", w.org);
    let r = get(&w.http, w.server.url(&path), &w.admin).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-disposition"], "attachment");
    assert_eq!(r.bytes().await.unwrap(), photo.as_slice());
    let r = w
        .http
        .get(w.server.url(&path))
        .header("x-auth-token", &w.admin)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap(), &photo[10..20]);
    assert_eq!(
        db.number_for_tests(&format!(
            "SELECT count(*) FROM audit_events WHERE action = 'file_fetched' AND org_id = {}",
            w.org
        ))
        .await
        .unwrap(),
        2
    );
    add_people(url, w.org).await;
    let r = post(
        &w.http,
        w.server.url(&format!("/v1/orgs/{}/users", w.org)),
        &w.admin,
        json!({"user": "audrey", "password": PASSWORD, "role": "auditor"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    for (user, refused) in [
        ("carol", StatusCode::FORBIDDEN),
        ("audrey", StatusCode::FORBIDDEN),
        ("bob", StatusCode::NOT_FOUND),
    ] {
        let token = login(&w.server, &w.http, user, PASSWORD).await.unwrap();
        let r = get(&w.http, w.server.url(&path), &token).await;
        assert_eq!(r.status(), refused, "{user}");
    }
    let r = get(
        &w.http,
        w.server
            .url(&format!("/v1/orgs/{}/files/cases/{}", w.org, sha(b"nope"))),
        &w.admin,
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Accounting: a device's bytes in and out, exactly.
    let d3 = w.device("tablet-3").await;
    let small = file(5, 3000);
    let declaration =
        serde_json::to_vec(&json!({"sha256": sha(&small), "size": small.len()})).unwrap();
    let r = w
        .http
        .post(w.server.url("/v1/device/files/cases/uploads"))
        .header("x-auth-token", &d3.token)
        .header("content-type", "application/json")
        .body(declaration.clone())
        .send()
        .await
        .unwrap();
    let created: Value = r.json().await.unwrap();
    let small_id = created["upload"]["id"].as_str().unwrap().to_owned();
    let r = send_to(&w.server, &w.http, &d3, &small_id, 0, &small).await;
    let piece_answer = r.bytes().await.unwrap().len();
    let whole = fetch(&w, &d3, &photo_sha, None)
        .await
        .bytes()
        .await
        .unwrap()
        .len();
    let part = fetch(&w, &d3, &photo_sha, Some("bytes=5-14"))
        .await
        .bytes()
        .await
        .unwrap()
        .len();
    assert_eq!(part, 10);
    let created_len = serde_json::to_vec(&created).unwrap().len();
    let want_in = (declaration.len() + small.len()) as i64;
    let want_out = (created_len + piece_answer + whole + part) as i64;
    let mut row = Value::Null;
    for _ in 0..50 {
        let usage: Value = get(
            &w.http,
            w.server.url(&format!("/v1/orgs/{}/usage?by=device", w.org)),
            &w.admin,
        )
        .await
        .json()
        .await
        .unwrap();
        row = usage["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == d3.id)
            .cloned()
            .unwrap_or(Value::Null);
        if row["bytes_out"] == want_out {
            break;
        }
        // A streamed answer is recorded when its body ends.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(row["bytes_in"], want_in, "{row}");
    assert_eq!(row["bytes_out"], want_out, "{row}");
    assert_eq!(row["requests"], 4, "{row}");
    let metrics = w
        .http
        .get(w.server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counter = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(
        counter("coffer_file_uploads_completed_total") >= 4,
        "{metrics}"
    );
    assert!(counter("coffer_file_bytes_in_total") >= photo.len() as u64);
    assert!(counter("coffer_file_bytes_out_total") >= 2 * photo.len() as u64);

    // A changed object is never served as the file: a range in it is an
    // error, the whole file is cut short before it.
    let objects = pieces_of(blobs, w.org, &id);
    let mut bytes = std::fs::read(&objects[1]).unwrap();
    bytes[40] ^= 0x01;
    std::fs::write(&objects[1], &bytes).unwrap();
    let r = fetch(&w, &d1, &photo_sha, Some("bytes=70000-70010")).await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(error_code(r).await, "internal");
    let r = fetch(&w, &d1, &photo_sha, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    // Either the connection is cut mid-body (an error here), or what came
    // is a true prefix, shorter than the file.
    if let Ok(got) = r.bytes().await {
        assert!(got.len() < photo.len(), "a cut body, never wrong bytes");
        assert_eq!(&got[..], &photo[..got.len()]);
    }
    // A piece moved to another place does not open either.
    std::fs::copy(&objects[2], &objects[1]).unwrap();
    let r = fetch(&w, &d1, &photo_sha, Some("bytes=70000-70010")).await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);

    // The file is marked broken (once: audited and counted once), so a
    // declaration of it is no longer answered `stored` — it gets a new
    // upload, and the upload repairs it: the old pieces go, the new ones
    // are served.
    let broken_rows = |sha256: String| {
        format!(
            "SELECT count(*) FROM sync_blobs WHERE sha256 = '{sha256}' AND broken_at IS NOT NULL"
        )
    };
    assert_eq!(
        db.number_for_tests(&broken_rows(photo_sha.clone()))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        db.number_for_tests(&format!(
            "SELECT count(*) FROM audit_events WHERE action = 'file_broken' AND org_id = {}",
            w.org
        ))
        .await
        .unwrap(),
        1
    );
    let metrics = w
        .http
        .get(w.server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("\ncoffer_file_blobs_broken_total 1\n"),
        "{metrics}"
    );
    let (status, again) = create(&w, &d2, &photo).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(again["stored"], false);
    let repair = again["upload"]["id"].as_str().unwrap().to_owned();
    assert_ne!(repair, id);
    // A record naming the file still applies meanwhile (the row stays).
    let result = push(&w, &d3, "p-6", file_ref(&photo, photo.len())).await;
    assert_eq!(result["outcome"], "applied", "{result}");
    let done = send_rest(&w, &d2, &repair, &photo, 0).await;
    assert_eq!(done["complete"], true, "{done}");
    let blob = db
        .files_blob(w.org, "cases", &photo_sha)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(blob.upload_id, repair);
    assert_eq!(blob.broken_at, None);
    assert!(
        pieces_of(blobs, w.org, &id).is_empty(),
        "the broken pieces went"
    );
    assert_eq!(pieces_of(blobs, w.org, &repair).len(), 5);
    let r = fetch(&w, &d1, &photo_sha, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap(), photo.as_slice());
    let r = fetch(&w, &d1, &photo_sha, Some("bytes=70000-70010")).await;
    assert_eq!(r.bytes().await.unwrap(), &photo[70_000..=70_010]);
    let (status, body) = create(&w, &d1, &photo).await;
    assert_eq!(
        (status, body["stored"].clone()),
        (StatusCode::OK, json!(true))
    );

    // A piece gone from the storage (a bucket restored out of step with
    // the database), found by an admin's fetch: the same.
    let gone_objects = pieces_of(blobs, w.org, &u2);
    std::fs::remove_file(&gone_objects[1]).unwrap();
    let r = get(
        &w.http,
        w.server
            .url(&format!("/v1/orgs/{}/files/cases/{}", w.org, sha(&shared))),
        &w.admin,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK, "the first piece opens");
    if let Ok(got) = r.bytes().await {
        assert!(got.len() < shared.len(), "cut short at the missing piece");
    }
    let mut marked = 0;
    for _ in 0..50 {
        marked = db
            .number_for_tests(&broken_rows(sha(&shared)))
            .await
            .unwrap();
        if marked == 1 {
            break;
        }
        // Found by the task streaming the answer.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(marked, 1);
    let (status, again) = create(&w, &d1, &shared).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    let repair = again["upload"]["id"].as_str().unwrap().to_owned();
    send_rest(&w, &d1, &repair, &shared, 0).await;
    assert!(pieces_of(blobs, w.org, &u2).is_empty());
    assert_eq!(
        fetch(&w, &d2, &sha(&shared), None)
            .await
            .bytes()
            .await
            .unwrap(),
        shared.as_slice()
    );

    // A piece replaced by other bytes sealed for the same place (a write
    // that landed after its request gave up, another request having
    // written the piece since) opens: a whole-file fetch finds the file
    // does not match its SHA-256, and marks it broken all the same.
    let late = file(6, (2 * PIECE + 100) as usize);
    let (_, created) = create(&w, &d1, &late).await;
    let late_id = created["upload"]["id"].as_str().unwrap().to_owned();
    let mut other = late[..PIECE as usize].to_vec();
    other[7] ^= 0xff;
    let r = send_to(&w.server, &w.http, &d1, &late_id, 0, &other).await;
    assert_eq!(r.status(), StatusCode::OK);
    let stale = std::fs::read(&pieces_of(blobs, w.org, &late_id)[0]).unwrap();
    db.execute_for_tests(&format!(
        "UPDATE sync_uploads SET received = 0 WHERE upload_id = '{late_id}'"
    ))
    .await
    .unwrap();
    send_rest(&w, &d1, &late_id, &late, 0).await;
    std::fs::write(&pieces_of(blobs, w.org, &late_id)[0], &stale).unwrap();
    let r = fetch(&w, &d2, &sha(&late), Some("bytes=0-99")).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "the piece opens");
    let r = fetch(&w, &d2, &sha(&late), None).await;
    let got = r.bytes().await.unwrap();
    assert_ne!(&got[..], late.as_slice());
    let mut marked = 0;
    for _ in 0..50 {
        marked = db.number_for_tests(&broken_rows(sha(&late))).await.unwrap();
        if marked == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(marked, 1);
    let (status, _) = create(&w, &d2, &late).await;
    assert_eq!(status, StatusCode::CREATED);

    let mut secrets = vec![MARKER, d1.token.as_str(), d2.token.as_str()];
    if let Blobs::S3(s3) = blobs {
        secrets.push(s3.secret_key());
    }
    support::assert_logs_free_of(&secrets);
    eprintln!("files suite on {} / {}: ok", w.server.backend, blobs.kind());
    w.server.stop().await;
}

/// Limits refused before a byte is sent, expiry, and garbage collection.
async fn limits_and_collection(url: &str, blobs: &Blobs) {
    let server = start(url, blobs.storage(), |s| {
        s.with_max_file_size(3 * PIECE)
            .with_org_file_quota(5 * PIECE)
            .with_upload_expiry(Duration::from_secs(2))
    })
    .await;
    let w = World::new(url, server).await;
    let d1 = w.device("d1").await;
    let d2 = w.device("d2").await;

    let big = file(10, (3 * PIECE + 1) as usize);
    let (status, body) = create(&w, &d1, &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"]["code"], "file_too_large");
    let a = file(11, (2 * PIECE) as usize);
    let b = file(12, (2 * PIECE) as usize);
    let c = file(13, (2 * PIECE) as usize);
    let (status, ca) = create(&w, &d1, &a).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, cb) = create(&w, &d2, &b).await;
    assert_eq!(status, StatusCode::CREATED);
    // 4 of 5 pieces' worth held by open uploads: 2 more do not fit.
    let (status, body) = create(&w, &d2, &c).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded");
    let (ia, ib) = (
        ca["upload"]["id"].as_str().unwrap().to_owned(),
        cb["upload"]["id"].as_str().unwrap().to_owned(),
    );
    let r = send_to(&w.server, &w.http, &d1, &ia, 0, &a[..PIECE as usize]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = send_to(&w.server, &w.http, &d2, &ib, 0, &b[..PIECE as usize]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(pieces_of(blobs, w.org, &ia).len(), 1);

    // Idle past the expiry: gone, and a new declaration starts at 0.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let r = status_of(&w, &d1, &ia).await;
    assert_eq!(r.status(), StatusCode::GONE);
    assert_eq!(error_code(r).await, "upload_gone");
    let r = send_to(&w.server, &w.http, &d1, &ia, PIECE, &a[PIECE as usize..]).await;
    assert_eq!(r.status(), StatusCode::GONE);
    let (status, fresh) = create(&w, &d1, &a).await;
    assert_eq!(status, StatusCode::CREATED, "{fresh}");
    assert_ne!(fresh["upload"]["id"], ia.as_str());
    assert_eq!(fresh["upload"]["offset"], 0);
    let fresh_id = fresh["upload"]["id"].as_str().unwrap().to_owned();
    send_rest(&w, &d1, &fresh_id, &a, 0).await;

    // The collection: the expired uploads' pieces go; an unreferenced blob
    // goes after the retention, a referenced one stays.
    let db = w.store().await;
    let storage = blobs.storage();
    let now = unix_now();
    let done = coffer_server::files::collect_garbage(&db, &storage, now, 180 * 86_400)
        .await
        .unwrap();
    assert_eq!(done.uploads_expired, 2, "{done:?}");
    assert_eq!(done.blobs, 0);
    assert!(pieces_of(blobs, w.org, &ia).is_empty());
    assert!(pieces_of(blobs, w.org, &ib).is_empty());
    assert_eq!(pieces_of(blobs, w.org, &fresh_id).len(), 2);
    let r = status_of(&w, &d1, &ia).await;
    assert_eq!(r.status(), StatusCode::GONE, "kept a while as gone");

    let kept = file(14, 500);
    upload(&w, &d2, &kept).await;
    let result = push(&w, &d2, "k-1", file_ref(&kept, kept.len())).await;
    assert_eq!(result["outcome"], "applied", "{result}");
    let later = now + 400 * 86_400;
    let done = coffer_server::files::collect_garbage(&db, &storage, later, 180 * 86_400)
        .await
        .unwrap();
    assert_eq!(done.blobs, 1, "{done:?}");
    assert!(pieces_of(blobs, w.org, &fresh_id).is_empty());
    assert!(db
        .files_blob(w.org, "cases", &sha(&a))
        .await
        .unwrap()
        .is_none());
    assert!(db
        .files_blob(w.org, "cases", &sha(&kept))
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        fetch(&w, &d1, &sha(&a), None).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        fetch(&w, &d1, &sha(&kept), None)
            .await
            .bytes()
            .await
            .unwrap(),
        kept.as_slice()
    );
    // The trash is empty, and the rows of ended uploads are forgotten in
    // time.
    assert_eq!(
        db.number_for_tests("SELECT count(*) FROM sync_object_trash")
            .await
            .unwrap(),
        0
    );
    assert!(done.uploads_forgotten >= 3, "{done:?}");

    // A file declared `stored` just before a collection — named by no
    // record yet, last referenced long ago — is kept: the declaration
    // referenced it (in its transaction), so the push that names it next
    // applies.
    let old = file(16, 700);
    upload(&w, &d1, &old).await;
    db.execute_for_tests(&format!(
        "UPDATE sync_blobs SET created_at = 0, last_referenced_at = 0 WHERE sha256 = '{}'",
        sha(&old)
    ))
    .await
    .unwrap();
    let (status, body) = create(&w, &d1, &old).await;
    assert_eq!(
        (status, body["stored"].clone()),
        (StatusCode::OK, json!(true))
    );
    let done = coffer_server::files::collect_garbage(&db, &storage, unix_now(), 180 * 86_400)
        .await
        .unwrap();
    assert_eq!(done.blobs, 0, "{done:?}");
    let result = push(&w, &d1, "k-2", file_ref(&old, old.len())).await;
    assert_eq!(result["outcome"], "applied", "{result}");

    // A deleted organization's files go with it.
    let r = post(
        &w.http,
        w.server.url("/v1/orgs"),
        &w.admin,
        json!({"name": "Leaving", "owner": "lena", "password": PASSWORD}),
    )
    .await;
    let created: Value = r.json().await.unwrap();
    let (leaving, lena_id) = (
        created["organization_id"].as_i64().unwrap(),
        created["user_id"].as_i64().unwrap(),
    );
    let lena = login(&w.server, &w.http, "lena", PASSWORD).await.unwrap();
    w.publish(leaving, &lena, 1, &["cases"]).await;
    let device = w.device_of(leaving, &lena, lena_id, "leaving-1").await;
    let theirs = file(15, (PIECE + 10) as usize);
    let their_upload = upload(&w, &device, &theirs).await;
    assert_eq!(pieces_of(blobs, leaving, &their_upload).len(), 2);
    let r = post(
        &w.http,
        w.server.url(&format!("/v1/orgs/{leaving}/suspend")),
        &w.admin,
        json!({}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = w
        .http
        .delete(w.server.url(&format!("/v1/orgs/{leaving}")))
        .header("x-auth-token", &w.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(pieces_of(blobs, leaving, &their_upload).is_empty());
    assert_eq!(
        db.number_for_tests("SELECT count(*) FROM sync_object_trash")
            .await
            .unwrap(),
        0
    );
    w.server.stop().await;
}

/// One device's share of the quota, and how long a device with too many
/// unfinished uploads is told to wait.
async fn device_limits(url: &str, blobs: &Blobs) {
    let server = start(url, blobs.storage(), |s| {
        s.with_max_file_size(3 * PIECE)
            .with_org_file_quota(8 * PIECE)
    })
    .await;
    let w = World::new(url, server).await;
    let (d1, d2, d3) = (
        w.device("d1").await,
        w.device("d2").await,
        w.device("d3").await,
    );
    // A device's first unfinished upload may be over its share (a quarter
    // of the quota, 2 pieces); a second one past the share is refused,
    // though the organization has room.
    let x = file(30, (3 * PIECE) as usize);
    let (status, cx) = create(&w, &d1, &x).await;
    assert_eq!(status, StatusCode::CREATED, "{cx}");
    let y = file(31, PIECE as usize);
    let (status, body) = create(&w, &d1, &y).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("this device"),
        "{body}"
    );
    // Another device may; within its share, twice.
    let (status, _) = create(&w, &d2, &y).await;
    assert_eq!(status, StatusCode::CREATED);
    let z = file(32, PIECE as usize);
    let (status, _) = create(&w, &d2, &z).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = create(&w, &d2, &file(33, 10)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded");
    // Finished, an upload holds no share any more.
    let id = cx["upload"]["id"].as_str().unwrap().to_owned();
    send_rest(&w, &d1, &id, &x, 0).await;
    let (status, body) = create(&w, &d1, &y).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // At most 16 unfinished uploads per device; the 17th hears when the
    // first of them expires.
    let mut first = String::new();
    for n in 0..16u8 {
        let (status, body) = create(&w, &d3, &file(100 + n, 10 + usize::from(n))).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        if n == 0 {
            first = body["upload"]["id"].as_str().unwrap().to_owned();
        }
    }
    let db = w.store().await;
    db.execute_for_tests(&format!(
        "UPDATE sync_uploads SET expires_at = expires_at - 50000 WHERE upload_id = '{first}'"
    ))
    .await
    .unwrap();
    let r = post(
        &w.http,
        w.server.url("/v1/device/files/cases/uploads"),
        &d3.token,
        json!({"sha256": sha(b"seventeen"), "size": 9}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: i64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (86_400 - 50_000 - 60..=86_400 - 50_000).contains(&wait),
        "{wait}"
    );
    assert_eq!(error_code(r).await, "rate_limited");
    w.server.stop().await;
}

/// The last piece of an upload whose other pieces another process took
/// reads the whole file back; a read-back longer than the lease keeps it
/// (renewed as it goes): a second request for the same piece meanwhile —
/// a device that gave up waiting — does not take it over, and the first
/// completes.
async fn long_read_back(url: &str, blobs: &Blobs) {
    let w = World::new(url, start(url, blobs.storage(), |s| s).await).await;
    let d1 = w.device("d1").await;
    let big = file(40, (10 * PIECE + 99) as usize);
    let (status, created) = create(&w, &d1, &big).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = created["upload"]["id"].as_str().unwrap().to_owned();
    for n in 0..10 {
        let piece = &big[(n * PIECE) as usize..((n + 1) * PIECE) as usize];
        let r = send_to(&w.server, &w.http, &d1, &id, n * PIECE, piece).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    // Another process, whose storage takes 300 ms a read: a read-back of
    // 3 s, past its 2 s lease.
    let slow = start(
        url,
        blobs.storage().slowed_for_tests(Duration::from_millis(300)),
        |s| s.with_upload_lease(Duration::from_secs(2)),
    )
    .await;
    let last = big[(10 * PIECE) as usize..].to_vec();
    let first = {
        let (http, token, base) = (w.http.clone(), d1.token.clone(), slow.base.clone());
        let (id, last) = (id.clone(), last.clone());
        tokio::spawn(async move {
            http.patch(format!("{base}/v1/device/files/cases/uploads/{id}"))
                .header("x-auth-token", token)
                .header("content-type", "application/offset+octet-stream")
                .header("upload-offset", (10 * PIECE).to_string())
                .header("upload-checksum", piece_checksum(&last))
                .body(last)
                .send()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The same piece again, through the process that has the running hash
    // (it would complete at once if it took the lease).
    let second = send_to(&w.server, &w.http, &d1, &id, 10 * PIECE, &last).await;
    assert_eq!(second.status(), StatusCode::CONFLICT);
    let first = first.await.unwrap();
    assert_eq!(first.status(), StatusCode::OK, "the first kept its lease");
    let done: Value = first.json().await.unwrap();
    assert_eq!(done["complete"], true, "{done}");
    assert_eq!(
        fetch(&w, &d1, &sha(&big), None)
            .await
            .bytes()
            .await
            .unwrap(),
        big.as_slice()
    );
    slow.stop().await;
    w.server.stop().await;
}

/// Sends a piece on a connection of its own, its body held half-way for
/// `hold`; the answer's status line and body.
fn held_piece(
    base: &str,
    token: &str,
    id: &str,
    offset: u64,
    piece: &[u8],
    hold: Duration,
) -> std::thread::JoinHandle<String> {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://").to_owned();
    let head = format!(
        "PATCH /v1/device/files/cases/uploads/{id} HTTP/1.1\r\nhost: {addr}\r\n\
         x-auth-token: {token}\r\ncontent-type: application/offset+octet-stream\r\n\
         upload-offset: {offset}\r\nupload-checksum: {}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        piece_checksum(piece),
        piece.len()
    );
    let piece = piece.to_vec();
    std::thread::spawn(move || {
        let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
        tcp.write_all(head.as_bytes()).unwrap();
        let half = piece.len() / 2;
        tcp.write_all(&piece[..half]).unwrap();
        std::thread::sleep(hold);
        tcp.write_all(&piece[half..]).unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).unwrap();
        answer
    })
}

/// At most so many piece bodies at once: past them a piece waits for its
/// turn a while, then is answered 503 with Retry-After.
async fn pieces_take_turns(url: &str, blobs: &Blobs) {
    let server = start(url, blobs.storage(), |s| {
        s.with_max_concurrent_pieces(1)
            .with_piece_queue_wait(Duration::from_secs(1))
    })
    .await;
    let w = World::new(url, server).await;
    let (d1, d2) = (w.device("d1").await, w.device("d2").await);
    let a = file(50, (2 * PIECE) as usize);
    let b = file(51, (2 * PIECE) as usize);
    let (_, ca) = create(&w, &d1, &a).await;
    let (_, cb) = create(&w, &d2, &b).await;
    let (ia, ib) = (
        ca["upload"]["id"].as_str().unwrap().to_owned(),
        cb["upload"]["id"].as_str().unwrap().to_owned(),
    );
    // A's piece holds the only turn for 2.5 s: B's waits 1 s, then 503.
    let held = held_piece(
        &w.server.base,
        &d1.token,
        &ia,
        0,
        &a[..PIECE as usize],
        Duration::from_millis(2500),
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let started = std::time::Instant::now();
    let r = send_to(&w.server, &w.http, &d2, &ib, 0, &b[..PIECE as usize]).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(r.headers()["retry-after"], "2");
    assert_eq!(error_code(r).await, "rate_limited");
    let answer = tokio::task::spawn_blocking(move || held.join().unwrap())
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Nothing of B's was kept: it goes on from 0.
    let r = send_to(&w.server, &w.http, &d2, &ib, 0, &b[..PIECE as usize]).await;
    assert_eq!(r.status(), StatusCode::OK);
    // Held shorter than the wait: the next piece waits its turn and goes.
    let held = held_piece(
        &w.server.base,
        &d1.token,
        &ia,
        PIECE,
        &a[PIECE as usize..],
        Duration::from_millis(500),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = send_to(&w.server, &w.http, &d2, &ib, PIECE, &b[PIECE as usize..]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let answer = tokio::task::spawn_blocking(move || held.join().unwrap())
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for (bytes, device) in [(&a, &d1), (&b, &d2)] {
        assert_eq!(
            fetch(&w, device, &sha(bytes), None)
                .await
                .bytes()
                .await
                .unwrap(),
            bytes.as_slice()
        );
    }
    w.server.stop().await;
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_on_sqlite_and_a_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = Blobs::local();
    suite(
        &format!("sqlite://{}", dir.path().join("a.db").display()),
        &blobs,
    )
    .await;
    let blobs = Blobs::local();
    limits_and_collection(
        &format!("sqlite://{}", dir.path().join("b.db").display()),
        &blobs,
    )
    .await;
    let blobs = Blobs::local();
    device_limits(
        &format!("sqlite://{}", dir.path().join("c.db").display()),
        &blobs,
    )
    .await;
    let blobs = Blobs::local();
    long_read_back(
        &format!("sqlite://{}", dir.path().join("d.db").display()),
        &blobs,
    )
    .await;
    let blobs = Blobs::local();
    pieces_take_turns(
        &format!("sqlite://{}", dir.path().join("e.db").display()),
        &blobs,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_on_sqlite_and_s3() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = Blobs::s3();
    suite(
        &format!("sqlite://{}", dir.path().join("a.db").display()),
        &blobs,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_on_postgres_and_a_local_directory() {
    let pg = Postgres::start();
    let blobs = Blobs::local();
    suite(&pg.database("files_local").await, &blobs).await;
    let blobs = Blobs::local();
    device_limits(&pg.database("files_device_limits").await, &blobs).await;
    let blobs = Blobs::local();
    long_read_back(&pg.database("files_read_back").await, &blobs).await;
}

/// S3's error answers reach no log or error whole: an AWS error body can
/// quote the access key id and the canonical request. Only the kind of
/// failure, the HTTP status and the S3 error code are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_errors_carry_no_credential() {
    use coffer_server::blobs::{S3Config, S3Credentials, DEFAULT_S3_REGION};
    let s3 = S3Server::start("coffer-files");
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("a.db").display());
    let good = Blobs::S3(s3);
    let Blobs::S3(s3) = &good else { unreachable!() };
    let unknown_key = "AKIDMARKER0UNKNOWN0KEY";
    let w = World::new(&url, start(&url, good.storage(), |s| s).await).await;
    let d1 = w.device("d1").await;
    for (n, (key, secret)) in [
        (s3.access_key.as_str(), "wrong-secret-MARKER-one"),
        (unknown_key, "wrong-secret-MARKER-two"),
    ]
    .into_iter()
    .enumerate()
    {
        let storage = BlobStorage::s3(S3Config {
            bucket: s3.bucket.clone(),
            endpoint: Some(s3.endpoint()),
            region: DEFAULT_S3_REGION.to_owned(),
            credentials: S3Credentials::new(key, secret),
        })
        .unwrap();
        let refused = [
            storage.probe().await.unwrap_err().to_string(),
            storage
                .put(
                    &PieceName::new(w.org, &"0".repeat(32), 0).unwrap(),
                    vec![1; 10],
                )
                .await
                .unwrap_err()
                .to_string(),
            storage
                .get(&PieceName::new(w.org, &"0".repeat(32), 0).unwrap())
                .await
                .unwrap_err()
                .to_string(),
        ];
        for message in &refused {
            assert!(message.contains("HTTP 403"), "{message}");
            for leak in [key, secret, s3.secret_key(), "http", "127.0.0.1", "<"] {
                assert!(!message.contains(leak), "{leak} in {message}");
            }
        }
        // Through a server: the piece is a 500, and the log says why in
        // the same bounded words.
        let server = start(&url, storage, |s| s).await;
        let piece = file(60 + n as u8, 100);
        let (status, created) = create_at(
            &server,
            &w.http,
            &d1,
            "cases",
            json!({"sha256": sha(&piece), "size": piece.len()}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let id = created["upload"]["id"].as_str().unwrap().to_owned();
        let r = send_to(&server, &w.http, &d1, &id, 0, &piece).await;
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        server.stop().await;
        let logs = support::captured_logs();
        assert!(
            logs.contains("blob storage failure"),
            "the failure was logged"
        );
        for leak in [key, secret, s3.secret_key()] {
            assert!(!logs.contains(leak), "{leak} reached the log");
        }
    }
    w.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_on_postgres_and_s3() {
    let pg = Postgres::start();
    let blobs = Blobs::s3();
    suite(&pg.database("files_s3").await, &blobs).await;
    let blobs = Blobs::s3();
    limits_and_collection(&pg.database("files_limits").await, &blobs).await;
}

/// Two server processes on one PostgreSQL and one bucket: the pieces of
/// one upload sent to each in turn make the file (the one that takes the
/// last piece reads the others back), and both serve it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pieces_through_two_servers_make_one_file() {
    let pg = Postgres::start();
    let s3 = Blobs::s3();
    let url = pg.database("files_two").await;
    let w = World::new(&url, start(&url, s3.storage(), |s| s).await).await;
    let other = start(&url, s3.storage(), |s| s).await;
    let d1 = w.device("d1").await;
    let photo = file(20, (4 * PIECE + 17) as usize);
    let (status, created) = create(&w, &d1, &photo).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = created["upload"]["id"].as_str().unwrap().to_owned();
    let mut offset = 0u64;
    let mut turn = 0;
    let mut last = Value::Null;
    while offset < photo.len() as u64 {
        let end = (offset + PIECE).min(photo.len() as u64);
        let server = if turn % 2 == 0 { &w.server } else { &other };
        let r = send_to(
            server,
            &w.http,
            &d1,
            &id,
            offset,
            &photo[offset as usize..end as usize],
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK, "piece {turn}");
        last = r.json().await.unwrap();
        offset = end;
        turn += 1;
    }
    assert_eq!(last["complete"], true, "{last}");
    assert!(
        support::captured_logs().contains("reading an upload back"),
        "the last piece's server took only some pieces: it read the file back"
    );
    for server in [&w.server, &other] {
        let r = fetch_from(server, &w.http, &d1, &sha(&photo), None).await;
        assert_eq!(r.bytes().await.unwrap(), photo.as_slice());
    }

    // A liar through both servers is caught by the read-back too.
    let liar = file(21, (2 * PIECE + 3) as usize);
    let (_, created) = create_at(
        &w.server,
        &w.http,
        &d1,
        "cases",
        json!({"sha256": sha(b"not it"), "size": liar.len()}),
    )
    .await;
    let lid = created["upload"]["id"].as_str().unwrap().to_owned();
    let r = send_to(&w.server, &w.http, &d1, &lid, 0, &liar[..PIECE as usize]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = send_to(
        &other,
        &w.http,
        &d1,
        &lid,
        PIECE,
        &liar[PIECE as usize..2 * PIECE as usize],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = send_to(
        &w.server,
        &w.http,
        &d1,
        &lid,
        2 * PIECE,
        &liar[2 * PIECE as usize..],
    )
    .await;
    assert_eq!(error_code(r).await, "blob_mismatch");
    assert!(pieces_of(&s3, w.org, &lid).is_empty());
    other.stop().await;
    w.server.stop().await;
}
