//! The SQLite side of [`crate::store::control`].

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::SqliteStore;
use crate::data::StoredReading;
use crate::store::control::{
    AuditMac, BatchStored, CheckIn, DeviceActivity, NewBatch, NewPolicy, PolicyRecord,
    ReadingQuery, SealedKind, SealedValue, SigningKeyRecord, WipeEnd, WipeEnded, WipeOrder,
};
use crate::store::{db_error, now_unix, StoreError};

const WIPE_COLUMNS: &str =
    "id, device_id, user_name, ordered_by, ordered_at, acknowledged_at, cancelled_at";

fn wipe_order(r: &rusqlite::Row<'_>) -> rusqlite::Result<WipeOrder> {
    Ok(WipeOrder {
        id: r.get(0)?,
        device_id: r.get(1)?,
        user: r.get(2)?,
        ordered_by: r.get(3)?,
        ordered_at: r.get(4)?,
        acknowledged_at: r.get(5)?,
        cancelled_at: r.get(6)?,
    })
}

impl SqliteStore {
    /// The first column of the row `sql` finds, if any.
    async fn one_value<T, P>(
        &self,
        op: &'static str,
        sql: &'static str,
        params: P,
    ) -> Result<Option<T>, StoreError>
    where
        T: rusqlite::types::FromSql + Send + 'static,
        P: rusqlite::Params + Send + 'static,
    {
        self.with(op, move |conn| {
            conn.query_row(sql, params, |r| r.get(0))
                .optional()
                .map_err(|e| db_error(op)(&e))
        })
        .await
    }

    pub(in crate::store) async fn master_key_check(&self) -> Result<Option<String>, StoreError> {
        let sql = "SELECT sealed FROM master_key_check WHERE id = 1";
        self.one_value("reading the master key check", sql, [])
            .await
    }

    pub(in crate::store) async fn sealed_values(&self) -> Result<Vec<SealedValue>, StoreError> {
        let op = "reading sealed values";
        self.with(op, move |conn| {
            let e = db_error(op);
            let mut out = Vec::new();
            for (kind, sql) in [
                (
                    SealedKind::OrgSigningKey,
                    "SELECT org_id, sealed_seed FROM org_signing_keys",
                ),
                (
                    SealedKind::Escrow,
                    "SELECT device_id, sealed_key FROM escrow_keys",
                ),
                (
                    SealedKind::OrgDataKey,
                    "SELECT org_id, sealed_key FROM org_data_keys",
                ),
            ] {
                let mut stmt = conn.prepare(sql).map_err(|x| e(&x))?;
                let rows = stmt
                    .query_map([], |r| {
                        Ok(SealedValue {
                            kind,
                            id: r.get(0)?,
                            sealed: r.get(1)?,
                        })
                    })
                    .map_err(|x| e(&x))?;
                for row in rows {
                    out.push(row.map_err(|x| e(&x))?);
                }
            }
            Ok(out)
        })
        .await
    }

