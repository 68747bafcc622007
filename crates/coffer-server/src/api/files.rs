//! Files sync's endpoints (docs/server.md, "File storage";
//! [`coffer_protocol::files`]): resumable uploads with a digest per piece
//! and the whole file's SHA-256 checked at the end; ranged downloads,
//! streamed a piece at a time; an audited fetch for owners and admins.
//!
//! A piece is acknowledged once durable: sealed ([`crate::blob_seal`]),
//! written to the blob storage, then the upload's offset advanced in the
//! database — a crash between the two only makes the device send the
//! piece again (over the same object). One request at a time writes a
//! piece of one upload (a lease in the database, for every server
//! process, renewed while a whole file is read back), so the object and
//! the running hash always hold the same bytes. At most
//! [`crate::files::FileLimits::max_concurrent_pieces`] piece bodies are
//! taken in at once.
//!
//! A stored file whose piece turns out missing or no longer opening when
//! it is served is marked broken (logged, audited `file_broken`, counted):
//! its next declaration gets a new upload instead of `stored`, and that
//! upload's completion replaces it.

use std::sync::Arc;

use axum::body::{Body as RawBody, Bytes};
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use coffer_protocol::files::{
    is_sha256_hex, is_upload_id, parse_piece_checksum, parse_range, CreateUpload, FetchBlob,
    NewBlob, UploadCreated, UploadOffset, UploadStatus, MAX_PIECE_SIZE, PIECE_CONTENT_TYPE,
    UPLOAD_CHECKSUM_HEADER, UPLOAD_OFFSET_HEADER,
};
use coffer_protocol::untrusted::recorded;
use coffer_protocol::{Endpoint, ErrorCode};
use http_body_util::BodyExt;
use rand_core::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::sync::{check_app, data_key, internal, require_synced, ChannelBody, WRITERS};
use super::{record, require_role, ApiError, AppState, DevicePrincipal, Ids, Principal};
use crate::blob_seal::{open_piece, seal_piece, PiecePlace};
use crate::blobs::{BlobError, BlobStorage, PieceName};
use crate::record_seal::DataKey;
use crate::store::{
    now_unix, Claim, Completed, Declared, NewUpload, StoredBlob, StoredUpload, UploadState,
};

/// The admin's fetch, as routed (the protocol's
/// [`coffer_protocol::files::ADMIN_FETCH_PATH`] with the path parameter
/// named as the other admin routes name it).
pub const ADMIN_FETCH_ROUTE: &str = "/v1/orgs/{org_id}/files/{app}/{sha256}";

/// SHA-256 of the empty file: declared, it is stored at once (there is
/// nothing to send).
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Longest wait for one piece's write to the storage (and at most half the
/// lease: a write must end while the lease is ours).
const PUT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// How long a piece refused for want of a turn is told to wait.
const QUEUE_RETRY_AFTER_SECS: i64 = 2;
/// How long a piece waits for another request's write of the same upload
/// to end before it is answered 409 (a device that retried while its first
/// attempt still runs).
const BUSY_WAITS: u32 = 20;
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route(CreateUpload::PATH, post(create))
        // PATCH reads its body itself, at most one piece
        // (MAX_PIECE_SIZE), past the global limit.
        .route(UploadOffset::PATH, get(status).patch(piece))
        .route(FetchBlob::PATH, get(fetch))
        .route(ADMIN_FETCH_ROUTE, get(admin_fetch))
}

fn storage(state: &AppState) -> Result<BlobStorage, ApiError> {
    state.files.storage().cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal,
            "this server keeps no files: its operator has configured no blob storage",
        )
    })
}

fn storage_failed(e: &BlobError) -> ApiError {
    // The cause goes to the log (object names and the storage's words,
    // never a credential or a byte of a file).
    tracing::error!(error = %e, "blob storage failure");
    internal()
}

fn gone() -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        ErrorCode::UploadGone,
        "the upload expired or was dropped: declare the file again and start from zero",
    )
}

fn offset_mismatch(right: i64) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        ErrorCode::UploadOffsetMismatch,
        "the piece is not at the upload's offset: send the piece at Upload-Offset",
    )
    .with_header(UPLOAD_OFFSET_HEADER, right.max(0).to_string())
}

fn invalid_piece(message: &'static str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidPiece, message)
}

fn blob_mismatch(message: &'static str) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::BlobMismatch,
        message,
    )
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn random_hex(bytes: usize) -> Result<String, ApiError> {
    let mut buf = vec![0u8; bytes];
    rand_core::OsRng
        .try_fill_bytes(&mut buf)
        .map_err(|_| internal())?;
    Ok(hex::encode(buf))
}

