//! The console as a client of the API in this process: one request per
//! call, through the API's router, with the signed-in user's API session
//! and the browser's address; answers decoded into the protocol's types.
//!
//! Handlers take one of two extractors, so that none can forget a check:
//! - [`Signed`]: a page; the session the cookie names and `/v1/me`;
//! - [`Change`]: a form that changes something; the `Origin` is this
//!   server's and the form carries the session's CSRF token, both checked
//!   before the form reaches the handler.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Form, FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Router;
use coffer_protocol::admin::MeAnswer;
use coffer_protocol::{Answer, ErrorBody, ErrorCode, NoContent, WireSecret};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::local::LocalRequest;

use super::origin::same_origin;
use super::pages;
use super::sessions::{self, Session, Sessions};

/// The console's state: the API it is a client of, and its sessions.
#[derive(Clone)]
pub(super) struct Console {
    pub(super) api: Router,
    pub(super) sessions: Arc<Sessions>,
    /// Whether this server speaks TLS itself (its own origin's scheme).
    pub(super) tls: bool,
}

/// What a console page failed on, as the browser is shown it.
#[derive(Debug)]
pub(super) enum ConsoleError {
    /// No session (or an expired one): sign in again.
    SignedOut,
    /// The API refused: its status and message, shown on the page, and
    /// its code when the answer had one.
    Refused(StatusCode, String, Option<ErrorCode>),
    /// A form without this session's CSRF token, or from another origin.
    Forged,
}

impl ConsoleError {
    /// A refusal of the console's own (a confirmation typed wrong, a
    /// draft that is not a policy).
    pub(super) fn refused(status: StatusCode, message: impl Into<String>) -> ConsoleError {
        ConsoleError::Refused(status, message.into(), None)
    }

    /// The API's answer could not be read or the request not built.
    pub(super) fn internal() -> ConsoleError {
        ConsoleError::refused(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the console could not read the server's answer",
        )
    }
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
pub(super) struct Caller {
    peer: Option<ConnectInfo<SocketAddr>>,
    forwarded: Vec<(header::HeaderName, HeaderValue)>,
}

/// The headers a proxy names the browser with.
fn forwarding_headers() -> [header::HeaderName; 2] {
    [
        header::FORWARDED,
        header::HeaderName::from_static("x-forwarded-for"),
    ]
}

impl Caller {
    fn of(parts: &Parts) -> Caller {
        let forwarded = forwarding_headers()
            .into_iter()
            .filter_map(|name| parts.headers.get(&name).map(|v| (name, v.clone())))
            .collect();
        Caller {
            peer: parts.extensions.get::<ConnectInfo<SocketAddr>>().copied(),
            forwarded,
        }
    }

    /// Whether the browser is on this machine (then the cookie may go over
    /// plain HTTP: `--listen` allows that only on loopback).
    pub(super) fn on_loopback(&self) -> bool {
        // A request forwarded by a proxy on this host came from elsewhere
        // (most likely over TLS): the cookie is Secure then.
        self.forwarded.is_empty() && self.peer.as_ref().is_some_and(|p| p.0.ip().is_loopback())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Caller::of(parts))
    }
}

impl Console {
    /// One request to the API, decoded as `T` on success.
    pub(super) async fn call<T: Answer>(
        &self,
        caller: &Caller,
        method: Method,
        path: &str,
        token: Option<&WireSecret>,
        body: Option<Vec<u8>>,
    ) -> Result<T, ConsoleError> {
        self.call_bounded(
            caller,
            method,
            path,
            token,
            body,
            crate::local::MAX_LOCAL_ANSWER,
        )
        .await
    }

    /// [`Console::call`], reading at most `max_answer` bytes of the answer.
    async fn call_bounded<T: Answer>(
        &self,
        caller: &Caller,
        method: Method,
        path: &str,
        token: Option<&WireSecret>,
        body: Option<Vec<u8>>,
        max_answer: usize,
    ) -> Result<T, ConsoleError> {
        let mut extensions = axum::http::Extensions::new();
        if let Some(peer) = caller.peer {
            extensions.insert(peer);
        }
        let (status, bytes) = crate::local::call(
            &self.api,
            LocalRequest {
                method,
                path,
                token,
                body: body.map(|b| (b, "application/json")),
                headers: &caller.forwarded,
                extensions,
                max_answer,
            },
        )
        .await
        .map_err(|_| ConsoleError::internal())?;
        if status.is_success() {
            return T::decode(&bytes).map_err(|_| ConsoleError::internal());
        }
        if status == StatusCode::UNAUTHORIZED && token.is_some() {
            return Err(ConsoleError::SignedOut);
        }
        Err(match ErrorBody::decode(&bytes) {
            Ok(e) => ConsoleError::Refused(status, e.error.message, Some(e.error.code)),
            Err(_) => ConsoleError::Refused(status, "the server refused".to_owned(), None),
        })
    }

    /// Whether the console's cookie for `caller` is the Secure `__Host-`
    /// one: over TLS, or for a browser not on this machine (behind a
    /// proxy).
    pub(super) fn secure_cookie(&self, caller: &Caller) -> bool {
        self.tls || !caller.on_loopback()
    }