    pub(in crate::store) async fn reseal(
        &self,
        values: Vec<(SealedValue, String)>,
        audit_macs: Vec<AuditMac>,
        old_check: Option<String>,
        new_check: &str,
    ) -> Result<bool, StoreError> {
        let op = "re-sealing under the new master key";
        let new_check = new_check.to_owned();
        self.with(op, move |conn| {
            let e = db_error(op);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|x| e(&x))?;
            for (old, new) in values {
                let sql = match old.kind {
                    SealedKind::OrgSigningKey => {
                        "UPDATE org_signing_keys SET sealed_seed = ?3 WHERE org_id = ?1 AND sealed_seed = ?2"
                    }
                    SealedKind::Escrow => {
                        "UPDATE escrow_keys SET sealed_key = ?3 WHERE device_id = ?1 AND sealed_key = ?2"
                    }
                    SealedKind::OrgDataKey => {
                        "UPDATE org_data_keys SET sealed_key = ?3 WHERE org_id = ?1 AND sealed_key = ?2"
                    }
                };
                tx.execute(sql, params![old.id, old.sealed, new])
                    .map_err(|x| e(&x))?;
            }
            for mac in audit_macs {
                tx.execute(
                    "UPDATE audit_events SET mac = ?3 WHERE id = ?1 AND mac IS ?2",
                    params![mac.id, mac.old, mac.new],
                )
                .map_err(|x| e(&x))?;
            }
            let swapped = match old_check {
                None => tx.execute(
                    "INSERT INTO master_key_check (id, sealed) VALUES (1, ?1)
                     ON CONFLICT (id) DO NOTHING",
                    [new_check],
                ),
                Some(old) => tx.execute(
                    "UPDATE master_key_check SET sealed = ?2 WHERE id = 1 AND sealed = ?1",
                    [old, new_check],
                ),
            }
            .map_err(|x| e(&x))?
                == 1;
            if swapped {
                tx.commit().map_err(|x| e(&x))?;
            }
            Ok(swapped)
        })
        .await
    }

    pub(in crate::store) async fn foreign_audit_macs(
        &self,
        prefix: &str,
    ) -> Result<i64, StoreError> {
        let op = "counting audit MACs";
        let prefix = prefix.to_owned();
        self.with(op, move |conn| {
            conn.query_row(
                "SELECT count(*) FROM audit_events WHERE mac IS NOT NULL AND substr(mac, 1, length(?1)) <> ?1",
                [prefix],
                |r| r.get(0),
            )
            .map_err(|e| db_error(op)(&e))
        })
        .await
    }

    pub(in crate::store) async fn device_by_release_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<crate::store::DeviceRecord>, StoreError> {
        let op = "reading a device";
        let token_hash = token_hash.to_owned();
        self.with(op, move |conn| {
            conn.query_row(
                &format!(
                    "SELECT {} FROM devices d
                     JOIN device_release_tokens t ON t.device_id = d.id WHERE t.token_hash = ?1",
                    crate::store::DEVICE_COLUMNS
                ),
                [token_hash],
                super::device_record,
            )
            .optional()
            .map_err(|e| db_error(op)(&e))
        })
        .await
    }

    pub(in crate::store) async fn enrollment_code_org(
        &self,
        code_hash: &str,
    ) -> Result<Option<i64>, StoreError> {
        let sql = "SELECT org_id FROM enrollment_codes WHERE code_hash = ?1 AND used_at IS NULL";
        self.one_value("reading an enrollment code", sql, [code_hash.to_owned()])
            .await
    }

    pub(in crate::store) async fn org_signing_key(
        &self,
        org_id: i64,
    ) -> Result<Option<SigningKeyRecord>, StoreError> {
        let op = "reading a signing key";
        self.with(op, move |conn| {
            conn.query_row(
                "SELECT public_key, sealed_seed FROM org_signing_keys WHERE org_id = ?1",
                [org_id],
                |r| {
                    Ok(SigningKeyRecord {
                        public_key: r.get(0)?,
                        sealed_seed: r.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(|e| db_error(op)(&e))
        })
        .await
    }

    pub(in crate::store) async fn add_org_signing_key(
        &self,
        org_id: i64,
        key: &SigningKeyRecord,
    ) -> Result<(), StoreError> {
        let op = "storing a signing key";
        let key = key.clone();
        self.with(op, move |conn| {
            conn.execute(
                "INSERT INTO org_signing_keys (org_id, public_key, sealed_seed, created_at)
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (org_id) DO NOTHING",
                params![org_id, key.public_key, key.sealed_seed, now_unix()],
            )
            .map(|_| ())
            .map_err(|e| db_error(op)(&e))
        })
        .await
    }

    pub(in crate::store) async fn latest_policy(
        &self,
        org_id: i64,
    ) -> Result<Option<PolicyRecord>, StoreError> {
        let op = "reading the policy";
        self.with(op, move |conn| {
            conn.query_row(
                "SELECT version, document, signature, published_at FROM policies
                 WHERE org_id = ?1 ORDER BY version DESC LIMIT 1",
                [org_id],
                |r| {
                    Ok(PolicyRecord {
                        version: r.get(0)?,
                        document: r.get(1)?,
                        signature: r.get(2)?,
                        published_at: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(|e| db_error(op)(&e))
        })
        .await
    }

    pub(in crate::store) async fn policy_history(
        &self,
        org_id: i64,
        limit: i64,
    ) -> Result<Vec<(PolicyRecord, String)>, StoreError> {
        let op = "listing policies";
        self.with(op, move |conn| {
            let e = db_error(op);
            let mut stmt = conn
                .prepare(
                    "SELECT p.version, p.document, p.signature, p.published_at, u.name
                     FROM policies p JOIN users u ON u.id = p.published_by
                     WHERE p.org_id = ?1 ORDER BY p.version DESC LIMIT ?2",
                )
                .map_err(|x| e(&x))?;
            let rows = stmt
                .query_map(params![org_id, limit], |r| {
                    Ok((
                        PolicyRecord {
                            version: r.get(0)?,
                            document: r.get(1)?,
                            signature: r.get(2)?,
                            published_at: r.get(3)?,
                        },
                        r.get(4)?,
                    ))
                })
                .map_err(|x| e(&x))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(|x| e(&x))
        })
        .await
    }

    pub(in crate::store) async fn publish_policy(&self, p: &NewPolicy) -> Result<(), StoreError> {
        let op = "publishing a policy";
        let p = p.clone();
        self.with(op, move |conn| {
            let e = db_error(op);
            // Immediate: the version check and the insert are one step.
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|x| e(&x))?;
            let current: Option<i64> = tx
                .query_row(
                    "SELECT max(version) FROM policies WHERE org_id = ?1",
                    [p.org_id],
                    |r| r.get(0),
                )
                .map_err(|x| e(&x))?;
            if let Some(current) = current.filter(|c| *c >= p.version) {
                return Err(StoreError::VersionNotNewer { current });
            }
            // One publish must not use up the range (docs/formats/policy.md).
            let latest = current.unwrap_or(0);
            if p.version > latest.saturating_add(coffer_protocol::policy::MAX_POLICY_VERSION_STEP) {
                return Err(StoreError::VersionTooFar { latest });
            }
            tx.execute(
                "INSERT INTO policies (org_id, version, document, signature, published_by, published_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![p.org_id, p.version, p.document, p.signature, p.published_by, now_unix()],
            )
            .map_err(|x| e(&x))?;
            tx.commit().map_err(|x| e(&x))
        })
        .await
    }

    pub(in crate::store) async fn deposit_escrow(
        &self,
        device_id: i64,
        sealed: &str,
    ) -> Result<(), StoreError> {
        let op = "storing an escrow key";
        let sealed = sealed.to_owned();
        self.with(op, move |conn| {
            let e = db_error(op);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|x| e(&x))?;
            let (revoked, wipe_pending): (bool, bool) = tx
                .query_row(
                    "SELECT revoked_at IS NOT NULL,
                            EXISTS (SELECT 1 FROM wipe_orders WHERE device_id = ?1 AND user_name IS NULL
                                    AND acknowledged_at IS NULL AND cancelled_at IS NULL)
                     FROM devices WHERE id = ?1",
                    [device_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(|x| e(&x))?;
            if revoked {
                return Err(StoreError::DeviceRevoked);
            }
            if wipe_pending {
                return Err(StoreError::WipePending);
            }
            tx.execute(
                "INSERT INTO escrow_keys (device_id, sealed_key, deposited_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (device_id) DO UPDATE SET sealed_key = excluded.sealed_key,
                     deposited_at = excluded.deposited_at",
                params![device_id, sealed, now_unix()],
            )
            .map_err(|x| e(&x))?;
            tx.commit().map_err(|x| e(&x))
        })
        .await
    }

    pub(in crate::store) async fn escrow(
        &self,
        device_id: i64,
    ) -> Result<Option<String>, StoreError> {
        let sql = "SELECT sealed_key FROM escrow_keys WHERE device_id = ?1";
        self.one_value("reading an escrow key", sql, [device_id])
            .await
    }

    pub(in crate::store) async fn order_wipe(
        &self,
        org_id: i64,
        device_id: i64,
        user: Option<String>,
        ordered_by: i64,
    ) -> Result<Option<i64>, StoreError> {
        let op = "ordering a wipe";
        self.with(op, move |conn| {
            let e = db_error(op);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|x| e(&x))?;
            let exists: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM devices WHERE id = ?1 AND org_id = ?2)",
                    params![device_id, org_id],
                    |r| r.get(0),
                )
                .map_err(|x| e(&x))?;
            if !exists {
                return Ok(None);
            }
            tx.execute(
                "INSERT INTO wipe_orders (org_id, device_id, user_name, ordered_by, ordered_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![org_id, device_id, user, ordered_by, now_unix()],
            )
            .map_err(|x| e(&x))?;
            let id = tx.last_insert_rowid();
            if user.is_none() {
                tx.execute("DELETE FROM escrow_keys WHERE device_id = ?1", [device_id])
                    .map_err(|x| e(&x))?;
            }
            tx.commit().map_err(|x| e(&x))?;
            Ok(Some(id))
        })
        .await
    }

    pub(in crate::store) async fn wipe_orders(
        &self,
        org_id: i64,
        device_id: i64,
    ) -> Result<Option<Vec<WipeOrder>>, StoreError> {
        let op = "listing wipe orders";
        self.with(op, move |conn| {
            let e = db_error(op);
            let exists: bool = conn
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM devices WHERE id = ?1 AND org_id = ?2)",
                    params![device_id, org_id],
                    |r| r.get(0),
                )
                .map_err(|x| e(&x))?;
            if !exists {
                return Ok(None);
            }
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {WIPE_COLUMNS} FROM wipe_orders WHERE device_id = ?1 ORDER BY id"
                ))
                .map_err(|x| e(&x))?;
            let rows = stmt.query_map([device_id], wipe_order).map_err(|x| e(&x))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map(Some)
                .map_err(|x| e(&x))
        })
        .await
    }

    pub(in crate::store) async fn end_wipe(
        &self,
        device_id: i64,
        order_id: i64,
        end: WipeEnd,
    ) -> Result<WipeEnded, StoreError> {
        let op = "ending a wipe order";
        self.with(op, move |conn| {
            let e = db_error(op);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|x| e(&x))?;
            let order = tx
                .query_row(
                    &format!(
                        "SELECT {WIPE_COLUMNS} FROM wipe_orders WHERE id = ?1 AND device_id = ?2"
                    ),
                    params![order_id, device_id],
                    wipe_order,
                )
                .optional()
                .map_err(|x| e(&x))?;
            let Some(order) = order else {
                return Ok(WipeEnded::NotFound);
            };
            let outcome = crate::store::control::ending(&order, end);
            if outcome == WipeEnded::Ended && order.is_pending() {
                let column = match end {
                    WipeEnd::Cancel => "cancelled_at",
                    WipeEnd::Acknowledge => "acknowledged_at",
                };
                tx.execute(
                    &format!("UPDATE wipe_orders SET {column} = ?2 WHERE id = ?1"),
                    params![order_id, now_unix()],
                )
                .map_err(|x| e(&x))?;
            }
            tx.commit().map_err(|x| e(&x))?;
            Ok(outcome)
        })
        .await
    }

    pub(in crate::store) async fn check_in(
        &self,
        device_id: i64,
        address: String,
    ) -> Result<CheckIn, StoreError> {
        let op = "checking a device in";
        self.with(op, move |conn| {
            let e = db_error(op);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|x| e(&x))?;
            tx.execute(
                "UPDATE devices SET last_seen_at = ?2, last_seen_address = ?3 WHERE id = ?1",
                params![device_id, now_unix(), address],
            )
            .map_err(|x| e(&x))?;
            let wipe_orders = {
                let mut stmt = tx
                    .prepare(&format!(
                        "SELECT {WIPE_COLUMNS} FROM wipe_orders WHERE device_id = ?1
                         AND acknowledged_at IS NULL AND cancelled_at IS NULL ORDER BY id"
                    ))
                    .map_err(|x| e(&x))?;
                let rows = stmt
                    .query_map([device_id], wipe_order)
                    .map_err(|x| e(&x))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(|x| e(&x))?
            };
            let (policy_version, escrow_present) = tx
                .query_row(
                    "SELECT (SELECT max(p.version) FROM policies p JOIN devices d ON d.org_id = p.org_id
                             WHERE d.id = ?1),
                            EXISTS (SELECT 1 FROM escrow_keys WHERE device_id = ?1)",
                    [device_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(|x| e(&x))?;
            tx.commit().map_err(|x| e(&x))?;
            Ok(CheckIn {
                wipe_orders,
                policy_version,
                escrow_present,
            })
        })
        .await
    }

    pub(in crate::store) async fn device_activity(
        &self,
        org_id: i64,
        after: i64,
        limit: i64,
    ) -> Result<Vec<DeviceActivity>, StoreError> {
        let op = "reading device activity";
        self.with(op, move |conn| {
            let e = db_error(op);
            let mut stmt = conn
                .prepare(
                    "SELECT d.id, d.last_seen_at, d.last_seen_address,
                            EXISTS (SELECT 1 FROM escrow_keys k WHERE k.device_id = d.id),
                            (SELECT count(*) FROM wipe_orders w WHERE w.device_id = d.id
                             AND w.acknowledged_at IS NULL AND w.cancelled_at IS NULL)
                     FROM devices d WHERE d.org_id = ?1 AND d.id > ?2 ORDER BY d.id LIMIT ?3",
                )
                .map_err(|x| e(&x))?;
            let rows = stmt
                .query_map([org_id, after, limit], |r| {
                    Ok(DeviceActivity {
                        device_id: r.get(0)?,
                        last_seen_at: r.get(1)?,
                        last_seen_address: r.get(2)?,
                        escrow: r.get(3)?,
                        pending_wipes: r.get(4)?,
                    })
                })
                .map_err(|x| e(&x))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(|x| e(&x))
        })
        .await
    }

    pub(in crate::store) async fn store_batch(
        &self,
        batch: NewBatch,
    ) -> Result<BatchStored, StoreError> {
        let op = "storing a batch";
        self.with(op, move |conn| {
            let e = db_error(op);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|x| e(&x))?;
            let earlier: Option<String> = tx
                .query_row(
                    "SELECT digest FROM data_batches WHERE device_id = ?1 AND batch_id = ?2",
                    params![batch.device_id, batch.batch_id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|x| e(&x))?;
            if let Some(earlier) = earlier {
                return Ok(if earlier == batch.digest {
                    BatchStored::Duplicate
                } else {
                    BatchStored::Conflict
                });
            }
            let now = now_unix();
            let count = i64::try_from(batch.readings.len()).unwrap_or(i64::MAX);
            tx.execute(
                "INSERT INTO data_batches (device_id, batch_id, digest, readings, bytes, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![batch.device_id, batch.batch_id, batch.digest, count, batch.bytes, now],
            )
            .map_err(|x| e(&x))?;
            {
                let mut insert = tx
                    .prepare(
                        "INSERT INTO readings (org_id, device_id, batch_id, at, name, value, received_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )
                    .map_err(|x| e(&x))?;
                for (at, name, value) in &batch.readings {
                    insert
                        .execute(params![
                            batch.org_id,
                            batch.device_id,
                            batch.batch_id,
                            at,
                            name,
                            value,
                            now
                        ])
                        .map_err(|x| e(&x))?;
                }
            }
            tx.commit().map_err(|x| e(&x))?;
            Ok(BatchStored::Stored(count))
        })
        .await
    }

    pub(in crate::store) async fn readings(
        &self,
        org_id: i64,
        q: ReadingQuery,
    ) -> Result<Vec<StoredReading>, StoreError> {
        let op = "querying readings";
        self.with(op, move |conn| {
            let e = db_error(op);
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT id, device_id, at, name, value, received_at FROM readings
                     WHERE org_id = ?1 AND id > ?2
                       AND (?3 IS NULL OR device_id = ?3)
                       AND (?4 IS NULL OR at >= ?4)
                       AND (?5 IS NULL OR at < ?5)
                       AND (?6 IS NULL OR name = ?6)
                     ORDER BY {} LIMIT ?7",
                    q.order()
                ))
                .map_err(|x| e(&x))?;
            let rows = stmt
                .query_map(
                    params![org_id, q.after, q.device_id, q.from, q.to, q.name, q.limit],
                    |r| {
                        let value: String = r.get(4)?;
                        Ok(StoredReading {
                            id: r.get(0)?,
                            device_id: r.get(1)?,
                            at: r.get(2)?,
                            name: r.get(3)?,
                            value: serde_json::from_str(&value)
                                .unwrap_or(serde_json::Value::String(value)),
                            received_at: r.get(5)?,
                        })
                    },
                )
                .map_err(|x| e(&x))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(|x| e(&x))
        })
        .await
    }
}
