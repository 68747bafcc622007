//! Signed policies, key escrow, remote wipe and check-in, device data
//! delivery and the master key: the same suite on SQLite and on a real
//! PostgreSQL.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::PathBuf;
use std::sync::Arc;

use coffer_server::keys::{KeyError, Keyring, MasterKey};
use coffer_server::serve::ServeError;
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::postgres::Postgres;
use support::{add_people, enrollment, error_code, get, login, post, set_up, Running};

const PW: &str = "correct horse battery";

/// A device enrolled into `org` with a code from `admin`: (id, token, the
/// policy key it was given).
async fn enroll(
    server: &Running,
    http: &reqwest::Client,
    org: i64,
    admin: &str,
    name: &str,
) -> (i64, String, String) {
    let body = enrollment(server, http, org, admin, name).await;
    (
        body["device_id"].as_i64().unwrap(),
        body["device_token"].as_str().unwrap().to_owned(),
        body["policy_public_key"].as_str().unwrap().to_owned(),
    )
}

async fn release(
    server: &Running,
    http: &reqwest::Client,
    device: &str,
    user: Option<&str>,
) -> reqwest::Response {
    let mut request = http
        .post(server.url("/v1/device/escrow/release"))
        .header("x-auth-token", device);
    if let Some(user) = user {
        request = request.header("x-user-token", user);
    }
    request.send().await.unwrap()
}

async fn deposit(
    server: &Running,
    http: &reqwest::Client,
    device: &str,
    key: &str,
) -> reqwest::Response {
    http.put(server.url("/v1/device/escrow"))
        .header("x-auth-token", device)
        .json(&json!({"escrow_key": key}))
        .send()
        .await
        .unwrap()
}

async fn check_in(server: &Running, http: &reqwest::Client, device: &str) -> Value {
    let r = post(http, server.url("/v1/device/check-in"), device, json!({})).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// Sends `head` (and nothing more) over a raw connection; the answer.
async fn raw_request(base: &str, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Delivers `body` with `Transfer-Encoding: chunked` (no Content-Length).
async fn send_chunked(base: &str, token: &str, body: &[u8]) -> String {
    let (first, second) = body.split_at(body.len() / 2);
    let head = format!(
        "POST /v1/device/data HTTP/1.1\r\nHost: x\r\nx-auth-token: {token}\r\n\
         content-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
         {:x}\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        first.len(),
        String::from_utf8_lossy(first),
        second.len(),
        String::from_utf8_lossy(second),
    );
    raw_request(base, &head).await
}

fn random_key() -> String {
    use rand_core::RngCore;
    let mut bytes = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Whether any file under `paths` holds `needle`.
fn files_contain(paths: &[PathBuf], needle: &[u8]) -> bool {
    let mut stack = paths.to_vec();
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        } else if let Ok(bytes) = std::fs::read(&path) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                return true;
            }
        }
    }
    false
}

