//! Record sync (docs/server.md, "Record sync"): devices push and pull the
//! records of the apps the organization's signed policy lists; owners and
//! admins list, read, export and resolve them and bind provisional
//! authors (auditors list, read and export). Bodies are sealed at rest
//! under the organization's data key ([`crate::record_seal`]); every read
//! of a body by a person is audited.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use coffer_protocol::sync::{
    decode_cursor, encode_cursor, AuthorBound, BindAuthor, FileRef, Leaf, ProvisionalAuthors, Pull,
    PullAnswer, PullQuery, PulledRecord, Purged, Push, PushBatch, RecordDetail, RecordList,
    RecordSummary, RecordsQuery, ResolveRequest, Revision, MAX_AUTHOR, MAX_PULL_RECORDS,
    MAX_PUSH_BODY, MAX_RECORD_BODY, PULL_PAGE_BYTES,
};
use coffer_protocol::untrusted::recorded;
use coffer_protocol::{Endpoint, ErrorCode};
use serde::Serialize;
use serde_json::{json, Value};

use super::{
    bad_query, query_refused, record, require_role, ApiError, AppState, DevicePrincipal, Ids,
    Principal,
};
use crate::record_seal::{DataKey, RecordContent, RecordPlace};
use crate::store::{
    decode_after, encode_after, BindStored, NewPush, PullPage, PushStored, RecordFilter,
    Resolution, ResolveStored, SealedKind, StoredLeaf, StoredRecord, SyncOp,
};

/// Longest app name, bytes.
pub const MAX_APP: usize = 64;
/// Most records one admin listing returns.
pub const MAX_LIST_RECORDS: u32 = 10_000;

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route(
            Push::PATH,
            // The only route with a larger body than the global limit.
            post(push).layer(DefaultBodyLimit::max(MAX_PUSH_BODY)),
        )
        .route(Pull::PATH, get(pull))
        .route(Purged::PATH, post(purged))
        .route("/v1/orgs/{org_id}/records", get(list))
        .route("/v1/orgs/{org_id}/records/export", get(export))
        .route(
            "/v1/orgs/{org_id}/records/{app}/{collection}/{id}",
            get(detail),
        )
        .route(
            "/v1/orgs/{org_id}/records/{app}/{collection}/{id}/resolve",
            post(resolve),
        )
        .route("/v1/orgs/{org_id}/sync/authors", get(authors))
        .route("/v1/orgs/{org_id}/sync/authors/bind", post(bind))
}

pub(super) fn internal() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Internal,
        "the server failed; the cause is in its log",
    )
}

pub(super) fn sealing_failed(e: crate::keys::KeyError) -> ApiError {
    // The cause goes to the log (it never holds key material or a body).
    tracing::error!(error = %e, "a record seal could not be opened or made");
    internal()
}

pub(super) fn check_app(app: &str) -> Result<(), ApiError> {
    if app.is_empty() || app.len() > MAX_APP {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidName,
            "an app name is 1 to 64 bytes",
        ));
    }
    Ok(())
}

/// Refuses an app the organization's latest signed policy does not list
/// in `sync` (or an organization without a policy).
pub(super) async fn require_synced(
    state: &AppState,
    org_id: i64,
    app: &str,
) -> Result<(), ApiError> {
    check_app(app)?;
    let listed = match state.store.latest_policy(org_id).await? {
        Some(policy) => serde_json::from_str::<coffer_protocol::policy::Document>(&policy.document)
            .map_err(|_| internal())?
            .rules
            .sync
            .iter()
            .any(|a| a == app),
        None => false,
    };
    if listed {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::AppNotSynced,
            "the organization's policy does not list this app in `sync`",
        ))
    }
}

