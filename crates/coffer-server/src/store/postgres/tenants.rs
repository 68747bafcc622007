//! The PostgreSQL side of [`crate::store::tenants`].

use super::{pg, PostgresStore};
use crate::store::tenants::{OperatorChange, OperatorRecord, OrganizationRecord};
use crate::store::{now_unix, Bootstrapped, NewOwner, StoreError};

/// Inserts an organization, its owner (a new user) and the membership,
/// inside `tx` ([`StoreError::Exists`] if either name is taken: ON
/// CONFLICT DO NOTHING, so that of two processes creating the same name
/// one gets the row and the other a clean "exists"): setup's first
/// organization and every later one.
pub(in crate::store) async fn insert_organization(
    tx: &deadpool_postgres::Transaction<'_>,
    new: &NewOwner,
    now: i64,
    op: &'static str,
) -> Result<Bootstrapped, StoreError> {
    let organization_id: Option<i64> = tx
        .query_opt(
            "INSERT INTO organizations (name, created_at) VALUES ($1, $2)
             ON CONFLICT (name) DO NOTHING RETURNING id",
            &[&new.organization, &now],
        )
        .await
        .map_err(pg(op))?
        .map(|r| r.get(0));
    let Some(organization_id) = organization_id else {
        return Err(StoreError::Exists("an organization of that name"));
    };
    let user_id: Option<i64> = tx
        .query_opt(
            "INSERT INTO users (name, password_hash, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO NOTHING RETURNING id",
            &[&new.owner, &new.password_hash, &now],
        )
        .await
        .map_err(pg(op))?
        .map(|r| r.get(0));
    let Some(user_id) = user_id else {
        return Err(StoreError::Exists("a user of that name"));
    };
    tx.execute(
        "INSERT INTO memberships (org_id, user_id, role) VALUES ($1, $2, 'owner')",
        &[&organization_id, &user_id],
    )
    .await
    .map_err(pg(op))?;
    Ok(Bootstrapped {
        organization_id,
        user_id,
    })
}

