//! Floods every endpoint an anonymous client reaches — setup, login,
//! enrollment, the device endpoints and every session endpoint with bogus
//! tokens, the probes, the OpenAPI document and the metrics, unknown paths
//! and methods, credentials in query strings — with large and hostile
//! values (60 KB strings, control characters, newlines, ANSI escapes, NUL,
//! bidi overrides, a distinct value each time), and checks that what the
//! server keeps grows by a bounded amount per request: the database (its
//! rate-limit counters, audit trail, usage records, every table's rows,
//! and its size), the captured log, and the metrics it serves. Once a rate
//! limit is reached, a flood leaves (almost) nothing more.
//!
//! On SQLite and on a real PostgreSQL. The two run one after the other
//! (the log capture is the process's), each with its own server behind a
//! trusted proxy on loopback, so that each flood comes from its own client
//! address (`X-Forwarded-For`). Run with `--nocapture` for the numbers.

#![allow(clippy::unwrap_used)]

mod support;

use std::fmt::Write as _;

use reqwest::Method;
use serde_json::json;
use support::postgres::Postgres;
use support::Running;

/// Requests of each flood.
const FLOOD: usize = 100;

/// Most bytes of audit trail (actor, action and details: what can come
/// from outside) one refused request may add before its limit is reached.
const AUDIT_BYTES_PER_REQUEST: i64 = 300;

/// Most bytes of log one refused request may add.
const LOG_BYTES_PER_REQUEST: usize = 400;

/// Most bytes of database (SQLite's pages; PostgreSQL's relations) one
/// refused request may add, before its limit: one audit row with its
/// hashes and index entries, one counter. Pages come whole: [`DB_SLACK`].
const DB_BYTES_PER_REQUEST: i64 = 1_024;

/// What a flood may add past its limit, in all: a page or two of the
/// database, the one audit row and log line that say the limit was
/// reached.
const DB_SLACK: i64 = 3 * 8_192;

/// Most bytes the metrics exposition may grow by in one flood: two lines
/// per (method, route template, status class), of which a flood makes a
/// few (the one of every session endpoint, about 25) — never one per
/// value sent.
const METRICS_BYTES_PER_FLOOD: usize = 8_192;

/// Small limits, so that floods reach them quickly.
const LIMITS: coffer_server::LoginLimits = coffer_server::LoginLimits {
    per_account: 5,
    per_address: 10,
    window: std::time::Duration::from_secs(900),
};

const PW: &str = "correct horse battery";

/// One flood at a time in this process: the log capture is shared.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The `i`-th hostile string: distinct for every `i`, most about 60 KB,
/// each kind of trouble in turn.
fn hostile(i: usize) -> String {
    let tag = format!("flood{i:05}");
    match i % 8 {
        0 => format!("{tag}{}", "x".repeat(60_000)),
        1 => format!(
            "{tag}\n2026-12-01T00:00:00.000000Z  INFO coffer_server::api: login user=alice{}",
            "\n".repeat(2_000)
        ),
        2 => format!(
            "{tag}\u{1b}[2J\u{1b}[31mred\u{1b}[0m{}",
            "\u{1b}[A".repeat(5_000)
        ),
        3 => format!("{tag}\0nul\0{}", "\0".repeat(3_000)),
        4 => format!(
            "{tag}\u{202e}nimda\u{2066}{}",
            "\u{202e}\u{200b}".repeat(5_000)
        ),
        5 => format!("{tag}\r\x07\x08\x7f{}", "é".repeat(25_000)),
        6 => format!("{tag}{}", "'; DROP TABLE users; --".repeat(2_500)),
        _ => format!("{tag}{}", "😀".repeat(14_000)),
    }
}

