//! The admin console at `/console`: server-rendered pages for an
//! organization's admins (docs/server.md, "Console").
//!
//! The console is a client of the API living in the same process: every
//! page and every change is one or more requests to [`crate::api::router`],
//! made with the signed-in user's API session and the browser's client
//! address, and decoded into the protocol's types ([`client`]). So the
//! roles, the login limits, the validation and the audit trail are the
//! API's own; there is no second authorization layer to drift from the
//! first.
//!
//! What is the console's own is what a browser needs:
//! - [`sessions`]: a cookie (HttpOnly, SameSite=Strict, `__Host-` and
//!   Secure off loopback) naming a console session held by this process,
//!   which holds the API token; the cookie itself is no API credential;
//! - a CSRF token per session in every form, and the whole `Origin`
//!   ([`origin`]), checked before any change reaches its handler;
//! - a strict Content-Security-Policy (no inline script or style), no
//!   framing, no referrer to other sites, no caching;
//! - templates ([`pages`]) that escape every value: device names and
//!   readings are written by devices, user names by admins; charts are SVG
//!   drawn here ([`chart`]), so no script draws them.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

mod auth;
mod chart;
mod client;
mod data;
mod devices;
mod origin;
mod pages;
mod policy;
mod records;
pub mod sessions;
mod tenants;
mod users;

use client::Console;
use sessions::Sessions;

/// The content security policy of every console answer: nothing from
/// elsewhere, no inline script or style, no framing, forms only to here.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

/// The API router with the console beside it, under `/console`. `tls`:
/// whether this server speaks TLS itself (the scheme of its own origin);
/// `metrics`: the API's counters, which count the console's pages too
/// (each page's API calls are counted under their own routes besides).
pub fn with_console(
    api: Router,
    sessions: Arc<Sessions>,
    tls: bool,
    metrics: crate::metrics::Metrics,
) -> Router {
    let console = Console {
        api: api.clone(),
        sessions,
        tls,
    };
    let org = |path: &str| format!("/console/orgs/{{org}}{path}");
    let pages = Router::new()
        .route("/console", get(home))
        .route("/console/", get(home))
        .route("/console/console.css", get(stylesheet))
        .route("/console/console.js", get(script))
        .route(
            "/console/sign-in",
            get(auth::sign_in_page).post(auth::sign_in),
        )
        .route("/console/sign-out", post(auth::sign_out))
        .route("/console/orgs", get(auth::organizations))
        .route("/console/tenants", get(tenants::list).post(tenants::create))
        .route("/console/tenants/{org}/suspend", post(tenants::suspend))
        .route("/console/tenants/{org}/resume", post(tenants::resume))
        .route("/console/tenants/{org}/delete", post(tenants::delete))
        .route(
            "/console/password",
            get(auth::password_page).post(auth::change_password),
        )
        .route(&org("/devices"), get(devices::list))
        .route(&org("/devices/{device}"), get(devices::one))
        .route(&org("/devices/{device}/revoke"), post(devices::revoke))
        .route(&org("/devices/{device}/wipe"), post(devices::order_wipe))
        .route(
            &org("/devices/{device}/wipes/{order}/cancel"),
            post(devices::cancel_wipe),
        )
        .route(&org("/enrollment-codes"), post(devices::enrollment_code))
        .route(&org("/users"), get(users::list).post(users::add))
        .route(&org("/users/{user}/role"), post(users::set_role))
        .route(&org("/users/{user}/disable"), post(users::disable))
        .route(&org("/users/{user}/enable"), post(users::enable))
        .route(&org("/users/{user}/remove"), post(users::remove))
        .route(&org("/policy"), get(policy::current))
        .route(&org("/policy/preview"), post(policy::preview))
        .route(&org("/policy/publish"), post(policy::publish))
        .route(&org("/data"), get(data::readings))
        .route(&org("/data.csv"), get(data::readings_csv))
        .route(&org("/usage"), get(data::usage))
        .route(&org("/usage.csv"), get(data::usage_csv))
        .route(&org("/records"), get(records::list))
        .route(&org("/record"), get(records::one))
        .route(&org("/record/resolve"), post(records::resolve))
        .route(&org("/audit"), get(auth::audit))
        .layer(middleware::from_fn(security_headers))
        .layer(middleware::from_fn_with_state(
            metrics,
            crate::metrics::count,
        ))
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
        // every form, and the origin check could not tell this console's
        // forms from a sandboxed frame's.
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn home(
    State(console): State<Console>,
    caller: client::Caller,
    headers: HeaderMap,
) -> Response {
    if console.signed_in(&headers, &caller) {
        Redirect::to("/console/orgs").into_response()
    } else {
        Redirect::to("/console/sign-in").into_response()
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
