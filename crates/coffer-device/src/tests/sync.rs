//! The record store's sync state, without a server: what is pending, what
//! an answer does, what a pulled page may and may not overwrite, a reset,
//! and a purge that leaves nothing derivable behind.

use serde_json::json;

use super::{pass, raw_app_db, scan, space, FAST};
use crate::*;

fn vault() -> (tempfile::TempDir, Space, UnlockedVault) {
    let (dir, space) = space();
    let v = space
        .create_vault("acme", "alice", &pass("pw"), &FAST)
        .unwrap();
    v.add_app("cases", Capabilities::all()).unwrap();
    (dir, space, v)
}

fn head(rev: &str, body: serde_json::Value) -> Side {
    Side {
        revision: rev.into(),
        base: None,
        deleted: false,
        body: Some(body),
        author: "bob".into(),
        files: Vec::new(),
    }
}

fn pulled(id: &str, seq: u64, head: Side, leaves: Vec<Side>) -> PulledHead {
    PulledHead {
        collection: "c".into(),
        id: id.into(),
        seq,
        head,
        leaves,
    }
}

const OTHER: &str = "99999999999999999999999999999999";

#[test]
fn a_local_write_is_pending_until_an_answer_names_it() {
    let (_d, _s, v) = vault();
    let mut records = v.app("cases").unwrap().records().unwrap();
    let origin = records.sync_origin().unwrap();
    assert_eq!(origin.len(), 32);
    assert_ne!(origin, "0".repeat(32));
    records.put("c", "1", &json!({"n": 1}), None).unwrap();
    records.put("c", "1", &json!({"n": 2}), None).unwrap();
    records.put("c", "2", &json!({"n": 9}), None).unwrap();
    let pending = records.pending_changes(10).unwrap();
    // One change per record: its latest state, by the slot that wrote it.
    assert_eq!(pending.len(), 2);
    assert_eq!(pending[0].id, "1");
    assert_eq!(pending[0].body, Some(json!({"n": 2})));
    assert_eq!(pending[0].author, "alice");
    assert_eq!(pending[0].base, None);
    assert!(pending[0].local_seq < pending[1].local_seq);

    // An answer about an older change of record 1 leaves the newer pending.
    let first = &pending[0];
    records
        .acknowledge(&[Ack {
            collection: "c".into(),
            id: "2".into(),
            local_seq: pending[1].local_seq,
            revision: format!("{origin}.{}", pending[1].local_seq),
            outcome: AckOutcome::Applied { seq: 1 },
        }])
        .unwrap();
    records.put("c", "1", &json!({"n": 3}), None).unwrap();
    records
        .acknowledge(&[Ack {
            collection: "c".into(),
            id: "1".into(),
            local_seq: first.local_seq,
            revision: format!("{origin}.{}", first.local_seq),
            outcome: AckOutcome::Applied { seq: 2 },
        }])
        .unwrap();
    let pending = records.pending_changes(10).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].body, Some(json!({"n": 3})));
    // Made on what the server took.
    assert_eq!(
        pending[0].base.as_deref(),
        Some(format!("{origin}.{}", first.local_seq).as_str())
    );
    let state = records.sync_state().unwrap();
    assert_eq!((state.pending, state.conflicts, state.rejected), (1, 0, 0));
}

#[test]
fn a_refused_change_stays_and_is_not_offered_again_until_edited() {
    let (_d, _s, v) = vault();
    let mut records = v.app("cases").unwrap().records().unwrap();
    let origin = records.sync_origin().unwrap();
    records.put("c", "1", &json!(null), None).unwrap();
    let p = records.pending_changes(10).unwrap().remove(0);
    records
        .acknowledge(&[Ack {
            collection: "c".into(),
            id: "1".into(),
            local_seq: p.local_seq,
            revision: format!("{origin}.{}", p.local_seq),
            outcome: AckOutcome::Rejected {
                code: "invalid_body".into(),
            },
        }])
        .unwrap();
    assert!(records.pending_changes(10).unwrap().is_empty());
    assert_eq!(records.sync_state().unwrap().rejected, 1);
    assert_eq!(
        records.rejection("c", "1").unwrap().as_deref(),
        Some("invalid_body")
    );
    // Still the local state.
    assert!(records.get("c", "1").unwrap().is_some());
    records
        .put("c", "1", &json!({"fixed": true}), None)
        .unwrap();
    assert_eq!(records.pending_changes(10).unwrap().len(), 1);
    assert_eq!(records.rejection("c", "1").unwrap(), None);
}

