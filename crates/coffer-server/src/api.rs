//! The HTTP API.
//!
//! Every error is JSON, `{"error": {"code": "...", "message": "..."}}`, with
//! a stable `code` for programs and a message for people; the cause of a
//! server-side failure is logged, never sent. Request bodies are limited to
//! [`MAX_BODY`]. A credential in the query string (where proxies and logs
//! keep it) is refused before anything else looks at the request.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use coffer_protocol::admin::{
    AddUser, AuditEventView, AuditEvents, AuditQuery, AuditReport, ChangePassword, DeviceList,
    DeviceListQuery, DeviceSummary, EnrollmentCode, MeAnswer, MemberList, MemberSummary,
    Membership, NewEnrollmentCode, SetRole, Setup, SetupAnswer, UsageQuery, UsageReport, UsageRow,
    UserAdded, MAX_AUDIT_PAGE, MAX_DEVICE_PAGE,
};
use coffer_protocol::device::{DeviceTokenRotated, Enroll, EnrollAnswer, RotateDeviceToken};
use coffer_protocol::session::{Login, LoginAnswer, Logout};
use coffer_protocol::{Endpoint, ErrorBody, ErrorCode, WireSecret};
use secrecy::ExposeSecret;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::client_addr::ClientAddr;
use crate::store::{NewOwner, Store, StoreError};
use crate::untrusted::{recorded, Untrusted};

/// Largest request body accepted, in bytes (the protocol's limit).
pub const MAX_BODY: usize = coffer_protocol::MAX_REQUEST_BODY;

/// Shared by every request.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The storage.
    pub store: Store,
    /// How long a login session lasts.
    pub session_ttl: std::time::Duration,
    /// A hash checked when a login names no user, so that unknown and known
    /// users take the same time to refuse.
    pub decoy_hash: std::sync::Arc<String>,
    /// Brute-force limits on login.
    pub login_limits: LoginLimits,
    /// This process's request counters.
    pub metrics: crate::metrics::Metrics,
    /// The master key (and the previous one during a rotation): seals
    /// signing and escrow keys at rest.
    pub keys: std::sync::Arc<crate::keys::Keyring>,
    /// Proxies whose forwarding header names the client (none by default).
    pub trusted_proxies: crate::client_addr::TrustedProxies,
    /// The organizations' record data keys unsealed so far.
    pub data_keys: std::sync::Arc<crate::record_seal::DataKeys>,
    /// Files sync: the blob storage, the limits, uploads in progress.
    pub files: std::sync::Arc<crate::files::Files>,
    /// MQTT delivery: the managed broker, when configured.
    pub mqtt: Option<std::sync::Arc<crate::mqtt::Mqtt>>,
}

impl AppState {
    /// Tells the MQTT reconciler that a device's standing may have
    /// changed (a revocation, a suspension, a wipe order or its cancel).
    pub(crate) fn standing_changed(&self) {
        if let Some(mqtt) = &self.mqtt {
            mqtt.changed();
        }
    }
}

pub use coffer_protocol::{AUTH_HEADER, USER_HEADER};

mod control;
pub(crate) mod delivery;
mod files;
mod mqtt;
mod sync;
mod tenants;

pub use delivery::MAX_QUERY_ROWS;

/// An error answer: status, stable code, message for people.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    retry_after: Option<i64>,
    /// Headers of the answer beyond the JSON (`Upload-Offset` of a 409,
    /// `Content-Range` of a 416): names and values this server writes.
    headers: Vec<(&'static str, String)>,
}

impl ApiError {
    fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            headers: Vec::new(),
        }
    }

    /// The same answer with the header `name: value` too.
    fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody::new(self.code, self.message);
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(value) = axum::http::HeaderValue::from_str(&secs.to_string()) {
                response
                    .headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, value);
            }
        }
        for (name, value) in self.headers {
            if let Ok(value) = axum::http::HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}

/// The fixed rate-limit window a request falls in.
struct Window {
    start: i64,
    ends_in: i64,
}

impl Window {
    fn now(limits: &LoginLimits) -> Window {
        let length = i64::try_from(limits.window.as_secs())
            .unwrap_or(i64::MAX)
            .max(1);
        let now = crate::store::now_unix();
        let start = now - now.rem_euclid(length);
        Window {
            start,
            ends_in: start + length - now,
        }
    }

    /// The 429 answer, with Retry-After at the window's end.
    fn refusal(&self, what: &str) -> ApiError {
        let mut refused = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            format!("too many {what} attempts: wait and try again (see Retry-After)"),
        );
        refused.retry_after = Some(self.ends_in);
        refused
    }
}

/// An attempt counted past its budget: the 429 to answer, and whether it
/// is the window's first refusal (the one worth recording: a flood past a
/// limit leaves one audit row and one log line, not one per request).
struct OverBudget {
    refusal: ApiError,
    first: bool,
}

/// Counts one attempt under `key` in the current window (atomically, for
/// every server process); past `limit`, what to answer. Every rate limit
/// of the API goes through here.
async fn count_attempt(
    state: &AppState,
    key: &str,
    limit: i64,
    what: &'static str,
) -> Result<Option<OverBudget>, ApiError> {
    let window = Window::now(&state.login_limits);
    let count = state.store.hit(key, window.start).await?;
    Ok((count > limit).then(|| OverBudget {
        refusal: window.refusal(what),
        first: count == limit + 1,
    }))
}

/// How many login attempts a window allows.
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    /// Attempts per user name.
    pub per_account: i64,
    /// Attempts per client address.
    pub per_address: i64,
    /// The window.
    pub window: std::time::Duration,
}

impl Default for LoginLimits {
    /// 10 attempts per account and 50 per address in 15 minutes.
    fn default() -> Self {
        LoginLimits {
            per_account: 10,
            per_address: 50,
            window: std::time::Duration::from_secs(15 * 60),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InvalidSetupToken => ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::InvalidSetupToken,
                "the setup token is wrong, spent, or replaced by a newer one (restart the server for a new one)",
            ),
            StoreError::AlreadyBootstrapped => ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::AlreadySetUp,
                "the server is already set up",
            ),
            StoreError::InvalidCode => ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::InvalidCode,
                "the enrollment code is wrong, used or expired: ask an admin for a new one",
            ),
            StoreError::VersionNotNewer { current } => ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::VersionNotNewer,
                format!("policy version {current} is already published: versions only go up"),
            ),
            StoreError::VersionTooFar { latest } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::InvalidBody,
                format!(
                    "a version may be at most {} above the latest published ({latest})",
                    coffer_protocol::policy::MAX_POLICY_VERSION_STEP
                ),
            ),
            StoreError::NotSuspended => ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::NotSuspended,
                "suspend the organization first: only a suspended organization may be deleted",
            ),
            StoreError::DeviceRevoked => ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::InvalidToken,
                "the token is not valid",
            ),
            StoreError::WipePending => ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::WipePending,
                "a wipe of this device is pending: check in and carry it out",
            ),
            StoreError::Exists(what) => {
                ApiError::new(StatusCode::CONFLICT, ErrorCode::Exists, format!("{what} already exists"))
            }
            other => {
                // The cause goes to the log; the client learns only that it failed.
                tracing::error!(error = %other, "storage failure");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Internal,
                    "the server failed; the cause is in its log",
                )
            }
        }
    }
}

/// A JSON body, or a typed 4xx saying what is wrong with it.
struct Body<T>(T);

