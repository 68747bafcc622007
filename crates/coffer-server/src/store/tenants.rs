//! Storage for organizations as tenants: the instance's operators, and
//! creating, listing, suspending and deleting organizations.

use super::{Bootstrapped, NewOwner, Store, StoreError};

/// An organization as operators see it: no member's name, no data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrganizationRecord {
    /// Its id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
    /// When it was suspended (none: active).
    pub suspended_at: Option<i64>,
    /// How many users belong to it.
    pub members: i64,
    /// How many devices are enrolled in it (revoked ones included).
    pub devices: i64,
}

/// One of the instance's operators, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorRecord {
    /// The user.
    pub user_id: i64,
    /// Their name.
    pub user: String,
    /// Since when.
    pub since: i64,
}

/// What became of a request to make a user an operator, or to stop one
/// being one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorChange {
    /// Done (or already so).
    Done,
    /// No such user (or a disabled one, which may not become one).
    NoUser,
    /// The last operator: someone must be left to manage organizations.
    Last,
}

/// A user's place in one organization, and whether it is suspended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRole {
    /// owner, admin, member or auditor.
    pub role: String,
    /// The organization is suspended: nothing of it may be used.
    pub suspended: bool,
}

impl Store {
    /// Whether `user_id` is one of the instance's operators.
    pub async fn is_operator(&self, user_id: i64) -> Result<bool, StoreError> {
        dispatch!(self, s => s.is_operator(user_id).await)
    }

    /// Every operator, in user id order.
    pub async fn operators(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        dispatch!(self, s => s.operators().await)
    }

    /// Makes an enabled user an operator.
    pub async fn add_operator(&self, user_id: i64) -> Result<OperatorChange, StoreError> {
        dispatch!(self, s => s.add_operator(user_id).await)
    }

    /// Stops a user being an operator, unless they are the last one
    /// (checked in the transaction).
    pub async fn remove_operator(&self, user_id: i64) -> Result<OperatorChange, StoreError> {
        dispatch!(self, s => s.remove_operator(user_id).await)
    }

    /// Creates an organization and its owner in one transaction
    /// ([`StoreError::Exists`] if the name or the owner's name is taken).
    pub async fn create_organization(&self, new: &NewOwner) -> Result<Bootstrapped, StoreError> {
        dispatch!(self, s => s.create_organization(new).await)
    }

    /// Every organization, in id order.
    pub async fn organizations(&self) -> Result<Vec<OrganizationRecord>, StoreError> {
        dispatch!(self, s => s.organizations(None).await)
    }

    /// One organization, if it exists.
    pub async fn organization(
        &self,
        org_id: i64,
    ) -> Result<Option<OrganizationRecord>, StoreError> {
        Ok(dispatch!(self, s => s.organizations(Some(org_id)).await)?
            .into_iter()
            .next())
    }

    /// Suspends (or resumes) an organization; false if there is none.
    pub async fn set_suspended(&self, org_id: i64, suspended: bool) -> Result<bool, StoreError> {
        dispatch!(self, s => s.set_suspended(org_id, suspended).await)
    }

    /// Deletes an organization and everything of it (members, devices and
    /// their tokens, sealed signing and escrow keys, policies, wipe orders,
    /// readings, usage records), in one transaction; users left in no
    /// organization are disabled and their sessions ended. Its audit rows
    /// stay: the trail is chained. False if there is none;
    /// [`StoreError::NotSuspended`] unless it is suspended (checked in the
    /// transaction).
    pub async fn delete_organization(&self, org_id: i64) -> Result<bool, StoreError> {
        dispatch!(self, s => s.delete_organization(org_id).await)
    }
}
