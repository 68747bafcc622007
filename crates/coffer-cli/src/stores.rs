//! `coffer app`, `sql`, `kv` and `records`: the per-app stores from the
//! command line.

use std::io::{Read, Write};

use coffer_device::{Capabilities, Capability, Record};
use rusqlite::types::ValueRef;
use serde_json::{json, Value};

use crate::cli::{AppCommand, Global, KvCommand, RecordsCommand};
use crate::commands::{unlock, Report};
use crate::exit::CliError;

fn read_stdin() -> Result<Vec<u8>, CliError> {
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(|e| CliError::usage(format!("cannot read stdin: {e}")))?;
    Ok(buf)
}

fn caps_json(caps: Capabilities) -> Value {
    json!(caps.iter().map(Capability::name).collect::<Vec<_>>())
}

pub fn app(global: &Global, command: &AppCommand) -> Result<Report, CliError> {
    let vault = unlock(global)?;
    match command {
        AppCommand::Add { name, allow } => {
            let mut caps = Capabilities::none();
            for c in allow {
                caps = caps.with(c.trim().parse()?);
            }
            let app = vault.add_app(name, caps)?;
            Ok(Report {
                json: json!({"added": {"name": app.name, "capabilities": caps_json(app.capabilities)}}),
                text: format!(
                    "Added app '{}' with {}",
                    app.name,
                    caps.iter()
                        .map(Capability::name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
        }
        AppCommand::Ls => {
            let apps = vault.apps()?;
            let text = if apps.is_empty() {
                "No apps ('coffer app add NAME' adds one)".to_owned()
            } else {
                apps.iter()
                    .map(|a| {
                        format!(
                            "{:<24} {}",
                            a.name,
                            a.capabilities
                                .iter()
                                .map(Capability::name)
                                .collect::<Vec<_>>()
                                .join(",")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            Ok(Report {
                json: json!({"apps": apps.iter().map(|a| json!({
                    "name": a.name,
                    "capabilities": caps_json(a.capabilities),
                    "created_at": humantime::format_rfc3339_seconds(a.created_at()).to_string(),
                })).collect::<Vec<_>>()}),
                text,
            })
        }
    }
}

fn cell_json(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => json!(i),
        ValueRef::Real(f) => json!(f),
        ValueRef::Text(t) => json!(String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => {
            json!({"hex": b.iter().map(|x| format!("{x:02x}")).collect::<String>()})
        }
    }
}

fn cell_text(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::String(s) => s.clone(),
        Value::Object(o) => format!("x'{}'", o.get("hex").and_then(Value::as_str).unwrap_or("")),
        other => other.to_string(),
    }
}

pub fn sql(global: &Global, app: &str, query: &str) -> Result<Report, CliError> {
    let vault = unlock(global)?;
    let conn = vault.app(app)?.database()?;
    let sql_err = |e: rusqlite::Error| CliError::usage(format!("SQL error: {e}"));
    let mut stmt = conn.prepare(query).map_err(sql_err)?;
    if stmt.column_count() == 0 {
        let changed = stmt.execute([]).map_err(sql_err)?;
        return Ok(Report {
            json: json!({"changed": changed}),
            text: format!("{changed} row(s) changed"),
        });
    }
    let columns: Vec<String> = stmt.column_names().map(str::to_owned).collect();
    let mut rows = stmt.query([]).map_err(sql_err)?;
    let mut out: Vec<Vec<Value>> = Vec::new();
    while let Some(row) = rows.next().map_err(sql_err)? {
        let cells = (0..columns.len())
            .map(|i| row.get_ref(i).map(cell_json))
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql_err)?;
        out.push(cells);
    }
    let texts: Vec<Vec<String>> = out
        .iter()
        .map(|r| r.iter().map(cell_text).collect())
        .collect();
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| {
            texts
                .iter()
                .map(|r| r[i].chars().count())
                .chain([columns[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut text = line(&columns);
    for r in &texts {
        text.push('\n');
        text.push_str(&line(r));
    }
    text.push_str(&format!(
        "\n({} row{})",
        texts.len(),
        if texts.len() == 1 { "" } else { "s" }
    ));
    Ok(Report {
        json: json!({"columns": columns, "rows": out}),
        text,
    })
}

pub fn kv(global: &Global, command: &KvCommand) -> Result<Report, CliError> {
    let vault = unlock(global)?;
    match command {
        KvCommand::Get { app, key } => {
            let kv = vault.app(app)?.kv()?;
            let value = kv.get(key)?.ok_or_else(|| CliError {
                exit: crate::exit::ExitCode::NotFound,
                code: "no_such_key",
                message: format!("no key {key:?} in app '{app}'"),
            })?;
            if global.json {
                let shown = match std::str::from_utf8(&value) {
                    Ok(text) => json!({"key": key, "text": text}),
                    Err(_) => {
                        json!({"key": key, "hex": value.iter().map(|b| format!("{b:02x}")).collect::<String>()})
                    }
                };
                return Ok(Report {
                    json: shown,
                    text: String::new(),
                });
            }
            // Raw bytes, exactly as stored: scripts can pipe them.
            std::io::stdout()
                .write_all(&value)
                .and_then(|()| std::io::stdout().flush())
                .map_err(|e| CliError::other(format!("cannot write stdout: {e}")))?;
            Ok(Report {
                json: Value::Null,
                text: String::new(),
            })
        }
        KvCommand::Put { app, key, value } => {
            let bytes = if value == "-" {
                read_stdin()?
            } else {
                value.as_bytes().to_vec()
            };
            vault.app(app)?.kv()?.put(key, &bytes)?;
            Ok(Report {
                json: json!({"put": key, "bytes": bytes.len()}),
                text: format!("Set {key:?} ({} bytes)", bytes.len()),
            })
        }
        KvCommand::Rm { app, key } => {
            if !vault.app(app)?.kv()?.delete(key)? {
                return Err(CliError {
                    exit: crate::exit::ExitCode::NotFound,
                    code: "no_such_key",
                    message: format!("no key {key:?} in app '{app}'"),
                });
            }
            Ok(Report {
                json: json!({"deleted": key}),
                text: format!("Deleted {key:?}"),
            })
        }
        KvCommand::Ls { app, prefix } => {
            let keys = vault.app(app)?.kv()?.list(prefix)?;
            Ok(Report {
                text: keys.join("\n"),
                json: json!({"keys": keys}),
            })
        }
    }
}

fn record_json(r: &Record) -> Value {
    json!({
        "collection": r.collection,
        "id": r.id,
        "version": r.version,
        "deleted": r.deleted,
        "updated_at": humantime::format_rfc3339_seconds(r.updated_at).to_string(),
        "body": r.body,
    })
}

pub fn records(global: &Global, command: &RecordsCommand) -> Result<Report, CliError> {
    let vault = unlock(global)?;
    match command {
        RecordsCommand::Put {
            app,
            collection,
            id,
            body,
            base_version,
        } => {
            let text = if body == "-" {
                read_stdin()?
            } else {
                body.as_bytes().to_vec()
            };
            let value: Value = serde_json::from_slice(&text)
                .map_err(|e| CliError::usage(format!("the body is not JSON: {e}")))?;
            let record = vault
                .app(app)?
                .records()?
                .put(collection, id, &value, *base_version)?;
            Ok(Report {
                json: record_json(&record),
                text: format!("{collection}/{id} is at version {}", record.version),
            })
        }
        RecordsCommand::Get {
            app,
            collection,
            id,
        } => {
            let record = vault
                .app(app)?
                .records()?
                .get(collection, id)?
                .filter(|r| !r.deleted)
                .ok_or_else(|| {
                    CliError::from(coffer_device::Error::NoSuchRecord {
                        collection: collection.clone(),
                        id: id.clone(),
                    })
                })?;
            Ok(Report {
                text: serde_json::to_string_pretty(&record.body).unwrap_or_default(),
                json: record_json(&record),
            })
        }
        RecordsCommand::Rm {
            app,
            collection,
            id,
            base_version,
        } => {
            let record = vault
                .app(app)?
                .records()?
                .delete(collection, id, *base_version)?;
            Ok(Report {
                json: record_json(&record),
                text: format!("Deleted {collection}/{id} (version {})", record.version),
            })
        }
        RecordsCommand::Ls { app, collection } => {
            let records = vault.app(app)?.records()?.list(collection)?;
            Ok(Report {
                text: records
                    .iter()
                    .map(|r| format!("{:<24} v{:<4} {}", r.id, r.version, r.body))
                    .collect::<Vec<_>>()
                    .join("\n"),
                json: json!({"records": records.iter().map(record_json).collect::<Vec<_>>()}),
            })
        }
    }
}
