//! Signing in and out, the user's organizations, and the audit check.

use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::{IntoResponse, Redirect, Response};
use coffer_protocol::admin::{AuditEvents, AuditQuery, AuditReport, ChangePassword, MeAnswer};
use coffer_protocol::session::{Login, LoginAnswer, Logout};
use coffer_protocol::{Endpoint, NoContent, WireSecret};
use serde::Deserialize;

use super::client::{
    csrf_forms, typed_twice, Caller, Change, ChangeForm, Console, ConsoleError, Signed,
};
use super::origin::same_origin;
use super::{pages, sessions};

pub(super) async fn sign_in_page() -> Response {
    pages::SignIn::blank().into_response()
}

/// The sign-in form.
#[derive(Deserialize)]
pub(super) struct SignInForm {
    user: String,
    password: String,
}

pub(super) async fn sign_in(
    State(console): State<Console>,
    caller: Caller,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Response {
    // Against login CSRF: another site signing this browser in as the
    // attacker's account.
    if !same_origin(&headers, console.tls) {
        return ConsoleError::Forged.into_response();
    }
    let SignInForm { user, password } = form;
    // Moved into a secret at once: zeroized on drop.
    let login = Login {
        user: user.clone(),
        password: WireSecret::new(password),
    };
    let body = login.body().map(|(bytes, _)| bytes);
    let answer: LoginAnswer = match console
        .call(&caller, Method::POST, Login::PATH, None, body)
        .await
    {
        Ok(answer) => answer,
        Err(ConsoleError::Refused(status, message, _)) => {
            let mut page = pages::SignIn::refused(&user, &message).into_response();
            *page.status_mut() = status;
            return page;
        }
        Err(other) => return other.into_response(),
    };
    let me: Result<MeAnswer, _> = console
        .call(&caller, Method::GET, "/v1/me", Some(&answer.token), None)
        .await;
    let opened = match me {
        Ok(me) => console
            .sessions
            .open(answer.token, me.user_id, answer.expires_at),
        Err(e) => {
            // Signed in, but not into the console: the API session ends.
            log_out(&console, &caller, &answer.token).await;
            return e.into_response();
        }
    };
    let opened = match opened {
        Ok(opened) => opened,
        Err(token) => {
            log_out(&console, &caller, &token).await;
            return ConsoleError::internal().into_response();
        }
    };
    // Sessions pushed out to make room are signed out of the API too.
    for token in &opened.evicted {
        log_out(&console, &caller, token).await;
    }
    let secure = console.secure_cookie(&caller);
    let mut response = Redirect::to("/console/orgs").into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&sessions::set_cookie(&opened.cookie, secure)) {
        headers.append(header::SET_COOKIE, value);
    }
    // And the cookie of the other context goes, if a browser holds one.
    let other = if secure {
        sessions::CLEAR_LOOPBACK_COOKIE
    } else {
        sessions::CLEAR_SECURE_COOKIE
    };
    headers.append(header::SET_COOKIE, HeaderValue::from_static(other));
    response
}

/// Ends an API session (an already-ended one is ended all the same).
async fn log_out(console: &Console, caller: &Caller, token: &WireSecret) {
    let _: Result<NoContent, _> = console
        .call(caller, Method::POST, Logout::PATH, Some(token), None)
        .await;
}

pub(super) async fn sign_out(
    headers: HeaderMap,
    change: Change<ChangeForm>,
) -> Result<Response, ConsoleError> {
    // The API session ends too; an already-expired one is signed out all
    // the same.
    let _: Result<NoContent, _> = change
        .api
        .send(Method::POST, Logout::PATH, None::<&()>)
        .await;
    let console = change.api.console();
    if let Some(id) = console.cookie(&headers, change.api.caller()) {
        console.sessions.close(id);
    }
    let mut response = Redirect::to("/console/sign-in").into_response();
    for clear in [
        sessions::CLEAR_SECURE_COOKIE,
        sessions::CLEAR_LOOPBACK_COOKIE,
    ] {
        response
            .headers_mut()
            .append(header::SET_COOKIE, HeaderValue::from_static(clear));
    }
    Ok(response)
}

pub(super) async fn organizations(signed: Signed) -> Result<Response, ConsoleError> {
    Ok(pages::Organizations::new(&signed).into_response())
}

/// The audit page's search, as its form sends it.
#[derive(Debug, Default, Deserialize)]
pub(super) struct AuditFilter {
    #[serde(default)]
    action: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    q: String,
    #[serde(default)]
    before: Option<i64>,
}

/// Audit rows one page shows.
const PAGE_AUDIT: i64 = 100;

pub(super) async fn audit(
    signed: Signed,
    Path(org): Path<i64>,
    Query(filter): Query<AuditFilter>,
) -> Result<Response, ConsoleError> {
    // The chain is checked on the search's first page only: it reads the
    // whole trail, and paging through a search must not repeat that.
    let report: Option<AuditReport> = match filter.before {
        None => Some(
            signed
                .api
                .get(&format!("/v1/orgs/{org}/audit/verify"))
                .await?,
        ),
        Some(_) => None,
    };
    let given = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
    let query = AuditQuery {
        action: given(&filter.action),
        actor: given(&filter.actor),
        q: given(&filter.q),
        before: filter.before,
        limit: Some(PAGE_AUDIT),
    };
    let encoded = serde_urlencoded::to_string(&query).map_err(|_| ConsoleError::internal())?;
    let events: AuditEvents = signed
        .api
        .get(&format!("/v1/orgs/{org}/audit/events?{encoded}"))
        .await?;
    // The older page's link keeps the search.
    let older = events
        .next_before
        .map(|before| {
            serde_urlencoded::to_string([
                ("action", filter.action.as_str()),
                ("actor", filter.actor.as_str()),
                ("q", filter.q.as_str()),
                ("before", &before.to_string()),
            ])
        })
        .transpose()
        .map_err(|_| ConsoleError::internal())?;
    Ok(pages::Audit::new(
        &signed,
        org,
        report,
        &filter.action,
        &filter.actor,
        &filter.q,
        events,
        older,
    )
    .into_response())
}

pub(super) async fn password_page(signed: Signed) -> Result<Response, ConsoleError> {
    Ok(pages::PasswordPage::new(&signed).into_response())
}

/// The password form: the current one, and the new one twice.
#[derive(Deserialize)]
pub(super) struct PasswordForm {
    csrf: String,
    current: String,
    new: String,
    new_again: String,
}

csrf_forms!(PasswordForm);

pub(super) async fn change_password(
    change: Change<PasswordForm>,
) -> Result<Response, ConsoleError> {
    let Change { api, form } = change;
    // Secrets from here on: zeroized on drop.
    let request = ChangePassword {
        old_password: WireSecret::new(form.current),
        new_password: typed_twice(form.new, form.new_again, "the password is unchanged")?,
    };
    let _: NoContent = api
        .send(Method::POST, "/v1/me/password", Some(&request))
        .await?;
    let me = api.me().await?;
    Ok(pages::PasswordPage::changed(&api.session, &me).into_response())
}
