//! The PostgreSQL side of [`crate::store::control`]. Steps that read then
//! write lock the row they depend on (`FOR UPDATE`), so two server
//! processes cannot both pass the same check.

use super::{pg, PostgresStore};
use crate::data::StoredReading;
use crate::store::control::{
    AuditMac, BatchStored, CheckIn, DeviceActivity, NewBatch, NewPolicy, PolicyRecord,
    ReadingQuery, SealedKind, SealedValue, SigningKeyRecord, WipeEnd, WipeEnded, WipeOrder,
};
use crate::store::{now_unix, StoreError};

const WIPE_COLUMNS: &str =
    "id, device_id, user_name, ordered_by, ordered_at, acknowledged_at, cancelled_at";

fn wipe_order(r: &tokio_postgres::Row) -> WipeOrder {
    WipeOrder {
        id: r.get(0),
        device_id: r.get(1),
        user: r.get(2),
        ordered_by: r.get(3),
        ordered_at: r.get(4),
        acknowledged_at: r.get(5),
        cancelled_at: r.get(6),
    }
}

impl PostgresStore {
    /// The first column of the row `sql` finds, if any.
    async fn one_value<T>(
        &self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<T>, StoreError>
    where
        T: for<'a> tokio_postgres::types::FromSql<'a>,
    {
        let client = self.client(op).await?;
        Ok(client
            .query_opt(sql, params)
            .await
            .map_err(pg(op))?
            .map(|r| r.get(0)))
    }

    pub(in crate::store) async fn master_key_check(&self) -> Result<Option<String>, StoreError> {
        let sql = "SELECT sealed FROM master_key_check WHERE id = 1";
        self.one_value("reading the master key check", sql, &[])
            .await
    }

    pub(in crate::store) async fn sealed_values(&self) -> Result<Vec<SealedValue>, StoreError> {
        let op = "reading sealed values";
        let client = self.client(op).await?;
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
            for r in client.query(sql, &[]).await.map_err(pg(op))? {
                out.push(SealedValue {
                    kind,
                    id: r.get(0),
                    sealed: r.get(1),
                });
            }
        }
        Ok(out)
    }

    pub(in crate::store) async fn reseal(
        &self,
        values: Vec<(SealedValue, String)>,
        audit_macs: Vec<AuditMac>,
        old_check: Option<String>,
        new_check: &str,
    ) -> Result<bool, StoreError> {
        let op = "re-sealing under the new master key";
        let mut client = self.client(op).await?;
        let tx = client.transaction().await.map_err(pg(op))?;
        for (old, new) in values {
            let sql = match old.kind {
                SealedKind::OrgSigningKey => {
                    "UPDATE org_signing_keys SET sealed_seed = $3 WHERE org_id = $1 AND sealed_seed = $2"
                }
                SealedKind::Escrow => {
                    "UPDATE escrow_keys SET sealed_key = $3 WHERE device_id = $1 AND sealed_key = $2"
                }
                SealedKind::OrgDataKey => {
                    "UPDATE org_data_keys SET sealed_key = $3 WHERE org_id = $1 AND sealed_key = $2"
                }
            };
            tx.execute(sql, &[&old.id, &old.sealed, &new])
                .await
                .map_err(pg(op))?;
        }
        for mac in audit_macs {
            tx.execute(
                "UPDATE audit_events SET mac = $3 WHERE id = $1 AND mac IS NOT DISTINCT FROM $2",
                &[&mac.id, &mac.old, &mac.new],
            )
            .await
            .map_err(pg(op))?;
        }
        let swapped = match old_check {
            None => {
                tx.execute(
                    "INSERT INTO master_key_check (id, sealed) VALUES (1, $1)
                     ON CONFLICT (id) DO NOTHING",
                    &[&new_check],
                )
                .await
            }
            Some(old) => {
                tx.execute(
                    "UPDATE master_key_check SET sealed = $2 WHERE id = 1 AND sealed = $1",
                    &[&old, &new_check],
                )
                .await
            }
        }
        .map_err(pg(op))?
            == 1;
        if swapped {
            tx.commit().await.map_err(pg(op))?;
        }
        Ok(swapped)
    }

