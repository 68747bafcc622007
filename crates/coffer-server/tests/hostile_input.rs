//! Property tests of every parser of outside input in `coffer serve`, on
//! stable Rust (proptest), through a running server on SQLite: the JSON
//! body of every POST and PUT endpoint of the OpenAPI document, device data
//! batches (JSON and CBOR), published policies, path parameters of every
//! templated path, and query strings. The fuzz targets in `fuzz/` take the
//! same parsers on their own, without HTTP.
//!
//! The properties, for every case: no 5xx; every answer that is not a
//! success is a well-formed `ErrorBody` with a code this version defines
//! and a short message that quotes no sizeable part of the input; and the
//! server still answers its probes and a logged-in user afterwards. One
//! server per test function, reused across its cases. `PROPTEST_CASES`
//! sets the number of cases (default [`DEFAULT_CASES`]; `.ci/run` runs more).

#![allow(clippy::unwrap_used)]

// The PostgreSQL helper there is for the other suites.
#[allow(unused_imports)]
mod support;

use std::sync::Mutex;

use coffer_protocol::{ErrorBody, ErrorCode};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::Running;

const PW: &str = "correct horse battery";

/// Cases per property when `PROPTEST_CASES` is not set: enough to meet
/// every endpoint a few times, few enough for `cargo test` to stay quick.
const DEFAULT_CASES: u32 = 96;

/// Longest error message accepted, in bytes: the longest the server means
/// to write is about 150.
const MAX_MESSAGE: usize = 300;

/// An error message may not share this many consecutive bytes with the
/// input (a quoted name, a parser's echo of a value).
const ECHO: usize = 32;

/// Limits no property reaches: a case refused for its rate would test
/// nothing else.
const LIMITS: coffer_server::LoginLimits = coffer_server::LoginLimits {
    per_account: 1_000_000,
    per_address: 1_000_000,
    window: std::time::Duration::from_secs(900),
};

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    Config {
        cases,
        // Each shrinking step is a round trip to the server.
        max_shrink_iters: 256,
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------
// The server and what it holds: an owner (and operator), a member, a
// scratch organization, devices, a wipe order, a policy.

/// A device's ids and tokens.
struct Device {
    id: i64,
    token: String,
    release: String,
}

struct Fixture {
    rt: std::sync::Arc<tokio::runtime::Runtime>,
    server: Option<Running>,
    http: reqwest::Client,
    store: coffer_server::Store,
    _dir: tempfile::TempDir,
    acme: i64,
    /// Owner of Acme and the server's operator.
    alice: String,
    /// A member of Acme: the one whose password the property changes.
    pat: String,
    pat_id: i64,
    /// Another organization, for the operators' endpoints to suspend.
    scratch: i64,
    /// The device the device endpoints use.
    device: Device,
    /// The device whose token is rotated (the newest token).
    rotating: Mutex<String>,
    /// The device wipe orders are made for.
    wiped: i64,
    /// The device that is revoked.
    revokee: i64,
    /// A wipe order (of the wiped device).
    order: i64,
    /// The organization's policy key, to verify what it signs.
    policy_key: Vec<u8>,
}

/// An answer: status, and body.
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
}

/// One request, and the outside input it carries (for the echo check).
struct Call {
    method: Method,
    /// Path and query, already percent-encoded.
    target: String,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Option<Vec<u8>>,
    content_type: Option<String>,
}

