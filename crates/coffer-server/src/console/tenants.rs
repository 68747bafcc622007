//! The operators' pages: every organization on the server (its size, not
//! its data), creating one with its owner, suspending, resuming, and
//! deleting a suspended one (confirmed by typing its name).

use axum::extract::Path;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use coffer_protocol::admin::{
    CreateOrganization, OrganizationCreated, OrganizationList, OrganizationSummary,
};
use serde::Deserialize;

use super::client::{csrf_forms, typed_twice, Api, Change, ChangeForm, ConsoleError, Signed};
use super::pages;

pub(super) async fn list(signed: Signed) -> Result<Response, ConsoleError> {
    // The API refuses anyone but an operator.
    let list: OrganizationList = signed.api.get("/v1/orgs").await?;
    Ok(pages::Tenants::new(&signed, list).into_response())
}

fn back() -> Response {
    Redirect::to("/console/tenants").into_response()
}

/// The new-organization form: its name and its owner's account.
#[derive(Deserialize)]
pub(super) struct CreateForm {
    csrf: String,
    name: String,
    owner: String,
    password: String,
    password_again: String,
}

/// A deletion: the organization's name typed again.
#[derive(Deserialize)]
pub(super) struct DeleteForm {
    csrf: String,
    confirm: String,
}

csrf_forms!(CreateForm, DeleteForm);

pub(super) async fn create(change: Change<CreateForm>) -> Result<Response, ConsoleError> {
    let Change { api, form } = change;
    let password = typed_twice(
        form.password,
        form.password_again,
        "no organization was made",
    )?;
    let request = CreateOrganization {
        name: form.name.trim().to_owned(),
        owner: form.owner.trim().to_owned(),
        password,
    };
    let _: OrganizationCreated = api.send(Method::POST, "/v1/orgs", Some(&request)).await?;
    Ok(back())
}

pub(super) async fn suspend(
    Path(org): Path<i64>,
    change: Change<ChangeForm>,
) -> Result<Response, ConsoleError> {
    change
        .api
        .act(
            Method::POST,
            &format!("/v1/orgs/{org}/suspend"),
            "/console/tenants",
        )
        .await
}

pub(super) async fn resume(
    Path(org): Path<i64>,
    change: Change<ChangeForm>,
) -> Result<Response, ConsoleError> {
    change
        .api
        .act(
            Method::POST,
            &format!("/v1/orgs/{org}/resume"),
            "/console/tenants",
        )
        .await
}

async fn organization(api: &Api, org: i64) -> Result<OrganizationSummary, ConsoleError> {
    api.get(&format!("/v1/orgs/{org}")).await
}

pub(super) async fn delete(
    Path(org): Path<i64>,
    change: Change<DeleteForm>,
) -> Result<Response, ConsoleError> {
    let summary = organization(&change.api, org).await?;
    if change.form.confirm != summary.name {
        return Err(ConsoleError::refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the name typed is not the organization's: nothing was deleted",
        ));
    }
    change
        .api
        .act(
            Method::DELETE,
            &format!("/v1/orgs/{org}"),
            "/console/tenants",
        )
        .await
}