/// The whole device-facing control on the database `url`, whose raw files
/// are under `raw` (for the at-rest scan).
async fn suite(url: &str, raw: Vec<PathBuf>, checkpoint: impl AsyncFn()) {
    let server = Running::start(url).await;
    let http = reqwest::Client::new();
    let acme = set_up(&server, &http).await;
    add_people(url, acme).await;
    let alice = login(&server, &http, "alice", PW).await.unwrap();
    let bob = login(&server, &http, "bob", PW).await.unwrap();
    let carol = login(&server, &http, "carol", PW).await.unwrap();
    let other = get(&http, server.url("/v1/me"), &bob)
        .await
        .json::<Value>()
        .await
        .unwrap()["organizations"][0]["id"]
        .as_i64()
        .unwrap();

    // The organization's key: made at setup, the same for every member,
    // and given to devices at enrollment.
    let key_url = server.url(&format!("/v1/orgs/{acme}/policy-key"));
    let key: Value = get(&http, key_url.clone(), &carol)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(key["algorithm"], "ed25519");
    let public_key = key["public_key"].as_str().unwrap().to_owned();
    assert_eq!(
        get(&http, key_url, &bob).await.status(),
        StatusCode::NOT_FOUND
    );
    let (d1, d1_token, pinned) = enroll(&server, &http, acme, &alice, "field-tablet-1").await;
    assert_eq!(pinned, public_key);

    policies(&server, &http, acme, &alice, &carol, &d1_token, &pinned).await;

    // Escrow.
    let escrow_key = random_key();
    for bad in ["nothex".to_owned(), "00".repeat(15), "00".repeat(65)] {
        let r = deposit(&server, &http, &d1_token, &bad).await;
        assert_eq!(error_code(r).await, "invalid_escrow_key");
    }
    assert_eq!(
        deposit(&server, &http, &d1_token, &escrow_key)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    for user in [&alice, &carol] {
        let r = release(&server, &http, &d1_token, Some(user)).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.json::<Value>().await.unwrap()["escrow_key"], escrow_key);
    }
    // A member of another organization, no session, a bad session.
    let r = release(&server, &http, &d1_token, Some(&bob)).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(r).await, "not_in_organization");
    let r = release(&server, &http, &d1_token, None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = release(&server, &http, &d1_token, Some(&"0".repeat(48))).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A user session is not a device token.
    let r = release(&server, &http, &alice, Some(&alice)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Another device of the organization gets its own (none), never d1's.
    let (d2, d2_token, _) = enroll(&server, &http, acme, &alice, "field-tablet-2").await;
    let r = release(&server, &http, &d2_token, Some(&alice)).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "no_escrow");
    // A device of another organization: Acme's users get nothing from it.
    let (_d3, d3_token, d3_key) = enroll(&server, &http, other, &bob, "other-phone").await;
    assert_ne!(d3_key, public_key, "each organization has its own key");
    deposit(&server, &http, &d3_token, &random_key()).await;
    let r = release(&server, &http, &d3_token, Some(&alice)).await;
    assert_eq!(error_code(r).await, "not_in_organization");
    release_tokens(&server, &http, acme, &alice).await;

    // A disabled user: their sessions end, so release is refused.
    let carol_id = get(&http, server.url("/v1/me"), &carol)
        .await
        .json::<Value>()
        .await
        .unwrap()["user_id"]
        .as_i64()
        .unwrap();
    let r = post(
        &http,
        server.url(&format!("/v1/orgs/{acme}/users/{carol_id}/disable")),
        &alice,
        json!({}),
    )
    .await;
    assert!(r.status().is_success(), "{}", r.status());
    let r = release(&server, &http, &d1_token, Some(&carol)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Every release and refusal is in the audit trail, with user and device.
    let db = coffer_server::Store::open(url).await.unwrap();
    let rows = db.audit_rows().await.unwrap();
    let released: Vec<_> = rows
        .iter()
        .filter(|r| r.event.action == "escrow_released")
        .collect();
    assert_eq!(released.len(), 3);
    assert_eq!(released[0].event.actor, "user:alice");
    assert!(released[0]
        .event
        .details
        .contains(&format!("\"device_id\":{d1}")));
    assert!(rows
        .iter()
        .any(|r| r.event.action == "escrow_release_refused" && r.event.actor == "user:bob"));

    // A sealed value moved to another row does not open there: the server
    // fails rather than hand device 2 the key of device 1.
    db.execute_for_tests(&format!(
        "INSERT INTO escrow_keys (device_id, sealed_key, deposited_at)
         SELECT {d2}, sealed_key, 0 FROM escrow_keys WHERE device_id = {d1}"
    ))
    .await
    .unwrap();
    let r = release(&server, &http, &d2_token, Some(&alice)).await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!r.text().await.unwrap().contains(&escrow_key));
    db.execute_for_tests(&format!("DELETE FROM escrow_keys WHERE device_id = {d2}"))
        .await
        .unwrap();

    wipes(
        &server,
        &http,
        acme,
        &alice,
        &bob,
        (d1, &d1_token),
        (d2, &d2_token),
    )
    .await;
    // The store itself refuses a deposit for a revoked device, in the
    // transaction that would write it (a deposit that authenticated just
    // before the revocation cannot bring a key back).
    let sealed = coffer_server::testing::keyring()
        .seal(&format!("escrow:{d1}"), &[7; 32])
        .unwrap();
    assert!(matches!(
        db.deposit_escrow(d1, &sealed).await,
        Err(coffer_server::StoreError::DeviceRevoked)
    ));
    assert_eq!(db.escrow(d1).await.unwrap(), None);
    delivery(&server, &http, acme, &alice, &bob, &carol, (d2, &d2_token)).await;

    // At rest: the escrow key appears in no file of the database, in any
    // form, while the device's name (stored in clear) does: the scan sees
    // the data.
    let escrow_bytes = hex::decode(&escrow_key).unwrap();
    let d2_escrow = random_key();
    deposit(&server, &http, &d2_token, &d2_escrow).await;
    checkpoint().await;
    assert!(
        files_contain(&raw, b"field-tablet-1"),
        "the scan reads the data"
    );
    for secret in [&escrow_key, &d2_escrow] {
        let bytes = hex::decode(secret).unwrap();
        assert!(!files_contain(&raw, &bytes));
        assert!(!files_contain(&raw, secret.as_bytes()));
        assert!(!files_contain(&raw, secret.to_uppercase().as_bytes()));
    }
    assert!(!files_contain(&raw, &escrow_bytes[..16]));
    server.stop().await;

    master_key(url, &d2_token, &d2_escrow).await;

    support::assert_logs_free_of(&[
        &escrow_key,
        &d2_escrow,
        &alice,
        &bob,
        &d1_token,
        &d2_token,
        &d3_token,
    ]);
}

