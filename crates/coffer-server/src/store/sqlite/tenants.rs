//! The SQLite side of [`crate::store::tenants`].

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::SqliteStore;
use crate::store::tenants::{OperatorChange, OperatorRecord, OrganizationRecord};
use crate::store::{db_error, now_unix, Bootstrapped, NewOwner, StoreError};

/// The SQL of the next id of `table` (organizations or devices): above
/// every id it holds and every id it ever held (`id_floors`).
pub(in crate::store) fn next_id(table: &'static str) -> String {
    format!(
        "(SELECT max(coalesce((SELECT max(id) FROM {table}), 0),
                     coalesce((SELECT floor FROM id_floors WHERE kind = '{table}'), 0)) + 1)"
    )
}

/// Inserts an organization, its owner (a new user) and the membership,
/// inside `tx` ([`StoreError::Exists`] if either name is taken): setup's
/// first organization and every later one.
pub(in crate::store) fn insert_organization(
    tx: &rusqlite::Transaction<'_>,
    new: &NewOwner,
    now: i64,
    op: &'static str,
) -> Result<Bootstrapped, StoreError> {
    let e = db_error(op);
    let (org_taken, user_taken): (bool, bool) = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM organizations WHERE name = ?1),
                    EXISTS (SELECT 1 FROM users WHERE name = ?2)",
            params![new.organization, new.owner],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(|x| e(&x))?;
    if org_taken {
        return Err(StoreError::Exists("an organization of that name"));
    }
    if user_taken {
        return Err(StoreError::Exists("a user of that name"));
    }
    tx.execute(
        &format!(
            "INSERT INTO organizations (id, name, created_at) VALUES ({}, ?1, ?2)",
            next_id("organizations")
        ),
        params![new.organization, now],
    )
    .map_err(|x| e(&x))?;
    let organization_id = tx.last_insert_rowid();
    tx.execute(
        "INSERT INTO users (name, password_hash, created_at) VALUES (?1, ?2, ?3)",
        params![new.owner, new.password_hash, now],
    )
    .map_err(|x| e(&x))?;
    let user_id = tx.last_insert_rowid();
    tx.execute(
        "INSERT INTO memberships (org_id, user_id, role) VALUES (?1, ?2, 'owner')",
        params![organization_id, user_id],
    )
    .map_err(|x| e(&x))?;
    Ok(Bootstrapped {
        organization_id,
        user_id,
    })
}