#[test]
fn a_change_that_waits_for_its_file_stays_pending_and_says_why() {
    let (_d, _s, v) = vault();
    let mut records = v.app("cases").unwrap().records().unwrap();
    let origin = records.sync_origin().unwrap();
    records.put("c", "1", &json!({"n": 1}), None).unwrap();
    let p = records.pending_changes(10).unwrap().remove(0);
    assert_eq!(p.waiting, None);
    let waiting = |seq: u64| Ack {
        collection: "c".into(),
        id: "1".into(),
        local_seq: seq,
        revision: format!("{origin}.{seq}"),
        outcome: AckOutcome::Waiting {
            code: "missing_file".into(),
        },
    };
    records.acknowledge(&[waiting(p.local_seq)]).unwrap();
    // Still pending (offered again, with the server's code), not refused.
    let again = records.pending_changes(10).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].local_seq, p.local_seq);
    assert_eq!(again[0].waiting.as_deref(), Some("missing_file"));
    let state = records.sync_state().unwrap();
    assert_eq!((state.pending, state.rejected), (1, 0));
    assert_eq!(records.rejection("c", "1").unwrap(), None);
    // An edit is a new change: nothing said of it yet.
    records.put("c", "1", &json!({"n": 2}), None).unwrap();
    let edited = records.pending_changes(10).unwrap().remove(0);
    assert!(edited.local_seq > p.local_seq);
    assert_eq!(edited.waiting, None);
    // Answered at last: delivered.
    records.acknowledge(&[waiting(edited.local_seq)]).unwrap();
    records
        .acknowledge(&[Ack {
            outcome: AckOutcome::Applied { seq: 1 },
            ..waiting(edited.local_seq)
        }])
        .unwrap();
    assert!(records.pending_changes(10).unwrap().is_empty());
    assert_eq!(records.sync_state().unwrap().pending, 0);
}