fn status_of(u: &StoredUpload) -> UploadStatus {
    UploadStatus {
        id: u.upload_id.clone(),
        size: to_u64(u.size),
        piece_size: to_u64(u.piece_size),
        offset: to_u64(u.received),
        expires_at: u.expires_at,
        complete: u.state == UploadState::Complete,
    }
}

fn is_gone(u: &StoredUpload, now: i64) -> bool {
    match u.state {
        UploadState::Open => u.expires_at <= now,
        UploadState::Complete => false,
        UploadState::Dropped => true,
    }
}

/// The lease, whole seconds.
fn lease_secs(state: &AppState) -> i64 {
    i64::try_from(state.files.limits().upload_lease.as_secs()).unwrap_or(i64::MAX)
}

fn expiry_secs(state: &AppState) -> i64 {
    i64::try_from(state.files.limits().upload_expiry.as_secs())
        .unwrap_or(i64::MAX)
        .max(1)
}

/// `POST /v1/device/files/{app}/uploads`: declares a file. Stored for the
/// caller's organization and app already: `{stored: true}` (200); the
/// device's own unfinished upload of it: that upload at its offset (200);
/// else, within the limits, a new upload (201).
async fn create(
    State(state): State<AppState>,
    device: DevicePrincipal,
    Ids(app): Ids<String>,
    body: Result<Json<NewBlob>, JsonRejection>,
) -> Result<Response, ApiError> {
    let org_id = device.device.org_id;
    require_synced(&state, org_id, &app).await?;
    let Json(blob) = body.map_err(super::json_rejection)?;
    blob.check().map_err(|why| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidBody,
            why,
        )
    })?;
    storage(&state)?;
    let limits = state.files.limits();
    let now = now_unix();
    if blob.size == 0 {
        if blob.sha256 != EMPTY_SHA256 {
            return Err(blob_mismatch("an empty file's SHA-256 is that of no bytes"));
        }
        // Nothing to send: stored at once (no objects).
        state
            .store
            .files_insert_blob(
                StoredBlob {
                    org_id,
                    app,
                    sha256: blob.sha256,
                    size: 0,
                    content_type: blob.content_type,
                    upload_id: random_hex(16)?,
                    piece_size: to_i64(limits.piece_size),
                    broken_at: None,
                },
                now,
            )
            .await?;
        return Ok(Json(UploadCreated {
            stored: true,
            upload: None,
        })
        .into_response());
    }
    let declared = state
        .store
        .files_declare(NewUpload {
            upload_id: random_hex(16)?,
            org_id,
            app,
            device_id: device.device.id,
            sha256: blob.sha256,
            size: to_i64(blob.size),
            content_type: blob.content_type,
            piece_size: to_i64(limits.piece_size),
            now,
            expires_at: now.saturating_add(expiry_secs(&state)),
            max_file_size: to_i64(limits.max_file_size),
            quota: to_i64(limits.org_quota),
            device_share: to_i64(limits.org_quota / crate::files::DEVICE_QUOTA_SHARE),
            max_open: crate::files::MAX_OPEN_UPLOADS,
        })
        .await?;
    let answer = |status: StatusCode, upload: Option<&StoredUpload>| {
        (
            status,
            Json(UploadCreated {
                stored: upload.is_none(),
                upload: upload.map(status_of),
            }),
        )
            .into_response()
    };
    match declared {
        Declared::Stored(_) => Ok(answer(StatusCode::OK, None)),
        Declared::Resumed(upload) => Ok(answer(StatusCode::OK, Some(&upload))),
        Declared::Created(upload) => Ok(answer(StatusCode::CREATED, Some(&upload))),
        Declared::OtherSize => Err(blob_mismatch(
            "a file with this SHA-256 is stored with another size: the declaration is wrong",
        )),
        Declared::TooLarge => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::FileTooLarge,
            format!(
                "this server takes files of at most {} bytes",
                limits.max_file_size
            ),
        )),
        Declared::OverQuota { .. } => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::QuotaExceeded,
            format!(
                "the organization's files would pass its quota of {} bytes: ask an admin",
                limits.org_quota
            ),
        )),
        Declared::OverDeviceShare { held } => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::QuotaExceeded,
            format!(
                "this device's unfinished uploads hold {held} bytes; with this one they would pass \
                 its share of the organization's quota ({} bytes): finish them first",
                limits.org_quota / crate::files::DEVICE_QUOTA_SHARE
            ),
        )),
        Declared::TooManyOpen { first_expiry } => {
            let mut refused = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                format!(
                    "this device has {} unfinished uploads: finish them, or wait for them to expire",
                    crate::files::MAX_OPEN_UPLOADS
                ),
            );
            // When the first of them expires (then one more fits).
            refused.retry_after = Some(first_expiry.saturating_sub(now).max(1));
            Err(refused)
        }
    }
}

