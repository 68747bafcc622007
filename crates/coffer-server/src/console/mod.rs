//! The admin console at `/console`: server-rendered pages for an
//! organization's admins (docs/server.md, "Console").
//!
//! The console is a client of the API living in the same process: every
//! page and every change is one or more requests to [`crate::api::router`],
//! made with the signed-in user's API session and the browser's client
//! address, and decoded into the protocol's types. So the roles, the login
//! limits, the validation and the audit trail are the API's own; there is
//! no second authorization layer to drift from the first.
//!
//! What is the console's own is what a browser needs:
//! - [`sessions`]: a cookie (HttpOnly, SameSite=Strict, Secure off loopback)
//!   naming a console session held by this process, which holds the API
//!   token; the cookie itself is no API credential;
//! - a CSRF token per session in every form, checked on every change, and
//!   the `Origin` header checked where a browser sends one;
//! - a strict Content-Security-Policy (no inline script or style), no
//!   framing, no referrer to other sites, no caching;
//! - templates ([`pages`]) that escape every value: device names and
//!   readings are written by devices, user names by admins.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Form, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use coffer_protocol::admin::{
    AuditReport, DeviceList, DeviceSummary, EnrollmentCode, MeAnswer, NewEnrollmentCode, OrderWipe,
    WipeOrdered, WipeOrders,
};
use coffer_protocol::policy::{Document, PublishRequest, Rules, SignedPolicy};
use coffer_protocol::session::{Login, LoginAnswer, Logout};
use coffer_protocol::{Answer, Endpoint, ErrorBody, ErrorCode, NoContent, WireSecret, AUTH_HEADER};
use secrecy::ExposeSecret;
use serde::Deserialize;
use tower::ServiceExt;

mod pages;
pub mod sessions;

use sessions::{Session, Sessions};

/// The console's state: the API it is a client of, and its sessions.
#[derive(Clone)]
struct Console {
    api: Router,
    sessions: Arc<Sessions>,
}

/// The content security policy of every console answer: nothing from
/// elsewhere, no inline script or style, no framing, forms only to here.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

/// The API router with the console beside it, under `/console`.
pub fn with_console(api: Router, sessions: Arc<Sessions>) -> Router {
    let console = Console {
        api: api.clone(),
        sessions,
    };
    let pages = Router::new()
        .route("/console", get(home))
        .route("/console/", get(home))
        .route("/console/console.css", get(stylesheet))
        .route("/console/console.js", get(script))
        .route("/console/sign-in", get(sign_in_page).post(sign_in))
        .route("/console/sign-out", post(sign_out))
        .route("/console/orgs", get(organizations))
        .route("/console/orgs/{org}/devices", get(devices))
        .route("/console/orgs/{org}/devices/{device}", get(device))
        .route("/console/orgs/{org}/devices/{device}/revoke", post(revoke))
        .route(
            "/console/orgs/{org}/devices/{device}/wipe",
            post(order_wipe),
        )
        .route(
            "/console/orgs/{org}/devices/{device}/wipes/{order}/cancel",
            post(cancel_wipe),
        )
        .route(
            "/console/orgs/{org}/enrollment-codes",
            post(enrollment_code),
        )
        .route("/console/orgs/{org}/policy", get(policy))
        .route("/console/orgs/{org}/policy/preview", post(policy_preview))
        .route("/console/orgs/{org}/policy/publish", post(policy_publish))
        .route("/console/orgs/{org}/audit", get(audit))
        .layer(middleware::from_fn(security_headers))
        // A form is small: 256 KiB bounds the largest, the policy form,
        // whose rules are then held to the API's body limit.
        .layer(axum::extract::DefaultBodyLimit::max(
            4 * coffer_protocol::MAX_REQUEST_BODY,
        ))
        .with_state(console);
    pages.merge(api)
}

/// Headers every console answer carries.
async fn security_headers(mut req: Request, next: Next) -> Response {
    // HTTP/2 (what browsers speak over TLS here) carries the host as
    // `:authority`, with no `Host` header: the origin check compares
    // against it all the same.
    if !req.headers().contains_key(header::HOST) {
        let authority = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        if let Some(authority) = authority {
            req.headers_mut().insert(header::HOST, authority);
        }
    }
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // Not `no-referrer`: under it a browser sends `Origin: null` with
        // every form, and the origin check below could not tell this
        // console's forms from a sandboxed frame's.
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// What a console page failed on, as the browser is shown it.
enum ConsoleError {
    /// No session (or an expired one): sign in again.
    SignedOut,
    /// The API refused: its status and message, shown on the page, and
    /// its code when the answer had one.
    Refused(StatusCode, String, Option<ErrorCode>),
    /// A form without this session's CSRF token, or from another origin.
    Forged,
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        match self {
            ConsoleError::SignedOut => Redirect::to("/console/sign-in").into_response(),
            ConsoleError::Refused(status, message, _) => {
                pages::error_page(status, &message).into_response()
            }
            ConsoleError::Forged => pages::error_page(
                StatusCode::FORBIDDEN,
                "this form did not come from this console (a missing or wrong CSRF token, \
                 or another site's page): nothing was changed",
            )
            .into_response(),
        }
    }
}

