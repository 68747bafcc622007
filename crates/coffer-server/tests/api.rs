//! The API suite, run against SQLite and against a real PostgreSQL.

#![allow(clippy::unwrap_used)]

mod support;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::postgres::Postgres;
use support::{add_people, enrollment, error_code, get, login, post, set_up, Running};

/// Everything the server does so far, on the database `url`.
async fn suite(url: &str, backend: &str) {
    let server = Running::start(url).await;
    assert_eq!(server.backend, backend);
    let http = reqwest::Client::new();

    let health: Value = http
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health, json!({"status": "ok", "storage": backend}));
    let ready: Value = http
        .get(server.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready, json!({"status": "ready", "storage": backend}));

    let token = server
        .setup_token
        .clone()
        .expect("an empty server issues a setup token");
    let setup = |body: Value| http.post(server.url("/v1/setup")).json(&body).send();
    let good = json!({
        "setup_token": token,
        "organization": "Acme Relief",
        "owner": "alice",
        "password": "correct horse battery",
    });

    // Bad input: typed 4xx, nothing created.
    let mut wrong = good.clone();
    wrong["setup_token"] = json!("0".repeat(48));
    let r = setup(wrong).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(r).await, "invalid_setup_token");

    let mut weak = good.clone();
    weak["password"] = json!("short");
    let r = setup(weak).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_code(r).await, "weak_password");

    let r = http
        .post(server.url("/v1/setup"))
        .header("content-type", "application/json")
        .body("{\"setup_token\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "malformed_json");

    // On a connection of its own: the server answers 413 without reading
    // the body and closes that connection, which a pooled client would
    // otherwise reuse for the next request (IncompleteMessage, seen in CI).
    let r = reqwest::Client::new()
        .post(server.url("/v1/setup"))
        .header("content-type", "application/json")
        .body(vec![b' '; 200 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(r).await, "body_too_large");

    let r = http
        .get(server.url(&format!("/healthz?token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "credential_in_query");

    let r = http
        .get(server.url("/healthz?x=1&%74oken=abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "credential_in_query");

    let r = http.get(server.url("/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "not_found");

    // The real thing, once.
    let r = setup(good.clone()).await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    assert!(created["organization_id"].as_i64().unwrap() > 0);
    let r = setup(good.clone()).await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(r).await, "already_set_up");
    server.stop().await;

    // A restart of a set-up server issues no token.
    let again = Running::start(url).await;
    assert!(again.setup_token.is_none());
    sessions(&again, &http).await;
    again.stop().await;

    // An expired session is refused, and says so.
    let short = Running::start_with_ttl(url, std::time::Duration::from_secs(1)).await;
    let token = login(&short, &http, "alice", "correct horse battery")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let r = http
        .get(short.url("/v1/me"))
        .header("x-auth-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(r).await, "token_expired");
    short.stop().await;

    // Not one secret of this suite reached the server's logs.
    let setup_token = good["setup_token"].as_str().unwrap().to_owned();
    support::assert_logs_free_of(&[
        &setup_token,
        "correct horse battery",
        "wrong password!",
        &token,
    ]);
}

/// Logs in; the token, or the error code.
async fn sessions(server: &Running, http: &reqwest::Client) {
    assert_eq!(
        login(server, http, "alice", "wrong password!").await,
        Err("invalid_credentials".into())
    );
    assert_eq!(
        login(server, http, "nobody", "correct horse battery").await,
        Err("invalid_credentials".into())
    );
    let token = login(server, http, "alice", "correct horse battery")
        .await
        .unwrap();
    assert_eq!(token.len(), 48);
    let me: Value = http
        .get(server.url("/v1/me"))
        .header("x-auth-token", &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["user"], "alice");
    assert_eq!(me["organizations"][0]["name"], "Acme Relief");
    assert_eq!(me["organizations"][0]["role"], "owner");

    let r = http.get(server.url("/v1/me")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(r).await, "unauthenticated");
    let r = http
        .get(server.url("/v1/me"))
        .header("x-auth-token", "f".repeat(48))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "invalid_token");
    let r = http
        .get(server.url(&format!("/v1/me?token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    let r = http
        .post(server.url("/v1/logout"))
        .header("x-auth-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = http
        .get(server.url("/v1/me"))
        .header("x-auth-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(r).await, "invalid_token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("server.db").display());
    suite(&url, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_on_postgres() {
    let pg = Postgres::start();
    let url = pg.database("suite").await;
    suite(&url, "postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_one_postgres() {
    let pg = Postgres::start();
    let url = pg.database("shared").await;
    // Both migrate the same database at once.
    let (a, b) = tokio::join!(Running::start(&url), Running::start(&url));
    // The later start replaced the earlier's token: exactly one works.
    let http = reqwest::Client::new();
    let mut created = 0;
    for (server, token) in [(&a, a.setup_token.clone()), (&b, b.setup_token.clone())] {
        let r = http
            .post(server.url("/v1/setup"))
            .json(&json!({
                "setup_token": token.unwrap(),
                "organization": "Acme",
                "owner": "alice",
                "password": "correct horse battery",
            }))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::CREATED {
            created += 1;
        }
    }
    assert_eq!(created, 1);
    // What one process did, the other sees at once: the other server now
    // refuses a second setup.
    for server in [&a, &b] {
        let r = http
            .post(server.url("/v1/setup"))
            .json(&json!({
                "setup_token": "x",
                "organization": "Other",
                "owner": "bob",
                "password": "correct horse battery",
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CONFLICT);
    }
    // A session made through one process is honoured by the other, and a
    // logout through one is refused by the other at once.
    let token = login(&a, &http, "alice", "correct horse battery")
        .await
        .unwrap();
    let r = http
        .get(b.url("/v1/me"))
        .header("x-auth-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = http
        .post(a.url("/v1/logout"))
        .header("x-auth-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = http
        .get(b.url("/v1/me"))
        .header("x-auth-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // A device enrolled through one is served by the other; revoked through
    // one, it is refused by the other at once.
    let session = login(&a, &http, "alice", "correct horse battery")
        .await
        .unwrap();
    let me: Value = get(&http, a.url("/v1/me"), &session)
        .await
        .json()
        .await
        .unwrap();
    let org = me["organizations"][0]["id"].as_i64().unwrap();
    let code: Value = post(
        &http,
        a.url(&format!("/v1/orgs/{org}/enrollment-codes")),
        &session,
        json!({}),
    )
    .await
    .json()
    .await
    .unwrap();
    let enrolled: Value = http
        .post(a.url("/v1/enroll"))
        .json(&json!({"code": code["code"], "name": "tablet"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let device_token = enrolled["device_token"].as_str().unwrap().to_owned();
    assert_eq!(
        get(&http, b.url("/v1/device"), &device_token)
            .await
            .status(),
        StatusCode::OK
    );
    let device = enrolled["device_id"].as_i64().unwrap();
    let r = post(
        &http,
        a.url(&format!("/v1/orgs/{org}/devices/{device}/revoke")),
        &session,
        json!({}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        get(&http, b.url("/v1/device"), &device_token)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    a.stop().await;
    b.stop().await;
}

/// Brute force through the login reaches the limit, per account and per
/// client address, with a clear 429; even the right password waits.
async fn rate_limits(url: &str) {
    let server = Running::start_with(
        url,
        coffer_server::DEFAULT_SESSION_TTL,
        coffer_server::LoginLimits {
            per_account: 4,
            per_address: 7,
            window: std::time::Duration::from_secs(3600),
        },
    )
    .await;
    let http = reqwest::Client::new();
    set_up(&server, &http).await;
    for _ in 0..4 {
        assert_eq!(
            login(&server, &http, "alice", "guess").await,
            Err("invalid_credentials".into())
        );
    }
    let r = http
        .post(server.url("/v1/login"))
        .json(&json!({"user": "alice", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: i64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&retry));
    assert_eq!(error_code(r).await, "rate_limited");
    // Other accounts from the same address: the address limit (7) comes next.
    for name in ["bob", "carol"] {
        assert_eq!(
            login(&server, &http, name, "guess").await,
            Err("invalid_credentials".into())
        );
    }
    let r = http
        .post(server.url("/v1/login"))
        .json(&json!({"user": "dave", "password": "guess"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_rate_limits_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    rate_limits(&format!(
        "sqlite://{}",
        dir.path().join("server.db").display()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_rate_limits_on_postgres() {
    let pg = Postgres::start();
    let url = pg.database("limits").await;
    rate_limits(&url).await;
}

/// The audit trail records setup and logins, and its check finds an edited,
/// a deleted and an inserted row.
async fn audit_trail(url: &str) {
    let server = Running::start(url).await;
    let http = reqwest::Client::new();
    set_up(&server, &http).await;
    let _ = login(&server, &http, "alice", "wrong one").await;
    let token = login(&server, &http, "alice", "correct horse battery")
        .await
        .unwrap();
    let verify = || async {
        let r = http
            .get(server.url("/v1/audit/verify"))
            .header("x-auth-token", &token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json::<Value>().await.unwrap()
    };
    let report = verify().await;
    assert_eq!(report["intact"], true, "{report}");
    assert!(report["rows"].as_u64().unwrap() >= 3);

    // The attacker has write access to the database.
    let db = coffer_server::Store::open(url).await.unwrap();
    let rows = db.audit_rows().await.unwrap();
    let actions: Vec<_> = rows.iter().map(|r| r.event.action.as_str()).collect();
    assert_eq!(actions[..3], ["setup", "login_failed", "login"]);
    let second = rows[1].id;

    // Edited: the failed login made to look like someone else's.
    db.execute_for_tests(&format!(
        "UPDATE audit_events SET details = '{{\"user\":\"mallory\"}}' WHERE id = {second}"
    ))
    .await
    .unwrap();
    let report = verify().await;
    assert_eq!(report["intact"], false);
    assert_eq!(report["broken_at"], second);
    assert!(report["problem"].as_str().unwrap().contains("edited"));
    db.execute_for_tests(&format!(
        "UPDATE audit_events SET details = '{}' WHERE id = {second}",
        rows[1].event.details
    ))
    .await
    .unwrap();
    assert_eq!(verify().await["intact"], true);

    // Deleted.
    db.execute_for_tests(&format!("DELETE FROM audit_events WHERE id = {second}"))
        .await
        .unwrap();
    let report = verify().await;
    assert_eq!(report["intact"], false);
    assert!(report["problem"]
        .as_str()
        .unwrap()
        .contains("deleted or inserted"));
    let r = &rows[1];
    db.execute_for_tests(&format!(
        "INSERT INTO audit_events (id, at, org_id, actor, action, details, prev_hash, hash, mac) VALUES ({}, {}, NULL, '{}', '{}', '{}', '{}', '{}', '{}')",
        r.id, r.at, r.event.actor, r.event.action, r.event.details, r.prev_hash, r.hash, r.mac.as_deref().unwrap()
    ))
    .await
    .unwrap();
    assert_eq!(verify().await["intact"], true);

    // Rewritten: the failed login edited, and every hash from there on
    // recomputed, so that every link and hash holds. Without the master
    // key the MACs cannot follow.
    let mut prev = rows[0].hash.clone();
    let mut rewrite = String::new();
    for (i, row) in rows.iter().enumerate().skip(1) {
        let mut event = row.event.clone();
        if i == 1 {
            event.details = "{\"user\":\"mallory\"}".into();
        }
        let hash = coffer_server::audit::chain_hash(&prev, row.at, &event);
        rewrite.push_str(&format!(
            "UPDATE audit_events SET details = '{}', prev_hash = '{prev}', hash = '{hash}' WHERE id = {};",
            event.details, row.id
        ));
        prev = hash;
    }
    db.execute_for_tests(&rewrite).await.unwrap();
    let report = verify().await;
    assert_eq!(report["intact"], false, "{report}");
    assert_eq!(report["broken_at"], second);
    assert!(
        report["problem"].as_str().unwrap().contains("MAC"),
        "{report}"
    );
    // Removing the MACs does not help either.
    db.execute_for_tests("UPDATE audit_events SET mac = NULL")
        .await
        .unwrap();
    let report = verify().await;
    assert_eq!(report["broken_at"], rows[0].id);
    let mut restore = String::new();
    for row in &rows {
        restore.push_str(&format!(
            "UPDATE audit_events SET details = '{}', prev_hash = '{}', hash = '{}', mac = '{}' WHERE id = {};",
            row.event.details,
            row.prev_hash,
            row.hash,
            row.mac.as_deref().unwrap(),
            row.id
        ));
    }
    db.execute_for_tests(&restore).await.unwrap();
    assert_eq!(verify().await["intact"], true);

    // Inserted: a forged row between the first two, with a well-formed hash
    // of its own.
    let forged = coffer_server::audit::AuditEvent {
        org_id: None,
        actor: "user:alice".into(),
        action: "logout".into(),
        details: "{}".into(),
    };
    let hash = coffer_server::audit::chain_hash(&rows[0].hash, rows[0].at, &forged);
    db.execute_for_tests(&format!(
        "UPDATE audit_events SET id = id + 1000 WHERE id > {}; \
         INSERT INTO audit_events (id, at, org_id, actor, action, details, prev_hash, hash) \
         VALUES ({}, {}, NULL, 'user:alice', 'logout', '{{}}', '{}', '{hash}')",
        rows[0].id,
        rows[0].id + 1,
        rows[0].at,
        rows[0].hash
    ))
    .await
    .unwrap();
    // Its link and hash hold; its missing MAC gives it away.
    let report = verify().await;
    assert_eq!(report["intact"], false, "{report}");
    assert_eq!(report["broken_at"], rows[0].id + 1);
    assert!(report["problem"].as_str().unwrap().contains("MAC"));
    server.stop().await;

    // A database from before the master key (no check, no sealed value, no
    // MAC) is adopted only on the operator's word — the same state is what
    // someone with write access would make to launder a rewritten trail —
    // and then every row gets its MAC.
    db.execute_for_tests(&format!(
        "DELETE FROM audit_events WHERE id = {}; UPDATE audit_events SET id = id - 1000 WHERE id > 1000;
         UPDATE audit_events SET mac = NULL; DELETE FROM master_key_check; DELETE FROM org_signing_keys;",
        rows[0].id + 1
    ))
    .await
    .unwrap();
    let refused = Running::with_keys(url, coffer_server::testing::keyring())
        .await
        .err()
        .expect("an unkeyed trail is not adopted silently");
    assert!(
        refused.to_string().contains("--adopt-unkeyed-audit-trail"),
        "{refused}"
    );
    let server = Running::adopting_unkeyed_audit(url).await.unwrap();
    let token = login(&server, &http, "alice", "correct horse battery")
        .await
        .unwrap();
    let report: Value = get(&http, server.url("/v1/audit/verify"), &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(report["intact"], true, "{report}");
    server.stop().await;
    // But a check deleted from a database that has MACs is tampering: the
    // server refuses to start rather than launder the trail.
    db.execute_for_tests("DELETE FROM master_key_check")
        .await
        .unwrap();
    assert!(matches!(
        Running::with_keys(url, coffer_server::testing::keyring()).await,
        Err(coffer_server::serve::ServeError::MasterKey(
            coffer_server::keys::KeyError::Tampered
        ))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_trail_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    audit_trail(&format!(
        "sqlite://{}",
        dir.path().join("server.db").display()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_trail_on_postgres() {
    let pg = Postgres::start();
    let url = pg.database("trail").await;
    audit_trail(&url).await;
}

/// Adds an organization with an owner, and a member of `org`, straight in
/// the database (inviting users is a later step of issue 5).
/// Enrollment codes, device tokens, rotation, revocation, and the
/// organization boundary for every device endpoint.
async fn devices(url: &str) {
    let server = Running::start(url).await;
    let http = reqwest::Client::new();
    let acme = set_up(&server, &http).await;
    add_people(url, acme).await;
    let alice = login(&server, &http, "alice", "correct horse battery")
        .await
        .unwrap();
    let bob = login(&server, &http, "bob", "correct horse battery")
        .await
        .unwrap();
    let carol = login(&server, &http, "carol", "correct horse battery")
        .await
        .unwrap();
    let bobs: Value = get(&http, server.url("/v1/me"), &bob)
        .await
        .json()
        .await
        .unwrap();
    let other = bobs["organizations"][0]["id"].as_i64().unwrap();
    assert_ne!(other, acme);

    let codes = server.url(&format!("/v1/orgs/{acme}/enrollment-codes"));
    let r = post(&http, codes.clone(), &alice, json!({})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let code = r.json::<Value>().await.unwrap()["code"]
        .as_str()
        .unwrap()
        .to_owned();

    let enroll = |code: String, name: &'static str| {
        http.post(server.url("/v1/enroll"))
            .json(&json!({"code": code, "name": name}))
            .send()
    };
    let r = enroll(code.clone(), "tablet-1").await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let enrolled: Value = r.json().await.unwrap();
    assert_eq!(enrolled["organization_id"], acme);
    let device_id = enrolled["device_id"].as_i64().unwrap();
    let token = enrolled["device_token"].as_str().unwrap().to_owned();
    let whoami: Value = get(&http, server.url("/v1/device"), &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(whoami["name"], "tablet-1");

    // A code works once.
    let r = enroll(code.clone(), "tablet-2").await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(r).await, "invalid_code");
    // An expired code does not work.
    let r = post(&http, codes.clone(), &alice, json!({"valid_for_secs": 1})).await;
    let short = r.json::<Value>().await.unwrap()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let r = enroll(short, "tablet-3").await.unwrap();
    assert_eq!(error_code(r).await, "invalid_code");

    // Tokens are not interchangeable.
    let r = get(&http, server.url("/v1/device"), &alice).await;
    assert_eq!(error_code(r).await, "invalid_token");
    let r = get(&http, server.url("/v1/me"), &token).await;
    assert_eq!(error_code(r).await, "invalid_token");

    // Rotation: the old token stops at once.
    let r = post(&http, server.url("/v1/device/token"), &token, json!({})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let rotated = r.json::<Value>().await.unwrap()["device_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        error_code(get(&http, server.url("/v1/device"), &token).await).await,
        "invalid_token"
    );
    assert_eq!(
        get(&http, server.url("/v1/device"), &rotated)
            .await
            .status(),
        StatusCode::OK
    );

    // The organization boundary: bob (another organization's owner) gets the
    // same answer for Acme's resources as for an organization that does not
    // exist, and never data.
    for org in [acme, 999_999] {
        for r in [
            post(
                &http,
                server.url(&format!("/v1/orgs/{org}/enrollment-codes")),
                &bob,
                json!({}),
            )
            .await,
            get(&http, server.url(&format!("/v1/orgs/{org}/devices")), &bob).await,
            post(
                &http,
                server.url(&format!("/v1/orgs/{org}/devices/{device_id}/revoke")),
                &bob,
                json!({}),
            )
            .await,
        ] {
            assert_eq!(r.status(), StatusCode::NOT_FOUND);
            assert_eq!(error_code(r).await, "not_found");
        }
    }
    // Bob's own organization does not hold Acme's device either.
    let r = post(
        &http,
        server.url(&format!("/v1/orgs/{other}/devices/{device_id}/revoke")),
        &bob,
        json!({}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let listed: Value = get(
        &http,
        server.url(&format!("/v1/orgs/{other}/devices")),
        &bob,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(listed["devices"], json!([]));

    // A member calling admin endpoints: 403.
    for r in [
        post(&http, codes.clone(), &carol, json!({})).await,
        get(
            &http,
            server.url(&format!("/v1/orgs/{acme}/devices")),
            &carol,
        )
        .await,
        post(
            &http,
            server.url(&format!("/v1/orgs/{acme}/devices/{device_id}/revoke")),
            &carol,
            json!({}),
        )
        .await,
    ] {
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(error_code(r).await, "forbidden");
    }

    // Revocation: the device's token is refused at once.
    let listed: Value = get(
        &http,
        server.url(&format!("/v1/orgs/{acme}/devices")),
        &alice,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(listed["devices"][0]["name"], "tablet-1");
    assert!(listed.get("next_after").is_none(), "no limit: one page");
    // One device by id; a page at a time with `limit`.
    let one: Value = get(
        &http,
        server.url(&format!("/v1/orgs/{acme}/devices/{device_id}")),
        &alice,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(one, listed["devices"][0]);
    let r = get(
        &http,
        server.url(&format!("/v1/orgs/{acme}/devices/{}", device_id + 1000)),
        &alice,
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let second = enrollment(&server, &http, acme, &alice, "tablet-2").await["device_id"]
        .as_i64()
        .unwrap();
    let page: Value = get(
        &http,
        server.url(&format!("/v1/orgs/{acme}/devices?limit=1")),
        &alice,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(page["devices"].as_array().unwrap().len(), 1);
    assert_eq!(page["next_after"], device_id);
    let page: Value = get(
        &http,
        server.url(&format!(
            "/v1/orgs/{acme}/devices?limit=1&after={device_id}"
        )),
        &alice,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(page["devices"][0]["id"], second);
    assert!(page.get("next_after").is_none());
    for bad in ["limit=0", "limit=1001", "after=x", "limit=1&x=2"] {
        let r = get(
            &http,
            server.url(&format!("/v1/orgs/{acme}/devices?{bad}")),
            &alice,
        )
        .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let r = post(
        &http,
        server.url(&format!("/v1/orgs/{acme}/devices/{device_id}/revoke")),
        &alice,
        json!({}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        error_code(get(&http, server.url("/v1/device"), &rotated).await).await,
        "invalid_token"
    );

    server.stop().await;
    support::assert_logs_free_of(&[&code, &token, &rotated, &alice, &bob, &carol]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    devices(&format!(
        "sqlite://{}",
        dir.path().join("server.db").display()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_on_postgres() {
    let pg = Postgres::start();
    let url = pg.database("devices").await;
    devices(&url).await;
}

/// Users and roles: the permission table, the organization boundary, and
/// a user's own password.
async fn users(url: &str) {
    let server = Running::start(url).await;
    let http = reqwest::Client::new();
    let acme = set_up(&server, &http).await;
    add_people(url, acme).await;
    let pw = "correct horse battery";
    let alice = login(&server, &http, "alice", pw).await.unwrap();
    let bob = login(&server, &http, "bob", pw).await.unwrap();
    let users = server.url(&format!("/v1/orgs/{acme}/users"));
    let add = |token: String, user: &'static str, role: &'static str| {
        let users = users.clone();
        let http = http.clone();
        async move {
            post(
                &http,
                users,
                &token,
                json!({"user": user, "password": pw, "role": role}),
            )
            .await
        }
    };
    let user_id = |r: Value| r["user_id"].as_i64().unwrap();

    let r = add(alice.clone(), "dan", "admin").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = add(alice.clone(), "erin", "member").await;
    let erin_id = user_id(r.json().await.unwrap());
    let dan = login(&server, &http, "dan", pw).await.unwrap();
    let erin = login(&server, &http, "erin", pw).await.unwrap();

    // An admin adds auditors and members, not admins; a member adds nobody.
    assert_eq!(
        add(dan.clone(), "frank", "auditor").await.status(),
        StatusCode::CREATED
    );
    let r = add(dan.clone(), "gina", "admin").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(r).await, "forbidden");
    assert_eq!(
        add(erin.clone(), "hal", "member").await.status(),
        StatusCode::FORBIDDEN
    );
    let r = add(alice.clone(), "dan", "member").await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = add(alice.clone(), "ivy", "emperor").await;
    assert_eq!(error_code(r).await, "invalid_role");

    // Roles change within the table; nobody changes their own.
    let role_url = |id: i64| server.url(&format!("/v1/orgs/{acme}/users/{id}/role"));
    let put = |token: &str, id: i64, role: &str| {
        http.put(role_url(id))
            .header("x-auth-token", token)
            .json(&json!({"role": role}))
            .send()
    };
    assert_eq!(
        put(&dan, erin_id, "auditor").await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        put(&dan, erin_id, "admin").await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let me: Value = get(&http, server.url("/v1/me"), &alice)
        .await
        .json()
        .await
        .unwrap();
    let alice_id = me["user_id"].as_i64().unwrap();
    assert_eq!(
        put(&dan, alice_id, "member").await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        put(&alice, alice_id, "member").await.unwrap().status(),
        StatusCode::FORBIDDEN
    );

    // Another organization's owner: 404 for all of it, as for a user or an
    // organization that does not exist.
    for r in [
        add(bob.clone(), "mallory", "member").await,
        put(&bob, erin_id, "owner").await.unwrap(),
        http.delete(server.url(&format!("/v1/orgs/{acme}/users/{erin_id}")))
            .header("x-auth-token", &bob)
            .send()
            .await
            .unwrap(),
        put(&alice, 999_999, "member").await.unwrap(),
    ] {
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(error_code(r).await, "not_found");
    }

    // Disable and enable: frank (an auditor of Acme only).
    let frank = login(&server, &http, "frank", pw).await.unwrap();
    let frank_id = get(&http, server.url("/v1/me"), &frank)
        .await
        .json::<Value>()
        .await
        .unwrap()["user_id"]
        .as_i64()
        .unwrap();
    let toggle = |who: &str, id: i64, what: &str| {
        let url = server.url(&format!("/v1/orgs/{acme}/users/{id}/{what}"));
        let (http, who) = (http.clone(), who.to_owned());
        async move { post(&http, url, &who, json!({})).await }
    };
    assert_eq!(
        toggle(&bob, frank_id, "disable").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        toggle(&dan, frank_id, "disable").await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        get(&http, server.url("/v1/me"), &frank).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login(&server, &http, "frank", pw).await,
        Err("invalid_credentials".into())
    );
    assert_eq!(
        toggle(&dan, frank_id, "enable").await.status(),
        StatusCode::NO_CONTENT
    );
    login(&server, &http, "frank", pw).await.unwrap();
    // Carol belongs to another organization too: Acme cannot disable her
    // account (only remove her from Acme).
    let db = coffer_server::Store::open(url).await.unwrap();
    db.execute_for_tests(
        "INSERT INTO memberships (org_id, user_id, role)
         SELECT o.id, u.id, 'member' FROM organizations o, users u WHERE o.name = 'Other Org' AND u.name = 'carol'",
    )
    .await
    .unwrap();
    let carol = login(&server, &http, "carol", pw).await.unwrap();
    let carol_id = get(&http, server.url("/v1/me"), &carol)
        .await
        .json::<Value>()
        .await
        .unwrap()["user_id"]
        .as_i64()
        .unwrap();
    let r = toggle(&alice, carol_id, "disable").await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(r).await, "member_elsewhere");
    // A malformed id is a typed 404 too.
    let r = get(&http, server.url("/v1/orgs/not-a-number/devices"), &alice).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "not_found");

    // One's own password, with the old one.
    let change = |old: &str, new: &str| {
        post(
            &http,
            server.url("/v1/me/password"),
            &erin,
            json!({"old_password": old, "new_password": new}),
        )
    };
    assert_eq!(
        change("wrong old one", "a new long password")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        change(pw, "short").await.status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        change(pw, "a new long password").await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        login(&server, &http, "erin", pw).await,
        Err("invalid_credentials".into())
    );
    let erin = login(&server, &http, "erin", "a new long password")
        .await
        .unwrap();

    // Removing her (now an auditor, so the admin may): her sessions end and
    // she can no longer log in.
    let r = http
        .delete(server.url(&format!("/v1/orgs/{acme}/users/{erin_id}")))
        .header("x-auth-token", &dan)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        get(&http, server.url("/v1/me"), &erin).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login(&server, &http, "erin", "a new long password").await,
        Err("invalid_credentials".into())
    );
    server.stop().await;
    support::assert_logs_free_of(&[pw, "a new long password", &alice, &bob, &dan, &erin]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    users(&format!(
        "sqlite://{}",
        dir.path().join("server.db").display()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_postgres() {
    let pg = Postgres::start();
    let url = pg.database("users").await;
    users(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_endpoint_exists_and_metrics_count_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(&format!(
        "sqlite://{}",
        dir.path().join("server.db").display()
    ))
    .await;
    let http = reqwest::Client::new();
    let doc: Value = http
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(
        paths
            .values()
            .map(|m| m.as_object().unwrap().len())
            .sum::<usize>(),
        coffer_server::openapi::ENDPOINTS.len()
    );
    for (path, methods) in paths {
        let concrete = path
            .replace("{org_id}", "1")
            .replace("{user_id}", "1")
            .replace("{device_id}", "1")
            .replace("{order_id}", "1");
        for method in methods.as_object().unwrap().keys() {
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = http
                .request(method.clone(), server.url(&concrete))
                .send()
                .await
                .unwrap();
            // Whatever the answer (401 without a token, 415 without a
            // body…), it is not the fallback's "no such endpoint".
            let status = r.status();
            let body = r.text().await.unwrap();
            assert!(
                !(status == StatusCode::NOT_FOUND && body.contains("no such endpoint")),
                "{method} {path} is documented but not served"
            );
        }
    }
    let metrics = http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "coffer_http_requests_total{method=\"GET\",route=\"/openapi.json\",status=\"2xx\"} 2"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("route=\"/v1/orgs/{org_id}/devices\",status=\"4xx\""),
        "{metrics}"
    );
    server.stop().await;
}

/// Accounting: every request is recorded with its caller, organization,
/// status and bytes; summaries per organization, user and device, as JSON
/// and CSV, for the organization's owners, admins and auditors only.
async fn accounting(url: &str) {
    let server = Running::start(url).await;
    let http = reqwest::Client::new();
    let acme = set_up(&server, &http).await;
    add_people(url, acme).await;
    let alice = login(&server, &http, "alice", "correct horse battery")
        .await
        .unwrap();
    let bob = login(&server, &http, "bob", "correct horse battery")
        .await
        .unwrap();
    let carol = login(&server, &http, "carol", "correct horse battery")
        .await
        .unwrap();
    let code: Value = post(
        &http,
        server.url(&format!("/v1/orgs/{acme}/enrollment-codes")),
        &alice,
        json!({}),
    )
    .await
    .json()
    .await
    .unwrap();
    let enrolled: Value = http
        .post(server.url("/v1/enroll"))
        .json(&json!({"code": code["code"], "name": "tablet"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let device = enrolled["device_id"].as_i64().unwrap();
    let token = enrolled["device_token"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        get(&http, server.url("/v1/device"), &token).await;
    }
    let usage = |query: &str, who: &str| {
        let url = server.url(&format!("/v1/orgs/{acme}/usage?{query}"));
        let (http, who) = (http.clone(), who.to_owned());
        async move { get(&http, url, &who).await }
    };

    let by_device: Value = usage("by=device", &alice).await.json().await.unwrap();
    let row = by_device["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == device)
        .unwrap()
        .clone();
    assert_eq!(row["requests"], 3);
    assert!(row["bytes_out"].as_i64().unwrap() > 0);
    let by_user: Value = usage("by=user", &alice).await.json().await.unwrap();
    assert!(by_user["rows"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["requests"].as_i64().unwrap() >= 1));
    let r = usage("by=org&format=csv", &alice).await;
    assert_eq!(r.headers()["content-type"], "text/csv");
    let csv = r.text().await.unwrap();
    assert!(
        csv.starts_with("id,requests,bytes_in,bytes_out,micros\n"),
        "{csv}"
    );
    assert!(csv.contains(&format!("\n{acme},")), "{csv}");
    // A time range in the future holds nothing.
    let later: Value = usage("from=4000000000", &alice).await.json().await.unwrap();
    assert_eq!(later["rows"], json!([]));
    let r = usage("by=planet", &alice).await;
    assert_eq!(error_code(r).await, "invalid_query");

    // Not another organization's owner (404), not a member (403).
    let r = usage("by=org", &bob).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = usage("by=org", &carol).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounting_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    accounting(&format!(
        "sqlite://{}",
        dir.path().join("server.db").display()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounting_on_postgres() {
    let pg = Postgres::start();
    let url = pg.database("accounting").await;
    accounting(&url).await;
}