/// The upload `id` if it is the calling device's, of its organization
/// and of `app`; otherwise (or if there is none) `not_found`, the same
/// answer either way.
async fn own_upload(
    state: &AppState,
    device: &DevicePrincipal,
    app: &str,
    id: &str,
) -> Result<StoredUpload, ApiError> {
    if !is_upload_id(id) {
        return Err(super::not_found_here());
    }
    match state.store.files_upload(id).await? {
        Some(u)
            if u.org_id == device.device.org_id
                && u.device_id == device.device.id
                && u.app == app =>
        {
            Ok(u)
        }
        _ => Err(super::not_found_here()),
    }
}

/// `GET /v1/device/files/{app}/uploads/{id}`: where the upload stands.
async fn status(
    State(state): State<AppState>,
    device: DevicePrincipal,
    Ids((app, id)): Ids<(String, String)>,
) -> Result<Json<UploadStatus>, ApiError> {
    require_synced(&state, device.device.org_id, &app).await?;
    let upload = own_upload(&state, &device, &app, &id).await?;
    if is_gone(&upload, now_unix()) {
        return Err(gone());
    }
    Ok(Json(status_of(&upload)))
}

/// Why a piece's bytes were refused before anything was kept.
enum Refused {
    Checksum,
    Seal(crate::keys::KeyError),
}

/// The headers of a piece: its offset and its SHA-256.
fn piece_headers(headers: &HeaderMap) -> Result<(u64, [u8; 32]), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    if content_type.as_deref() != Some(PIECE_CONTENT_TYPE) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            "send a piece as application/offset+octet-stream",
        ));
    }
    let offset = headers
        .get(UPLOAD_OFFSET_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| invalid_piece("Upload-Offset is the piece's offset, decimal"))?;
    let digest = headers
        .get(UPLOAD_CHECKSUM_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_piece_checksum)
        .ok_or_else(|| {
            invalid_piece("Upload-Checksum is `sha256 ` and the base64 of the piece's SHA-256")
        })?;
    Ok((offset, digest))
}

/// The piece's body: exactly `expected` bytes, or refused.
async fn piece_body(headers: &HeaderMap, body: RawBody, expected: u64) -> Result<Bytes, ApiError> {
    let wrong_length = || {
        invalid_piece(
            "a piece is exactly the upload's piece size, or the rest of the file for the last one",
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n != expected) {
        return Err(wrong_length());
    }
    let limit = usize::try_from(expected.min(MAX_PIECE_SIZE)).unwrap_or(0);
    let bytes = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(wrong_length())
        }
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                "the piece's body did not arrive whole",
            ))
        }
    };
    if bytes.len() as u64 != expected {
        return Err(wrong_length());
    }
    Ok(bytes)
}

/// `PATCH /v1/device/files/{app}/uploads/{id}`: one piece at the upload's
/// offset, acknowledged once durable; the last one completes the upload.
async fn piece(
    State(state): State<AppState>,
    device: DevicePrincipal,
    Ids((app, id)): Ids<(String, String)>,
    headers: HeaderMap,
    body: RawBody,
) -> Result<Response, ApiError> {
    // On a task of its own: a client that goes away while its piece is
    // being stored drops the request's future, and with it the lease
    // release; the other requests for this upload would then wait out the
    // lease (two minutes) for nothing. The task runs to its end whatever
    // the connection does (a cut during the body still ends it at once:
    // the body read fails before any lease is taken).
    tokio::spawn(store_piece(state, device, app, id, headers, body))
        .await
        .map_err(|_| internal())?
}