/// Where a browser's request came from, passed on to the API so that its
/// login limits and audit rows name the browser, not the console.
#[derive(Clone)]
struct Caller {
    peer: Option<ConnectInfo<SocketAddr>>,
    forwarded: Vec<(header::HeaderName, HeaderValue)>,
}

impl Caller {
    fn of(req_headers: &HeaderMap, peer: Option<ConnectInfo<SocketAddr>>) -> Caller {
        let forwarded = [
            header::FORWARDED,
            header::HeaderName::from_static("x-forwarded-for"),
        ]
        .into_iter()
        .filter_map(|name| req_headers.get(&name).map(|v| (name, v.clone())))
        .collect();
        Caller { peer, forwarded }
    }

    /// Whether the browser is on this machine (then the cookie may go over
    /// plain HTTP: `--listen` allows that only on loopback).
    fn on_loopback(&self) -> bool {
        // A request forwarded by a proxy on this host came from elsewhere
        // (most likely over TLS): the cookie is Secure then.
        self.forwarded.is_empty() && self.peer.as_ref().is_some_and(|p| p.0.ip().is_loopback())
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().copied();
        Ok(Caller::of(&parts.headers, peer))
    }
}

impl Console {
    /// One request to the API, decoded as `T` on success.
    async fn call<T: Answer>(
        &self,
        caller: &Caller,
        method: Method,
        path: &str,
        token: Option<&WireSecret>,
        body: Option<Vec<u8>>,
    ) -> Result<T, ConsoleError> {
        let mut request = axum::http::Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header(AUTH_HEADER, token.expose_secret());
        }
        for (name, value) in &caller.forwarded {
            request = request.header(name, value);
        }
        let mut request = match body {
            Some(bytes) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(bytes)),
            None => request.body(Body::empty()),
        }
        .map_err(|_| refused_internally())?;
        if let Some(peer) = &caller.peer {
            request.extensions_mut().insert(*peer);
        }
        // The router's error type is Infallible.
        let Ok(response) = self.api.clone().oneshot(request).await;
        let status = response.status();
        // The API's answers are bounded (a page of a list); the console
        // asks for none of the large ones.
        let bytes = axum::body::to_bytes(response.into_body(), 4 * 1024 * 1024)
            .await
            .map_err(|_| refused_internally())?;
        if status.is_success() {
            return T::decode(&bytes).map_err(|_| refused_internally());
        }
        if status == StatusCode::UNAUTHORIZED && token.is_some() {
            return Err(ConsoleError::SignedOut);
        }
        Err(match ErrorBody::decode(&bytes) {
            Ok(e) => ConsoleError::Refused(status, e.error.message, Some(e.error.code)),
            Err(_) => ConsoleError::Refused(status, "the server refused".to_owned(), None),
        })
    }

    /// The signed-in session of a request, or [`ConsoleError::SignedOut`].
    fn session(&self, headers: &HeaderMap) -> Result<Arc<Session>, ConsoleError> {
        sessions::cookie_value(headers)
            .and_then(|id| self.sessions.get(id))
            .ok_or(ConsoleError::SignedOut)
    }

    /// The session of a form that changes something: its CSRF token must
    /// be this session's, and a browser's `Origin` this server.
    fn session_for_change(
        &self,
        headers: &HeaderMap,
        csrf: &str,
    ) -> Result<Arc<Session>, ConsoleError> {
        if !same_origin(headers) {
            return Err(ConsoleError::Forged);
        }
        let session = self.session(headers)?;
        if !session.csrf_matches(csrf) {
            return Err(ConsoleError::Forged);
        }
        Ok(session)
    }
}

fn refused_internally() -> ConsoleError {
    ConsoleError::Refused(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the console could not read the server's answer".to_owned(),
        None,
    )
}

