//! The agent against a control plane that answers badly: a tiny hostile
//! HTTP/1.1 server (tests/support) behind the real reqwest transport.
//!
//! A. Every bad answer to a check-in is a typed error, with the vault
//!    untouched (it still unlocks through the agent, its slots and data are
//!    as they were, it is not wiped) and nothing acknowledged or deposited
//!    on its strength; a policy of another organization, or signed by
//!    another key, is refused and none is held.
//! B. An enrolled vault opened through the library past its offline grace
//!    is refused (past the hours) or wipes itself (past the days), and a
//!    library user gets exactly the policy's capabilities.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use coffer_agent::http::ReqwestConnector;
use coffer_agent::{
    held_policy, Agent, Error, Grace, PolicyOutcome, Server, TransportError, Trust, UnlockSecret,
    WipeCause, Wiped,
};
use coffer_device::{Capabilities, Credential, KdfParams, Passphrase, SlotInfo, Space, Vault};
use coffer_protocol::policy::{
    Document, KdfFloor, OfflineRules, PolicyRefusal, Rules, FORMAT as POLICY_FORMAT,
};
use coffer_protocol::ErrorCode;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};
use support::{Hostile, Reply, Seen};
use tempfile::TempDir;

const PASSPHRASE: &str = "correct horse battery staple";
const CHECK_IN: &str = "/v1/device/check-in";
const ESCROW: &str = "/v1/device/escrow";
const POLICY: &str = "/v1/device/policy";
const ENROLL: &str = "/v1/enroll";
/// The organization's policy key: its seed.
const ORG_KEY: [u8; 32] = [7; 32];

/// Tiny Argon2id parameters: real Argon2id, fast.
fn kdf() -> KdfParams {
    KdfParams::Argon2id {
        memory_kib: 8,
        iterations: 1,
        parallelism: 1,
    }
}

fn secret() -> UnlockSecret {
    UnlockSecret::Passphrase(Passphrase::new(PASSPHRASE.into()).unwrap())
}

fn now_unix() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

fn at(unix: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap())
}

fn key_pair(seed: [u8; 32]) -> Ed25519KeyPair {
    Ed25519KeyPair::from_seed_unchecked(&seed).unwrap()
}

/// The real agent over reqwest, giving up after 2 s.
fn agent() -> Agent {
    Agent::with_connector(Arc::new(ReqwestConnector::with_timeout(
        Duration::from_secs(2),
    )))
}

/// A good check-in answer.
fn check_in_answer(server_time: i64, policy_version: Option<i64>) -> Value {
    json!({
        "server_time": server_time,
        "device_id": 7,
        "revoked": false,
        "policy_version": policy_version,
        "escrow_present": true,
        "wipe_orders": [],
    })
}

/// `document` as `GET /v1/device/policy` serves it, signed with the key of
/// `seed`.
fn signed_policy(seed: [u8; 32], document: &Document) -> Value {
    let key = key_pair(seed);
    let bytes = document.to_canonical().unwrap();
    json!({
        "version": document.version,
        "document": String::from_utf8(bytes.clone()).unwrap(),
        "signature": hex::encode(key.sign(&bytes).as_ref()),
        "public_key": hex::encode(key.public_key().as_ref()),
        "published_at": document.issued_at,
    })
}

fn document(organization_id: i64, version: i64, rules: Rules) -> Document {
    Document {
        format: POLICY_FORMAT.into(),
        organization_id,
        version,
        issued_at: now_unix(),
        rules,
    }
}

/// The rules of part B: one hour offline before the block, 30 days before
/// the wipe, the app `notes` with key-value only, and a KDF floor the tiny
/// test parameters already meet (so no unlock re-derives a slot).
fn grace_rules() -> Rules {
    Rules {
        offline: OfflineRules {
            block_after_hours: 1,
            wipe_after_days: 30,
        },
        apps: [("notes".to_owned(), vec!["kv".to_owned()])].into(),
        min_kdf: KdfFloor {
            memory_kib: 8,
            iterations: 1,
            parallelism: 1,
        },
        ..Rules::default()
    }
}