impl<S, T> axum::extract::FromRequest<S> for Body<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// Ids in the path, or a typed 404 (a malformed id names nothing).
struct Ids<T>(T);

impl<S, T> axum::extract::FromRequestParts<S> for Ids<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Ids(value)),
            Err(_) => Err(not_found_here()),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::NotJson,
            "send the body as application/json",
        ),
        JsonRejection::JsonSyntaxError(_) => ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::MalformedJson,
            "the body is not valid JSON",
        ),
        JsonRejection::JsonDataError(e) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidBody,
            format!(
                "the body does not have the expected fields: {}",
                what_serde_refused(&e.body_text())
            ),
        ),
        JsonRejection::BytesRejection(_) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::BodyTooLarge,
            format!("request bodies are limited to {MAX_BODY} bytes"),
        ),
        _ => ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "the request body was refused",
        ),
    }
}

/// What a serde refusal of a body or query was about, in words that quote
/// nothing the client sent: serde's own text names the client's unknown
/// field or wrong value in full (a 60,000-character field name came back
/// twice). Only what comes from this API's own types is kept — the name of
/// a missing field, the list of the fields or values it takes — bounded.
fn what_serde_refused(serde_text: &str) -> String {
    // serde's messages put the client's part first and this API's after
    // "expected": "unknown field `…`, expected one of `a`, `b`".
    let ours = |text: &str| {
        text.rsplit_once(", expected ")
            .map(|(_, expected)| {
                let expected = expected.split(" at line ").next().unwrap_or(expected);
                format!(
                    " (expected {})",
                    crate::untrusted::Untrusted::new(expected).at_most(160)
                )
            })
            .unwrap_or_default()
    };
    if let Some(rest) = serde_text.split("missing field `").nth(1) {
        let field = rest.split('`').next().unwrap_or("");
        return format!(
            "the field `{}` is missing",
            crate::untrusted::Untrusted::new(field).at_most(40)
        );
    }
    if serde_text.contains("unknown field") {
        return format!("a field this endpoint does not take{}", ours(serde_text));
    }
    if serde_text.contains("unknown variant") {
        return format!("a value this field does not take{}", ours(serde_text));
    }
    if serde_text.contains("invalid type") || serde_text.contains("invalid value") {
        return format!("a field of the wrong type or value{}", ours(serde_text));
    }
    if serde_text.contains("duplicate field") {
        return "a field given twice".to_owned();
    }
    "the fields are not the ones this endpoint takes (docs/server.md)".to_owned()
}

/// A query string refused: `400 invalid_query` with `message`.
pub(crate) fn bad_query(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidQuery, message)
}

/// A query string that does not parse as the endpoint's: what serde
/// refused, in bounded words of the server's own.
pub(crate) fn query_refused(e: &axum::extract::rejection::QueryRejection) -> ApiError {
    bad_query(format!(
        "bad query parameters: {}",
        what_serde_refused(&e.body_text())
    ))
}

/// The answer to a path served with another method: a typed error like
/// every other (the router's own 405 has an empty body).
async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        "this endpoint does not take that method (see /openapi.json)",
    )
}

/// The router of the whole API.
pub fn router(state: AppState) -> Router {
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .route("/v1/setup", post(setup))
        .route(Login::PATH, post(login))
        .route(Logout::PATH, post(logout))
        .route("/v1/me", get(me))
        .route("/v1/audit/verify", get(audit_verify))
        .route("/v1/orgs/{org_id}/audit/verify", get(org_audit_verify))
        .route("/v1/orgs/{org_id}/audit/events", get(org_audit_events))
        .route(
            "/v1/orgs/{org_id}/enrollment-codes",
            post(create_enrollment_code),
        )
        .route("/v1/orgs/{org_id}/devices", get(list_devices))
        .route("/v1/orgs/{org_id}/devices/{device_id}", get(show_device))
        .route(
            "/v1/orgs/{org_id}/devices/{device_id}/revoke",
            post(revoke_device),
        )
        .route("/v1/orgs/{org_id}/users", get(list_users).post(add_user))
        .route(
            "/v1/orgs/{org_id}/users/{user_id}",
            axum::routing::delete(remove_user),
        )
        .route(
            "/v1/orgs/{org_id}/users/{user_id}/role",
            axum::routing::put(change_role),
        )
        .route(
            "/v1/orgs/{org_id}/users/{user_id}/disable",
            post(disable_user),
        )
        .route(
            "/v1/orgs/{org_id}/users/{user_id}/enable",
            post(enable_user),
        )
        .route("/v1/me/password", post(change_password))
        .route(Enroll::PATH, post(enroll))
        .route("/v1/device", get(device_whoami))
        .route(RotateDeviceToken::PATH, post(rotate_device_token))
        .route("/v1/orgs/{org_id}/usage", get(usage));
    let router = control::routes(router);
    let router = tenants::routes(router);
    let router = sync::routes(router);
    let router = files::routes(router);
    let router = mqtt::routes(router);
    delivery::routes(router)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::count,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), account))
        .layer(middleware::from_fn(refuse_credentials_in_query))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        "no such endpoint",
    )
}

/// Refuses `?token=…` and its kin: a credential in a URL lands in proxy and
/// server logs and in browser history. The query is never logged.
async fn refuse_credentials_in_query(req: Request, next: Next) -> Response {
    let carries_credential = req.uri().query().is_some_and(query_names_a_credential);
    if carries_credential {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::CredentialInQuery,
            "credentials go in headers (X-Auth-Token), never in the URL",
        )
        .into_response();
    }
    next.run(req).await
}

/// Whether a query string names any of the API's credentials
/// ([`coffer_protocol::CREDENTIAL_NAMES`]), in any spelling: names are
/// compared decoded (`%74oken` is `token` to the application that would
/// read it), decoded again while that changes them (`%2574oken`), split on
/// `;` as well as `&`, and folded by the protocol's rule.
fn query_names_a_credential(query: &str) -> bool {
    query.split(['&', ';']).any(|pair| {
        let mut name = pair.split('=').next().unwrap_or("").to_owned();
        for _ in 0..3 {
            let decoded = percent_decode(&name);
            if decoded == name {
                break;
            }
            name = decoded;
        }
        coffer_protocol::names_a_credential(&name)
    })
}

/// Decodes `%XX` escapes and `+` (a query's form encoding); invalid
/// escapes stay as they are.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET /healthz`: the process is up (no database work: a load balancer's
/// probe, and the benchmark's ceiling).
async fn healthz(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "storage": state.store.backend()}))
}

/// `GET /readyz`: the process is up and its database answers.
async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    state.store.ping().await?;
    Ok(Json(
        json!({"status": "ready", "storage": state.store.backend()}),
    ))
}

/// The SHA-256 of a token, hex: what the database keeps of it.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Shortest owner password.
const MIN_PASSWORD_LEN: usize = 12;

fn check_name(what: &'static str, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidName,
            format!("{what} must be 1 to 64 letters, digits, spaces or . _ - @"),
        ))
    }
}

/// Hashes a password with Argon2id (OWASP's minimum: 19 MiB, t = 2), into a
/// PHC string that carries its own salt and parameters.
pub fn hash_password(password: &str) -> Result<String, ApiError> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    use rand_core::RngCore;
    let mut salt = [0u8; 16];
    rand_core::OsRng.try_fill_bytes(&mut salt).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "no randomness",
        )
    })?;
    let salt = SaltString::encode_b64(&salt).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "bad salt",
        )
    })?;
    let params = argon2::Params::new(19 * 1024, 2, 1, None).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "bad parameters",
        )
    })?;
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "hashing failed",
            )
        })
}