/// `POST /v1/device/sync/{app}/purged` (device or release token): the
/// device says it crypto-erased the app, as told. Audited once per window
/// and (device, app); refused (409) when nothing told the device so — it
/// is neither revoked nor is the app off the policy's list — so a device
/// cannot fill the audit trail with claims.
async fn purged(
    State(state): State<AppState>,
    Ids(app): Ids<String>,
    super::AnyDevice(device): super::AnyDevice,
) -> Result<StatusCode, ApiError> {
    check_app(&app)?;
    let org_id = device.device.org_id;
    let told = device.device.revoked || require_synced(&state, org_id, &app).await.is_err();
    if !told {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::BadRequest,
            "this app still syncs to this device: nothing asked for a purge",
        ));
    }
    let budget = format!("sync-purged:{}:{app}", device.device.id);
    if super::count_attempt(&state, &budget, 1, "purge report")
        .await?
        .is_some()
    {
        // Said already in this window: taken, not recorded again.
        return Ok(StatusCode::NO_CONTENT);
    }
    record(
        &state,
        Some(org_id),
        format!("device:{}", device.device.id),
        "sync_purged",
        json!({"device_id": device.device.id, "app": recorded(&app), "revoked": device.device.revoked}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The organization's data key: cached, else unsealed from the database,
/// else made (race-safe: of two processes making one, both end with the
/// one stored first).
pub(crate) async fn data_key(state: &AppState, org_id: i64) -> Result<Arc<DataKey>, ApiError> {
    if let Some(key) = state.data_keys.get(org_id) {
        return Ok(key);
    }
    let context = SealedKind::OrgDataKey.context(org_id);
    if state.store.org_data_key(org_id).await?.is_none() {
        let (_, bytes) = DataKey::generate().map_err(sealing_failed)?;
        let sealed = state
            .keys
            .seal(&context, bytes.as_slice())
            .map_err(sealing_failed)?;
        state.store.add_org_data_key(org_id, &sealed).await?;
    }
    let sealed = state
        .store
        .org_data_key(org_id)
        .await?
        .ok_or_else(internal)?;
    let bytes = state.keys.open(&context, &sealed).map_err(sealing_failed)?;
    let bytes: [u8; 32] = bytes.as_slice().try_into().map_err(|_| internal())?;
    let key = Arc::new(DataKey::from_bytes(&zeroize::Zeroizing::new(bytes)));
    state.data_keys.put(org_id, Arc::clone(&key));
    Ok(key)
}

/// What a record seal holds, borrowed from an operation (encoded exactly
/// as [`RecordContent`]).
#[derive(Serialize)]
struct ContentRef<'a> {
    body: &'a Option<Value>,
    files: &'a [FileRef],
}

/// `POST /v1/device/sync/{app}/push`: one batch, in one transaction; one
/// result per operation. A retry of the batch gets the stored answer,
/// byte for byte.
async fn push(
    State(state): State<AppState>,
    device: DevicePrincipal,
    Ids(app): Ids<String>,
    body: Result<Json<PushBatch>, JsonRejection>,
) -> Result<Response, ApiError> {
    let org_id = device.device.org_id;
    require_synced(&state, org_id, &app).await?;
    let Json(batch) = body.map_err(|rejection| match rejection {
        JsonRejection::BytesRejection(_) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::BodyTooLarge,
            format!("a push is limited to {MAX_PUSH_BODY} bytes"),
        ),
        other => super::json_rejection(other),
    })?;
    batch.check().map_err(|why| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidBody,
            why.to_string(),
        )
    })?;
    let key = data_key(&state, org_id).await?;
    let digest = hex::encode(batch.digest());
    let mut ops = Vec::with_capacity(batch.ops.len());
    for op in &batch.ops {
        let checked = match op.check() {
            Err(why) => Err(why),
            Ok(()) => {
                let revision = op.revision.to_string();
                let place = RecordPlace {
                    org_id,
                    app: &app,
                    collection: &op.collection,
                    id: &op.id,
                    revision: &revision,
                };
                let content = ContentRef {
                    body: &op.body,
                    files: &op.files,
                };
                Ok(SyncOp {
                    sealed: key.seal(&place, &content).map_err(sealing_failed)?,
                    body_mac: op
                        .body
                        .as_ref()
                        .map(|b| key.body_mac(&app, &op.collection, b)),
                    collection: op.collection.clone(),
                    id: op.id.clone(),
                    revision: op.revision,
                    base: op.base,
                    deleted: op.deleted,
                    author: op.author.clone(),
                    resolves: op.resolves.clone(),
                    digest: hex::encode(op.digest()),
                    files: op
                        .files
                        .iter()
                        .map(|f| (f.sha256.clone(), f.size))
                        .collect(),
                })
            }
        };
        ops.push((op.revision, checked));
    }
    let stored = state
        .store
        .sync_push(NewPush {
            org_id,
            app,
            device_id: device.device.id,
            batch_id: batch.batch_id,
            digest,
            ops,
        })
        .await?;
    match stored {
        PushStored::Answer(answer) => {
            Ok(([(header::CONTENT_TYPE, "application/json")], answer).into_response())
        }
        PushStored::BatchConflict => Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::BatchConflict,
            "another batch with other operations was pushed under this batch_id",
        )),
    }
}

