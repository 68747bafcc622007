//! The device-facing control: signed policies, key escrow, remote wipe
//! and check-in (docs/protocol.md). Admins act through their sessions;
//! devices through their tokens.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use coffer_protocol::admin::{OrderWipe, WipeOrderStatus, WipeOrdered, WipeOrders, WipeState};
use coffer_protocol::device::{
    AcknowledgeWipe, CheckIn, CheckInAnswer, DepositEscrow, DevicePolicy, EscrowReleased,
    ReleaseEscrow, WipeOrder, WipeScope, ESCROW_KEY_LEN,
};
use coffer_protocol::policy::{
    PolicyHistory, PolicyHistoryQuery, PolicyKey, PublishRequest, PublishedPolicy, SignedPolicy,
    MAX_POLICY_HISTORY,
};
use coffer_protocol::{Endpoint, ErrorCode, WireSecret};
use secrecy::ExposeSecret;
use serde_json::json;
use zeroize::Zeroizing;

use super::{
    check_name, not_found_here, record, require_role, AnyDevice, ApiError, AppState, Body,
    DevicePrincipal, Ids, Principal, USER_HEADER,
};
use crate::policy::{Document, SigningKey, FORMAT};
use crate::store::{NewPolicy, PolicyRecord, SealedKind, SigningKeyRecord, WipeEnd, WipeEnded};

/// Every role of an organization.
const ANY_MEMBER: &[&str] = &["owner", "admin", "member", "auditor"];

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route("/v1/orgs/{org_id}/policy-key", get(policy_key))
        .route(
            "/v1/orgs/{org_id}/policies",
            get(policy_history).post(publish_policy),
        )
        .route("/v1/orgs/{org_id}/policies/latest", get(latest_policy))
        .route(
            "/v1/orgs/{org_id}/devices/{device_id}/wipe",
            post(order_wipe),
        )
        .route(
            "/v1/orgs/{org_id}/devices/{device_id}/wipes",
            get(list_wipes),
        )
        .route(
            "/v1/orgs/{org_id}/devices/{device_id}/wipes/{order_id}/cancel",
            post(cancel_wipe),
        )
        .route(DevicePolicy::PATH, get(device_policy))
        .route(DepositEscrow::PATH, put(deposit_escrow))
        .route(ReleaseEscrow::PATH, post(release_escrow))
        .route(CheckIn::PATH, post(check_in))
        .route(AcknowledgeWipe::PATH, post(acknowledge_wipe))
}

fn internal(what: &str) -> ApiError {
    tracing::error!(what, "key handling failed");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Internal,
        "the server failed; the cause is in its log",
    )
}

fn sealing_failed(e: crate::keys::KeyError) -> ApiError {
    // The key id in the message is safe to log; key material never is in it.
    tracing::error!(error = %e, "a sealed value could not be opened or made");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Internal,
        "the server failed; the cause is in its log",
    )
}

/// The organization's signing key record, made (and sealed) on first use:
/// at setup, or for an organization that predates signed policies.
pub(super) async fn signing_key_record(
    state: &AppState,
    org_id: i64,
) -> Result<SigningKeyRecord, ApiError> {
    if let Some(key) = state.store.org_signing_key(org_id).await? {
        return Ok(key);
    }
    let key = SigningKey::generate().map_err(|_| internal("randomness"))?;
    let record = SigningKeyRecord {
        public_key: hex::encode(key.public_key()),
        sealed_seed: state
            .keys
            .seal(&SealedKind::OrgSigningKey.context(org_id), key.seed())
            .map_err(sealing_failed)?,
    };
    state.store.add_org_signing_key(org_id, &record).await?;
    // Another process may have been first: what is stored wins.
    state
        .store
        .org_signing_key(org_id)
        .await?
        .ok_or_else(|| internal("signing key vanished"))
}

async fn signing_key(state: &AppState, org_id: i64) -> Result<SigningKey, ApiError> {
    let record = signing_key_record(state, org_id).await?;
    let seed = state
        .keys
        .open(
            &SealedKind::OrgSigningKey.context(org_id),
            &record.sealed_seed,
        )
        .map_err(sealing_failed)?;
    SigningKey::from_seed(&seed).ok_or_else(|| internal("signing key seed length"))
}

