//! The SQLite side of [`crate::store::sync`]. Every write runs in an
//! IMMEDIATE transaction: one writer at a time, so sequences commit in
//! order.

use rusqlite::{params, OptionalExtension, Transaction, TransactionBehavior};

use super::SqliteStore;
use crate::store::sync::{
    page_cut, plan, revision, same_set, server_revision, BindStored, Compacted, Head, NewPush,
    PullPage, PushState, PushStored, RecordFilter, Resolution, ResolveStored, StoredLeaf,
    StoredRecord, Write,
};
use crate::store::{db_error, now_unix, StoreError};
use coffer_protocol::sync::{LikelyDuplicate, ProvisionalAuthor, Resolved};

/// The columns of a [`StoredRecord`] from `sync_records`, `{sealed}` the
/// body column or an empty one.
const RECORD_COLUMNS: &str = "app, collection, record_id, seq, revision, base, deleted, {sealed}, \
     body_mac, author, device_id, provisional, leaves, updated_at";

fn record_columns(bodies: bool) -> String {
    RECORD_COLUMNS.replace("{sealed}", if bodies { "sealed" } else { "X''" })
}

fn stored_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRecord> {
    Ok(StoredRecord {
        app: r.get(0)?,
        collection: r.get(1)?,
        id: r.get(2)?,
        seq: r.get(3)?,
        revision: r.get(4)?,
        base: r.get(5)?,
        deleted: r.get(6)?,
        sealed: r.get(7)?,
        body_mac: r.get(8)?,
        author: r.get(9)?,
        device_id: r.get(10)?,
        provisional: r.get(11)?,
        leaves: r.get(12)?,
        updated_at: r.get(13)?,
    })
}

const LEAF_COLUMNS: &str =
    "l.collection, l.record_id, l.revision, l.base, l.deleted, l.sealed, l.author";

fn stored_leaf(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredLeaf> {
    Ok(StoredLeaf {
        collection: r.get(0)?,
        id: r.get(1)?,
        revision: r.get(2)?,
        base: r.get(3)?,
        deleted: r.get(4)?,
        sealed: r.get(5)?,
        author: r.get(6)?,
    })
}

/// Locks nothing more than the IMMEDIATE transaction does: the counter of
/// (org, app), made on first use; its last sequence.
fn counter(tx: &Transaction<'_>, org_id: i64, app: &str) -> Result<i64, StoreError> {
    let e = db_error("reading the sync counter");
    tx.execute(
        "INSERT INTO sync_counters (org_id, app, last_seq, floor) VALUES (?1, ?2, 0, 0)
         ON CONFLICT (org_id, app) DO NOTHING",
        params![org_id, app],
    )
    .map_err(|x| e(&x))?;
    tx.query_row(
        "SELECT last_seq FROM sync_counters WHERE org_id = ?1 AND app = ?2",
        params![org_id, app],
        |r| r.get(0),
    )
    .map_err(|x| e(&x))
}

fn set_counter(tx: &Transaction<'_>, org_id: i64, app: &str, last: i64) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE sync_counters SET last_seq = ?3 WHERE org_id = ?1 AND app = ?2",
        params![org_id, app, last],
    )
    .map(|_| ())
    .map_err(|x| db_error("advancing the sync counter")(&x))
}

fn log_change(
    tx: &Transaction<'_>,
    org_id: i64,
    app: &str,
    seq: i64,
    key: (&str, &str),
    revision: &str,
    now: i64,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO sync_changes (org_id, app, seq, collection, record_id, revision, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut s| s.execute(params![org_id, app, seq, key.0, key.1, revision, now]))
    .map(|_| ())
    .map_err(|x| db_error("logging a change")(&x))
}