fn parse_revision(text: &str) -> Result<Revision, ApiError> {
    text.parse().map_err(|_| internal())
}

fn open_record(
    key: &DataKey,
    org_id: i64,
    app: &str,
    r: &StoredRecord,
) -> Result<RecordContent, ApiError> {
    key.open(
        &RecordPlace {
            org_id,
            app,
            collection: &r.collection,
            id: &r.id,
            revision: &r.revision,
        },
        &r.sealed,
    )
    .map_err(sealing_failed)
}

fn open_leaf(key: &DataKey, org_id: i64, app: &str, l: &StoredLeaf) -> Result<Leaf, ApiError> {
    let content = key
        .open(
            &RecordPlace {
                org_id,
                app,
                collection: &l.collection,
                id: &l.id,
                revision: &l.revision,
            },
            &l.sealed,
        )
        .map_err(sealing_failed)?;
    Ok(Leaf {
        revision: parse_revision(&l.revision)?,
        base: l.base.as_deref().map(parse_revision).transpose()?,
        deleted: l.deleted,
        body: content.body,
        files: content.files,
        author: l.author.clone(),
    })
}

/// `GET /v1/device/sync/{app}/changes?after=&limit=`: the records after
/// the cursor, by sequence, each with its unresolved leaves.
async fn pull(
    State(state): State<AppState>,
    device: DevicePrincipal,
    Ids(app): Ids<String>,
    query: Result<Query<PullQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let org_id = device.device.org_id;
    require_synced(&state, org_id, &app).await?;
    let Query(q) = query.map_err(|e| query_refused(&e))?;
    let limit = q.limit.unwrap_or(MAX_PULL_RECORDS);
    if !(1..=MAX_PULL_RECORDS).contains(&limit) {
        return Err(bad_query(format!("limit must be 1 to {MAX_PULL_RECORDS}")));
    }
    let after = match q.after.as_deref() {
        None => None,
        Some(text) => Some(
            decode_cursor(text)
                .ok_or_else(|| bad_query("after is not a cursor this server made"))?,
        ),
    };
    let after = after.map(|(seq, floor)| {
        (
            i64::try_from(seq).unwrap_or(i64::MAX),
            i64::try_from(floor).unwrap_or(i64::MAX),
        )
    });
    let page = state
        .store
        // The device's own provisional leaves come back to it: its change
        // is in conflict, and it must see so.
        .sync_pull(
            org_id,
            &app,
            after,
            i64::from(limit),
            PULL_PAGE_BYTES,
            device.device.id,
        )
        .await?;
    let (records, leaves, more, floor) = match page {
        PullPage::Page {
            records,
            leaves,
            more,
            floor,
        } => (records, leaves, more, floor),
        PullPage::Expired => {
            return Err(ApiError::new(
                StatusCode::GONE,
                ErrorCode::CursorExpired,
                "the cursor is older than what the server keeps: pull again from the start",
            ))
        }
        PullPage::Behind => {
            return Err(ApiError::new(
                StatusCode::GONE,
                ErrorCode::FeedBehind,
                "the server's feed is behind this cursor (restored from a backup?): pull again from the start and push again what it may have lost",
            ))
        }
    };
    let key = data_key(&state, org_id).await?;
    let mut by_record: HashMap<(String, String), Vec<Leaf>> = HashMap::new();
    for l in &leaves {
        by_record
            .entry((l.collection.clone(), l.id.clone()))
            .or_default()
            .push(open_leaf(&key, org_id, &app, l)?);
    }
    let mut out = Vec::with_capacity(records.len());
    for r in &records {
        let content = open_record(&key, org_id, &app, r)?;
        out.push(PulledRecord {
            conflicts: by_record
                .remove(&(r.collection.clone(), r.id.clone()))
                .unwrap_or_default(),
            collection: r.collection.clone(),
            id: r.id.clone(),
            seq: u64::try_from(r.seq).unwrap_or(0),
            revision: parse_revision(&r.revision)?,
            deleted: r.deleted,
            body: content.body,
            files: content.files,
            author: r.author.clone(),
        });
    }
    // The cursor carries the floor as it stands: a tombstone dropped after
    // this answer, above the cursor's sequence, expires it; one dropped
    // before does not (docs/protocol.md, section 8).
    let floor_now = u64::try_from(floor).unwrap_or(0);
    let cursor = match records.last() {
        // A complete page has everything up to the snapshot.
        Some(r) if !more => encode_cursor(u64::try_from(r.seq.max(floor)).unwrap_or(0), floor_now),
        Some(r) => encode_cursor(u64::try_from(r.seq).unwrap_or(0), floor_now),
        None => encode_cursor(
            after.map_or(floor_now, |(seq, _)| {
                u64::try_from(seq).unwrap_or(0).max(floor_now)
            }),
            floor_now,
        ),
    };
    Ok(Json(PullAnswer {
        records: out,
        cursor,
        complete: !more,
    })
    .into_response())
}

