//! An organization's devices: the list (with who is overdue), one device
//! with its wipe orders, revoke, wipe, and new enrollment codes.

use axum::extract::{Path, Query};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use coffer_protocol::admin::{
    DeviceList, DeviceListQuery, DeviceSummary, EnrollmentCode, NewEnrollmentCode, OrderWipe,
    WipeOrdered, WipeOrders,
};
use serde::Deserialize;

use super::client::{csrf_forms, Api, Change, ChangeForm, ConsoleError, Signed};
use super::pages;
use super::policy::current_document;

/// Devices one page of the list shows.
const PAGE_DEVICES: i64 = 500;

/// The list page's query: where the page starts.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ListQuery {
    #[serde(default)]
    after: Option<i64>,
}

pub(super) async fn list(
    signed: Signed,
    Path(org): Path<i64>,
    Query(query): Query<ListQuery>,
) -> Result<Response, ConsoleError> {
    let page = DeviceListQuery {
        after: query.after,
        limit: Some(PAGE_DEVICES),
    };
    let encoded = serde_urlencoded::to_string(&page).map_err(|_| ConsoleError::internal())?;
    let list: DeviceList = signed
        .api
        .get(&format!("/v1/orgs/{org}/devices?{encoded}"))
        .await?;
    let policy = current_document(&signed.api, org).await?;
    Ok(pages::Devices::new(&signed, org, list, policy.as_ref()).into_response())
}

/// Every device of `org`, a page of the API's list at a time (names for
/// the data and usage pages).
pub(super) async fn all_devices(api: &Api, org: i64) -> Result<Vec<DeviceSummary>, ConsoleError> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = DeviceListQuery {
            after,
            limit: Some(coffer_protocol::admin::MAX_DEVICE_PAGE),
        };
        let encoded = serde_urlencoded::to_string(&page).map_err(|_| ConsoleError::internal())?;
        let list: DeviceList = api
            .get(&format!("/v1/orgs/{org}/devices?{encoded}"))
            .await?;
        all.extend(list.devices);
        match list.next_after {
            Some(next) => after = Some(next),
            None => return Ok(all),
        }
    }
}

/// One device of `org` (the API decides who may see it).
async fn device_of(api: &Api, org: i64, device: i64) -> Result<DeviceSummary, ConsoleError> {
    api.get(&format!("/v1/orgs/{org}/devices/{device}")).await
}

pub(super) async fn one(
    signed: Signed,
    Path((org, device)): Path<(i64, i64)>,
) -> Result<Response, ConsoleError> {
    let summary = device_of(&signed.api, org, device).await?;
    let wipes: WipeOrders = signed
        .api
        .get(&format!("/v1/orgs/{org}/devices/{device}/wipes"))
        .await?;
    let policy = current_document(&signed.api, org).await?;
    Ok(pages::DevicePage::new(&signed, org, summary, wipes, policy.as_ref()).into_response())
}

pub(super) async fn revoke(
    Path((org, device)): Path<(i64, i64)>,
    change: Change<ChangeForm>,
) -> Result<Response, ConsoleError> {
    change
        .api
        .act(
            Method::POST,
            &format!("/v1/orgs/{org}/devices/{device}/revoke"),
            &format!("/console/orgs/{org}/devices"),
        )
        .await
}

/// The wipe form: the device's name typed again, and a user for a wipe
/// of one slot only.
#[derive(Deserialize)]
pub(super) struct WipeForm {
    csrf: String,
    confirm: String,
    #[serde(default)]
    user: String,
}

csrf_forms!(WipeForm);

pub(super) async fn order_wipe(
    Path((org, device)): Path<(i64, i64)>,
    change: Change<WipeForm>,
) -> Result<Response, ConsoleError> {
    let Change { api, form } = change;
    let summary = device_of(&api, org, device).await?;
    if form.confirm != summary.name {
        return Err(ConsoleError::refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the name typed is not the device's: nothing was ordered",
        ));
    }
    let order = OrderWipe {
        user: Some(form.user.trim().to_owned()).filter(|u| !u.is_empty()),
    };
    let _: WipeOrdered = api
        .send(
            Method::POST,
            &format!("/v1/orgs/{org}/devices/{device}/wipe"),
            Some(&order),
        )
        .await?;
    Ok(Redirect::to(&format!("/console/orgs/{org}/devices/{device}")).into_response())
}

pub(super) async fn cancel_wipe(
    Path((org, device, order)): Path<(i64, i64, i64)>,
    change: Change<ChangeForm>,
) -> Result<Response, ConsoleError> {
    change
        .api
        .act(
            Method::POST,
            &format!("/v1/orgs/{org}/devices/{device}/wipes/{order}/cancel"),
            &format!("/console/orgs/{org}/devices/{device}"),
        )
        .await
}

pub(super) async fn enrollment_code(
    Path(org): Path<i64>,
    change: Change<ChangeForm>,
) -> Result<Response, ConsoleError> {
    let code: EnrollmentCode = change
        .api
        .send(
            Method::POST,
            &format!("/v1/orgs/{org}/enrollment-codes"),
            Some(&NewEnrollmentCode::default()),
        )
        .await?;
    let me = change.api.me().await?;
    let mut page =
        pages::EnrollmentCodePage::new(&change.api.session, &me, org, &code).into_response();
    *page.status_mut() = StatusCode::CREATED;
    Ok(page)
}
