//! Record sync, the server's side: push outcomes, idempotent batches,
//! conflicts and their resolution, pull paging and cursors, provisional
//! authors, sealing at rest, compaction — on SQLite and on PostgreSQL; and
//! on PostgreSQL, concurrent pushes through two server processes.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::postgres::Postgres;
use support::{enrollment, error_code, get, login, post, set_up, Running};

const MARKER: &str = "MARKER-5b1d-only-in-a-body";

/// A revision of the origin filled with `origin`.
fn rev(origin: u8, seq: u64) -> String {
    format!("{}.{seq}", hex_byte(origin).repeat(16))
}

fn hex_byte(b: u8) -> String {
    format!("{b:02x}")
}

fn op(collection: &str, id: &str, revision: &str, base: Option<&str>, body: Value) -> Value {
    json!({
        "collection": collection, "id": id, "revision": revision, "base": base,
        "body": body, "author": "alice",
    })
}

fn delete(collection: &str, id: &str, revision: &str, base: Option<&str>) -> Value {
    json!({
        "collection": collection, "id": id, "revision": revision, "base": base,
        "deleted": true, "author": "alice",
    })
}

struct Org {
    server: Running,
    http: reqwest::Client,
    org: i64,
    admin: String,
    admin_id: i64,
}

struct Device {
    id: i64,
    token: String,
}

impl Org {
    async fn new(url: &str) -> Org {
        let server = Running::start(url).await;
        let http = reqwest::Client::new();
        let org = set_up(&server, &http).await;
        let admin = login(&server, &http, "alice", "correct horse battery")
            .await
            .unwrap();
        let me: Value = get(&http, server.url("/v1/me"), &admin)
            .await
            .json()
            .await
            .unwrap();
        Org {
            admin_id: me["user_id"].as_i64().unwrap(),
            server,
            http,
            org,
            admin,
        }
    }

    async fn device(&self, name: &str) -> Device {
        let e = enrollment(&self.server, &self.http, self.org, &self.admin, name).await;
        let device = Device {
            id: e["device_id"].as_i64().unwrap(),
            token: e["device_token"].as_str().unwrap().to_owned(),
        };
        // Its local author "alice" is the admin alice.
        let r = self.bind(device.id, "alice").await;
        assert_eq!(r.status(), StatusCode::OK);
        device
    }

    async fn bind(&self, device_id: i64, author: &str) -> reqwest::Response {
        post(
            &self.http,
            self.url("/sync/authors/bind"),
            &self.admin,
            json!({"device_id": device_id, "author": author, "user_id": self.admin_id}),
        )
        .await
    }

    fn url(&self, rest: &str) -> String {
        self.server.url(&format!("/v1/orgs/{}{rest}", self.org))
    }

    async fn publish(&self, version: i64, apps: &[&str]) {
        let r = post(
            &self.http,
            self.url("/policies"),
            &self.admin,
            json!({"version": version, "rules": {"sync": apps}}),
        )
        .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }

    async fn push(
        &self,
        device: &Device,
        app: &str,
        batch: &str,
        ops: Vec<Value>,
    ) -> (StatusCode, String) {
        push_to(&self.server, &self.http, device, app, batch, ops).await
    }