fn summary(r: &StoredRecord) -> Result<RecordSummary, ApiError> {
    Ok(RecordSummary {
        app: r.app.clone(),
        collection: r.collection.clone(),
        id: r.id.clone(),
        seq: u64::try_from(r.seq).unwrap_or(0),
        revision: parse_revision(&r.revision)?,
        deleted: r.deleted,
        author: r.author.clone(),
        device_id: r.device_id,
        provisional: r.provisional,
        conflicts: u32::try_from(r.leaves).unwrap_or(u32::MAX),
        updated_at: r.updated_at,
    })
}

const READERS: &[&str] = &["owner", "admin", "auditor"];
pub(super) const WRITERS: &[&str] = &["owner", "admin"];

fn filter_of(q: &RecordsQuery) -> Result<RecordFilter, ApiError> {
    let limit = q.limit.unwrap_or(1000);
    if !(1..=MAX_LIST_RECORDS).contains(&limit) {
        return Err(bad_query(format!("limit must be 1 to {MAX_LIST_RECORDS}")));
    }
    let after = match q.after.as_deref() {
        None => None,
        Some(text) => Some(
            decode_after(text)
                .ok_or_else(|| bad_query("after is not a next_after this server gave"))?,
        ),
    };
    Ok(RecordFilter {
        app: q.app.clone(),
        collection: q.collection.clone(),
        conflicts: q.conflicts,
        provisional: q.provisional,
        after,
        limit: i64::from(limit),
        bodies: false,
    })
}

/// `GET /v1/orgs/{org_id}/records` (owners, admins, auditors): summaries,
/// by app, collection and id, no body.
async fn list(
    State(state): State<AppState>,
    Ids(org_id): Ids<i64>,
    who: Principal,
    query: Result<Query<RecordsQuery>, QueryRejection>,
) -> Result<Json<RecordList>, ApiError> {
    require_role(&state, &who, org_id, READERS).await?;
    let Query(q) = query.map_err(|e| query_refused(&e))?;
    if q.format.as_deref().is_some_and(|f| f != "json") {
        return Err(bad_query("a listing is JSON: export for CSV"));
    }
    let filter = filter_of(&q)?;
    let limit = filter.limit;
    let rows = state.store.sync_records(org_id, filter).await?;
    let next_after = (i64::try_from(rows.len()).unwrap_or(i64::MAX) == limit)
        .then(|| {
            rows.last()
                .map(|r| encode_after(&r.app, &r.collection, &r.id))
        })
        .flatten();
    Ok(Json(RecordList {
        records: rows.iter().map(summary).collect::<Result<_, _>>()?,
        next_after,
    }))
}