/// Keeps `sync_file_refs` of one record in step with it after a write:
/// the references of revisions that are neither its head nor a leaf any
/// more go, and those of `revision` (its new head or new leaf) come.
fn refresh_file_refs(
    tx: &Transaction<'_>,
    org_id: i64,
    app: &str,
    key: (&str, &str),
    revision: &str,
    files: &[&str],
) -> Result<(), StoreError> {
    let e = db_error("keeping file references");
    tx.prepare_cached(
        "DELETE FROM sync_file_refs WHERE org_id = ?1 AND app = ?2 AND collection = ?3 AND record_id = ?4
             AND revision NOT IN (
                 SELECT revision FROM sync_records
                     WHERE org_id = ?1 AND app = ?2 AND collection = ?3 AND record_id = ?4
                 UNION ALL SELECT revision FROM sync_leaves
                     WHERE org_id = ?1 AND app = ?2 AND collection = ?3 AND record_id = ?4)",
    )
    .and_then(|mut s| s.execute(params![org_id, app, key.0, key.1]))
    .map_err(|x| e(&x))?;
    for sha in files {
        tx.prepare_cached(
            "INSERT INTO sync_file_refs (org_id, app, collection, record_id, revision, sha256)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
        )
        .and_then(|mut s| s.execute(params![org_id, app, key.0, key.1, revision, sha]))
        .map_err(|x| e(&x))?;
    }
    Ok(())
}

fn verified(
    tx: &Transaction<'_>,
    org_id: i64,
    device_id: i64,
    author: &str,
) -> Result<bool, StoreError> {
    tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM sync_bindings WHERE org_id = ?1 AND device_id = ?2 AND author = ?3)
             OR EXISTS (SELECT 1 FROM escrow_releases er JOIN users u ON u.id = er.user_id
                        JOIN memberships m ON m.user_id = u.id AND m.org_id = ?1
                        WHERE er.device_id = ?2 AND u.name = ?3)",
        params![org_id, device_id, author],
        |r| r.get(0),
    )
    .map_err(|x| db_error("checking an author")(&x))
}

