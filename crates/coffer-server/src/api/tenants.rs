//! Organizations as tenants (docs/server.md, "Operators and
//! organizations"): the instance's operators — the first made at setup,
//! more by an operator — create, list, suspend, resume and delete
//! organizations; an
//! organization's owners see their own. Operators are not members: they
//! see an organization's name and size, never its users, devices or data.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use coffer_protocol::admin::{
    CreateOrganization, Operator, OperatorList, OrganizationCreated, OrganizationList,
    OrganizationSummary,
};
use coffer_protocol::ErrorCode;
use secrecy::ExposeSecret;
use serde_json::json;

use super::{
    check_name, check_password, forbidden, hash_off_thread, not_found_here, record,
    require_operator, ApiError, AppState, Body, Ids, Principal,
};
use crate::store::{NewOwner, OperatorChange, OrganizationRecord};

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route("/v1/orgs", get(list).post(create))
        .route("/v1/orgs/{org_id}", get(show).delete(delete))
        .route("/v1/orgs/{org_id}/suspend", post(suspend))
        .route("/v1/orgs/{org_id}/resume", post(resume))
        .route("/v1/operators", get(operators))
        .route(
            "/v1/operators/{user_id}",
            axum::routing::put(add_operator).delete(remove_operator),
        )
}

/// `GET /v1/operators` (operators): who they are.
async fn operators(
    State(state): State<AppState>,
    who: Principal,
) -> Result<Json<OperatorList>, ApiError> {
    require_operator(&state, &who).await?;
    let operators = state.store.operators().await?;
    Ok(Json(OperatorList {
        operators: operators
            .into_iter()
            .map(|o| Operator {
                user_id: o.user_id,
                user: o.user,
                since: o.since,
            })
            .collect(),
    }))
}

/// The answer to a change of who operates the server.
fn operator_change(change: OperatorChange) -> Result<(), ApiError> {
    match change {
        OperatorChange::Done => Ok(()),
        OperatorChange::NoUser => Err(not_found_here()),
        OperatorChange::Last => Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::LastOperator,
            "the last operator cannot stop being one: make another first",
        )),
    }
}