/// One CSV field, quoted when it must be (RFC 4180).
fn csv_field(text: &str) -> String {
    // A field a spreadsheet would read as a formula (devices write these
    // strings) starts with a quote mark instead (OWASP's CSV injection).
    let text = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// A response body fed page by page from a task: an export of a million
/// records is never held whole in the server's memory.
pub(super) struct ChannelBody(
    pub(super) tokio::sync::mpsc::Receiver<Result<axum::body::Bytes, std::io::Error>>,
);

impl http_body::Body for ChannelBody {
    type Data = axum::body::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| c.map(http_body::Frame::data)))
    }
}

/// One exported record as a CSV line.
fn csv_line(d: &RecordDetail) -> String {
    let s = &d.summary;
    let body = d.body.as_ref().map(Value::to_string).unwrap_or_default();
    let fields = [
        csv_field(&s.app),
        csv_field(&s.collection),
        csv_field(&s.id),
        s.seq.to_string(),
        s.revision.to_string(),
        s.deleted.to_string(),
        csv_field(&s.author),
        s.device_id.map(|d| d.to_string()).unwrap_or_default(),
        s.provisional.to_string(),
        s.conflicts.to_string(),
        s.updated_at.to_string(),
        csv_field(&body),
    ];
    let mut line = fields.join(",");
    line.push('\n');
    line
}

/// `GET /v1/orgs/{org_id}/records/export?app=&format=json|csv` (owners,
/// admins, auditors): every record with its body, streamed a page at a
/// time (`{"records": [...]}` or CSV); audited when it starts. A failure
/// midway cuts the body short (the client sees a truncated document, and
/// the cause is logged).
async fn export(
    State(state): State<AppState>,
    Ids(org_id): Ids<i64>,
    who: Principal,
    query: Result<Query<RecordsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    require_role(&state, &who, org_id, READERS).await?;
    let Query(q) = query.map_err(|e| query_refused(&e))?;
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(bad_query("format must be json or csv")),
    };
    if let Some(app) = &q.app {
        check_app(app)?;
    }
    let key = data_key(&state, org_id).await?;
    let mut filter = filter_of(&RecordsQuery {
        limit: None,
        ..q.clone()
    })?;
    filter.bodies = true;
    record(
        &state,
        Some(org_id),
        format!("user:{}", who.user),
        "records_exported",
        json!({"app": q.app.as_deref().map(recorded), "format": if csv { "csv" } else { "json" }}),
    )
    .await?;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let store = state.store.clone();
    tokio::spawn(async move {
        let head = if csv {
            "app,collection,id,seq,revision,deleted,author,device_id,provisional,conflicts,updated_at,body\n"
        } else {
            "{\"records\": ["
        };
        if tx.send(Ok(head.into())).await.is_err() {
            return;
        }
        let mut first = true;
        loop {
            let rows = match store.sync_records(org_id, filter.clone()).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::error!(error = %e, "exporting records");
                    let _ = tx.send(Err(std::io::Error::other("export failed"))).await;
                    return;
                }
            };
            let full = i64::try_from(rows.len()).unwrap_or(i64::MAX) == filter.limit;
            let mut chunk = String::new();
            for r in &rows {
                let detail = open_record(&key, org_id, &r.app, r).and_then(|content| {
                    Ok(RecordDetail {
                        summary: summary(r)?,
                        body: content.body,
                        files: content.files,
                        base: r.base.as_deref().map(parse_revision).transpose()?,
                        leaves: Vec::new(),
                        duplicates: Vec::new(),
                    })
                });
                let Ok(detail) = detail else {
                    tracing::error!("exporting records: a record does not open");
                    let _ = tx.send(Err(std::io::Error::other("export failed"))).await;
                    return;
                };
                if csv {
                    chunk.push_str(&csv_line(&detail));
                } else {
                    if !first {
                        chunk.push(',');
                    }
                    first = false;
                    chunk.push_str(&serde_json::to_string(&detail).unwrap_or_default());
                }
            }
            if !chunk.is_empty() && tx.send(Ok(chunk.into())).await.is_err() {
                return;
            }
            match (full, rows.last()) {
                (true, Some(last)) => {
                    filter.after =
                        Some((last.app.clone(), last.collection.clone(), last.id.clone()))
                }
                _ => break,
            }
        }
        if !csv {
            let _ = tx.send(Ok("]}".into())).await;
        }
    });
    let content_type = if csv {
        "text/csv; charset=utf-8"
    } else {
        "application/json"
    };
    Ok((
        [(header::CONTENT_TYPE, content_type)],
        axum::body::Body::new(ChannelBody(rx)),
    )
        .into_response())
}

