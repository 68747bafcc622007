//! Signing in and out, the user's organizations, and the audit check.

use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use coffer_protocol::admin::{AuditEvents, AuditQuery, AuditReport, ChangePassword, MeAnswer};
use coffer_protocol::session::{Login, LoginAnswer, Logout};
use coffer_protocol::{Endpoint, NoContent, WireSecret};
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::client::{csrf_forms, Caller, Change, ChangeForm, Console, ConsoleError, Signed};
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
    let answer: Result<(LoginAnswer, MeAnswer), _> = async {
        let answer: LoginAnswer = console
            .call(&caller, Method::POST, Login::PATH, None, body)
            .await?;
        let me: MeAnswer = console
            .call(&caller, Method::GET, "/v1/me", Some(&answer.token), None)
            .await?;
        Ok((answer, me))
    }
    .await;
    match answer {
        Ok((answer, me)) => match console
            .sessions
            .open(answer.token, me.user_id, answer.expires_at)
        {
            Some((cookie_value, _)) => {
                // Over TLS always Secure (and `__Host-`); over plain HTTP
                // only a browser on this machine may sign in.
                let secure = console.tls || !caller.on_loopback();
                let cookie = sessions::set_cookie(&cookie_value, secure);
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
    if let Some(id) = sessions::cookie_value(&headers) {
        change.api.console().sessions.close(id);
    }
    let mut response = Redirect::to("/console/sign-in").into_response();
    for clear in sessions::CLEAR_COOKIES {
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
    let report: AuditReport = signed
        .api
        .get(&format!("/v1/orgs/{org}/audit/verify"))
        .await?;
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
        new_password: WireSecret::new(form.new),
    };
    let again = WireSecret::new(form.new_again);
    if request.new_password.expose_secret() != again.expose_secret() {
        return Err(ConsoleError::refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the two new passwords differ: the password is unchanged",
        ));
    }
    let _: NoContent = api
        .send(Method::POST, "/v1/me/password", Some(&request))
        .await?;
    let me = api.me().await?;
    Ok(pages::PasswordPage::changed(&api.session, &me).into_response())
}