    /// The console cookie's value in a request from `caller`.
    pub(super) fn cookie<'h>(&self, headers: &'h HeaderMap, caller: &Caller) -> Option<&'h str> {
        sessions::cookie_value(headers, self.secure_cookie(caller))
    }

    /// The signed-in session a request's cookie names.
    fn session(&self, headers: &HeaderMap, caller: &Caller) -> Result<Arc<Session>, ConsoleError> {
        self.cookie(headers, caller)
            .and_then(|id| self.sessions.get(id))
            .ok_or(ConsoleError::SignedOut)
    }

    /// Whether a request has a live session (the home page's redirect).
    pub(super) fn signed_in(&self, headers: &HeaderMap, caller: &Caller) -> bool {
        self.session(headers, caller).is_ok()
    }
}

/// A signed-in browser's handle on the API: every call carries its API
/// session and its address.
#[derive(Clone)]
pub(super) struct Api {
    console: Console,
    caller: Caller,
    pub(super) session: Arc<Session>,
}

impl Api {
    /// `GET path`, decoded as `T`.
    pub(super) async fn get<T: Answer>(&self, path: &str) -> Result<T, ConsoleError> {
        self.console
            .call(
                &self.caller,
                Method::GET,
                path,
                Some(self.session.api_token()),
                None,
            )
            .await
    }

    /// `GET path`, decoded as `T`, reading an answer of up to `max_answer`
    /// bytes (an export's larger pages).
    pub(super) async fn get_large<T: Answer>(
        &self,
        path: &str,
        max_answer: usize,
    ) -> Result<T, ConsoleError> {
        self.console
            .call_bounded(
                &self.caller,
                Method::GET,
                path,
                Some(self.session.api_token()),
                None,
                max_answer,
            )
            .await
    }

    /// `method path` with `body` as JSON (`None`: no body).
    pub(super) async fn send<T: Answer>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ConsoleError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|_| ConsoleError::internal())?;
        self.console
            .call(
                &self.caller,
                method,
                path,
                Some(self.session.api_token()),
                body,
            )
            .await
    }

    /// A change without a body that the API answers `204 No Content`;
    /// then the browser is sent to `then`.
    pub(super) async fn act(
        &self,
        method: Method,
        path: &str,
        then: &str,
    ) -> Result<Response, ConsoleError> {
        let NoContent = self.send(method, path, None::<&()>).await?;
        Ok(Redirect::to(then).into_response())
    }

    /// The user and their organizations.
    pub(super) async fn me(&self) -> Result<MeAnswer, ConsoleError> {
        self.get("/v1/me").await
    }

    /// The console's state, for what is not one API call (signing out).
    pub(super) fn console(&self) -> &Console {
        &self.console
    }

    /// Who the browser is.
    pub(super) fn caller(&self) -> &Caller {
        &self.caller
    }
}

/// A page's extractor: the signed-in session (else a redirect to sign in)
/// and who the user is.
pub(super) struct Signed {
    pub(super) api: Api,
    pub(super) me: MeAnswer,
}

impl FromRequestParts<Console> for Signed {
    type Rejection = ConsoleError;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Console,
    ) -> Result<Self, Self::Rejection> {
        let caller = Caller::of(parts);
        let api = Api {
            session: console.session(&parts.headers, &caller)?,
            console: console.clone(),
            caller,
        };
        let me = api.me().await?;
        Ok(Signed { api, me })
    }
}

/// A form that changes something names its session's CSRF token.
pub(super) trait CsrfForm: DeserializeOwned {
    /// The token the form carried.
    fn csrf(&self) -> &str;
}

/// A change's extractor: the form, checked to come from this console (its
/// `Origin` and its CSRF token) before the handler sees it.
pub(super) struct Change<F> {
    pub(super) api: Api,
    pub(super) form: F,
}

impl<F: CsrfForm + Send> FromRequest<Console> for Change<F> {
    type Rejection = Response;

    async fn from_request(req: Request, console: &Console) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        if !same_origin(&parts.headers, console.tls) {
            return Err(ConsoleError::Forged.into_response());
        }
        let caller = Caller::of(&parts);
        let api = Api {
            session: console
                .session(&parts.headers, &caller)
                .map_err(IntoResponse::into_response)?,
            console: console.clone(),
            caller,
        };
        let req = Request::from_parts(parts, body);
        let Form(form) = Form::<F>::from_request(req, console).await.map_err(|_| {
            pages::error_page(
                StatusCode::BAD_REQUEST,
                "the form was not one this console sends (a field missing or malformed): \
                     nothing was changed",
            )
        })?;
        if !api.session.csrf_matches(form.csrf()) {
            return Err(ConsoleError::Forged.into_response());
        }
        Ok(Change { api, form })
    }
}

/// A new password typed twice, as a secret (zeroized on drop) once both
/// are the same; else a refusal saying `unchanged` (what did not happen).
pub(super) fn typed_twice(
    first: String,
    second: String,
    unchanged: &str,
) -> Result<WireSecret, ConsoleError> {
    let (first, second) = (WireSecret::new(first), WireSecret::new(second));
    if secrecy::ExposeSecret::expose_secret(&first) != secrecy::ExposeSecret::expose_secret(&second)
    {
        return Err(ConsoleError::refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the two passwords differ: {unchanged}"),
        ));
    }
    Ok(first)
}

/// A form that changes something and carries nothing but its CSRF token.
#[derive(serde::Deserialize)]
pub(super) struct ChangeForm {
    csrf: String,
}

impl CsrfForm for ChangeForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// Implements [`CsrfForm`] for forms with a `csrf` field.
macro_rules! csrf_forms {
    ($($form:ty),* $(,)?) => {$(
        impl $crate::console::client::CsrfForm for $form {
            fn csrf(&self) -> &str {
                &self.csrf
            }
        }
    )*};
}
pub(super) use csrf_forms;
