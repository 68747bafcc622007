//! The PostgreSQL side of [`crate::store::sync`]. A push first inserts its
//! batch row (so that identical pushes through several processes wait on
//! its key, then read the stored answer), then takes the (org, app)
//! counter row `FOR UPDATE`: every transaction that assigns sequences of
//! an app holds it until it commits, so sequences commit in order and a
//! reader of the feed never skips one. Writes go as one statement per
//! kind over arrays (`unnest`), not one per operation.

use tokio_postgres::types::ToSql;

use super::{pg, PostgresStore};
use crate::store::sync::{
    plan, revision, same_set, server_revision, BindStored, Compacted, Head, NewPush, PullPage,
    PushState, PushStored, RecordFilter, Resolution, ResolveStored, StoredLeaf, StoredRecord,
    Write,
};
use crate::store::{now_unix, StoreError};
use coffer_protocol::sync::{LikelyDuplicate, ProvisionalAuthor, Resolved};

const RECORD_COLUMNS: &str = "app, collection, record_id, seq, revision, base, deleted, {sealed}, \
     body_mac, author, device_id, provisional, leaves, updated_at";

fn record_columns(bodies: bool) -> String {
    RECORD_COLUMNS.replace("{sealed}", if bodies { "sealed" } else { "''::bytea" })
}

fn stored_record(r: &tokio_postgres::Row) -> StoredRecord {
    StoredRecord {
        app: r.get(0),
        collection: r.get(1),
        id: r.get(2),
        seq: r.get(3),
        revision: r.get(4),
        base: r.get(5),
        deleted: r.get(6),
        sealed: r.get(7),
        body_mac: r.get(8),
        author: r.get(9),
        device_id: r.get(10),
        provisional: r.get(11),
        leaves: r.get(12),
        updated_at: r.get(13),
    }
}

const LEAF_COLUMNS: &str =
    "l.collection, l.record_id, l.revision, l.base, l.deleted, l.sealed, l.author";

fn stored_leaf(r: &tokio_postgres::Row) -> StoredLeaf {
    StoredLeaf {
        collection: r.get(0),
        id: r.get(1),
        revision: r.get(2),
        base: r.get(3),
        deleted: r.get(4),
        sealed: r.get(5),
        author: r.get(6),
    }
}

/// The counter of (org, app), made on first use, locked until the
/// transaction ends; its last sequence.
async fn counter(
    tx: &deadpool_postgres::Transaction<'_>,
    org_id: i64,
    app: &str,
) -> Result<i64, StoreError> {
    let op = "reading the sync counter";
    tx.execute(
        "INSERT INTO sync_counters (org_id, app, last_seq, floor) VALUES ($1, $2, 0, 0)
         ON CONFLICT (org_id, app) DO NOTHING",
        &[&org_id, &app],
    )
    .await
    .map_err(pg(op))?;
    Ok(tx
        .query_one(
            "SELECT last_seq FROM sync_counters WHERE org_id = $1 AND app = $2 FOR UPDATE",
            &[&org_id, &app],
        )
        .await
        .map_err(pg(op))?
        .get(0))
}

async fn set_counter(
    tx: &deadpool_postgres::Transaction<'_>,
    org_id: i64,
    app: &str,
    last: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE sync_counters SET last_seq = $3 WHERE org_id = $1 AND app = $2",
        &[&org_id, &app, &last],
    )
    .await
    .map(|_| ())
    .map_err(pg("advancing the sync counter"))
}

async fn log_change(
    tx: &deadpool_postgres::Transaction<'_>,
    org_id: i64,
    app: &str,
    seq: i64,
    key: (&str, &str),
    revision: &str,
    now: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO sync_changes (org_id, app, seq, collection, record_id, revision, at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[&org_id, &app, &seq, &key.0, &key.1, &revision, &now],
    )
    .await
    .map(|_| ())
    .map_err(pg("logging a change"))
}

impl PostgresStore {
    pub(in crate::store) async fn org_data_key(
        &self,
        org_id: i64,
    ) -> Result<Option<String>, StoreError> {
        let op = "reading a data key";
        let client = self.client(op).await?;
        Ok(client
            .query_opt(
                "SELECT sealed_key FROM org_data_keys WHERE org_id = $1",
                &[&org_id],
            )
            .await
            .map_err(pg(op))?
            .map(|r| r.get(0)))
    }

    pub(in crate::store) async fn add_org_data_key(
        &self,
        org_id: i64,
        sealed: &str,
    ) -> Result<(), StoreError> {
        let op = "storing a data key";
        let client = self.client(op).await?;
        client
            .execute(
                "INSERT INTO org_data_keys (org_id, sealed_key, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (org_id) DO NOTHING",
                &[&org_id, &sealed, &now_unix()],
            )
            .await
            .map(|_| ())
            .map_err(pg(op))
    }