async fn store_piece(
    state: AppState,
    device: DevicePrincipal,
    app: String,
    id: String,
    headers: HeaderMap,
    body: RawBody,
) -> Result<Response, ApiError> {
    let org_id = device.device.org_id;
    require_synced(&state, org_id, &app).await?;
    let (offset, digest) = piece_headers(&headers)?;
    let storage = storage(&state)?;
    let upload = own_upload(&state, &device, &app, &id).await?;
    if upload.state == UploadState::Complete {
        return Err(offset_mismatch(upload.size));
    }
    if is_gone(&upload, now_unix()) {
        return Err(gone());
    }
    if to_i64(offset) != upload.received {
        return Err(offset_mismatch(upload.received));
    }
    let (size, piece_size) = (to_u64(upload.size), to_u64(upload.piece_size));
    let expected = piece_size.min(size - offset);
    // A turn before the body is read: the piece bodies in memory are
    // bounded for the whole process. Held until the piece is stored.
    let files = Arc::clone(&state.files);
    let Some(_turn) = files.piece_turn().await else {
        let mut refused = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::RateLimited,
            "the server is taking in as many pieces as it can: send this one again after Retry-After",
        );
        refused.retry_after = Some(QUEUE_RETRY_AFTER_SECS);
        return Err(refused);
    };
    let bytes = piece_body(&headers, body, expected).await?;
    let index = offset / piece_size;
    let last = offset + expected == size;

    // The piece checked against its digest and sealed, off the async
    // workers; the running hash moved on with it (kept only if the piece
    // is acknowledged).
    let key = data_key(&state, org_id).await?;
    let running = state.files.running_hash(&id, offset);
    let sealed = {
        let (key, bytes, upload) = (Arc::clone(&key), bytes.clone(), upload.clone());
        tokio::task::spawn_blocking(move || {
            if <[u8; 32]>::from(Sha256::digest(&bytes)) != digest {
                return Err(Refused::Checksum);
            }
            let hasher = running.map(|mut h| {
                h.update(&bytes);
                h
            });
            let place = place_of(&upload, index);
            let sealed = seal_piece(&key, &place, &bytes).map_err(Refused::Seal)?;
            Ok((sealed, hasher))
        })
        .await
        .map_err(|_| internal())?
    };
    let (sealed, hasher) = match sealed {
        Ok(done) => done,
        Err(Refused::Checksum) => return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::ChecksumMismatch,
            "the piece does not match its Upload-Checksum: nothing of it was kept, send it again",
        )),
        Err(Refused::Seal(e)) => return Err(super::sync::sealing_failed(e)),
    };

    let lease = random_hex(16)?;
    let mut waits = 0;
    loop {
        match state
            .store
            .files_claim(&id, to_i64(offset), &lease, now_unix(), lease_secs(&state))
            .await?
        {
            Claim::Claimed => break,
            Claim::Elsewhere(right) => return Err(offset_mismatch(right)),
            Claim::NotOpen => return Err(ended(&state, &id).await?),
            Claim::Busy if waits < BUSY_WAITS => {
                waits += 1;
                tokio::time::sleep(BUSY_WAIT).await;
            }
            Claim::Busy => {
                let mut busy = offset_mismatch(to_i64(offset));
                busy.retry_after = Some(1);
                return Err(busy);
            }
        }
    }

    let name = PieceName::new(org_id, &id, index).map_err(|e| storage_failed(&e))?;
    let put_timeout = PUT_TIMEOUT.min(state.files.limits().upload_lease / 2);
    let written = tokio::time::timeout(put_timeout, storage.put(&name, sealed)).await;
    if let Err(e) = written
        .map_err(|_| BlobError::Storage {
            op: "writing a piece",
            message: "timed out".into(),
        })
        .and_then(|r| r)
    {
        state.store.files_release(&id, &lease).await?;
        return Err(storage_failed(&e));
    }

    if !last {
        let now = now_unix();
        let expires_at = now.saturating_add(expiry_secs(&state));
        let to = offset + expected;
        // Only while the lease is still ours (the update names it): if it
        // lapsed and another request took it, that one's piece counts.
        if !state
            .store
            .files_advance(&id, &lease, to_i64(offset), to_i64(to), now, expires_at)
            .await?
        {
            state.files.forget_hash(&id);
            return Err(lost_lease(&state, &storage, &id).await?);
        }
        match hasher {
            Some(h) => state.files.keep_hash(&id, to, h),
            None => state.files.forget_hash(&id),
        }
        state.metrics.file_bytes_in(expected);
        let mut status = status_of(&upload);
        status.offset = to;
        status.expires_at = upload.expires_at.max(expires_at);
        return Ok(piece_answer(status));
    }

    // The last piece: the whole file's SHA-256, from the running hash or
    // by reading every earlier piece back (another process took some, or
    // this one restarted) — a read of up to the whole file, during which
    // the lease is renewed, so that no other request takes it meanwhile.
    state.files.forget_hash(&id);
    let whole = match hasher {
        Some(h) => Ok(<[u8; 32]>::from(h.finalize())),
        None => {
            tracing::debug!(
                pieces = index + 1,
                "reading an upload back to check the whole file's SHA-256"
            );
            let reading = read_back(&storage, &key, &upload, index, &bytes);
            match holding_lease(&state, &id, &lease, reading).await? {
                Some(whole) => whole,
                None => return Err(lost_lease(&state, &storage, &id).await?),
            }
        }
    };
    let matches = match whole {
        Ok(whole) => hex::encode(whole) == upload.sha256,
        Err(ReadBack::Broken) => {
            tracing::warn!(
                org_id,
                pieces = index + 1,
                "a piece of an upload read back is missing or does not open: the upload is dropped"
            );
            false
        }
        Err(ReadBack::Storage(e)) => {
            state.store.files_release(&id, &lease).await?;
            return Err(storage_failed(&e));
        }
    };
    if !matches {
        // The upload is dropped and its pieces deleted: the device starts
        // again (and hears `upload_gone` for this one).
        if state.store.files_drop(&id, now_unix()).await? {
            delete_now(&state, &storage, org_id, &id).await;
        }
        return Err(blob_mismatch(
            "the whole file does not match the SHA-256 it was declared with: the upload is dropped",
        ));
    }
    match state
        .store
        .files_complete(&id, &lease, to_i64(offset), now_unix())
        .await?
    {
        Completed::Stored => {
            state.metrics.file_bytes_in(expected);
            state.metrics.upload_completed();
        }
        Completed::Repaired { replaced } => {
            // A broken file's new bytes: its old pieces go.
            state.metrics.file_bytes_in(expected);
            state.metrics.upload_completed();
            tracing::info!(org_id, "a broken file was repaired by a new upload");
            delete_now(&state, &storage, org_id, &replaced).await;
        }
        Completed::AlreadyStored => {
            // Another upload of the same file won: this one's pieces go.
            state.metrics.file_bytes_in(expected);
            delete_now(&state, &storage, org_id, &id).await;
        }
        Completed::Gone => return Err(lost_lease(&state, &storage, &id).await?),
    }
    let mut status = status_of(&upload);
    status.offset = size;
    status.complete = true;
    Ok(piece_answer(status))
}