impl SqliteStore {
    pub(in crate::store) async fn org_data_key(
        &self,
        org_id: i64,
    ) -> Result<Option<String>, StoreError> {
        self.with("reading a data key", move |conn| {
            conn.query_row(
                "SELECT sealed_key FROM org_data_keys WHERE org_id = ?1",
                [org_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|x| db_error("reading a data key")(&x))
        })
        .await
    }

    pub(in crate::store) async fn add_org_data_key(
        &self,
        org_id: i64,
        sealed: &str,
    ) -> Result<(), StoreError> {
        let sealed = sealed.to_owned();
        self.with("storing a data key", move |conn| {
            conn.execute(
                "INSERT INTO org_data_keys (org_id, sealed_key, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (org_id) DO NOTHING",
                params![org_id, sealed, now_unix()],
            )
            .map(|_| ())
            .map_err(|x| db_error("storing a data key")(&x))
        })
        .await
    }

    pub(in crate::store) async fn record_escrow_release(
        &self,
        device_id: i64,
        user_id: i64,
    ) -> Result<(), StoreError> {
        self.with("recording an escrow release", move |conn| {
            conn.execute(
                "INSERT INTO escrow_releases (device_id, user_id, released_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (device_id, user_id) DO UPDATE SET released_at = excluded.released_at",
                params![device_id, user_id, now_unix()],
            )
            .map(|_| ())
            .map_err(|x| db_error("recording an escrow release")(&x))
        })
        .await
    }

    pub(in crate::store) async fn sync_push(
        &self,
        push: NewPush,
    ) -> Result<PushStored, StoreError> {
        let op = "storing a push";
        self.with(op, move |conn| {
            let e = db_error(op);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|x| e(&x))?;
            let earlier: Option<(String, Option<String>)> = tx
                .query_row(
                    "SELECT digest, answer FROM sync_batches WHERE org_id = ?1 AND app = ?2 AND batch_id = ?3",
                    params![push.org_id, push.app, push.batch_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(|x| e(&x))?;
            if let Some((digest, answer)) = earlier {
                return Ok(match answer {
                    Some(answer) if digest == push.digest => PushStored::Answer(answer),
                    _ => PushStored::BatchConflict,
                });
            }
            let last = counter(&tx, push.org_id, &push.app)?;
            let mut state = PushState::default();
            {
                let mut heads = tx
                    .prepare_cached(
                        "SELECT revision, base, deleted, device_id, provisional FROM sync_records
                         WHERE org_id = ?1 AND app = ?2 AND collection = ?3 AND record_id = ?4",
                    )
                    .map_err(|x| e(&x))?;
                let mut leaves = tx
                    .prepare_cached(
                        "SELECT revision, device_id FROM sync_leaves
                         WHERE org_id = ?1 AND app = ?2 AND collection = ?3 AND record_id = ?4
                         ORDER BY created_at, revision",
                    )
                    .map_err(|x| e(&x))?;
                for (collection, id) in push.keys() {
                    type HeadRow = (String, Option<String>, bool, Option<i64>, bool);
                    let head: Option<HeadRow> = heads
                        .query_row(params![push.org_id, push.app, collection, id], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                        })
                        .optional()
                        .map_err(|x| e(&x))?;
                    let Some((rev, base, deleted, device_id, provisional)) = head else { continue };
                    let leaf_rows = leaves
                        .query_map(params![push.org_id, push.app, collection, id], |r| {
                            Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?))
                        })
                        .map_err(|x| e(&x))?
                        .collect::<rusqlite::Result<Vec<_>>>()
                        .map_err(|x| e(&x))?;
                    for (leaf, device) in &leaf_rows {
                        if let Some(device) = device {
                            state.leaf_devices.insert(leaf.clone(), *device);
                        }
                    }
                    state.heads.insert(
                        (collection, id),
                        Head {
                            revision: revision(&rev)?,
                            base: base.as_deref().map(revision).transpose()?,
                            deleted,
                            leaves: leaf_rows.iter().map(|(l, _)| revision(l)).collect::<Result<_, _>>()?,
                            device_id,
                            provisional,
                        },
                    );
                }
                let mut revs = tx
                    .prepare_cached(
                        "SELECT digest FROM sync_revisions WHERE org_id = ?1 AND app = ?2 AND revision = ?3",
                    )
                    .map_err(|x| e(&x))?;
                for rev in push.revisions() {
                    if let Some(digest) = revs
                        .query_row(params![push.org_id, push.app, rev], |r| r.get::<_, String>(0))
                        .optional()
                        .map_err(|x| e(&x))?
                    {
                        state.revisions.insert(rev, digest);
                    }
                }
            }
            for author in push.authors() {
                if verified(&tx, push.org_id, push.device_id, &author)? {
                    state.verified.insert(author);
                }
            }
            let now = now_unix();
            // The blobs the batch references, each bumped (a garbage
            // collection must not take one a record is about to name).
            for sha in push.files() {
                let size: Option<i64> = tx
                    .prepare_cached(
                        "UPDATE sync_blobs SET last_referenced_at = max(last_referenced_at, ?4)
                         WHERE org_id = ?1 AND app = ?2 AND sha256 = ?3 RETURNING size",
                    )
                    .and_then(|mut s| {
                        s.query_row(params![push.org_id, push.app, sha, now], |r| r.get(0)).optional()
                    })
                    .map_err(|x| e(&x))?;
                if let Some(size) = size {
                    state.blobs.insert(sha, size);
                }
            }
            let plan = plan(&push, &state, last);
            for write in &plan.writes {
                let o = write.op();
                let rev = o.revision.to_string();
                let base = o.base.map(|b| b.to_string());
                match write {
                    Write::Head {
                        seq,
                        provisional,
                        removed,
                        leaves_left,
                        ..
                    } => {
                        for leaf in removed {
                            tx.prepare_cached(
                                "DELETE FROM sync_leaves WHERE org_id = ?1 AND app = ?2
                                 AND collection = ?3 AND record_id = ?4 AND revision = ?5",
                            )
                            .and_then(|mut s| {
                                s.execute(params![push.org_id, push.app, o.collection, o.id, leaf.to_string()])
                            })
                            .map_err(|x| e(&x))?;
                        }
                        tx.prepare_cached(
                            "INSERT INTO sync_records (org_id, app, collection, record_id, seq, revision, base,
                                 deleted, sealed, body_mac, author, device_id, provisional, leaves, updated_at, changed_at)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?15)
                             ON CONFLICT (org_id, app, collection, record_id) DO UPDATE SET
                                 seq = excluded.seq, revision = excluded.revision, base = excluded.base,
                                 deleted = excluded.deleted, sealed = excluded.sealed, body_mac = excluded.body_mac,
                                 author = excluded.author, device_id = excluded.device_id,
                                 provisional = excluded.provisional, leaves = excluded.leaves,
                                 updated_at = excluded.updated_at, changed_at = excluded.changed_at",
                        )
                        .and_then(|mut s| {
                            s.execute(params![
                                push.org_id, push.app, o.collection, o.id, seq, rev, base, o.deleted,
                                o.sealed, o.body_mac, o.author, push.device_id, provisional, leaves_left, now
                            ])
                        })
                        .map_err(|x| e(&x))?;
                    }
                    Write::Leaf {
                        seq,
                        provisional,
                        replaces,
                        ..
                    } => {
                        for earlier in replaces {
                            tx.prepare_cached(
                                "DELETE FROM sync_leaves WHERE org_id = ?1 AND app = ?2
                                     AND collection = ?3 AND record_id = ?4 AND revision = ?5",
                            )
                            .and_then(|mut s| {
                                s.execute(params![push.org_id, push.app, o.collection, o.id, earlier.to_string()])
                            })
                            .map_err(|x| e(&x))?;
                        }
                        tx.prepare_cached(
                            "INSERT INTO sync_leaves (org_id, app, collection, record_id, revision, base, deleted,
                                 sealed, author, device_id, provisional, created_at)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                        )
                        .and_then(|mut s| {
                            s.execute(params![
                                push.org_id, push.app, o.collection, o.id, rev, base, o.deleted, o.sealed,
                                o.author, push.device_id, provisional, now
                            ])
                        })
                        .map_err(|x| e(&x))?;
                        tx.prepare_cached(
                            "UPDATE sync_records SET seq = ?5, leaves = leaves + 1 - ?7, changed_at = ?6
                             WHERE org_id = ?1 AND app = ?2 AND collection = ?3 AND record_id = ?4",
                        )
                        .and_then(|mut s| {
                            let replaced = i64::try_from(replaces.len()).unwrap_or(0);
                            s.execute(params![push.org_id, push.app, o.collection, o.id, seq, now, replaced])
                        })
                        .map_err(|x| e(&x))?;
                    }
                }
                let files: Vec<&str> = o.files.iter().map(|(sha, _)| sha.as_str()).collect();
                refresh_file_refs(&tx, push.org_id, &push.app, (&o.collection, &o.id), &rev, &files)?;
                log_change(&tx, push.org_id, &push.app, write.seq(), (&o.collection, &o.id), &rev, now)?;
                tx.prepare_cached(
                    "INSERT INTO sync_revisions (org_id, app, revision, digest) VALUES (?1, ?2, ?3, ?4)",
                )
                .and_then(|mut s| s.execute(params![push.org_id, push.app, rev, o.digest]))
                .map_err(|x| e(&x))?;
            }
            set_counter(&tx, push.org_id, &push.app, plan.last_seq)?;
            tx.execute(
                "INSERT INTO sync_batches (org_id, app, batch_id, digest, answer, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![push.org_id, push.app, push.batch_id, push.digest, plan.answer, now],
            )
            .map_err(|x| e(&x))?;
            let answer = plan.answer;
            tx.commit().map_err(|x| e(&x))?;
            Ok(PushStored::Answer(answer))
        })
        .await
    }

    pub(in crate::store) async fn sync_pull(
        &self,
        org_id: i64,
        app: String,
        after: Option<(i64, i64)>,
        limit: i64,
        max_bytes: usize,
        device_id: i64,
    ) -> Result<PullPage, StoreError> {
        let op = "reading the feed";
        self.with(op, move |conn| {
            let e = db_error(op);
            // A read transaction: one snapshot for the whole page.
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Deferred)
                .map_err(|x| e(&x))?;
            let (last, floor): (i64, i64) = tx
                .query_row(
                    "SELECT last_seq, floor FROM sync_counters WHERE org_id = ?1 AND app = ?2",
                    params![org_id, app],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(|x| e(&x))?
                .unwrap_or((0, 0));
            // Expired: a tombstone was dropped above the reader's sequence
            // since the floor its cursor carries; or the cursor is ahead of
            // the feed (another database, a restored one).
            if let Some((after, seen_floor)) = after {
                if after > last {
                    return Ok(PullPage::Behind);
                }
                if floor > after.max(seen_floor) {
                    return Ok(PullPage::Expired);
                }
            }
            let after = after.map_or(0, |(seq, _)| seq);
            let sizes: Vec<(i64, i64)> = tx
                .prepare_cached(
                    // A record's size in a page counts its leaves: they
                    // travel with it.
                    "SELECT r.seq, length(r.sealed) + CASE WHEN r.leaves > 0 THEN
                         (SELECT coalesce(sum(length(l.sealed)), 0) FROM sync_leaves l
                          WHERE l.org_id = r.org_id AND l.app = r.app
                            AND l.collection = r.collection AND l.record_id = r.record_id)
                         ELSE 0 END
                     FROM sync_records r
                     WHERE r.org_id = ?1 AND r.app = ?2 AND r.seq > ?3 AND r.provisional = 0
                     ORDER BY r.seq LIMIT ?4",
                )
                .and_then(|mut s| {
                    s.query_map(params![org_id, app, after, limit + 1], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?
                    .collect()
                })
                .map_err(|x| e(&x))?;
            let (upto, more) = page_cut(&sizes, limit, max_bytes);
            let Some(upto) = upto else {
                return Ok(PullPage::Page {
                    records: Vec::new(),
                    leaves: Vec::new(),
                    more: false,
                    floor,
                });
            };
            let records = tx
                .prepare_cached(&format!(
                    "SELECT {} FROM sync_records
                     WHERE org_id = ?1 AND app = ?2 AND seq > ?3 AND seq <= ?4 AND provisional = 0
                     ORDER BY seq",
                    record_columns(true)
                ))
                .and_then(|mut s| {
                    s.query_map(params![org_id, app, after, upto], stored_record)?
                        .collect()
                })
                .map_err(|x| e(&x))?;
            let leaves = tx
                .prepare_cached(&format!(
                    "SELECT {LEAF_COLUMNS} FROM sync_leaves l JOIN sync_records r
                         ON r.org_id = l.org_id AND r.app = l.app AND r.collection = l.collection
                         AND r.record_id = l.record_id
                     WHERE r.org_id = ?1 AND r.app = ?2 AND r.seq > ?3 AND r.seq <= ?4
                         AND r.provisional = 0 AND (l.provisional = 0 OR l.device_id = ?5)
                     ORDER BY l.created_at, l.revision"
                ))
                .and_then(|mut s| {
                    s.query_map(params![org_id, app, after, upto, device_id], stored_leaf)?
                        .collect()
                })
                .map_err(|x| e(&x))?;
            Ok(PullPage::Page {
                records,
                leaves,
                more,
                floor,
            })
        })
        .await
    }

    pub(in crate::store) async fn sync_records(
        &self,
        org_id: i64,
        filter: RecordFilter,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let op = "listing records";
        self.with(op, move |conn| {
            let (aa, ac, ai) = filter.after.clone().unwrap_or_default();
            conn.prepare_cached(&format!(
                "SELECT {} FROM sync_records
                 WHERE org_id = ?1 AND (?2 IS NULL OR app = ?2) AND (?3 IS NULL OR collection = ?3)
                     AND (?4 IS NULL OR (leaves > 0) = ?4) AND (?5 IS NULL OR provisional = ?5)
                     AND (?6 = 0 OR (app, collection, record_id) > (?7, ?8, ?9))
                 ORDER BY app, collection, record_id LIMIT ?10",
                record_columns(filter.bodies)
            ))
            .and_then(|mut s| {
                s.query_map(
                    params![
                        org_id,
                        filter.app,
                        filter.collection,
                        filter.conflicts,
                        filter.provisional,
                        filter.after.is_some(),
                        aa,
                        ac,
                        ai,
                        filter.limit
                    ],
                    stored_record,
                )?
                .collect()
            })
            .map_err(|x| db_error(op)(&x))
        })
        .await
    }

    pub(in crate::store) async fn sync_record(
        &self,
        org_id: i64,
        app: String,
        collection: String,
        id: String,
    ) -> Result<Option<(StoredRecord, Vec<StoredLeaf>)>, StoreError> {
        let op = "reading a record";
        self.with(op, move |conn| {
            let e = db_error(op);
            let tx = conn.transaction().map_err(|x| e(&x))?;
            let Some(record) = tx
                .query_row(
                    &format!(
                        "SELECT {} FROM sync_records
                         WHERE org_id = ?1 AND app = ?2 AND collection = ?3 AND record_id = ?4",
                        record_columns(true)
                    ),
                    params![org_id, app, collection, id],
                    stored_record,
                )
                .optional()
                .map_err(|x| e(&x))?
            else {
                return Ok(None);
            };
            let leaves = tx
                .prepare(&format!(
                    "SELECT {LEAF_COLUMNS} FROM sync_leaves l
                     WHERE l.org_id = ?1 AND l.app = ?2 AND l.collection = ?3 AND l.record_id = ?4
                     ORDER BY l.created_at, l.revision"
                ))
                .and_then(|mut s| {
                    s.query_map(params![org_id, app, collection, id], stored_leaf)?
                        .collect()
                })
                .map_err(|x| e(&x))?;
            Ok(Some((record, leaves)))
        })
        .await
    }

    pub(in crate::store) async fn sync_duplicates(
        &self,
        org_id: i64,
        app: String,
        collection: String,
        id: String,
        mac: String,
    ) -> Result<Vec<LikelyDuplicate>, StoreError> {
        let op = "finding duplicates";
        self.with(op, move |conn| {
            conn.prepare_cached(
                "SELECT collection, record_id, provisional FROM sync_records
                 WHERE org_id = ?1 AND app = ?2 AND collection = ?3 AND body_mac = ?4 AND record_id <> ?5
                 ORDER BY record_id LIMIT 100",
            )
            .and_then(|mut s| {
                s.query_map(params![org_id, app, collection, mac, id], |r| {
                    Ok(LikelyDuplicate {
                        collection: r.get(0)?,
                        id: r.get(1)?,
                        provisional: r.get(2)?,
                    })
                })?
                .collect()
            })
            .map_err(|x| db_error(op)(&x))
        })
        .await
    }

    pub(in crate::store) async fn sync_resolve(
        &self,
        org_id: i64,
        app: String,
        collection: String,
        id: String,
        resolution: Resolution,
    ) -> Result<ResolveStored, StoreError> {
        let op = "resolving a conflict";
        self.with(op, move |conn| {
            let e = db_error(op);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|x| e(&x))?;
            let head: Option<String> = tx
                .query_row(
                    "SELECT revision FROM sync_records
                     WHERE org_id = ?1 AND app = ?2 AND collection = ?3 AND record_id = ?4",
                    params![org_id, app, collection, id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|x| e(&x))?;
            let Some(head) = head else { return Ok(ResolveStored::NotFound) };
            let leaves: Vec<String> = tx
                .prepare(
                    "SELECT revision FROM sync_leaves
                     WHERE org_id = ?1 AND app = ?2 AND collection = ?3 AND record_id = ?4
                     ORDER BY created_at, revision",
                )
                .and_then(|mut s| s.query_map(params![org_id, app, collection, id], |r| r.get(0))?.collect())
                .map_err(|x| e(&x))?;
            if leaves.is_empty() {
                return Ok(ResolveStored::NotInConflict);
            }
            if head != resolution.expected_head || !same_set(&leaves, &resolution.expected_leaves) {
                return Ok(ResolveStored::Changed);
            }
            let seq = counter(&tx, org_id, &app)? + 1;
            let rev = server_revision(seq)?;
            let (sealed, mac) = (resolution.seal)(&rev)?;
            let now = now_unix();
            tx.execute(
                "DELETE FROM sync_leaves WHERE org_id = ?1 AND app = ?2 AND collection = ?3 AND record_id = ?4",
                params![org_id, app, collection, id],
            )
            .map_err(|x| e(&x))?;
            tx.execute(
                "UPDATE sync_records SET seq = ?5, revision = ?6, base = ?7, deleted = ?8, sealed = ?9,
                     body_mac = ?10, author = ?11, device_id = NULL, provisional = 0, leaves = 0,
                     updated_at = ?12, changed_at = ?12
                 WHERE org_id = ?1 AND app = ?2 AND collection = ?3 AND record_id = ?4",
                params![
                    org_id, app, collection, id, seq, rev.to_string(), head, resolution.deleted, sealed,
                    mac, resolution.author, now
                ],
            )
            .map_err(|x| e(&x))?;
            let files: Vec<&str> = resolution.files.iter().map(String::as_str).collect();
            refresh_file_refs(&tx, org_id, &app, (&collection, &id), &rev.to_string(), &files)?;
            log_change(&tx, org_id, &app, seq, (&collection, &id), &rev.to_string(), now)?;
            set_counter(&tx, org_id, &app, seq)?;
            tx.commit().map_err(|x| e(&x))?;
            Ok(ResolveStored::Resolved(Resolved {
                revision: rev,
                seq: u64::try_from(seq).unwrap_or(0),
                resolved: leaves.iter().map(|l| revision(l)).collect::<Result<_, _>>()?,
            }))
        })
        .await
    }

    pub(in crate::store) async fn sync_authors(
        &self,
        org_id: i64,
    ) -> Result<Vec<ProvisionalAuthor>, StoreError> {
        let op = "listing provisional authors";
        self.with(op, move |conn| {
            conn.prepare_cached(
                "SELECT device_id, author, count(*) FROM (
                     SELECT device_id, author FROM sync_records WHERE org_id = ?1 AND provisional = 1
                     UNION ALL
                     SELECT device_id, author FROM sync_leaves WHERE org_id = ?1 AND provisional = 1)
                 WHERE device_id IS NOT NULL
                 GROUP BY device_id, author ORDER BY device_id, author",
            )
            .and_then(|mut s| {
                s.query_map([org_id], |r| {
                    Ok(ProvisionalAuthor {
                        device_id: r.get(0)?,
                        author: r.get(1)?,
                        records: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                    })
                })?
                .collect()
            })
            .map_err(|x| db_error(op)(&x))
        })
        .await
    }

    pub(in crate::store) async fn sync_bind(
        &self,
        org_id: i64,
        device_id: i64,
        author: String,
        user_id: i64,
    ) -> Result<BindStored, StoreError> {
        let op = "binding an author";
        self.with(op, move |conn| {
            let e = db_error(op);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|x| e(&x))?;
            let (device, member): (bool, bool) = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM devices WHERE id = ?2 AND org_id = ?1),
                            EXISTS (SELECT 1 FROM memberships WHERE user_id = ?3 AND org_id = ?1)",
                    params![org_id, device_id, user_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(|x| e(&x))?;
            if !device {
                return Ok(BindStored::NoDevice);
            }
            if !member {
                return Ok(BindStored::NoUser);
            }
            let now = now_unix();
            tx.execute(
                "INSERT INTO sync_bindings (org_id, device_id, author, user_id, bound_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (org_id, device_id, author) DO UPDATE SET user_id = excluded.user_id, bound_at = excluded.bound_at",
                params![org_id, device_id, author, user_id, now],
            )
            .map_err(|x| e(&x))?;
            // The records to publish: a provisional head by this author
            // from this device, or a provisional leaf of theirs.
            let touched: Vec<(String, String, String, bool)> = tx
                .prepare(
                    "SELECT app, collection, record_id, coalesce(provisional = 1 AND device_id = ?2 AND author = ?3, 0)
                     FROM sync_records r WHERE org_id = ?1 AND (
                         (provisional = 1 AND device_id = ?2 AND author = ?3)
                         OR EXISTS (SELECT 1 FROM sync_leaves l WHERE l.org_id = r.org_id AND l.app = r.app
                             AND l.collection = r.collection AND l.record_id = r.record_id
                             AND l.provisional = 1 AND l.device_id = ?2 AND l.author = ?3))
                     ORDER BY app, seq",
                )
                .and_then(|mut s| {
                    s.query_map(params![org_id, device_id, author], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                    })?
                    .collect()
                })
                .map_err(|x| e(&x))?;
            tx.execute(
                "UPDATE sync_leaves SET provisional = 0 WHERE org_id = ?1 AND device_id = ?2 AND author = ?3",
                params![org_id, device_id, author],
            )
            .map_err(|x| e(&x))?;
            let mut published = 0u64;
            let mut duplicates = Vec::new();
            for (app, collection, id, head_provisional) in &touched {
                let seq = counter(&tx, org_id, app)? + 1;
                let (revision, mac, still_provisional): (String, Option<String>, bool) = tx
                    .query_row(
                        "UPDATE sync_records SET seq = ?5, changed_at = ?6,
                             provisional = CASE WHEN ?7 THEN 0 ELSE provisional END
                         WHERE org_id = ?1 AND app = ?2 AND collection = ?3 AND record_id = ?4
                         RETURNING revision, body_mac, provisional",
                        params![org_id, app, collection, id, seq, now, head_provisional],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .map_err(|x| e(&x))?;
                log_change(&tx, org_id, app, seq, (collection, id), &revision, now)?;
                set_counter(&tx, org_id, app, seq)?;
                if *head_provisional {
                    published += 1;
                }
                if let (Some(mac), false) = (mac, still_provisional) {
                    let others: i64 = tx
                        .query_row(
                            "SELECT count(*) FROM sync_records WHERE org_id = ?1 AND app = ?2
                             AND collection = ?3 AND body_mac = ?4 AND record_id <> ?5",
                            params![org_id, app, collection, mac, id],
                            |r| r.get(0),
                        )
                        .map_err(|x| e(&x))?;
                    if others > 0 {
                        duplicates.push(LikelyDuplicate {
                            collection: collection.clone(),
                            id: id.clone(),
                            provisional: false,
                        });
                    }
                }
            }
            tx.commit().map_err(|x| e(&x))?;
            Ok(BindStored::Bound { published, duplicates })
        })
        .await
    }

    pub(in crate::store) async fn sync_orgs(&self) -> Result<Vec<i64>, StoreError> {
        let op = "listing organizations that sync";
        self.with(op, move |conn| {
            conn.prepare("SELECT DISTINCT org_id FROM sync_counters ORDER BY org_id")
                .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
                .map_err(|x| db_error(op)(&x))
        })
        .await
    }

    pub(in crate::store) async fn compact_sync_org(
        &self,
        org_id: i64,
        cutoff: i64,
    ) -> Result<Compacted, StoreError> {
        let op = "compacting sync";
        self.with(op, move |conn| {
            let e = db_error(op);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|x| e(&x))?;
            tx.execute(
                "UPDATE sync_counters SET floor = max(floor, coalesce((
                     SELECT max(seq) FROM sync_records r WHERE r.org_id = sync_counters.org_id
                         AND r.app = sync_counters.app AND r.deleted = 1 AND r.leaves = 0 AND r.changed_at < ?2), 0))
                 WHERE org_id = ?1",
                params![org_id, cutoff],
            )
            .map_err(|x| e(&x))?;
            let tombstones = tx
                .execute(
                    "DELETE FROM sync_records WHERE org_id = ?1 AND deleted = 1 AND leaves = 0 AND changed_at < ?2",
                    params![org_id, cutoff],
                )
                .map_err(|x| e(&x))?;
            // The references of the records just dropped (a tombstone can
            // still name files) go with them.
            tx.execute(
                "DELETE FROM sync_file_refs WHERE org_id = ?1 AND NOT EXISTS (
                     SELECT 1 FROM sync_records r WHERE r.org_id = sync_file_refs.org_id
                         AND r.app = sync_file_refs.app AND r.collection = sync_file_refs.collection
                         AND r.record_id = sync_file_refs.record_id)",
                [org_id],
            )
            .map_err(|x| e(&x))?;
            let changes = tx
                .execute(
                    "DELETE FROM sync_changes WHERE org_id = ?1 AND at < ?2",
                    params![org_id, cutoff],
                )
                .map_err(|x| e(&x))?;
            let batches = tx
                .execute(
                    "DELETE FROM sync_batches WHERE org_id = ?1 AND created_at < ?2",
                    params![org_id, cutoff],
                )
                .map_err(|x| e(&x))?;
            tx.commit().map_err(|x| e(&x))?;
            Ok(Compacted {
                tombstones: tombstones as u64,
                changes: changes as u64,
                batches: batches as u64,
            })
        })
        .await
    }
}