    pub(in crate::store) async fn record_escrow_release(
        &self,
        device_id: i64,
        user_id: i64,
    ) -> Result<(), StoreError> {
        let op = "recording an escrow release";
        let client = self.client(op).await?;
        client
            .execute(
                "INSERT INTO escrow_releases (device_id, user_id, released_at) VALUES ($1, $2, $3)
                 ON CONFLICT (device_id, user_id) DO UPDATE SET released_at = excluded.released_at",
                &[&device_id, &user_id, &now_unix()],
            )
            .await
            .map(|_| ())
            .map_err(pg(op))
    }

    pub(in crate::store) async fn sync_push(
        &self,
        push: NewPush,
    ) -> Result<PushStored, StoreError> {
        let op = "storing a push";
        let mut client = self.client(op).await?;
        let tx = client.transaction().await.map_err(pg(op))?;
        let now = now_unix();
        // The placeholder first: an identical push in another transaction
        // waits here on the key until this one commits, then reads the
        // answer.
        let inserted = tx
            .execute(
                "INSERT INTO sync_batches (org_id, app, batch_id, digest, answer, created_at)
                 VALUES ($1, $2, $3, $4, NULL, $5) ON CONFLICT (org_id, app, batch_id) DO NOTHING",
                &[&push.org_id, &push.app, &push.batch_id, &push.digest, &now],
            )
            .await
            .map_err(pg(op))?;
        if inserted == 0 {
            let row = tx
                .query_one(
                    "SELECT digest, answer FROM sync_batches WHERE org_id = $1 AND app = $2 AND batch_id = $3",
                    &[&push.org_id, &push.app, &push.batch_id],
                )
                .await
                .map_err(pg(op))?;
            let (digest, answer): (String, Option<String>) = (row.get(0), row.get(1));
            return Ok(match answer {
                Some(answer) if digest == push.digest => PushStored::Answer(answer),
                _ => PushStored::BatchConflict,
            });
        }
        let last = counter(&tx, push.org_id, &push.app).await?;
        let mut state = PushState::default();
        let (collections, ids): (Vec<String>, Vec<String>) = push.keys().into_iter().unzip();
        let rows = tx
            .query(
                "SELECT r.collection, r.record_id, r.revision, r.base, r.deleted,
                        coalesce((SELECT array_agg(l.revision ORDER BY l.created_at, l.revision)
                                  FROM sync_leaves l WHERE l.org_id = r.org_id AND l.app = r.app
                                  AND l.collection = r.collection AND l.record_id = r.record_id), '{}'),
                        r.device_id, r.provisional,
                        coalesce((SELECT array_agg(coalesce(l.device_id, 0) ORDER BY l.created_at, l.revision)
                                  FROM sync_leaves l WHERE l.org_id = r.org_id AND l.app = r.app
                                  AND l.collection = r.collection AND l.record_id = r.record_id), '{}')
                 FROM sync_records r JOIN unnest($3::text[], $4::text[]) AS k (c, i)
                     ON r.collection = k.c AND r.record_id = k.i
                 WHERE r.org_id = $1 AND r.app = $2",
                &[&push.org_id, &push.app, &collections, &ids],
            )
            .await
            .map_err(pg(op))?;
        for r in rows {
            let base: Option<String> = r.get(3);
            let leaves: Vec<String> = r.get(5);
            let leaf_devices: Vec<i64> = r.get(8);
            for (leaf, device) in leaves.iter().zip(&leaf_devices) {
                if *device != 0 {
                    state.leaf_devices.insert(leaf.clone(), *device);
                }
            }
            state.heads.insert(
                (r.get(0), r.get(1)),
                Head {
                    revision: revision(r.get(2))?,
                    base: base.as_deref().map(revision).transpose()?,
                    deleted: r.get(4),
                    leaves: leaves
                        .iter()
                        .map(|l| revision(l))
                        .collect::<Result<_, _>>()?,
                    device_id: r.get(6),
                    provisional: r.get(7),
                },
            );
        }
        let revs = push.revisions();
        for r in tx
            .query(
                "SELECT revision, digest FROM sync_revisions
                 WHERE org_id = $1 AND app = $2 AND revision = ANY($3)",
                &[&push.org_id, &push.app, &revs],
            )
            .await
            .map_err(pg(op))?
        {
            state.revisions.insert(r.get(0), r.get(1));
        }
        let authors = push.authors();
        for r in tx
            .query(
                "SELECT a FROM unnest($3::text[]) AS t (a) WHERE
                     EXISTS (SELECT 1 FROM sync_bindings WHERE org_id = $1 AND device_id = $2 AND author = a)
                     OR EXISTS (SELECT 1 FROM escrow_releases er JOIN users u ON u.id = er.user_id
                                JOIN memberships m ON m.user_id = u.id AND m.org_id = $1
                                WHERE er.device_id = $2 AND u.name = a)",
                &[&push.org_id, &push.device_id, &authors],
            )
            .await
            .map_err(pg(op))?
        {
            state.verified.insert(r.get(0));
        }
        // The blobs the batch references, each bumped and locked until the
        // push commits: a garbage collection's DELETE of one waits, then
        // sees the new `last_referenced_at` and keeps it.
        let files = push.files();
        if !files.is_empty() {
            for r in tx
                .query(
                    "UPDATE sync_blobs SET last_referenced_at = greatest(last_referenced_at, $4)
                     WHERE org_id = $1 AND app = $2 AND sha256 = ANY($3) RETURNING sha256, size",
                    &[&push.org_id, &push.app, &files, &now],
                )
                .await
                .map_err(pg(op))?
            {
                state.blobs.insert(r.get(0), r.get(1));
            }
        }
        let plan = plan(&push, &state, last);
        self.write_push(&tx, &push, &plan.writes, now).await?;
        set_counter(&tx, push.org_id, &push.app, plan.last_seq).await?;
        tx.execute(
            "UPDATE sync_batches SET answer = $4 WHERE org_id = $1 AND app = $2 AND batch_id = $3",
            &[&push.org_id, &push.app, &push.batch_id, &plan.answer],
        )
        .await
        .map_err(pg(op))?;
        let answer = plan.answer;
        tx.commit().await.map_err(pg(op))?;
        Ok(PushStored::Answer(answer))
    }

