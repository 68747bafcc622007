//! Synced records: the list (with conflicts first to hand), one record with
//! its body, files and conflict leaves, and resolving a conflict.

use axum::extract::{Path, Query};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use coffer_protocol::sync::{
    RecordDetail, RecordList, RecordsQuery, ResolveRequest, Resolved, Revision,
};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};

use super::client::{csrf_forms, Change, ConsoleError, Signed};
use super::pages;

/// Records one page lists.
const PAGE_RECORDS: u32 = 200;

/// What a path segment keeps as it is: letters, digits, `-`, `_`, `~`
/// (not `.`: a segment `..` must never be read as one).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');

/// The API's path of one record (ids are the devices' own: any bytes).
pub(super) fn api_path(org: i64, app: &str, collection: &str, id: &str) -> String {
    let segment = |text: &str| utf8_percent_encode(text, SEGMENT).to_string();
    format!(
        "/v1/orgs/{org}/records/{}/{}/{}",
        segment(app),
        segment(collection),
        segment(id)
    )
}

/// Which record a console page is about: in the query, not the path, so
/// that no id (`..`, `a/b`, `%2e%2e`) can be rewritten by a browser's
/// path normalization.
#[derive(Debug, Deserialize, Serialize)]
pub(super) struct RecordName {
    app: String,
    collection: String,
    id: String,
}

/// The console's link to one record (`resolve`: its resolve form's).
pub(super) fn console_link(
    org: i64,
    app: &str,
    collection: &str,
    id: &str,
    resolve: bool,
) -> String {
    let query = serde_urlencoded::to_string(RecordName {
        app: app.to_owned(),
        collection: collection.to_owned(),
        id: id.to_owned(),
    })
    .unwrap_or_default();
    let page = if resolve { "record/resolve" } else { "record" };
    format!("/console/orgs/{org}/{page}?{query}")
}

/// The list's filter, as its form sends it.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ListFilter {
    #[serde(default)]
    app: String,
    #[serde(default)]
    collection: String,
    #[serde(default)]
    conflicts: String,
    #[serde(default)]
    after: String,
}

pub(super) async fn list(
    signed: Signed,
    Path(org): Path<i64>,
    Query(filter): Query<ListFilter>,
) -> Result<Response, ConsoleError> {
    let given = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
    let query = RecordsQuery {
        app: given(&filter.app),
        collection: given(&filter.collection),
        conflicts: (filter.conflicts == "on").then_some(true),
        provisional: None,
        after: given(&filter.after),
        limit: Some(PAGE_RECORDS),
        format: None,
    };
    let encoded = serde_urlencoded::to_string(&query).map_err(|_| ConsoleError::internal())?;
    let records: RecordList = signed
        .api
        .get(&format!("/v1/orgs/{org}/records?{encoded}"))
        .await?;
    // The next page's link keeps the filter.
    let next = records
        .next_after
        .as_ref()
        .map(|after| {
            serde_urlencoded::to_string([
                ("app", filter.app.as_str()),
                ("collection", filter.collection.as_str()),
                ("conflicts", filter.conflicts.as_str()),
                ("after", after.as_str()),
            ])
        })
        .transpose()
        .map_err(|_| ConsoleError::internal())?;
    Ok(pages::Records::new(
        &signed,
        org,
        query.app.unwrap_or_default(),
        query.collection.unwrap_or_default(),
        query.conflicts.is_some(),
        records,
        next,
    )
    .into_response())
}

pub(super) async fn one(
    signed: Signed,
    Path(org): Path<i64>,
    Query(name): Query<RecordName>,
) -> Result<Response, ConsoleError> {
    let detail: RecordDetail = signed
        .api
        .get(&api_path(org, &name.app, &name.collection, &name.id))
        .await?;
    Ok(pages::RecordPage::new(&signed, org, detail).into_response())
}

/// The resolve form: what to keep, and the leaves the page showed.
#[derive(Deserialize)]
pub(super) struct ResolveForm {
    csrf: String,
    /// `keep`, `body` or `delete`.
    choice: String,
    /// For `keep`: the revision.
    #[serde(default)]
    keep: String,
    /// For `body`: the new body, JSON.
    #[serde(default)]
    body: String,
    /// For `delete`: the record's id typed again.
    #[serde(default)]
    confirm: String,
    /// The leaves the page showed, space-separated.
    leaves: String,
}

csrf_forms!(ResolveForm);

impl ResolveForm {
    fn request(&self, id: &str) -> Result<ResolveRequest, String> {
        let leaves = self
            .leaves
            .split_whitespace()
            .map(str::parse::<Revision>)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let mut request = ResolveRequest {
            keep: None,
            body: None,
            delete: false,
            leaves: Some(leaves),
        };
        match self.choice.as_str() {
            "keep" => {
                request.keep = Some(
                    self.keep
                        .parse()
                        .map_err(|e: coffer_protocol::sync::BadRevision| e.to_string())?,
                )
            }
            "body" => {
                request.body = Some(
                    serde_json::from_str(&self.body)
                        .map_err(|e| format!("the new body is not JSON: {e}"))?,
                );
            }
            "delete" if self.confirm == id => request.delete = true,
            "delete" => {
                return Err("the id typed is not the record's: nothing was deleted".to_owned())
            }
            _ => return Err("choose what to keep".to_owned()),
        }
        Ok(request)
    }
}

pub(super) async fn resolve(
    Path(org): Path<i64>,
    Query(name): Query<RecordName>,
    change: Change<ResolveForm>,
) -> Result<Response, ConsoleError> {
    let RecordName {
        app,
        collection,
        id,
    } = name;
    let request = change
        .form
        .request(&id)
        .map_err(|problem| ConsoleError::refused(StatusCode::UNPROCESSABLE_ENTITY, problem))?;
    let path = api_path(org, &app, &collection, &id);
    let _: Resolved = change
        .api
        .send(Method::POST, &format!("{path}/resolve"), Some(&request))
        .await?;
    Ok(Redirect::to(&console_link(org, &app, &collection, &id, false)).into_response())
}