/// Whether the `Origin` a browser sent (if any) is this server: scheme
/// aside, its host and port are the `Host` the request went to. Browsers
/// send `Origin` on every cross-site POST; its absence is a non-browser
/// client, which the CSRF token still has to satisfy.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let (Ok(origin), Some(Ok(host))) = (
        origin.to_str(),
        headers.get(header::HOST).map(|h| h.to_str()),
    ) else {
        return false;
    };
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    origin_host == Some(host)
}

async fn home(State(console): State<Console>, headers: HeaderMap) -> Response {
    match console.session(&headers) {
        Ok(_) => Redirect::to("/console/orgs").into_response(),
        Err(_) => Redirect::to("/console/sign-in").into_response(),
    }
}

async fn stylesheet() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("console.css"),
    )
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("console.js"),
    )
}

async fn sign_in_page() -> Response {
    pages::SignIn::blank().into_response()
}

/// The sign-in form.
#[derive(Deserialize)]
struct SignInForm {
    user: String,
    password: String,
}

async fn sign_in(
    State(console): State<Console>,
    caller: Caller,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Response {
    if !same_origin(&headers) {
        return ConsoleError::Forged.into_response();
    }
    let SignInForm { user, password } = form;
    // Moved into a secret at once: zeroized on drop.
    let login = Login {
        user: user.clone(),
        password: WireSecret::new(password),
    };
    let body = login.body().map(|(bytes, _)| bytes);
    let answer: Result<LoginAnswer, _> = console
        .call(&caller, Method::POST, Login::PATH, None, body)
        .await;
    match answer {
        Ok(answer) => match console.sessions.open(answer.token, answer.expires_at) {
            Some((cookie_value, _)) => {
                let cookie = sessions::set_cookie(&cookie_value, !caller.on_loopback());
                let mut response = Redirect::to("/console/orgs").into_response();
                if let Ok(value) = HeaderValue::from_str(&cookie) {
                    response.headers_mut().insert(header::SET_COOKIE, value);
                }
                response
            }
            None => pages::SignIn::refused(
                &user,
                "too many console sessions are open on this server: try again later",
            )
            .into_response(),
        },
        Err(ConsoleError::Refused(status, message, _)) => {
            let mut page = pages::SignIn::refused(&user, &message).into_response();
            *page.status_mut() = status;
            page
        }
        Err(other) => other.into_response(),
    }
}

/// A form that changes something: only its CSRF token.
#[derive(Deserialize)]
struct ChangeForm {
    csrf: String,
}

async fn sign_out(
    State(console): State<Console>,
    caller: Caller,
    headers: HeaderMap,
    Form(form): Form<ChangeForm>,
) -> Result<Response, ConsoleError> {
    let session = console.session_for_change(&headers, &form.csrf)?;
    // The API session ends too; an already-expired one is signed out all
    // the same.
    let _: Result<NoContent, _> = console
        .call(
            &caller,
            Method::POST,
            Logout::PATH,
            Some(session.api_token()),
            None,
        )
        .await;
    if let Some(id) = sessions::cookie_value(&headers) {
        console.sessions.close(id);
    }
    let mut response = Redirect::to("/console/sign-in").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(sessions::CLEAR_COOKIE),
    );
    Ok(response)
}