impl PostgresStore {
    pub(in crate::store) async fn is_operator(&self, user_id: i64) -> Result<bool, StoreError> {
        let op = "reading the operators";
        let client = self.client(op).await?;
        Ok(client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM operators WHERE user_id = $1)",
                &[&user_id],
            )
            .await
            .map_err(pg(op))?
            .get(0))
    }

    pub(in crate::store) async fn operators(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        let op = "listing the operators";
        let client = self.client(op).await?;
        let rows = client
            .query(
                "SELECT o.user_id, u.name, o.created_at FROM operators o
                 JOIN users u ON u.id = o.user_id ORDER BY o.user_id",
                &[],
            )
            .await
            .map_err(pg(op))?;
        Ok(rows
            .iter()
            .map(|r| OperatorRecord {
                user_id: r.get(0),
                user: r.get(1),
                since: r.get(2),
            })
            .collect())
    }

    pub(in crate::store) async fn add_operator(
        &self,
        user_id: i64,
    ) -> Result<OperatorChange, StoreError> {
        let op = "adding an operator";
        let client = self.client(op).await?;
        let added = client
            .execute(
                "INSERT INTO operators (user_id, created_at)
                 SELECT id, $2 FROM users WHERE id = $1 AND NOT disabled
                 ON CONFLICT (user_id) DO NOTHING",
                &[&user_id, &now_unix()],
            )
            .await
            .map_err(pg(op))?;
        let is: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM operators WHERE user_id = $1)",
                &[&user_id],
            )
            .await
            .map_err(pg(op))?
            .get(0);
        Ok(if added == 1 || is {
            OperatorChange::Done
        } else {
            OperatorChange::NoUser
        })
    }

    pub(in crate::store) async fn remove_operator(
        &self,
        user_id: i64,
    ) -> Result<OperatorChange, StoreError> {
        let op = "removing an operator";
        let mut client = self.client(op).await?;
        let tx = client.transaction().await.map_err(pg(op))?;
        // Every operator row locked: two operators removing each other at
        // once cannot both go.
        let ids: Vec<i64> = tx
            .query("SELECT user_id FROM operators FOR UPDATE", &[])
            .await
            .map_err(pg(op))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !ids.contains(&user_id) {
            return Ok(OperatorChange::NoUser);
        }
        if ids.len() == 1 {
            return Ok(OperatorChange::Last);
        }
        tx.execute("DELETE FROM operators WHERE user_id = $1", &[&user_id])
            .await
            .map_err(pg(op))?;
        tx.commit().await.map_err(pg(op))?;
        Ok(OperatorChange::Done)
    }

    pub(in crate::store) async fn create_organization(
        &self,
        new: &NewOwner,
    ) -> Result<Bootstrapped, StoreError> {
        let op = "creating an organization";
        let mut client = self.client(op).await?;
        let tx = client.transaction().await.map_err(pg(op))?;
        let created = insert_organization(&tx, new, now_unix(), op).await?;
        tx.commit().await.map_err(pg(op))?;
        Ok(created)
    }

    pub(in crate::store) async fn organizations(
        &self,
        only: Option<i64>,
    ) -> Result<Vec<OrganizationRecord>, StoreError> {
        let op = "listing organizations";
        let client = self.client(op).await?;
        let rows = client
            .query(
                "SELECT o.id, o.name, o.created_at, o.suspended_at,
                        (SELECT count(*) FROM memberships m WHERE m.org_id = o.id),
                        (SELECT count(*) FROM devices d WHERE d.org_id = o.id)
                 FROM organizations o WHERE $1::BIGINT IS NULL OR o.id = $1 ORDER BY o.id",
                &[&only],
            )
            .await
            .map_err(pg(op))?;
        Ok(rows
            .iter()
            .map(|r| OrganizationRecord {
                id: r.get(0),
                name: r.get(1),
                created_at: r.get(2),
                suspended_at: r.get(3),
                members: r.get(4),
                devices: r.get(5),
            })
            .collect())
    }

    pub(in crate::store) async fn set_suspended(
        &self,
        org_id: i64,
        suspended: bool,
    ) -> Result<bool, StoreError> {
        let op = "suspending an organization";
        let client = self.client(op).await?;
        client
            .execute(
                "UPDATE organizations SET suspended_at = CASE WHEN $2 THEN coalesce(suspended_at, $3) END
                 WHERE id = $1",
                &[&org_id, &suspended, &now_unix()],
            )
            .await
            .map(|n| n == 1)
            .map_err(pg(op))
    }

    pub(in crate::store) async fn delete_organization(
        &self,
        org_id: i64,
    ) -> Result<bool, StoreError> {
        let op = "deleting an organization";
        let mut client = self.client(op).await?;
        let tx = client.transaction().await.map_err(pg(op))?;
        // Checked again under the row lock: a resume since the handler
        // looked keeps the organization.
        let suspended: Option<bool> = tx
            .query_opt(
                "SELECT suspended_at IS NOT NULL FROM organizations WHERE id = $1 FOR UPDATE",
                &[&org_id],
            )
            .await
            .map_err(pg(op))?
            .map(|r| r.get(0));
        match suspended {
            None => return Ok(false),
            Some(false) => return Err(StoreError::NotSuspended),
            Some(true) => {}
        }
        // Users who belong to this organization alone can do nothing once
        // it is gone: disabled, their sessions ended.
        let alone = "SELECT m.user_id FROM memberships m WHERE m.org_id = $1
             AND NOT EXISTS (SELECT 1 FROM memberships o WHERE o.user_id = m.user_id AND o.org_id <> $1)
             AND NOT EXISTS (SELECT 1 FROM operators p WHERE p.user_id = m.user_id)";
        tx.execute(
            &format!(
                "UPDATE sessions SET revoked_at = $2 WHERE revoked_at IS NULL AND user_id IN ({alone})"
            ),
            &[&org_id, &now_unix()],
        )
        .await
        .map_err(pg(op))?;
        tx.execute(
            &format!("UPDATE users SET disabled = TRUE WHERE id IN ({alone})"),
            &[&org_id],
        )
        .await
        .map_err(pg(op))?;
        tx.execute("DELETE FROM usage_records WHERE org_id = $1", &[&org_id])
            .await
            .map_err(pg(op))?;
        // Its files' objects are not rows: their prefix goes to the trash,
        // emptied from the blob storage after (store/files.rs).
        tx.execute(
            "INSERT INTO sync_object_trash (prefix, since) VALUES ($1, $2)
             ON CONFLICT (prefix) DO NOTHING",
            &[&crate::blobs::org_prefix(org_id), &now_unix()],
        )
        .await
        .map_err(pg(op))?;
        // Everything else of it goes by ON DELETE CASCADE.
        tx.execute("DELETE FROM organizations WHERE id = $1", &[&org_id])
            .await
            .map_err(pg(op))?;
        tx.commit().await.map_err(pg(op))?;
        Ok(true)
    }
}
