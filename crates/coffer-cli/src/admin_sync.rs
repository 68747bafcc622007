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
use crate::exit::{CliError, ExitCode};

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
        AdminRecordsCommand::File {
            org,
            app,
            collection,
            id,
            name,
            out,
        } => record_file(authed, *org, app, collection, id, name, out),
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

/// `coffer admin records file`: the file named `name` of one record, at
/// the version its head references, fetched from the server (audited
/// there) into a partial file beside `out` and renamed over it only once
/// its size and SHA-256 are the ones the record names.
fn record_file(
    authed: &Authed<'_>,
    org: i64,
    app: &str,
    collection: &str,
    id: &str,
    name: &str,
    out: &std::path::Path,
) -> Result<Value, CliError> {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Write};

    let detail: RecordDetail =
        answer(authed(Method::GET, &record_path(org, app, collection, id))?.send())?;
    let file = detail
        .files
        .iter()
        .find(|f| f.name == name)
        .ok_or_else(|| CliError {
            exit: ExitCode::NotFound,
            code: "no_such_file",
            message: format!(
                "record {collection}/{id} references no file {name:?} ('coffer admin records show' lists its files)"
            ),
        })?;
    // Checked before it names a path on the server or a byte is kept.
    if !coffer_protocol::files::is_sha256_hex(&file.sha256) {
        return Err(CliError::other(
            "the server's answer names the file by an invalid SHA-256",
        ));
    }
    let path = coffer_protocol::files::ADMIN_FETCH_PATH
        .replace("{org}", &org.to_string())
        .replace("{app}", &path_segment(app))
        .replace("{sha256}", &file.sha256);
    let response = authed(Method::GET, &path)?
        .timeout(std::time::Duration::from_secs(24 * 3600))
        .send();
    let mut response = match response {
        Ok(r) if r.status().is_success() => r,
        other => {
            let Json = answer(other)?;
            return Err(CliError::other("the server's answer is not a file"));
        }
    };
    let cannot_write =
        |e: std::io::Error| CliError::other(format!("cannot write {}: {e}", out.display()));
    // Plaintext on its way: beside the target, removed on any error or
    // signal (crate::partial).
    let mut partial = crate::partial::PartialFile::beside(out)
        .map_err(|e| CliError::other(format!("cannot write beside {}: {e}", out.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = zeroize::Zeroizing::new(vec![0u8; 256 * 1024]);
    let mut written = 0u64;
    loop {
        let n = response
            .read(&mut buf)
            .map_err(|e| CliError::other(format!("the file was cut short: {e}")))?;
        if n == 0 {
            break;
        }
        written += n as u64;
        if written > file.size {
            break;
        }
        hasher.update(&buf[..n]);
        partial
            .file_mut()
            .write_all(&buf[..n])
            .map_err(cannot_write)?;
    }
    if written != file.size || hex::encode(hasher.finalize()) != file.sha256 {
        return Err(CliError {
            exit: ExitCode::Corrupt,
            code: "file_mismatch",
            message: "the bytes the server sent are not the file the record names (size or SHA-256): nothing was written".into(),
        });
    }
    partial.file_mut().sync_all().map_err(cannot_write)?;
    partial.persist(out).map_err(cannot_write)?;
    Ok(json!({
        "written": out.display().to_string(),
        "name": name,
        "bytes": written,
        "sha256": file.sha256,
        "content_type": file.content_type,
    }))
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