async fn organizations(
    State(console): State<Console>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ConsoleError> {
    let session = console.session(&headers)?;
    let me: MeAnswer = console
        .call(
            &caller,
            Method::GET,
            "/v1/me",
            Some(session.api_token()),
            None,
        )
        .await?;
    Ok(pages::Organizations::new(&session, me).into_response())
}

async fn devices(
    State(console): State<Console>,
    caller: Caller,
    headers: HeaderMap,
    Path(org): Path<i64>,
) -> Result<Response, ConsoleError> {
    let session = console.session(&headers)?;
    let token = Some(session.api_token());
    let me: MeAnswer = console
        .call(&caller, Method::GET, "/v1/me", token, None)
        .await?;
    let path = format!("/v1/orgs/{org}/devices");
    let list: DeviceList = console
        .call(&caller, Method::GET, &path, token, None)
        .await?;
    Ok(pages::Devices::new(&session, &me, org, list).into_response())
}

async fn revoke(
    State(console): State<Console>,
    caller: Caller,
    headers: HeaderMap,
    Path((org, device)): Path<(i64, i64)>,
    Form(form): Form<ChangeForm>,
) -> Result<Response, ConsoleError> {
    let session = console.session_for_change(&headers, &form.csrf)?;
    let path = format!("/v1/orgs/{org}/devices/{device}/revoke");
    let _: NoContent = console
        .call(
            &caller,
            Method::POST,
            &path,
            Some(session.api_token()),
            None,
        )
        .await?;
    Ok(Redirect::to(&format!("/console/orgs/{org}/devices")).into_response())
}

async fn audit(
    State(console): State<Console>,
    caller: Caller,
    headers: HeaderMap,
    Path(org): Path<i64>,
) -> Result<Response, ConsoleError> {
    let session = console.session(&headers)?;
    let token = Some(session.api_token());
    let me: MeAnswer = console
        .call(&caller, Method::GET, "/v1/me", token, None)
        .await?;
    let path = format!("/v1/orgs/{org}/audit/verify");
    let report: AuditReport = console
        .call(&caller, Method::GET, &path, token, None)
        .await?;
    Ok(pages::Audit::new(&session, &me, org, report).into_response())
}

impl Console {
    /// `/v1/me` and one device of `org` (by the API's device list: the
    /// roles that may see it).
    async fn device_of(
        &self,
        caller: &Caller,
        session: &Session,
        org: i64,
        device: i64,
    ) -> Result<(MeAnswer, DeviceSummary), ConsoleError> {
        let token = Some(session.api_token());
        let me: MeAnswer = self
            .call(caller, Method::GET, "/v1/me", token, None)
            .await?;
        let path = format!("/v1/orgs/{org}/devices");
        let list: DeviceList = self.call(caller, Method::GET, &path, token, None).await?;
        let found = list
            .devices
            .into_iter()
            .find(|d| d.id == device)
            .ok_or_else(|| {
                ConsoleError::Refused(
                    StatusCode::NOT_FOUND,
                    "no such device in this organization".to_owned(),
                    None,
                )
            })?;
        Ok((me, found))
    }

    /// The latest signed policy's document, `None` before the first.
    async fn current_policy(
        &self,
        caller: &Caller,
        session: &Session,
        org: i64,
    ) -> Result<Option<Document>, ConsoleError> {
        let path = format!("/v1/orgs/{org}/policies/latest");
        let answer: Result<SignedPolicy, _> = self
            .call(caller, Method::GET, &path, Some(session.api_token()), None)
            .await;
        match answer {
            Ok(signed) => serde_json::from_str::<Document>(&signed.document)
                .map(Some)
                .map_err(|_| refused_internally()),
            Err(ConsoleError::Refused(_, _, Some(ErrorCode::NoPolicy))) => Ok(None),
            Err(other) => Err(other),
        }
    }
}

async fn device(
    State(console): State<Console>,
    caller: Caller,
    headers: HeaderMap,
    Path((org, device)): Path<(i64, i64)>,
) -> Result<Response, ConsoleError> {
    let session = console.session(&headers)?;
    let (me, summary) = console.device_of(&caller, &session, org, device).await?;
    let path = format!("/v1/orgs/{org}/devices/{device}/wipes");
    let wipes: WipeOrders = console
        .call(&caller, Method::GET, &path, Some(session.api_token()), None)
        .await?;
    Ok(pages::DevicePage::new(&session, &me, org, summary, wipes).into_response())
}

/// The wipe form: the device's name typed again, and a user for a wipe
/// of one slot only.
#[derive(Deserialize)]
struct WipeForm {
    csrf: String,
    confirm: String,
    #[serde(default)]
    user: String,
}

async fn order_wipe(
    State(console): State<Console>,
    caller: Caller,
    headers: HeaderMap,
    Path((org, device)): Path<(i64, i64)>,
    Form(form): Form<WipeForm>,
) -> Result<Response, ConsoleError> {
    let session = console.session_for_change(&headers, &form.csrf)?;
    let (_, summary) = console.device_of(&caller, &session, org, device).await?;
    if form.confirm != summary.name {
        return Err(ConsoleError::Refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the name typed is not the device's: nothing was ordered".to_owned(),
            None,
        ));
    }
    let order = OrderWipe {
        user: Some(form.user.trim().to_owned()).filter(|u| !u.is_empty()),
    };
    let body = serde_json::to_vec(&order).map_err(|_| refused_internally())?;
    let path = format!("/v1/orgs/{org}/devices/{device}/wipe");
    let _: WipeOrdered = console
        .call(
            &caller,
            Method::POST,
            &path,
            Some(session.api_token()),
            Some(body),
        )
        .await?;
    Ok(Redirect::to(&format!("/console/orgs/{org}/devices/{device}")).into_response())
}