impl Fixture {
    fn new() -> Fixture {
        let rt = std::sync::Arc::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
        );
        let kept = std::sync::Arc::clone(&rt);
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("server.db").display());
        // No pooled connections: one the server closed after refusing a body
        // (413) must not fail the next request.
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        rt.block_on(async move {
            let server = Running::behind_proxy(&url, LIMITS).await;
            let store = coffer_server::Store::open(&url).await.unwrap();
            let acme = support::set_up(&server, &http).await;
            let alice = support::login(&server, &http, "alice", PW).await.unwrap();
            let r = support::post(
                &http,
                server.url(&format!("/v1/orgs/{acme}/users")),
                &alice,
                json!({"user": "pat", "password": PW, "role": "member"}),
            )
            .await;
            assert_eq!(r.status(), StatusCode::CREATED);
            let pat_id = r.json::<Value>().await.unwrap()["user_id"]
                .as_i64()
                .unwrap();
            let pat = support::login(&server, &http, "pat", PW).await.unwrap();
            let r = support::post(
                &http,
                server.url("/v1/orgs"),
                &alice,
                json!({"name": "Scratch", "owner": "sam", "password": PW}),
            )
            .await;
            assert_eq!(r.status(), StatusCode::CREATED);
            let scratch = r.json::<Value>().await.unwrap()["organization_id"]
                .as_i64()
                .unwrap();
            let enroll = |name: &'static str| enroll(&server, &http, acme, &alice, name);
            let device = enroll("probe-main").await;
            let rotating = enroll("probe-rotating").await;
            let wiped = enroll("probe-wiped").await;
            let revokee = enroll("probe-revokee").await;
            let r = http
                .put(server.url("/v1/device/escrow"))
                .header("x-auth-token", &device.token)
                .json(&json!({"escrow_key": "ab".repeat(32)}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::NO_CONTENT);
            let r = support::post(
                &http,
                server.url(&format!("/v1/orgs/{acme}/devices/{}/wipe", wiped.id)),
                &alice,
                json!({"user": "pat"}),
            )
            .await;
            assert_eq!(r.status(), StatusCode::CREATED);
            let order = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
            let r = support::post(
                &http,
                server.url(&format!("/v1/orgs/{acme}/policies")),
                &alice,
                json!({"version": 1, "rules": {}}),
            )
            .await;
            assert_eq!(r.status(), StatusCode::CREATED);
            let key: Value = support::get(
                &http,
                server.url(&format!("/v1/orgs/{acme}/policy-key")),
                &alice,
            )
            .await
            .json()
            .await
            .unwrap();
            let policy_key = hex_decode(key["public_key"].as_str().unwrap());
            Fixture {
                rt: kept,
                server: Some(server),
                http: http.clone(),
                store,
                _dir: dir,
                acme,
                alice,
                pat,
                pat_id,
                scratch,
                device,
                rotating: Mutex::new(rotating.token),
                wiped: wiped.id,
                revokee: revokee.id,
                order,
                policy_key,
            }
        })
    }

    fn server(&self) -> &Running {
        self.server.as_ref().unwrap()
    }

    fn stop(mut self) {
        let server = self.server.take().unwrap();
        self.rt.block_on(server.stop());
    }

    /// Runs the property `test` over `strategy`; panics with the smallest
    /// failing case.
    fn run<S>(&self, name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
    where
        S: Strategy,
        S::Value: std::fmt::Debug,
    {
        let mut runner = TestRunner::new(config());
        if let Err(e) = runner.run(&strategy, test) {
            panic!("{name}: {e}");
        }
    }

    fn send(&self, call: &Call) -> Result<Answer, reqwest::Error> {
        self.rt.block_on(async {
            let url = format!("{}{}", self.server().base, call.target);
            let mut request = self.http.request(call.method.clone(), url);
            for (name, value) in &call.headers {
                if let Ok(value) = reqwest::header::HeaderValue::from_bytes(value) {
                    request = request.header(*name, value);
                }
            }
            if let Some(content_type) = &call.content_type {
                request = request.header("content-type", content_type.as_str());
            }
            if let Some(body) = &call.body {
                request = request.body(body.clone());
            }
            let r = request.send().await?;
            Ok(Answer {
                status: r.status(),
                body: r.bytes().await?.to_vec(),
            })
        })
    }

    /// Sends `call` and checks the properties every answer must have;
    /// returns the answer for more checks, or `None` if the server closed
    /// the connection over a body above its limit (it may, once it has
    /// answered 413).
    fn check(&self, call: &Call) -> Result<Option<Answer>, TestCaseError> {
        let answer = match self.send(call) {
            Ok(answer) => answer,
            Err(_)
                if call
                    .body
                    .as_ref()
                    .is_some_and(|b| b.len() > coffer_server::api::MAX_BODY) =>
            {
                self.healthy()?;
                return Ok(None);
            }
            Err(e) => {
                return Err(TestCaseError::fail(format!(
                    "{} {}: {e}",
                    call.method,
                    shorten(&call.target)
                )))
            }
        };
        let what = || format!("{} {}", call.method, shorten(&call.target));
        if answer.status.is_server_error() {
            return Err(TestCaseError::fail(format!(
                "{} answered {}: {}",
                what(),
                answer.status,
                String::from_utf8_lossy(&answer.body)
            )));
        }
        if !answer.status.is_success() {
            let error: ErrorBody = serde_json::from_slice(&answer.body).map_err(|e| {
                TestCaseError::fail(format!(
                    "{} answered {} with no error body ({e}): {:?}",
                    what(),
                    answer.status,
                    shorten(&String::from_utf8_lossy(&answer.body))
                ))
            })?;
            let message = &error.error.message;
            if let ErrorCode::Unknown(code) = &error.error.code {
                return Err(TestCaseError::fail(format!(
                    "{}: unknown code {code:?}",
                    what()
                )));
            }
            if message.len() > MAX_MESSAGE {
                return Err(TestCaseError::fail(format!(
                    "{} answered {} {} with a message of {} bytes: {:?}",
                    what(),
                    answer.status,
                    error.error.code,
                    message.len(),
                    shorten(message)
                )));
            }
            if let Some(echo) = echoed(message, call) {
                return Err(TestCaseError::fail(format!(
                    "{} answered {} {} with a message quoting the input ({echo:?}): {message:?}",
                    what(),
                    answer.status,
                    error.error.code
                )));
            }
        }
        self.healthy()?;
        Ok(Some(answer))
    }

    /// The probes answer, and so does a logged-in user.
    fn healthy(&self) -> Result<(), TestCaseError> {
        let base = &self.server().base;
        let (health, ready, me) = self.rt.block_on(async {
            let health = self.http.get(format!("{base}/healthz")).send().await;
            let ready = self.http.get(format!("{base}/readyz")).send().await;
            let me = self
                .http
                .get(format!("{base}/v1/me"))
                .header("x-auth-token", &self.alice)
                .send()
                .await;
            (health, ready, me)
        });
        for (what, r) in [("healthz", health), ("readyz", ready), ("/v1/me", me)] {
            match r {
                Ok(r) if r.status() == StatusCode::OK => {}
                Ok(r) => {
                    return Err(TestCaseError::fail(format!(
                        "after the case, {what} answered {}",
                        r.status()
                    )))
                }
                Err(e) => {
                    return Err(TestCaseError::fail(format!(
                        "after the case, {what} failed: {e}"
                    )))
                }
            }
        }
        Ok(())
    }

    /// A fresh session of alice's (for logout, which ends it).
    fn fresh_session(&self) -> String {
        self.rt
            .block_on(support::login(self.server(), &self.http, "alice", PW))
            .unwrap()
    }

    fn number(&self, sql: &str) -> i64 {
        self.rt.block_on(self.store.number_for_tests(sql)).unwrap()
    }

    /// The fixture's id for a path parameter.
    fn id(&self, template: &str, param: &str) -> i64 {
        match param {
            // The operators' endpoints act on the scratch organization, so
            // that Acme is never suspended or deleted under the property.
            "org_id"
                if template == "/v1/orgs/{org_id}"
                    || template.ends_with("/suspend")
                    || template.ends_with("/resume") =>
            {
                self.scratch
            }
            "org_id" => self.acme,
            "user_id" => self.pat_id,
            "device_id" if template.ends_with("/revoke") => self.revokee,
            "device_id" => self.wiped,
            "order_id" => self.order,
            // Record sync's names (an app, a collection, a record id), and
            // files sync's (an upload id, a file's SHA-256: "1" is neither,
            // so `not_found`, which is what the path test wants to reach).
            "app" | "collection" | "id" | "sha256" => 1,
            other => panic!("{template}: a path parameter {other} this test does not know"),
        }
    }

    /// `template` with the fixture's ids.
    fn path(&self, template: &str) -> String {
        fill(template, |param| self.id(template, param).to_string())
    }

    /// The credentials `caller` stands for, for `template`.
    fn credentials(&self, template: &str, caller: &str) -> Vec<(&'static str, Vec<u8>)> {
        let session = |token: &str| vec![("x-auth-token", token.as_bytes().to_vec())];
        match caller {
            "none" | "setup token" | "enrollment code" => vec![],
            "session" if template == "/v1/logout" => session(&self.fresh_session()),
            "session" if template == "/v1/me/password" => session(&self.pat),
            "session" => session(&self.alice),
            "device" if template == "/v1/device/token" => session(&self.rotating.lock().unwrap()),
            "device" => session(&self.device.token),
            "device and session" => vec![
                ("x-auth-token", self.device.release.as_bytes().to_vec()),
                ("x-user-token", self.alice.as_bytes().to_vec()),
            ],
            other => panic!("{template}: a caller {other:?} this test does not know"),
        }
    }

    /// Keeps the rotated device's new token, if `answer` carries one.
    fn note_rotation(&self, template: &str, answer: &Answer) {
        if template == "/v1/device/token" && answer.status == StatusCode::OK {
            let body: Value = serde_json::from_slice(&answer.body).unwrap();
            *self.rotating.lock().unwrap() = body["device_token"].as_str().unwrap().to_owned();
        }
    }
}

