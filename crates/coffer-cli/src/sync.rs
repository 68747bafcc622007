//! `coffer sync` and `coffer conflicts`: the record sync of the device
//! agent (`coffer_agent::Agent::sync`), worded. This module gathers the
//! inputs, draws progress on a terminal and words the reports; the
//! behaviour is the agent's and the device library's.

use coffer_agent::{AppSync, FileDirection, SyncObserver, SyncReport};
use coffer_device::{Conflict, Resolution, Side, SyncState};
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use coffer_protocol::untrusted::Untrusted;

use crate::cli::{ConflictsCommand, Global, Keep, SyncCommand};
use crate::commands::Report;
use crate::exit::{CliError, ExitCode};

/// Progress on a terminal (hidden for --json or a pipe): one bar at a
/// time, per phase or per file, with a rate and an ETA for pushes and for
/// each file's bytes (their totals are known).
struct Bars {
    visible: bool,
    bar: Option<ProgressBar>,
    phase: String,
}

impl Bars {
    fn new(global: &Global) -> Bars {
        Bars {
            visible: !global.json && std::io::IsTerminal::is_terminal(&std::io::stderr()),
            bar: None,
            phase: String::new(),
        }
    }

    fn bar(&mut self, phase: &str, total: Option<u64>, template: &str) -> &ProgressBar {
        if self.phase != phase {
            if let Some(bar) = self.bar.take() {
                bar.finish_and_clear();
            }
            let bar = if !self.visible {
                ProgressBar::hidden()
            } else if let Some(total) = total {
                ProgressBar::new(total)
            } else {
                ProgressBar::new_spinner()
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            self.bar = Some(bar);
            self.phase = phase.to_owned();
        }
        self.bar.get_or_insert_with(ProgressBar::hidden)
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl SyncObserver for Bars {
    fn pushed(&mut self, app: &str, done: u64, total: u64) {
        let bar = self.bar(
            "push",
            Some(total),
            "{msg} {bar:30} {pos}/{len} changes, {per_sec}, ETA {eta}",
        );
        bar.set_length(total);
        bar.set_position(done);
        bar.set_message(format!("Pushing {app}"));
    }

    fn pulled(&mut self, app: &str, records: u64) {
        let bar = self.bar("pull", None, "{spinner} {msg} {pos} records, {per_sec}");
        bar.set_position(records);
        bar.set_message(format!("Pulling {app}"));
    }

    fn file_progress(
        &mut self,
        app: &str,
        direction: FileDirection,
        name: &str,
        done: u64,
        total: u64,
    ) {
        let verb = match direction {
            FileDirection::Upload => "Uploading",
            FileDirection::Download => "Downloading",
        };
        let phase = format!("{verb} {app} {name}");
        let new = self.phase != phase;
        let bar = self.bar(
            &phase,
            Some(total),
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        );
        bar.set_length(total);
        bar.set_position(done);
        if new {
            // A resumed file starts part way: the rate and the ETA count
            // from here.
            bar.reset_eta();
            // A name may come from another device: escaped.
            bar.set_message(format!("{verb} {app} {}", Untrusted::new(name)));
        }
    }
}

fn state_json(state: &SyncState) -> Value {
    json!({
        "complete": state.complete,
        "cursor": state.cursor,
        "pending": state.pending,
        "conflicts": state.conflicts,
        "rejected": state.rejected,
        "unseen": state.unseen,
        "downloads_queued": state.downloads_queued,
        "pulled_at": state.pulled_at,
    })
}

fn app_json(app: &AppSync) -> Value {
    json!({
        "app": app.app,
        "applied": app.applied,
        "duplicates": app.duplicates,
        "conflicts": app.conflicts,
        "rejected": app.rejected.iter().map(|(c, i, code)| json!({"collection": c, "id": i, "code": code})).collect::<Vec<_>>(),
        "pulled": app.pulled,
        "pages": app.pages,
        "reset": app.reset,
        "files": {
            "uploaded": app.files_uploaded,
            "bytes_uploaded": app.bytes_uploaded,
            "downloaded": app.files_downloaded,
            "bytes_downloaded": app.bytes_downloaded,
            "problems": app.file_problems.iter().map(|p| json!({
                "direction": match p.direction {
                    FileDirection::Upload => "upload",
                    FileDirection::Download => "download",
                },
                "name": p.name,
                "sha256": p.sha256,
                "code": p.code,
            })).collect::<Vec<_>>(),
        },
        "state": state_json(&app.state),
    })
}

fn state_line(state: &SyncState) -> String {
    let mut parts = vec![format!("{} pending", state.pending)];
    if state.conflicts > 0 {
        parts.push(format!(
            "{} in conflict ('coffer conflicts')",
            state.conflicts
        ));
    }
    if state.rejected > 0 {
        parts.push(format!(
            "{} refused by the server (edit them to try again)",
            state.rejected
        ));
    }
    if state.unseen > 0 {
        parts.push(format!(
            "{} no longer on the server (deleted there before its retention ended; kept here)",
            state.unseen
        ));
    }
    if state.downloads_queued > 0 {
        parts.push(format!(
            "{} file(s) waiting to download",
            state.downloads_queued
        ));
    }
    if !state.complete {
        parts.push("first sync not complete yet".into());
    }
    parts.join(", ")
}

fn round_text(report: &SyncReport) -> String {
    let mut lines = Vec::new();
    for app in &report.purged {
        lines.push(format!(
            "{app}: purged as the organization said (its data is crypto-erased)"
        ));
    }
    if report.apps.is_empty() && report.purged.is_empty() {
        lines.push("No app syncs: the organization's policy lists none.".into());
    }
    for app in &report.apps {
        let files = if app.files_uploaded + app.files_downloaded > 0
            || app.bytes_uploaded + app.bytes_downloaded > 0
        {
            format!(
                "; files: {} uploaded ({}), {} downloaded ({})",
                app.files_uploaded,
                HumanBytes(app.bytes_uploaded),
                app.files_downloaded,
                HumanBytes(app.bytes_downloaded)
            )
        } else {
            String::new()
        };
        let mut line = format!(
            "{}: pushed {} (+{} already there), pulled {} record(s){}{files}; {}.",
            app.app,
            app.applied,
            app.duplicates,
            app.pulled,
            if app.reset {
                " after starting over (the server no longer kept this device's place; nothing local was lost)"
            } else {
                ""
            },
            state_line(&app.state)
        );
        for (collection, id, code) in &app.rejected {
            line.push_str(&format!("\n  refused: {collection}/{id} ({code})"));
        }
        for problem in &app.file_problems {
            let name = Untrusted::new(&problem.name);
            line.push_str(&match problem.direction {
                FileDirection::Upload => format!(
                    "\n  file {name} not uploaded ({}): its record waits here",
                    problem.code
                ),
                FileDirection::Download => format!(
                    "\n  file {name} not downloaded ({}): the version here is kept, the next sync tries again",
                    problem.code
                ),
            });
        }
        lines.push(line);
    }
    lines.join("\n")
}

/// `coffer sync` (a round) and `coffer sync status`.
pub fn sync(global: &Global, command: Option<&SyncCommand>) -> Result<Report, CliError> {
    let vault = crate::commands::unlock(global)?;
    match command {
        None => {
            let mut bars = Bars::new(global);
            let done = crate::control::agent().sync(vault, &mut bars);
            bars.finish();
            let (report, _) = done?;
            Ok(Report {
                json: json!({
                    "apps": report.apps.iter().map(app_json).collect::<Vec<_>>(),
                    "purged": report.purged,
                    "server_time": report.check_in.server_time,
                }),
                text: round_text(&report),
            })
        }
        Some(SyncCommand::Status) => {
            let mut apps = Vec::new();
            let mut lines = Vec::new();
            for (app, state) in crate::control::agent().sync_status(&vault)? {
                lines.push(format!("{app}: {}.", state_line(&state)));
                let mut entry = state_json(&state);
                entry["app"] = json!(app);
                apps.push(entry);
            }
            if lines.is_empty() {
                lines.push("Nothing has synced yet: run 'coffer sync'.".into());
            }
            Ok(Report {
                json: json!({"apps": apps}),
                text: lines.join("\n"),
            })
        }
    }
}

fn files_json(files: &[coffer_device::FileRef]) -> Value {
    json!(files
        .iter()
        .map(|f| json!({"name": f.name, "sha256": f.sha256, "size": f.size, "content_type": f.content_type}))
        .collect::<Vec<_>>())
}

fn side_json(side: &Side) -> Value {
    json!({
        "revision": side.revision,
        "base": side.base,
        "deleted": side.deleted,
        "body": side.body,
        "files": files_json(&side.files),
        "author": side.author,
    })
}

fn conflict_json(app: &str, c: &Conflict) -> Value {
    json!({
        "app": app,
        "collection": c.collection,
        "id": c.id,
        "base": c.base,
        "local": if c.local_deleted { Value::Null } else { c.local.clone().unwrap_or(Value::Null) },
        "local_deleted": c.local_deleted,
        "local_files": files_json(&c.local_files),
        "server": c.server.as_ref().map(side_json),
        "leaves": c.leaves.iter().map(side_json).collect::<Vec<_>>(),
    })
}

fn body_text(body: Option<&Value>, deleted: bool) -> String {
    match body {
        _ if deleted => "(deleted)".into(),
        Some(v) => serde_json::to_string_pretty(v).unwrap_or_default(),
        None => "(not kept)".into(),
    }
}

/// `coffer conflicts [list|show|resolve]`. Listing exits with
/// [`ExitCode::Conflicts`] while any conflict remains.
pub fn conflicts(
    global: &Global,
    command: Option<&ConflictsCommand>,
) -> Result<(Report, Option<ExitCode>), CliError> {
    let vault = crate::commands::unlock(global)?;
    match command {
        None | Some(ConflictsCommand::List { .. }) => {
            let only = match command {
                Some(ConflictsCommand::List { app }) => app.as_deref(),
                _ => None,
            };
            let mut found = Vec::new();
            for info in vault.apps()? {
                if only.is_some_and(|a| a != info.name) {
                    continue;
                }
                let Ok(records) = vault.app(&info.name)?.records() else {
                    continue;
                };
                for c in records.conflicts()? {
                    found.push((info.name.clone(), c));
                }
            }
            let text = if found.is_empty() {
                "No conflicts.".to_owned()
            } else {
                let mut lines = vec![format!(
                    "{} record(s) in conflict ('coffer conflicts show APP COLLECTION ID' shows the sides):",
                    found.len()
                )];
                // Names and ids come from other devices: escaped before
                // they reach the terminal.
                for (app, c) in &found {
                    lines.push(format!(
                        "  {app} {}/{}: {} other side(s)",
                        Untrusted::new(&c.collection),
                        Untrusted::new(&c.id),
                        c.leaves.len() + usize::from(c.server.is_some())
                    ));
                }
                lines.join("\n")
            };
            let exit = (!found.is_empty()).then_some(ExitCode::Conflicts);
            Ok((
                Report {
                    json: json!({"conflicts": found.iter().map(|(a, c)| conflict_json(a, c)).collect::<Vec<_>>()}),
                    text,
                },
                exit,
            ))
        }
        Some(ConflictsCommand::Show {
            app,
            collection,
            id,
        }) => {
            let records = vault.app(app)?.records()?;
            let c = records.conflict(collection, id)?.ok_or_else(|| {
                coffer_device::Error::NotInConflict {
                    collection: collection.clone(),
                    id: id.clone(),
                }
            })?;
            let mut text = format!(
                "{app} {collection}/{id}\n-- base (what the local edit was made on):\n{}\n-- local:\n{}",
                body_text(c.base.as_ref(), false),
                body_text(c.local.as_ref(), c.local_deleted)
            );
            if let Some(server) = &c.server {
                text.push_str(&format!(
                    "\n-- server ({}, by {}):\n{}",
                    server.revision,
                    Untrusted::new(&server.author),
                    body_text(server.body.as_ref(), server.deleted)
                ));
            }
            for leaf in &c.leaves {
                text.push_str(&format!(
                    "\n-- leaf ({}, by {}):\n{}",
                    leaf.revision,
                    Untrusted::new(&leaf.author),
                    body_text(leaf.body.as_ref(), leaf.deleted)
                ));
            }
            text.push_str(&format!(
                "\nResolve with 'coffer conflicts resolve {app} {collection} {id} --keep local|server' (or --body FILE, --delete), then 'coffer sync'."
            ));
            Ok((
                Report {
                    json: conflict_json(app, &c),
                    text,
                },
                None,
            ))
        }
        Some(ConflictsCommand::Resolve {
            app,
            collection,
            id,
            keep,
            body,
            delete,
        }) => {
            let resolution = match (keep, body, delete) {
                (Some(Keep::Local), None, false) => Resolution::KeepLocal,
                (Some(Keep::Server), None, false) => Resolution::KeepServer,
                (None, Some(path), false) => {
                    let bytes = if path.as_os_str() == "-" {
                        let mut bytes = Vec::new();
                        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes).map_err(
                            |e| CliError::usage(format!("cannot read standard input: {e}")),
                        )?;
                        bytes
                    } else {
                        std::fs::read(path).map_err(|e| {
                            CliError::usage(format!("cannot read {}: {e}", path.display()))
                        })?
                    };
                    Resolution::Body(
                        serde_json::from_slice(&bytes)
                            .map_err(|e| CliError::usage(format!("the body is not JSON: {e}")))?,
                    )
                }
                (None, None, true) => Resolution::Delete,
                _ => {
                    return Err(CliError::usage(
                        "give exactly one of --keep local|server, --body FILE and --delete",
                    ))
                }
            };
            let mut records = vault.app(app)?.records()?;
            records.resolve(collection, id, resolution)?;
            Ok((
                Report {
                    json: json!({"app": app, "collection": collection, "id": id, "resolved": true}),
                    text: format!(
                        "Resolved {app} {collection}/{id} here; 'coffer sync' delivers it."
                    ),
                },
                None,
            ))
        }
    }
}