fn piece_answer(status: UploadStatus) -> Response {
    let offset = status.offset.to_string();
    let mut response = Json(status).into_response();
    if let Ok(value) = axum::http::HeaderValue::from_str(&offset) {
        response.headers_mut().insert(UPLOAD_OFFSET_HEADER, value);
    }
    response
}

/// The answer to a piece for an upload that is not open any more.
async fn ended(state: &AppState, id: &str) -> Result<ApiError, ApiError> {
    Ok(match state.store.files_upload(id).await? {
        Some(u) if u.state == UploadState::Complete => offset_mismatch(u.size),
        _ => gone(),
    })
}

/// The answer to a piece whose lease was lost after its write: the upload
/// moved on (another request holds it: `409`), or it ended. If it was
/// dropped meanwhile (it expired), the piece just written may have come
/// after its objects were deleted: they are deleted again.
async fn lost_lease(
    state: &AppState,
    storage: &BlobStorage,
    id: &str,
) -> Result<ApiError, ApiError> {
    let upload = state.store.files_upload(id).await?;
    Ok(match upload {
        Some(u) if u.state == UploadState::Complete => offset_mismatch(u.size),
        Some(u) if u.is_open(now_unix()) => offset_mismatch(u.received),
        Some(u) => {
            let _ = state
                .store
                .files_trash(
                    &crate::blobs::upload_prefix(u.org_id, id).map_err(|e| storage_failed(&e))?,
                    now_unix(),
                )
                .await;
            delete_now(state, storage, u.org_id, id).await;
            gone()
        }
        None => gone(),
    })
}

/// Deletes an upload's objects now (they are in the trash already: a
/// failure leaves them for the next garbage collection).
async fn delete_now(state: &AppState, storage: &BlobStorage, org_id: i64, id: &str) {
    let Ok(prefix) = crate::blobs::upload_prefix(org_id, id) else {
        return;
    };
    if let Err(e) = crate::files::delete_trashed(&state.store, storage, &prefix).await {
        tracing::warn!(error = %e, "deleting an upload's pieces failed; the next collection tries again");
    }
}