/// Scripts `server` to answer an enrollment as coffer serve would.
fn script_enrollment(server: &Hostile, server_time: i64) {
    server.answer(
        "POST",
        ENROLL,
        Reply::json(
            200,
            &json!({
                "device_id": 7,
                "organization_id": 1,
                "device_token": "d7".repeat(24),
                "release_token": "e7".repeat(24),
                "policy_public_key": hex::encode(key_pair(ORG_KEY).public_key().as_ref()),
            }),
        ),
    );
    server.answer("PUT", ESCROW, Reply::empty(204));
    server.answer(
        "POST",
        CHECK_IN,
        Reply::json(200, &check_in_answer(server_time, None)),
    );
    // Were the agent ever to acknowledge a wipe, it would succeed (and be
    // seen in the log).
    for id in 1..=5 {
        server.answer(
            "POST",
            &format!("/v1/device/wipes/{id}/ack"),
            Reply::empty(204),
        );
    }
}

/// An enrolled vault in its own space, with the app `notes` (every
/// capability, a key-value entry) and the app `other`.
struct Enrolled {
    _dir: TempDir,
    space: Space,
    /// The slots after enrollment.
    slots: Vec<SlotInfo>,
}

impl Enrolled {
    fn vault(&self) -> Vault {
        self.space.vault("acme").unwrap()
    }
}

fn enroll(server: &Hostile, agent: &Agent) -> Enrolled {
    let dir = tempfile::tempdir().unwrap();
    let space = Space::new(dir.path().join("space"));
    let vault = space
        .create_vault(
            "acme",
            "alice",
            &Passphrase::new(PASSPHRASE.into()).unwrap(),
            &kdf(),
        )
        .unwrap();
    vault.add_app("notes", Capabilities::all()).unwrap();
    vault.add_app("other", Capabilities::all()).unwrap();
    vault
        .app("notes")
        .unwrap()
        .kv()
        .unwrap()
        .put("greeting", b"hello")
        .unwrap();
    // Not managed yet: the plain door opens it.
    assert!(!vault.is_managed().unwrap());

    let before = server.requests().len();
    let control = Server::new(&server.url(), Trust::System).unwrap();
    let (enrolled, vault) = agent
        .enroll(vault, &control, "code".into(), "tablet")
        .unwrap();
    assert_eq!(enrolled.device_id, 7);
    assert_eq!(enrolled.organization_id, 1);
    assert_eq!(
        enrolled.policy_key,
        hex::encode(key_pair(ORG_KEY).public_key().as_ref())
    );
    assert!(vault.is_managed().unwrap());
    let seen = &server.requests()[before..];
    assert_eq!(
        &seen[..3],
        &[
            ("POST".to_owned(), ENROLL.to_owned()),
            ("PUT".to_owned(), ESCROW.to_owned()),
            ("POST".to_owned(), CHECK_IN.to_owned()),
        ],
        "{seen:?}"
    );
    let slots = vault.slots();
    let mut names: Vec<_> = slots.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["alice", "escrow"]);
    drop(vault);

    let enrolled = Enrolled {
        _dir: dir,
        space,
        slots,
    };
    // Managed now: the plain door refuses it, whatever the secret opens.
    let plain = enrolled
        .vault()
        .unlock(&Credential::Passphrase(
            &Passphrase::new(PASSPHRASE.into()).unwrap(),
        ))
        .unwrap_err();
    assert!(
        matches!(&plain, coffer_device::Error::ManagedVault { name } if name == "acme"),
        "{plain:?}"
    );
    enrolled
}

/// A hostile server, an agent and a vault enrolled through them.
fn setup() -> (Hostile, Agent, Enrolled) {
    let server = Hostile::start();
    script_enrollment(&server, now_unix());
    let agent = agent();
    let enrolled = enroll(&server, &agent);
    (server, agent, enrolled)
}

fn is_wipe_ack(seen: &Seen) -> bool {
    seen.1.starts_with("/v1/device/wipes/")
}

fn is_escrow_deposit(seen: &Seen) -> bool {
    seen.0 == "PUT" && seen.1 == ESCROW
}

/// The vault as enrollment left it: not wiped, unlocks through the agent,
/// the same slots, the data there, no policy held; and in `sent` no wipe
/// acknowledgement and no escrow deposit.
fn assert_untouched(agent: &Agent, enrolled: &Enrolled, sent: &[Seen]) {
    assert!(
        !sent.iter().any(|s| is_wipe_ack(s) || is_escrow_deposit(s)),
        "{sent:?}"
    );
    let vault = enrolled.vault();
    vault.info().unwrap();
    let unlocked = agent.unlock(&vault, &secret()).unwrap();
    assert_eq!(unlocked.slots(), enrolled.slots);
    assert_eq!(
        unlocked
            .app("notes")
            .unwrap()
            .kv()
            .unwrap()
            .get("greeting")
            .unwrap()
            .as_deref(),
        Some(&b"hello"[..])
    );
    assert_eq!(held_policy(&unlocked).unwrap(), None);
}