/// The release token: a locked device's credential, good for escrow
/// release, check-in and wipe acknowledgement, and nothing else.
async fn release_tokens(server: &Running, http: &reqwest::Client, acme: i64, alice: &str) {
    let enrolled = enrollment(server, http, acme, alice, "locked-tablet").await;
    let device = enrolled["device_id"].as_i64().unwrap();
    let token = enrolled["device_token"].as_str().unwrap();
    let release = enrolled["release_token"].as_str().unwrap();
    assert_ne!(token, release);
    let key = random_key();
    deposit(server, http, token, &key).await;
    let r = release_with(server, http, release, alice).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["escrow_key"], key);
    assert_eq!(check_in(server, http, release).await["device_id"], device);
    // Nothing else.
    for r in [
        get(http, server.url("/v1/device/policy"), release).await,
        get(http, server.url("/v1/device"), release).await,
        post(http, server.url("/v1/device/token"), release, json!({})).await,
        deposit(server, http, release, &random_key()).await,
    ] {
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    // Revoked: the release token releases nothing.
    post(
        http,
        server.url(&format!("/v1/orgs/{acme}/devices/{device}/revoke")),
        alice,
        json!({}),
    )
    .await;
    let r = release_with(server, http, release, alice).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

async fn release_with(
    server: &Running,
    http: &reqwest::Client,
    device: &str,
    user: &str,
) -> reqwest::Response {
    release(server, http, device, Some(user)).await
}

/// Publishing and fetching signed policies.
async fn policies(
    server: &Running,
    http: &reqwest::Client,
    acme: i64,
    alice: &str,
    carol: &str,
    device: &str,
    pinned: &str,
) {
    let publish = server.url(&format!("/v1/orgs/{acme}/policies"));
    let r = get(http, server.url("/v1/device/policy"), device).await;
    assert_eq!(error_code(r).await, "no_policy");
    // Members read policies; only owners and admins publish.
    let r = post(http, publish.clone(), carol, json!({"version": 1})).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = post(
        http,
        publish.clone(),
        alice,
        json!({"version": 1, "rules": {"apps": {"notes": ["telepathy"]}}}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_code(r).await, "invalid_policy");
    let r = post(
        http,
        publish.clone(),
        alice,
        json!({"version": 1, "rules": {"typo": 1}}),
    )
    .await;
    assert_eq!(error_code(r).await, "invalid_body");
    let r = post(http, publish.clone(), alice, json!({"version": 2})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    // Versions only go up.
    for version in [1, 2] {
        let r = post(http, publish.clone(), alice, json!({"version": version})).await;
        assert_eq!(r.status(), StatusCode::CONFLICT);
        assert_eq!(error_code(r).await, "version_not_newer");
    }
    let rules = json!({
        "passphrase": {"min_length": 12, "min_classes": 3},
        "max_failed_attempts": 5,
        "on_max_failed": "wipe",
        "apps": {"*": ["kv"], "survey": ["sql", "files"]},
        "refuse_debugger": true,
    });
    let r = post(
        http,
        publish.clone(),
        alice,
        json!({"version": 3, "rules": rules}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);

    let latest: Value = get(http, server.url("/v1/device/policy"), device)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(latest["version"], 3);
    let member_view: Value = get(
        http,
        server.url(&format!("/v1/orgs/{acme}/policies/latest")),
        carol,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(member_view["document"], latest["document"]);
    // The signature verifies with the pinned key, and fails after any
    // byte of the document changes.
    let document = latest["document"].as_str().unwrap().as_bytes().to_vec();
    let signature = hex::decode(latest["signature"].as_str().unwrap()).unwrap();
    let key = hex::decode(pinned).unwrap();
    assert!(coffer_server::policy::verify(&key, &document, &signature));
    for i in 0..document.len() {
        let mut altered = document.clone();
        altered[i] ^= 0x01;
        assert!(!coffer_server::policy::verify(&key, &altered, &signature));
    }
    let mut bad_signature = signature.clone();
    bad_signature[10] ^= 0x80;
    assert!(!coffer_server::policy::verify(
        &key,
        &document,
        &bad_signature
    ));
    // The document says everything: defaults are written out.
    let parsed: coffer_server::policy::Document = serde_json::from_slice(&document).unwrap();
    assert_eq!(parsed.organization_id, acme);
    assert_eq!(parsed.version, 3);
    assert_eq!(parsed.rules.passphrase.min_length, 12);
    assert_eq!(
        parsed.rules.on_max_failed,
        coffer_server::policy::FailedAction::Wipe
    );
    assert_eq!(parsed.rules.check_in_secs, 3600);
    assert_eq!(
        coffer_server::policy::Document::to_canonical(&parsed).unwrap(),
        document,
        "the document is canonical"
    );
    // Check-in reports the latest version.
    assert_eq!(check_in(server, http, device).await["policy_version"], 3);
    // Eight admins publishing version 4 at once: one wins, the others are
    // told it exists.
    let answers = support::join_all((0..8).map(|_| {
        let (http, url, alice) = (http.clone(), publish.clone(), alice.to_owned());
        async move { post(&http, url, &alice, json!({"version": 4})).await }
    }))
    .await;
    let statuses: Vec<_> = answers.iter().map(|r| r.status()).collect();
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert!(statuses
        .iter()
        .all(|s| matches!(*s, StatusCode::CREATED | StatusCode::CONFLICT)));
}

/// Policy versions are bounded (docs/formats/policy.md): a version above
/// `MAX_POLICY_VERSION` is refused before anything is signed, stored or
/// audited, so no publish can leave an organization with nothing above
/// its latest version; the bound itself is published and verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_versions_are_bounded_on_sqlite() {
    use coffer_server::policy::{SignedPolicy, MAX_POLICY_VERSION};
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("server.db").display());
    let server = Running::start(&url).await;
    let http = reqwest::Client::new();
    let acme = set_up(&server, &http).await;
    let alice = login(&server, &http, "alice", PW).await.unwrap();
    let (_, device, pinned) = enroll(&server, &http, acme, &alice, "field-tablet-1").await;
    let publish = server.url(&format!("/v1/orgs/{acme}/policies"));
    let publish_version = |version: i64| {
        let (http, url, alice) = (http.clone(), publish.clone(), alice.clone());
        async move { post(&http, url, &alice, json!({"version": version})).await }
    };
    let refused_out_of_range = |r: reqwest::Response| async move {
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_body", "{body}");
        assert_eq!(
            body["error"]["message"],
            format!("version must be 1 to {MAX_POLICY_VERSION}")
        );
    };
    let published = || async {
        let db = coffer_server::Store::open(&url).await.unwrap();
        db.audit_rows()
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.event.action == "policy_published")
            .count()
    };

    // Above the bound, and below 1: refused, nothing published.
    for version in [MAX_POLICY_VERSION + 1, i64::MAX, 0, -1, i64::MIN] {
        refused_out_of_range(publish_version(version).await).await;
    }
    let r = get(&http, server.url("/v1/device/policy"), &device).await;
    assert_eq!(error_code(r).await, "no_policy");
    assert_eq!(published().await, 0);

    // Below the bound, versions go up as before.
    assert_eq!(publish_version(5).await.status(), StatusCode::CREATED);
    refused_out_of_range(publish_version(i64::MAX).await).await;

    // One publish cannot use up the range: a version may go at most
    // MAX_POLICY_VERSION_STEP above the latest.
    let step = coffer_server::policy::MAX_POLICY_VERSION_STEP;
    let r = publish_version(MAX_POLICY_VERSION).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["error"]["message"],
        format!("a version may be at most {step} above the latest published (5)")
    );
    assert_eq!(published().await, 1);
    let r = publish_version(5 + step + 1).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // The bound itself is reached step by step, and a device accepts it.
    let mut version = 5;
    let mut publishes = 1;
    while version < MAX_POLICY_VERSION {
        version = (version + step).min(MAX_POLICY_VERSION);
        assert_eq!(publish_version(version).await.status(), StatusCode::CREATED);
        publishes += 1;
    }
    assert!(publishes > 20, "{publishes} publishes to reach the bound");
    let latest: SignedPolicy = get(&http, server.url("/v1/device/policy"), &device)
        .await
        .json()
        .await
        .unwrap();
    let document = latest
        .verify(&hex::decode(&pinned).unwrap(), acme, Some(5))
        .unwrap();
    assert_eq!(document.version, MAX_POLICY_VERSION);
    assert_eq!(published().await, publishes);

    // At the bound, a publish is refused only as what the docs say: not
    // newer (at or below it) or out of range (above it).
    for version in [MAX_POLICY_VERSION, MAX_POLICY_VERSION - 1, 6] {
        let r = publish_version(version).await;
        assert_eq!(r.status(), StatusCode::CONFLICT, "{version}");
        assert_eq!(error_code(r).await, "version_not_newer");
    }
    refused_out_of_range(publish_version(MAX_POLICY_VERSION + 1).await).await;
    assert_eq!(published().await, publishes);
    server.stop().await;
}

/// Remote wipe orders, check-in and acknowledgement; revocation.
async fn wipes(
    server: &Running,
    http: &reqwest::Client,
    acme: i64,
    alice: &str,
    bob: &str,
    (d1, d1_token): (i64, &str),
    (d2, d2_token): (i64, &str),
) {
    let wipe = |device: i64| server.url(&format!("/v1/orgs/{acme}/devices/{device}/wipe"));
    let orders = |device: i64| server.url(&format!("/v1/orgs/{acme}/devices/{device}/wipes"));
    let ack = |order: i64| server.url(&format!("/v1/device/wipes/{order}/ack"));

    // Another organization's owner cannot see or order anything here.
    assert_eq!(
        post(http, wipe(d1), bob, json!({})).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        post(
            http,
            server.url(&format!("/v1/orgs/{acme}/devices/999999/wipe")),
            alice,
            json!({})
        )
        .await
        .status(),
        StatusCode::NOT_FOUND
    );

    // One user's slot: the escrow key stays, but that user gets nothing
    // from it until the device has carried the wipe out.
    let r = post(http, wipe(d1), alice, json!({"user": "alice"})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let order: Value = r.json().await.unwrap();
    assert_eq!(order["scope"], "user");
    let order_id = order["id"].as_i64().unwrap();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for _ in 0..2 {
        // Returned at every check-in until acknowledged.
        let seen = check_in(server, http, d1_token).await;
        assert_eq!(seen["wipe_orders"].as_array().unwrap().len(), 1);
        assert_eq!(seen["wipe_orders"][0]["id"], order_id);
        assert_eq!(seen["wipe_orders"][0]["user"], "alice");
        assert_eq!(seen["escrow_present"], true);
        assert!((seen["server_time"].as_i64().unwrap() - before).abs() < 60);
    }
    let list: Value = get(http, server.url(&format!("/v1/orgs/{acme}/devices")), alice)
        .await
        .json()
        .await
        .unwrap();
    let listed = list["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == d1)
        .unwrap()
        .clone();
    assert_eq!(listed["pending_wipes"], 1);
    assert_eq!(listed["last_seen_address"], "127.0.0.1");
    assert!(listed["last_seen_at"].as_i64().unwrap() >= before);
    assert_eq!(listed["escrow"], true);
    let r = release(server, http, d1_token, Some(alice)).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(r).await, "wipe_pending");
    // Only this device may acknowledge its order.
    assert_eq!(
        post(http, ack(order_id), d2_token, json!({}))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    for _ in 0..2 {
        // A retried acknowledgement is answered the same way.
        assert_eq!(
            post(http, ack(order_id), d1_token, json!({}))
                .await
                .status(),
            StatusCode::NO_CONTENT
        );
    }
    assert!(check_in(server, http, d1_token).await["wipe_orders"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(
        release(server, http, d1_token, Some(alice)).await.status(),
        StatusCode::OK
    );
    let shown: Value = get(http, orders(d1), alice).await.json().await.unwrap();
    assert_eq!(shown["orders"][0]["state"], "acknowledged");
    assert!(shown["orders"][0]["acknowledged_at"].is_i64());
    let cancel = |device: i64, order: i64| {
        server.url(&format!(
            "/v1/orgs/{acme}/devices/{device}/wipes/{order}/cancel"
        ))
    };
    let r = post(http, cancel(d1, order_id), alice, json!({})).await;
    assert_eq!(error_code(r).await, "wipe_acknowledged");

    // The whole device: its escrow key is deleted at once, and it cannot
    // deposit another until it has carried out the wipe.
    let r = post(http, wipe(d1), alice, json!({})).await;
    let whole = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let r = release(server, http, d1_token, Some(alice)).await;
    assert_eq!(error_code(r).await, "wipe_pending");
    let r = deposit(server, http, d1_token, &random_key()).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(r).await, "wipe_pending");
    let seen = check_in(server, http, d1_token).await;
    assert_eq!(seen["wipe_orders"][0]["scope"], "device");
    assert_eq!(seen["escrow_present"], false);
    post(http, ack(whole), d1_token, json!({})).await;
    let fresh = random_key();
    assert_eq!(
        deposit(server, http, d1_token, &fresh).await.status(),
        StatusCode::NO_CONTENT
    );

    // A cancelled order is no longer returned, and cannot be acknowledged.
    let r = post(http, wipe(d2), alice, json!({"user": "dave"})).await;
    let cancelled = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    assert_eq!(
        post(http, cancel(d1, cancelled), alice, json!({}))
            .await
            .status(),
        StatusCode::NOT_FOUND,
        "an order is cancelled through its own device"
    );
    assert_eq!(
        post(http, cancel(d2, cancelled), alice, json!({}))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert!(check_in(server, http, d2_token).await["wipe_orders"]
        .as_array()
        .unwrap()
        .is_empty());
    let r = post(http, ack(cancelled), d2_token, json!({})).await;
    assert_eq!(error_code(r).await, "wipe_cancelled");

    // Revocation deletes the escrow key; the revoked device can no longer
    // obtain it, but can still check in (and would receive a wipe order).
    let r = post(
        http,
        server.url(&format!("/v1/orgs/{acme}/devices/{d1}/revoke")),
        alice,
        json!({}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = release(server, http, d1_token, Some(alice)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let seen = check_in(server, http, d1_token).await;
    assert_eq!(seen["revoked"], true);
    // It cannot deposit a new key either, and revoking again is harmless.
    let r = deposit(server, http, d1_token, &random_key()).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = post(
        http,
        server.url(&format!("/v1/orgs/{acme}/devices/{d1}/revoke")),
        alice,
        json!({}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(seen["escrow_present"], false);
}

/// Data delivery: JSON and CBOR, retries stored once, bad batches refused,
/// queries, CSV export, accounting.
async fn delivery(
    server: &Running,
    http: &reqwest::Client,
    acme: i64,
    alice: &str,
    bob: &str,
    carol_disabled: &str,
    (d2, d2_token): (i64, &str),
) {
    let send = |body: Vec<u8>, content_type: &'static str| {
        let request = http
            .post(server.url("/v1/device/data"))
            .header("x-auth-token", d2_token)
            .header("content-type", content_type)
            .body(body);
        async move { request.send().await.unwrap() }
    };
    let batch = json!({
        "batch_id": "batch-0001",
        "readings": [
            {"at": 1_700_000_000, "name": "temp.c", "value": 21},
            {"at": 1_700_000_060, "name": "note", "value": {"text": "door, \"open\""}},
        ],
    });
    let json_body = serde_json::to_vec(&batch).unwrap();
    let device_bytes = || async {
        let usage: Value = get(
            http,
            server.url(&format!("/v1/orgs/{acme}/usage?by=device")),
            alice,
        )
        .await
        .json()
        .await
        .unwrap();
        usage["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == d2)
            .map_or(0, |r| r["bytes_in"].as_i64().unwrap())
    };
    let bytes_before = device_bytes().await;
    let r = send(json_body.clone(), "application/json").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.json::<Value>().await.unwrap()["stored"], 2);
    // Retries, in either encoding, are stored once.
    let r = send(json_body.clone(), "application/json").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["duplicate"], true);
    let mut cbor = Vec::new();
    ciborium::ser::into_writer(&batch, &mut cbor).unwrap();
    assert!(cbor.len() < json_body.len());
    let r = send(cbor.clone(), "application/cbor").await;
    assert_eq!(r.json::<Value>().await.unwrap()["duplicate"], true);
    // A different batch reusing the id is refused.
    let mut reused = batch.clone();
    reused["readings"][0]["value"] = json!(22);
    let r = send(serde_json::to_vec(&reused).unwrap(), "application/json").await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(r).await, "batch_conflict");
    // A new batch over CBOR.
    let second = json!({
        "batch_id": "batch-0002",
        "readings": [{"at": 1_700_000_120, "name": "temp.c", "value": 23.5}],
    });
    let mut second_cbor = Vec::new();
    ciborium::ser::into_writer(&second, &mut second_cbor).unwrap();
    let r = send(second_cbor.clone(), "application/cbor").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    // A batch sent chunked, with no Content-Length: counted all the same.
    let chunked = serde_json::to_vec(&json!({
        "batch_id": "batch-chunked",
        "readings": [{"at": 1_700_000_180, "name": "temp.c", "value": 24}],
    }))
    .unwrap();
    let answer = send_chunked(&server.base, d2_token, &chunked).await;
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    // Accounting counted exactly the bytes of these six deliveries.
    let sent = 2 * json_body.len()
        + cbor.len()
        + serde_json::to_vec(&reused).unwrap().len()
        + second_cbor.len()
        + chunked.len();
    assert_eq!(device_bytes().await - bytes_before, sent as i64);
    // A body the server never reads (refused before) counts nothing,
    // whatever its Content-Length claims.
    let claimed = raw_request(
        &server.base,
        "POST /v1/device/data HTTP/1.1\r\nHost: x\r\nx-auth-token: not-a-token\r\n\
         content-type: application/json\r\ncontent-length: 9000000\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(claimed.starts_with("HTTP/1.1 401"), "{claimed}");
    let unclaimed: Value = get(
        http,
        server.url(&format!("/v1/orgs/{acme}/usage?by=org")),
        alice,
    )
    .await
    .json()
    .await
    .unwrap();
    assert!(
        unclaimed["rows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["bytes_in"].as_i64().unwrap() < 9_000_000),
        "{unclaimed}"
    );

    // Bad input: a clear 4xx each, nothing stored.
    let cases: Vec<(Vec<u8>, &'static str, StatusCode, &str)> = vec![
        (
            b"{\"batch_id\": ".to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            "malformed_batch",
        ),
        (
            vec![0xff, 0x00, 0x13],
            "application/cbor",
            StatusCode::BAD_REQUEST,
            "malformed_batch",
        ),
        (
            serde_json::to_vec(&json!({"batch_id": "batch-0003", "readings": []})).unwrap(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_batch",
        ),
        (
            serde_json::to_vec(&json!({"batch_id": "b", "readings": [{"at": 1, "name": "x", "value": 1}]}))
                .unwrap(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_batch",
        ),
        (
            serde_json::to_vec(&json!({"batch_id": "batch-0004", "readings": [{"at": 1, "name": "=HYPERLINK()", "value": 1}]}))
                .unwrap(),
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_batch",
        ),
        (
            json_body.clone(),
            "text/plain",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            vec![b' '; 100 * 1024],
            "application/json",
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
    ];
    for (body, content_type, status, code) in cases {
        let r = send(body, content_type).await;
        assert_eq!(r.status(), status, "{code}");
        assert_eq!(error_code(r).await, code);
    }

    // Queries: by device and time range, paged; CSV export.
    let data = |query: &str, who: &str| {
        let url = server.url(&format!("/v1/orgs/{acme}/data?{query}"));
        let (http, who) = (http.clone(), who.to_owned());
        async move { get(&http, url, &who).await }
    };
    let all: Value = data(&format!("device={d2}"), alice)
        .await
        .json()
        .await
        .unwrap();
    let readings = all["readings"].as_array().unwrap();
    assert_eq!(readings.len(), 4, "{all}");
    assert_eq!(readings[1]["value"], json!({"text": "door, \"open\""}));
    assert_eq!(all["next_after"], Value::Null);
    let ranged: Value = data("from=1700000060&to=1700000120", alice)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ranged["readings"].as_array().unwrap().len(), 1);
    assert_eq!(ranged["readings"][0]["name"], "note");
    let page: Value = data("limit=2", alice).await.json().await.unwrap();
    let next = page["next_after"].as_i64().unwrap();
    let rest: Value = data(&format!("after={next}"), alice)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rest["readings"].as_array().unwrap().len(), 2);
    let r = data("format=csv&name=temp.c", alice).await;
    assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = r.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "id,device_id,at,name,value,received_at");
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(lines[2].contains(&format!(",{d2},1700000120,temp.c,23.5,")));
    let r = data("limit=0", alice).await;
    assert_eq!(error_code(r).await, "invalid_query");
    let r = data("device=abc", alice).await;
    assert_eq!(error_code(r).await, "invalid_query");
    // Another organization sees nothing; a disabled session nothing either.
    assert_eq!(data("", bob).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        data("", carol_disabled).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // Concurrent retries of one batch: stored once.
    let racing = json!({
        "batch_id": "batch-race",
        "readings": [{"at": 1_700_000_500, "name": "temp.c", "value": 30}],
    });
    let body = serde_json::to_vec(&racing).unwrap();
    let answers = support::join_all((0..8).map(|_| send(body.clone(), "application/json"))).await;
    let created = answers
        .iter()
        .filter(|r| r.status() == StatusCode::CREATED)
        .count();
    assert_eq!(created, 1);
    assert!(answers
        .iter()
        .all(|r| matches!(r.status(), StatusCode::CREATED | StatusCode::OK)));
}

/// A CBOR batch holding NaN or an infinity is refused (not stored as
/// `null`), bytes after a CBOR batch are refused as JSON's are, and a
/// malformed batch's message is the server's fixed text, never the
/// parser's; nothing of a refused batch is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_finite_and_trailing_cbor_batches_are_refused_on_sqlite() {
    use ciborium::Value as C;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("server.db").display());
    let server = Running::start(&url).await;
    let http = reqwest::Client::new();
    let acme = set_up(&server, &http).await;
    let alice = login(&server, &http, "alice", PW).await.unwrap();
    let (_, device, _) = enroll(&server, &http, acme, &alice, "field-tablet-1").await;
    let send = |body: Vec<u8>, content_type: &'static str| {
        let request = http
            .post(server.url("/v1/device/data"))
            .header("x-auth-token", &device)
            .header("content-type", content_type)
            .body(body);
        async move {
            let r = request.send().await.unwrap();
            let status = r.status();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let cbor = |batch_id: &str, values: Vec<C>| {
        let text = |t: &str| C::Text(t.to_owned());
        let readings = values
            .into_iter()
            .map(|value| {
                C::Map(vec![
                    (text("at"), C::Integer(1_700_000_000.into())),
                    (text("name"), text("temp.c")),
                    (text("value"), value),
                ])
            })
            .collect();
        let mut out = Vec::new();
        ciborium::ser::into_writer(
            &C::Map(vec![
                (text("batch_id"), text(batch_id)),
                (text("readings"), C::Array(readings)),
            ]),
            &mut out,
        )
        .unwrap();
        out
    };
    // What a parser would say, and what must never reach a device.
    let parser_words = [
        "Semantic",
        "Syntax",
        "RecursionLimit",
        "invalid type",
        "expected",
        "unknown field",
        "missing field",
        "trailing",
        "line ",
        "column",
        "ciborium",
        "serde",
        "secret",
    ];
    let assert_plain = |body: &Value| {
        let message = body["error"]["message"].as_str().unwrap();
        for word in parser_words {
            assert!(!message.contains(word), "{word:?} in {message:?}");
        }
        assert!(message.len() < 120, "{message:?}");
    };

    // NaN and the infinities, at the top of a value and nested in it.
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        for value in [
            C::Float(bad),
            C::Array(vec![C::Integer(1.into()), C::Float(bad)]),
            C::Map(vec![(C::Text("c".into()), C::Float(bad))]),
        ] {
            let body = cbor("batch-nan-1", vec![C::Float(21.5), value]);
            let (status, answer) = send(body, "application/cbor").await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
            assert_eq!(answer["error"]["code"], "invalid_batch");
            assert_eq!(
                answer["error"]["message"],
                "reading 1: value holds NaN or an infinity, which a batch cannot carry"
            );
            assert_plain(&answer);
        }
    }
    // Bytes after a CBOR batch: another item, or one stray byte.
    let whole = cbor("batch-tail-1", vec![C::Float(21.5)]);
    for tail in [vec![0x00], vec![0xff], whole.clone()] {
        let (status, answer) = send([&whole[..], &tail[..]].concat(), "application/cbor").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert_eq!(answer["error"]["code"], "malformed_batch");
        assert_eq!(
            answer["error"]["message"],
            format!(
                "the body is not a valid CBOR batch: bytes follow the end of the batch (at byte {})",
                whole.len()
            )
        );
        assert_plain(&answer);
    }
    // Malformed in other ways, in both encodings, with text of the body
    // that a parser would have quoted.
    let mut unknown_field = Vec::new();
    ciborium::ser::into_writer(
        &C::Map(vec![(C::Text("secret_field".into()), C::Bytes(vec![1]))]),
        &mut unknown_field,
    )
    .unwrap();
    let malformed: [(Vec<u8>, &'static str); 4] = [
        (unknown_field, "application/cbor"),
        (vec![0x1c], "application/cbor"),
        (
            br#"{"batch_id": "batch-json-1", "readings": [], "secret_field": 1}"#.to_vec(),
            "application/json",
        ),
        (
            br#"{"batch_id": "batch-json-1", "readings": []} secret"#.to_vec(),
            "application/json",
        ),
    ];
    for (body, content_type) in malformed {
        let (status, answer) = send(body, content_type).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert_eq!(answer["error"]["code"], "malformed_batch");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("the body is not a valid "),
            "{answer}"
        );
        assert_plain(&answer);
    }

    // Nothing of those was stored: no reading, and their ids are free.
    let stored: Value = get(&http, server.url(&format!("/v1/orgs/{acme}/data")), &alice)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stored["readings"], json!([]), "{stored}");
    for batch_id in ["batch-nan-1", "batch-tail-1"] {
        let (status, answer) = send(cbor(batch_id, vec![C::Float(21.5)]), "application/cbor").await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        assert_eq!(answer["duplicate"], false);
    }
    server.stop().await;
}

/// The master key: a database refuses a server with another key; a
/// rotation re-seals everything and the old key alone no longer opens it.
async fn master_key(url: &str, d2_token: &str, d2_escrow: &str) {
    let http = reqwest::Client::new();
    let old = || MasterKey::from_bytes(&[0x42; 32]);
    let new = || MasterKey::from_bytes(&[0x43; 32]);
    let err = Running::with_keys(url, Arc::new(Keyring::new(new(), None)))
        .await
        .err()
        .expect("a server with another master key does not start");
    assert!(err.to_string().contains("master key"), "{err}");

    let rotating = Running::with_keys(url, Arc::new(Keyring::new(new(), Some(old()))))
        .await
        .unwrap();
    let alice = login(&rotating, &http, "alice", PW).await.unwrap();
    let r = release(&rotating, &http, d2_token, Some(&alice)).await;
    assert_eq!(r.json::<Value>().await.unwrap()["escrow_key"], d2_escrow);
    rotating.stop().await;
    let db = coffer_server::Store::open(url).await.unwrap();
    let keys = Keyring::new(new(), None);
    let sealed = db.sealed_values().await.unwrap();
    assert!(sealed.len() >= 3, "signing keys and escrow keys");
    assert!(sealed.iter().all(|v| keys.is_current(&v.sealed)));

    assert!(
        matches!(
            Running::with_keys(url, Arc::new(Keyring::new(old(), None))).await,
            Err(ServeError::MasterKey(KeyError::UnknownKey { .. }))
        ),
        "the old key alone no longer opens the database"
    );
    // A rolling rotation: a process still running with the old key wrote a
    // value under it after the first restart. A start with the new key
    // alone refuses (destroying the old key now would lose that value); a
    // start with both moves it.
    let d2: i64 = {
        let running = Running::with_keys(url, Arc::new(Keyring::new(new(), None)))
            .await
            .unwrap();
        let me: Value = get(&http, running.url("/v1/device"), d2_token)
            .await
            .json()
            .await
            .unwrap();
        running.stop().await;
        me["device_id"].as_i64().unwrap()
    };
    let late = Keyring::new(old(), None)
        .seal(&format!("escrow:{d2}"), &hex::decode(d2_escrow).unwrap())
        .unwrap();
    db.execute_for_tests(&format!(
        "UPDATE escrow_keys SET sealed_key = '{late}' WHERE device_id = {d2}"
    ))
    .await
    .unwrap();
    let err = Running::with_keys(url, Arc::new(Keyring::new(new(), None)))
        .await
        .err()
        .expect("a value under the old key is left");
    assert!(err.to_string().contains("previous"), "{err}");
    Running::with_keys(url, Arc::new(Keyring::new(new(), Some(old()))))
        .await
        .unwrap()
        .stop()
        .await;
    let after = Running::with_keys(url, Arc::new(Keyring::new(new(), None)))
        .await
        .unwrap();
    let alice = login(&after, &http, "alice", PW).await.unwrap();
    let r = release(&after, &http, d2_token, Some(&alice)).await;
    assert_eq!(r.json::<Value>().await.unwrap()["escrow_key"], d2_escrow);
    // Publishing still signs with the same organization key.
    let acme = get(&http, after.url("/v1/me"), &alice)
        .await
        .json::<Value>()
        .await
        .unwrap()["organizations"][0]["id"]
        .as_i64()
        .unwrap();
    let r = post(
        &http,
        after.url(&format!("/v1/orgs/{acme}/policies")),
        &alice,
        json!({"version": 10}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    // The audit trail moved to the new key with everything else.
    let report: Value = get(&http, after.url("/v1/audit/verify"), &alice)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(report["intact"], true, "{report}");
    after.stop().await;
}

/// Two servers with different master keys start on one new database at
/// once: exactly one adopts it; the other refuses to start.
async fn adoption_race(url: &str) {
    let a = Running::with_keys(
        url,
        Arc::new(Keyring::new(MasterKey::from_bytes(&[1; 32]), None)),
    );
    let b = Running::with_keys(
        url,
        Arc::new(Keyring::new(MasterKey::from_bytes(&[2; 32]), None)),
    );
    let (a, b) = tokio::join!(a, b);
    let (started, refused) = match (a, b) {
        (Ok(started), Err(refused)) | (Err(refused), Ok(started)) => (started, refused),
        _ => panic!("exactly one adopts the database"),
    };
    // The loser found the database under the winner's key.
    assert!(
        matches!(refused, ServeError::MasterKey(KeyError::UnknownKey { .. })),
        "{refused}"
    );
    started.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_keys_racing_for_a_new_database_on_sqlite() {
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        adoption_race(&format!(
            "sqlite://{}",
            dir.path().join("server.db").display()
        ))
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_keys_racing_for_a_new_database_on_postgres() {
    let pg = Postgres::start();
    for i in 0..3 {
        adoption_race(&pg.database(&format!("race{i}")).await).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("server.db");
    let url = format!("sqlite://{}", db.display());
    suite(&url, vec![dir.path().to_owned()], async || {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_on_postgres() {
    let pg = Postgres::start();
    let url = pg.database("control").await;
    let checkpoint_url = url.clone();
    suite(&url, vec![pg.data_dir()], async move || {
        let db = coffer_server::Store::open(&checkpoint_url).await.unwrap();
        db.execute_for_tests("CHECKPOINT").await.unwrap();
    })
    .await;
}
