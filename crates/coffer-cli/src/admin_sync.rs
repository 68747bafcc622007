//! `coffer admin records` and `coffer admin authors`: the synced records
//! of an organization through the control plane's API (reads of bodies
//! are audited by the server).

use coffer_protocol::path_segment;
use coffer_protocol::sync::{
    AuthorBound, BindAuthor, ProvisionalAuthors, RecordDetail, RecordList, RecordsQuery,
    ResolveRequest, Resolved, Revision,
};
use reqwest::Method;
use serde_json::{json, Value};

use crate::admin::{answer, shown, Authed};
use crate::cli::{AdminAuthorsCommand, AdminRecordsCommand};
use crate::exit::CliError;

fn record_path(org: i64, app: &str, collection: &str, id: &str) -> String {
    format!(
        "/v1/orgs/{org}/records/{}/{}/{}",
        path_segment(app),
        path_segment(collection),
        path_segment(id)
    )
}

fn read_body(path: &std::path::Path) -> Result<Value, CliError> {
    let bytes = if path.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
            .map_err(|e| CliError::usage(format!("cannot read standard input: {e}")))?;
        bytes
    } else {
        std::fs::read(path)
            .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| CliError::usage(format!("the body is not JSON: {e}")))
}

/// `coffer admin records …`.
pub fn records(command: &AdminRecordsCommand, authed: &Authed<'_>) -> Result<Value, CliError> {
    match command {
        AdminRecordsCommand::List {
            org,
            app,
            collection,
            conflicts,
            provisional,
            after,
            limit,
        } => {
            let query = RecordsQuery {
                app: app.clone(),
                collection: collection.clone(),
                conflicts: conflicts.then_some(true),
                provisional: provisional.then_some(true),
                after: after.clone(),
                limit: Some(*limit),
                format: None,
            };
            let list: RecordList = answer(
                authed(Method::GET, &format!("/v1/orgs/{org}/records"))?
                    .query(&query)
                    .send(),
            )?;
            shown(&list)
        }
        AdminRecordsCommand::Show {
            org,
            app,
            collection,
            id,
        } => {
            let detail: RecordDetail =
                answer(authed(Method::GET, &record_path(*org, app, collection, id))?.send())?;
            shown(&detail)
        }
        AdminRecordsCommand::Export {
            org,
            app,
            format,
            out,
        } => {
            if !matches!(format.as_str(), "json" | "csv") {
                return Err(CliError::usage("--format takes json or csv"));
            }
            let query = RecordsQuery {
                app: Some(app.clone()),
                format: Some(format.clone()),
                ..RecordsQuery::default()
            };
            let response = authed(Method::GET, &format!("/v1/orgs/{org}/records/export"))?
                .timeout(std::time::Duration::from_secs(24 * 3600))
                .query(&query)
                .send();
            let mut response = match response {
                Ok(r) if r.status().is_success() => r,
                // The typed refusal, worded as every other.
                other => {
                    let Json = answer(other)?;
                    return Err(CliError::other("the server's answer is not an export"));
                }
            };
            // Streamed as it comes: an export of a million records is never
            // held whole here either.
            match out {
                Some(path) => {
                    let mut file = std::fs::File::create(path).map_err(|e| {
                        CliError::other(format!("cannot write {}: {e}", path.display()))
                    })?;
                    let bytes = std::io::copy(&mut response, &mut file)
                        .map_err(|e| CliError::other(format!("the export was cut short: {e}")))?;
                    file.sync_all().map_err(|e| {
                        CliError::other(format!("cannot write {}: {e}", path.display()))
                    })?;
                    Ok(json!({"written": path.display().to_string(), "bytes": bytes}))
                }
                None => {
                    let mut stdout = std::io::stdout().lock();
                    std::io::copy(&mut response, &mut stdout)
                        .map_err(|e| CliError::other(format!("the export was cut short: {e}")))?;
                    // Written already: nothing more to print.
                    Ok(Value::Null)
                }
            }
        }
        AdminRecordsCommand::Resolve {
            org,
            app,
            collection,
            id,
            keep,
            body,
            delete,
        } => {
            // The leaves this admin resolves are the ones there now: had a
            // device pushed another conflict since, the server refuses.
            let seen: RecordDetail =
                answer(authed(Method::GET, &record_path(*org, app, collection, id))?.send())?;
            let leaves = Some(seen.leaves.iter().map(|l| l.revision).collect());
            let (keep, body) =
                match (keep, body, delete) {
                    (Some(keep), None, false) => (
                        Some(keep.parse::<Revision>().map_err(|e| {
                            CliError::usage(format!("--keep takes a revision: {e}"))
                        })?),
                        None,
                    ),
                    (None, Some(path), false) => (None, Some(read_body(path)?)),
                    (None, None, true) => (None, None),
                    _ => {
                        return Err(CliError::usage(
                            "give exactly one of --keep REVISION, --body FILE and --delete",
                        ))
                    }
                };
            let request = ResolveRequest {
                keep,
                body,
                delete: *delete,
                leaves,
            };
            let resolved: Resolved = answer(
                authed(
                    Method::POST,
                    &format!("{}/resolve", record_path(*org, app, collection, id)),
                )?
                .json(&request)
                .send(),
            )?;
            shown(&resolved)
        }
    }
}

/// Any JSON answer (only its refusals are read: an export streams).
struct Json;

impl coffer_protocol::Answer for Json {
    fn decode(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice::<Value>(body).map(|_| Json)
    }
}

/// `coffer admin authors …`.
pub fn authors(command: &AdminAuthorsCommand, authed: &Authed<'_>) -> Result<Value, CliError> {
    match command {
        AdminAuthorsCommand::List { org } => {
            let list: ProvisionalAuthors =
                answer(authed(Method::GET, &format!("/v1/orgs/{org}/sync/authors"))?.send())?;
            shown(&list)
        }
        AdminAuthorsCommand::Bind {
            org,
            device,
            author,
            user_id,
        } => {
            let bound: AuthorBound = answer(
                authed(Method::POST, &format!("/v1/orgs/{org}/sync/authors/bind"))?
                    .json(&BindAuthor {
                        device_id: *device,
                        author: author.clone(),
                        user_id: *user_id,
                    })
                    .send(),
            )?;
            shown(&bound)
        }
    }
}