    /// The plan's writes, one statement per kind.
    async fn write_push(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        push: &NewPush,
        writes: &[Write<'_>],
        now: i64,
    ) -> Result<(), StoreError> {
        let op = "storing a push";
        // Resolved leaves.
        let (mut rc, mut ri, mut rr) = (Vec::new(), Vec::new(), Vec::new());
        // Heads.
        let mut h = HeadColumns::default();
        // Leaves, and the records they bump.
        let mut l = HeadColumns::default();
        // Every change, and every revision.
        let (mut cs, mut cc, mut ci, mut cr, mut cd) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for write in writes {
            let o = write.op();
            match write {
                Write::Head {
                    seq,
                    provisional,
                    removed,
                    leaves_left,
                    ..
                } => {
                    for leaf in removed {
                        rc.push(o.collection.as_str());
                        ri.push(o.id.as_str());
                        rr.push(leaf.to_string());
                    }
                    h.push(o, *seq, *provisional, *leaves_left);
                }
                Write::Leaf {
                    seq,
                    provisional,
                    replaces,
                    ..
                } => {
                    // Earlier leaves of the same device's origin go (in the
                    // DELETE below, before the new leaf is inserted).
                    for leaf in replaces {
                        rc.push(o.collection.as_str());
                        ri.push(o.id.as_str());
                        rr.push(leaf.to_string());
                    }
                    // The leaves column of a leaf row: how many it replaces,
                    // negated (the record's count moves by 1 minus that).
                    let replaced = i64::try_from(replaces.len()).unwrap_or(0);
                    l.push(o, *seq, *provisional, -replaced);
                }
            }
            cs.push(write.seq());
            cc.push(o.collection.as_str());
            ci.push(o.id.as_str());
            cr.push(o.revision.to_string());
            cd.push(o.digest.as_str());
        }
        if !rr.is_empty() {
            tx.execute(
                "DELETE FROM sync_leaves l USING unnest($3::text[], $4::text[], $5::text[]) AS t (c, i, r)
                 WHERE l.org_id = $1 AND l.app = $2 AND l.collection = t.c AND l.record_id = t.i
                     AND l.revision = t.r",
                &[&push.org_id, &push.app, &rc, &ri, &rr],
            )
            .await
            .map_err(pg(op))?;
        }
        if !h.seq.is_empty() {
            let params: [&(dyn ToSql + Sync); 15] = [
                &push.org_id,
                &push.app,
                &push.device_id,
                &now,
                &h.collection,
                &h.id,
                &h.seq,
                &h.revision,
                &h.base,
                &h.deleted,
                &h.sealed,
                &h.mac,
                &h.author,
                &h.provisional,
                &h.leaves,
            ];
            tx.execute(
                "INSERT INTO sync_records (org_id, app, collection, record_id, seq, revision, base, deleted,
                     sealed, body_mac, author, device_id, provisional, leaves, updated_at, changed_at)
                 SELECT $1, $2, c, i, s, r, b, d, x, m, a, $3, p, n, $4, $4
                 FROM unnest($5::text[], $6::text[], $7::int8[], $8::text[], $9::text[], $10::bool[],
                             $11::bytea[], $12::text[], $13::text[], $14::bool[], $15::int8[])
                     AS t (c, i, s, r, b, d, x, m, a, p, n)
                 ON CONFLICT (org_id, app, collection, record_id) DO UPDATE SET
                     seq = excluded.seq, revision = excluded.revision, base = excluded.base,
                     deleted = excluded.deleted, sealed = excluded.sealed, body_mac = excluded.body_mac,
                     author = excluded.author, device_id = excluded.device_id,
                     provisional = excluded.provisional, leaves = excluded.leaves,
                     updated_at = excluded.updated_at, changed_at = excluded.changed_at",
                &params,
            )
            .await
            .map_err(pg(op))?;
        }
        if !l.seq.is_empty() {
            tx.execute(
                "INSERT INTO sync_leaves (org_id, app, collection, record_id, revision, base, deleted,
                     sealed, author, device_id, provisional, created_at)
                 SELECT $1, $2, c, i, r, b, d, x, a, $3, p, $4
                 FROM unnest($5::text[], $6::text[], $7::text[], $8::text[], $9::bool[], $10::bytea[],
                             $11::text[], $12::bool[]) AS t (c, i, r, b, d, x, a, p)",
                &[
                    &push.org_id,
                    &push.app,
                    &push.device_id,
                    &now,
                    &l.collection,
                    &l.id,
                    &l.revision,
                    &l.base,
                    &l.deleted,
                    &l.sealed,
                    &l.author,
                    &l.provisional,
                ],
            )
            .await
            .map_err(pg(op))?;
            tx.execute(
                "UPDATE sync_records r SET seq = t.s, leaves = r.leaves + 1 + t.n, changed_at = $3
                 FROM unnest($4::text[], $5::text[], $6::int8[], $7::int8[]) AS t (c, i, s, n)
                 WHERE r.org_id = $1 AND r.app = $2 AND r.collection = t.c AND r.record_id = t.i",
                &[
                    &push.org_id,
                    &push.app,
                    &now,
                    &l.collection,
                    &l.id,
                    &l.seq,
                    &l.leaves,
                ],
            )
            .await
            .map_err(pg(op))?;
        }
        if !cs.is_empty() {
            refresh_file_refs(tx, push.org_id, &push.app, writes).await?;
            tx.execute(
                "INSERT INTO sync_changes (org_id, app, seq, collection, record_id, revision, at)
                 SELECT $1, $2, s, c, i, r, $3
                 FROM unnest($4::int8[], $5::text[], $6::text[], $7::text[]) AS t (s, c, i, r)",
                &[&push.org_id, &push.app, &now, &cs, &cc, &ci, &cr],
            )
            .await
            .map_err(pg(op))?;
            tx.execute(
                "INSERT INTO sync_revisions (org_id, app, revision, digest)
                 SELECT $1, $2, r, d FROM unnest($3::text[], $4::text[]) AS t (r, d)",
                &[&push.org_id, &push.app, &cr, &cd],
            )
            .await
            .map_err(pg(op))?;
        }
        Ok(())
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
        let mut client = self.client(op).await?;
        // One snapshot for the whole page.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg(op))?;
        let (last, floor): (i64, i64) = tx
            .query_opt(
                "SELECT last_seq, floor FROM sync_counters WHERE org_id = $1 AND app = $2",
                &[&org_id, &app],
            )
            .await
            .map_err(pg(op))?
            .map_or((0, 0), |r| (r.get(0), r.get(1)));
        // Expired: a tombstone was dropped above the reader's sequence
        // since the floor its cursor carries; or the cursor is ahead of the
        // feed (another database, a restored one).
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
            .query(
                // A record's size in a page counts its leaves: they travel
                // with it.
                "SELECT r.seq, (octet_length(r.sealed) + CASE WHEN r.leaves > 0 THEN
                     (SELECT coalesce(sum(octet_length(l.sealed)), 0) FROM sync_leaves l
                      WHERE l.org_id = r.org_id AND l.app = r.app
                        AND l.collection = r.collection AND l.record_id = r.record_id)
                     ELSE 0 END)::int8
                 FROM sync_records r
                 WHERE r.org_id = $1 AND r.app = $2 AND r.seq > $3 AND NOT r.provisional
                 ORDER BY r.seq LIMIT $4",
                &[&org_id, &app, &after, &(limit + 1)],
            )
            .await
            .map_err(pg(op))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let (upto, more) = crate::store::sync::page_cut(&sizes, limit, max_bytes);
        let Some(upto) = upto else {
            return Ok(PullPage::Page {
                records: Vec::new(),
                leaves: Vec::new(),
                more: false,
                floor,
            });
        };
        let records = tx
            .query(
                &format!(
                    "SELECT {} FROM sync_records
                     WHERE org_id = $1 AND app = $2 AND seq > $3 AND seq <= $4 AND NOT provisional
                     ORDER BY seq",
                    record_columns(true)
                ),
                &[&org_id, &app, &after, &upto],
            )
            .await
            .map_err(pg(op))?
            .iter()
            .map(stored_record)
            .collect();
        let leaves = tx
            .query(
                &format!(
                    "SELECT {LEAF_COLUMNS} FROM sync_leaves l JOIN sync_records r
                         ON r.org_id = l.org_id AND r.app = l.app AND r.collection = l.collection
                         AND r.record_id = l.record_id
                     WHERE r.org_id = $1 AND r.app = $2 AND r.seq > $3 AND r.seq <= $4
                         AND NOT r.provisional AND (NOT l.provisional OR l.device_id = $5)
                     ORDER BY l.created_at, l.revision"
                ),
                &[&org_id, &app, &after, &upto, &device_id],
            )
            .await
            .map_err(pg(op))?
            .iter()
            .map(stored_leaf)
            .collect();
        tx.commit().await.map_err(pg(op))?;
        Ok(PullPage::Page {
            records,
            leaves,
            more,
            floor,
        })
    }

    pub(in crate::store) async fn sync_records(
        &self,
        org_id: i64,
        filter: RecordFilter,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let op = "listing records";
        let client = self.client(op).await?;
        let (aa, ac, ai) = filter.after.clone().unwrap_or_default();
        let rows = client
            .query(
                &format!(
                    "SELECT {} FROM sync_records
                     WHERE org_id = $1 AND ($2::text IS NULL OR app = $2)
                         AND ($3::text IS NULL OR collection = $3)
                         AND ($4::bool IS NULL OR (leaves > 0) = $4)
                         AND ($5::bool IS NULL OR provisional = $5)
                         AND (NOT $6 OR (app COLLATE \"C\", collection COLLATE \"C\", record_id COLLATE \"C\")
                                        > ($7::text COLLATE \"C\", $8::text COLLATE \"C\", $9::text COLLATE \"C\"))
                     ORDER BY app COLLATE \"C\", collection COLLATE \"C\", record_id COLLATE \"C\" LIMIT $10",
                    record_columns(filter.bodies)
                ),
                &[
                    &org_id,
                    &filter.app,
                    &filter.collection,
                    &filter.conflicts,
                    &filter.provisional,
                    &filter.after.is_some(),
                    &aa,
                    &ac,
                    &ai,
                    &filter.limit,
                ],
            )
            .await
            .map_err(pg(op))?;
        Ok(rows.iter().map(stored_record).collect())
    }

    pub(in crate::store) async fn sync_record(
        &self,
        org_id: i64,
        app: String,
        collection: String,
        id: String,
    ) -> Result<Option<(StoredRecord, Vec<StoredLeaf>)>, StoreError> {
        let op = "reading a record";
        let mut client = self.client(op).await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg(op))?;
        let Some(record) = tx
            .query_opt(
                &format!(
                    "SELECT {} FROM sync_records
                     WHERE org_id = $1 AND app = $2 AND collection = $3 AND record_id = $4",
                    record_columns(true)
                ),
                &[&org_id, &app, &collection, &id],
            )
            .await
            .map_err(pg(op))?
            .map(|r| stored_record(&r))
        else {
            return Ok(None);
        };
        let leaves = tx
            .query(
                &format!(
                    "SELECT {LEAF_COLUMNS} FROM sync_leaves l
                     WHERE l.org_id = $1 AND l.app = $2 AND l.collection = $3 AND l.record_id = $4
                     ORDER BY l.created_at, l.revision"
                ),
                &[&org_id, &app, &collection, &id],
            )
            .await
            .map_err(pg(op))?
            .iter()
            .map(stored_leaf)
            .collect();
        tx.commit().await.map_err(pg(op))?;
        Ok(Some((record, leaves)))
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
        let client = self.client(op).await?;
        Ok(client
            .query(
                "SELECT collection, record_id, provisional FROM sync_records
                 WHERE org_id = $1 AND app = $2 AND collection = $3 AND body_mac = $4 AND record_id <> $5
                 ORDER BY record_id COLLATE \"C\" LIMIT 100",
                &[&org_id, &app, &collection, &mac, &id],
            )
            .await
            .map_err(pg(op))?
            .iter()
            .map(|r| LikelyDuplicate {
                collection: r.get(0),
                id: r.get(1),
                provisional: r.get(2),
            })
            .collect())
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
        let mut client = self.client(op).await?;
        let tx = client.transaction().await.map_err(pg(op))?;
        // The counter first: the same lock order as a push.
        let seq = counter(&tx, org_id, &app).await? + 1;
        let Some(head) = tx
            .query_opt(
                "SELECT revision FROM sync_records
                 WHERE org_id = $1 AND app = $2 AND collection = $3 AND record_id = $4",
                &[&org_id, &app, &collection, &id],
            )
            .await
            .map_err(pg(op))?
            .map(|r| r.get::<_, String>(0))
        else {
            return Ok(ResolveStored::NotFound);
        };
        let leaves: Vec<String> = tx
            .query(
                "SELECT revision FROM sync_leaves
                 WHERE org_id = $1 AND app = $2 AND collection = $3 AND record_id = $4
                 ORDER BY created_at, revision",
                &[&org_id, &app, &collection, &id],
            )
            .await
            .map_err(pg(op))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if leaves.is_empty() {
            return Ok(ResolveStored::NotInConflict);
        }
        if head != resolution.expected_head || !same_set(&leaves, &resolution.expected_leaves) {
            return Ok(ResolveStored::Changed);
        }
        let rev = server_revision(seq)?;
        let (sealed, mac) = (resolution.seal)(&rev)?;
        let now = now_unix();
        tx.execute(
            "DELETE FROM sync_leaves WHERE org_id = $1 AND app = $2 AND collection = $3 AND record_id = $4",
            &[&org_id, &app, &collection, &id],
        )
        .await
        .map_err(pg(op))?;
        tx.execute(
            "UPDATE sync_records SET seq = $5, revision = $6, base = $7, deleted = $8, sealed = $9,
                 body_mac = $10, author = $11, device_id = NULL, provisional = FALSE, leaves = 0,
                 updated_at = $12, changed_at = $12
             WHERE org_id = $1 AND app = $2 AND collection = $3 AND record_id = $4",
            &[
                &org_id,
                &app,
                &collection,
                &id,
                &seq,
                &rev.to_string(),
                &head,
                &resolution.deleted,
                &sealed,
                &mac,
                &resolution.author,
                &now,
            ],
        )
        .await
        .map_err(pg(op))?;
        tx.execute(
            "DELETE FROM sync_file_refs WHERE org_id = $1 AND app = $2 AND collection = $3 AND record_id = $4",
            &[&org_id, &app, &collection, &id],
        )
        .await
        .map_err(pg(op))?;
        tx.execute(
            "INSERT INTO sync_file_refs (org_id, app, collection, record_id, revision, sha256)
             SELECT $1, $2, $3, $4, $5, s FROM unnest($6::text[]) AS t (s) ON CONFLICT DO NOTHING",
            &[
                &org_id,
                &app,
                &collection,
                &id,
                &rev.to_string(),
                &resolution.files,
            ],
        )
        .await
        .map_err(pg(op))?;
        log_change(
            &tx,
            org_id,
            &app,
            seq,
            (&collection, &id),
            &rev.to_string(),
            now,
        )
        .await?;
        set_counter(&tx, org_id, &app, seq).await?;
        tx.commit().await.map_err(pg(op))?;
        Ok(ResolveStored::Resolved(Resolved {
            revision: rev,
            seq: u64::try_from(seq).unwrap_or(0),
            resolved: leaves
                .iter()
                .map(|l| revision(l))
                .collect::<Result<_, _>>()?,
        }))
    }

    pub(in crate::store) async fn sync_authors(
        &self,
        org_id: i64,
    ) -> Result<Vec<ProvisionalAuthor>, StoreError> {
        let op = "listing provisional authors";
        let client = self.client(op).await?;
        Ok(client
            .query(
                "SELECT device_id, author, count(*) FROM (
                     SELECT device_id, author FROM sync_records WHERE org_id = $1 AND provisional
                     UNION ALL
                     SELECT device_id, author FROM sync_leaves WHERE org_id = $1 AND provisional) AS p
                 WHERE device_id IS NOT NULL
                 GROUP BY device_id, author ORDER BY device_id, author COLLATE \"C\"",
                &[&org_id],
            )
            .await
            .map_err(pg(op))?
            .iter()
            .map(|r| ProvisionalAuthor {
                device_id: r.get(0),
                author: r.get(1),
                records: u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
            })
            .collect())
    }

    pub(in crate::store) async fn sync_bind(
        &self,
        org_id: i64,
        device_id: i64,
        author: String,
        user_id: i64,
    ) -> Result<BindStored, StoreError> {
        let op = "binding an author";
        let mut client = self.client(op).await?;
        let tx = client.transaction().await.map_err(pg(op))?;
        let row = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM devices WHERE id = $2 AND org_id = $1),
                        EXISTS (SELECT 1 FROM memberships WHERE user_id = $3 AND org_id = $1)",
                &[&org_id, &device_id, &user_id],
            )
            .await
            .map_err(pg(op))?;
        if !row.get::<_, bool>(0) {
            return Ok(BindStored::NoDevice);
        }
        if !row.get::<_, bool>(1) {
            return Ok(BindStored::NoUser);
        }
        let now = now_unix();
        tx.execute(
            "INSERT INTO sync_bindings (org_id, device_id, author, user_id, bound_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (org_id, device_id, author) DO UPDATE SET user_id = excluded.user_id, bound_at = excluded.bound_at",
            &[&org_id, &device_id, &author, &user_id, &now],
        )
        .await
        .map_err(pg(op))?;
        // The apps concerned, their counters locked in name order (the
        // same order every binder takes them), before reading records.
        let apps: Vec<String> = tx
            .query(
                "SELECT DISTINCT app FROM (
                     SELECT app FROM sync_records WHERE org_id = $1 AND provisional AND device_id = $2 AND author = $3
                     UNION SELECT app FROM sync_leaves WHERE org_id = $1 AND provisional AND device_id = $2 AND author = $3) AS a
                 ORDER BY 1",
                &[&org_id, &device_id, &author],
            )
            .await
            .map_err(pg(op))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut published = 0u64;
        let mut duplicates = Vec::new();
        for app in &apps {
            let mut last = counter(&tx, org_id, app).await?;
            let touched: Vec<(String, String, bool)> = tx
                .query(
                    "SELECT collection, record_id, coalesce(provisional AND device_id = $3 AND author = $4, FALSE)
                     FROM sync_records r WHERE org_id = $1 AND app = $2 AND (
                         (provisional AND device_id = $3 AND author = $4)
                         OR EXISTS (SELECT 1 FROM sync_leaves l WHERE l.org_id = r.org_id AND l.app = r.app
                             AND l.collection = r.collection AND l.record_id = r.record_id
                             AND l.provisional AND l.device_id = $3 AND l.author = $4))
                     ORDER BY seq",
                    &[&org_id, app, &device_id, &author],
                )
                .await
                .map_err(pg(op))?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
            tx.execute(
                "UPDATE sync_leaves SET provisional = FALSE
                 WHERE org_id = $1 AND app = $2 AND device_id = $3 AND author = $4",
                &[&org_id, app, &device_id, &author],
            )
            .await
            .map_err(pg(op))?;
            for (collection, id, head_provisional) in &touched {
                last += 1;
                let row = tx
                    .query_one(
                        "UPDATE sync_records SET seq = $5, changed_at = $6,
                             provisional = CASE WHEN $7 THEN FALSE ELSE provisional END
                         WHERE org_id = $1 AND app = $2 AND collection = $3 AND record_id = $4
                         RETURNING revision, body_mac, provisional",
                        &[&org_id, app, collection, id, &last, &now, head_provisional],
                    )
                    .await
                    .map_err(pg(op))?;
                let (revision, mac, still): (String, Option<String>, bool) =
                    (row.get(0), row.get(1), row.get(2));
                log_change(&tx, org_id, app, last, (collection, id), &revision, now).await?;
                if *head_provisional {
                    published += 1;
                }
                if let (Some(mac), false) = (mac, still) {
                    let others: i64 = tx
                        .query_one(
                            "SELECT count(*) FROM sync_records WHERE org_id = $1 AND app = $2
                             AND collection = $3 AND body_mac = $4 AND record_id <> $5",
                            &[&org_id, app, collection, &mac, id],
                        )
                        .await
                        .map_err(pg(op))?
                        .get(0);
                    if others > 0 {
                        duplicates.push(LikelyDuplicate {
                            collection: collection.clone(),
                            id: id.clone(),
                            provisional: false,
                        });
                    }
                }
            }
            set_counter(&tx, org_id, app, last).await?;
        }
        tx.commit().await.map_err(pg(op))?;
        Ok(BindStored::Bound {
            published,
            duplicates,
        })
    }

    pub(in crate::store) async fn sync_orgs(&self) -> Result<Vec<i64>, StoreError> {
        let op = "listing organizations that sync";
        let client = self.client(op).await?;
        Ok(client
            .query(
                "SELECT DISTINCT org_id FROM sync_counters ORDER BY org_id",
                &[],
            )
            .await
            .map_err(pg(op))?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    pub(in crate::store) async fn compact_sync_org(
        &self,
        org_id: i64,
        cutoff: i64,
    ) -> Result<Compacted, StoreError> {
        let op = "compacting sync";
        let mut client = self.client(op).await?;
        let tx = client.transaction().await.map_err(pg(op))?;
        // Every counter of the organization locked, in app order: no push
        // assigns a sequence meanwhile.
        tx.execute(
            "SELECT 1 FROM sync_counters WHERE org_id = $1 ORDER BY app COLLATE \"C\" FOR UPDATE",
            &[&org_id],
        )
        .await
        .map_err(pg(op))?;
        tx.execute(
            "UPDATE sync_counters c SET floor = greatest(c.floor, coalesce((
                 SELECT max(seq) FROM sync_records r WHERE r.org_id = c.org_id AND r.app = c.app
                     AND r.deleted AND r.leaves = 0 AND r.changed_at < $2), 0))
             WHERE c.org_id = $1",
            &[&org_id, &cutoff],
        )
        .await
        .map_err(pg(op))?;
        let tombstones = tx
            .execute(
                "DELETE FROM sync_records WHERE org_id = $1 AND deleted AND leaves = 0 AND changed_at < $2",
                &[&org_id, &cutoff],
            )
            .await
            .map_err(pg(op))?;
        // The references of the records just dropped go with them.
        tx.execute(
            "DELETE FROM sync_file_refs f WHERE f.org_id = $1 AND NOT EXISTS (
                 SELECT 1 FROM sync_records r WHERE r.org_id = f.org_id AND r.app = f.app
                     AND r.collection = f.collection AND r.record_id = f.record_id)",
            &[&org_id],
        )
        .await
        .map_err(pg(op))?;
        let changes = tx
            .execute(
                "DELETE FROM sync_changes WHERE org_id = $1 AND at < $2",
                &[&org_id, &cutoff],
            )
            .await
            .map_err(pg(op))?;
        let batches = tx
            .execute(
                "DELETE FROM sync_batches WHERE org_id = $1 AND created_at < $2",
                &[&org_id, &cutoff],
            )
            .await
            .map_err(pg(op))?;
        tx.commit().await.map_err(pg(op))?;
        Ok(Compacted {
            tombstones,
            changes,
            batches,
        })
    }
}

