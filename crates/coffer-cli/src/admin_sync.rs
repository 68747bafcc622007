//! `coffer admin records` and `coffer admin authors`: the synced records
//! of an organization through the control plane's API (reads of bodies
//! are audited by the server).

use coffer_protocol::admin::Csv;
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
            let request = authed(Method::GET, &format!("/v1/orgs/{org}/records/export"))?
                .query(&query)
                .send();
            let text = if format == "csv" {
                let Csv(text) = answer(request)?;
                text
            } else {
                let list: Value = answer::<Json>(request)?.0;
                serde_json::to_string_pretty(&list).unwrap_or_default()
            };
            match out {
                Some(path) => {
                    std::fs::write(path, text.as_bytes()).map_err(|e| {
                        CliError::other(format!("cannot write {}: {e}", path.display()))
                    })?;
                    Ok(json!({"written": path.display().to_string()}))
                }
                None => Ok(Value::String(text)),
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
            let request =
                match (keep, body, delete) {
                    (Some(keep), None, false) => ResolveRequest {
                        keep: Some(keep.parse::<Revision>().map_err(|e| {
                            CliError::usage(format!("--keep takes a revision: {e}"))
                        })?),
                        body: None,
                        delete: false,
                    },
                    (None, Some(path), false) => ResolveRequest {
                        keep: None,
                        body: Some(read_body(path)?),
                        delete: false,
                    },
                    (None, None, true) => ResolveRequest {
                        keep: None,
                        body: None,
                        delete: true,
                    },
                    _ => {
                        return Err(CliError::usage(
                            "give exactly one of --keep REVISION, --body FILE and --delete",
                        ))
                    }
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

/// Any JSON answer, kept as it came (an export is passed through).
struct Json(Value);

impl coffer_protocol::Answer for Json {
    fn decode(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body).map(Json)
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