/// The path of one record.
#[derive(serde::Deserialize)]
struct RecordPath {
    org_id: i64,
    app: String,
    collection: String,
    id: String,
}

/// `GET /v1/orgs/{org_id}/records/{app}/{collection}/{id}` (owners,
/// admins, auditors): the body, the leaves and likely duplicates; the read
/// is audited.
async fn detail(
    State(state): State<AppState>,
    Ids(path): Ids<RecordPath>,
    who: Principal,
) -> Result<Json<RecordDetail>, ApiError> {
    let RecordPath {
        org_id,
        app,
        collection,
        id,
    } = path;
    require_role(&state, &who, org_id, READERS).await?;
    check_app(&app)?;
    let Some((r, leaves)) = state
        .store
        .sync_record(org_id, &app, &collection, &id)
        .await?
    else {
        return Err(super::not_found_here());
    };
    let key = data_key(&state, org_id).await?;
    let content = open_record(&key, org_id, &app, &r)?;
    let duplicates = match &r.body_mac {
        Some(mac) => {
            state
                .store
                .sync_duplicates(org_id, &app, &collection, &id, mac)
                .await?
        }
        None => Vec::new(),
    };
    record(
        &state,
        Some(org_id),
        format!("user:{}", who.user),
        "record_read",
        json!({"app": recorded(&app), "collection": recorded(&collection), "id": recorded(&id)}),
    )
    .await?;
    Ok(Json(RecordDetail {
        summary: summary(&r)?,
        body: content.body,
        files: content.files,
        base: r.base.as_deref().map(parse_revision).transpose()?,
        leaves: leaves
            .iter()
            .map(|l| open_leaf(&key, org_id, &app, l))
            .collect::<Result<_, _>>()?,
        duplicates,
    }))
}