#[test]
fn a_pull_never_overwrites_a_pending_change_and_keeps_the_server_side() {
    let (_d, _s, v) = vault();
    let mut records = v.app("cases").unwrap().records().unwrap();
    let origin = records.sync_origin().unwrap();
    // Record 1 came from the server; then edited here.
    records
        .apply_page(
            &origin,
            &[pulled(
                "1",
                1,
                head(&format!("{OTHER}.1"), json!({"v": "server-1"})),
                vec![],
            )],
            "v1.1",
            true,
        )
        .unwrap();
    assert_eq!(
        records.get("c", "1").unwrap().unwrap().body,
        json!({"v": "server-1"})
    );
    assert!(records.pending_changes(10).unwrap().is_empty());
    records.put("c", "1", &json!({"v": "local"}), None).unwrap();
    // The server moves on meanwhile.
    let applied = records
        .apply_page(
            &origin,
            &[pulled(
                "1",
                2,
                head(&format!("{OTHER}.2"), json!({"v": "server-2"})),
                vec![],
            )],
            "v1.2",
            true,
        )
        .unwrap();
    assert_eq!(applied.kept_local, 1);
    assert_eq!(
        records.get("c", "1").unwrap().unwrap().body,
        json!({"v": "local"})
    );
    let p = records.pending_changes(10).unwrap().remove(0);
    // Still made on what it was made on: the server will see the conflict.
    assert_eq!(p.base.as_deref(), Some(format!("{OTHER}.1").as_str()));

    // The server keeps it as a leaf; the next pull brings the head and the leaf.
    let own = format!("{origin}.{}", p.local_seq);
    records
        .acknowledge(&[Ack {
            collection: "c".into(),
            id: "1".into(),
            local_seq: p.local_seq,
            revision: own.clone(),
            outcome: AckOutcome::Conflict,
        }])
        .unwrap();
    let mut leaf = head(&own, json!({"v": "local"}));
    leaf.author = "alice".into();
    records
        .apply_page(
            &origin,
            &[pulled(
                "1",
                3,
                head(&format!("{OTHER}.2"), json!({"v": "server-2"})),
                vec![leaf],
            )],
            "v1.3",
            true,
        )
        .unwrap();
    let conflict = records.conflict("c", "1").unwrap().expect("in conflict");
    assert_eq!(conflict.base, Some(json!({"v": "server-1"})));
    assert_eq!(conflict.local, Some(json!({"v": "local"})));
    assert_eq!(
        conflict.server.unwrap().body,
        Some(json!({"v": "server-2"}))
    );
    assert_eq!(records.sync_state().unwrap().conflicts, 1);

    // Resolved here: a new change on the server's head, resolving the leaf.
    records.resolve("c", "1", Resolution::KeepServer).unwrap();
    assert_eq!(
        records.get("c", "1").unwrap().unwrap().body,
        json!({"v": "server-2"})
    );
    let p = records.pending_changes(10).unwrap().remove(0);
    assert_eq!(p.base.as_deref(), Some(format!("{OTHER}.2").as_str()));
    assert_eq!(p.resolves, vec![own]);
    assert!(matches!(
        records.resolve("c", "1", Resolution::KeepLocal),
        Err(Error::NotInConflict { .. })
    ));
}

#[test]
fn the_device_that_won_sees_the_leaf_and_a_resolution_elsewhere_converges_it() {
    let (_d, _s, v) = vault();
    let mut records = v.app("cases").unwrap().records().unwrap();
    let origin = records.sync_origin().unwrap();
    records.put("c", "1", &json!({"v": "mine"}), None).unwrap();
    let p = records.pending_changes(10).unwrap().remove(0);
    let own = format!("{origin}.{}", p.local_seq);
    records
        .acknowledge(&[Ack {
            collection: "c".into(),
            id: "1".into(),
            local_seq: p.local_seq,
            revision: own.clone(),
            outcome: AckOutcome::Applied { seq: 1 },
        }])
        .unwrap();
    let mut mine = head(&own, json!({"v": "mine"}));
    mine.author = "alice".into();
    let theirs = head(&format!("{OTHER}.5"), json!({"v": "theirs"}));
    records
        .apply_page(
            &origin,
            &[pulled("1", 2, mine, vec![theirs.clone()])],
            "v1.2",
            true,
        )
        .unwrap();
    let conflict = records.conflict("c", "1").unwrap().expect("in conflict");
    assert_eq!(conflict.leaves, vec![theirs]);
    // Resolved by someone else (an admin): the head resolves every leaf.
    let resolved = head(&format!("{}.7", "0".repeat(32)), json!({"v": "agreed"}));
    records
        .apply_page(&origin, &[pulled("1", 7, resolved, vec![])], "v1.7", true)
        .unwrap();
    assert!(records.conflict("c", "1").unwrap().is_none());
    assert_eq!(
        records.get("c", "1").unwrap().unwrap().body,
        json!({"v": "agreed"})
    );
    assert_eq!(records.sync_state().unwrap().conflicts, 0);
}

