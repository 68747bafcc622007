//! Device data delivery: devices post batches of readings (JSON or CBOR,
//! docs/formats/data-batch.md); admins query and export them.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use coffer_protocol::admin::ReadingsQuery;
use coffer_protocol::device::Deliver;
use coffer_protocol::{Endpoint, ErrorCode};
use serde_json::json;

use super::{record, require_role, ApiError, AppState, DevicePrincipal, Ids, Principal, MAX_BODY};
use crate::data::{Batch, BatchError, DeliveryAnswer, ReadingsPage};
use crate::store::{BatchStored, NewBatch, ReadingQuery};

/// Most rows one query returns; export pages through more.
pub const MAX_QUERY_ROWS: i64 = 10_000;

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route(Deliver::PATH, post(deliver))
        .route("/v1/orgs/{org_id}/data", get(query))
}

/// `POST /v1/device/data`: one batch, `application/json` or
/// `application/cbor`. 201 when stored, 200 with `duplicate: true` for a
/// retry of a stored batch, 409 for another batch reusing its id.
async fn deliver(
    State(state): State<AppState>,
    device: DevicePrincipal,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<DeliveryAnswer>), ApiError> {
    let body = body.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::BodyTooLarge,
            format!("request bodies are limited to {MAX_BODY} bytes"),
        )
    })?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .unwrap_or_default();
    let decoded = match content_type {
        "application/json" => Batch::from_json(&body),
        "application/cbor" => Batch::from_cbor(&body),
        _ => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMediaType,
                "send the batch as application/json or application/cbor",
            ))
        }
    };
    let batch = decoded
        .and_then(|b| b.check().map(|()| b))
        .map_err(|e: BatchError| {
            // The message is the protocol crate's own, bounded and free of
            // the body's bytes and of the parser's words.
            let (status, code) = if e.is_malformed() {
                (StatusCode::BAD_REQUEST, ErrorCode::MalformedBatch)
            } else {
                (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidBatch)
            };
            ApiError::new(status, code, e.to_string())
        })?;
    let digest = batch.digest();
    let outcome = state
        .store
        .store_batch(NewBatch {
            org_id: device.device.org_id,
            device_id: device.device.id,
            batch_id: batch.batch_id.clone(),
            digest,
            bytes: i64::try_from(body.len()).unwrap_or(i64::MAX),
            readings: batch
                .readings
                .iter()
                .map(|r| (r.at, r.name.clone(), r.value.to_string()))
                .collect(),
        })
        .await?;
    match outcome {
        BatchStored::Stored(n) => Ok((
            StatusCode::CREATED,
            Json(DeliveryAnswer {
                batch_id: batch.batch_id,
                // A count of rows: never negative.
                stored: u64::try_from(n).unwrap_or(0),
                duplicate: false,
            }),
        )),
        BatchStored::Duplicate => Ok((
            StatusCode::OK,
            Json(DeliveryAnswer {
                batch_id: batch.batch_id,
                stored: 0,
                duplicate: true,
            }),
        )),
        BatchStored::Conflict => Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::BatchConflict,
            "another batch with different readings was stored under this batch_id",
        )),
    }
}

/// `GET /v1/orgs/{org_id}/data` (owners, admins, auditors): readings by
/// device, time range (`from` inclusive, `to` exclusive, on the reading's
/// time) and name, in id order; `after` and `next_after` page through.
/// `format=csv` answers CSV.
async fn query(
    State(state): State<AppState>,
    Ids(org_id): Ids<i64>,
    who: Principal,
    params: Result<Query<ReadingsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    require_role(&state, &who, org_id, &["owner", "admin", "auditor"]).await?;
    let Query(q) = params.map_err(|e| super::query_refused(&e))?;
    let limit = q.limit.unwrap_or(1000);
    if !(1..=MAX_QUERY_ROWS).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidQuery,
            format!("limit must be 1 to {MAX_QUERY_ROWS}"),
        ));
    }
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidQuery,
                "format must be json or csv",
            ))
        }
    };
    let rows = state
        .store
        .readings(
            org_id,
            ReadingQuery {
                device_id: q.device,
                from: q.from,
                to: q.to,
                name: q.name,
                after: q.after,
                limit,
                newest: q.newest == Some(true),
            },
        )
        .await?;
    record(
        &state,
        Some(org_id),
        format!("user:{}", who.user),
        "data_queried",
        json!({"device": q.device, "from": q.from, "to": q.to, "rows": rows.len()}),
    )
    .await?;
    let next_after = (q.newest != Some(true)
        && i64::try_from(rows.len()).unwrap_or(i64::MAX) == limit)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    if csv {
        let mut response = (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            crate::data::to_csv(&rows),
        )
            .into_response();
        if let Some(next) = next_after {
            if let Ok(value) = axum::http::HeaderValue::from_str(&next.to_string()) {
                response.headers_mut().insert("x-next-after", value);
            }
        }
        return Ok(response);
    }
    Ok(Json(ReadingsPage {
        readings: rows,
        next_after,
    })
    .into_response())
}