/// `POST /v1/setup`: spends the one-time setup token printed by the first
/// start, creating the first organization and its owner.
async fn setup(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    Body(request): Body<Setup>,
) -> Result<(StatusCode, Json<SetupAnswer>), ApiError> {
    // Counted, and refused on a server already set up, before the password
    // is hashed: Argon2 is slow and large on purpose, and anyone may call
    // this endpoint.
    let key = format!("setup-addr:{}", ClientNetwork(client));
    if let Some(over) = count_attempt(&state, &key, state.login_limits.per_address, "setup").await?
    {
        return Err(over.refusal);
    }
    if state.store.is_bootstrapped().await? {
        return Err(StoreError::AlreadyBootstrapped.into());
    }
    let Setup {
        setup_token,
        organization,
        owner,
        password,
    } = request;
    check_name("the organization's name", &organization)?;
    check_name("the owner's name", &owner)?;
    check_password(password.expose_secret())?;
    // A wrong token costs no hash either (the store checks it again when
    // it spends it).
    if !state
        .store
        .setup_token_pending(&token_hash(setup_token.expose_secret()))
        .await?
    {
        return Err(StoreError::InvalidSetupToken.into());
    }
    // Argon2 is slow on purpose: keep it off the async workers.
    let hashed = hash_off_thread(password).await?;
    let created = state
        .store
        .bootstrap(
            &token_hash(setup_token.expose_secret()),
            &NewOwner {
                organization,
                owner,
                password_hash: hashed,
            },
        )
        .await?;
    control::signing_key_record(&state, created.organization_id).await?;
    tracing::info!(
        organization_id = created.organization_id,
        user_id = created.user_id,
        "server set up: first organization and owner created"
    );
    record(
        &state,
        Some(created.organization_id),
        "setup".into(),
        "setup",
        json!({"owner_id": created.user_id}),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(SetupAnswer {
            organization_id: created.organization_id,
            user_id: created.user_id,
        }),
    ))
}

/// A logged-in user, from the `X-Auth-Token` header.
pub struct Principal {
    /// The user.
    pub user_id: i64,
    /// The user's name.
    pub user: String,
    token_hash: String,
    /// The accounting of this request, told the organization once the user
    /// is authorized in it (and never before: a refused request is charged
    /// to no organization).
    caller: Option<CallerCell>,
}

impl Principal {
    /// Charges this request to `org_id`, where the user was just
    /// authorized.
    fn authorized_in(&self, org_id: i64) {
        if let Some(cell) = &self.caller {
            cell.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .org_id = Some(org_id);
        }
    }
}

impl Principal {
    /// The user whose session token is in the header `header`.
    async fn from_headers(
        headers: &axum::http::HeaderMap,
        state: &AppState,
        header: &str,
    ) -> Result<Principal, ApiError> {
        let unauthorized = |code: ErrorCode, message: String| {
            ApiError::new(StatusCode::UNAUTHORIZED, code, message)
        };
        let token = headers
            .get(header)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                unauthorized(
                    ErrorCode::Unauthenticated,
                    format!("send a session token in {header}"),
                )
            })?;
        let token_hash = token_hash(token);
        let Some(session) = state.store.session(&token_hash).await? else {
            return Err(unauthorized(
                ErrorCode::InvalidToken,
                "the token is not valid".into(),
            ));
        };
        if session.revoked || session.disabled {
            return Err(unauthorized(
                ErrorCode::InvalidToken,
                "the token is not valid".into(),
            ));
        }
        if crate::store::now_unix() >= session.expires_at {
            return Err(unauthorized(
                ErrorCode::TokenExpired,
                "the session has expired: log in again".into(),
            ));
        }
        Ok(Principal {
            user_id: session.user_id,
            user: session.user,
            token_hash,
            caller: None,
        })
    }
}

impl axum::extract::FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        let mut principal = Principal::from_headers(&parts.headers, state, AUTH_HEADER).await?;
        note_caller(parts, |c| c.user_id = Some(principal.user_id));
        principal.caller = parts.extensions.get::<CallerCell>().cloned();
        Ok(principal)
    }
}

fn verify_password(hash: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash)
        .map(|parsed| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// The rate-limit keys of attempts to prove a password: per client
/// address, and per account (a checked name: at most 64 characters).
fn address_key(client: std::net::IpAddr) -> String {
    format!("login-addr:{}", ClientNetwork(client))
}

/// A client address as the rate limits count it: an IPv4 address, or the
/// /64 network of an IPv6 one — one subscriber's share, which holds more
/// addresses than anyone could use up, so that counting single IPv6
/// addresses would give an attacker a fresh budget per request.
struct ClientNetwork(std::net::IpAddr);

impl std::fmt::Display for ClientNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
                let [a, b, c, d, ..] = v6.segments();
                write!(f, "{a:x}:{b:x}:{c:x}:{d:x}::/64")
            }
            std::net::IpAddr::V6(v6) => write!(f, "{}", v6.to_canonical()),
            v4 => write!(f, "{v4}"),
        }
    }
}

fn account_key(user: &str) -> String {
    format!("login-user:{user}")
}

/// Counts one attempt to prove a password — a login, or the old password
/// of a password change: both draw on the same limits — before any
/// hashing, so that parallel guesses count too. The address is counted
/// first: a flood from one address stops there, before any name it sends
/// reaches the database; `user` is counted only once it is a valid name
/// (`None`: not one, nothing kept of it). Past a limit: 429, and the
/// refusal is audited and logged once per window and key, not once per
/// request, so that a flood leaves a bounded trace.
async fn count_password_attempt(
    state: &AppState,
    client: std::net::IpAddr,
    user: Option<&str>,
    what: &'static str,
) -> Result<(), ApiError> {
    let limits = state.login_limits;
    let over = match count_attempt(state, &address_key(client), limits.per_address, what).await? {
        Some(over) => Some((over, "address")),
        None => match user {
            Some(user) => count_attempt(state, &account_key(user), limits.per_account, what)
                .await?
                .map(|over| (over, "account")),
            None => None,
        },
    };
    let Some((over, key)) = over else {
        return Ok(());
    };
    if over.first {
        tracing::warn!(
            user = %Untrusted::new(user.unwrap_or("")),
            %client,
            limit = key,
            "{what} rate limit reached"
        );
        record(
            state,
            None,
            format!("anonymous@{client}"),
            "login_rate_limited",
            json!({"user": user.map(recorded), "limit": key, "during": what}),
        )
        .await?;
    }
    Err(over.refusal)
}