#[test]
fn a_pulled_tombstone_deletes_and_a_reset_keeps_everything() {
    let (_d, _s, v) = vault();
    let mut records = v.app("cases").unwrap().records().unwrap();
    let origin = records.sync_origin().unwrap();
    let page = [
        pulled("1", 1, head(&format!("{OTHER}.1"), json!({"a": 1})), vec![]),
        pulled("2", 2, head(&format!("{OTHER}.2"), json!({"b": 2})), vec![]),
        pulled("3", 4, head(&format!("{OTHER}.4"), json!({"c": 3})), vec![]),
    ];
    records.apply_page(&origin, &page, "v1.2", false).unwrap();
    assert!(!records.sync_state().unwrap().complete);
    let mut gone = head(&format!("{OTHER}.3"), json!(null));
    gone.deleted = true;
    gone.body = None;
    records
        .apply_page(&origin, &[pulled("2", 3, gone, vec![])], "v1.3", true)
        .unwrap();
    let state = records.sync_state().unwrap();
    assert!(state.complete);
    assert_eq!(state.cursor.as_deref(), Some("v1.3"));
    assert!(records.get("c", "2").unwrap().unwrap().deleted);

    records
        .put("c", "local", &json!({"unpushed": true}), None)
        .unwrap();
    // One record whose last server state is this store's own.
    records
        .put("c", "mine", &json!({"delivered": true}), None)
        .unwrap();
    let p = records
        .pending_changes(10)
        .unwrap()
        .into_iter()
        .find(|p| p.id == "mine")
        .unwrap();
    records
        .acknowledge(&[Ack {
            collection: "c".into(),
            id: "mine".into(),
            local_seq: p.local_seq,
            revision: format!("{origin}.{}", p.local_seq),
            outcome: AckOutcome::Applied { seq: 9 },
        }])
        .unwrap();
    assert_eq!(records.pending_changes(10).unwrap().len(), 1);
    // A compaction's expiry: nothing of its own is pushed again.
    records.reset_sync(false).unwrap();
    assert_eq!(records.pending_changes(10).unwrap().len(), 1);
    // A restored server's.
    records.reset_sync(true).unwrap();
    // The server may have lost it (restored from a backup): pending again,
    // made on its own revision.
    let again = records.pending_changes(10).unwrap();
    let mine = again
        .iter()
        .find(|p| p.id == "mine")
        .expect("pending again");
    assert_eq!(mine.body, Some(json!({"delivered": true})));
    assert_eq!(mine.base, Some(format!("{origin}.{}", p.local_seq)));
    let state = records.sync_state().unwrap();
    assert_eq!(state.cursor, None);
    assert!(!state.complete);
    // The full pull brings record 1 only (2's tombstone was dropped).
    records
        .apply_page(
            &origin,
            &[pulled(
                "1",
                1,
                head(&format!("{OTHER}.1"), json!({"a": 1})),
                vec![],
            )],
            "v1.1",
            true,
        )
        .unwrap();
    let state = records.sync_state().unwrap();
    assert!(state.complete);
    // Record 3 is live here and the full pull did not bring it: counted,
    // kept. Record 2 is deleted here and on the server: nothing to say.
    assert_eq!(state.unseen, 1, "record 3 is counted, not deleted");
    assert!(!records.get("c", "3").unwrap().unwrap().deleted);
    assert_eq!(
        state.pending, 2,
        "the unpushed change is still there, and the own one"
    );
    assert!(records.get("c", "local").unwrap().is_some());
}