/// Scripts the check-in answer `reply`, checks in, and returns the error
/// and what the agent sent, having checked that the vault is untouched.
fn check_in_refused(
    server: &Hostile,
    agent: &Agent,
    enrolled: &Enrolled,
    reply: Reply,
) -> (Error, Vec<Seen>) {
    server.answer("POST", CHECK_IN, reply);
    let before = server.requests().len();
    let unlocked = agent.unlock(&enrolled.vault(), &secret()).unwrap();
    let error = agent.check_in(unlocked).unwrap_err();
    let sent = server.requests()[before..].to_vec();
    assert_untouched(agent, enrolled, &sent);
    (error, sent)
}

fn only_the_check_in() -> Vec<Seen> {
    vec![("POST".to_owned(), CHECK_IN.to_owned())]
}

fn good_answer_with(field: &str, value: Value) -> Value {
    let mut answer = check_in_answer(now_unix(), None);
    answer[field] = value;
    answer
}

#[track_caller]
fn assert_bad_answer(error: &Error) {
    assert!(
        matches!(error, Error::BadAnswer { endpoint, .. } if *endpoint == CHECK_IN),
        "{error:?}"
    );
}

#[test]
fn an_answer_that_does_not_decode_is_a_bad_answer_and_nothing_is_acted_on() {
    let (server, agent, enrolled) = setup();
    let cases = [
        // Missing fields.
        json!({"server_time": 1}),
        // A wrong type.
        good_answer_with("device_id", json!("7")),
        good_answer_with("revoked", json!("no")),
        // A wipe order without an id: never order 0, never a wipe.
        good_answer_with("wipe_orders", json!([{"scope": "device", "ordered_at": 1}])),
        // An id of the wrong type.
        good_answer_with(
            "wipe_orders",
            json!([{"id": "1", "scope": "device", "ordered_at": 1}]),
        ),
        // Not an object.
        json!([1, 2, 3]),
    ];
    for body in cases {
        let (error, sent) = check_in_refused(&server, &agent, &enrolled, Reply::json(200, &body));
        assert_bad_answer(&error);
        assert_eq!(sent, only_the_check_in(), "{body}");
    }
    // Not JSON at all, with a success status.
    let (error, sent) = check_in_refused(
        &server,
        &agent,
        &enrolled,
        Reply::text(200, "<html>welcome to the captive portal</html>"),
    );
    assert_bad_answer(&error);
    assert_eq!(sent, only_the_check_in());
}