    pub(in crate::store) async fn foreign_audit_macs(
        &self,
        prefix: &str,
    ) -> Result<i64, StoreError> {
        let op = "counting audit MACs";
        let client = self.client(op).await?;
        Ok(client
            .query_one(
                "SELECT count(*) FROM audit_events WHERE mac IS NOT NULL AND substr(mac, 1, length($1)) <> $1",
                &[&prefix],
            )
            .await
            .map_err(pg(op))?
            .get(0))
    }

    pub(in crate::store) async fn device_by_release_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<crate::store::DeviceRecord>, StoreError> {
        let op = "reading a device";
        let client = self.client(op).await?;
        Ok(client
            .query_opt(
                &format!(
                    "SELECT {} FROM devices d
                     JOIN device_release_tokens t ON t.device_id = d.id WHERE t.token_hash = $1",
                    crate::store::DEVICE_COLUMNS
                ),
                &[&token_hash],
            )
            .await
            .map_err(pg(op))?
            .as_ref()
            .map(super::device_record))
    }

    pub(in crate::store) async fn enrollment_code_org(
        &self,
        code_hash: &str,
    ) -> Result<Option<i64>, StoreError> {
        let sql = "SELECT org_id FROM enrollment_codes WHERE code_hash = $1 AND used_at IS NULL";
        self.one_value("reading an enrollment code", sql, &[&code_hash])
            .await
    }

    pub(in crate::store) async fn org_signing_key(
        &self,
        org_id: i64,
    ) -> Result<Option<SigningKeyRecord>, StoreError> {
        let op = "reading a signing key";
        let client = self.client(op).await?;
        Ok(client
            .query_opt(
                "SELECT public_key, sealed_seed FROM org_signing_keys WHERE org_id = $1",
                &[&org_id],
            )
            .await
            .map_err(pg(op))?
            .map(|r| SigningKeyRecord {
                public_key: r.get(0),
                sealed_seed: r.get(1),
            }))
    }

    pub(in crate::store) async fn add_org_signing_key(
        &self,
        org_id: i64,
        key: &SigningKeyRecord,
    ) -> Result<(), StoreError> {
        let op = "storing a signing key";
        let client = self.client(op).await?;
        client
            .execute(
                "INSERT INTO org_signing_keys (org_id, public_key, sealed_seed, created_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (org_id) DO NOTHING",
                &[&org_id, &key.public_key, &key.sealed_seed, &now_unix()],
            )
            .await
            .map(|_| ())
            .map_err(pg(op))
    }

    pub(in crate::store) async fn latest_policy(
        &self,
        org_id: i64,
    ) -> Result<Option<PolicyRecord>, StoreError> {
        let op = "reading the policy";
        let client = self.client(op).await?;
        Ok(client
            .query_opt(
                "SELECT version, document, signature, published_at FROM policies
                 WHERE org_id = $1 ORDER BY version DESC LIMIT 1",
                &[&org_id],
            )
            .await
            .map_err(pg(op))?
            .map(|r| PolicyRecord {
                version: r.get(0),
                document: r.get(1),
                signature: r.get(2),
                published_at: r.get(3),
            }))
    }

    pub(in crate::store) async fn policy_history(
        &self,
        org_id: i64,
        limit: i64,
    ) -> Result<Vec<(PolicyRecord, String)>, StoreError> {
        let op = "listing policies";
        let client = self.client(op).await?;
        let rows = client
            .query(
                "SELECT p.version, p.document, p.signature, p.published_at, u.name
                 FROM policies p JOIN users u ON u.id = p.published_by
                 WHERE p.org_id = $1 ORDER BY p.version DESC LIMIT $2",
                &[&org_id, &limit],
            )
            .await
            .map_err(pg(op))?;
        Ok(rows
            .into_iter()
            .map(|r| {
                (
                    PolicyRecord {
                        version: r.get(0),
                        document: r.get(1),
                        signature: r.get(2),
                        published_at: r.get(3),
                    },
                    r.get(4),
                )
            })
            .collect())
    }