#[test]
fn records_written_before_sync_existed_become_pending_once() {
    let (_d, _s, v) = vault();
    // The database file exists (its key-value store opened), its record
    // tables as an older coffer made them.
    v.app("cases").unwrap().kv().unwrap();
    {
        let conn = raw_app_db(&v, "cases");
        conn.execute_batch(
            "CREATE TABLE coffer_records (collection TEXT NOT NULL, id TEXT NOT NULL, body TEXT,
                 version INTEGER NOT NULL, updated_at INTEGER NOT NULL,
                 deleted INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (collection, id)) STRICT;
             CREATE TABLE coffer_changes (seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 collection TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL,
                 deleted INTEGER NOT NULL, changed_at INTEGER NOT NULL) STRICT;
             INSERT INTO coffer_records VALUES ('c', 'old', '{\"x\":1}', 1, 0, 0);
             INSERT INTO coffer_changes (collection, id, version, deleted, changed_at)
                 VALUES ('c', 'old', 1, 0, 0);",
        )
        .unwrap();
    }
    let records = v.app("cases").unwrap().records().unwrap();
    let pending = records.pending_changes(10).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].body, Some(json!({"x": 1})));
    drop(records);
    // Opening again does not mark it twice, nor undo an answer.
    let records = v.app("cases").unwrap().records().unwrap();
    assert_eq!(records.pending_changes(10).unwrap().len(), 1);
}

#[test]
fn a_purge_leaves_nothing_that_derives_the_old_key() {
    let (_d, space, v) = vault();
    v.add_app("notes", Capabilities::all()).unwrap();
    let marker = "PURGE-MARKER-7f3a9c";
    {
        let app = v.app("cases").unwrap();
        app.records()
            .unwrap()
            .put("c", "1", &json!({"secret": marker}), None)
            .unwrap();
        app.kv().unwrap().put("k", marker.as_bytes()).unwrap();
        app.files()
            .unwrap()
            .put(
                "photo.jpg",
                &mut marker.as_bytes(),
                Some("image/jpeg"),
                &mut |_| {},
            )
            .unwrap();
    }
    v.app("notes")
        .unwrap()
        .records()
        .unwrap()
        .put("n", "1", &json!({"keep": "notes stay"}), None)
        .unwrap();
    let old = v.app("cases").unwrap().info().clone();
    let old_key = v.subkey(Purpose::AppDatabase(&old.id)).unwrap();
    let old_db = v.vault().path().join("data").join(&old.db_file);
    // Before: the old key opens the old database, and the marker is in it.
    {
        let conn = store::database::open(&old_db, &old_key, false).unwrap();
        let body: String = conn
            .query_row("SELECT body FROM coffer_records", [], |r| r.get(0))
            .unwrap();
        assert!(body.contains(marker));
    }

    let new = v.purge_app("cases").unwrap();
    assert_ne!(new.id, old.id);
    assert_eq!(new.capabilities, old.capabilities);
    let app = v.app("cases").unwrap();
    assert!(app.records().unwrap().list("c").unwrap().is_empty());
    assert_eq!(app.kv().unwrap().get("k").unwrap(), None);
    assert!(app.files().unwrap().list().unwrap().is_empty());
    // The other app is untouched.
    let notes = v.app("notes").unwrap().records().unwrap();
    assert_eq!(
        notes.get("n", "1").unwrap().unwrap().body,
        json!({"keep": "notes stay"})
    );
    // After: the old file is gone, no file of the vault opens under the
    // old key, the catalog no longer names the old id, and no byte of any
    // file holds the marker or the old id in the clear.
    assert!(!old_db.exists());
    let mut opened_under_old_key = Vec::new();
    scan(v.vault().path(), &mut |path, bytes| {
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "{path:?} holds the marker"
        );
        assert!(
            !bytes.windows(old.id.len()).any(|w| w == old.id.as_bytes()),
            "{path:?} holds the old app id in the clear"
        );
        if path.extension().is_some_and(|e| e == "db")
            && store::database::open(path, &old_key, false).is_ok()
        {
            opened_under_old_key.push(path.to_owned());
        }
    });
    assert!(opened_under_old_key.is_empty(), "{opened_under_old_key:?}");
    assert!(v.apps().unwrap().iter().all(|a| a.id != old.id));
    assert_eq!(v.setting_keys("purge:").unwrap(), Vec::<String>::new());
    // And it is in the vault's audit trail.
    drop((app, notes));
    let events: Vec<String> = v
        .audit()
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert!(events.iter().any(|e| e == "app_purged"), "{events:?}");
    drop(space);
}
