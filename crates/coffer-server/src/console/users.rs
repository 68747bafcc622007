//! An organization's users: the list, adding one, changing a role, and
//! disabling, enabling or removing one (the last two confirmed by typing
//! the user's name).

use axum::extract::Path;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use coffer_protocol::admin::{AddUser, MemberList, MemberSummary, SetRole, UserAdded};
use coffer_protocol::NoContent;
use serde::Deserialize;

use super::client::{csrf_forms, typed_twice, Api, Change, ChangeForm, ConsoleError, Signed};
use super::pages;

pub(super) async fn list(signed: Signed, Path(org): Path<i64>) -> Result<Response, ConsoleError> {
    let members: MemberList = signed.api.get(&format!("/v1/orgs/{org}/users")).await?;
    Ok(pages::Users::new(&signed, org, members).into_response())
}

/// One member of `org`, by the API's list.
async fn member_of(api: &Api, org: i64, user: i64) -> Result<MemberSummary, ConsoleError> {
    let members: MemberList = api.get(&format!("/v1/orgs/{org}/users")).await?;
    members
        .members
        .into_iter()
        .find(|m| m.id == user)
        .ok_or_else(|| {
            ConsoleError::refused(StatusCode::NOT_FOUND, "no such user in this organization")
        })
}

fn back_to_users(org: i64) -> Response {
    Redirect::to(&format!("/console/orgs/{org}/users")).into_response()
}

/// The new-user form; the password is typed twice.
#[derive(Deserialize)]
pub(super) struct AddForm {
    csrf: String,
    name: String,
    role: String,
    password: String,
    password_again: String,
}

/// The role form.
#[derive(Deserialize)]
pub(super) struct RoleForm {
    csrf: String,
    role: String,
}

/// A disable or remove: the user's name typed again.
#[derive(Deserialize)]
pub(super) struct ConfirmForm {
    csrf: String,
    confirm: String,
}

csrf_forms!(AddForm, RoleForm, ConfirmForm);

pub(super) async fn add(
    Path(org): Path<i64>,
    change: Change<AddForm>,
) -> Result<Response, ConsoleError> {
    let Change { api, form } = change;
    let password = typed_twice(form.password, form.password_again, "nobody was added")?;
    let request = AddUser {
        user: form.name.trim().to_owned(),
        password,
        role: form.role,
    };
    let _: UserAdded = api
        .send(
            Method::POST,
            &format!("/v1/orgs/{org}/users"),
            Some(&request),
        )
        .await?;
    Ok(back_to_users(org))
}

pub(super) async fn set_role(
    Path((org, user)): Path<(i64, i64)>,
    change: Change<RoleForm>,
) -> Result<Response, ConsoleError> {
    let request = SetRole {
        role: change.form.role.clone(),
    };
    let _: NoContent = change
        .api
        .send(
            Method::PUT,
            &format!("/v1/orgs/{org}/users/{user}/role"),
            Some(&request),
        )
        .await?;
    Ok(back_to_users(org))
}

/// Refuses unless the name typed is the user's.
async fn confirmed(api: &Api, org: i64, user: i64, typed: &str) -> Result<(), ConsoleError> {
    let member = member_of(api, org, user).await?;
    if typed != member.name {
        return Err(ConsoleError::refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the name typed is not the user's: nothing was changed",
        ));
    }
    Ok(())
}

pub(super) async fn disable(
    Path((org, user)): Path<(i64, i64)>,
    change: Change<ConfirmForm>,
) -> Result<Response, ConsoleError> {
    confirmed(&change.api, org, user, &change.form.confirm).await?;
    change
        .api
        .act(
            Method::POST,
            &format!("/v1/orgs/{org}/users/{user}/disable"),
            &format!("/console/orgs/{org}/users"),
        )
        .await
}

pub(super) async fn enable(
    Path((org, user)): Path<(i64, i64)>,
    change: Change<ChangeForm>,
) -> Result<Response, ConsoleError> {
    change
        .api
        .act(
            Method::POST,
            &format!("/v1/orgs/{org}/users/{user}/enable"),
            &format!("/console/orgs/{org}/users"),
        )
        .await
}

pub(super) async fn remove(
    Path((org, user)): Path<(i64, i64)>,
    change: Change<ConfirmForm>,
) -> Result<Response, ConsoleError> {
    confirmed(&change.api, org, user, &change.form.confirm).await?;
    change
        .api
        .act(
            Method::DELETE,
            &format!("/v1/orgs/{org}/users/{user}"),
            &format!("/console/orgs/{org}/users"),
        )
        .await
}