/// `POST /v1/login`: a user name and password for a session token (random,
/// stored only as its SHA-256, valid for the session TTL, revocable).
///
/// A name that user creation would refuse names no one: it is refused like
/// a wrong password, after counting against the address, and what is kept
/// of it (in the audit trail and the log) is escaped and cut short.
async fn login(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    Body(request): Body<Login>,
) -> Result<Json<LoginAnswer>, ApiError> {
    let Login { user, password } = request;
    let valid_name = check_name("the user's name", &user).is_ok();
    count_password_attempt(&state, client, valid_name.then_some(user.as_str()), "login").await?;
    let stored = if valid_name {
        state.store.login_record(&user).await?
    } else {
        None
    };
    let hash = match &stored {
        Some(r) => r.password_hash.clone(),
        None => state.decoy_hash.as_ref().clone(),
    };
    // Verified even for an invalid name, against the decoy: every refusal
    // takes the same time.
    let matches = verify_off_thread(hash, password).await?;
    let user_id = match stored {
        Some(r) if matches && !r.disabled => r.user_id,
        _ => {
            tracing::info!(user = %Untrusted::new(&user), %client, "login refused");
            record(
                &state,
                None,
                format!("anonymous@{client}"),
                "login_failed",
                json!({"user": recorded(&user)}),
            )
            .await?;
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::InvalidCredentials,
                "wrong user name or password",
            ));
        }
    };
    state.store.clear_hits(&account_key(&user)).await?;
    let token = new_token()?;
    let expires_at = crate::store::now_unix()
        .saturating_add(i64::try_from(state.session_ttl.as_secs()).unwrap_or(i64::MAX));
    state
        .store
        .create_session(&token_hash(&token), user_id, expires_at)
        .await?;
    tracing::info!(user = %Untrusted::new(&user), "login");
    record(
        &state,
        None,
        format!("user:{user}"),
        "login",
        json!({"client": client.to_string()}),
    )
    .await?;
    Ok(Json(LoginAnswer {
        token: token.into(),
        expires_at,
    }))
}

/// A fresh random token (192 bits, hex).
pub fn new_token() -> Result<zeroize::Zeroizing<String>, ApiError> {
    use rand_core::RngCore;
    let mut bytes = [0u8; 24];
    rand_core::OsRng.try_fill_bytes(&mut bytes).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "no randomness",
        )
    })?;
    Ok(zeroize::Zeroizing::new(hex::encode(bytes)))
}