/// `GET /v1/orgs/{org_id}/policy-key` (any member): the key devices pin.
async fn policy_key(
    State(state): State<AppState>,
    Ids(org_id): Ids<i64>,
    who: Principal,
) -> Result<Json<PolicyKey>, ApiError> {
    require_role(&state, &who, org_id, ANY_MEMBER).await?;
    let record = signing_key_record(&state, org_id).await?;
    Ok(Json(PolicyKey {
        organization_id: org_id,
        algorithm: "ed25519".to_owned(),
        public_key: record.public_key,
    }))
}

fn signed_policy(policy: PolicyRecord, public_key: String) -> SignedPolicy {
    SignedPolicy {
        version: policy.version,
        document: policy.document,
        signature: policy.signature,
        public_key,
        published_at: Some(policy.published_at),
    }
}

/// `POST /v1/orgs/{org_id}/policies` (owners, admins): signs and
/// publishes a policy version above every published one.
async fn publish_policy(
    State(state): State<AppState>,
    Ids(org_id): Ids<i64>,
    who: Principal,
    Body(request): Body<PublishRequest>,
) -> Result<(StatusCode, Json<SignedPolicy>), ApiError> {
    require_role(&state, &who, org_id, &["owner", "admin"]).await?;
    // Checked before anything is signed, stored or audited: a version
    // out of range (docs/formats/policy.md) and rules that make no sense.
    request.check().map_err(|why| {
        let code = match why {
            coffer_protocol::policy::PublishRefusal::InvalidRules(_) => ErrorCode::InvalidPolicy,
            _ => ErrorCode::InvalidBody,
        };
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, why.to_string())
    })?;
    let key = signing_key(&state, org_id).await?;
    let document = Document {
        format: FORMAT.to_owned(),
        organization_id: org_id,
        version: request.version,
        issued_at: crate::store::now_unix(),
        rules: request.rules,
    }
    .to_canonical()
    .map_err(|_| internal("canonical encoding"))?;
    let signature = hex::encode(key.sign(&document));
    let document = String::from_utf8(document).map_err(|_| internal("utf-8"))?;
    state
        .store
        .publish_policy(&NewPolicy {
            org_id,
            version: request.version,
            document: document.clone(),
            signature: signature.clone(),
            published_by: who.user_id,
        })
        .await?;
    record(
        &state,
        Some(org_id),
        format!("user:{}", who.user),
        "policy_published",
        json!({"version": request.version}),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(SignedPolicy {
            version: request.version,
            document,
            signature,
            public_key: hex::encode(key.public_key()),
            // The store sets the time; the publisher has no use for it.
            published_at: None,
        }),
    ))
}

async fn latest(state: &AppState, org_id: i64) -> Result<Json<SignedPolicy>, ApiError> {
    let Some(policy) = state.store.latest_policy(org_id).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NoPolicy,
            "no policy has been published for this organization",
        ));
    };
    let key = signing_key_record(state, org_id).await?;
    Ok(Json(signed_policy(policy, key.public_key)))
}

/// `GET /v1/orgs/{org_id}/policies/latest` (any member).
async fn latest_policy(
    State(state): State<AppState>,
    Ids(org_id): Ids<i64>,
    who: Principal,
) -> Result<Json<SignedPolicy>, ApiError> {
    require_role(&state, &who, org_id, ANY_MEMBER).await?;
    latest(&state, org_id).await
}

/// `GET /v1/orgs/{org_id}/policies?limit=N` (any member): the latest
/// versions, newest first.
async fn policy_history(
    State(state): State<AppState>,
    Ids(org_id): Ids<i64>,
    who: Principal,
    query: Result<Query<PolicyHistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<PolicyHistory>, ApiError> {
    require_role(&state, &who, org_id, ANY_MEMBER).await?;
    let Query(query) = query.map_err(|e| super::query_refused(&e))?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=MAX_POLICY_HISTORY).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidQuery,
            format!("limit must be 1 to {MAX_POLICY_HISTORY}"),
        ));
    }
    let key = signing_key_record(&state, org_id).await?;
    let policies = state.store.policy_history(org_id, limit).await?;
    Ok(Json(PolicyHistory {
        public_key: key.public_key,
        policies: policies
            .into_iter()
            .map(|(p, published_by)| PublishedPolicy {
                version: p.version,
                document: p.document,
                signature: p.signature,
                published_at: p.published_at,
                published_by,
            })
            .collect(),
    }))
}

