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
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::store::{NewOwner, Store, StoreError};

/// Largest request body accepted, in bytes.
pub const MAX_BODY: usize = 64 * 1024;

/// Query parameter names that would carry a credential.
const CREDENTIAL_PARAMS: [&str; 5] = [
    "token",
    "access_token",
    "auth",
    "x-auth-token",
    "setup_token",
];

/// Shared by every request.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The storage.
    pub store: Store,
}

/// An error answer: status, stable code, message for people.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InvalidSetupToken => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_setup_token",
                "the setup token is wrong, spent, or replaced by a newer one (restart the server for a new one)",
            ),
            StoreError::AlreadyBootstrapped => ApiError::new(
                StatusCode::CONFLICT,
                "already_set_up",
                "the server is already set up",
            ),
            StoreError::Exists(what) => {
                ApiError::new(StatusCode::CONFLICT, "exists", format!("{what} already exists"))
            }
            other => {
                // The cause goes to the log; the client learns only that it failed.
                tracing::error!(error = %other, "storage failure");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
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

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not_json",
            "send the body as application/json",
        ),
        JsonRejection::JsonSyntaxError(_) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "the body is not valid JSON",
        ),
        JsonRejection::JsonDataError(e) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!(
                "the body does not have the expected fields: {}",
                e.body_text()
            ),
        ),
        JsonRejection::BytesRejection(_) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request bodies are limited to {MAX_BODY} bytes"),
        ),
        _ => ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the request body was refused",
        ),
    }
}

/// The router of the whole API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/setup", post(setup))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(refuse_credentials_in_query))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// Refuses `?token=…` and its kin: a credential in a URL lands in proxy and
/// server logs and in browser history. The query is never logged.
async fn refuse_credentials_in_query(req: Request, next: Next) -> Response {
    let carries_credential = req.uri().query().is_some_and(|q| {
        q.split('&').any(|pair| {
            let name = pair.split('=').next().unwrap_or("");
            CREDENTIAL_PARAMS
                .iter()
                .any(|c| c.eq_ignore_ascii_case(name))
        })
    });
    if carries_credential {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "credential_in_query",
            "credentials go in headers (X-Auth-Token), never in the URL",
        )
        .into_response();
    }
    next.run(req).await
}

async fn healthz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    state.store.ping().await?;
    Ok(Json(
        json!({"status": "ok", "storage": state.store.backend()}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetupRequest {
    setup_token: String,
    organization: String,
    owner: String,
    password: String,
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
            "invalid_name",
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
            "internal",
            "no randomness",
        )
    })?;
    let salt = SaltString::encode_b64(&salt)
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "bad salt"))?;
    let params = argon2::Params::new(19 * 1024, 2, 1, None).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "bad parameters",
        )
    })?;
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "hashing failed",
            )
        })
}

/// `POST /v1/setup`: spends the one-time setup token printed by the first
/// start, creating the first organization and its owner.
async fn setup(
    State(state): State<AppState>,
    Body(request): Body<SetupRequest>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let SetupRequest {
        setup_token,
        organization,
        owner,
        password,
    } = request;
    let password = zeroize::Zeroizing::new(password);
    check_name("the organization's name", &organization)?;
    check_name("the owner's name", &owner)?;
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "weak_password",
            format!("the password must have at least {MIN_PASSWORD_LEN} characters"),
        ));
    }
    // Argon2 is slow on purpose: keep it off the async workers.
    let hashed = tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "hashing failed",
            )
        })??;
    let created = state
        .store
        .bootstrap(
            &token_hash(&setup_token),
            &NewOwner {
                organization,
                owner,
                password_hash: hashed,
            },
        )
        .await?;
    tracing::info!(
        organization_id = created.organization_id,
        user_id = created.user_id,
        "server set up: first organization and owner created"
    );
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "organization_id": created.organization_id,
            "user_id": created.user_id,
        })),
    ))
}