/// `POST /v1/logout`: revokes the session that sends it.
async fn logout(State(state): State<AppState>, who: Principal) -> Result<StatusCode, ApiError> {
    state.store.revoke_session(&who.token_hash).await?;
    record(
        &state,
        None,
        format!("user:{}", who.user),
        "logout",
        json!({}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/me`: who the token belongs to, and their organizations.
async fn me(State(state): State<AppState>, who: Principal) -> Result<Json<MeAnswer>, ApiError> {
    let memberships = state.store.memberships(who.user_id).await?;
    let operator = state.store.is_operator(who.user_id).await?;
    Ok(Json(MeAnswer {
        operator,
        user_id: who.user_id,
        user: who.user,
        organizations: memberships
            .into_iter()
            .map(|m| Membership {
                id: m.organization_id,
                name: m.organization,
                role: m.role,
            })
            .collect(),
    }))
}

/// Appends to the audit trail.
async fn record(
    state: &AppState,
    org_id: Option<i64>,
    actor: String,
    action: &str,
    details: serde_json::Value,
) -> Result<(), ApiError> {
    state
        .store
        .append_audit(
            crate::audit::AuditEvent {
                org_id,
                actor,
                action: action.to_owned(),
                details: details.to_string(),
            },
            std::sync::Arc::clone(&state.keys),
        )
        .await?;
    Ok(())
}

/// `GET /v1/audit/verify` (the instance's operators): checks the whole
/// chain and reports on all of it.
async fn audit_verify(
    State(state): State<AppState>,
    who: Principal,
) -> Result<Json<AuditReport>, ApiError> {
    require_operator(&state, &who).await?;
    count_chain_check(&state, &who).await?;
    let rows = state.store.audit_rows().await?;
    let report = crate::audit::check_chain(&rows, &state.keys);
    Ok(Json(AuditReport {
        intact: report.broken_at.is_none(),
        rows: report.rows,
        broken_at: report.broken_at,
        problem: report.problem,
        organization_id: None,
    }))
}

/// `GET /v1/orgs/{org_id}/audit/events` (owners, admins, auditors): the
/// organization's rows that match the query, newest first.
async fn org_audit_events(
    State(state): State<AppState>,
    Ids(org_id): Ids<i64>,
    who: Principal,
    query: Result<axum::extract::Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditEvents>, ApiError> {
    require_role(&state, &who, org_id, &["owner", "admin", "auditor"]).await?;
    let axum::extract::Query(q) = query.map_err(|e| query_refused(&e))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_AUDIT_PAGE).contains(&limit) {
        return Err(bad_query(format!("limit must be 1 to {MAX_AUDIT_PAGE}")));
    }
    let given = |v: Option<String>| v.filter(|v| !v.is_empty());
    let (action, actor, text) = (given(q.action), given(q.actor), given(q.q));
    if [&action, &actor, &text]
        .iter()
        .any(|v| v.as_ref().is_some_and(|v| v.len() > 128))
    {
        return Err(bad_query(
            "action, actor and q are at most 128 bytes".to_owned(),
        ));
    }
    let rows = state
        .store
        .audit_search(
            org_id,
            &crate::store::AuditSearch {
                action,
                actor,
                text,
                before: q.before,
                // One more than asked: whether there is an older page.
                limit: limit + 1,
            },
        )
        .await?;
    let mut rows = rows;
    let next_before = if i64::try_from(rows.len()).unwrap_or(i64::MAX) > limit {
        rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        rows.last().map(|r| r.id)
    } else {
        None
    };
    Ok(Json(AuditEvents {
        events: rows
            .into_iter()
            .map(|r| AuditEventView {
                id: r.id,
                at: r.at,
                actor: r.event.actor,
                action: r.event.action,
                // Written by this server as JSON; a row that is not (a
                // damaged one) is shown as its text.
                details: serde_json::from_str(&r.event.details)
                    .unwrap_or(serde_json::Value::String(r.event.details)),
            })
            .collect(),
        next_before,
    }))
}

/// `GET /v1/orgs/{org_id}/audit/verify` (owners, admins, auditors of the
/// organization): checks the whole chain — a row of one organization can
/// only be trusted if every link before it holds — but reports only on
/// this organization's rows: how many, and which is broken if one of them
/// is. A break elsewhere says only that the trail is damaged outside the
/// organization's rows, never where or what.
async fn org_audit_verify(
    State(state): State<AppState>,
    Ids(org_id): Ids<i64>,
    who: Principal,
) -> Result<Json<AuditReport>, ApiError> {
    require_role(&state, &who, org_id, &["owner", "admin", "auditor"]).await?;
    count_chain_check(&state, &who).await?;
    let rows = state.store.audit_rows().await?;
    let report = crate::audit::check_chain(&rows, &state.keys);
    let ours = |id: i64| {
        rows.iter()
            .any(|r| r.id == id && r.event.org_id == Some(org_id))
    };
    let (broken_at, problem) = match report.broken_at {
        None => (None, None),
        Some(id) if ours(id) => (Some(id), report.problem),
        Some(_) => (
            None,
            Some(
                "the server's trail is damaged outside this organization's rows: its operators must check it (GET /v1/audit/verify)"
                    .to_owned(),
            ),
        ),
    };
    Ok(Json(AuditReport {
        intact: report.broken_at.is_none(),
        rows: rows
            .iter()
            .filter(|r| r.event.org_id == Some(org_id))
            .count() as u64,
        broken_at,
        problem,
        organization_id: Some(org_id),
    }))
}

/// A check reads and MACs the whole trail: each user may ask for one as
/// often as the per-address login budget allows.
async fn count_chain_check(state: &AppState, who: &Principal) -> Result<(), ApiError> {
    let key = format!("audit-verify-user:{}", who.user_id);
    match count_attempt(state, &key, state.login_limits.per_address, "audit check").await? {
        Some(over) => Err(over.refusal),
        None => Ok(()),
    }
}

/// Checks that `who` is one of the instance's operators (403 otherwise:
/// that operators exist is no secret).
async fn require_operator(state: &AppState, who: &Principal) -> Result<(), ApiError> {
    if state.store.is_operator(who.user_id).await? {
        Ok(())
    } else {
        Err(forbidden("only the server's operators may do this"))
    }
}

/// The answer for a resource of another organization and for one that does
/// not exist: the same, so that ids cannot be probed.
fn not_found_here() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        "no such resource",
    )
}

/// Checks that `who` has one of `roles` in `org_id`: 404 if they are not a
/// member at all (not theirs, or not there), 403 if their role is too low.
async fn require_role(
    state: &AppState,
    who: &Principal,
    org_id: i64,
    roles: &[&str],
) -> Result<(), ApiError> {
    let role = caller_role(state, who, org_id).await?;
    if roles.contains(&role.as_str()) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            format!(
                "this needs the role {} in the organization",
                roles.join(" or ")
            ),
        ))
    }
}

/// Longest an enrollment code may stay valid.
const MAX_CODE_VALIDITY: i64 = 7 * 24 * 3600;

/// `POST /v1/orgs/{org_id}/enrollment-codes` (owners, admins): a one-time
/// code that enrolls one device into the organization.
async fn create_enrollment_code(
    State(state): State<AppState>,
    Ids(org_id): Ids<i64>,
    who: Principal,
    Body(request): Body<NewEnrollmentCode>,
) -> Result<(StatusCode, Json<EnrollmentCode>), ApiError> {
    require_role(&state, &who, org_id, &["owner", "admin"]).await?;
    let valid_for = request.valid_for_secs.unwrap_or(24 * 3600);
    if !(1..=MAX_CODE_VALIDITY).contains(&valid_for) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidBody,
            format!("valid_for_secs must be 1 to {MAX_CODE_VALIDITY}"),
        ));
    }
    let code = new_token()?;
    let expires_at = crate::store::now_unix().saturating_add(valid_for);
    state
        .store
        .add_enrollment_code(&token_hash(&code), org_id, who.user_id, expires_at)
        .await?;
    record(
        &state,
        Some(org_id),
        format!("user:{}", who.user),
        "enrollment_code_created",
        json!({"expires_at": expires_at}),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(EnrollmentCode {
            code: code.into(),
            expires_at,
        }),
    ))
}

/// `POST /v1/enroll`: a device spends a code and receives its token.
async fn enroll(
    State(state): State<AppState>,
    crate::client_addr::ClientAddr(client): crate::client_addr::ClientAddr,
    Body(request): Body<Enroll>,
) -> Result<(StatusCode, Json<EnrollAnswer>), ApiError> {
    let key = format!("enroll-addr:{}", ClientNetwork(client));
    if let Some(over) =
        count_attempt(&state, &key, state.login_limits.per_address, "enrollment").await?
    {
        return Err(over.refusal);
    }
    check_name("the device's name", &request.name)?;
    // The organization's key is made (or read) before the code is spent:
    // once it is spent, nothing may fail before the device has its token.
    let policy_key = match state
        .store
        .enrollment_code_org(&token_hash(request.code.expose_secret()))
        .await?
    {
        Some(org_id) => Some((org_id, control::signing_key_record(&state, org_id).await?)),
        None => None,
    };
    let token = new_token()?;
    let release_token = new_token()?;
    let enrolled = match state
        .store
        .enroll(
            &token_hash(request.code.expose_secret()),
            &request.name,
            &token_hash(&token),
            &token_hash(&release_token),
        )
        .await
    {
        Ok(enrolled) => enrolled,
        Err(e) => {
            record(
                &state,
                None,
                format!("anonymous@{client}"),
                "enrollment_failed",
                json!({"name": request.name}),
            )
            .await?;
            return Err(e.into());
        }
    };
    // The code is spent: a failure to audit is logged, not answered, so
    // that the device still gets the token it paid for.
    if let Err(e) = record(
        &state,
        Some(enrolled.org_id),
        format!("device:{}", enrolled.device_id),
        "device_enrolled",
        json!({"name": request.name}),
    )
    .await
    {
        tracing::error!(error = ?e, device_id = enrolled.device_id, "enrollment not audited");
    }
    let policy_key = match policy_key {
        Some((org_id, key)) if org_id == enrolled.org_id => key,
        // The code was made between the two reads (it cannot change
        // organization): read the key now.
        _ => control::signing_key_record(&state, enrolled.org_id).await?,
    };
    Ok((
        StatusCode::CREATED,
        Json(EnrollAnswer {
            device_id: enrolled.device_id,
            organization_id: enrolled.org_id,
            device_token: token.into(),
            release_token: release_token.into(),
            policy_public_key: policy_key.public_key,
        }),
    ))
}

/// An enrolled device, from the `X-Auth-Token` header.
pub struct DevicePrincipal {
    /// The device.
    pub device: crate::store::DeviceRecord,
    /// Authenticated by its release token: good for escrow release,
    /// check-in and wipe acknowledgement only.
    pub release_only: bool,
    token_hash: String,
}

impl DevicePrincipal {
    /// The device of the token in `X-Auth-Token`, revoked or not.
    async fn from_parts(
        parts: &axum::http::request::Parts,
        state: &AppState,
    ) -> Result<DevicePrincipal, ApiError> {
        let invalid = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::InvalidToken,
                "the token is not valid",
            )
        };
        let token = parts
            .headers
            .get(AUTH_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    ErrorCode::Unauthenticated,
                    "send the device token in X-Auth-Token",
                )
            })?;
        let token_hash = token_hash(token);
        let (device, release_only) = match state.store.device_by_token(&token_hash).await? {
            Some(device) => (device, false),
            None => (
                state
                    .store
                    .device_by_release_token(&token_hash)
                    .await?
                    .ok_or_else(invalid)?,
                true,
            ),
        };
        Ok(DevicePrincipal {
            device,
            release_only,
            token_hash,
        })
    }

    /// Charges this request to the device and its organization: only once
    /// the extractor has accepted it (a refused token is charged to no
    /// one).
    fn accepted(self, parts: &axum::http::request::Parts) -> Self {
        note_caller(parts, |c| {
            c.device_id = Some(self.device.id);
            c.org_id = Some(self.device.org_id);
        });
        self
    }
}

impl axum::extract::FromRequestParts<AppState> for DevicePrincipal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        let device = DevicePrincipal::from_parts(parts, state).await?;
        if device.device.revoked || device.release_only {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::InvalidToken,
                "the token is not valid",
            ));
        }
        if device.device.suspended {
            return Err(suspended());
        }
        Ok(device.accepted(parts))
    }
}

/// A device, revoked or not, its organization suspended or not, by its
/// device token or its release token: for check-in and wipe
/// acknowledgement (so that a wipe ordered before a revocation or a
/// suspension, or for a locked device, still reaches it) and escrow
/// release (which refuses a revoked or suspended device itself).
pub struct AnyDevice(pub DevicePrincipal);

impl axum::extract::FromRequestParts<AppState> for AnyDevice {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        let device = DevicePrincipal::from_parts(parts, state).await?;
        Ok(AnyDevice(device.accepted(parts)))
    }
}

/// `GET /v1/device`: the device the token belongs to.
async fn device_whoami(device: DevicePrincipal) -> Json<serde_json::Value> {
    Json(json!({
        "device_id": device.device.id,
        "organization_id": device.device.org_id,
        "name": device.device.name,
    }))
}

/// `POST /v1/device/token`: a new token for this device; the old one stops
/// working at once, on every server process.
async fn rotate_device_token(
    State(state): State<AppState>,
    device: DevicePrincipal,
) -> Result<Json<DeviceTokenRotated>, ApiError> {
    let token = new_token()?;
    if !state
        .store
        .rotate_device_token(device.device.id, &device.token_hash, &token_hash(&token))
        .await?
    {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::InvalidToken,
            "the token is not valid",
        ));
    }
    record(
        &state,
        Some(device.device.org_id),
        format!("device:{}", device.device.id),
        "device_token_rotated",
        json!({}),
    )
    .await?;
    Ok(Json(DeviceTokenRotated {
        device_token: token.into(),
    }))
}

/// `GET /v1/orgs/{org_id}/devices?after=&limit=` (owners, admins,
/// auditors): the devices by id, a page at a time when `limit` is given
/// (all at once without it, as before paging existed).
async fn list_devices(
    State(state): State<AppState>,
    Ids(org_id): Ids<i64>,
    who: Principal,
    query: Result<axum::extract::Query<DeviceListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DeviceList>, ApiError> {
    require_role(&state, &who, org_id, &["owner", "admin", "auditor"]).await?;
    let axum::extract::Query(q) = query.map_err(|e| query_refused(&e))?;
    if q.limit.is_some_and(|l| !(1..=MAX_DEVICE_PAGE).contains(&l)) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidQuery,
            format!("limit must be 1 to {MAX_DEVICE_PAGE}"),
        ));
    }
    let after = q.after.unwrap_or(i64::MIN);
    // One more than asked: whether there is a next page.
    let limit = q.limit.map_or(i64::MAX, |l| l + 1);
    let mut devices = device_summaries(&state, org_id, after, limit).await?;
    let mut next_after = None;
    if let Some(limit) = q.limit.and_then(|l| usize::try_from(l).ok()) {
        if devices.len() > limit {
            devices.truncate(limit);
            next_after = devices.last().map(|d| d.id);
        }
    }
    Ok(Json(DeviceList {
        devices,
        next_after,
    }))
}

/// `GET /v1/orgs/{org_id}/devices/{device_id}` (owners, admins, auditors):
/// one device, as the list shows it.
async fn show_device(
    State(state): State<AppState>,
    Ids((org_id, device_id)): Ids<(i64, i64)>,
    who: Principal,
) -> Result<Json<DeviceSummary>, ApiError> {
    require_role(&state, &who, org_id, &["owner", "admin", "auditor"]).await?;
    device_summaries(&state, org_id, device_id.saturating_sub(1), 1)
        .await?
        .into_iter()
        .find(|d| d.id == device_id)
        .map(Json)
        .ok_or_else(not_found_here)
}

/// An organization's devices with ids above `after`, at most `limit`, with
/// their activity, by id.
async fn device_summaries(
    state: &AppState,
    org_id: i64,
    after: i64,
    limit: i64,
) -> Result<Vec<DeviceSummary>, ApiError> {
    let devices = state.store.devices(org_id, after, limit).await?;
    let activity: std::collections::HashMap<i64, _> = state
        .store
        .device_activity(org_id, after, limit)
        .await?
        .into_iter()
        .map(|a| (a.device_id, a))
        .collect();
    Ok(devices
        .into_iter()
        .map(|d| {
            let seen = activity.get(&d.id);
            DeviceSummary {
                id: d.id,
                name: d.name,
                revoked: d.revoked,
                last_seen_at: seen.and_then(|a| a.last_seen_at),
                last_seen_address: seen.and_then(|a| a.last_seen_address.clone()),
                escrow: seen.is_some_and(|a| a.escrow),
                pending_wipes: seen.map_or(0, |a| a.pending_wipes),
            }
        })
        .collect())
}

/// `POST /v1/orgs/{org_id}/devices/{device_id}/revoke` (owners, admins).
async fn revoke_device(
    State(state): State<AppState>,
    Ids((org_id, device_id)): Ids<(i64, i64)>,
    who: Principal,
) -> Result<StatusCode, ApiError> {
    require_role(&state, &who, org_id, &["owner", "admin"]).await?;
    if !state.store.revoke_device(org_id, device_id).await? {
        return Err(not_found_here());
    }
    state.standing_changed();
    record(
        &state,
        Some(org_id),
        format!("user:{}", who.user),
        "device_revoked",
        json!({"device_id": device_id}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

const ROLES: [&str; 4] = ["owner", "admin", "member", "auditor"];

/// The permission table (docs/server.md): owners manage every role, admins
/// manage members and auditors.
fn may_manage(actor_role: &str, role: &str) -> bool {
    match actor_role {
        "owner" => true,
        "admin" => matches!(role, "member" | "auditor"),
        _ => false,
    }
}

/// The caller's role in `org_id`: 404 if not a member (as for a missing
/// organization), 403 `organization_suspended` if the organization is
/// suspended, else the role — and from then on the request is charged to
/// the organization.
async fn caller_role(state: &AppState, who: &Principal, org_id: i64) -> Result<String, ApiError> {
    let member = state
        .store
        .member_role(org_id, who.user_id)
        .await?
        .ok_or_else(not_found_here)?;
    if member.suspended {
        return Err(suspended());
    }
    who.authorized_in(org_id);
    Ok(member.role)
}

/// The answer to a user or device of a suspended organization.
fn suspended() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        ErrorCode::OrganizationSuspended,
        "the organization is suspended by the server's operators",
    )
}

/// The checks before changing another member of `org_id`: the caller is a
/// member (else 404), the target is a member (else 404), it is not the
/// caller, and the caller's role may manage the target's. Returns (the
/// caller's role, the target's role).
async fn managed_member(
    state: &AppState,
    who: &Principal,
    org_id: i64,
    user_id: i64,
) -> Result<(String, String), ApiError> {
    let actor = caller_role(state, who, org_id).await?;
    let current = state
        .store
        .member_role(org_id, user_id)
        .await?
        .ok_or_else(not_found_here)?
        .role;
    if user_id == who.user_id {
        return Err(forbidden("you cannot change your own membership"));
    }
    if !may_manage(&actor, &current) {
        return Err(forbidden("your role cannot manage that user"));
    }
    // An owner of the organization an operator belongs to must not lock
    // the server's operators out (there would be no one left to manage
    // organizations): only another operator may.
    if state.store.is_operator(user_id).await? && !state.store.is_operator(who.user_id).await? {
        return Err(forbidden(
            "that user is one of the server's operators: only another operator may change them",
        ));
    }
    Ok((actor, current))
}

fn forbidden(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
}

fn check_role(role: &str) -> Result<(), ApiError> {
    if ROLES.contains(&role) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidRole,
            "role must be owner, admin, member or auditor",
        ))
    }
}

fn check_password(password: &str) -> Result<(), ApiError> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::WeakPassword,
            format!("the password must have at least {MIN_PASSWORD_LEN} characters"),
        ));
    }
    Ok(())
}

/// Whether `password` matches the PHC `hash`, checked off the async
/// workers (Argon2 is slow on purpose).
async fn verify_off_thread(hash: String, password: WireSecret) -> Result<bool, ApiError> {
    tokio::task::spawn_blocking(move || verify_password(&hash, password.expose_secret()))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "hashing failed",
            )
        })
}

/// `password` hashed off the async workers (Argon2 is slow on purpose).
async fn hash_off_thread(password: WireSecret) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || hash_password(password.expose_secret()))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "hashing failed",
            )
        })?
}

/// `GET /v1/orgs/{org_id}/users` (owners, admins, auditors): the members,
/// by name, with their roles and whether they are disabled.
async fn list_users(
    State(state): State<AppState>,
    Ids(org_id): Ids<i64>,
    who: Principal,
) -> Result<Json<MemberList>, ApiError> {
    require_role(&state, &who, org_id, &["owner", "admin", "auditor"]).await?;
    let members = state.store.members(org_id).await?;
    Ok(Json(MemberList {
        members: members
            .into_iter()
            .map(|m| MemberSummary {
                id: m.user_id,
                name: m.name,
                role: m.role,
                disabled: m.disabled,
                created_at: m.created_at,
            })
            .collect(),
    }))
}

/// `POST /v1/orgs/{org_id}/users`: creates a user in the organization with
/// an initial password (given to them out of band; they change it).
async fn add_user(
    State(state): State<AppState>,
    Ids(org_id): Ids<i64>,
    who: Principal,
    Body(request): Body<AddUser>,
) -> Result<(StatusCode, Json<UserAdded>), ApiError> {
    let actor = caller_role(&state, &who, org_id).await?;
    check_role(&request.role)?;
    if !may_manage(&actor, &request.role) {
        return Err(forbidden("your role cannot grant that role"));
    }
    check_name("the user's name", &request.user)?;
    check_password(request.password.expose_secret())?;
    let hashed = hash_off_thread(request.password).await?;
    let user_id = state
        .store
        .add_member(org_id, &request.user, &hashed, &request.role)
        .await?;
    record(
        &state,
        Some(org_id),
        format!("user:{}", who.user),
        "user_added",
        json!({"user": request.user, "user_id": user_id, "role": request.role}),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(UserAdded { user_id })))
}

/// `PUT /v1/orgs/{org_id}/users/{user_id}/role`.
async fn change_role(
    State(state): State<AppState>,
    Ids((org_id, user_id)): Ids<(i64, i64)>,
    who: Principal,
    Body(request): Body<SetRole>,
) -> Result<StatusCode, ApiError> {
    check_role(&request.role)?;
    let (actor, current) = managed_member(&state, &who, org_id, user_id).await?;
    if !may_manage(&actor, &request.role) {
        return Err(forbidden("your role cannot grant that role"));
    }
    state.store.set_role(org_id, user_id, &request.role).await?;
    record(
        &state,
        Some(org_id),
        format!("user:{}", who.user),
        "role_changed",
        json!({"user_id": user_id, "from": current, "to": request.role}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/orgs/{org_id}/users/{user_id}`: removes the user from the
/// organization (a user left in none is disabled, their sessions ended).
async fn remove_user(
    State(state): State<AppState>,
    Ids((org_id, user_id)): Ids<(i64, i64)>,
    who: Principal,
) -> Result<StatusCode, ApiError> {
    let (_, current) = managed_member(&state, &who, org_id, user_id).await?;
    state.store.remove_member(org_id, user_id).await?;
    record(
        &state,
        Some(org_id),
        format!("user:{}", who.user),
        "user_removed",
        json!({"user_id": user_id, "role": current}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/me/password`: a user sets their own password (the old one
/// required). A wrong old password is a guess like a wrong login: it counts
/// against the same limits and is audited. Every other session of the user
/// ends: whoever knew the old password is out.
async fn change_password(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    who: Principal,
    Body(request): Body<ChangePassword>,
) -> Result<StatusCode, ApiError> {
    let ChangePassword {
        old_password: old,
        new_password: new,
    } = request;
    check_password(new.expose_secret())?;
    count_password_attempt(&state, client, Some(&who.user), "password change").await?;
    let stored = state
        .store
        .password_hash(who.user_id)
        .await?
        .ok_or_else(not_found_here)?;
    let matches = verify_off_thread(stored, old).await?;
    if !matches {
        tracing::info!(user = %Untrusted::new(&who.user), %client, "password change refused");
        record(
            &state,
            None,
            format!("user:{}", who.user),
            "password_change_failed",
            json!({"client": client.to_string()}),
        )
        .await?;
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::InvalidCredentials,
            "the old password is wrong",
        ));
    }
    state.store.clear_hits(&account_key(&who.user)).await?;
    let hashed = hash_off_thread(new).await?;
    state
        .store
        .set_password(who.user_id, &hashed, &who.token_hash)
        .await?;
    record(
        &state,
        None,
        format!("user:{}", who.user),
        "password_changed",
        json!({}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
}

/// Who a request turned out to be from, filled in by the token extractors
/// for the accounting middleware.
#[derive(Debug, Clone, Default)]
struct Caller {
    user_id: Option<i64>,
    device_id: Option<i64>,
    org_id: Option<i64>,
}

type CallerCell = std::sync::Arc<std::sync::Mutex<Caller>>;

fn note_caller(parts: &axum::http::request::Parts, note: impl FnOnce(&mut Caller)) {
    if let Some(cell) = parts.extensions.get::<CallerCell>() {
        note(
            &mut cell
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
    }
}

/// Accounting: records every authenticated request — who (user or
/// device), the organization they were authorized in (none for a refused
/// one), which route (its template), the status, the bytes in and out, and
/// the time — in the database, where every process's requests add up.
async fn account(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let cell = CallerCell::default();
    req.extensions_mut().insert(cell.clone());
    let method = crate::metrics::method_name(req.method()).to_owned();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    // Request bytes as the server reads them (not as a client's
    // Content-Length claims): a body never read counts nothing, one sent
    // chunked or over HTTP/2 counts all it carried.
    let read = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let req = {
        let read = std::sync::Arc::clone(&read);
        let (parts, body) = req.into_parts();
        let counted = http_body_util::BodyExt::map_frame(body, move |frame| {
            if let Some(data) = frame.data_ref() {
                read.fetch_add(
                    i64::try_from(data.len()).unwrap_or(i64::MAX),
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
            frame
        });
        Request::from_parts(parts, axum::body::Body::new(counted))
    };
    if matches!(route.as_str(), "/healthz" | "/readyz" | "/metrics") {
        // Probes and scrapes are the infrastructure's, not an organization's.
        return next.run(req).await;
    }
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    let exact = axum::body::HttpBody::size_hint(response.body()).exact();
    let caller = cell
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    if caller.user_id.is_none() && caller.device_id.is_none() {
        // No one authenticated: nothing to charge to anyone, and a flood of
        // anonymous requests must not grow the database (the metrics still
        // count it).
        return response;
    }
    let record = crate::store::UsageRecord {
        at: crate::store::now_unix(),
        // Only the organization the caller was authenticated and
        // authorized in: an id in the path proves nothing.
        org_id: caller.org_id,
        user_id: caller.user_id,
        device_id: caller.device_id,
        method,
        route,
        status: i32::from(response.status().as_u16()),
        bytes_in: read.load(std::sync::atomic::Ordering::Relaxed),
        bytes_out: exact.and_then(|n| i64::try_from(n).ok()).unwrap_or(0),
        micros: i64::try_from(started.elapsed().as_micros()).unwrap_or(i64::MAX),
    };
    if exact.is_none() {
        // A streamed answer (a file, an export): its bytes are counted as
        // they go, and the request is recorded when the body ends (or the
        // client goes), with what was actually sent.
        let (parts, body) = response.into_parts();
        let metered = Metered {
            body,
            sent: 0,
            record: Some((record, state.store.clone(), started)),
        };
        return Response::from_parts(parts, axum::body::Body::new(metered));
    }
    if let Err(e) = state.store.record_usage(record).await {
        tracing::warn!(error = %e, "could not record usage");
    }
    response
}

/// A streamed response body that counts the bytes it yields and records
/// the request's usage when it is dropped (finished, failed or cut off).
struct Metered {
    body: axum::body::Body,
    sent: u64,
    record: Option<(crate::store::UsageRecord, Store, std::time::Instant)>,
}

impl http_body::Body for Metered {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = http_body::Body::poll_frame(std::pin::Pin::new(&mut self.body), cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.sent += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.body)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::Body::size_hint(&self.body)
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        let Some((mut record, store, started)) = self.record.take() else {
            return;
        };
        record.bytes_out = i64::try_from(self.sent).unwrap_or(i64::MAX);
        record.micros = i64::try_from(started.elapsed().as_micros()).unwrap_or(i64::MAX);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = store.record_usage(record).await {
                    tracing::warn!(error = %e, "could not record usage");
                }
            });
        }
    }
}

/// `GET /v1/orgs/{org_id}/usage?from=&to=&by=org|user|device&format=json|csv`
/// (owners, admins, auditors): requests, bytes and time over `[from, to)`
/// (Unix seconds; default: all time).
async fn usage(
    State(state): State<AppState>,
    Ids(org_id): Ids<i64>,
    who: Principal,
    query: Result<axum::extract::Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    require_role(&state, &who, org_id, &["owner", "admin", "auditor"]).await?;
    let axum::extract::Query(q) = query.map_err(|e| query_refused(&e))?;
    let by = match q.by.as_deref().unwrap_or("org") {
        "org" => crate::store::UsageKey::Organization,
        "user" => crate::store::UsageKey::User,
        "device" => crate::store::UsageKey::Device,
        "hour" => crate::store::UsageKey::Hour,
        "day" => crate::store::UsageKey::Day,
        "week" => crate::store::UsageKey::Week,
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidQuery,
                "by must be org, user, device, hour, day or week",
            ))
        }
    };
    let from = q.from.unwrap_or(0);
    let to = q.to.unwrap_or(i64::MAX);
    let rows = state.store.usage(org_id, from, to, by).await?;
    match q.format.as_deref().unwrap_or("json") {
        "json" => Ok(Json(UsageReport {
            organization_id: org_id,
            from,
            to,
            by: q.by.as_deref().unwrap_or("org").to_owned(),
            rows: rows
                .iter()
                .map(|r| UsageRow {
                    id: r.key,
                    requests: r.requests,
                    bytes_in: r.bytes_in,
                    bytes_out: r.bytes_out,
                    micros: r.micros,
                })
                .collect(),
        })
        .into_response()),
        "csv" => {
            let mut csv = String::from("id,requests,bytes_in,bytes_out,micros\n");
            for r in &rows {
                csv.push_str(&format!(
                    "{},{},{},{},{}\n",
                    r.key.map(|k| k.to_string()).unwrap_or_default(),
                    r.requests,
                    r.bytes_in,
                    r.bytes_out,
                    r.micros
                ));
            }
            Ok(([(axum::http::header::CONTENT_TYPE, "text/csv")], csv).into_response())
        }
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidQuery,
            "format must be json or csv",
        )),
    }
}

/// `POST /v1/orgs/{org_id}/users/{user_id}/disable` and `…/enable`: a
/// disabled user cannot log in and their sessions end. Only for a user who
/// belongs to this organization alone (disabling is account-wide, and one
/// organization must not lock a user out of another).
async fn set_disabled(
    state: &AppState,
    who: &Principal,
    org_id: i64,
    user_id: i64,
    disabled: bool,
) -> Result<StatusCode, ApiError> {
    managed_member(state, who, org_id, user_id).await?;
    let elsewhere = state
        .store
        .memberships(user_id)
        .await?
        .iter()
        .any(|m| m.organization_id != org_id);
    if elsewhere {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::MemberElsewhere,
            "the user belongs to other organizations too: remove them from this one instead",
        ));
    }
    state.store.set_disabled(user_id, disabled).await?;
    record(
        state,
        Some(org_id),
        format!("user:{}", who.user),
        if disabled {
            "user_disabled"
        } else {
            "user_enabled"
        },
        json!({"user_id": user_id}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn disable_user(
    State(state): State<AppState>,
    Ids((org_id, user_id)): Ids<(i64, i64)>,
    who: Principal,
) -> Result<StatusCode, ApiError> {
    set_disabled(&state, &who, org_id, user_id, true).await
}

async fn enable_user(
    State(state): State<AppState>,
    Ids((org_id, user_id)): Ids<(i64, i64)>,
    who: Principal,
) -> Result<StatusCode, ApiError> {
    set_disabled(&state, &who, org_id, user_id, false).await
}

#[cfg(test)]
mod tests {
    use super::{percent_decode, query_names_a_credential};

    #[test]
    fn ipv6_clients_are_counted_by_their_64_network() {
        let shown = |ip: &str| super::ClientNetwork(ip.parse().unwrap()).to_string();
        assert_eq!(shown("192.0.2.7"), "192.0.2.7");
        assert_eq!(shown("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(shown("2001:db8:1:2:bbbb::9"), "2001:db8:1:2::/64");
        assert_eq!(shown("2001:db8:1:3::1"), "2001:db8:1:3::/64");
        // An IPv4 client seen through an IPv6 socket is that IPv4 client.
        assert_eq!(shown("::ffff:192.0.2.7"), "192.0.2.7");
    }

    #[test]
    fn every_credential_name_is_refused_in_a_query_in_any_encoding() {
        for name in coffer_protocol::CREDENTIAL_NAMES {
            let encoded: String = name.bytes().map(|b| format!("%{b:02X}")).collect();
            let twice: String = name.bytes().map(|b| format!("%25{b:02X}")).collect();
            for query in [
                format!("{name}=x"),
                format!("from=1&{}=x", name.to_uppercase()),
                format!("{encoded}=x"),
                format!("{twice}=x"),
                format!("a=1;{name}"),
                format!("{name}%00=x"),
                format!("{}=x", name.replace(['_', '-'], "%00")),
                format!("{name}[]=x"),
            ] {
                assert!(query_names_a_credential(&query), "{query}");
            }
        }
        for fine in [
            "from=1&to=2&by=user&format=csv",
            "device=7&name=t&after=9&limit=10",
            "",
        ] {
            assert!(!query_names_a_credential(fine), "{fine}");
        }
    }

    #[test]
    fn query_names_are_compared_decoded() {
        assert_eq!(percent_decode("%74oken"), "token");
        assert_eq!(percent_decode("x-auth%2Dtoken"), "x-auth-token");
        assert_eq!(percent_decode("a+b"), "a b");
        // Broken escapes stay as they are, and never panic.
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%7"), "%7");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("ab%"), "ab%");
    }
}