#[test]
fn an_answer_that_must_not_be_acted_on_is_a_bad_answer_and_the_vault_is_not_wiped() {
    let (server, agent, enrolled) = setup();
    let now = now_unix();
    let cases = [
        // An order of a kind this version does not know, next to a
        // whole-device order: neither is carried out.
        good_answer_with(
            "wipe_orders",
            json!([
                {"id": 1, "scope": "device", "ordered_at": 1},
                {"id": 2, "scope": "galaxy", "ordered_at": 1},
            ]),
        ),
        good_answer_with(
            "wipe_orders",
            json!([{"id": 3, "scope": "galaxy", "ordered_at": 1}]),
        ),
        // A one-user order without its user, or with an empty one.
        good_answer_with(
            "wipe_orders",
            json!([{"id": 4, "scope": "user", "ordered_at": 1}]),
        ),
        good_answer_with(
            "wipe_orders",
            json!([{"id": 4, "scope": "user", "user": "", "ordered_at": 1}]),
        ),
        // An order whose id is not positive.
        good_answer_with(
            "wipe_orders",
            json!([{"id": 0, "scope": "device", "ordered_at": 1}]),
        ),
        // An answer about another device, carrying a wipe order.
        json!({
            "server_time": now, "device_id": 8, "revoked": false, "policy_version": null,
            "escrow_present": true, "wipe_orders": [{"id": 5, "scope": "device", "ordered_at": 1}],
        }),
        // A server time that is not plausible (it would reset the grace).
        good_answer_with("server_time", json!(1)),
    ];
    for body in cases {
        let (error, sent) = check_in_refused(&server, &agent, &enrolled, Reply::json(200, &body));
        assert_bad_answer(&error);
        assert_eq!(sent, only_the_check_in(), "{body}");
    }
    // And what the problem says names the cause.
    let (error, _) = check_in_refused(
        &server,
        &agent,
        &enrolled,
        Reply::json(
            200,
            &json!({
                "server_time": now, "device_id": 8, "revoked": false,
                "escrow_present": false, "wipe_orders": [],
            }),
        ),
    );
    match error {
        Error::BadAnswer { problem, .. } => assert!(problem.contains("device 8"), "{problem}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_oversized_answer_is_too_large() {
    let (server, agent, enrolled) = setup();
    let ten_mb = 10 * 1024 * 1024;
    let limit = coffer_agent::transport::MAX_ANSWER;
    for reply in [
        // Announced by its Content-Length.
        Reply::raw_json(200, vec![b' '; ten_mb]),
        // Not announced: chunked, then delimited by the close.
        Reply::Unbounded {
            len: ten_mb,
            chunked: true,
        },
        Reply::Unbounded {
            len: ten_mb,
            chunked: false,
        },
        // An error answer is held to the limit too.
        Reply::raw_json(500, vec![b' '; ten_mb]),
    ] {
        let (error, sent) = check_in_refused(&server, &agent, &enrolled, reply);
        assert!(
            matches!(error, Error::Transport(TransportError::TooLarge { limit: l }) if l == limit),
            "{error:?}"
        );
        assert_eq!(sent, only_the_check_in());
    }
}

#[test]
fn a_redirect_is_not_followed() {
    let (server, agent, enrolled) = setup();
    // The address the brief names: nothing listens there, so following it
    // would be Unreachable rather than Redirected.
    let (error, sent) = check_in_refused(
        &server,
        &agent,
        &enrolled,
        Reply::redirect(302, "http://127.0.0.1:1/steal"),
    );
    assert!(
        matches!(
            error,
            Error::Transport(TransportError::Redirected { status: 302 })
        ),
        "{error:?}"
    );
    assert_eq!(sent, only_the_check_in());

    // A thief that listens: never contacted, whatever the redirect.
    let thief = TcpListener::bind("127.0.0.1:0").unwrap();
    thief.set_nonblocking(true).unwrap();
    let steal = format!("http://{}/steal", thief.local_addr().unwrap());
    for status in [301, 302, 303, 307, 308] {
        let (error, sent) =
            check_in_refused(&server, &agent, &enrolled, Reply::redirect(status, &steal));
        assert!(
            matches!(
                error,
                Error::Transport(TransportError::Redirected { status: s }) if s == status
            ),
            "{status}: {error:?}"
        );
        assert_eq!(sent, only_the_check_in());
    }
    // A redirect from the policy endpoint, too.
    server.answer(
        "POST",
        CHECK_IN,
        Reply::json(200, &check_in_answer(now_unix(), Some(1))),
    );
    server.answer("GET", POLICY, Reply::redirect(307, &steal));
    let unlocked = agent.unlock(&enrolled.vault(), &secret()).unwrap();
    let error = agent.check_in(unlocked).unwrap_err();
    assert!(
        matches!(
            error,
            Error::Transport(TransportError::Redirected { status: 307 })
        ),
        "{error:?}"
    );
    match thief.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the thief was contacted: {other:?}"),
    }
}

#[test]
fn a_server_that_drips_its_headers_times_out() {
    let (server, agent, enrolled) = setup();
    let started = Instant::now();
    let (error, sent) = check_in_refused(
        &server,
        &agent,
        &enrolled,
        Reply::DripHead {
            every: Duration::from_millis(500),
        },
    );
    let took = started.elapsed();
    assert!(
        matches!(error, Error::Transport(TransportError::TimedOut)),
        "{error:?}"
    );
    assert!(error.is_unreachable());
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(sent, only_the_check_in());
}

/// The brief's slow drip: headers at once, then the body one byte per
/// 500 ms, well past the 2 s timeout. The body is a good check-in answer
/// (about 130 bytes, 65 s of drip): a transport whose timeout covers the
/// whole request gives up after 2 s.
#[test]

fn a_server_that_drips_its_body_times_out() {
    let (server, agent, enrolled) = setup();
    let body = serde_json::to_vec(&check_in_answer(now_unix(), None)).unwrap();
    let started = Instant::now();
    let (error, sent) = check_in_refused(
        &server,
        &agent,
        &enrolled,
        Reply::DripBody {
            body,
            every: Duration::from_millis(500),
        },
    );
    let took = started.elapsed();
    assert!(
        matches!(error, Error::Transport(TransportError::TimedOut)),
        "{error:?} after {took:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(sent, only_the_check_in());
}

/// Headers at once, then nothing for longer than the timeout.
#[test]

fn a_server_that_stalls_in_its_body_times_out() {
    let (server, agent, enrolled) = setup();
    let started = Instant::now();
    let (error, sent) = check_in_refused(
        &server,
        &agent,
        &enrolled,
        Reply::Stall {
            stall: Duration::from_secs(4),
        },
    );
    let took = started.elapsed();
    assert!(
        matches!(error, Error::Transport(TransportError::TimedOut)),
        "{error:?} after {took:?}"
    );
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert_eq!(sent, only_the_check_in());
}

#[test]
fn refusals_are_typed_and_their_text_is_clean() {
    let (server, agent, enrolled) = setup();
    // Not coffer's JSON.
    let (error, sent) = check_in_refused(
        &server,
        &agent,
        &enrolled,
        Reply::text(500, "<html>502 Bad Gateway</html>"),
    );
    assert!(
        matches!(
            &error,
            Error::Refused { status: 500, code: ErrorCode::Unknown(code), retry_after: None, .. }
                if code.is_empty()
        ),
        "{error:?}"
    );
    assert!(!error.is_permanent());
    assert_eq!(sent, only_the_check_in());

    // coffer's JSON, with a message that would forge a log line and colour
    // the terminal.
    let forged = "database down\nINFO check-in ok\u{1b}[2J\u{1b}[31mred\r\u{7}\u{9b}31m";
    let (error, _) = check_in_refused(
        &server,
        &agent,
        &enrolled,
        Reply::json(
            500,
            &json!({"error": {"code": "internal", "message": forged}}),
        ),
    );
    match &error {
        Error::Refused {
            status: 500,
            code: ErrorCode::Internal,
            message,
            retry_after: None,
        } => {
            assert!(!message.chars().any(char::is_control), "{message:?}");
            assert!(message.contains("database down"), "{message:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!error.to_string().chars().any(char::is_control), "{error}");

    // A long message is bounded.
    let (error, _) = check_in_refused(
        &server,
        &agent,
        &enrolled,
        Reply::json(
            503,
            &json!({"error": {"code": "internal", "message": "x".repeat(100_000)}}),
        ),
    );
    match &error {
        Error::Refused {
            status: 503,
            message,
            ..
        } => assert_eq!(message, &format!("{}…(+99500 bytes)", "x".repeat(500))),
        other => panic!("{other:?}"),
    }

    // A rate limit says how long to wait.
    server.answer(
        "POST",
        CHECK_IN,
        Reply::Full {
            status: 429,
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                ("Retry-After".into(), "30".into()),
            ],
            body: serde_json::to_vec(
                &json!({"error": {"code": "rate_limited", "message": "slow down"}}),
            )
            .unwrap(),
        },
    );
    let unlocked = agent.unlock(&enrolled.vault(), &secret()).unwrap();
    let error = agent.check_in(unlocked).unwrap_err();
    assert!(
        matches!(
            error,
            Error::Refused {
                status: 429,
                code: ErrorCode::RateLimited,
                retry_after: Some(30),
                ..
            }
        ),
        "{error:?}"
    );
}

/// The error code is the server's text too, and the error's Display
/// shows it: it must be as clean as the message.
#[test]

fn an_unknown_error_code_is_clean_too() {
    let (server, agent, enrolled) = setup();
    let (error, _) = check_in_refused(
        &server,
        &agent,
        &enrolled,
        Reply::json(
            500,
            &json!({"error": {"code": "x\nINFO check-in ok\u{1b}[2J", "message": "m"}}),
        ),
    );
    assert!(
        matches!(error, Error::Refused { status: 500, .. }),
        "{error:?}"
    );
    assert!(
        !error.to_string().chars().any(char::is_control),
        "{:?}",
        error.to_string()
    );
}

/// Checks in with the policy endpoint serving `policy`: the check-in
/// succeeds, the policy is refused for `why`, none is held, and nothing
/// else happened.
fn policy_refused(
    server: &Hostile,
    agent: &Agent,
    enrolled: &Enrolled,
    policy: &Value,
) -> PolicyRefusal {
    server.answer(
        "POST",
        CHECK_IN,
        Reply::json(200, &check_in_answer(now_unix(), Some(2))),
    );
    server.answer("GET", POLICY, Reply::json(200, policy));
    let before = server.requests().len();
    let unlocked = agent.unlock(&enrolled.vault(), &secret()).unwrap();
    let (report, unlocked) = agent.check_in(unlocked).unwrap();
    assert_eq!(held_policy(&unlocked).unwrap(), None);
    drop(unlocked);
    let sent = server.requests()[before..].to_vec();
    assert_eq!(
        sent,
        [
            ("POST".to_owned(), CHECK_IN.to_owned()),
            ("GET".to_owned(), POLICY.to_owned()),
        ]
    );
    assert_untouched(agent, enrolled, &sent);
    match report.policy {
        PolicyOutcome::Refused { held: None, why } => why,
        other => panic!("{other:?}"),
    }
}

#[test]
fn another_organizations_policy_is_refused_and_none_is_held() {
    let (server, agent, enrolled) = setup();
    let why = policy_refused(
        &server,
        &agent,
        &enrolled,
        &signed_policy(ORG_KEY, &document(2, 2, grace_rules())),
    );
    assert_eq!(why, PolicyRefusal::OtherOrganization { found: 2 });
}

#[test]
fn a_policy_signed_by_another_key_is_refused_and_none_is_held() {
    let (server, agent, enrolled) = setup();
    let why = policy_refused(
        &server,
        &agent,
        &enrolled,
        &signed_policy([8; 32], &document(1, 2, grace_rules())),
    );
    assert_eq!(why, PolicyRefusal::BadSignature);

    // The right key's signature over other bytes (one rule changed after
    // signing).
    let mut policy = signed_policy(ORG_KEY, &document(1, 2, grace_rules()));
    let tampered = policy["document"]
        .as_str()
        .unwrap()
        .replace("\"block_after_hours\":1,", "\"block_after_hours\":0,");
    assert_ne!(policy["document"].as_str().unwrap(), tampered);
    policy["document"] = json!(tampered);
    let why = policy_refused(&server, &agent, &enrolled, &policy);
    assert_eq!(why, PolicyRefusal::BadSignature);

    // A signature that is not one.
    let mut policy = signed_policy(ORG_KEY, &document(1, 2, grace_rules()));
    policy["signature"] = json!("zz");
    let why = policy_refused(&server, &agent, &enrolled, &policy);
    assert_eq!(why, PolicyRefusal::MalformedSignature);

    // A policy answer that does not decode is a bad answer of its own.
    server.answer(
        "POST",
        CHECK_IN,
        Reply::json(200, &check_in_answer(now_unix(), Some(2))),
    );
    server.answer("GET", POLICY, Reply::json(200, &json!({"version": 2})));
    let unlocked = agent.unlock(&enrolled.vault(), &secret()).unwrap();
    let error = agent.check_in(unlocked).unwrap_err();
    assert!(
        matches!(&error, Error::BadAnswer { endpoint, .. } if *endpoint == POLICY),
        "{error:?}"
    );
    assert_untouched(&agent, &enrolled, &[]);
}

/// Publishes the part B policy (version 1, organization 1) on `server`,
/// its check-ins answered with `server_time`.
fn publish_grace_policy(server: &Hostile, server_time: i64) {
    server.answer(
        "POST",
        CHECK_IN,
        Reply::json(200, &check_in_answer(server_time, Some(1))),
    );
    server.answer(
        "GET",
        POLICY,
        Reply::json(200, &signed_policy(ORG_KEY, &document(1, 1, grace_rules()))),
    );
}

#[test]
fn a_library_user_gets_the_policys_capabilities_and_is_refused_past_the_offline_grace() {
    let server = Hostile::start();
    let t0 = now_unix();
    script_enrollment(&server, t0);
    let agent = agent();
    let enrolled = enroll(&server, &agent);
    let vault = enrolled.vault();

    // The policy published: one check-in fetches, verifies and holds it.
    publish_grace_policy(&server, t0);
    let unlocked = agent.unlock(&vault, &secret()).unwrap();
    let (report, unlocked) = agent.check_in(unlocked).unwrap();
    assert_eq!(report.policy, PolicyOutcome::Updated { version: 1 });
    assert_eq!(report.server_time, t0);
    let held = held_policy(&unlocked).unwrap().unwrap();
    assert_eq!(held.organization_id, 1);
    assert_eq!(held.version, 1);
    assert_eq!(held.rules, grace_rules());
    drop(unlocked);

    // (3) Within the grace: the app gets exactly the policy's
    // capabilities, the data written before enrollment still there.
    let unlocked = agent.unlock(&vault, &secret()).unwrap();
    let notes = unlocked.app("notes").unwrap();
    assert_eq!(
        notes.kv().unwrap().get("greeting").unwrap().as_deref(),
        Some(&b"hello"[..])
    );
    for (denied, capability) in [
        (notes.records().map(drop), "records"),
        (notes.database().map(drop), "sql"),
        (notes.files().map(drop), "files"),
    ] {
        assert!(
            matches!(
                &denied,
                Err(coffer_device::Error::CapabilityDenied { app, capability: c })
                    if app == "notes" && *c == capability
            ),
            "{capability}: {denied:?}"
        );
    }
    // An app the policy does not name (and no "*"): nothing.
    let other = unlocked.app("other").unwrap().kv().map(drop);
    assert!(
        matches!(
            &other,
            Err(coffer_device::Error::CapabilityDenied { app, capability: "kv" }) if app == "other"
        ),
        "{other:?}"
    );
    // A local grant does not outlive the next unlock through the agent.
    unlocked
        .set_app_capabilities("notes", Capabilities::all())
        .unwrap();
    drop(notes);
    drop(unlocked);
    let unlocked = agent.unlock(&vault, &secret()).unwrap();
    let records = unlocked.app("notes").unwrap().records().map(drop);
    assert!(
        matches!(
            &records,
            Err(coffer_device::Error::CapabilityDenied {
                capability: "records",
                ..
            })
        ),
        "{records:?}"
    );
    drop(unlocked);

    // (1) Two hours after the last check-in (the server's time): refused,
    // and the plain door refuses too.
    let before = server.requests().len();
    let later = agent
        .clone()
        .with_clock(Arc::new(move || at(t0 + 2 * 3600)));
    let error = later.unlock(&vault, &secret()).unwrap_err();
    assert!(
        matches!(
            error,
            Error::CheckInRequired {
                hours: 2,
                allowed: 1
            }
        ),
        "{error:?}"
    );
    let plain = vault
        .unlock(&Credential::Passphrase(
            &Passphrase::new(PASSPHRASE.into()).unwrap(),
        ))
        .unwrap_err();
    assert!(
        matches!(plain, coffer_device::Error::ManagedVault { .. }),
        "{plain:?}"
    );
    // Still not a wipe: the vault is there, the slots as they were.
    assert_eq!(vault.info().unwrap().slots.len(), enrolled.slots.len());
    // The way back: an unlock held to the wipe only, then a check-in.
    let t1 = t0 + 2 * 3600 + 60;
    publish_grace_policy(&server, t1);
    let unlocked = later
        .unlock_with(&vault, &secret(), Grace::WipeOnly)
        .unwrap();
    let (report, unlocked) = later.check_in(unlocked).unwrap();
    assert_eq!(report.policy, PolicyOutcome::Unchanged { version: Some(1) });
    drop(unlocked);
    later.unlock(&vault, &secret()).unwrap();
    // Nothing was wiped or acknowledged, and the policy not fetched again.
    let sent = server.requests()[before..].to_vec();
    assert_eq!(sent, only_the_check_in());
}

#[test]
fn past_the_offline_grace_days_an_enrolled_vault_wipes_itself() {
    let server = Hostile::start();
    let t0 = now_unix();
    script_enrollment(&server, t0);
    // Published before enrollment: its first check-in holds it.
    publish_grace_policy(&server, t0);
    let agent = agent();
    let enrolled = enroll(&server, &agent);
    let vault = enrolled.vault();
    {
        let unlocked = agent.unlock(&vault, &secret()).unwrap();
        assert_eq!(held_policy(&unlocked).unwrap().unwrap().version, 1);
    }

    // 29 days: blocked, not wiped.
    let before = server.requests().len();
    let error = agent
        .clone()
        .with_clock(Arc::new(move || at(t0 + 29 * 86_400)))
        .unlock(&vault, &secret())
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::CheckInRequired {
                hours: 696,
                allowed: 1
            }
        ),
        "{error:?}"
    );
    vault.info().unwrap();

    // 31 days: the vault wipes itself, offline (no request).
    let error = agent
        .clone()
        .with_clock(Arc::new(move || at(t0 + 31 * 86_400)))
        .unlock(&vault, &secret())
        .unwrap_err();
    match &error {
        Error::Wiped(Wiped {
            vault: name,
            cause:
                WipeCause::OfflineTooLong {
                    days: 31,
                    allowed: 30,
                },
        }) => assert_eq!(name, "acme"),
        other => panic!("{other:?}"),
    }
    assert!(server.requests()[before..].is_empty());
    // Gone: coffer_device says so, and so does the agent (at today's date).
    let info = enrolled.space.vault("acme").and_then(|v| v.info());
    assert!(
        matches!(&info, Err(coffer_device::Error::Wiped { name }) if name == "acme"),
        "{info:?}"
    );
    let again = agent.unlock(&vault, &secret()).unwrap_err();
    assert!(
        matches!(&again, Error::Device(coffer_device::Error::Wiped { .. })),
        "{again:?}"
    );
    let plain = vault
        .unlock(&Credential::Passphrase(
            &Passphrase::new(PASSPHRASE.into()).unwrap(),
        ))
        .unwrap_err();
    assert!(
        matches!(plain, coffer_device::Error::Wiped { .. }),
        "{plain:?}"
    );
}

/// The prompts of an online login: the server password, the new slot's
/// passphrases in the order typed (a first one too short for the policy's
/// eight characters), and the test's tiny KDF.
#[derive(Default)]
struct Prompts {
    server_passwords: usize,
    passphrases: usize,
    refused: Vec<String>,
}

impl coffer_agent::LoginPrompts for Prompts {
    fn server_password(&mut self, _user: &str) -> Option<coffer_protocol::WireSecret> {
        self.server_passwords += 1;
        Some("carol's server password".into())
    }
    fn new_passphrase(&mut self, _user: &str) -> Option<Passphrase> {
        self.passphrases += 1;
        let typed = if self.passphrases == 1 {
            "short"
        } else {
            "carol's own passphrase"
        };
        Passphrase::new(typed.into()).ok()
    }
    fn new_slot_kdf(&mut self) -> coffer_device::Result<KdfParams> {
        Ok(kdf())
    }
    fn offline_secret(&mut self, _user: &str) -> Option<UnlockSecret> {
        None
    }
    fn ask_again(&mut self, refused: &coffer_agent::Error) -> bool {
        self.refused.push(refused.to_string());
        true
    }
}

#[test]
fn an_online_login_after_a_long_time_offline_counts_the_grace_from_its_own_check_in() {
    let server = Hostile::start();
    let t0 = now_unix();
    script_enrollment(&server, t0);
    publish_grace_policy(&server, t0);
    let agent = agent();
    let enrolled = enroll(&server, &agent);
    // The escrow key the device deposited, released as the server would.
    let deposit: Value = serde_json::from_slice(&server.last_body("PUT", ESCROW).unwrap()).unwrap();
    server.answer(
        "POST",
        "/v1/login",
        Reply::json(
            200,
            &json!({"token": "5e".repeat(24), "expires_at": t0 + 40 * 86_400}),
        ),
    );
    server.answer("POST", "/v1/logout", Reply::empty(204));
    server.answer(
        "POST",
        "/v1/device/escrow/release",
        Reply::json(
            200,
            &json!({"escrow_key": deposit["escrow_key"], "user_id": 3, "user": "carol"}),
        ),
    );
    // 31 days later the device reaches the server again: the login's own
    // check-in resets the grace before the policy is enforced.
    let later = t0 + 31 * 86_400;
    server.answer(
        "POST",
        CHECK_IN,
        Reply::json(200, &check_in_answer(later, Some(1))),
    );
    let mut prompts = Prompts::default();
    let login = agent
        .clone()
        .with_clock(Arc::new(move || at(later)))
        .login(&enrolled.vault(), "carol", &mut prompts)
        .unwrap();
    // The passphrase below the rules was asked again; the server password
    // and the escrow release it opened were not thrown away.
    assert_eq!(prompts.passphrases, 2);
    assert_eq!(prompts.server_passwords, 1);
    assert_eq!(prompts.refused.len(), 1);
    assert!(
        prompts.refused[0].contains("at least 8 characters"),
        "{:?}",
        prompts.refused
    );
    match login {
        coffer_agent::Login::Online { slot, vault } => {
            assert_eq!(slot, coffer_agent::SlotChange::Added);
            assert!(vault.slots().iter().any(|s| s.name == "carol"));
        }
        coffer_agent::Login::Offline { why, .. } => panic!("offline: {why}"),
    }
    enrolled.vault().info().unwrap();
}
