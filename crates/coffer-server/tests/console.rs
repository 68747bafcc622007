//! The admin console (`/console`) over real HTTP against a real server: the
//! cookie's flags, the security headers, escaping of a device's name, CSRF
//! and origin checks on every change, and the API's own roles.

#![allow(clippy::unwrap_used)]

mod support;

use reqwest::header::{HeaderMap, CONTENT_SECURITY_POLICY, LOCATION, ORIGIN, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::Value;
use support::{add_people, enrollment, get, login, set_up, Running};

const HOSTILE_NAME: &str = "<img src=x onerror=alert(1)>";

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The console cookie a sign-in set, as `name=value`.
fn cookie_of(headers: &HeaderMap) -> String {
    let set = headers.get(SET_COOKIE).unwrap().to_str().unwrap();
    set.split(';').next().unwrap().to_owned()
}

async fn sign_in(
    server: &Running,
    http: &reqwest::Client,
    user: &str,
    password: &str,
) -> reqwest::Response {
    http.post(server.url("/console/sign-in"))
        .form(&[("user", user), ("password", password)])
        .send()
        .await
        .unwrap()
}

async fn page(
    server: &Running,
    http: &reqwest::Client,
    cookie: &str,
    path: &str,
) -> (StatusCode, String) {
    let r = http
        .get(server.url(path))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    (r.status(), r.text().await.unwrap())
}

/// The CSRF token in a page's forms.
fn csrf_in(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    html[at..].split('"').next().unwrap().to_owned()
}

async fn revoked(
    server: &Running,
    api: &reqwest::Client,
    token: &str,
    org: i64,
    device: i64,
) -> bool {
    let list: Value = get(api, server.url(&format!("/v1/orgs/{org}/devices")), token)
        .await
        .json()
        .await
        .unwrap();
    list["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == device)
        .unwrap()["revoked"]
        .as_bool()
        .unwrap()
}

#[tokio::test]
async fn console_signs_in_escapes_and_refuses_forged_changes() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("server.db").display());
    let server = Running::start(&url).await;
    let api = reqwest::Client::new();
    let acme = set_up(&server, &api).await;
    add_people(&url, acme).await;
    let alice = login(&server, &api, "alice", "correct horse battery")
        .await
        .unwrap();
    let device = enrollment(&server, &api, acme, &alice, "field-tablet-1").await["device_id"]
        .as_i64()
        .unwrap();
    // Enrollment refuses markup in a name; the console escapes it all the
    // same, for a row written some other way (an older version, a
    // database restored by hand).
    let r = api
        .post(server.url("/v1/enroll"))
        .json(&serde_json::json!({"code": "0".repeat(48), "name": HOSTILE_NAME}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
    let db = coffer_server::Store::open(&url).await.unwrap();
    db.execute_for_tests(&format!(
        "UPDATE devices SET name = '{HOSTILE_NAME}' WHERE id = {device}"
    ))
    .await
    .unwrap();
    let http = browser();

    // The sign-in page: the strict policy and no framing.
    let r = http
        .get(server.url("/console/sign-in"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r
        .headers()
        .get(CONTENT_SECURITY_POLICY)
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(csp, coffer_server::console::CONTENT_SECURITY_POLICY);
    assert!(csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"));
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    let html = r.text().await.unwrap();
    assert!(
        !html.contains("<script>") && !html.contains("style="),
        "no inline script or style"
    );

    // Signed out: every page sends to the sign-in.
    let r = http.get(server.url("/console/orgs")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/console/sign-in");

    // A wrong password: the API's refusal, on the form, and no cookie.
    let r = sign_in(&server, &http, "alice", "wrong password here").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().get(SET_COOKIE).is_none());
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("wrong user name or password"));

    // A sign-in from another site's page is refused before the API.
    let r = http
        .post(server.url("/console/sign-in"))
        .header(ORIGIN, "https://evil.example")
        .form(&[("user", "alice"), ("password", "correct horse battery")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.headers().get(SET_COOKIE).is_none());

    // The right one: a cookie script cannot read and other sites never send.
    let r = sign_in(&server, &http, "alice", "correct horse battery").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/console/orgs");
    let set = r.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(set.contains(flag), "{flag} in {set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP on loopback: {set}");
    let cookie = cookie_of(r.headers());
    let cookie_value = cookie.split_once('=').unwrap().1.to_owned();
    // The cookie is no API credential.
    let r = get(&api, server.url("/v1/me"), &cookie_value).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let (status, html) = page(&server, &http, &cookie, "/console/orgs").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Acme") && html.contains("owner"));

    // The device's name is shown as text.
    let devices = format!("/console/orgs/{acme}/devices");
    let (status, html) = page(&server, &http, &cookie, &devices).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("&#60;img src=x onerror=alert(1)&#62;")
            || html.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{html}"
    );
    assert!(!html.contains(HOSTILE_NAME));
    let csrf = csrf_in(&html);

    // Revoking without the token, with another session's, or from another
    // origin changes nothing.
    let revoke = server.url(&format!("/console/orgs/{acme}/devices/{device}/revoke"));
    for (csrf, origin) in [
        ("", None),
        ("0123456789abcdef0123456789abcdef0123456789abcdef", None),
        (csrf.as_str(), Some("https://evil.example")),
    ] {
        let mut request = http
            .post(&revoke)
            .header("cookie", &cookie)
            .form(&[("csrf", csrf)]);
        if let Some(origin) = origin {
            request = request.header(ORIGIN, origin);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(!revoked(&server, &api, &alice, acme, device).await);
    }
    // A form without any csrf field at all is refused too.
    let r = http
        .post(&revoke)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
    assert!(!revoked(&server, &api, &alice, acme, device).await);

    // With it, from this origin: done, through the API (its audit row).
    let r = http
        .post(&revoke)
        .header("cookie", &cookie)
        .header(ORIGIN, server.url("").trim_end_matches('/'))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "{}",
        r.text().await.unwrap()
    );
    assert!(revoked(&server, &api, &alice, acme, device).await);
    let (_, html) = page(&server, &http, &cookie, &devices).await;
    assert!(html.contains("revoked"));

    let (status, html) = page(
        &server,
        &http,
        &cookie,
        &format!("/console/orgs/{acme}/audit"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("The chain is intact"), "{html}");

    // A member is refused the devices page by the API's own rule.
    let r = sign_in(&server, &http, "carol", "correct horse battery").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let carol = cookie_of(r.headers());
    let (status, html) = page(&server, &http, &carol, &devices).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(html.contains("id=\"error-message\""));
    assert!(!html.contains("onerror"));
    // And bob, of another organization, does not learn this one exists.
    let r = sign_in(&server, &http, "bob", "correct horse battery").await;
    let bob = cookie_of(r.headers());
    let (status, _) = page(&server, &http, &bob, &devices).await;
    assert!(
        status == StatusCode::NOT_FOUND || status == StatusCode::FORBIDDEN,
        "{status}"
    );

    // Signing out ends the console session and clears the cookie.
    let r = http
        .post(server.url("/console/sign-out"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(r.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let r = http
        .get(server.url("/console/orgs"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/console/sign-in");

    server.stop().await;
}
