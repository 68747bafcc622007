//! An organization's policy: the current one and its history, a draft's
//! changes before anything is signed, and publishing it.

use std::time::Duration;

use axum::extract::Path;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use coffer_protocol::policy::{Document, PolicyHistory, PublishRequest, Rules, SignedPolicy};
use coffer_protocol::ErrorCode;
use serde::Deserialize;

use super::client::{csrf_forms, Api, Change, ConsoleError, Signed};
use super::pages::{self, DiffLine};

/// How many versions the policy page lists.
const HISTORY_SHOWN: i64 = 20;

/// The longest a page's diffs may take to compute, all told: past it, the
/// lines differ as wholes (correct, only less precise).
const DIFF_DEADLINE: Duration = Duration::from_millis(500);

/// The latest signed policy's document, `None` before the first.
pub(super) async fn current_document(
    api: &Api,
    org: i64,
) -> Result<Option<Document>, ConsoleError> {
    let answer: Result<SignedPolicy, _> = api.get(&format!("/v1/orgs/{org}/policies/latest")).await;
    match answer {
        Ok(signed) => serde_json::from_str::<Document>(&signed.document)
            .map(Some)
            .map_err(|_| ConsoleError::internal()),
        Err(ConsoleError::Refused(_, _, Some(ErrorCode::NoPolicy))) => Ok(None),
        Err(other) => Err(other),
    }
}

/// Rules as people read them: pretty JSON.
pub(super) fn pretty_rules(rules: &Rules) -> String {
    // Plain structs with string keys: serializing cannot fail.
    serde_json::to_string_pretty(rules).unwrap_or_default()
}

/// The line diff of `old` to `new`, off the async threads and within
/// [`DIFF_DEADLINE`] (a draft is up to the API's body limit, and any
/// member's browser may ask).
async fn diffs(pairs: Vec<(String, String)>) -> Result<Vec<Vec<DiffLine>>, ConsoleError> {
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + DIFF_DEADLINE;
        pairs
            .iter()
            .map(|(old, new)| pages::diff_lines(old, new, deadline))
            .collect()
    })
    .await
    .map_err(|_| ConsoleError::internal())
}

pub(super) async fn current(
    signed: Signed,
    Path(org): Path<i64>,
) -> Result<Response, ConsoleError> {
    // One more than shown: the oldest shown is diffed against it.
    let history: PolicyHistory = signed
        .api
        .get(&format!(
            "/v1/orgs/{org}/policies?limit={}",
            HISTORY_SHOWN + 1
        ))
        .await?;
    let documents: Vec<(Document, i64, String)> = history
        .policies
        .into_iter()
        .map(|p| {
            serde_json::from_str::<Document>(&p.document)
                .map(|d| (d, p.published_at, p.published_by))
                .map_err(|_| ConsoleError::internal())
        })
        .collect::<Result<_, _>>()?;
    // Each version against the one before it (the oldest shown against
    // nothing: its whole text).
    let shown = usize::try_from(HISTORY_SHOWN).unwrap_or(usize::MAX);
    let pairs = documents
        .iter()
        .take(shown)
        .enumerate()
        .map(|(i, (d, _, _))| {
            let before = documents
                .get(i + 1)
                .map(|(p, _, _)| pretty_rules(&p.rules))
                .unwrap_or_default();
            (before, pretty_rules(&d.rules))
        })
        .collect();
    let changes = diffs(pairs).await?;
    Ok(pages::PolicyPage::new(&signed, org, documents, changes).into_response())
}

/// The policy form: the version to publish and the rules, as JSON.
#[derive(Deserialize)]
pub(super) struct PolicyForm {
    csrf: String,
    version: String,
    rules: String,
}

csrf_forms!(PolicyForm);

impl PolicyForm {
    /// The request the form describes, or why it is not one.
    fn request(&self) -> Result<PublishRequest, String> {
        let version = self
            .version
            .trim()
            .parse::<i64>()
            .map_err(|_| "the version must be a whole number".to_owned())?;
        let rules: Rules = serde_json::from_str(&self.rules)
            .map_err(|e| format!("the rules are not valid JSON for a policy: {e}"))?;
        let request = PublishRequest { version, rules };
        request.check().map_err(|e| e.to_string())?;
        // What the API is sent (compact), not the text as typed or shown.
        let sent = serde_json::to_vec(&request).map_or(usize::MAX, |b| b.len());
        if sent > coffer_protocol::MAX_REQUEST_BODY {
            return Err(format!(
                "the rules are too long: {sent} bytes, above the {} the server takes",
                coffer_protocol::MAX_REQUEST_BODY
            ));
        }
        Ok(request)
    }
}

pub(super) async fn preview(
    Path(org): Path<i64>,
    change: Change<PolicyForm>,
) -> Result<Response, ConsoleError> {
    let Change { api, form } = change;
    let me = api.me().await?;
    let manages = me
        .organizations
        .iter()
        .any(|m| m.id == org && (m.role == "owner" || m.role == "admin"));
    if !manages {
        return Err(ConsoleError::refused(
            StatusCode::FORBIDDEN,
            "only the organization's owners and admins publish its policy",
        ));
    }
    let current = current_document(&api, org).await?;
    let page = match form.request() {
        Ok(request) => {
            let old = current
                .as_ref()
                .map(|d| pretty_rules(&d.rules))
                .unwrap_or_default();
            let new = pretty_rules(&request.rules);
            let diff = diffs(vec![(old, new.clone())])
                .await?
                .pop()
                .unwrap_or_default();
            pages::PolicyPreview::new(&api.session, &me, org, request.version, new, diff)
        }
        Err(problem) => pages::PolicyPreview::refused(
            &api.session,
            &me,
            org,
            &form.version,
            &form.rules,
            &problem,
        ),
    };
    Ok(page.into_response())
}

pub(super) async fn publish(
    Path(org): Path<i64>,
    change: Change<PolicyForm>,
) -> Result<Response, ConsoleError> {
    let request = change
        .form
        .request()
        .map_err(|problem| ConsoleError::refused(StatusCode::UNPROCESSABLE_ENTITY, problem))?;
    let _: SignedPolicy = change
        .api
        .send(
            Method::POST,
            &format!("/v1/orgs/{org}/policies"),
            Some(&request),
        )
        .await?;
    Ok(Redirect::to(&format!("/console/orgs/{org}/policy")).into_response())
}