    pub(in crate::store) async fn publish_policy(&self, p: &NewPolicy) -> Result<(), StoreError> {
        let op = "publishing a policy";
        let mut client = self.client(op).await?;
        let tx = client.transaction().await.map_err(pg(op))?;
        // The organization's row serializes publishers.
        tx.execute(
            "SELECT 1 FROM organizations WHERE id = $1 FOR UPDATE",
            &[&p.org_id],
        )
        .await
        .map_err(pg(op))?;
        let current: Option<i64> = tx
            .query_one(
                "SELECT max(version) FROM policies WHERE org_id = $1",
                &[&p.org_id],
            )
            .await
            .map_err(pg(op))?
            .get(0);
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
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &p.org_id,
                &p.version,
                &p.document,
                &p.signature,
                &p.published_by,
                &now_unix(),
            ],
        )
        .await
        .map_err(pg(op))?;
        tx.commit().await.map_err(pg(op))
    }

    pub(in crate::store) async fn deposit_escrow(
        &self,
        device_id: i64,
        sealed: &str,
    ) -> Result<(), StoreError> {
        let op = "storing an escrow key";
        let mut client = self.client(op).await?;
        let tx = client.transaction().await.map_err(pg(op))?;
        // The device's row serializes this with a wipe order and a
        // revocation.
        let revoked: bool = tx
            .query_one(
                "SELECT revoked_at IS NOT NULL FROM devices WHERE id = $1 FOR UPDATE",
                &[&device_id],
            )
            .await
            .map_err(pg(op))?
            .get(0);
        if revoked {
            return Err(StoreError::DeviceRevoked);
        }
        let wipe_pending: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM wipe_orders WHERE device_id = $1 AND user_name IS NULL
                 AND acknowledged_at IS NULL AND cancelled_at IS NULL)",
                &[&device_id],
            )
            .await
            .map_err(pg(op))?
            .get(0);
        if wipe_pending {
            return Err(StoreError::WipePending);
        }
        tx.execute(
            "INSERT INTO escrow_keys (device_id, sealed_key, deposited_at) VALUES ($1, $2, $3)
             ON CONFLICT (device_id) DO UPDATE SET sealed_key = excluded.sealed_key,
                 deposited_at = excluded.deposited_at",
            &[&device_id, &sealed, &now_unix()],
        )
        .await
        .map_err(pg(op))?;
        tx.commit().await.map_err(pg(op))
    }

    pub(in crate::store) async fn escrow(
        &self,
        device_id: i64,
    ) -> Result<Option<String>, StoreError> {
        let sql = "SELECT sealed_key FROM escrow_keys WHERE device_id = $1";
        self.one_value("reading an escrow key", sql, &[&device_id])
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
        let mut client = self.client(op).await?;
        let tx = client.transaction().await.map_err(pg(op))?;
        let exists = tx
            .query_opt(
                "SELECT 1 FROM devices WHERE id = $1 AND org_id = $2 FOR UPDATE",
                &[&device_id, &org_id],
            )
            .await
            .map_err(pg(op))?
            .is_some();
        if !exists {
            return Ok(None);
        }
        let id: i64 = tx
            .query_one(
                "INSERT INTO wipe_orders (org_id, device_id, user_name, ordered_by, ordered_at)
                 VALUES ($1, $2, $3, $4, $5) RETURNING id",
                &[&org_id, &device_id, &user, &ordered_by, &now_unix()],
            )
            .await
            .map_err(pg(op))?
            .get(0);
        if user.is_none() {
            tx.execute(
                "DELETE FROM escrow_keys WHERE device_id = $1",
                &[&device_id],
            )
            .await
            .map_err(pg(op))?;
        }
        tx.commit().await.map_err(pg(op))?;
        Ok(Some(id))
    }

    pub(in crate::store) async fn wipe_orders(
        &self,
        org_id: i64,
        device_id: i64,
    ) -> Result<Option<Vec<WipeOrder>>, StoreError> {
        let op = "listing wipe orders";
        let client = self.client(op).await?;
        let exists = client
            .query_opt(
                "SELECT 1 FROM devices WHERE id = $1 AND org_id = $2",
                &[&device_id, &org_id],
            )
            .await
            .map_err(pg(op))?
            .is_some();
        if !exists {
            return Ok(None);
        }
        let rows = client
            .query(
                &format!("SELECT {WIPE_COLUMNS} FROM wipe_orders WHERE device_id = $1 ORDER BY id"),
                &[&device_id],
            )
            .await
            .map_err(pg(op))?;
        Ok(Some(rows.iter().map(wipe_order).collect()))
    }

    pub(in crate::store) async fn end_wipe(
        &self,
        device_id: i64,
        order_id: i64,
        end: WipeEnd,
    ) -> Result<WipeEnded, StoreError> {
        let op = "ending a wipe order";
        let mut client = self.client(op).await?;
        let tx = client.transaction().await.map_err(pg(op))?;
        let order = tx
            .query_opt(
                &format!(
                    "SELECT {WIPE_COLUMNS} FROM wipe_orders WHERE id = $1 AND device_id = $2 FOR UPDATE"
                ),
                &[&order_id, &device_id],
            )
            .await
            .map_err(pg(op))?
            .map(|r| wipe_order(&r));
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
                &format!("UPDATE wipe_orders SET {column} = $2 WHERE id = $1"),
                &[&order_id, &now_unix()],
            )
            .await
            .map_err(pg(op))?;
        }
        tx.commit().await.map_err(pg(op))?;
        Ok(outcome)
    }

    pub(in crate::store) async fn check_in(
        &self,
        device_id: i64,
        address: String,
    ) -> Result<CheckIn, StoreError> {
        let op = "checking a device in";
        let client = self.client(op).await?;
        // Two statements sent together (tokio-postgres pipelines them on
        // one connection): one round trip.
        let now = now_unix();
        let seen_params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
            [&device_id, &now, &address];
        let wipes_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&device_id];
        let seen = client.query_one(
            "UPDATE devices d SET last_seen_at = $2, last_seen_address = $3 WHERE id = $1
             RETURNING (SELECT max(p.version) FROM policies p WHERE p.org_id = d.org_id),
                       EXISTS (SELECT 1 FROM escrow_keys WHERE device_id = $1)",
            &seen_params,
        );
        let wipes_sql = format!(
            "SELECT {WIPE_COLUMNS} FROM wipe_orders WHERE device_id = $1
             AND acknowledged_at IS NULL AND cancelled_at IS NULL ORDER BY id"
        );
        let wipes = client.query(&wipes_sql, &wipes_params);
        let (row, wipes) = tokio::try_join!(seen, wipes).map_err(pg(op))?;
        Ok(CheckIn {
            wipe_orders: wipes.iter().map(wipe_order).collect(),
            policy_version: row.get(0),
            escrow_present: row.get(1),
        })
    }

    pub(in crate::store) async fn device_activity(
        &self,
        org_id: i64,
        after: i64,
        limit: i64,
    ) -> Result<Vec<DeviceActivity>, StoreError> {
        let op = "reading device activity";
        let client = self.client(op).await?;
        let rows = client
            .query(
                "SELECT d.id, d.last_seen_at, d.last_seen_address,
                        EXISTS (SELECT 1 FROM escrow_keys k WHERE k.device_id = d.id),
                        (SELECT count(*) FROM wipe_orders w WHERE w.device_id = d.id
                         AND w.acknowledged_at IS NULL AND w.cancelled_at IS NULL)
                 FROM devices d WHERE d.org_id = $1 AND d.id > $2 ORDER BY d.id LIMIT $3",
                &[&org_id, &after, &limit],
            )
            .await
            .map_err(pg(op))?;
        Ok(rows
            .iter()
            .map(|r| DeviceActivity {
                device_id: r.get(0),
                last_seen_at: r.get(1),
                last_seen_address: r.get(2),
                escrow: r.get(3),
                pending_wipes: r.get(4),
            })
            .collect())
    }

    pub(in crate::store) async fn store_batch(
        &self,
        batch: NewBatch,
    ) -> Result<BatchStored, StoreError> {
        let op = "storing a batch";
        let mut client = self.client(op).await?;
        let tx = client.transaction().await.map_err(pg(op))?;
        // One batch at a time per organization, so that reading ids commit
        // in their order and paging by id (`after`) never skips a row that
        // commits late.
        tx.execute(
            "SELECT 1 FROM organizations WHERE id = $1 FOR NO KEY UPDATE",
            &[&batch.org_id],
        )
        .await
        .map_err(pg(op))?;
        let now = now_unix();
        let count = i64::try_from(batch.readings.len()).unwrap_or(i64::MAX);
        // The primary key decides between two processes storing one batch.
        let inserted = tx
            .execute(
                "INSERT INTO data_batches (device_id, batch_id, digest, readings, bytes, received_at)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (device_id, batch_id) DO NOTHING",
                &[
                    &batch.device_id,
                    &batch.batch_id,
                    &batch.digest,
                    &count,
                    &batch.bytes,
                    &now,
                ],
            )
            .await
            .map_err(pg(op))?;
        if inserted == 0 {
            let earlier: String = tx
                .query_one(
                    "SELECT digest FROM data_batches WHERE device_id = $1 AND batch_id = $2",
                    &[&batch.device_id, &batch.batch_id],
                )
                .await
                .map_err(pg(op))?
                .get(0);
            return Ok(if earlier == batch.digest {
                BatchStored::Duplicate
            } else {
                BatchStored::Conflict
            });
        }
        let insert = tx
            .prepare(
                "INSERT INTO readings (org_id, device_id, batch_id, at, name, value, received_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .await
            .map_err(pg(op))?;
        for (at, name, value) in &batch.readings {
            tx.execute(
                &insert,
                &[
                    &batch.org_id,
                    &batch.device_id,
                    &batch.batch_id,
                    at,
                    name,
                    value,
                    &now,
                ],
            )
            .await
            .map_err(pg(op))?;
        }
        tx.commit().await.map_err(pg(op))?;
        Ok(BatchStored::Stored(count))
    }

    pub(in crate::store) async fn readings(
        &self,
        org_id: i64,
        q: ReadingQuery,
    ) -> Result<Vec<StoredReading>, StoreError> {
        let op = "querying readings";
        let client = self.client(op).await?;
        let rows = client
            .query(
                &format!(
                    "SELECT id, device_id, at, name, value, received_at FROM readings
                 WHERE org_id = $1 AND id > $2
                   AND ($3::BIGINT IS NULL OR device_id = $3)
                   AND ($4::BIGINT IS NULL OR at >= $4)
                   AND ($5::BIGINT IS NULL OR at < $5)
                   AND ($6::TEXT IS NULL OR name = $6)
                 ORDER BY {} LIMIT $7",
                    q.order()
                ),
                &[
                    &org_id,
                    &q.after,
                    &q.device_id,
                    &q.from,
                    &q.to,
                    &q.name,
                    &q.limit,
                ],
            )
            .await
            .map_err(pg(op))?;
        Ok(rows
            .iter()
            .map(|r| {
                let value: String = r.get(4);
                StoredReading {
                    id: r.get(0),
                    device_id: r.get(1),
                    at: r.get(2),
                    name: r.get(3),
                    value: serde_json::from_str(&value).unwrap_or(serde_json::Value::String(value)),
                    received_at: r.get(5),
                }
            })
            .collect())
    }
}