/// The `i`-th hostile string cut to at most `max` bytes (so that several
/// fit in one body under the 64 KiB limit: a body over it is refused
/// before anything else, which would test nothing).
fn hostile_cut(i: usize, max: usize) -> String {
    let mut text = hostile(i);
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

/// `body` with its strings cut until it fits in 60,000 bytes of JSON
/// (control characters take six bytes there each).
fn fit(mut body: serde_json::Value) -> serde_json::Value {
    while serde_json::to_vec(&body).unwrap().len() > 60_000 {
        for value in body.as_object_mut().unwrap().values_mut() {
            if let serde_json::Value::String(text) = value {
                let mut end = text.len() * 3 / 4;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
            }
        }
    }
    body
}

/// The `i`-th hostile header value (a header holds no control
/// characters): long, odd bytes (not UTF-8), spaces.
fn hostile_header(i: usize) -> Vec<u8> {
    let tag = format!("flood{i:05}");
    let mut value = tag.into_bytes();
    match i % 3 {
        0 => value.extend(std::iter::repeat_n(b'A', 60_000)),
        1 => value.extend((0..30_000).map(|j| 0x80 + (j % 0x80) as u8)),
        _ => value.extend(b" \t ".repeat(100)),
    }
    value
}

/// The `i`-th hostile path segment, percent-encoded (8 KB or so: a URI
/// has room for it).
fn hostile_segment(i: usize) -> String {
    let raw = hostile(i);
    let bytes = raw.as_bytes();
    bytes[..bytes.len().min(2_500)]
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// What the server keeps, at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Footprint {
    rate_limits: i64,
    audit_rows: i64,
    /// Actor, action and details of every audit row.
    audit_bytes: i64,
    usage_records: i64,
    /// Rows of every table.
    rows: i64,
    /// SQLite: page_count * page_size; PostgreSQL: every relation's size.
    db_bytes: i64,
    /// Where the captured log ends.
    log_end: usize,
    metrics_bytes: usize,
}

struct Flooded {
    server: Running,
    http: reqwest::Client,
    store: coffer_server::Store,
    sqlite: bool,
    /// Every flood's growth, for the table printed at the end.
    report: String,
    /// The next flood's client address.
    next_client: u32,
}

impl Flooded {
    async fn number(&self, sql: &str) -> i64 {
        let sql = if self.sqlite {
            sql.replace("::BIGINT", "")
        } else {
            sql.to_owned()
        };
        self.store.number_for_tests(&sql).await.unwrap()
    }

    async fn footprint(&self) -> Footprint {
        let mut rows = 0;
        for table in TABLES {
            rows += self
                .number(&format!("SELECT count(*)::BIGINT FROM {table}"))
                .await;
        }
        let db_bytes = if self.sqlite {
            self.number(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            )
            .await
        } else {
            self.number(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::BIGINT FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = 'public' AND c.relkind = 'r'",
            )
            .await
        };
        let metrics = self
            .http
            .get(self.server.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        Footprint {
            rate_limits: self.number("SELECT count(*)::BIGINT FROM rate_limits").await,
            audit_rows: self.number("SELECT count(*)::BIGINT FROM audit_events").await,
            audit_bytes: self
                .number(
                    "SELECT coalesce(sum(length(actor) + length(action) + length(details)), 0)::BIGINT FROM audit_events",
                )
                .await,
            usage_records: self.number("SELECT count(*)::BIGINT FROM usage_records").await,
            rows,
            db_bytes,
            log_end: support::captured_logs().len(),
            metrics_bytes: metrics.len(),
        }
    }

    /// A client address of its own for the next flood.
    fn client(&mut self) -> String {
        self.next_client += 1;
        format!(
            "198.18.{}.{}",
            self.next_client / 250,
            self.next_client % 250 + 1
        )
    }

    /// Floods with `FLOOD` requests made by `request(i, client)`, from one
    /// client address; `limit` is the number of requests after which the
    /// endpoint's rate limit refuses (None: it has none). Checks the
    /// bounds and records the growth.
    async fn flood(
        &mut self,
        name: &str,
        limit: Option<usize>,
        request: impl Fn(&reqwest::Client, usize, &str) -> reqwest::RequestBuilder,
    ) {
        let client = self.client();
        self.flood_from(name, FLOOD, limit, |http, i| request(http, i, &client))
            .await;
    }

    async fn flood_from(
        &mut self,
        name: &str,
        requests: usize,
        limit: Option<usize>,
        request: impl Fn(&reqwest::Client, usize) -> reqwest::RequestBuilder,
    ) {
        let logs_before = support::captured_logs().len();
        let start = self.footprint().await;
        let split = limit.map_or(requests, |l| l + 1);
        let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
        let mut mid = start;
        let mut mid_audit_id = 0;
        let started = std::time::Instant::now();
        for i in 0..requests {
            if i == split {
                mid = self.footprint().await;
                mid_audit_id = self
                    .number("SELECT coalesce(max(id), 0)::BIGINT FROM audit_events")
                    .await;
            }
            let r = request(&self.http, i).send().await;
            let status = match r {
                Ok(r) => {
                    let status = r.status();
                    let body = r.bytes().await.unwrap_or_default();
                    assert!(
                        !status.is_server_error(),
                        "{name}: request {i} answered {status}: {}",
                        String::from_utf8_lossy(&body)
                    );
                    status.as_u16()
                }
                // The server may close a connection over a request it
                // refuses before reading all of it.
                Err(e) => {
                    assert!(!e.is_builder(), "{name}: {e}");
                    0
                }
            };
            *statuses.entry(status).or_default() += 1;
        }
        let elapsed = started.elapsed();
        if split >= requests {
            mid = self.footprint().await;
        }
        let end = self.footprint().await;
        let before_limit = split.min(requests);
        let after_limit = requests - before_limit;
        let grew = |a: &Footprint, b: &Footprint| {
            (
                b.rate_limits - a.rate_limits,
                b.audit_rows - a.audit_rows,
                b.audit_bytes - a.audit_bytes,
                b.usage_records - a.usage_records,
                b.rows - a.rows,
                b.db_bytes - a.db_bytes,
                logged(a.log_end, b.log_end),
                b.metrics_bytes.saturating_sub(a.metrics_bytes),
            )
        };
        let (rl, ar, ab, ur, rows, db, log, metrics) = grew(&start, &end);
        let (_, ar2, ab2, ur2, _, db2, log2, _) = grew(&mid, &end);
        writeln!(
            self.report,
            "{:<46} {:>5} {:>4} {:>5} {:>7} {:>5} {:>5} {:>8} {:>8} {:>7} {:>6}  {:?}",
            name,
            requests,
            rl,
            ar,
            ab,
            ur,
            rows,
            db,
            log,
            metrics,
            elapsed.as_millis(),
            statuses
        )
        .unwrap();
        eprint!(
            "{}",
            self.report
                .lines()
                .last()
                .map(|l| format!("{l}\n"))
                .unwrap_or_default()
        );

        // The log: bounded, and every outside string in it escaped.
        let logs = support::captured_logs();
        let new_logs = &logs[logs_before.min(logs.len())..];
        assert!(
            !new_logs.contains(['\u{1b}', '\r', '\0', '\u{202e}', '\u{2066}', '\u{200b}']),
            "{name}: raw control characters reached the log"
        );
        for line in new_logs.lines() {
            assert!(
                !line.starts_with("2026-12-01T00:00:00.000000Z"),
                "{name}: a forged log line: {line}"
            );
        }
        let n = i64::try_from(requests).unwrap();
        let budget = i64::try_from(before_limit).unwrap();
        assert_eq!(ur, 0, "{name}: anonymous requests are not accounted");
        assert!(
            ab <= AUDIT_BYTES_PER_REQUEST * budget + AUDIT_BYTES_PER_REQUEST,
            "{name}: {requests} requests added {ab} bytes of audit trail ({ar} rows)"
        );
        assert!(
            rl <= budget + 1,
            "{name}: {requests} requests added {rl} rate-limit counters"
        );
        assert!(
            log <= LOG_BYTES_PER_REQUEST * requests,
            "{name}: {requests} requests logged {log} bytes, such as {:?}",
            new_logs.lines().take(3).collect::<Vec<_>>()
        );
        assert!(
            db <= DB_BYTES_PER_REQUEST * n + DB_SLACK,
            "{name}: {requests} requests grew the database by {db} bytes"
        );
        assert!(
            rows <= 2 * budget + 2,
            "{name}: {requests} requests added {rows} rows"
        );
        assert!(
            metrics <= METRICS_BYTES_PER_FLOOD,
            "{name}: {requests} requests grew the metrics by {metrics} bytes"
        );
        if after_limit > 0 {
            // Past the limit: the refusal is recorded once, and nothing
            // grows with the requests.
            assert!(
                ar2 <= 1,
                "{name}: {ar2} audit rows past the limit: {}",
                audit_actions(self, mid_audit_id).await
            );
            assert!(
                ab2 <= AUDIT_BYTES_PER_REQUEST,
                "{name}: {ab2} audit bytes past the limit"
            );
            assert_eq!(ur2, 0);
            assert!(
                log2 <= LOG_BYTES_PER_REQUEST,
                "{name}: {after_limit} requests past the limit logged {log2} bytes"
            );
            assert!(
                db2 <= DB_SLACK,
                "{name}: {after_limit} requests past the limit grew the database by {db2} bytes"
            );
        }
    }
}

/// Bytes of the captured log between two offsets, in the lines a server
/// writes at its default level (`info`: docs/server.md); debug lines (the
/// PostgreSQL driver's, this test's own queries among them) are left out.
fn logged(from: usize, to: usize) -> usize {
    let logs = support::captured_logs();
    let to = to.min(logs.len());
    let from = from.min(to);
    logs.as_bytes()[from..to]
        .split(|&b| b == b'\n')
        .filter(|line| {
            let line = String::from_utf8_lossy(line);
            let level = line.split_whitespace().nth(1).unwrap_or("");
            matches!(level, "INFO" | "WARN" | "ERROR")
        })
        .map(|line| line.len() + 1)
        .sum()
}

/// The audit rows after `id`, by action, for failure messages.
async fn audit_actions(f: &Flooded, after: i64) -> String {
    let mut out = String::new();
    for action in [
        "login_failed",
        "login_rate_limited",
        "enrollment_failed",
        "password_change_failed",
        "escrow_release_refused",
    ] {
        let n = f
            .number(&format!(
                "SELECT count(*)::BIGINT FROM audit_events WHERE id > {after} AND action = '{action}'"
            ))
            .await;
        if n > 0 {
            write!(out, "{action}: {n}; ").unwrap();
        }
    }
    out
}

/// Every table of the schema (both backends have the same ones).
const TABLES: &[&str] = &[
    "organizations",
    "users",
    "memberships",
    "setup_tokens",
    "sessions",
    "rate_limits",
    "audit_events",
    "enrollment_codes",
    "devices",
    "usage_records",
    "master_key_check",
    "org_signing_keys",
    "policies",
    "escrow_keys",
    "wipe_orders",
    "data_batches",
    "readings",
    "device_release_tokens",
    "operators",
];

impl Flooded {
    /// A server on `url`, set up (the organization Acme, its owner).
    async fn start(url: &str, sqlite: bool) -> Flooded {
        let server = Running::behind_proxy(url, LIMITS).await;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let store = coffer_server::Store::open(url).await.unwrap();
        support::set_up(&server, &http).await;
        let mut report = String::new();
        writeln!(
            report,
            "{:<46} {:>5} {:>4} {:>5} {:>7} {:>5} {:>5} {:>8} {:>8} {:>7} {:>6}  statuses",
            if sqlite {
                "SQLite: flood"
            } else {
                "PostgreSQL: flood"
            },
            "reqs",
            "+rl",
            "+aud",
            "+audB",
            "+use",
            "+rows",
            "+dbB",
            "+logB",
            "+metB",
            "ms"
        )
        .unwrap();
        Flooded {
            server,
            http,
            store,
            sqlite,
            report,
            next_client: 0,
        }
    }

    /// The report, once the server has stopped.
    async fn finish(mut self) -> String {
        let report = std::mem::take(&mut self.report);
        self.server.stop().await;
        report
    }
}

async fn flood_everything(url: &str, sqlite: bool) -> String {
    let mut f = Flooded::start(url, sqlite).await;
    let base = f.server.base.clone();
    let url = move |path: &str| format!("{base}{path}");
    let limit = Some(usize::try_from(LIMITS.per_address).unwrap());

    // Setup, once the server is set up: hostile names (refused before
    // anything), and valid names with hostile tokens and passwords.
    let u = url.clone();
    // Setup is counted per address before anything else.
    f.flood("POST /v1/setup", limit, move |http, i, from| {
        let (organization, owner) = if i % 25 == 0 {
            (format!("Org {i}"), format!("owner{i}"))
        } else {
            (hostile(i), hostile(i + 1))
        };
        http.post(u("/v1/setup"))
            .header("x-forwarded-for", from)
            .json(&fit(json!({
                "setup_token": hostile(i + 2),
                "organization": organization,
                "owner": owner,
                "password": hostile(i + 3),
            })))
    })
    .await;

    // Login: hostile names (finding 1: 60,000 characters each), then
    // names that pass the naming rule, each one new.
    let u = url.clone();
    f.flood(
        "POST /v1/login hostile names",
        limit,
        move |http, i, from| {
            http.post(u("/v1/login"))
                .header("x-forwarded-for", from)
                .json(&fit(
                    json!({"user": hostile(i), "password": hostile_cut(i + 1, 1_000)}),
                ))
        },
    )
    .await;
    let u = url.clone();
    f.flood(
        "POST /v1/login valid distinct names",
        limit,
        move |http, i, from| {
            http.post(u("/v1/login"))
                .header("x-forwarded-for", from)
                .json(
                    &json!({"user": format!("user{i:05}{}", "n".repeat(50)), "password": "wrong"}),
                )
        },
    )
    .await;
    let u = url.clone();
    f.flood(
        "POST /v1/login alice, wrong passwords",
        limit,
        move |http, i, from| {
            http.post(u("/v1/login"))
                .header("x-forwarded-for", from)
                .json(&fit(json!({"user": "alice", "password": hostile(i)})))
        },
    )
    .await;
    // Not JSON, or not a login: refused before any counting.
    let u = url.clone();
    f.flood(
        "POST /v1/login malformed bodies",
        None,
        move |http, i, from| {
            let body = match i % 3 {
                0 => hostile(i).into_bytes(),
                1 => format!(
                    "{{\"user\": \"a\", \"{}\": 1}}",
                    hostile(i).replace(['"', '\\'], "")
                )
                .into_bytes(),
                _ => format!("{{\"user\": {}}}", "[".repeat(5_000)).into_bytes(),
            };
            http.post(u("/v1/login"))
                .header("x-forwarded-for", from)
                .header("content-type", "application/json")
                .body(body)
        },
    )
    .await;

    // Enrollment: hostile codes and names; valid names with wrong codes.
    let u = url.clone();
    f.flood("POST /v1/enroll", limit, move |http, i, from| {
        let name = if i % 2 == 0 {
            hostile(i)
        } else {
            format!("sensor{i:05}{}", "s".repeat(50))
        };
        http.post(u("/v1/enroll"))
            .header("x-forwarded-for", from)
            .json(&fit(
                json!({"code": hostile_cut(i + 1, 1_000), "name": name}),
            ))
    })
    .await;

    // The device endpoints, with bogus tokens (and, for escrow release,
    // a bogus user session) and hostile bodies.
    for (method, path) in [
        (Method::GET, "/v1/device"),
        (Method::POST, "/v1/device/token"),
        (Method::GET, "/v1/device/policy"),
        (Method::PUT, "/v1/device/escrow"),
        (Method::POST, "/v1/device/escrow/release"),
        (Method::POST, "/v1/device/check-in"),
        (Method::POST, "/v1/device/wipes/1/ack"),
        (Method::POST, "/v1/device/data"),
    ] {
        let u = url.clone();
        f.flood(&format!("{method} {path} bogus tokens"), None, move |http, i, from| {
            let body = match path {
                "/v1/device/escrow" => json!({"escrow_key": hostile(i)}),
                "/v1/device/data" => json!({"batch_id": hostile_cut(i, 20_000), "readings": [{"at": 1, "name": hostile_cut(i + 1, 10_000), "value": hostile_cut(i + 2, 10_000)}]}),
                _ => json!({"x": hostile(i)}),
            };
            http.request(method.clone(), u(path))
                .header("x-forwarded-for", from)
                .header("x-auth-token", hostile_header(i))
                .header("x-user-token", hostile_header(i + 1))
                .json(&body)
        })
        .await;
    }

    // Every session endpoint of the OpenAPI document, with bogus tokens:
    // fewer requests each (they share one code path), all of them.
    let requests_each = 4;
    let session_endpoints: Vec<(Method, String)> = coffer_server::openapi::ENDPOINTS
        .iter()
        .filter(|(_, _, _, caller)| caller.contains("session") && !caller.contains("device"))
        .map(|(method, template, _, _)| {
            (
                Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                template
                    .replace("{org_id}", "1")
                    .replace("{user_id}", "1")
                    .replace("{device_id}", "1")
                    .replace("{order_id}", "1"),
            )
        })
        .collect();
    assert!(session_endpoints.len() >= 20, "{}", session_endpoints.len());
    let u = url.clone();
    let from = f.client();
    f.flood_from(
        "every session endpoint, bogus tokens",
        FLOOD,
        None,
        move |http, i| {
            let (method, path) = &session_endpoints[(i / requests_each) % session_endpoints.len()];
            http.request(method.clone(), u(path))
                .header("x-forwarded-for", from.as_str())
                .header("x-auth-token", hostile_header(i))
                .json(&fit(
                    json!({"user": hostile(i), "password": PW, "role": hostile(i + 1)}),
                ))
        },
    )
    .await;

    // The probes, the document and the metrics, with hostile query
    // strings and forwarding headers.
    for path in ["/healthz", "/readyz", "/openapi.json", "/metrics"] {
        let u = url.clone();
        f.flood(
            &format!("GET {path} hostile queries"),
            None,
            move |http, i, from| {
                let forwarded = if i % 2 == 0 {
                    from.as_bytes().to_vec()
                } else {
                    hostile_header(i)
                };
                http.get(format!(
                    "{}?{}={}",
                    u(path),
                    hostile_segment(i),
                    hostile_segment(i + 1)
                ))
                .header("x-forwarded-for", forwarded)
            },
        )
        .await;
    }

    // Unknown paths, each one new; and known paths with methods they do
    // not take, each one new.
    let u = url.clone();
    f.flood("unknown paths", None, move |http, i, from| {
        http.post(u(&format!(
            "/v1/{}/{}",
            hostile_segment(i),
            hostile_segment(i + 1)
        )))
        .header("x-forwarded-for", from)
        .body(hostile(i))
    })
    .await;

    // Credentials in query strings, in the API's names and spellings.
    let u = url.clone();
    f.flood(
        "credentials in query strings",
        None,
        move |http, i, from| {
            let names = coffer_protocol::CREDENTIAL_NAMES;
            let name = names[i % names.len()];
            let spelled = match i % 4 {
                0 => name.to_owned(),
                1 => name.to_uppercase().replace('_', "-"),
                2 => name.bytes().map(|b| format!("%{b:02X}")).collect(),
                _ => format!("{name}%00"),
            };
            let value: String = hostile_segment(i).chars().take(30_000).collect();
            http.get(u(&format!("/v1/me?from=1&{spelled}={value}")))
                .header("x-forwarded-for", from)
        },
    )
    .await;

    // Many clients, each with one hostile login: no limit is reached, so
    // each leaves its trace — bounded per request. (Fewer: each refusal
    // checks a password hash.)
    let u = url.clone();
    let first = f.next_client;
    let clients = 60;
    f.next_client += u32::try_from(clients).unwrap();
    f.flood_from(
        "POST /v1/login, a new client each",
        clients,
        Some(clients),
        move |http, i| {
            let n = first + 1 + u32::try_from(i).unwrap();
            http.post(u("/v1/login"))
                .header(
                    "x-forwarded-for",
                    format!("198.19.{}.{}", n / 250, n % 250 + 1),
                )
                .json(&fit(
                    json!({"user": hostile(i), "password": hostile_cut(i + 1, 1_000)}),
                ))
        },
    )
    .await;

    f.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flooding_leaves_a_bounded_trace_on_sqlite() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("server.db").display());
    let started = std::time::Instant::now();
    let report = flood_everything(&url, true).await;
    println!(
        "{report}SQLite floods: {} ms",
        started.elapsed().as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flooding_leaves_a_bounded_trace_on_postgres() {
    // Started before waiting for the other flood: initdb takes a while.
    let pg = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let url = pg.database("flood").await;
    let _serial = SERIAL.lock().await;
    let started = std::time::Instant::now();
    let report = flood_everything(&url, false).await;
    println!(
        "{report}PostgreSQL floods: {} ms",
        started.elapsed().as_millis()
    );
}

/// Methods HTTP does not define, each one new, on a known path (405) and
/// an unknown one (404): each one used to add a series to the metrics, two
/// lines of 1,000 bytes and more, kept for the life of the process and
/// sent on every scrape. Now a method outside HTTP's is counted as one
/// `other` (src/metrics.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_methods_leave_a_bounded_trace() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("server.db").display());
    let mut f = Flooded::start(&url, true).await;
    let base = f.server.base.clone();
    f.flood("unknown methods", None, move |http, i, from| {
        let method =
            Method::from_bytes(format!("FLOOD{i:05}{}", "X".repeat(1_000)).as_bytes()).unwrap();
        let path = if i % 2 == 0 { "/v1/login" } else { "/nowhere" };
        http.request(method, format!("{base}{path}"))
            .header("x-forwarded-for", from)
    })
    .await;
    println!("{}", f.finish().await);
}