impl SqliteStore {
    pub(in crate::store) async fn is_operator(&self, user_id: i64) -> Result<bool, StoreError> {
        self.with("reading the operators", move |conn| {
            conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM operators WHERE user_id = ?1)",
                [user_id],
                |r| r.get(0),
            )
            .map_err(|e| db_error("reading the operators")(&e))
        })
        .await
    }

    pub(in crate::store) async fn operators(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        let op = "listing the operators";
        self.with(op, move |conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT o.user_id, u.name, o.created_at FROM operators o
                     JOIN users u ON u.id = o.user_id ORDER BY o.user_id",
                )
                .map_err(|x| db_error(op)(&x))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(OperatorRecord {
                        user_id: r.get(0)?,
                        user: r.get(1)?,
                        since: r.get(2)?,
                    })
                })
                .map_err(|x| db_error(op)(&x))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(|x| db_error(op)(&x))
        })
        .await
    }

    pub(in crate::store) async fn add_operator(
        &self,
        user_id: i64,
    ) -> Result<OperatorChange, StoreError> {
        let op = "adding an operator";
        self.with(op, move |conn| {
            let added = conn
                .execute(
                    "INSERT INTO operators (user_id, created_at)
                     SELECT id, ?2 FROM users WHERE id = ?1 AND disabled = 0
                     ON CONFLICT (user_id) DO NOTHING",
                    params![user_id, now_unix()],
                )
                .map_err(|x| db_error(op)(&x))?;
            let is: bool = conn
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM operators WHERE user_id = ?1)",
                    [user_id],
                    |r| r.get(0),
                )
                .map_err(|x| db_error(op)(&x))?;
            Ok(if added == 1 || is {
                OperatorChange::Done
            } else {
                OperatorChange::NoUser
            })
        })
        .await
    }

    pub(in crate::store) async fn remove_operator(
        &self,
        user_id: i64,
    ) -> Result<OperatorChange, StoreError> {
        let op = "removing an operator";
        self.with(op, move |conn| {
            let e = db_error(op);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|x| e(&x))?;
            let (is, others): (bool, bool) = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM operators WHERE user_id = ?1),
                            EXISTS (SELECT 1 FROM operators WHERE user_id <> ?1)",
                    [user_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(|x| e(&x))?;
            if !is {
                return Ok(OperatorChange::NoUser);
            }
            if !others {
                return Ok(OperatorChange::Last);
            }
            tx.execute("DELETE FROM operators WHERE user_id = ?1", [user_id])
                .map_err(|x| e(&x))?;
            tx.commit().map_err(|x| e(&x))?;
            Ok(OperatorChange::Done)
        })
        .await
    }

    pub(in crate::store) async fn create_organization(
        &self,
        new: &NewOwner,
    ) -> Result<Bootstrapped, StoreError> {
        let new = new.clone();
        let op = "creating an organization";
        self.with(op, move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|x| db_error(op)(&x))?;
            let created = insert_organization(&tx, &new, now_unix(), op)?;
            tx.commit().map_err(|x| db_error(op)(&x))?;
            Ok(created)
        })
        .await
    }

    pub(in crate::store) async fn organizations(
        &self,
        only: Option<i64>,
    ) -> Result<Vec<OrganizationRecord>, StoreError> {
        self.with("listing organizations", move |conn| {
            let e = db_error("listing organizations");
            let mut stmt = conn
                .prepare(
                    "SELECT o.id, o.name, o.created_at, o.suspended_at,
                            (SELECT count(*) FROM memberships m WHERE m.org_id = o.id),
                            (SELECT count(*) FROM devices d WHERE d.org_id = o.id)
                     FROM organizations o WHERE ?1 IS NULL OR o.id = ?1 ORDER BY o.id",
                )
                .map_err(|x| e(&x))?;
            let rows = stmt
                .query_map([only], |r| {
                    Ok(OrganizationRecord {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        created_at: r.get(2)?,
                        suspended_at: r.get(3)?,
                        members: r.get(4)?,
                        devices: r.get(5)?,
                    })
                })
                .map_err(|x| e(&x))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(|x| e(&x))
        })
        .await
    }

    pub(in crate::store) async fn set_suspended(
        &self,
        org_id: i64,
        suspended: bool,
    ) -> Result<bool, StoreError> {
        self.with("suspending an organization", move |conn| {
            conn.execute(
                "UPDATE organizations SET suspended_at = CASE WHEN ?2 THEN coalesce(suspended_at, ?3) END
                 WHERE id = ?1",
                params![org_id, suspended, now_unix()],
            )
            .map(|n| n == 1)
            .map_err(|e| db_error("suspending an organization")(&e))
        })
        .await
    }

    pub(in crate::store) async fn delete_organization(
        &self,
        org_id: i64,
    ) -> Result<bool, StoreError> {
        self.with("deleting an organization", move |conn| {
            let e = db_error("deleting an organization");
            // Deleted rows are overwritten with zeros (secure_delete is on
            // for the connection), and the WAL, which still holds the pages
            // as they were, is emptied once the deletion is in the file.
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|x| e(&x))?;
            // Checked again in the transaction: a resume since the
            // handler looked keeps the organization.
            let suspended: Option<bool> = tx
                .query_row(
                    "SELECT suspended_at IS NOT NULL FROM organizations WHERE id = ?1",
                    [org_id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|x| e(&x))?;
            match suspended {
                None => return Ok(false),
                Some(false) => return Err(StoreError::NotSuspended),
                Some(true) => {}
            }
            // The highest ids so far, so that no later organization or
            // device gets one of these (migrations/sqlite/0011_id_floors.sql).
            tx.execute(
                "INSERT INTO id_floors (kind, floor) VALUES
                     ('organizations', (SELECT max(id) FROM organizations)),
                     ('devices', (SELECT coalesce(max(id), 0) FROM devices))
                 ON CONFLICT (kind) DO UPDATE SET floor = max(floor, excluded.floor)",
                [],
            )
            .map_err(|x| e(&x))?;
            // Users who belong to this organization alone can do nothing
            // once it is gone: disabled, their sessions ended.
            let alone = "SELECT m.user_id FROM memberships m WHERE m.org_id = ?1
                 AND NOT EXISTS (SELECT 1 FROM memberships o WHERE o.user_id = m.user_id AND o.org_id <> ?1)
                 AND NOT EXISTS (SELECT 1 FROM operators p WHERE p.user_id = m.user_id)";
            tx.execute(
                &format!("UPDATE sessions SET revoked_at = ?2 WHERE revoked_at IS NULL AND user_id IN ({alone})"),
                params![org_id, now_unix()],
            )
            .map_err(|x| e(&x))?;
            tx.execute(
                &format!("UPDATE users SET disabled = 1 WHERE id IN ({alone})"),
                [org_id],
            )
            .map_err(|x| e(&x))?;
            tx.execute("DELETE FROM usage_records WHERE org_id = ?1", [org_id])
                .map_err(|x| e(&x))?;
            // Its files' objects are not rows: their prefix goes to the
            // trash, emptied from the blob storage after (store/files.rs).
            tx.execute(
                "INSERT INTO sync_object_trash (prefix, since) VALUES (?1, ?2)
                 ON CONFLICT (prefix) DO NOTHING",
                params![crate::blobs::org_prefix(org_id), now_unix()],
            )
            .map_err(|x| e(&x))?;
            // Everything else of it goes by ON DELETE CASCADE.
            tx.execute("DELETE FROM organizations WHERE id = ?1", [org_id])
                .map_err(|x| e(&x))?;
            tx.commit().map_err(|x| e(&x))?;
            conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
                .map_err(|x| e(&x))?;
            Ok(true)
        })
        .await
    }
}