/// `PUT /v1/operators/{user_id}` (operators): makes an enabled user an
/// operator (again: 204).
async fn add_operator(
    State(state): State<AppState>,
    Ids(user_id): Ids<i64>,
    who: Principal,
) -> Result<StatusCode, ApiError> {
    require_operator(&state, &who).await?;
    operator_change(state.store.add_operator(user_id).await?)?;
    record(
        &state,
        None,
        format!("user:{}", who.user),
        "operator_added",
        json!({"user_id": user_id}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/operators/{user_id}` (operators): never the last one.
async fn remove_operator(
    State(state): State<AppState>,
    Ids(user_id): Ids<i64>,
    who: Principal,
) -> Result<StatusCode, ApiError> {
    require_operator(&state, &who).await?;
    operator_change(state.store.remove_operator(user_id).await?)?;
    record(
        &state,
        None,
        format!("user:{}", who.user),
        "operator_removed",
        json!({"user_id": user_id}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn summary(org: OrganizationRecord) -> OrganizationSummary {
    OrganizationSummary {
        id: org.id,
        name: org.name,
        created_at: org.created_at,
        suspended: org.suspended_at.is_some(),
        suspended_at: org.suspended_at,
        members: org.members,
        devices: org.devices,
    }
}

/// `POST /v1/orgs` (operators): a new organization and its first owner,
/// a new user with an initial password handed over out of band.
async fn create(
    State(state): State<AppState>,
    who: Principal,
    Body(request): Body<CreateOrganization>,
) -> Result<(StatusCode, Json<OrganizationCreated>), ApiError> {
    require_operator(&state, &who).await?;
    let CreateOrganization {
        name,
        owner,
        password,
    } = request;
    check_name("the organization's name", &name)?;
    check_name("the owner's name", &owner)?;
    check_password(password.expose_secret())?;
    let password_hash = hash_off_thread(password).await?;
    let created = state
        .store
        .create_organization(&NewOwner {
            organization: name.clone(),
            owner,
            password_hash,
        })
        .await?;
    // Its signing key now, as setup does: enrollment must not be the first
    // to need it.
    super::control::signing_key_record(&state, created.organization_id).await?;
    record(
        &state,
        Some(created.organization_id),
        format!("user:{}", who.user),
        "organization_created",
        json!({"name": name, "owner_id": created.user_id}),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(OrganizationCreated {
            organization_id: created.organization_id,
            user_id: created.user_id,
        }),
    ))
}

/// `GET /v1/orgs` (operators): every organization, its size and state.
async fn list(
    State(state): State<AppState>,
    who: Principal,
) -> Result<Json<OrganizationList>, ApiError> {
    require_operator(&state, &who).await?;
    let organizations = state.store.organizations().await?;
    Ok(Json(OrganizationList {
        organizations: organizations.into_iter().map(summary).collect(),
    }))
}

/// `GET /v1/orgs/{org_id}` (operators, and the organization's owners).
async fn show(
    State(state): State<AppState>,
    Ids(org_id): Ids<i64>,
    who: Principal,
) -> Result<Json<OrganizationSummary>, ApiError> {
    if !state.store.is_operator(who.user_id).await? {
        // An owner of a suspended organization still sees that it is.
        match state.store.member_role(org_id, who.user_id).await? {
            Some(member) if member.role == "owner" => {}
            Some(_) => return Err(forbidden("this needs the role owner in the organization")),
            None => return Err(not_found_here()),
        }
    }
    let org = state
        .store
        .organization(org_id)
        .await?
        .ok_or_else(not_found_here)?;
    Ok(Json(summary(org)))
}

/// Suspends or resumes; audited under the organization.
async fn set_suspended(
    state: &AppState,
    who: &Principal,
    org_id: i64,
    suspended: bool,
) -> Result<StatusCode, ApiError> {
    require_operator(state, who).await?;
    if !state.store.set_suspended(org_id, suspended).await? {
        return Err(not_found_here());
    }
    state.standing_changed();
    tracing::info!(
        organization_id = org_id,
        suspended,
        "organization suspension changed"
    );
    record(
        state,
        Some(org_id),
        format!("user:{}", who.user),
        if suspended {
            "organization_suspended"
        } else {
            "organization_resumed"
        },
        json!({}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/orgs/{org_id}/suspend` (operators): at once, every user's
/// request in the organization and every device's is refused (403
/// `organization_suspended`); its enrollment codes stop working. Nothing
/// is deleted: resuming brings it all back.
async fn suspend(
    State(state): State<AppState>,
    Ids(org_id): Ids<i64>,
    who: Principal,
) -> Result<StatusCode, ApiError> {
    set_suspended(&state, &who, org_id, true).await
}

/// `POST /v1/orgs/{org_id}/resume` (operators).
async fn resume(
    State(state): State<AppState>,
    Ids(org_id): Ids<i64>,
    who: Principal,
) -> Result<StatusCode, ApiError> {
    set_suspended(&state, &who, org_id, false).await
}

/// `DELETE /v1/orgs/{org_id}` (operators): only a suspended organization
/// (409 `not_suspended` otherwise: two deliberate steps). Everything of it
/// goes in one transaction — its sealed signing and escrow keys with the
/// rest — and the freed space is overwritten where the backend allows
/// (docs/server.md says what remains). Its audit rows stay: the trail is
/// chained, and the deletion is recorded in it.
async fn delete(
    State(state): State<AppState>,
    Ids(org_id): Ids<i64>,
    who: Principal,
) -> Result<StatusCode, ApiError> {
    require_operator(&state, &who).await?;
    let org = state
        .store
        .organization(org_id)
        .await?
        .ok_or_else(not_found_here)?;
    if org.suspended_at.is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::NotSuspended,
            "suspend the organization first: only a suspended organization may be deleted",
        ));
    }
    if !state.store.delete_organization(org_id).await? {
        return Err(not_found_here());
    }
    state.standing_changed();
    tracing::info!(organization_id = org_id, "organization deleted");
    // Its files' objects (trashed with the rows): deleted now if the
    // storage answers, else by the next garbage collection.
    if let Some(storage) = state.files.storage() {
        let prefix = crate::blobs::org_prefix(org_id);
        if let Err(e) = crate::files::delete_trashed(&state.store, storage, &prefix).await {
            tracing::warn!(error = %e, "deleting a deleted organization's files failed; the next collection tries again");
        }
    }
    record(
        &state,
        Some(org_id),
        format!("user:{}", who.user),
        "organization_deleted",
        json!({"name": org.name, "members": org.members, "devices": org.devices}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
