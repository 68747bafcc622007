//! The admin console (`/console`) over real HTTP against a real server: the
//! cookie's flags, the security headers, escaping of a device's name, CSRF
//! and origin checks on every change, and the API's own roles.

#![allow(clippy::unwrap_used)]

mod support;

use reqwest::header::{HeaderMap, CONTENT_SECURITY_POLICY, LOCATION, ORIGIN, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::Value;
use support::postgres::Postgres;
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

// --- in a real browser -------------------------------------------------------

/// chromedriver on a free loopback port, and headless Chromium through it.
struct Browser {
    client: fantoccini::Client,
    driver: std::process::Child,
    _profile: tempfile::TempDir,
    shots: std::path::PathBuf,
}

impl Browser {
    async fn start() -> Browser {
        let chromium =
            std::env::var("COFFER_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let chromedriver =
            std::env::var("COFFER_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        assert!(
            std::path::Path::new(&chromium).exists()
                && std::path::Path::new(&chromedriver).exists(),
            "the console's browser test needs Debian's chromium and chromium-driver \
             (apt-get install chromium chromium-driver; .ci/run installs them)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = std::process::Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1100,900",
                         format!("--user-data-dir={}", profile.path().display())],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let mut last = None;
        for _ in 0..100 {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match fantoccini::ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => {
                    let shots = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                        .join("console-screenshots");
                    std::fs::create_dir_all(&shots).unwrap();
                    return Browser {
                        client,
                        driver,
                        _profile: profile,
                        shots,
                    };
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not start: {last:?}");
    }

    async fn shot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    /// The element `css` names, once it is there (up to 15 s): a click
    /// returns before the page it loads has arrived.
    async fn element(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(std::time::Duration::from_secs(15))
            .for_element(fantoccini::Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
    }

    async fn text(&self, css: &str) -> String {
        self.element(css).await.text().await.unwrap()
    }

    async fn fill(&self, css: &str, text: &str) {
        let field = self.element(css).await;
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    async fn click(&self, css: &str) {
        self.element(css).await.click().await.unwrap();
    }

    async fn sign_in(&self, server: &Running, user: &str) {
        self.client.goto(&server.url("/console")).await.unwrap();
        self.fill("#user", user).await;
        self.fill("#password", "correct horse battery").await;
        self.click("form.stacked button").await;
        self.wait_until_away_from("/console/sign-in").await;
    }

    /// Waits (up to 10 s) for the page to leave `path`: a click returns
    /// before the navigation it starts has ended.
    async fn wait_until_away_from(&self, path: &str) {
        for _ in 0..100 {
            if self.client.current_url().await.unwrap().path() != path {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Waits (up to 10 s) for the page to be on `host`.
    async fn wait_until_on_host(&self, host: &str) {
        for _ in 0..100 {
            if self.client.current_url().await.unwrap().host_str() == Some(host) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("the browser never reached {host}");
    }

    async fn stop(mut self) {
        self.client.close().await.unwrap();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Another site (`localhost`, where the console is `127.0.0.1`): one page
/// with a form posting to the console's revoke, without a CSRF token.
async fn hostile_site(target: String) -> String {
    let html = format!(
        "<!doctype html><form method=post action=\"{target}\"><input name=csrf value=guess>\
         <button id=go>win a prize</button></form>"
    );
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || async move { axum::response::Html(html) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://localhost:{port}/")
}

#[tokio::test]
async fn console_in_chromium() {
    let pg = Postgres::start();
    let url = pg.database("console").await;
    let server = Running::start(&url).await;
    let api = reqwest::Client::new();
    let acme = set_up(&server, &api).await;
    add_people(&url, acme).await;
    let alice = login(&server, &api, "alice", "correct horse battery")
        .await
        .unwrap();
    let browser = Browser::start().await;
    let c = &browser.client;

    browser.client.goto(&server.url("/console")).await.unwrap();
    browser.shot("sign-in").await;
    browser.sign_in(&server, "alice").await;
    let at = c.current_url().await.unwrap();
    assert!(
        at.path().ends_with("/console/orgs"),
        "{at}: {}",
        c.source().await.unwrap()
    );
    browser.shot("organizations").await;

    // An enrollment code, shown as text and as a QR code; a device spends it.
    c.goto(&server.url(&format!("/console/orgs/{acme}/devices")))
        .await
        .unwrap();
    browser.click("#new-enrollment-code").await;
    let code = browser.text("#enrollment-code").await;
    assert_eq!(code.len(), 48, "{code}");
    assert!(c
        .find(fantoccini::Locator::Css("figure.qr svg"))
        .await
        .is_ok());
    browser.shot("enrollment-code").await;
    // The request `coffer enroll --code` makes.
    let r = api
        .post(server.url("/v1/enroll"))
        .json(&serde_json::json!({"code": code, "name": "field-tablet-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let enrolled: Value = r.json().await.unwrap();
    let device = enrolled["device_id"].as_i64().unwrap();
    let device_token = enrolled["device_token"].as_str().unwrap().to_owned();
    // A second device, whose name (written around the API) is markup.
    let other = enrollment(&server, &api, acme, &alice, "spare").await["device_id"]
        .as_i64()
        .unwrap();
    let db = coffer_server::Store::open(&url).await.unwrap();
    db.execute_for_tests(&format!(
        "UPDATE devices SET name = '{HOSTILE_NAME}' WHERE id = {other}"
    ))
    .await
    .unwrap();
    c.goto(&server.url(&format!("/console/orgs/{acme}/devices")))
        .await
        .unwrap();
    assert_eq!(
        browser.text(&format!("#device-{device} td.name")).await,
        "field-tablet-1"
    );
    assert_eq!(
        browser.text(&format!("#device-{other} td.name")).await,
        HOSTILE_NAME
    );
    assert!(c
        .find_all(fantoccini::Locator::Css("main img"))
        .await
        .unwrap()
        .is_empty());
    assert!(c.get_alert_text().await.is_err(), "no script ran");
    browser.shot("devices").await;

    // A policy, published after its diff.
    c.goto(&server.url(&format!("/console/orgs/{acme}/policy")))
        .await
        .unwrap();
    let draft = c
        .find(fantoccini::Locator::Css("#policy-rules"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    assert!(draft.contains("\"check_in_secs\": 3600"), "{draft}");
    browser.shot("policy").await;
    browser
        .fill(
            "#policy-rules",
            &draft.replace("\"check_in_secs\": 3600", "\"check_in_secs\": 600"),
        )
        .await;
    browser.click("#policy-preview").await;
    let diff = browser.text("#policy-diff").await;
    assert!(diff.contains("+   \"check_in_secs\": 600"), "{diff}");
    browser.shot("policy-diff").await;
    browser.click("#policy-publish").await;
    assert!(browser
        .text("#policy-current")
        .await
        .starts_with("Version 1"));
    let r = get(
        &api,
        server.url(&format!("/v1/orgs/{acme}/policies/latest")),
        &alice,
    )
    .await;
    let signed: Value = r.json().await.unwrap();
    assert!(signed["document"]
        .as_str()
        .unwrap()
        .contains("\"check_in_secs\":600"));

    // A wipe, confirmed by the device's name; refused with another name.
    c.goto(&server.url(&format!("/console/orgs/{acme}/devices/{device}")))
        .await
        .unwrap();
    browser.fill("#wipe-confirm", "field-tablet-2").await;
    browser.click("#wipe-submit").await;
    assert!(browser
        .text("#error-message")
        .await
        .contains("not the device's"));
    c.goto(&server.url(&format!("/console/orgs/{acme}/devices/{device}")))
        .await
        .unwrap();
    assert!(c
        .find_all(fantoccini::Locator::Css("#wipes"))
        .await
        .unwrap()
        .is_empty());
    browser.fill("#wipe-confirm", "field-tablet-1").await;
    browser.click("#wipe-submit").await;
    assert_eq!(browser.text("#wipes .wipe-state").await, "pending");
    // The device checks in, is told, and acknowledges: the console shows it.
    let r = api
        .post(server.url("/v1/device/check-in"))
        .header("x-auth-token", &device_token)
        .send()
        .await
        .unwrap();
    let told: Value = r.json().await.unwrap();
    let order = told["wipe_orders"][0]["id"].as_i64().unwrap();
    let r = api
        .post(server.url(&format!("/v1/device/wipes/{order}/ack")))
        .header("x-auth-token", &device_token)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    c.refresh().await.unwrap();
    assert_eq!(browser.text("#wipes .wipe-state").await, "acknowledged");
    browser.shot("device").await;

    c.goto(&server.url(&format!("/console/orgs/{acme}/audit")))
        .await
        .unwrap();
    assert!(browser.text("#audit-state").await.contains("intact"));
    browser.shot("audit").await;

    // Another site's form, posted from the browser that is signed in:
    // SameSite keeps the cookie home and the token is missing; nothing
    // is revoked.
    let evil =
        hostile_site(server.url(&format!("/console/orgs/{acme}/devices/{other}/revoke"))).await;
    c.goto(&evil).await.unwrap();
    browser.click("#go").await;
    browser.wait_until_on_host("127.0.0.1").await;
    let landed = c.source().await.unwrap();
    assert!(
        landed.contains("Sign in") || landed.contains("did not come from this console"),
        "{landed}"
    );
    let list: Value = get(
        &api,
        server.url(&format!("/v1/orgs/{acme}/devices")),
        &alice,
    )
    .await
    .json()
    .await
    .unwrap();
    let revoked = list["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == other)
        .unwrap()["revoked"]
        .clone();
    assert_eq!(revoked, Value::Bool(false));

    // A member cannot reach the admin pages.
    c.goto(&server.url("/console/orgs")).await.unwrap();
    browser.click("form.sign-out button").await;
    browser.wait_until_away_from("/console/orgs").await;
    browser.sign_in(&server, "carol").await;
    c.goto(&server.url(&format!("/console/orgs/{acme}/devices")))
        .await
        .unwrap();
    assert!(!browser.text("#error-message").await.is_empty());
    assert!(c
        .find_all(fantoccini::Locator::Css("#devices"))
        .await
        .unwrap()
        .is_empty());
    browser.shot("member-refused").await;

    browser.stop().await;
    server.stop().await;
}