/// Runs `work` while renewing the upload's lease every quarter of it;
/// none if the lease was lost meanwhile (then `work` is dropped).
async fn holding_lease<T>(
    state: &AppState,
    id: &str,
    lease: &str,
    work: impl std::future::Future<Output = T>,
) -> Result<Option<T>, ApiError> {
    let every = (state.files.limits().upload_lease / 4).max(std::time::Duration::from_millis(100));
    let mut work = std::pin::pin!(work);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            done = &mut work => return Ok(Some(done)),
            _ = ticks.tick() => {
                if !state.store.files_renew(id, lease, lease_secs(state)).await? {
                    return Ok(None);
                }
            }
        }
    }
}

fn place_of(upload: &StoredUpload, index: u64) -> PiecePlace<'_> {
    PiecePlace {
        org_id: upload.org_id,
        app: &upload.app,
        sha256: &upload.sha256,
        upload_id: &upload.upload_id,
        size: to_u64(upload.size),
        piece_size: to_u64(upload.piece_size),
        index,
    }
}

/// Why reading an upload back failed.
enum ReadBack {
    /// A piece is missing or does not open: the upload cannot complete.
    Broken,
    /// The storage failed (try again).
    Storage(BlobError),
}

/// The whole file's SHA-256, every piece before `last_index` read back
/// and opened one at a time, then the last piece (in hand).
async fn read_back(
    storage: &BlobStorage,
    key: &Arc<DataKey>,
    upload: &StoredUpload,
    last_index: u64,
    last_piece: &Bytes,
) -> Result<[u8; 32], ReadBack> {
    let mut hasher = Sha256::new();
    for index in 0..last_index {
        let name = PieceName::new(upload.org_id, &upload.upload_id, index)
            .map_err(|_| ReadBack::Broken)?;
        let sealed = match storage.get(&name).await {
            Ok(sealed) => sealed,
            Err(BlobError::NotFound) => return Err(ReadBack::Broken),
            Err(e) => return Err(ReadBack::Storage(e)),
        };
        let (key, upload_copy) = (Arc::clone(key), upload.clone());
        hasher = tokio::task::spawn_blocking(move || {
            let piece = open_piece(&key, &place_of(&upload_copy, index), sealed).ok()?;
            if piece.len() as u64 != to_u64(upload_copy.piece_size) {
                return None;
            }
            hasher.update(&piece);
            Some(hasher)
        })
        .await
        .ok()
        .flatten()
        .ok_or(ReadBack::Broken)?;
    }
    hasher.update(last_piece);
    Ok(hasher.finalize().into())
}

/// The bytes a fetch serves: the whole blob, or one range of it.
struct Fetch {
    blob: StoredBlob,
    /// First and last byte (none: the empty file).
    span: Option<(u64, u64)>,
    /// Whether a `Range` asked for it (206).
    ranged: bool,
}

/// What a fetch of `blob` with these headers serves, or `416` for a range
/// this server does not serve (with `Content-Range: bytes */size`).
fn plan_fetch(blob: StoredBlob, headers: &HeaderMap) -> Result<Fetch, ApiError> {
    let size = to_u64(blob.size);
    match headers.get(header::RANGE) {
        None => Ok(Fetch {
            span: (size > 0).then(|| (0, size - 1)),
            blob,
            ranged: false,
        }),
        Some(value) => match value.to_str().ok().and_then(|v| parse_range(v, size)) {
            Some(span) => Ok(Fetch {
                blob,
                span: Some(span),
                ranged: true,
            }),
            None => Err(ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                ErrorCode::RangeNotSatisfiable,
                "serve one range, bytes=first-last, within the file",
            )
            .with_header("content-range", format!("bytes */{size}"))),
        },
    }
}