/// `POST /v1/orgs/{org_id}/records/{app}/{collection}/{id}/resolve`
/// (owners, admins): one new revision made by the server that resolves
/// every leaf.
async fn resolve(
    State(state): State<AppState>,
    Ids(path): Ids<RecordPath>,
    who: Principal,
    super::Body(request): super::Body<ResolveRequest>,
) -> Result<Json<coffer_protocol::sync::Resolved>, ApiError> {
    let RecordPath {
        org_id,
        app,
        collection,
        id,
    } = path;
    require_role(&state, &who, org_id, WRITERS).await?;
    check_app(&app)?;
    let chosen = usize::from(request.keep.is_some())
        + usize::from(request.body.is_some())
        + usize::from(request.delete);
    if chosen != 1 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidBody,
            "give exactly one of keep, body and delete",
        ));
    }
    if let Some(body) = &request.body {
        if body.is_null() || coffer_protocol::sync::body_len(body) > MAX_RECORD_BODY {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::InvalidBody,
                "a body is a JSON value other than null, at most 4194304 bytes",
            ));
        }
    }
    let key = data_key(&state, org_id).await?;
    // The head may move between the read and the write (a push): read
    // again and retry a few times.
    for _ in 0..5 {
        let Some((r, leaves)) = state
            .store
            .sync_record(org_id, &app, &collection, &id)
            .await?
        else {
            return Err(super::not_found_here());
        };
        if leaves.is_empty() {
            return Err(not_in_conflict());
        }
        let now_leaves: Vec<String> = leaves.iter().map(|l| l.revision.clone()).collect();
        if let Some(seen) = &request.leaves {
            let seen: Vec<String> = seen.iter().map(ToString::to_string).collect();
            if !crate::store::same_leaves(&seen, &now_leaves) {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    ErrorCode::ConflictsChanged,
                    "the record's conflicts changed since you looked: show it again",
                ));
            }
        }
        let content = match (&request.keep, &request.body) {
            (Some(keep), _) => {
                let keep = keep.to_string();
                if keep == r.revision {
                    open_record(&key, org_id, &app, &r)?
                } else if let Some(leaf) = leaves.iter().find(|l| l.revision == keep) {
                    let leaf = open_leaf(&key, org_id, &app, leaf)?;
                    RecordContent {
                        body: leaf.body,
                        files: leaf.files,
                    }
                } else {
                    return Err(ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        ErrorCode::InvalidBody,
                        "keep names neither the head nor a leaf of the record",
                    ));
                }
            }
            (None, Some(body)) => RecordContent {
                body: Some(body.clone()),
                files: Vec::new(),
            },
            (None, None) => RecordContent {
                body: None,
                files: Vec::new(),
            },
        };
        let deleted = content.body.is_none();
        let files = content.files.iter().map(|f| f.sha256.clone()).collect();
        let seal_key = Arc::clone(&key);
        let (a, c, i) = (app.clone(), collection.clone(), id.clone());
        let resolution = Resolution {
            expected_head: r.revision.clone(),
            expected_leaves: now_leaves,
            deleted,
            author: format!("user:{}", who.user_id),
            files,
            seal: Box::new(move |revision: &Revision| {
                let rev = revision.to_string();
                let place = RecordPlace {
                    org_id,
                    app: &a,
                    collection: &c,
                    id: &i,
                    revision: &rev,
                };
                let sealed = seal_key
                    .seal(&place, &content)
                    .map_err(|e| crate::store::db_error("sealing a resolution")(&e))?;
                let mac = content.body.as_ref().map(|b| seal_key.body_mac(&a, &c, b));
                Ok((sealed, mac))
            }),
        };
        match state
            .store
            .sync_resolve(org_id, &app, &collection, &id, resolution)
            .await?
        {
            ResolveStored::NotFound => return Err(super::not_found_here()),
            ResolveStored::NotInConflict => return Err(not_in_conflict()),
            ResolveStored::Changed => continue,
            ResolveStored::Resolved(resolved) => {
                record(
                    &state,
                    Some(org_id),
                    format!("user:{}", who.user),
                    "record_resolved",
                    json!({
                        "app": recorded(&app),
                        "collection": recorded(&collection),
                        "id": recorded(&id),
                        "revision": resolved.revision.to_string(),
                        "resolved": resolved.resolved.len(),
                    }),
                )
                .await?;
                return Ok(Json(resolved));
            }
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        ErrorCode::BatchConflict,
        "the record keeps changing under the resolution: read it again and retry",
    ))
}

fn not_in_conflict() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        ErrorCode::NotInConflict,
        "the record has no conflict leaves",
    )
}

/// `GET /v1/orgs/{org_id}/sync/authors` (owners, admins, auditors).
async fn authors(
    State(state): State<AppState>,
    Ids(org_id): Ids<i64>,
    who: Principal,
) -> Result<Json<ProvisionalAuthors>, ApiError> {
    require_role(&state, &who, org_id, READERS).await?;
    Ok(Json(ProvisionalAuthors {
        authors: state.store.sync_authors(org_id).await?,
    }))
}

/// `POST /v1/orgs/{org_id}/sync/authors/bind` (owners, admins): publishes
/// the author's provisional records of that device.
async fn bind(
    State(state): State<AppState>,
    Ids(org_id): Ids<i64>,
    who: Principal,
    super::Body(request): super::Body<BindAuthor>,
) -> Result<Json<AuthorBound>, ApiError> {
    require_role(&state, &who, org_id, WRITERS).await?;
    if request.author.is_empty() || request.author.len() > MAX_AUTHOR {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidBody,
            "an author is 1 to 64 bytes",
        ));
    }
    match state
        .store
        .sync_bind(org_id, request.device_id, &request.author, request.user_id)
        .await?
    {
        BindStored::NoDevice => Err(super::not_found_here()),
        BindStored::NoUser => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::NotInOrganization,
            "user_id is not a member of the organization",
        )),
        BindStored::Bound {
            published,
            duplicates,
        } => {
            record(
                &state,
                Some(org_id),
                format!("user:{}", who.user),
                "author_bound",
                json!({
                    "device_id": request.device_id,
                    "author": recorded(&request.author),
                    "user_id": request.user_id,
                    "published": published,
                    "duplicates": duplicates.len(),
                }),
            )
            .await?;
            Ok(Json(AuthorBound {
                published,
                duplicates,
            }))
        }
    }
}