async fn cancel_wipe(
    State(console): State<Console>,
    caller: Caller,
    headers: HeaderMap,
    Path((org, device, order)): Path<(i64, i64, i64)>,
    Form(form): Form<ChangeForm>,
) -> Result<Response, ConsoleError> {
    let session = console.session_for_change(&headers, &form.csrf)?;
    let path = format!("/v1/orgs/{org}/devices/{device}/wipes/{order}/cancel");
    let _: NoContent = console
        .call(
            &caller,
            Method::POST,
            &path,
            Some(session.api_token()),
            None,
        )
        .await?;
    Ok(Redirect::to(&format!("/console/orgs/{org}/devices/{device}")).into_response())
}

async fn enrollment_code(
    State(console): State<Console>,
    caller: Caller,
    headers: HeaderMap,
    Path(org): Path<i64>,
    Form(form): Form<ChangeForm>,
) -> Result<Response, ConsoleError> {
    let session = console.session_for_change(&headers, &form.csrf)?;
    let token = Some(session.api_token());
    let me: MeAnswer = console
        .call(&caller, Method::GET, "/v1/me", token, None)
        .await?;
    let body =
        serde_json::to_vec(&NewEnrollmentCode::default()).map_err(|_| refused_internally())?;
    let path = format!("/v1/orgs/{org}/enrollment-codes");
    let code: EnrollmentCode = console
        .call(&caller, Method::POST, &path, token, Some(body))
        .await?;
    let mut page = pages::EnrollmentCodePage::new(&session, &me, org, &code).into_response();
    *page.status_mut() = StatusCode::CREATED;
    Ok(page)
}

async fn policy(
    State(console): State<Console>,
    caller: Caller,
    headers: HeaderMap,
    Path(org): Path<i64>,
) -> Result<Response, ConsoleError> {
    let session = console.session(&headers)?;
    let me: MeAnswer = console
        .call(
            &caller,
            Method::GET,
            "/v1/me",
            Some(session.api_token()),
            None,
        )
        .await?;
    let current = console.current_policy(&caller, &session, org).await?;
    Ok(pages::PolicyPage::new(&session, &me, org, current).into_response())
}

/// The policy form: the version to publish and the rules, as JSON.
#[derive(Deserialize)]
struct PolicyForm {
    csrf: String,
    version: String,
    rules: String,
}

impl PolicyForm {
    /// The request the form describes, or why it is not one.
    fn request(&self) -> Result<PublishRequest, String> {
        let version = self
            .version
            .trim()
            .parse::<i64>()
            .map_err(|_| "the version must be a whole number".to_owned())?;
        if self.rules.len() > coffer_protocol::MAX_REQUEST_BODY {
            return Err("the rules are too long".to_owned());
        }
        let rules: Rules = serde_json::from_str(&self.rules)
            .map_err(|e| format!("the rules are not valid JSON for a policy: {e}"))?;
        let request = PublishRequest { version, rules };
        request.check().map_err(|e| e.to_string())?;
        Ok(request)
    }
}

async fn policy_preview(
    State(console): State<Console>,
    caller: Caller,
    headers: HeaderMap,
    Path(org): Path<i64>,
    Form(form): Form<PolicyForm>,
) -> Result<Response, ConsoleError> {
    let session = console.session_for_change(&headers, &form.csrf)?;
    let me: MeAnswer = console
        .call(
            &caller,
            Method::GET,
            "/v1/me",
            Some(session.api_token()),
            None,
        )
        .await?;
    let current = console.current_policy(&caller, &session, org).await?;
    let page = match form.request() {
        Ok(request) => pages::PolicyPreview::new(&session, &me, org, current.as_ref(), &request),
        Err(problem) => {
            pages::PolicyPreview::refused(&session, &me, org, &form.version, &form.rules, &problem)
        }
    };
    Ok(page.into_response())
}

async fn policy_publish(
    State(console): State<Console>,
    caller: Caller,
    headers: HeaderMap,
    Path(org): Path<i64>,
    Form(form): Form<PolicyForm>,
) -> Result<Response, ConsoleError> {
    let session = console.session_for_change(&headers, &form.csrf)?;
    let request = form.request().map_err(|problem| {
        ConsoleError::Refused(StatusCode::UNPROCESSABLE_ENTITY, problem, None)
    })?;
    let body = serde_json::to_vec(&request).map_err(|_| refused_internally())?;
    let path = format!("/v1/orgs/{org}/policies");
    let _: SignedPolicy = console
        .call(
            &caller,
            Method::POST,
            &path,
            Some(session.api_token()),
            Some(body),
        )
        .await?;
    Ok(Redirect::to(&format!("/console/orgs/{org}/policy")).into_response())
}