/// Why a stored file's piece was not served.
enum PieceFault {
    /// Missing, not opening, or of the wrong length: the file is broken.
    Broken(&'static str),
    /// The storage failed (it may answer the next time).
    Storage(BlobError),
}

/// Reads and opens the piece `index` of `blob`; its length checked.
async fn open_blob_piece(
    storage: &BlobStorage,
    key: &Arc<DataKey>,
    blob: &StoredBlob,
    index: u64,
) -> Result<Vec<u8>, PieceFault> {
    let name = PieceName::new(blob.org_id, &blob.upload_id, index).map_err(PieceFault::Storage)?;
    let sealed = match storage.get(&name).await {
        Ok(sealed) => sealed,
        Err(BlobError::NotFound) => return Err(PieceFault::Broken("a stored piece is missing")),
        Err(e) => return Err(PieceFault::Storage(e)),
    };
    let (key, blob) = (Arc::clone(key), blob.clone());
    tokio::task::spawn_blocking(move || {
        let (size, piece_size) = (to_u64(blob.size), to_u64(blob.piece_size));
        let place = PiecePlace {
            org_id: blob.org_id,
            app: &blob.app,
            sha256: &blob.sha256,
            upload_id: &blob.upload_id,
            size,
            piece_size,
            index,
        };
        let piece = open_piece(&key, &place, sealed).map_err(|_| {
            PieceFault::Broken(
                "a stored piece does not open (changed, moved or cut in the storage)",
            )
        })?;
        let expected = piece_size.min(size.saturating_sub(index * piece_size));
        if piece.len() as u64 != expected {
            return Err(PieceFault::Broken("a stored piece has the wrong length"));
        }
        Ok(piece)
    })
    .await
    .map_err(|e| {
        PieceFault::Storage(BlobError::Storage {
            op: "opening a piece",
            message: e.to_string(),
        })
    })?
}

/// A piece of `blob` was found broken: the blob is marked so (its next
/// declaration gets a new upload, which replaces it), and — the first time
/// — logged (ids only, no content or hash), audited (`file_broken`) and
/// counted. The answer to give meanwhile: `500 internal`.
async fn broken(state: &AppState, blob: &StoredBlob, index: u64, why: &'static str) -> ApiError {
    let marked = state
        .store
        .files_mark_broken(
            blob.org_id,
            &blob.app,
            &blob.sha256,
            &blob.upload_id,
            now_unix(),
        )
        .await;
    match marked {
        Ok(true) => {
            tracing::error!(
                org_id = blob.org_id,
                upload = %blob.upload_id,
                piece = index,
                why,
                "a stored file is broken: marked, so that its next upload repairs it"
            );
            state.metrics.blob_broken();
            let audited = record(
                state,
                Some(blob.org_id),
                "server".to_owned(),
                "file_broken",
                json!({
                    "app": recorded(&blob.app),
                    "sha256": blob.sha256,
                    "piece": index,
                }),
            )
            .await;
            if audited.is_err() {
                tracing::warn!("a broken file could not be audited");
            }
        }
        Ok(false) => tracing::warn!(
            org_id = blob.org_id,
            upload = %blob.upload_id,
            piece = index,
            why,
            "a piece of a stored file was not served: the file is marked broken already, or was repaired or collected meanwhile"
        ),
        Err(e) => tracing::error!(error = %e, "a broken file could not be marked"),
    }
    internal()
}

/// The answer to a piece that was not served.
async fn unserved(state: &AppState, blob: &StoredBlob, index: u64, fault: PieceFault) -> ApiError {
    match fault {
        PieceFault::Broken(why) => broken(state, blob, index, why).await,
        PieceFault::Storage(e) => storage_failed(&e),
    }
}

/// Serves a fetch, a piece at a time. The first piece is opened before the
/// answer starts, so that a piece that does not open is a `500` answer;
/// a later one cuts the body short (the device's hash check refuses what
/// it got); either marks the file broken. Only bytes sealed for the blob's
/// place are served: a piece the server itself wrote late with other
/// bytes is the one way those differ from the file, and a whole-file
/// fetch then finds it (and marks the file broken too).
async fn serve(state: &AppState, fetch: Fetch, attachment: bool) -> Result<Response, ApiError> {
    let Fetch { blob, span, ranged } = fetch;
    let size = to_u64(blob.size);
    let content_type = blob
        .content_type
        .clone()
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    let mut builder = Response::builder()
        .status(if ranged {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        })
        .header(header::CONTENT_TYPE, content_type)
        .header(header::ETAG, format!("\"{}\"", blob.sha256))
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "no-store")
        .header("x-content-type-options", "nosniff");
    if attachment {
        builder = builder.header(header::CONTENT_DISPOSITION, "attachment");
    }
    let Some((first, last)) = span else {
        return builder
            .header(header::CONTENT_LENGTH, "0")
            .body(RawBody::empty())
            .map_err(|_| internal());
    };
    if ranged {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {first}-{last}/{size}"),
        );
    }
    builder = builder.header(header::CONTENT_LENGTH, (last - first + 1).to_string());
    let storage = storage(state)?;
    let key = data_key(state, blob.org_id).await?;
    let piece_size = to_u64(blob.piece_size).max(1);
    let first_index = first / piece_size;
    let first_piece = match open_blob_piece(&storage, &key, &blob, first_index).await {
        Ok(piece) => piece,
        Err(fault) => return Err(unserved(state, &blob, first_index, fault).await),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let state = state.clone();
    // The whole file served: its SHA-256 checked as it goes (a piece
    // replaced by other bytes sealed for the same place — a write that
    // landed after its request gave up — opens, but the file does not
    // match). The bytes are sent by then: the device's check refuses them.
    let mut whole = (first == 0 && last + 1 == size).then(Sha256::new);
    tokio::spawn(async move {
        let metrics = &state.metrics;
        let mut index = first_index;
        let mut next = Some(first_piece);
        loop {
            let piece = match next.take() {
                Some(piece) => piece,
                None => match open_blob_piece(&storage, &key, &blob, index).await {
                    Ok(piece) => piece,
                    Err(fault) => {
                        let _ = unserved(&state, &blob, index, fault).await;
                        tracing::error!("serving a file: cut short");
                        let _ = tx.send(Err(std::io::Error::other("blob unreadable"))).await;
                        return;
                    }
                },
            };
            let start = index * piece_size;
            let end = start + piece.len() as u64; // exclusive
            let from = usize::try_from(first.max(start) - start).unwrap_or(0);
            let to = usize::try_from(last.min(end - 1) + 1 - start).unwrap_or(0);
            let chunk = Bytes::from(piece).slice(from..to);
            metrics.file_bytes_out(chunk.len() as u64);
            if let Some(mut h) = whole.take() {
                // Off the async workers, as every other hash here.
                let bytes = chunk.clone();
                whole = tokio::task::spawn_blocking(move || {
                    h.update(&bytes);
                    h
                })
                .await
                .ok();
            }
            if tx.send(Ok(chunk)).await.is_err() {
                return; // the client went
            }
            if end > last {
                if let Some(h) = whole.take() {
                    if hex::encode(h.finalize()) != blob.sha256 {
                        let _ = broken(
                            &state,
                            &blob,
                            index,
                            "the whole file served does not match its SHA-256",
                        )
                        .await;
                    }
                }
                return;
            }
            index += 1;
        }
    });
    builder
        .body(RawBody::new(ChannelBody(rx)))
        .map_err(|_| internal())
}