async fn enroll(
    server: &Running,
    http: &reqwest::Client,
    org: i64,
    admin: &str,
    name: &str,
) -> Device {
    let r = support::post(
        http,
        server.url(&format!("/v1/orgs/{org}/enrollment-codes")),
        admin,
        json!({}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let code = r.json::<Value>().await.unwrap()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = http
        .post(server.url("/v1/enroll"))
        .json(&json!({"code": code, "name": name}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.unwrap();
    Device {
        id: body["device_id"].as_i64().unwrap(),
        token: body["device_token"].as_str().unwrap().to_owned(),
        release: body["release_token"].as_str().unwrap().to_owned(),
    }
}

fn hex_decode(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// `template` with each `{param}` replaced by `value(param)`.
fn fill(template: &str, mut value: impl FnMut(&str) -> String) -> String {
    template
        .split('/')
        .map(
            |segment| match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(param) => value(param),
                None => segment.to_owned(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

/// At most 200 characters of `text`, for failure messages.
fn shorten(text: &str) -> String {
    if text.len() <= 200 {
        return text.to_owned();
    }
    let mut end = 200;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…(+{} bytes)", &text[..end], text.len() - end)
}

/// Every byte but the unreserved ones, as `%XX`.
fn encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `%XX` and `+` decoded, as the server decodes query names (invalid
/// escapes kept).
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A part of `message` of [`ECHO`] bytes that the call's input holds (its
/// target, decoded or not, its header values, its body).
fn echoed(message: &str, call: &Call) -> Option<String> {
    let mut inputs: Vec<Vec<u8>> = vec![
        call.target.as_bytes().to_vec(),
        decode(&call.target).into_bytes(),
        decode(&decode(&call.target)).into_bytes(),
    ];
    inputs.extend(call.headers.iter().map(|(_, v)| v.clone()));
    if let Some(body) = &call.body {
        inputs.push(body.clone());
        // A parser may quote a string with its JSON escapes undone.
        if let Ok(value) = serde_json::from_slice::<Value>(body) {
            let mut strings = Vec::new();
            collect_strings(&value, &mut strings);
            inputs.extend(strings.into_iter().map(String::into_bytes));
        }
    }
    // Debug-quoting (`{:?}`) escapes what it quotes: compare unescaped too.
    let unescaped = message.replace("\\\"", "\"").replace("\\\\", "\\");
    for text in [message, unescaped.as_str()] {
        for start in (0..text.len()).filter(|&i| text.is_char_boundary(i)) {
            let Some(end) = (start + ECHO..text.len() + 1).find(|&e| text.is_char_boundary(e))
            else {
                break;
            };
            let part = &text.as_bytes()[start..end];
            if inputs.iter().any(|input| contains(input, part)) {
                return Some(text[start..end].to_owned());
            }
        }
    }
    None
}

fn collect_strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        Value::Object(map) => {
            for (k, v) in map {
                out.push(k.clone());
                collect_strings(v, out);
            }
        }
        _ => {}
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------
// Strategies.

/// Strings chosen to break things: line breaks, escapes, NUL, bidi
/// overrides, quotes, SQL, paths, format strings.
const SPECIALS: &[&str] = &[
    "",
    " ",
    "\n",
    "\r\n",
    "\u{1b}[2J\u{1b}[31m",
    "\0",
    "\u{202e}",
    "\u{200b}",
    "\u{feff}",
    "\"",
    "\\",
    "'; DROP TABLE users; --",
    "../../etc/passwd",
    "%s%n%x",
    "{}",
    "${jndi:ldap://x}",
    "\u{10ffff}",
    "\u{fffd}",
    "alice",
    "owner",
    "12345678901234567890",
    "-1",
    "NaN",
    "Infinity",
    "0x1F",
];

fn hostile_string() -> BoxedStrategy<String> {
    prop_oneof![
        4 => "\\PC{0,24}",
        3 => any::<String>(),
        3 => prop::sample::select(SPECIALS).prop_map(str::to_owned),
        2 => prop::collection::vec(prop::sample::select(SPECIALS), 1..6).prop_map(|v| v.concat()),
        1 => "[a-z]{32,80}",
        1 => (64usize..70_000, prop::sample::select(&["x", "é", "\n", "\u{202e}", "😀"][..]))
            .prop_map(|(n, fill)| {
                // Bytes, not characters: most stay under the body limit.
                fill.repeat(n / fill.len())
            }),
    ]
    .boxed()
}

/// A short hostile string (for keys and values inside structures).
fn short_string() -> BoxedStrategy<String> {
    prop_oneof![
        "\\PC{0,12}",
        any::<String>(),
        prop::sample::select(SPECIALS).prop_map(str::to_owned),
        "[a-z]{32,64}",
    ]
    .boxed()
}

fn number() -> BoxedStrategy<Value> {
    prop_oneof![
        (-3i64..10).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<u32>().prop_map(Value::from),
        prop::sample::select(
            &[
                0i64,
                1,
                8,
                60,
                1024,
                3650,
                87_600,
                604_800,
                2_147_483_647,
                2_147_483_648,
                4_294_967_295,
                4_294_967_296,
                i64::MAX,
                i64::MIN,
            ][..]
        )
        .prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
    ]
    .boxed()
}

fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        short_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(short_string(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

/// Raw text spliced into a JSON body where a value or anything goes.
const RAW_JSON: &[&str] = &[
    "1e400",
    "-1e400",
    "-0",
    "1.0e-400",
    "NaN",
    "Infinity",
    "\"\\ud800\"",
    "\"\\udc00\\ud800\"",
    "\"\\u0000\"",
    "\"\\uZZZZ\"",
    "18446744073709551616",
    "-9223372036854775809",
    "00",
    "+1",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "\"",
    "//",
    "/* */",
    "\u{feff}",
    "\u{0}",
    "null",
    "true",
    "{\"a\":1,\"a\":2}",
];

/// How a valid body is broken.
#[derive(Debug, Clone)]
enum Mutation {
    /// The valid body as it is.
    Valid,
    /// Any JSON value instead.
    Whole(Value),
    /// Without its field number n.
    Remove(usize),
    /// With one more field.
    Add(String, Value),
    /// Field n holds another value (often of the wrong type).
    Replace(usize, Value),
    /// Field n holds a string of so many bytes (at the body limit or
    /// over it).
    Huge(usize, usize),
    /// Field n holds arrays nested so deep.
    Nest(usize, usize),
    /// Field n holds this raw text.
    Raw(usize, &'static str),
    /// These bytes (invalid UTF-8, often) at this offset.
    Bytes(usize, Vec<u8>),
    /// Cut after so many bytes.
    Truncate(usize),
    /// The same field twice.
    Duplicate(usize),
}

fn mutation() -> BoxedStrategy<Mutation> {
    prop_oneof![
        2 => Just(Mutation::Valid),
        3 => json_value().prop_map(Mutation::Whole),
        2 => any::<usize>().prop_map(Mutation::Remove),
        3 => (hostile_string(), json_value()).prop_map(|(k, v)| Mutation::Add(k, v)),
        5 => (any::<usize>(), json_value()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        3 => (any::<usize>(), hostile_string()).prop_map(|(i, s)| Mutation::Replace(i, Value::String(s))),
        2 => (any::<usize>(), prop_oneof![60_000usize..65_600, 65_400usize..70_000])
            .prop_map(|(i, n)| Mutation::Huge(i, n)),
        2 => (any::<usize>(), prop_oneof![1usize..200, 100usize..5_000])
            .prop_map(|(i, n)| Mutation::Nest(i, n)),
        2 => (any::<usize>(), prop::sample::select(RAW_JSON)).prop_map(|(i, r)| Mutation::Raw(i, r)),
        2 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, b)| Mutation::Bytes(at, b)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => any::<usize>().prop_map(Mutation::Duplicate),
    ]
    .boxed()
}

/// A placeholder that serializes to a string found nowhere else.
const HOLE: &str = "\u{1}hole\u{1}";

/// `valid` with field `i` (modulo its fields; an added one if it has
/// none) holding `raw` text.
fn with_raw(valid: &Value, i: usize, raw: &str) -> Vec<u8> {
    let mut body = valid.clone();
    let key = field(valid, i);
    body[key.as_str()] = Value::String(HOLE.to_owned());
    let hole = serde_json::to_string(HOLE).unwrap();
    serde_json::to_string(&body)
        .unwrap()
        .replacen(&hole, raw, 1)
        .into_bytes()
}

/// The name of field `i` of `valid` (modulo), or `x` if it has none.
fn field(valid: &Value, i: usize) -> String {
    let keys: Vec<&String> = valid.as_object().unwrap().keys().collect();
    if keys.is_empty() {
        "x".to_owned()
    } else {
        keys[i % keys.len()].clone()
    }
}

fn apply(valid: &Value, mutation: &Mutation) -> Vec<u8> {
    let text = || serde_json::to_vec(valid).unwrap();
    match mutation {
        Mutation::Valid => text(),
        Mutation::Whole(value) => serde_json::to_vec(value).unwrap(),
        Mutation::Remove(i) => {
            let mut body = valid.clone();
            body.as_object_mut().unwrap().remove(&field(valid, *i));
            serde_json::to_vec(&body).unwrap()
        }
        Mutation::Add(key, value) => {
            let mut body = valid.clone();
            body[key.as_str()] = value.clone();
            serde_json::to_vec(&body).unwrap()
        }
        Mutation::Replace(i, value) => {
            let mut body = valid.clone();
            body[field(valid, *i).as_str()] = value.clone();
            serde_json::to_vec(&body).unwrap()
        }
        Mutation::Huge(i, n) => with_raw(valid, *i, &format!("\"{}\"", "h".repeat(*n))),
        Mutation::Nest(i, depth) => with_raw(
            valid,
            *i,
            &format!("{}{}", "[".repeat(*depth), "]".repeat(*depth)),
        ),
        Mutation::Raw(i, raw) => with_raw(valid, *i, raw),
        Mutation::Bytes(at, bytes) => {
            let mut body = text();
            let at = at % (body.len() + 1);
            body.splice(at..at, bytes.iter().copied());
            body
        }
        Mutation::Truncate(at) => {
            let mut body = text();
            body.truncate(at % (body.len() + 1));
            body
        }
        Mutation::Duplicate(i) => {
            let key = field(valid, *i);
            let value = valid.get(&key).cloned().unwrap_or(Value::Null);
            let mut body = text();
            let extra = format!(
                ",{}:{}}}",
                serde_json::to_string(&key).unwrap(),
                serde_json::to_string(&value).unwrap()
            );
            if body.len() > 2 {
                body.pop();
                body.extend_from_slice(extra.as_bytes());
            }
            body
        }
    }
}

/// What a request carries in the credential headers.
#[derive(Debug, Clone)]
enum Credentials {
    /// The right ones for the endpoint.
    Valid,
    /// None.
    Missing,
    /// A token of the other kind (a device's for a session, and back).
    Swapped,
    /// Bytes that are no token.
    Bogus(Vec<u8>),
}

/// Bytes a header value may hold: visible ASCII, space, tab, and
/// obs-text (0x80 to 0xFF: not UTF-8).
fn header_bytes() -> BoxedStrategy<Vec<u8>> {
    let byte = prop_oneof![0x20u8..0x7f, 0x80u8..=0xff, Just(b'\t')];
    prop_oneof![
        prop::collection::vec(byte, 0..80),
        "[0-9a-f]{48}".prop_map(String::into_bytes),
        (1usize..16_000).prop_map(|n| vec![b'a'; n]),
    ]
    .boxed()
}

fn credentials() -> BoxedStrategy<Credentials> {
    prop_oneof![
        6 => Just(Credentials::Valid),
        1 => Just(Credentials::Missing),
        1 => Just(Credentials::Swapped),
        1 => header_bytes().prop_map(Credentials::Bogus),
    ]
    .boxed()
}

fn content_type() -> BoxedStrategy<Option<String>> {
    prop_oneof![
        8 => Just(Some("application/json".to_owned())),
        1 => Just(Some("application/json; charset=utf-8".to_owned())),
        1 => Just(None),
        1 => prop::sample::select(&[
            "text/plain",
            "application/cbor",
            "application/x-www-form-urlencoded",
            "APPLICATION/JSON",
            "application/jsonx",
            "application/problem+json",
            "multipart/form-data; boundary=x",
        ][..])
        .prop_map(|s| Some(s.to_owned())),
    ]
    .boxed()
}

impl Fixture {
    /// The headers of `credentials` for an endpoint called by `caller`.
    fn headers(
        &self,
        template: &str,
        caller: &str,
        credentials: &Credentials,
    ) -> Vec<(&'static str, Vec<u8>)> {
        match credentials {
            Credentials::Valid => self.credentials(template, caller),
            Credentials::Missing => vec![],
            Credentials::Swapped => {
                let token = if caller.starts_with("device") {
                    &self.alice
                } else {
                    &self.device.token
                };
                vec![("x-auth-token", token.as_bytes().to_vec())]
            }
            Credentials::Bogus(bytes) => {
                let mut headers = vec![("x-auth-token", bytes.clone())];
                if caller == "device and session" {
                    headers.push(("x-user-token", bytes.clone()));
                }
                headers
            }
        }
    }
}

/// A body the endpoint `template` accepts from the fixture's callers (the
/// bodies of those that read none are ignored, which is checked too).
fn valid_body(template: &str) -> Value {
    match template {
        "/v1/setup" => json!({
            "setup_token": "5e".repeat(24),
            "organization": "Second Org",
            "owner": "olga",
            "password": PW,
        }),
        "/v1/login" => json!({"user": "alice", "password": PW}),
        "/v1/me/password" => {
            json!({"old_password": PW, "new_password": "another long passphrase"})
        }
        "/v1/orgs" => json!({"name": "Made By Property", "owner": "mabel", "password": PW}),
        "/v1/orgs/{org_id}/users" => json!({"user": "newbie", "password": PW, "role": "member"}),
        "/v1/orgs/{org_id}/users/{user_id}/role" => json!({"role": "member"}),
        "/v1/orgs/{org_id}/enrollment-codes" => json!({"valid_for_secs": 3600}),
        "/v1/enroll" => json!({"code": "0".repeat(48), "name": "sensor-1"}),
        "/v1/orgs/{org_id}/policies" => json!({"version": 5, "rules": {}}),
        "/v1/orgs/{org_id}/devices/{device_id}/wipe" => json!({"user": "pat"}),
        "/v1/device/escrow" => json!({"escrow_key": "cd".repeat(32)}),
        "/v1/device/data" => serde_json::from_str(&vector_batch().0).unwrap(),
        "/v1/device/sync/{app}/push" => json!({"batch_id": "b-1", "ops": [{
            "collection": "cases", "id": "c-1",
            "revision": "0123456789abcdef0123456789abcdef.1",
            "body": {"name": "Amina"}, "author": "alice"}]}),
        "/v1/orgs/{org_id}/records/{app}/{collection}/{id}/resolve" => json!({"delete": true}),
        "/v1/device/files/{app}/uploads" => {
            json!({"sha256": "ab".repeat(32), "size": 1000, "content_type": "image/jpeg"})
        }
        "/v1/orgs/{org_id}/sync/authors/bind" => {
            json!({"device_id": 1, "author": "alice", "user_id": 1})
        }
        // No body is read: an empty object, then whatever the mutation makes.
        "/v1/logout"
        | "/v1/orgs/{org_id}/suspend"
        | "/v1/orgs/{org_id}/resume"
        | "/v1/orgs/{org_id}/users/{user_id}/disable"
        | "/v1/orgs/{org_id}/users/{user_id}/enable"
        | "/v1/orgs/{org_id}/devices/{device_id}/revoke"
        | "/v1/orgs/{org_id}/devices/{device_id}/wipes/{order_id}/cancel"
        | "/v1/device/token"
        | "/v1/device/escrow/release"
        | "/v1/device/check-in"
        | "/v1/device/wipes/{order_id}/ack"
        | "/v1/device/sync/{app}/purged"
        | "/v1/device/mqtt"
        | "/v1/operators/{user_id}" => json!({}),
        other => panic!("{other}: a POST or PUT endpoint without a valid body here: add one"),
    }
}

/// The batch of docs/test-vectors/control-plane-v1.json: (JSON text, CBOR
/// bytes).
fn vector_batch() -> (String, Vec<u8>) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/test-vectors/control-plane-v1.json");
    let vectors: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let batch = &vectors["batch"];
    (
        batch["json"].as_str().unwrap().to_owned(),
        hex_decode(batch["cbor"].as_str().unwrap()),
    )
}

/// Routes the router serves that the OpenAPI document does not list:
/// tested all the same.
const UNLISTED: &[(&str, &str, &str, &str)] = &[
    ("get", "/v1/orgs/{org_id}/usage", "", "session"),
    (
        "post",
        "/v1/orgs/{org_id}/users/{user_id}/disable",
        "",
        "session",
    ),
    (
        "post",
        "/v1/orgs/{org_id}/users/{user_id}/enable",
        "",
        "session",
    ),
];

/// Every endpoint of the OpenAPI document (and [`UNLISTED`]) with one of
/// `methods`: (method, template, caller).
fn endpoints(methods: &[&str]) -> Vec<(Method, &'static str, &'static str)> {
    coffer_server::openapi::ENDPOINTS
        .iter()
        .chain(UNLISTED)
        .filter(|(method, ..)| methods.contains(method))
        .map(|(method, template, _, caller)| {
            (
                Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                *template,
                *caller,
            )
        })
        .collect()
}

// ---------------------------------------------------------------------
// (a) JSON bodies.

/// The JSON body of every POST and PUT endpoint: arbitrary values, valid
/// bodies with fields removed, added, repeated or replaced (wrong types,
/// hostile strings), strings at and over the body limit, deep nesting,
/// invalid UTF-8, truncation; with and without valid credentials, and
/// under other content types.
#[test]
fn json_bodies_of_every_endpoint() {
    let fx = Fixture::new();
    let targets = endpoints(&["post", "put"]);
    assert!(targets.len() >= 20, "{} endpoints", targets.len());
    let bodies: Vec<Value> = targets.iter().map(|(_, t, _)| valid_body(t)).collect();
    let strategy = (0..targets.len(), mutation(), credentials(), content_type());
    fx.run(
        "json bodies",
        strategy,
        |(t, mutation, credentials, content_type)| {
            let (method, template, caller) = &targets[t];
            let content_type = match (*template, content_type) {
                // The batch endpoint takes CBOR too: its own property below.
                ("/v1/device/data", Some(ct)) if ct.starts_with("application/cbor") => {
                    Some("application/json".to_owned())
                }
                (_, ct) => ct,
            };
            let call = Call {
                method: method.clone(),
                target: fx.path(template),
                headers: fx.headers(template, caller, &credentials),
                body: Some(apply(&bodies[t], &mutation)),
                content_type,
            };
            if let Some(answer) = fx.check(&call)? {
                fx.note_rotation(template, &answer);
            }
            Ok(())
        },
    );
    fx.stop();
}

// ---------------------------------------------------------------------
// (b) Device data batches.

fn cbor_value() -> BoxedStrategy<ciborium::value::Value> {
    use ciborium::value::Value as C;
    let leaf = prop_oneof![
        any::<i64>().prop_map(|n| C::Integer(n.into())),
        any::<u64>().prop_map(|n| C::Integer(n.into())),
        any::<f64>().prop_map(C::Float),
        prop::sample::select(&[f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0, 1e300][..])
            .prop_map(C::Float),
        short_string().prop_map(C::Text),
        prop::collection::vec(any::<u8>(), 0..16).prop_map(C::Bytes),
        any::<bool>().prop_map(C::Bool),
        Just(C::Null),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(C::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        3 => short_string().prop_map(C::Text),
                        1 => any::<i64>().prop_map(|n| C::Integer(n.into())),
                        1 => prop::collection::vec(any::<u8>(), 0..4).prop_map(C::Bytes),
                    ],
                    inner.clone()
                ),
                0..4
            )
            .prop_map(C::Map),
            (0u64..300, inner).prop_map(|(tag, v)| C::Tag(tag, Box::new(v))),
        ]
    })
    .boxed()
}

/// A batch-shaped CBOR map: plausible fields with arbitrary values, some
/// missing, some extra.
fn cbor_batch() -> BoxedStrategy<Vec<u8>> {
    use ciborium::value::Value as C;
    let text = |s: &str| C::Text(s.to_owned());
    let id = prop_oneof![
        "[A-Za-z0-9_-]{8,64}".prop_map(C::Text),
        short_string().prop_map(C::Text),
        cbor_value(),
    ];
    let at = prop_oneof![
        (0i64..(1 << 40)).prop_map(|n| C::Integer(n.into())),
        cbor_value(),
    ];
    let name = prop_oneof![
        "[a-z][a-z0-9_.:/-]{0,20}".prop_map(C::Text),
        short_string().prop_map(C::Text),
        cbor_value(),
    ];
    let reading = (
        at,
        name,
        cbor_value(),
        prop::option::of((short_string(), cbor_value())),
    )
        .prop_map(move |(at, name, value, extra)| {
            let mut fields = vec![
                (C::Text("at".into()), at),
                (C::Text("name".into()), name),
                (C::Text("value".into()), value),
            ];
            if let Some((k, v)) = extra {
                fields.push((C::Text(k), v));
            }
            C::Map(fields)
        });
    (
        id,
        prop::collection::vec(reading, 0..6),
        any::<u8>(),
        prop::collection::vec(any::<u8>(), 0..3),
    )
        .prop_map(move |(id, readings, drop, trailing)| {
            let mut fields = vec![
                (text("batch_id"), id),
                (text("readings"), C::Array(readings)),
            ];
            if drop % 7 == 0 {
                fields.remove(usize::from(drop % 2));
            }
            let mut out = Vec::new();
            ciborium::ser::into_writer(&C::Map(fields), &mut out).unwrap();
            // Sometimes bytes after the item.
            if drop % 5 == 0 {
                out.extend(trailing);
            }
            out
        })
        .boxed()
}

/// A batch-shaped JSON object.
fn json_batch() -> BoxedStrategy<Vec<u8>> {
    let reading = (
        prop_oneof![(0i64..(1 << 40)).prop_map(Value::from), json_value()],
        prop_oneof![
            "[a-z][a-z0-9_.:/-]{0,20}".prop_map(Value::String),
            json_value()
        ],
        json_value(),
    )
        .prop_map(|(at, name, value)| json!({"at": at, "name": name, "value": value}));
    (
        prop_oneof!["[A-Za-z0-9_-]{8,64}".prop_map(Value::String), json_value()],
        prop::collection::vec(reading, 0..6),
    )
        .prop_map(|(id, readings)| {
            serde_json::to_vec(&json!({"batch_id": id, "readings": readings})).unwrap()
        })
        .boxed()
}

/// Byte-level damage to a valid body.
#[derive(Debug, Clone)]
enum Damage {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
    Append(Vec<u8>),
}

fn damage() -> BoxedStrategy<Vec<Damage>> {
    prop::collection::vec(
        prop_oneof![
            (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Damage::Flip(at, b)),
            (any::<usize>(), prop::collection::vec(any::<u8>(), 1..6))
                .prop_map(|(at, b)| Damage::Insert(at, b)),
            (any::<usize>(), 1usize..16).prop_map(|(at, n)| Damage::Delete(at, n)),
            any::<usize>().prop_map(Damage::Truncate),
            prop::collection::vec(any::<u8>(), 1..6).prop_map(Damage::Append),
        ],
        1..4,
    )
    .boxed()
}

fn damaged(mut body: Vec<u8>, damage: &[Damage]) -> Vec<u8> {
    for d in damage {
        let at = |i: &usize, len: usize| i % (len + 1);
        match d {
            Damage::Flip(i, b) if !body.is_empty() => {
                let i = i % body.len();
                body[i] ^= b | 1;
            }
            Damage::Flip(..) => {}
            Damage::Insert(i, bytes) => {
                let i = at(i, body.len());
                body.splice(i..i, bytes.iter().copied());
            }
            Damage::Delete(i, n) => {
                let i = at(i, body.len());
                let end = (i + n).min(body.len());
                body.drain(i..end);
            }
            Damage::Truncate(i) => body.truncate(at(i, body.len())),
            Damage::Append(bytes) => body.extend_from_slice(bytes),
        }
    }
    body
}

#[derive(Debug, Clone)]
enum BatchBody {
    /// Any bytes.
    Bytes(Vec<u8>),
    /// The vector's JSON batch, damaged.
    DamagedJson(Vec<Damage>),
    /// The vector's CBOR batch, damaged.
    DamagedCbor(Vec<Damage>),
    /// A batch-shaped JSON object with arbitrary values.
    Json(Vec<u8>),
    /// A batch-shaped CBOR map with arbitrary values.
    Cbor(Vec<u8>),
    /// CBOR arrays nested so deep (the limit is 16).
    DeepCbor(usize),
}

fn batch_body() -> BoxedStrategy<BatchBody> {
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..2048).prop_map(BatchBody::Bytes),
        3 => damage().prop_map(BatchBody::DamagedJson),
        3 => damage().prop_map(BatchBody::DamagedCbor),
        3 => json_batch().prop_map(BatchBody::Json),
        4 => cbor_batch().prop_map(BatchBody::Cbor),
        1 => (1usize..5_000).prop_map(BatchBody::DeepCbor),
    ]
    .boxed()
}

/// `POST /v1/device/data`: arbitrary bytes, damaged valid batches and
/// batch-shaped values (NaN, infinities, tags, byte strings, non-text
/// keys, deep nesting, trailing bytes), as JSON and as CBOR. A refused
/// batch stores no reading; a stored one is answered with its id.
#[test]
fn device_data_batches() {
    let fx = Fixture::new();
    let (json_text, cbor) = vector_batch();
    let strategy = (batch_body(), any::<bool>(), 0u8..10);
    fx.run("batches", strategy, |(body, as_cbor, type_roll)| {
        let (bytes, natural_cbor) = match &body {
            BatchBody::Bytes(b) => (b.clone(), as_cbor),
            BatchBody::DamagedJson(d) => (damaged(json_text.clone().into_bytes(), d), false),
            BatchBody::DamagedCbor(d) => (damaged(cbor.clone(), d), true),
            BatchBody::Json(b) => (b.clone(), false),
            BatchBody::Cbor(b) => (b.clone(), true),
            BatchBody::DeepCbor(depth) => {
                let mut b = vec![0x81; *depth];
                b.push(0x00);
                (b, true)
            }
        };
        // Mostly the content type the bytes were made for; sometimes the
        // other one, or one the endpoint refuses.
        let content_type = match (type_roll, natural_cbor) {
            (0, _) => "text/plain",
            (1, true) | (2..=9, false) => "application/json",
            (1, false) | (2..=9, true) => "application/cbor",
            _ => unreachable!(),
        };
        let before = fx.number("SELECT count(*) FROM readings");
        let call = Call {
            method: Method::POST,
            target: "/v1/device/data".to_owned(),
            headers: fx.credentials("/v1/device/data", "device"),
            body: Some(bytes),
            content_type: Some(content_type.to_owned()),
        };
        let answer = fx.check(&call)?;
        let after = fx.number("SELECT count(*) FROM readings");
        if let Some(answer) = answer.filter(|a| a.status.is_success()) {
            let stored: coffer_server::data::DeliveryAnswer =
                serde_json::from_slice(&answer.body).unwrap();
            prop_assert_eq!(after - before, i64::try_from(stored.stored).unwrap());
        } else {
            prop_assert_eq!(after, before, "a refused batch stored readings");
        }
        Ok(())
    });
    fx.stop();
}

// ---------------------------------------------------------------------
// (c) Policies.

fn policy_number() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => number(),
        1 => json_value(),
        1 => prop::sample::select(&["1", "-1", "", "1e3"][..]).prop_map(Value::from),
    ]
    .boxed()
}

/// An object of some of `fields`, each a policy number.
fn numbers_object(fields: &'static [&'static str]) -> BoxedStrategy<Value> {
    prop::collection::vec((prop::sample::select(fields), policy_number()), 0..4)
        .prop_map(|pairs| {
            Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
        })
        .boxed()
}

const RULE_FIELDS: &[&str] = &[
    "passphrase",
    "max_failed_attempts",
    "on_max_failed",
    "idle_lock_secs",
    "offline",
    "apps",
    "refuse_debugger",
    "min_kdf",
    "check_in_secs",
];

fn rule_value(field: &'static str) -> BoxedStrategy<Value> {
    let plausible = match field {
        "passphrase" => numbers_object(&["min_length", "min_classes", "max_length"]),
        "offline" => numbers_object(&["block_after_hours", "wipe_after_days"]),
        "min_kdf" => numbers_object(&["memory_kib", "iterations", "parallelism", "salt"]),
        "on_max_failed" => prop_oneof![
            prop::sample::select(&["lock", "wipe", "Lock", "WIPE", ""][..]).prop_map(Value::from),
            short_string().prop_map(Value::from),
        ]
        .boxed(),
        "refuse_debugger" => any::<bool>().prop_map(Value::from).boxed(),
        "apps" => prop::collection::btree_map(
            prop_oneof![Just("*".to_owned()), "[a-z]{1,8}", hostile_string()],
            prop::collection::vec(
                prop_oneof![
                    3 => prop::sample::select(&coffer_protocol::policy::CAPABILITIES[..])
                        .prop_map(str::to_owned),
                    1 => hostile_string(),
                ],
                0..6,
            ),
            0..4,
        )
        .prop_map(|m| json!(m))
        .boxed(),
        _ => policy_number(),
    };
    prop_oneof![4 => plausible, 1 => json_value()].boxed()
}

fn rules() -> BoxedStrategy<Value> {
    let pair = prop::sample::select(RULE_FIELDS).prop_flat_map(|f| (Just(f), rule_value(f)));
    (
        prop::collection::vec(pair, 0..8),
        prop::option::weighted(0.1, (short_string(), json_value())),
    )
        .prop_map(|(pairs, extra)| {
            let mut rules: serde_json::Map<String, Value> =
                pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            if let Some((k, v)) = extra {
                rules.insert(k, v);
            }
            Value::Object(rules)
        })
        .boxed()
}

fn version() -> BoxedStrategy<Value> {
    let max = coffer_protocol::policy::MAX_POLICY_VERSION;
    prop_oneof![
        3 => (-3i64..40).prop_map(Value::from),
        2 => (max - 3..=max.saturating_add(3)).prop_map(Value::from),
        2 => any::<i64>().prop_map(Value::from),
        1 => prop::sample::select(&[i64::MAX, i64::MIN, 0, 1 << 53][..]).prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => json_value(),
    ]
    .boxed()
}

/// `POST /v1/orgs/{org_id}/policies`: arbitrary versions (negative, at and
/// past the bound, i64::MAX, not numbers) and rules (plausible fields with
/// arbitrary values, unknown capabilities and fields, hostile app names).
/// A policy the server signs verifies under the organization's key, within
/// the version bound, with valid rules: a device would take it.
#[test]
fn published_policies() {
    let fx = Fixture::new();
    let template = "/v1/orgs/{org_id}/policies";
    let strategy = (version(), prop::option::weighted(0.9, rules()), 0u8..20);
    fx.run("policies", strategy, |(version, rules, roll)| {
        let mut body = json!({"version": version});
        if let Some(rules) = rules {
            body["rules"] = rules;
        }
        if roll == 0 {
            body["issued_at"] = json!(1);
        }
        let call = Call {
            method: Method::POST,
            target: fx.path(template),
            headers: fx.credentials(template, "session"),
            body: Some(serde_json::to_vec(&body).unwrap()),
            content_type: Some("application/json".to_owned()),
        };
        let Some(answer) = fx.check(&call)? else {
            return Ok(());
        };
        if answer.status.is_success() {
            let signed: coffer_protocol::policy::SignedPolicy =
                serde_json::from_slice(&answer.body).unwrap();
            let document = signed.verify(&fx.policy_key, fx.acme, None);
            prop_assert!(document.is_ok(), "a device refuses it: {:?}", document);
            prop_assert_eq!(Some(signed.version), body["version"].as_i64());
        }
        // The latest policy stays one a device takes.
        let latest = fx
            .send(&Call {
                method: Method::GET,
                target: format!("/v1/orgs/{}/policies/latest", fx.acme),
                headers: fx.credentials(template, "session"),
                body: None,
                content_type: None,
            })
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(latest.status, StatusCode::OK);
        let signed: coffer_protocol::policy::SignedPolicy =
            serde_json::from_slice(&latest.body).unwrap();
        prop_assert!(signed.verify(&fx.policy_key, fx.acme, None).is_ok());
        Ok(())
    });
    fx.stop();
}

// ---------------------------------------------------------------------
// (d) Path parameters.

/// Oddly written ids, as they stand in a path (some percent-encoded on
/// purpose, some not).
const ODD_IDS: &[&str] = &[
    "0",
    "-0",
    "+1",
    "01",
    "0x1",
    "1e3",
    "1.0",
    "1_000",
    "%201",
    "1%20",
    "%31",
    "%2531",
    "%00",
    "1%00",
    "%2F",
    "%2e%2e",
    "..",
    ".",
    "%FF",
    "%C0%AF",
    "%",
    "%%",
    "%E2%80%AE1",
    "%D9%A1",
    "%EF%BC%91",
    "1;1",
    "1,2",
    "null",
    "true",
    "%5B1%5D",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551616",
];

#[derive(Debug, Clone)]
enum Segment {
    /// The fixture's own id for the parameter.
    Valid,
    /// This text, as it is.
    Text(String),
}

fn segment() -> BoxedStrategy<Segment> {
    prop_oneof![
        1 => Just(Segment::Valid),
        3 => prop::sample::select(ODD_IDS).prop_map(|s| Segment::Text(s.to_owned())),
        2 => any::<i64>().prop_map(|n| Segment::Text(n.to_string())),
        1 => (19usize..400).prop_map(|n| Segment::Text("9".repeat(n))),
        1 => (1usize..300).prop_map(|n| Segment::Text(format!("-{}", "9".repeat(n)))),
        2 => any::<String>().prop_map(|s| Segment::Text(encode(s.as_bytes()))),
        2 => hostile_string().prop_map(|s| {
            // Long ones cut to a path a client would send (8 KiB).
            let bytes = s.as_bytes();
            Segment::Text(encode(&bytes[..bytes.len().min(2_700)]))
        }),
        1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(|b| Segment::Text(encode(&b))),
    ]
    .boxed()
}

/// Every templated path of the OpenAPI document, with each parameter
/// arbitrary: strings, huge and negative numbers, unicode digits,
/// percent-encoded bytes and separators. Valid credentials and a valid
/// body, so that the path is what is tested.
#[test]
fn path_parameters() {
    let fx = Fixture::new();
    let targets: Vec<_> = endpoints(&["get", "post", "put", "delete"])
        .into_iter()
        .filter(|(_, template, _)| template.contains('{'))
        .collect();
    assert!(targets.len() >= 22, "{} templated endpoints", targets.len());
    let strategy = (
        0..targets.len(),
        prop::collection::vec(segment(), 3),
        any::<bool>(),
    );
    fx.run("path parameters", strategy, |(t, segments, valid_creds)| {
        let (method, template, caller) = &targets[t];
        let mut next = segments.iter();
        let path = fill(template, |param| match next.next() {
            Some(Segment::Text(text)) => text.clone(),
            _ => fx.id(template, param).to_string(),
        });
        let body = matches!(*method, Method::POST | Method::PUT)
            .then(|| serde_json::to_vec(&valid_body(template)).unwrap());
        let credentials = if valid_creds {
            Credentials::Valid
        } else {
            Credentials::Missing
        };
        let call = Call {
            method: method.clone(),
            target: path,
            headers: fx.headers(template, caller, &credentials),
            content_type: body.as_ref().map(|_| "application/json".to_owned()),
            body,
        };
        if let Some(answer) = fx.check(&call)? {
            fx.note_rotation(template, &answer);
        }
        Ok(())
    });
    fx.stop();
}

// ---------------------------------------------------------------------
// (e) Query strings.

/// The names the API's queries take.
const QUERY_NAMES: &[&str] = &[
    "from", "to", "by", "format", "device", "name", "after", "limit",
];

fn query_name() -> BoxedStrategy<String> {
    prop_oneof![
        4 => prop::sample::select(QUERY_NAMES).prop_map(str::to_owned),
        1 => prop::sample::select(coffer_protocol::CREDENTIAL_NAMES).prop_map(|n| {
            // In another spelling.
            n.to_uppercase().replace('_', "-")
        }),
        2 => short_string(),
        1 => hostile_string().prop_map(|s| s.chars().take(3_000).collect()),
    ]
    .boxed()
}

fn query_value() -> BoxedStrategy<String> {
    prop_oneof![
        3 => number().prop_map(|n| n.to_string()),
        2 => prop::sample::select(&["org", "user", "device", "json", "csv", "", "CSV", "1e3", "-0"][..])
            .prop_map(str::to_owned),
        1 => (19usize..200).prop_map(|n| "9".repeat(n)),
        2 => short_string(),
        1 => hostile_string().prop_map(|s| s.chars().take(3_000).collect()),
    ]
    .boxed()
}

#[derive(Debug, Clone)]
struct Query {
    pairs: Vec<(String, Option<String>)>,
    /// `;` rather than `&` between pairs.
    semicolons: bool,
    /// Names encoded twice (`%2574` for `t`).
    twice: bool,
}

fn query() -> BoxedStrategy<Query> {
    (
        prop::collection::vec(
            (query_name(), prop::option::weighted(0.9, query_value())),
            0..6,
        ),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(pairs, semicolons, twice)| Query {
            pairs,
            semicolons,
            twice,
        })
        .boxed()
}

impl Query {
    fn encoded(&self) -> String {
        self.pairs
            .iter()
            .map(|(name, value)| {
                let mut name = encode(name.as_bytes());
                if self.twice {
                    name = name.replace('%', "%25");
                }
                match value {
                    Some(value) => format!("{name}={}", encode(value.as_bytes())),
                    None => name,
                }
            })
            .collect::<Vec<_>>()
            .join(if self.semicolons { ";" } else { "&" })
    }
}

/// Whether the server's guard must refuse `query` (its rule, restated:
/// pairs split on `&` and `;`, names decoded up to three times).
fn names_a_credential(query: &str) -> bool {
    query.split(['&', ';']).any(|pair| {
        let mut name = pair.split('=').next().unwrap_or("").to_owned();
        for _ in 0..3 {
            let decoded = decode(&name);
            if decoded == name {
                break;
            }
            name = decoded;
        }
        coffer_protocol::names_a_credential(&name)
    })
}

/// Query strings of the endpoints that read them (usage, data) and of
/// every other GET endpoint: known names with arbitrary values (huge,
/// negative, not numbers), unknown and hostile names, repeated names,
/// `;` separators, names encoded twice, credential names in other
/// spellings (refused with `credential_in_query`, whatever else).
#[test]
fn query_strings() {
    let fx = Fixture::new();
    let mut targets = vec![
        (Method::GET, "/v1/orgs/{org_id}/usage", "session"),
        (Method::GET, "/v1/orgs/{org_id}/data", "session"),
    ];
    targets.extend(endpoints(&["get"]));
    let strategy = (prop_oneof![3 => 0..2usize, 1 => 0..targets.len()], query());
    fx.run("query strings", strategy, |(t, query)| {
        let (method, template, caller) = &targets[t];
        let encoded = query.encoded();
        let call = Call {
            method: method.clone(),
            target: format!("{}?{encoded}", fx.path(template)),
            headers: fx.credentials(template, caller),
            body: None,
            content_type: None,
        };
        let Some(answer) = fx.check(&call)? else {
            return Ok(());
        };
        if names_a_credential(&encoded) {
            prop_assert_eq!(answer.status, StatusCode::BAD_REQUEST);
            let error: ErrorBody = serde_json::from_slice(&answer.body).unwrap();
            prop_assert_eq!(error.error.code, ErrorCode::CredentialInQuery);
        }
        Ok(())
    });
    fx.stop();
}

// ---------------------------------------------------------------------
// The bugs the properties found in review (issue 14), one example each:
// every one failed before its fix.

/// Runs `call` on a fresh fixture with every property strict.
fn strictly(calls: impl Fn(&Fixture) -> Vec<Call>) {
    let fx = Fixture::new();
    for call in calls(&fx) {
        if let Err(e) = fx.check(&call) {
            panic!("{e}");
        }
    }
    fx.stop();
}

fn json_call(fx: &Fixture, template: &str, caller: &str, body: &[u8]) -> Call {
    Call {
        method: Method::POST,
        target: fx.path(template),
        headers: fx.credentials(template, caller),
        body: Some(body.to_vec()),
        content_type: Some("application/json".to_owned()),
    }
}

/// A body of the wrong shape is answered with serde's own text, which
/// quotes unknown field names, string values of the wrong type and
/// unknown variants whole: 60 KB of input comes back in the message.
#[test]
fn body_errors_quote_nothing_of_the_body() {
    let long = "q".repeat(60_000);
    strictly(|fx| {
        vec![
            json_call(
                fx,
                "/v1/login",
                "none",
                format!(r#"{{"user": "a", "password": "b", "{long}": 1}}"#).as_bytes(),
            ),
            json_call(
                fx,
                "/v1/orgs/{org_id}/enrollment-codes",
                "session",
                format!(r#"{{"valid_for_secs": "{long}"}}"#).as_bytes(),
            ),
            json_call(
                fx,
                "/v1/orgs/{org_id}/policies",
                "session",
                format!(r#"{{"version": 2, "rules": {{"on_max_failed": "{long}"}}}}"#).as_bytes(),
            ),
        ]
    });
}

/// A query of the usage or data endpoint with an unknown name is
/// answered with serde's text, which quotes the name (twice).
#[test]
fn query_errors_quote_nothing_of_the_query() {
    let long = "q".repeat(20_000);
    strictly(|fx| {
        ["usage", "data"]
            .iter()
            .map(|endpoint| Call {
                method: Method::GET,
                target: format!("/v1/orgs/{}/{endpoint}?{long}=1", fx.acme),
                headers: fx.credentials("/v1/orgs/{org_id}/usage", "session"),
                body: None,
                content_type: None,
            })
            .collect()
    });
}

/// An unknown capability used to be quoted whole in the refusal.
#[test]
fn policy_errors_quote_nothing_of_the_rules() {
    let long = "q".repeat(60_000);
    strictly(|fx| {
        vec![json_call(
            fx,
            "/v1/orgs/{org_id}/policies",
            "session",
            format!(r#"{{"version": 2, "rules": {{"apps": {{"*": ["{long}"]}}}}}}"#).as_bytes(),
        )]
    });
}

/// A method a path does not take is answered 405 with no body at all,
/// not the error body every other refusal has.
#[test]
fn method_not_allowed_is_an_error_body() {
    strictly(|fx| {
        vec![
            Call {
                method: Method::GET,
                target: "/v1/login".to_owned(),
                headers: vec![],
                body: None,
                content_type: None,
            },
            Call {
                method: Method::POST,
                target: format!("/v1/orgs/{}", fx.acme),
                headers: fx.credentials("/v1/orgs/{org_id}", "session"),
                body: None,
                content_type: None,
            },
        ]
    });
}
