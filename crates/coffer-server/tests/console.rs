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
        Browser::start_with(&[]).await
    }

    /// With more Chromium flags.
    async fn start_with(extra: &[&str]) -> Browser {
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
        let mut args: Vec<String> = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1100,900",
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .map(str::to_owned)
        .collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({"binary": chromium, "args": args}),
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

    /// A screenshot of the page at desktop and at phone width, after
    /// checking what every page must be: each control labelled (for the
    /// keyboard and screen readers), and nothing wider than a phone.
    async fn shot(&self, name: &str) {
        let unlabelled = self
            .client
            .execute(
                "return [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]
                   .filter(e => e.tagName === 'BUTTON'
                       ? !(e.textContent.trim() || e.getAttribute('aria-label'))
                       : !(e.labels.length || e.getAttribute('aria-label')))
                   .map(e => e.outerHTML.slice(0, 120))",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(
            unlabelled,
            serde_json::json!([]),
            "{name}: controls without a label"
        );
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
        self.client.set_window_size(390, 844).await.unwrap();
        let (scroll, client) = (
            self.client
                .execute("return document.documentElement.scrollWidth", vec![])
                .await
                .unwrap(),
            self.client
                .execute("return document.documentElement.clientWidth", vec![])
                .await
                .unwrap(),
        );
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{name}-phone.png")), png).unwrap();
        self.client.set_window_size(1100, 900).await.unwrap();
        assert!(
            scroll.as_i64().unwrap() <= client.as_i64().unwrap(),
            "{name}: {scroll} px wide on a {client} px phone screen"
        );
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
        panic!(
            "the browser stayed on {path}: {}",
            self.client.source().await.unwrap_or_default()
        );
    }

    /// Waits (up to 15 s) for the page's address to hold `part`; a click
    /// returns before the page it loads has arrived.
    async fn wait_until(&self, part: &str) {
        for _ in 0..150 {
            if self
                .client
                .current_url()
                .await
                .unwrap()
                .as_str()
                .contains(part)
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!(
            "the browser never reached a page with {part}: it is at {}",
            self.client.current_url().await.unwrap()
        );
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
    browser.fill("#a-action", "wipe_ordered").await;
    browser.click("#audit-search button").await;
    browser.wait_until("action=wipe_ordered").await;
    browser.element("#audit-events").await;
    let actions = c
        .find_all(fantoccini::Locator::Css("#audit-events td.action"))
        .await
        .unwrap();
    assert_eq!(actions.len(), 1);
    assert_eq!(actions[0].text().await.unwrap(), "wipe_ordered");
    browser.shot("audit").await;

    // Readings a device sent: a chart over time, the values as text.
    let sensor = enrollment(&server, &api, acme, &alice, "sensor-1").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let readings: Vec<Value> = (0..12)
        .map(|i| serde_json::json!({"at": now - 3600 * (12 - i), "name": "temp.c", "value": 18 + i % 5}))
        .chain([serde_json::json!({"at": now - 60, "name": "note", "value": HOSTILE_NAME})])
        .collect();
    let r = api
        .post(server.url("/v1/device/data"))
        .header("x-auth-token", sensor["device_token"].as_str().unwrap())
        .json(&serde_json::json!({"batch_id": "sensor-1-0001", "readings": readings}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    c.goto(&server.url(&format!("/console/orgs/{acme}/data")))
        .await
        .unwrap();
    let points = browser
        .element("figure.chart polyline.series-0")
        .await
        .attr("points")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(points.split(' ').count(), 12, "{points}");
    assert!(browser.text("#readings").await.contains(HOSTILE_NAME));
    assert!(c.get_alert_text().await.is_err(), "no script ran");
    browser.shot("data").await;

    // Usage: requests over time and per user, drawn as bars.
    c.goto(&server.url(&format!("/console/orgs/{acme}/usage?by=user&days=7")))
        .await
        .unwrap();
    assert!(!c
        .find_all(fantoccini::Locator::Css("#usage-per-key svg rect"))
        .await
        .unwrap()
        .is_empty());
    assert!(browser.text("#usage").await.contains("alice"));
    browser.shot("usage").await;

    // Users: add one (the password twice), then change their role.
    c.goto(&server.url(&format!("/console/orgs/{acme}/users")))
        .await
        .unwrap();
    browser.fill("#new-name", "dave").await;
    browser
        .fill("#new-password", "a long enough password")
        .await;
    browser
        .fill("#new-password-again", "a long enough password")
        .await;
    browser.click("#add-user-submit").await;
    let mut dave_row = None;
    for _ in 0..150 {
        let rows = c
            .find_all(fantoccini::Locator::XPath(
                "//table[@id='users']//tr[td[@class='name' and text()='dave']]",
            ))
            .await
            .unwrap();
        if let Some(row) = rows.first() {
            dave_row = Some(row.attr("id").await.unwrap().unwrap());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let dave = dave_row.expect("dave never appeared in the users table");
    assert_eq!(browser.text(&format!("#{dave} td.role")).await, "member");
    let dave_id = dave.trim_start_matches("user-");
    c.find(fantoccini::Locator::Css(&format!("#role-{dave_id}")))
        .await
        .unwrap()
        .select_by_value("auditor")
        .await
        .unwrap();
    browser
        .click(&format!("#{dave} form[action$='/role'] button"))
        .await;
    for _ in 0..100 {
        if browser.text(&format!("#{dave} td.role")).await == "auditor" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(browser.text(&format!("#{dave} td.role")).await, "auditor");
    browser.shot("users").await;

    // The operator's page of every organization.
    c.goto(&server.url("/console/tenants")).await.unwrap();
    assert!(browser.text("#tenants").await.contains("Acme"));
    browser.shot("tenants").await;

    // Records: two devices edit one record apart; the console shows the
    // conflict and resolves it with the second device's version.
    let r = support::post(
        &api,
        server.url(&format!("/v1/orgs/{acme}/policies")),
        &alice,
        serde_json::json!({"version": 2, "rules": {"check_in_secs": 600, "sync": ["cases"]}}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let me: Value = get(&api, server.url("/v1/me"), &alice)
        .await
        .json()
        .await
        .unwrap();
    let mut writers = Vec::new();
    for name in ["tablet-a", "tablet-b"] {
        let e = enrollment(&server, &api, acme, &alice, name).await;
        let r = support::post(
            &api,
            server.url(&format!("/v1/orgs/{acme}/sync/authors/bind")),
            &alice,
            serde_json::json!({"device_id": e["device_id"], "author": "alice", "user_id": me["user_id"]}),
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);
        writers.push(e["device_token"].as_str().unwrap().to_owned());
    }
    let rev = |b: u8, seq: u64| format!("{}.{seq}", format!("{b:02x}").repeat(16));
    let push = |token: String, batch: &'static str, ops: Value| {
        let api = api.clone();
        let url = server.url("/v1/device/sync/cases/push");
        async move {
            let r = api
                .post(url)
                .header("x-auth-token", token)
                .json(&serde_json::json!({"batch_id": batch, "ops": ops}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.text().await.unwrap()
        }
    };
    let op = |revision: String, base: Option<String>, name: &str| {
        serde_json::json!([{"collection": "visits", "id": "v/1", "revision": revision,
                            "base": base, "body": {"name": name}, "author": "alice"}])
    };
    push(
        writers[0].clone(),
        "batch-a-1",
        op(rev(0xa1, 1), None, "first"),
    )
    .await;
    push(
        writers[0].clone(),
        "batch-a-2",
        op(rev(0xa1, 2), Some(rev(0xa1, 1)), "from A"),
    )
    .await;
    let text = push(
        writers[1].clone(),
        "batch-b-1",
        op(rev(0xb2, 1), Some(rev(0xa1, 1)), "from B"),
    )
    .await;
    assert!(text.contains("conflict"), "{text}");
    c.goto(&server.url(&format!("/console/orgs/{acme}/records?conflicts=on")))
        .await
        .unwrap();
    browser.shot("records").await;
    browser.click("#records a").await;
    browser.wait_until("/record?").await;
    assert!(browser
        .text("#record-conflicts")
        .await
        .contains("1 conflicting version"));
    assert_eq!(browser.text("#record-id").await, "v/1");
    browser.shot("record-conflict").await;
    browser
        .click(&format!("[id='version-{}'] form button", rev(0xb2, 1)))
        .await;
    for _ in 0..100 {
        if c.find_all(fantoccini::Locator::Css("#record-conflicts"))
            .await
            .unwrap()
            .is_empty()
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let detail: Value = get(
        &api,
        server.url(&format!("/v1/orgs/{acme}/records/cases/visits/v%2F1")),
        &alice,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(detail["body"]["name"], "from B", "{detail}");
    assert_eq!(detail["leaves"], serde_json::json!([]));

    // Another site's form, posted from the browser that is signed in:
    // SameSite keeps the cookie home and the token is missing; nothing
    // is revoked. (This shows SameSite holding in a real browser; the
    // token and origin checks behind it are tested over HTTP, where a
    // request can carry the cookie.)
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

/// A console form posted with `cookie`, `csrf` and more fields, from this
/// server's origin (or `origin`).
async fn form_post(
    server: &Running,
    http: &reqwest::Client,
    cookie: &str,
    path: &str,
    fields: &[(&str, &str)],
    origin: Option<&str>,
) -> reqwest::Response {
    let own = server.url("");
    let origin = origin.unwrap_or(own.trim_end_matches('/'));
    http.post(server.url(path))
        .header("cookie", cookie)
        .header(ORIGIN, origin)
        .form(fields)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn console_users_data_usage_and_its_checks() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("server.db").display());
    let server = Running::start(&url).await;
    let api = reqwest::Client::new();
    let acme = set_up(&server, &api).await;
    add_people(&url, acme).await;
    let alice = login(&server, &api, "alice", "correct horse battery")
        .await
        .unwrap();
    let http = browser();
    let cookie = cookie_of(
        sign_in(&server, &http, "alice", "correct horse battery")
            .await
            .headers(),
    );
    let (_, html) = page(
        &server,
        &http,
        &cookie,
        &format!("/console/orgs/{acme}/users"),
    )
    .await;
    let csrf = csrf_in(&html);
    assert!(
        html.contains("carol") && html.contains("alice (you)"),
        "{html}"
    );

    // The API's list, for its own clients: members by name; a member is
    // refused it.
    let list: Value = get(&api, server.url(&format!("/v1/orgs/{acme}/users")), &alice)
        .await
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "carol"]);
    let carol_id = list["members"][1]["id"].as_i64().unwrap();
    let carol_api = login(&server, &api, "carol", "correct horse battery")
        .await
        .unwrap();
    let r = get(
        &api,
        server.url(&format!("/v1/orgs/{acme}/users")),
        &carol_api,
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // Another signed-in user's real CSRF token does not pass for alice's.
    let bob = cookie_of(
        sign_in(&server, &http, "bob", "correct horse battery")
            .await
            .headers(),
    );
    let (_, bob_page) = page(&server, &http, &bob, "/console/orgs").await;
    let bob_csrf = csrf_in(&bob_page);
    assert_ne!(bob_csrf, csrf);
    let disable = format!("/console/orgs/{acme}/users/{carol_id}/disable");
    let r = form_post(
        &server,
        &http,
        &cookie,
        &disable,
        &[("csrf", &bob_csrf), ("confirm", "carol")],
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Nor does the right token from an opaque origin, another scheme or
    // another port.
    let port = server
        .url("")
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let other_port = format!("http://127.0.0.1:{}", port.parse::<u16>().unwrap() ^ 1);
    for origin in ["null", &format!("https://127.0.0.1:{port}"), &other_port] {
        let r = form_post(
            &server,
            &http,
            &cookie,
            &disable,
            &[("csrf", &csrf), ("confirm", "carol")],
            Some(origin),
        )
        .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{origin}");
    }
    // The wrong name typed: nothing.
    let r = form_post(
        &server,
        &http,
        &cookie,
        &disable,
        &[("csrf", &csrf), ("confirm", "Carol")],
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = login(&server, &api, "carol", "correct horse battery").await;
    assert!(r.is_ok(), "carol is still enabled");
    // The right one: disabled, by the API (she cannot log in).
    let r = form_post(
        &server,
        &http,
        &cookie,
        &disable,
        &[("csrf", &csrf), ("confirm", "carol")],
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        login(&server, &api, "carol", "correct horse battery").await,
        Err("invalid_credentials".to_owned())
    );
    let (_, html) = page(
        &server,
        &http,
        &cookie,
        &format!("/console/orgs/{acme}/users"),
    )
    .await;
    assert!(html.contains("disabled"));

    // Adding a user: two different passwords add nobody.
    let users = format!("/console/orgs/{acme}/users");
    let r = form_post(
        &server,
        &http,
        &cookie,
        &users,
        &[
            ("csrf", &csrf),
            ("name", "erin"),
            ("role", "member"),
            ("password", "one long password"),
            ("password_again", "another long password"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        login(&server, &api, "erin", "one long password").await,
        Err("invalid_credentials".to_owned())
    );
    let r = form_post(
        &server,
        &http,
        &cookie,
        &users,
        &[
            ("csrf", &csrf),
            ("name", "erin"),
            ("role", "member"),
            ("password", "one long password"),
            ("password_again", "one long password"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let erin = login(&server, &api, "erin", "one long password")
        .await
        .unwrap();
    // Removed, confirmed by name: the API ends her sessions.
    let list: Value = get(&api, server.url(&format!("/v1/orgs/{acme}/users")), &alice)
        .await
        .json()
        .await
        .unwrap();
    let erin_id = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "erin")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let r = form_post(
        &server,
        &http,
        &cookie,
        &format!("{users}/{erin_id}/remove"),
        &[("csrf", &csrf), ("confirm", "erin")],
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        get(&api, server.url("/v1/me"), &erin).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // Readings: the page escapes a device's values; the CSV holds them
    // all, as a download.
    let sensor = enrollment(&server, &api, acme, &alice, "sensor-1").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let r = api
        .post(server.url("/v1/device/data"))
        .header("x-auth-token", sensor["device_token"].as_str().unwrap())
        .json(
            &serde_json::json!({"batch_id": "sensor-1-0001", "readings": [
                {"at": now - 120, "name": "temp.c", "value": 21.5},
                {"at": now - 60, "name": "note", "value": HOSTILE_NAME},
            ]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let (status, html) = page(
        &server,
        &http,
        &cookie,
        &format!("/console/orgs/{acme}/data?days=1"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!html.contains(HOSTILE_NAME) && html.contains("onerror=alert(1)"));
    assert!(html.contains("<polyline class=\"line series-0\""), "{html}");
    let (status, _) = page(
        &server,
        &http,
        &cookie,
        &format!("/console/orgs/{acme}/data?days=2"),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a range the page does not offer"
    );
    let r = http
        .get(server.url(&format!("/console/orgs/{acme}/data.csv?days=1")))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment"));
    let csv = r.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "id,device_id,at,name,value,received_at");
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[1].contains(",temp.c,21.5,"));

    // An export of more than one page is of the readings stored when it
    // started: those sent while it streams are not in it.
    let token = sensor["device_token"].as_str().unwrap().to_owned();
    let deliver = |batch: String, base: i64| {
        let api = api.clone();
        let url = server.url("/v1/device/data");
        let token = token.clone();
        async move {
            let readings: Vec<Value> = (0..1000)
                .map(|i| serde_json::json!({"at": base + i, "name": "bulk", "value": i}))
                .collect();
            let r = api
                .post(url)
                .header("x-auth-token", token)
                .json(&serde_json::json!({"batch_id": batch, "readings": readings}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
        }
    };
    for b in 0..6 {
        deliver(format!("bulk-batch-{b}"), now - 7000 + b * 1000).await;
    }
    let mut r = http
        .get(server.url(&format!("/console/orgs/{acme}/data.csv?days=1&name=bulk")))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    deliver("bulk-batch-late".to_owned(), now - 500).await;
    let mut csv = String::new();
    while let Some(chunk) = r.chunk().await.unwrap() {
        csv.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "id,device_id,at,name,value,received_at");
    assert_eq!(lines.len(), 1 + 6000, "six batches, not the late one");
    let ids: Vec<i64> = lines[1..]
        .iter()
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "each reading once, in order"
    );

    // Usage: charts and a CSV of the API's own report.
    let (status, html) = page(
        &server,
        &http,
        &cookie,
        &format!("/console/orgs/{acme}/usage?by=device&days=1"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("<rect class=\"bar\"") && html.contains("sensor-1"),
        "{html}"
    );
    let r = http
        .get(server.url(&format!("/console/orgs/{acme}/usage.csv?by=user&days=30")))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert!(r
        .text()
        .await
        .unwrap()
        .starts_with("id,requests,bytes_in,bytes_out,micros\n"));

    // Usage by time bucket (what the console's chart reads in one query):
    // the hours add up to the whole, each keyed by its first second.
    let usage = |by: &'static str| {
        let api = api.clone();
        let url = server.url(&format!("/v1/orgs/{acme}/usage?by={by}&from=0"));
        let alice = alice.clone();
        async move { get(&api, url, &alice).await.json::<Value>().await.unwrap() }
    };
    let (total, hours) = (usage("org").await, usage("hour").await);
    let sum: i64 = hours["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["id"].as_i64().unwrap() % 3600, 0);
            r["requests"].as_i64().unwrap()
        })
        .sum();
    // The second query is counted too (after it answered).
    assert!(sum >= total["rows"][0]["requests"].as_i64().unwrap());
    assert_eq!(hours["by"], "hour");

    // The policy's history: each version, who published it, what changed.
    for (version, secs) in [(1, 900), (2, 600)] {
        let r = support::post(
            &api,
            server.url(&format!("/v1/orgs/{acme}/policies")),
            &alice,
            serde_json::json!({"version": version, "rules": {"check_in_secs": secs}}),
        )
        .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let history: Value = get(
        &api,
        server.url(&format!("/v1/orgs/{acme}/policies?limit=1")),
        &alice,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(history["policies"].as_array().unwrap().len(), 1);
    assert_eq!(history["policies"][0]["version"], 2);
    assert_eq!(history["policies"][0]["published_by"], "alice");
    for bad in ["0", "101", "x"] {
        let r = get(
            &api,
            server.url(&format!("/v1/orgs/{acme}/policies?limit={bad}")),
            &alice,
        )
        .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let (_, html) = page(
        &server,
        &http,
        &cookie,
        &format!("/console/orgs/{acme}/policy"),
    )
    .await;
    let v2 = &html[html.find("id=\"policy-version-2\"").unwrap()..];
    let v2 = &v2[..v2.find("</tr>").unwrap()];
    assert!(
        v2.contains("- ") && v2.contains("900") && v2.contains("+ ") && v2.contains("600"),
        "{v2}"
    );
    // Devices against the policy: one that never checked in, one overdue.
    let db = coffer_server::Store::open(&url).await.unwrap();
    db.execute_for_tests(&format!(
        "UPDATE devices SET last_seen_at = {} WHERE id = {}",
        now - 3 * 600,
        sensor["device_id"]
    ))
    .await
    .unwrap();
    let (_, html) = page(
        &server,
        &http,
        &cookie,
        &format!("/console/orgs/{acme}/devices"),
    )
    .await;
    assert!(
        html.contains("<span class=\"alarm\">overdue</span>"),
        "{html}"
    );
    assert!(html.contains("1 need attention"));

    // The member's preview of a policy is refused before any diff is made.
    let carol_enabled = support::post(
        &api,
        server.url(&format!("/v1/orgs/{acme}/users/{carol_id}/enable")),
        &alice,
        serde_json::json!({}),
    )
    .await;
    assert!(carol_enabled.status().is_success());
    let carol = cookie_of(
        sign_in(&server, &http, "carol", "correct horse battery")
            .await
            .headers(),
    );
    let (_, carol_page) = page(&server, &http, &carol, "/console/orgs").await;
    let r = form_post(
        &server,
        &http,
        &carol,
        &format!("/console/orgs/{acme}/policy/preview"),
        &[
            ("csrf", &csrf_in(&carol_page)),
            ("version", "3"),
            ("rules", "{}"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // The audit trail, searched: by action, by actor, by text in the
    // details (a `%` is a percent sign, not a wildcard); a member is
    // refused the API's search.
    let (_, html) = page(
        &server,
        &http,
        &cookie,
        &format!("/console/orgs/{acme}/audit?action=user_disabled"),
    )
    .await;
    let table = &html[html.find("id=\"audit-events\"").unwrap()..];
    assert_eq!(table.matches("<td class=\"action\">").count(), 1, "{table}");
    assert!(table.contains("user_disabled") && table.contains(&format!("{carol_id}")));
    let search = |query: &'static str| {
        let api = api.clone();
        let url = server.url(&format!("/v1/orgs/{acme}/audit/events?{query}"));
        let alice = alice.clone();
        async move {
            let r = get(&api, url, &alice).await;
            assert_eq!(r.status(), StatusCode::OK, "{query}");
            r.json::<Value>().await.unwrap()
        }
    };
    let by_alice = search("actor=user:alice&limit=500").await;
    let events = by_alice["events"].as_array().unwrap();
    assert!(!events.is_empty());
    assert!(events.iter().all(|e| e["actor"] == "user:alice"));
    assert!(
        events
            .windows(2)
            .all(|w| w[0]["id"].as_i64() > w[1]["id"].as_i64()),
        "newest first"
    );
    let sensor_rows = search("q=sensor-1").await;
    assert!(sensor_rows["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "device_enrolled"));
    assert_eq!(search("q=%25").await["events"], serde_json::json!([]));
    // Case is ignored alike on both backends.
    let upper = search("q=SENSOR-1").await;
    assert_eq!(upper["events"], sensor_rows["events"]);
    // A page that ends the rows says there is no older one.
    let all = search("limit=500").await;
    let count = all["events"].as_array().unwrap().len();
    assert!(count < 500);
    let url = server.url(&format!("/v1/orgs/{acme}/audit/events?limit={count}"));
    let exact: Value = get(&api, url, &alice).await.json().await.unwrap();
    assert_eq!(exact["next_before"], Value::Null);
    let paged = search("limit=1").await;
    let before = paged["next_before"].as_i64().unwrap();
    let next = get(
        &api,
        server.url(&format!(
            "/v1/orgs/{acme}/audit/events?limit=1&before={before}"
        )),
        &alice,
    )
    .await
    .json::<Value>()
    .await
    .unwrap();
    assert!(next["events"][0]["id"].as_i64().unwrap() < before);
    for bad in ["limit=0", "limit=501", "before=x", "other=1"] {
        let r = get(
            &api,
            server.url(&format!("/v1/orgs/{acme}/audit/events?{bad}")),
            &alice,
        )
        .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let r = get(
        &api,
        server.url(&format!("/v1/orgs/{acme}/audit/events")),
        &carol_api,
    )
    .await;
    assert!(r.status().is_client_error());

    // The operators' page: every organization, made, suspended, deleted
    // (confirmed by its name) through the API's operator endpoints.
    let (status, html) = page(&server, &http, &cookie, "/console/tenants").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Acme") && html.contains("Other Org"));
    let r = form_post(
        &server,
        &http,
        &cookie,
        "/console/tenants",
        &[
            ("csrf", &csrf),
            ("name", "Beta"),
            ("owner", "beth"),
            ("password", "beth's long password"),
            ("password_again", "beth's other password"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = form_post(
        &server,
        &http,
        &cookie,
        "/console/tenants",
        &[
            ("csrf", &csrf),
            ("name", "Beta"),
            ("owner", "beth"),
            ("password", "beth's long password"),
            ("password_again", "beth's long password"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let orgs: Value = get(&api, server.url("/v1/orgs"), &alice)
        .await
        .json()
        .await
        .unwrap();
    let beta = orgs["organizations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "Beta")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    assert!(login(&server, &api, "beth", "beth's long password")
        .await
        .is_ok());
    let r = form_post(
        &server,
        &http,
        &cookie,
        &format!("/console/tenants/{beta}/suspend"),
        &[("csrf", &csrf)],
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (_, html) = page(&server, &http, &cookie, "/console/tenants").await;
    assert!(html.contains("Type Beta to delete it"));
    let delete = format!("/console/tenants/{beta}/delete");
    let r = form_post(
        &server,
        &http,
        &cookie,
        &delete,
        &[("csrf", &csrf), ("confirm", "Acme")],
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = form_post(
        &server,
        &http,
        &cookie,
        &delete,
        &[("csrf", &csrf), ("confirm", "Beta")],
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let r = get(&api, server.url(&format!("/v1/orgs/{beta}")), &alice).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Not an operator: the API's 403.
    let carol_console = cookie_of(
        sign_in(&server, &http, "carol", "correct horse battery")
            .await
            .headers(),
    );
    let (status, _) = page(&server, &http, &carol_console, "/console/tenants").await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The console's pages are counted in /metrics like the API's routes.
    let metrics = api
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "coffer_http_requests_total{method=\"GET\",route=\"/console/orgs/{org}/users\",status=\"2xx\"}"
        ),
        "{metrics}"
    );

    // Two console cookies name no session; nor does the `__Host-` one
    // where the console sets the plain one (here: loopback, plain HTTP).
    let value = cookie.split_once('=').unwrap().1;
    for cookies in [
        format!("{cookie}; coffer_console={value}"),
        format!("__Host-coffer_console={value}"),
    ] {
        let r = http
            .get(server.url("/console/orgs"))
            .header("cookie", cookies)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
    }

    // Changing one's password: the new one twice, the old one checked.
    let (_, html) = page(&server, &http, &cookie, "/console/password").await;
    assert!(html.contains("id=\"password-form\""));
    let r = form_post(
        &server,
        &http,
        &cookie,
        "/console/password",
        &[
            ("csrf", &csrf),
            ("current", "correct horse battery"),
            ("new", "a brand new passphrase"),
            ("new_again", "a brand new passphrase"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("id=\"password-changed\""));
    assert!(login(&server, &api, "alice", "a brand new passphrase")
        .await
        .is_ok());

    // Signing out ends the API session behind the cookie too.
    let live = || async {
        db.number_for_tests(
            "SELECT count(*) FROM sessions s JOIN users u ON u.id = s.user_id \
             WHERE u.name = 'alice' AND s.revoked_at IS NULL",
        )
        .await
        .unwrap()
    };
    let before = live().await;
    let r = form_post(
        &server,
        &http,
        &cookie,
        "/console/sign-out",
        &[("csrf", &csrf)],
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(live().await, before - 1);

    server.stop().await;
}

/// `coffer demo --console`'s sample data: made through the API on an
/// empty server (refused on one set up already), and every console page
/// has something to show.
#[tokio::test]
async fn demo_data_fills_every_console_page() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("server.db").display());
    let config = coffer_server::ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: url.clone(),
        force_plain: false,
        session_ttl: coffer_server::DEFAULT_SESSION_TTL,
        login_limits: coffer_server::LoginLimits::default(),
        tls: coffer_server::TlsSetting::Off,
        keys: coffer_server::testing::keyring(),
        adopt_unkeyed_audit: false,
        trusted_proxies: Default::default(),
        shutdown_grace: coffer_server::serve::DEFAULT_SHUTDOWN_GRACE,
    };
    let mut server = coffer_server::Server::bind(&config).await.unwrap();
    let demo = server.seed_demo().await.unwrap();
    let again = server.seed_demo().await.unwrap_err().to_string();
    assert!(
        again.contains("the server is set up already"),
        "never twice, never on a server set up: {again}"
    );
    let base = format!("http://{}", server.local_addr().unwrap());
    let running = Running::run(server, base.clone());
    let http = browser();
    let r = http
        .post(format!("{base}/console/sign-in"))
        .form(&[
            ("user", demo.user.as_str()),
            (
                "password",
                secrecy::ExposeSecret::expose_secret(&demo.password),
            ),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let cookie = cookie_of(r.headers());
    let org = demo.organization_id;
    let get_page = |path: String| {
        let http = http.clone();
        let cookie = cookie.clone();
        let url = format!("{base}{path}");
        async move {
            let r = http.get(url).header("cookie", cookie).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            r.text().await.unwrap()
        }
    };
    let devices = get_page(format!("/console/orgs/{org}/devices")).await;
    for name in [
        "ward-tablet-1",
        "ward-tablet-2",
        "van-laptop",
        "spare-phone",
    ] {
        assert!(devices.contains(name), "{name}");
    }
    assert!(devices.contains("never checked in") && devices.contains("held"));
    let users = get_page(format!("/console/orgs/{org}/users")).await;
    assert!(users.contains("amina") && users.contains("auditor"));
    let data = get_page(format!("/console/orgs/{org}/data")).await;
    assert!(data.contains("fridge.temp_c") && data.contains("<polyline"));
    let usage = get_page(format!("/console/orgs/{org}/usage")).await;
    assert!(usage.contains("<rect class=\"bar\""));
    let records = get_page(format!("/console/orgs/{org}/records?conflicts=on")).await;
    assert!(records.contains("2026-118") && records.contains("1 conflict"));
    let policy = get_page(format!("/console/orgs/{org}/policy")).await;
    assert!(policy.contains("policy-version-2") && policy.contains("policy-version-1"));
    let audit = get_page(format!("/console/orgs/{org}/audit")).await;
    assert!(audit.contains("intact"));
    running.stop().await;
}

/// The console over TLS (`--dev-tls`): Chromium speaks HTTP/2, whose
/// requests carry `:authority` and no `Host`; the cookie is the Secure
/// `__Host-` one (a browser would drop it otherwise, and the sign-in
/// would not hold); a form from the console's own https origin changes
/// what it should.
#[tokio::test]
async fn console_over_tls_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("server.db").display());
    let server = Running::start_dev_tls(&url, dir.path().join("tls")).await;
    let pem = std::fs::read(dir.path().join("tls/dev-tls-cert.pem")).unwrap();
    let api = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let acme = set_up(&server, &api).await;
    let alice = login(&server, &api, "alice", "correct horse battery")
        .await
        .unwrap();
    let device = enrollment(&server, &api, acme, &alice, "tls-tablet").await["device_id"]
        .as_i64()
        .unwrap();
    // The cookie over TLS, even from loopback.
    let r = api
        .post(server.url("/console/sign-in"))
        .form(&[("user", "alice"), ("password", "correct horse battery")])
        .send()
        .await
        .unwrap();
    let set = r.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(
        set.starts_with("__Host-coffer_console=") && set.contains("; Path=/; Secure; HttpOnly"),
        "{set}"
    );

    let browser = Browser::start_with(&["--ignore-certificate-errors"]).await;
    let c = &browser.client;
    // Signed in with the keyboard alone: the user field has the focus,
    // Tab reaches the password, Enter sends the form.
    c.goto(&server.url("/console")).await.unwrap();
    browser.element("#user").await;
    let focused = c
        .execute("return document.activeElement.id", vec![])
        .await
        .unwrap();
    assert_eq!(
        focused,
        Value::String("user".into()),
        "the first field has the focus"
    );
    let tab = char::from(fantoccini::key::Key::Tab);
    let enter = char::from(fantoccini::key::Key::Enter);
    c.active_element()
        .await
        .unwrap()
        .send_keys(&format!("alice{tab}correct horse battery{enter}"))
        .await
        .unwrap();
    browser.wait_until_away_from("/console/sign-in").await;
    assert!(c
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with("/console/orgs"));
    let protocol = c
        .execute(
            "return performance.getEntriesByType('navigation')[0].nextHopProtocol",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        protocol,
        Value::String("h2".into()),
        "HTTP/2 to the console"
    );
    c.goto(&server.url(&format!("/console/orgs/{acme}/devices/{device}")))
        .await
        .unwrap();
    browser.click("form[action$='/revoke'] button").await;
    browser.element("#devices").await;
    assert!(revoked(&server, &api, &alice, acme, device).await);
    browser.stop().await;
    server.stop().await;
}