/// `GET /v1/device/files/{app}/blobs/{sha256}` (a `Range` of one range,
/// or none for the whole file): a blob of the device's organization and
/// app; any other is `not_found`, whether or not it exists elsewhere.
async fn fetch(
    State(state): State<AppState>,
    device: DevicePrincipal,
    Ids((app, sha256)): Ids<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let org_id = device.device.org_id;
    require_synced(&state, org_id, &app).await?;
    if !is_sha256_hex(&sha256) {
        return Err(super::not_found_here());
    }
    let blob = state
        .store
        .files_blob(org_id, &app, &sha256)
        .await?
        .ok_or_else(super::not_found_here)?;
    let fetch = plan_fetch(blob, &headers)?;
    serve(&state, fetch, false).await
}

/// `GET /v1/orgs/{org_id}/files/{app}/{sha256}` (owners, admins): one of
/// the organization's files, whole or a `Range`; audited (`file_fetched`).
async fn admin_fetch(
    State(state): State<AppState>,
    Ids((org_id, app, sha256)): Ids<(i64, String, String)>,
    who: Principal,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_role(&state, &who, org_id, WRITERS).await?;
    check_app(&app)?;
    if !is_sha256_hex(&sha256) {
        return Err(super::not_found_here());
    }
    let blob = state
        .store
        .files_blob(org_id, &app, &sha256)
        .await?
        .ok_or_else(super::not_found_here)?;
    let fetch = plan_fetch(blob, &headers)?;
    record(
        &state,
        Some(org_id),
        format!("user:{}", who.user),
        "file_fetched",
        json!({
            "app": recorded(&app),
            "sha256": sha256,
            "range": fetch.ranged.then(|| fetch.span.map(|(a, b)| format!("{a}-{b}"))).flatten(),
        }),
    )
    .await?;
    serve(&state, fetch, true).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_admin_route_is_the_protocols_path() {
        assert_eq!(
            super::ADMIN_FETCH_ROUTE.replace("{org_id}", "{org}"),
            coffer_protocol::files::ADMIN_FETCH_PATH
        );
        assert_eq!(
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"")),
            super::EMPTY_SHA256
        );
    }
}
