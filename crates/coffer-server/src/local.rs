//! Requests to the API from inside this process (the console, the demo's
//! sample data): through the API's own router, so that every check,
//! audit row and usage count is the one a remote client meets.

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::Router;
use coffer_protocol::{WireSecret, AUTH_HEADER};
use secrecy::ExposeSecret;
use tower::ServiceExt;

/// The largest answer read from an in-process call: a page of a list.
pub const MAX_LOCAL_ANSWER: usize = 4 * 1024 * 1024;

/// One request for [`call`].
pub struct LocalRequest<'a> {
    /// The method.
    pub method: Method,
    /// The path and query.
    pub path: &'a str,
    /// The session or device token, if any.
    pub token: Option<&'a WireSecret>,
    /// The body and its content type, if any.
    pub body: Option<(Vec<u8>, &'a str)>,
    /// More headers (forwarding headers of the browser behind it).
    pub headers: &'a [(HeaderName, HeaderValue)],
    /// Request extensions the router reads (the client's address).
    pub extensions: axum::http::Extensions,
    /// The longest answer read (usually [`MAX_LOCAL_ANSWER`]).
    pub max_answer: usize,
}

/// Why an in-process call has no answer to read.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The request could not be built (a path that is not a URI).
    #[error("the request could not be built")]
    Request,
    /// The answer was longer than the request's `max_answer`, or cut off.
    #[error("the answer could not be read")]
    Answer,
}

/// Sends `request` through `api` and reads its status and body.
pub async fn call(
    api: &Router,
    request: LocalRequest<'_>,
) -> Result<(StatusCode, Bytes), LocalError> {
    let mut builder = axum::http::Request::builder()
        .method(request.method)
        .uri(request.path);
    if let Some(token) = request.token {
        builder = builder.header(AUTH_HEADER, token.expose_secret());
    }
    for (name, value) in request.headers {
        builder = builder.header(name, value);
    }
    let mut built = match request.body {
        Some((bytes, content_type)) => builder
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(bytes)),
        None => builder.body(Body::empty()),
    }
    .map_err(|_| LocalError::Request)?;
    built.extensions_mut().extend(request.extensions);
    let request_max = request.max_answer;
    // The router's error type is Infallible.
    let Ok(response) = api.clone().oneshot(built).await;
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), request_max)
        .await
        .map_err(|_| LocalError::Answer)?;
    Ok((status, bytes))
}