/// `GET /v1/device/policy`: the latest signed policy of the device's
/// organization. The device verifies it against the key it pinned, not
/// the `public_key` returned beside it.
async fn device_policy(
    State(state): State<AppState>,
    device: DevicePrincipal,
) -> Result<Json<SignedPolicy>, ApiError> {
    latest(&state, device.device.org_id).await
}

/// The escrow key from its hex form: 16 to 64 bytes (the device's escrow
/// slot decides its form; coffer's is a recovery key's text).
fn escrow_bytes(text: &str) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    let key = Zeroizing::new(hex::decode(text).unwrap_or_default());
    if !ESCROW_KEY_LEN.contains(&key.len()) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidEscrowKey,
            "escrow_key must be 16 to 64 bytes in hex (32 to 128 hex digits)",
        ));
    }
    Ok(key)
}

/// `PUT /v1/device/escrow`: the device deposits (or replaces) the key of
/// its escrow slot. Refused while a whole-device wipe is pending.
async fn deposit_escrow(
    State(state): State<AppState>,
    device: DevicePrincipal,
    Body(request): Body<DepositEscrow>,
) -> Result<StatusCode, ApiError> {
    let key = escrow_bytes(request.escrow_key.expose_secret())?;
    let id = device.device.id;
    let sealed = state
        .keys
        .seal(&SealedKind::Escrow.context(id), key.as_slice())
        .map_err(sealing_failed)?;
    state.store.deposit_escrow(id, &sealed).await?;
    record(
        &state,
        Some(device.device.org_id),
        format!("device:{id}"),
        "escrow_deposited",
        json!({}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/device/escrow/release`: with the device's token and a user's
/// session (`X-User-Token`), releases the device's escrow key if the user
/// belongs to the device's organization and no wipe of their slot on this
/// device is pending. Every release and every refusal is audited.
async fn release_escrow(
    State(state): State<AppState>,
    AnyDevice(device): AnyDevice,
    headers: axum::http::HeaderMap,
) -> Result<Json<EscrowReleased>, ApiError> {
    // By its device token or its release token (a locked device has only
    // the latter), but never for a revoked device or a suspended
    // organization's.
    if device.device.revoked {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::InvalidToken,
            "the token is not valid",
        ));
    }
    if device.device.suspended {
        return Err(super::suspended());
    }
    let org_id = device.device.org_id;
    let device_id = device.device.id;
    // Each refusal is audited: a device (or a thief with its token) is
    // held to the per-address budget of attempts, and past it only the
    // first refusal of the window is recorded.
    let budget = format!("release-device:{device_id}");
    let limit = state.login_limits.per_address;
    if let Some(over) = super::count_attempt(&state, &budget, limit, "escrow release").await? {
        if over.first {
            record(
                &state,
                Some(org_id),
                format!("device:{device_id}"),
                "escrow_release_rate_limited",
                json!({"device_id": device_id}),
            )
            .await?;
        }
        return Err(over.refusal);
    }
    let refused = |actor: String, reason: &'static str, error: ApiError| {
        let state = state.clone();
        async move {
            record(
                &state,
                Some(org_id),
                actor,
                "escrow_release_refused",
                json!({"device_id": device_id, "reason": reason}),
            )
            .await?;
            Err::<Json<EscrowReleased>, ApiError>(error)
        }
    };
    let user = match Principal::from_headers(&headers, &state, USER_HEADER).await {
        Ok(user) => user,
        Err(error) => {
            return refused(
                format!("device:{device_id}"),
                "no valid user session",
                error,
            )
            .await
        }
    };
    let actor = format!("user:{}", user.user);
    match state.store.member_role(org_id, user.user_id).await? {
        None => {
            let error = ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::NotInOrganization,
                "this user does not belong to the device's organization",
            );
            return refused(actor, "not a member", error).await;
        }
        // Auditors review; they do not work on the organization's devices,
        // and a released key opens a device's data (docs/server.md, roles).
        Some(member) if member.role == "auditor" => {
            let error = ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                "auditors do not log in on the organization's devices: ask an admin for a member's account",
            );
            return refused(actor, "auditor", error).await;
        }
        Some(_) => {}
    }
    let orders = state
        .store
        .wipe_orders(org_id, device_id)
        .await?
        .unwrap_or_default();
    if orders
        .iter()
        .any(|o| o.is_pending() && o.user.as_deref().is_none_or(|u| u == user.user))
    {
        let error = ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::WipePending,
            "a wipe of this device or of this user's slot on it is pending: the device must carry it out first",
        );
        return refused(actor, "wipe pending", error).await;
    }
    let Some(sealed) = state.store.escrow(device_id).await? else {
        let error = ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NoEscrow,
            "the server holds no escrow key for this device (never deposited, or deleted by a wipe order or revocation)",
        );
        return refused(actor, "no escrow key", error).await;
    };
    let key = state
        .keys
        .open(&SealedKind::Escrow.context(device_id), &sealed)
        .map_err(sealing_failed)?;
    // The user's name, as a local author on this device, is verified from
    // now on (record sync: their records are not provisional).
    state
        .store
        .record_escrow_release(device_id, user.user_id)
        .await?;
    record(
        &state,
        Some(org_id),
        actor,
        "escrow_released",
        json!({"device_id": device_id, "user_id": user.user_id}),
    )
    .await?;
    // A release that worked spends nothing of the budget: a shared device
    // serves many logins a shift.
    state.store.clear_hits(&budget).await?;
    Ok(Json(EscrowReleased {
        escrow_key: WireSecret::new(hex::encode(&*key)),
        user_id: user.user_id,
        user: user.user,
    }))
}

/// `POST /v1/orgs/{org_id}/devices/{device_id}/wipe` (owners, admins):
/// orders a wipe of the whole device (its escrow key is deleted at once)
/// or of one user's slot on it.
async fn order_wipe(
    State(state): State<AppState>,
    Ids((org_id, device_id)): Ids<(i64, i64)>,
    who: Principal,
    Body(request): Body<OrderWipe>,
) -> Result<(StatusCode, Json<WipeOrdered>), ApiError> {
    require_role(&state, &who, org_id, &["owner", "admin"]).await?;
    if let Some(user) = &request.user {
        check_name("the user's name", user)?;
    }
    let Some(id) = state
        .store
        .order_wipe(org_id, device_id, request.user.as_deref(), who.user_id)
        .await?
    else {
        return Err(not_found_here());
    };
    state.standing_changed();
    let scope = scope_of(request.user.as_deref());
    record(
        &state,
        Some(org_id),
        format!("user:{}", who.user),
        "wipe_ordered",
        json!({"order_id": id, "device_id": device_id, "scope": scope, "user": request.user}),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(WipeOrdered {
            id,
            device_id,
            scope,
            user: request.user,
        }),
    ))
}

/// What an order for `user` (none: the whole device) covers.
fn scope_of(user: Option<&str>) -> WipeScope {
    match user {
        Some(_) => WipeScope::User,
        None => WipeScope::Device,
    }
}

fn order_status(order: crate::store::WipeOrder) -> WipeOrderStatus {
    let state = match (order.acknowledged_at, order.cancelled_at) {
        (Some(_), _) => WipeState::Acknowledged,
        (None, Some(_)) => WipeState::Cancelled,
        (None, None) => WipeState::Pending,
    };
    WipeOrderStatus {
        id: order.id,
        device_id: order.device_id,
        scope: scope_of(order.user.as_deref()),
        user: order.user,
        state,
        ordered_by: order.ordered_by,
        ordered_at: order.ordered_at,
        acknowledged_at: order.acknowledged_at,
        cancelled_at: order.cancelled_at,
    }
}

/// `GET /v1/orgs/{org_id}/devices/{device_id}/wipes` (owners, admins,
/// auditors): every wipe order of the device and its state.
async fn list_wipes(
    State(state): State<AppState>,
    Ids((org_id, device_id)): Ids<(i64, i64)>,
    who: Principal,
) -> Result<Json<WipeOrders>, ApiError> {
    require_role(&state, &who, org_id, &["owner", "admin", "auditor"]).await?;
    let orders = state
        .store
        .wipe_orders(org_id, device_id)
        .await?
        .ok_or_else(not_found_here)?;
    Ok(Json(WipeOrders {
        orders: orders.into_iter().map(order_status).collect(),
    }))
}

fn wipe_end_error(ended: WipeEnded) -> Option<ApiError> {
    match ended {
        WipeEnded::Ended => None,
        WipeEnded::NotFound => Some(not_found_here()),
        WipeEnded::AlreadyAcknowledged => Some(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::WipeAcknowledged,
            "the device has already carried out this wipe",
        )),
        WipeEnded::AlreadyCancelled => Some(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::WipeCancelled,
            "this wipe order was cancelled",
        )),
    }
}

/// `POST /v1/orgs/{org_id}/devices/{device_id}/wipes/{order_id}/cancel`
/// (owners, admins): calls off a pending order. A cancelled whole-device
/// order does not bring the escrow key back: the device deposits a new one
/// at its next check-in.
async fn cancel_wipe(
    State(state): State<AppState>,
    Ids((org_id, device_id, order_id)): Ids<(i64, i64, i64)>,
    who: Principal,
) -> Result<StatusCode, ApiError> {
    require_role(&state, &who, org_id, &["owner", "admin"]).await?;
    // The order must be of a device of this organization.
    if state.store.wipe_orders(org_id, device_id).await?.is_none() {
        return Err(not_found_here());
    }
    let ended = state
        .store
        .end_wipe(device_id, order_id, WipeEnd::Cancel)
        .await?;
    if let Some(error) = wipe_end_error(ended) {
        return Err(error);
    }
    state.standing_changed();
    record(
        &state,
        Some(org_id),
        format!("user:{}", who.user),
        "wipe_cancelled",
        json!({"order_id": order_id, "device_id": device_id}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/device/check-in`: records the device as seen and answers with
/// its pending wipe orders, the latest policy version and the server time.
/// A revoked device may still check in, so that a wipe ordered before the
/// revocation reaches it.
async fn check_in(
    State(state): State<AppState>,
    crate::client_addr::ClientAddr(client): crate::client_addr::ClientAddr,
    AnyDevice(device): AnyDevice,
) -> Result<Json<CheckInAnswer>, ApiError> {
    let checked = state
        .store
        .check_in(device.device.id, &client.to_string())
        .await?;
    Ok(Json(CheckInAnswer {
        server_time: crate::store::now_unix(),
        device_id: device.device.id,
        revoked: device.device.revoked,
        policy_version: checked.policy_version,
        escrow_present: checked.escrow_present,
        wipe_orders: checked
            .wipe_orders
            .into_iter()
            .map(|o| WipeOrder {
                id: o.id,
                scope: scope_of(o.user.as_deref()),
                user: o.user,
                ordered_at: o.ordered_at,
            })
            .collect(),
    }))
}

/// `POST /v1/device/wipes/{order_id}/ack`: the device reports a wipe
/// carried out (a retry is answered the same way).
async fn acknowledge_wipe(
    State(state): State<AppState>,
    Ids(order_id): Ids<i64>,
    AnyDevice(device): AnyDevice,
) -> Result<StatusCode, ApiError> {
    let ended = state
        .store
        .end_wipe(device.device.id, order_id, WipeEnd::Acknowledge)
        .await?;
    if let Some(error) = wipe_end_error(ended) {
        return Err(error);
    }
    record(
        &state,
        Some(device.device.org_id),
        format!("device:{}", device.device.id),
        "wipe_acknowledged",
        json!({"order_id": order_id}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