    async fn pull(
        &self,
        device: &Device,
        app: &str,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> reqwest::Response {
        pull_from(&self.server, &self.http, device, app, after, limit).await
    }

    async fn pull_ok(
        &self,
        device: &Device,
        app: &str,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Value {
        let r = self.pull(device, app, after, limit).await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }
}

async fn push_to(
    server: &Running,
    http: &reqwest::Client,
    device: &Device,
    app: &str,
    batch: &str,
    ops: Vec<Value>,
) -> (StatusCode, String) {
    let r = post(
        http,
        server.url(&format!("/v1/device/sync/{app}/push")),
        &device.token,
        json!({"batch_id": batch, "ops": ops}),
    )
    .await;
    (r.status(), r.text().await.unwrap())
}

async fn pull_from(
    server: &Running,
    http: &reqwest::Client,
    device: &Device,
    app: &str,
    after: Option<&str>,
    limit: Option<u32>,
) -> reqwest::Response {
    let mut url = server.url(&format!("/v1/device/sync/{app}/changes"));
    let mut sep = '?';
    if let Some(after) = after {
        url.push_str(&format!("{sep}after={after}"));
        sep = '&';
    }
    if let Some(limit) = limit {
        url.push_str(&format!("{sep}limit={limit}"));
    }
    get(http, url, &device.token).await
}

fn results(text: &str) -> Vec<Value> {
    serde_json::from_str::<Value>(text).unwrap()["results"]
        .as_array()
        .unwrap()
        .clone()
}

/// Pulls every page after `after`; returns the records and the last cursor.
async fn pull_all(
    o: &Org,
    device: &Device,
    app: &str,
    after: Option<&str>,
) -> (Vec<Value>, String) {
    let mut cursor = after.map(str::to_owned);
    let mut records = Vec::new();
    loop {
        let page = o.pull_ok(device, app, cursor.as_deref(), None).await;
        records.extend(page["records"].as_array().unwrap().iter().cloned());
        cursor = Some(page["cursor"].as_str().unwrap().to_owned());
        if page["complete"] == true {
            return (records, cursor.unwrap());
        }
    }
}

fn seq_of(cursor: &str) -> u64 {
    coffer_protocol::sync::decode_cursor(cursor).unwrap().0
}

async fn suite(url: &str, backend: &str, sqlite_file: Option<std::path::PathBuf>) {
    let o = Org::new(url).await;
    assert_eq!(o.server.backend, backend);
    let d1 = o.device("tablet-1").await;
    let d2 = o.device("tablet-2").await;
    let a1 = |seq| rev(0xa1, seq);
    let b2 = |seq| rev(0xb2, seq);

    // No policy, then a policy that does not list the app: 403.
    let (status, text) = o
        .push(
            &d1,
            "cases",
            "b-0",
            vec![op("c", "1", &a1(1), None, json!(1))],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    assert!(text.contains("app_not_synced"));
    o.publish(1, &["notes"]).await;
    let r = o.pull(&d1, "cases", None, None).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(r).await, "app_not_synced");
    o.publish(2, &["cases", "notes"]).await;
    let (status, text) = o.push(&d1, &"x".repeat(65), "b-0", vec![]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("invalid_name"));

    // A batch refused as a whole, and a body that is not a batch.
    let (status, text) = o.push(&d1, "cases", "b-0", vec![]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(text.contains("invalid_body"));
    let r = post(
        &o.http,
        o.server.url("/v1/device/sync/cases/push"),
        &d1.token,
        json!({"batch_id": "b", "ops": [], "extra": "field-SECRET"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(!r.text().await.unwrap().contains("field-SECRET"));

    // Each operation gets its own result, in order.
    let batch1 = vec![
        op(
            "cases",
            "c-1",
            &a1(1),
            None,
            json!({"name": "Amina", "note": MARKER}),
        ),
        op("cases", "c-2", &a1(2), None, json!({"name": "Bilal"})),
        op("", "c-3", &a1(3), None, json!({"name": "bad"})),
        op("cases", "c-1", &a1(4), None, json!({"name": "twice"})),
        json!({"collection": "cases", "id": "c-4", "revision": a1(5), "deleted": true,
               "body": {"x": 1}, "author": "alice"}),
        op("cases", "c-5", &rev(0, 9), None, json!({})),
    ];
    let (status, first) = o.push(&d1, "cases", "b-1", batch1.clone()).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let res = results(&first);
    assert_eq!(res.len(), 6);
    assert_eq!(
        res[0],
        json!({"revision": a1(1), "outcome": "applied", "seq": 1})
    );
    assert_eq!(
        res[1],
        json!({"revision": a1(2), "outcome": "applied", "seq": 2})
    );
    assert_eq!(res[2]["outcome"], "rejected");
    assert_eq!(res[2]["code"], "invalid_name");
    assert_eq!(res[3]["code"], "duplicate_record");
    assert_eq!(res[4]["code"], "invalid_body");
    assert_eq!(res[5]["code"], "reserved_origin");
    // A retry gets the same answer, byte for byte; the same id with other
    // content is refused.
    let (status, again) = o.push(&d1, "cases", "b-1", batch1.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, first);
    let (status, text) = o
        .push(
            &d1,
            "cases",
            "b-1",
            vec![op("cases", "c-1", &a1(1), None, json!({"name": "X"}))],
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(text.contains("batch_conflict"));

    // A revision stored before: a duplicate with the same content, reused
    // with other content.
    let (_, text) = o
        .push(
            &d1,
            "cases",
            "b-2",
            vec![
                op(
                    "cases",
                    "c-1",
                    &a1(1),
                    None,
                    json!({"name": "Amina", "note": MARKER}),
                ),
                op("cases", "c-9", &a1(2), None, json!({"name": "other"})),
            ],
        )
        .await;
    let res = results(&text);
    assert_eq!(res[0], json!({"revision": a1(1), "outcome": "duplicate"}));
    assert_eq!(res[1]["code"], "revision_reused");

    // d2 pulls everything.
    let page = o.pull_ok(&d2, "cases", None, None).await;
    assert_eq!(page["complete"], true);
    assert_eq!(page["cursor"], "v1.2.0");
    let got: Vec<_> = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].clone(), r["seq"].clone()))
        .collect();
    assert_eq!(
        got,
        vec![(json!("c-1"), json!(1)), (json!("c-2"), json!(2))]
    );
    assert_eq!(page["records"][0]["body"]["note"], MARKER);
    let d2_cursor = "v1.2".to_owned();

    // Both edit c-1 from a1.1, and one deletes c-2 while the other edits
    // it: the second of each is a conflict.
    let (_, text) = o
        .push(
            &d1,
            "cases",
            "b-3",
            vec![
                op(
                    "cases",
                    "c-1",
                    &a1(6),
                    Some(&a1(1)),
                    json!({"name": "Amina A."}),
                ),
                delete("cases", "c-2", &a1(7), Some(&a1(2))),
            ],
        )
        .await;
    let res = results(&text);
    assert_eq!(
        res[0],
        json!({"revision": a1(6), "outcome": "applied", "seq": 3})
    );
    assert_eq!(
        res[1],
        json!({"revision": a1(7), "outcome": "applied", "seq": 4})
    );
    let (_, text) = o
        .push(
            &d2,
            "cases",
            "b-4",
            vec![
                op(
                    "cases",
                    "c-1",
                    &b2(1),
                    Some(&a1(1)),
                    json!({"name": "Amina B."}),
                ),
                op(
                    "cases",
                    "c-2",
                    &b2(2),
                    Some(&a1(2)),
                    json!({"name": "Bilal B."}),
                ),
            ],
        )
        .await;
    let res = results(&text);
    assert_eq!(
        res[0],
        json!({"revision": b2(1), "outcome": "conflict", "seq": 5, "head": a1(6)})
    );
    assert_eq!(
        res[1],
        json!({"revision": b2(2), "outcome": "conflict", "seq": 6, "head": a1(7)})
    );

    // A device that never read its answer and edited again does not
    // conflict with itself; both sides deleting is no conflict.
    let (_, text) = o
        .push(
            &d1,
            "cases",
            "b-5",
            vec![op("cases", "c-5", &a1(8), None, json!({"v": 1}))],
        )
        .await;
    assert_eq!(results(&text)[0]["seq"], 7);
    let (_, text) = o
        .push(
            &d1,
            "cases",
            "b-6",
            vec![
                op("cases", "c-5", &a1(9), None, json!({"v": 2})),
                delete("cases", "c-6", &a1(10), None),
            ],
        )
        .await;
    assert_eq!(
        results(&text)[0],
        json!({"revision": a1(9), "outcome": "applied", "seq": 8})
    );
    let (_, text) = o
        .push(
            &d2,
            "cases",
            "b-7",
            vec![delete("cases", "c-6", &b2(3), None)],
        )
        .await;
    assert_eq!(
        results(&text)[0],
        json!({"revision": b2(3), "outcome": "applied", "seq": 10})
    );

    // The leaves travel with the record.
    let (records, d2_cursor) = pull_all(&o, &d2, "cases", Some(&d2_cursor)).await;
    let c1 = records.iter().find(|r| r["id"] == "c-1").unwrap();
    assert_eq!(c1["revision"], a1(6));
    assert_eq!(c1["seq"], 5);
    assert_eq!(c1["conflicts"][0]["revision"], b2(1));
    assert_eq!(c1["conflicts"][0]["body"], json!({"name": "Amina B."}));
    let c2 = records.iter().find(|r| r["id"] == "c-2").unwrap();
    assert_eq!(c2["deleted"], true);
    assert_eq!(c2["conflicts"][0]["revision"], b2(2));
    // Each record once, at its latest sequence, in order.
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![5, 6, 8, 10]);
    assert_eq!(d2_cursor, "v1.10.0");

    // The admin sees the conflicts and resolves c-1 with d2's side.
    let list: Value = get(&o.http, o.url("/records?conflicts=true"), &o.admin)
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<_> = list["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!("c-1"), json!("c-2")]);
    let resolve = |id: &str, body: Value| {
        post(
            &o.http,
            o.url(&format!("/records/cases/cases/{id}/resolve")),
            &o.admin,
            body,
        )
    };
    let r = resolve("c-1", json!({"keep": b2(1), "delete": true})).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = resolve("nope", json!({"delete": true})).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = resolve("c-5", json!({"delete": true})).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(r).await, "not_in_conflict");
    // Resolving leaves other than the ones there now is refused.
    let r = resolve("c-1", json!({"keep": b2(1), "leaves": [rev(0xee, 1)]})).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(r).await, "conflicts_changed");
    let r = resolve("c-1", json!({"keep": b2(1)})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let resolved: Value = r.json().await.unwrap();
    assert_eq!(
        resolved,
        json!({"revision": rev(0, 11), "seq": 11, "resolved": [b2(1)]})
    );
    // Both sides converge.
    let (d1_records, _) = pull_all(&o, &d1, "cases", Some("v1.10")).await;
    let (d2_records, d2_cursor) = pull_all(&o, &d2, "cases", Some(&d2_cursor)).await;
    assert_eq!(d1_records, d2_records);
    assert_eq!(d1_records[0]["revision"], rev(0, 11));
    assert_eq!(d1_records[0]["body"], json!({"name": "Amina B."}));
    assert_eq!(d1_records[0]["conflicts"], json!([]));
    // The delete-against-edit conflict resolved by delete.
    let r = resolve("c-2", json!({"delete": true})).await;
    assert_eq!(r.status(), StatusCode::OK);

    // Pull paging on an empty app, an exact page, a page and one more.
    let page = o.pull_ok(&d1, "notes", None, None).await;
    assert_eq!(
        page,
        json!({"records": [], "cursor": "v1.0.0", "complete": true})
    );
    let ops: Vec<Value> = (0..5)
        .map(|i| op("n", &format!("n-{i}"), &a1(100 + i), None, json!({"i": i})))
        .collect();
    let (status, _) = o.push(&d1, "notes", "n-1", ops).await;
    assert_eq!(status, StatusCode::OK);
    let page = o.pull_ok(&d1, "notes", None, Some(5)).await;
    assert_eq!(page["records"].as_array().unwrap().len(), 5);
    assert_eq!(page["complete"], true);
    let page = o.pull_ok(&d1, "notes", None, Some(4)).await;
    assert_eq!(page["records"].as_array().unwrap().len(), 4);
    assert_eq!(page["complete"], false);
    assert_eq!(page["cursor"], "v1.4.0");
    let page = o.pull_ok(&d1, "notes", Some("v1.4"), Some(4)).await;
    assert_eq!(page["records"].as_array().unwrap().len(), 1);
    assert_eq!(page["complete"], true);
    let page = o.pull_ok(&d1, "notes", Some("v1.5"), None).await;
    assert_eq!(
        page,
        json!({"records": [], "cursor": "v1.5.0", "complete": true})
    );
    // An update moves a record to its new sequence: it appears once.
    let (_, text) = o
        .push(
            &d1,
            "notes",
            "n-2",
            vec![op(
                "n",
                "n-0",
                &a1(200),
                Some(&a1(100)),
                json!({"i": "new"}),
            )],
        )
        .await;
    assert_eq!(results(&text)[0]["seq"], 6);
    let (all, _) = pull_all(&o, &d1, "notes", None).await;
    let ids: Vec<_> = all
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["n-1", "n-2", "n-3", "n-4", "n-0"]);
    // A page bounded in bytes: two bodies of 1.1 MB pass 2 MiB.
    let big = "y".repeat(1_100_000);
    let ops: Vec<Value> = (0..3)
        .map(|i| {
            op(
                "big",
                &format!("g-{i}"),
                &a1(300 + i),
                None,
                json!({"b": big}),
            )
        })
        .collect();
    let (status, text) = o.push(&d1, "notes", "n-3", ops).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let page = o.pull_ok(&d1, "notes", Some("v1.6"), None).await;
    assert_eq!(page["records"].as_array().unwrap().len(), 2);
    assert_eq!(page["complete"], false);
    let cursor = page["cursor"].as_str().unwrap().to_owned();
    assert_eq!(cursor, "v1.8.0");
    let page = o.pull_ok(&d1, "notes", Some(&cursor), None).await;
    assert_eq!(page["records"].as_array().unwrap().len(), 1);
    assert_eq!(page["complete"], true);
    // Cursors the server did not make, and limits out of range.
    for bad in ["v2.1", "abc", "v1.-1"] {
        let r = o.pull(&d1, "notes", Some(bad), None).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(error_code(r).await, "invalid_query");
    }
    for limit in [0, 1001] {
        let r = o.pull(&d1, "notes", None, Some(limit)).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }
    // A cursor above the counter (a restored database): the feed is
    // behind it, said apart from an expiry (the device pushes its own
    // records again).
    let r = o.pull(&d1, "notes", Some("v1.999"), None).await;
    assert_eq!(r.status(), StatusCode::GONE);
    assert_eq!(error_code(r).await, "feed_behind");

    // A local author the server does not know: provisional.
    let ghost = |id: &str, r: &str, body: Value| json!({"collection": "cases", "id": id, "revision": r, "body": body, "author": "ghost"});
    let (_, text) = o
        .push(
            &d1,
            "cases",
            "b-8",
            vec![
                ghost("c-20", &a1(20), json!({"name": "Chidi"})),
                ghost("c-21", &a1(21), json!({"v": 2})),
            ],
        )
        .await;
    assert_eq!(results(&text)[0]["outcome"], "applied");
    let page = o.pull_ok(&d2, "cases", Some(&d2_cursor), None).await;
    let ids: Vec<_> = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    assert!(
        !ids.contains(&json!("c-20")) && !ids.contains(&json!("c-21")),
        "{ids:?}"
    );
    let list: Value = get(&o.http, o.url("/records?provisional=true"), &o.admin)
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<_> = list["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!("c-20"), json!("c-21")]);
    let authors: Value = get(&o.http, o.url("/sync/authors"), &o.admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        authors,
        json!({"authors": [{"device_id": d1.id, "author": "ghost", "records": 2}]})
    );
    let r = o.bind(d1.id, "ghost").await;
    assert_eq!(r.status(), StatusCode::OK);
    let bound: Value = r.json().await.unwrap();
    // c-21's body is c-5's: a likely duplicate, reported, not merged.
    assert_eq!(
        bound,
        json!({"published": 2, "duplicates": [{"collection": "cases", "id": "c-21", "provisional": false}]})
    );
    let (records, _) = pull_all(&o, &d2, "cases", Some(&d2_cursor)).await;
    let ids: Vec<_> = records.iter().map(|r| r["id"].clone()).collect();
    assert!(
        ids.contains(&json!("c-20")) && ids.contains(&json!("c-21")),
        "{ids:?}"
    );
    let detail: Value = get(&o.http, o.url("/records/cases/cases/c-21"), &o.admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(detail["body"], json!({"v": 2}));
    assert_eq!(detail["provisional"], false);
    assert_eq!(
        detail["duplicates"],
        json!([{"collection": "cases", "id": "c-5", "provisional": false}])
    );

    // Exports: CSV and JSON, audited once each.
    let csv = get(
        &o.http,
        o.url("/records/export?app=cases&format=csv"),
        &o.admin,
    )
    .await
    .text()
    .await
    .unwrap();
    assert!(csv.starts_with("app,collection,id,seq,revision,deleted,author,device_id,provisional,conflicts,updated_at,body\n"));
    assert_eq!(csv.lines().count(), 1 + 6);
    let export: Value = get(&o.http, o.url("/records/export?app=cases"), &o.admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(export["records"].as_array().unwrap().len(), 6);
    let db = coffer_server::Store::open(url).await.unwrap();
    let audited = |action: &'static str| {
        let db = db.clone();
        async move {
            db.number_for_tests(&format!(
                "SELECT count(*) FROM audit_events WHERE action = '{action}'"
            ))
            .await
            .unwrap()
        }
    };
    assert_eq!(audited("records_exported").await, 2);
    assert_eq!(audited("record_read").await, 1);
    assert_eq!(audited("record_resolved").await, 2);
    assert_eq!(audited("author_bound").await, 3);

    // The change log has no gap.
    let sql = |what: &str| format!("SELECT {what} FROM sync_changes WHERE app = 'cases'");
    let max = db.number_for_tests(&sql("max(seq)")).await.unwrap();
    assert_eq!(
        db.number_for_tests(&sql("count(DISTINCT seq)"))
            .await
            .unwrap(),
        max
    );
    assert_eq!(db.number_for_tests(&sql("min(seq)")).await.unwrap(), 1);

    // The marker is in no row and nowhere in the database's files.
    let text_columns = [
        ("sync_records", "collection || record_id || revision || coalesce(base, '') || coalesce(body_mac, '') || author"),
        ("sync_leaves", "collection || record_id || revision || coalesce(base, '') || author"),
        ("sync_batches", "batch_id || digest || coalesce(answer, '')"),
        ("sync_changes", "collection || record_id || revision"),
        ("sync_revisions", "revision || digest"),
        ("org_data_keys", "sealed_key"),
    ];
    // The needle is spelled in hex, so that the query (which the driver
    // logs) does not hold it.
    let hex: String = MARKER.bytes().map(hex_byte).collect();
    let needle = if sqlite_file.is_some() {
        format!("CAST(X'{hex}' AS TEXT)")
    } else {
        format!("convert_from('\\x{hex}'::bytea, 'UTF8')")
    };
    let find = if sqlite_file.is_some() {
        "instr"
    } else {
        "strpos"
    };
    for (table, columns) in text_columns {
        let n = db
            .number_for_tests(&format!(
                "SELECT count(*) FROM {table} WHERE {find}({columns}, {needle}) > 0"
            ))
            .await
            .unwrap();
        assert_eq!(n, 0, "{table}");
    }
    if let Some(file) = sqlite_file {
        for path in [file.clone(), file.with_extension("db-wal")] {
            if let Ok(bytes) = std::fs::read(&path) {
                assert!(
                    !bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
                    "{}",
                    path.display()
                );
            }
        }
    } else {
        let n = db
            .number_for_tests(&format!(
                "SELECT count(*) FROM sync_records WHERE position('\\x{hex}'::bytea IN sealed) > 0"
            ))
            .await
            .unwrap();
        assert_eq!(n, 0);
    }
    support::assert_logs_free_of(&[MARKER]);

    // Compaction: a tombstone older than the retention goes, and a cursor
    // from before it expires.
    let (_, text) = o
        .push(
            &d1,
            "cases",
            "b-9",
            vec![op("cases", "c-30", &a1(30), None, json!(1))],
        )
        .await;
    let before = results(&text)[0]["seq"].as_u64().unwrap();
    let (_, text) = o
        .push(
            &d1,
            "cases",
            "b-10",
            vec![delete("cases", "c-30", &a1(31), Some(&a1(30)))],
        )
        .await;
    let gone = results(&text)[0]["seq"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let done = db.compact_sync(now, 180 * 86_400).await.unwrap();
    assert_eq!(done.tombstones, 0, "nothing is old yet");
    let done = db
        .compact_sync(now + 400 * 86_400, 180 * 86_400)
        .await
        .unwrap();
    assert!(
        done.tombstones >= 1 && done.changes > 0 && done.batches > 0,
        "{done:?}"
    );
    let r = o
        .pull(&d1, "cases", Some(&format!("v1.{before}")), None)
        .await;
    assert_eq!(r.status(), StatusCode::GONE);
    assert_eq!(error_code(r).await, "cursor_expired");
    let page = o
        .pull_ok(&d1, "cases", Some(&format!("v1.{gone}")), None)
        .await;
    assert_eq!(page["records"], json!([]));
    let (records, last) = pull_all(&o, &d1, "cases", None).await;
    assert!(records.iter().all(|r| r["id"] != "c-30"));
    assert!(seq_of(&last) >= gone);
    // A reader that starts after the compaction, one record a page, is
    // never told that its cursor expired, though its cursors stay below
    // the floor for most of the way: it missed nothing that was dropped.
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = o.pull_ok(&d1, "cases", cursor.as_deref(), Some(1)).await;
        cursor = Some(page["cursor"].as_str().unwrap().to_owned());
        pages += 1;
        if page["complete"] == true {
            break;
        }
    }
    assert!(pages > 2, "{pages}");
    assert!(
        coffer_protocol::sync::decode_cursor(&format!("v1.{}", gone - 1)).is_some()
            && seq_of(cursor.as_deref().unwrap()) >= gone
    );

    // A purge report: refused while the app still syncs to the device;
    // taken, and audited once a window, when the policy has dropped it.
    let report = |d: &Device, app: &str| {
        o.http
            .post(o.server.url(&format!("/v1/device/sync/{app}/purged")))
            .header(coffer_protocol::AUTH_HEADER, &d.token)
            .send()
    };
    let r = report(&d1, "notes").await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    o.publish(3, &["cases"]).await;
    for _ in 0..3 {
        let r = report(&d1, "notes").await.unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
    let audited = db
        .number_for_tests("SELECT count(*) FROM audit_events WHERE action = 'sync_purged'")
        .await
        .unwrap();
    assert_eq!(audited, 1);

    // A revoked device is refused.
    let r = post(
        &o.http,
        o.url(&format!("/devices/{}/revoke", d2.id)),
        &o.admin,
        json!({}),
    )
    .await;
    assert!(r.status().is_success());
    let r = o.pull(&d2, "cases", None, None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    o.server.stop().await;
}

#[tokio::test]
async fn sync_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("server.db");
    suite(
        &format!("sqlite://{}", file.display()),
        "sqlite",
        Some(file),
    )
    .await;
}

#[tokio::test]
async fn sync_on_postgres() {
    let pg = Postgres::start();
    let url = pg.database("sync").await;
    suite(&url, "postgres", None).await;
}

/// Two server processes on one PostgreSQL: the same batch eight times at
/// once is stored once; eight writers and a reader following the feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pushes_through_two_servers() {
    let pg = Postgres::start();
    let url = pg.database("sync_concurrent").await;
    let o = Org::new(&url).await;
    let other = Running::start(&url).await;
    o.publish(1, &["cases"]).await;
    let mut devices = Vec::new();
    for i in 0..8 {
        devices.push(std::sync::Arc::new(o.device(&format!("d-{i}")).await));
    }
    let servers = std::sync::Arc::new([o.server.url(""), other.url("")]);

    // The same batch, 8 times at once, 4 through each server.
    let batch: Vec<Value> = (0..50)
        .map(|i| {
            op(
                "cases",
                &format!("r-{i}"),
                &rev(0xee, i + 1),
                None,
                json!({"i": i}),
            )
        })
        .collect();
    let answers = support::join_all((0..8).map(|i| {
        let (servers, device, batch) = (servers.clone(), devices[0].clone(), batch.clone());
        async move {
            let r = reqwest::Client::new()
                .post(format!("{}/v1/device/sync/cases/push", servers[i % 2]))
                .header("x-auth-token", &device.token)
                .json(&json!({"batch_id": "same", "ops": batch}))
                .send()
                .await
                .unwrap();
            (r.status(), r.text().await.unwrap())
        }
    }))
    .await;
    for (status, text) in &answers {
        assert_eq!(*status, StatusCode::OK, "{text}");
        assert_eq!(text, &answers[0].1);
    }
    assert!(results(&answers[0].1)
        .iter()
        .all(|r| r["outcome"] == "applied"));
    let db = coffer_server::Store::open(&url).await.unwrap();
    assert_eq!(
        db.number_for_tests("SELECT count(*) FROM sync_records")
            .await
            .unwrap(),
        50
    );
    assert_eq!(
        db.number_for_tests("SELECT count(*) FROM sync_changes")
            .await
            .unwrap(),
        50
    );

    // 8 writers over 2 servers on 40 shared records, a reader following.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (servers, device, done) = (servers.clone(), devices[7].clone(), done.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut view: BTreeMap<String, String> = BTreeMap::new();
            let mut cursor: Option<String> = None;
            let mut turn = 0;
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                loop {
                    turn += 1;
                    let mut url = format!(
                        "{}/v1/device/sync/cases/changes?limit=37",
                        servers[turn % 2]
                    );
                    if let Some(c) = &cursor {
                        url.push_str(&format!("&after={c}"));
                    }
                    let page: Value = http
                        .get(url)
                        .header("x-auth-token", &device.token)
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    let next = page["cursor"].as_str().unwrap().to_owned();
                    if let Some(c) = &cursor {
                        assert!(seq_of(&next) >= seq_of(c), "the cursor went back");
                    }
                    for r in page["records"].as_array().unwrap() {
                        view.insert(
                            r["id"].as_str().unwrap().to_owned(),
                            r["revision"].as_str().unwrap().to_owned(),
                        );
                    }
                    cursor = Some(next);
                    if page["complete"] == true {
                        break;
                    }
                }
                if finished {
                    return view;
                }
            }
        })
    };
    // Each applied or conflicting operation takes one sequence (a conflict
    // past MAX_LEAVES is refused and takes none).
    let sequenced = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let writers = support::join_all((0..8u8).map(|w| {
        let (servers, device) = (servers.clone(), devices[usize::from(w)].clone());
        let sequenced = sequenced.clone();
        async move {
            let http = reqwest::Client::new();
            for b in 0..6u64 {
                let ops: Vec<Value> = (0..10u64)
                    .map(|i| {
                        let id = format!("s-{}", (i * 7 + b * 3 + u64::from(w)) % 40);
                        op(
                            "cases",
                            &id,
                            &rev(0x10 + w, b * 10 + i + 1),
                            None,
                            json!({"w": w, "b": b}),
                        )
                    })
                    .collect();
                let r = http
                    .post(format!(
                        "{}/v1/device/sync/cases/push",
                        servers[usize::from(w) % 2]
                    ))
                    .header("x-auth-token", &device.token)
                    .json(&json!({"batch_id": format!("w{w}-b{b}"), "ops": ops}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::OK);
                let answer: Value = r.json().await.unwrap();
                let took = answer["results"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|r| r["outcome"] == "applied" || r["outcome"] == "conflict")
                    .count();
                sequenced.fetch_add(took as i64, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }))
    .await;
    assert_eq!(writers.len(), 8);
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let view = reader.await.unwrap();
    // The reader's view is the table.
    let mut table = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = o.url("/records?app=cases&limit=1000");
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let list: Value = get(&o.http, url, &o.admin).await.json().await.unwrap();
        for r in list["records"].as_array().unwrap() {
            table.insert(
                r["id"].as_str().unwrap().to_owned(),
                r["revision"].as_str().unwrap().to_owned(),
            );
        }
        match list["next_after"].as_str() {
            Some(a) => after = Some(a.to_owned()),
            None => break,
        }
    }
    assert_eq!(table.len(), 90);
    assert_eq!(view, table);
    // Sequences are exactly 1..=max.
    let max = db
        .number_for_tests("SELECT max(seq) FROM sync_changes")
        .await
        .unwrap();
    assert_eq!(
        db.number_for_tests("SELECT count(DISTINCT seq) FROM sync_changes")
            .await
            .unwrap(),
        max
    );
    assert_eq!(
        db.number_for_tests("SELECT count(*) FROM sync_changes")
            .await
            .unwrap(),
        max
    );
    assert_eq!(
        max,
        50 + sequenced.load(std::sync::atomic::Ordering::SeqCst)
    );
    other.stop().await;
    o.server.stop().await;
}

fn op_by(
    author: &str,
    collection: &str,
    id: &str,
    revision: &str,
    base: Option<&str>,
    body: Value,
) -> Value {
    let mut op = op(collection, id, revision, base, body);
    op["author"] = json!(author);
    op
}

fn outcome(text: &str, i: usize) -> Value {
    results(text)[i]["outcome"].clone()
}

/// What an outside review found: an unverified author cannot hide a
/// published record, and sees its own conflict; a fast-forward is the same
/// device's only; a device's later conflicting state replaces its earlier
/// leaf; a record takes at most MAX_LEAVES leaves.
async fn review_fixes(url: &str) {
    let o = Org::new(url).await;
    o.publish(1, &["cases"]).await;
    let d1 = o.device("d1").await;
    let d2 = o.device("d2").await;
    let (_, text) = o
        .push(
            &d1,
            "cases",
            "r-1",
            vec![op("cases", "p-1", &rev(0xa1, 1), None, json!({"v": 1}))],
        )
        .await;
    assert_eq!(outcome(&text, 0), "applied");

    // An author d2 does not have bound edits the published record: kept as
    // a provisional leaf, the record stays visible to everyone.
    let (_, text) = o
        .push(
            &d2,
            "cases",
            "r-2",
            vec![op_by(
                "ghost",
                "cases",
                "p-1",
                &rev(0xa2, 1),
                Some(&rev(0xa1, 1)),
                json!({"v": "ghost"}),
            )],
        )
        .await;
    assert_eq!(outcome(&text, 0), "conflict", "{text}");
    let (records, _) = pull_all(&o, &d1, "cases", None).await;
    let p1 = records
        .iter()
        .find(|r| r["id"] == "p-1")
        .expect("still served");
    assert_eq!(p1["body"], json!({"v": 1}));
    assert_eq!(
        p1["conflicts"],
        json!([]),
        "d1 does not see the unverified leaf"
    );
    // ... but d2, which pushed it, does.
    let (records, _) = pull_all(&o, &d2, "cases", None).await;
    let p1 = records.iter().find(|r| r["id"] == "p-1").unwrap();
    assert_eq!(p1["conflicts"][0]["revision"], rev(0xa2, 1));

    // Another device reusing d1's origin does not fast-forward d1's head.
    let (_, text) = o
        .push(
            &d2,
            "cases",
            "r-3",
            vec![op(
                "cases",
                "p-1",
                &rev(0xa1, 2),
                None,
                json!({"v": "clone"}),
            )],
        )
        .await;
    assert_eq!(outcome(&text, 0), "conflict", "{text}");
    // d1's own later state on the same base does.
    let (_, text) = o
        .push(
            &d1,
            "cases",
            "r-4",
            vec![op("cases", "p-2", &rev(0xa1, 3), None, json!({"v": 1}))],
        )
        .await;
    assert_eq!(outcome(&text, 0), "applied");
    let (_, text) = o
        .push(
            &d1,
            "cases",
            "r-5",
            vec![op("cases", "p-2", &rev(0xa1, 4), None, json!({"v": 2}))],
        )
        .await;
    assert_eq!(outcome(&text, 0), "applied", "{text}");

    // d2 conflicts on p-2, then edits again while in conflict: its later
    // state replaces its leaf instead of piling up.
    for (i, seq) in [1u64, 2, 3].iter().enumerate() {
        let (_, text) = o
            .push(
                &d2,
                "cases",
                &format!("r-6-{i}"),
                vec![op(
                    "cases",
                    "p-2",
                    &rev(0xb2, *seq),
                    Some(&rev(0xa1, 3)),
                    json!({"d2": seq}),
                )],
            )
            .await;
        assert_eq!(outcome(&text, 0), "conflict", "{text}");
    }
    let detail: Value = get(&o.http, o.url("/records/cases/cases/p-2"), &o.admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(detail["leaves"].as_array().unwrap().len(), 1, "{detail}");
    assert_eq!(detail["leaves"][0]["revision"], rev(0xb2, 3));

    // Six devices' leaves at most; the seventh is refused (and keeps its
    // change), until the record is resolved.
    for origin in 0xc0..0xc5u8 {
        let (_, text) = o
            .push(
                &d2,
                "cases",
                &format!("r-7-{origin}"),
                vec![op(
                    "cases",
                    "p-2",
                    &rev(origin, 1),
                    Some(&rev(0xa1, 3)),
                    json!({"o": origin}),
                )],
            )
            .await;
        assert_eq!(outcome(&text, 0), "conflict", "{text}");
    }
    let (_, text) = o
        .push(
            &d2,
            "cases",
            "r-8",
            vec![op(
                "cases",
                "p-2",
                &rev(0xcf, 1),
                Some(&rev(0xa1, 3)),
                json!(7),
            )],
        )
        .await;
    assert_eq!(outcome(&text, 0), "rejected", "{text}");
    assert_eq!(results(&text)[0]["code"], "too_many_leaves");
    o.server.stop().await;
}

#[tokio::test]
async fn review_fixes_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    review_fixes(&format!(
        "sqlite://{}",
        dir.path().join("server.db").display()
    ))
    .await;
}

#[tokio::test]
async fn review_fixes_on_postgres() {
    let pg = Postgres::start();
    let url = pg.database("sync_review").await;
    review_fixes(&url).await;
}