/// Keeps `sync_file_refs` of the records a push wrote in step with them:
/// the references of revisions that are neither a head nor a leaf any
/// more go, and those of each new head or leaf come.
async fn refresh_file_refs(
    tx: &deadpool_postgres::Transaction<'_>,
    org_id: i64,
    app: &str,
    writes: &[Write<'_>],
) -> Result<(), StoreError> {
    let op = "keeping file references";
    let (mut kc, mut ki) = (Vec::new(), Vec::new());
    let (mut fc, mut fi, mut fr, mut fs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for write in writes {
        let o = write.op();
        kc.push(o.collection.as_str());
        ki.push(o.id.as_str());
        for (sha, _) in &o.files {
            fc.push(o.collection.as_str());
            fi.push(o.id.as_str());
            fr.push(o.revision.to_string());
            fs.push(sha.as_str());
        }
    }
    tx.execute(
        "DELETE FROM sync_file_refs f USING unnest($3::text[], $4::text[]) AS t (c, i)
         WHERE f.org_id = $1 AND f.app = $2 AND f.collection = t.c AND f.record_id = t.i
             AND NOT EXISTS (SELECT 1 FROM sync_records r WHERE r.org_id = f.org_id AND r.app = f.app
                 AND r.collection = f.collection AND r.record_id = f.record_id AND r.revision = f.revision)
             AND NOT EXISTS (SELECT 1 FROM sync_leaves l WHERE l.org_id = f.org_id AND l.app = f.app
                 AND l.collection = f.collection AND l.record_id = f.record_id AND l.revision = f.revision)",
        &[&org_id, &app, &kc, &ki],
    )
    .await
    .map_err(pg(op))?;
    if !fs.is_empty() {
        tx.execute(
            "INSERT INTO sync_file_refs (org_id, app, collection, record_id, revision, sha256)
             SELECT $1, $2, c, i, r, s FROM unnest($3::text[], $4::text[], $5::text[], $6::text[])
                 AS t (c, i, r, s)
             ON CONFLICT DO NOTHING",
            &[&org_id, &app, &fc, &fi, &fr, &fs],
        )
        .await
        .map_err(pg(op))?;
    }
    Ok(())
}

/// The columns of heads (or leaves) to write, as arrays.
#[derive(Default)]
struct HeadColumns<'a> {
    collection: Vec<&'a str>,
    id: Vec<&'a str>,
    seq: Vec<i64>,
    revision: Vec<String>,
    base: Vec<Option<String>>,
    deleted: Vec<bool>,
    sealed: Vec<&'a [u8]>,
    mac: Vec<Option<&'a str>>,
    author: Vec<&'a str>,
    provisional: Vec<bool>,
    leaves: Vec<i64>,
}

impl<'a> HeadColumns<'a> {
    fn push(&mut self, o: &'a crate::store::SyncOp, seq: i64, provisional: bool, leaves: i64) {
        self.collection.push(&o.collection);
        self.id.push(&o.id);
        self.seq.push(seq);
        self.revision.push(o.revision.to_string());
        self.base.push(o.base.map(|b| b.to_string()));
        self.deleted.push(o.deleted);
        self.sealed.push(&o.sealed);
        self.mac.push(o.body_mac.as_deref());
        self.author.push(&o.author);
        self.provisional.push(provisional);
        self.leaves.push(leaves);
    }
}
