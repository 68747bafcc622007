//! `coffer app`, `sql`, `kv` and `records`: the per-app stores from the
//! command line.

use std::io::{Read, Write};

use coffer_device::{Capabilities, Capability, FileInfo, Record};
use indicatif::{ProgressBar, ProgressStyle};
use rusqlite::types::ValueRef;
use serde_json::{json, Value};
use std::io::IsTerminal;

use crate::cli::{AppCommand, FilesCommand, Global, KvCommand, RecordsCommand};
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
    let sql_err = |e: rusqlite::Error| {
        if coffer_device::refused_by_confinement(&e) {
            CliError {
                exit: crate::exit::ExitCode::Denied,
                code: "sql_not_permitted",
                message: format!("SQL error: {e}: {}", coffer_device::SQL_CONFINEMENT),
            }
        } else {
            CliError::usage(format!("SQL error: {e}"))
        }
    };
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
        "files": r.files.iter().map(|f| json!({
            "name": f.name,
            "sha256": f.sha256,
            "size": f.size,
            "content_type": f.content_type,
        })).collect::<Vec<_>>(),
    })
}

/// A record's files, one line each, for `records get`. The names may come
/// from other devices: escaped before they reach the terminal.
fn files_text(r: &Record) -> String {
    r.files
        .iter()
        .map(|f| {
            format!(
                "file {} ({} bytes{}, sha256 {})",
                coffer_protocol::untrusted::Untrusted::new(&f.name),
                f.size,
                f.content_type
                    .as_deref()
                    .map(|t| format!(", {}", coffer_protocol::untrusted::Untrusted::new(t)))
                    .unwrap_or_default(),
                f.sha256
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
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
            files,
        } => {
            let text = if body == "-" {
                read_stdin()?
            } else {
                body.as_bytes().to_vec()
            };
            let value: Value = serde_json::from_slice(&text)
                .map_err(|e| CliError::usage(format!("the body is not JSON: {e}")))?;
            let mut records = vault.app(app)?.records()?;
            let record = if files.is_empty() {
                records.put(collection, id, &value, *base_version)?
            } else {
                let names: Vec<&str> = files.iter().map(String::as_str).collect();
                records.put_with_files(collection, id, &value, *base_version, &names)?
            };
            let attached = match record.files.len() {
                0 => String::new(),
                n => format!(", with {n} file(s)"),
            };
            Ok(Report {
                json: record_json(&record),
                text: format!(
                    "{collection}/{id} is at version {}{attached}",
                    record.version
                ),
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
            let mut text = serde_json::to_string_pretty(&record.body).unwrap_or_default();
            if !record.files.is_empty() {
                text.push('\n');
                text.push_str(&files_text(&record));
            }
            Ok(Report {
                text,
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

/// A byte progress bar with rate and ETA on stderr, for files over 1 MiB on a
/// terminal; hidden otherwise.
pub fn byte_bar(global: &Global, total: Option<u64>, verb: &str) -> ProgressBar {
    let big = total.is_none_or(|t| t > 1 << 20);
    if global.json || !big || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(t) => ProgressBar::new(t),
        None => ProgressBar::new_spinner(),
    };
    let template = if total.is_some() {
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}"
    } else {
        "{msg} {bytes} {bytes_per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(verb.to_owned());
    bar
}

fn file_json(f: &FileInfo) -> Value {
    json!({
        "name": f.name,
        "size": f.size,
        "content_type": f.content_type,
        "sha256": f.sha256,
        "updated_at": humantime::format_rfc3339_seconds(f.updated_at).to_string(),
    })
}

fn no_such_file(app: &str, name: &str) -> CliError {
    CliError {
        exit: crate::exit::ExitCode::NotFound,
        code: "no_such_file",
        message: format!("no file {name:?} in app '{app}'"),
    }
}

pub fn files(global: &Global, command: &FilesCommand) -> Result<Report, CliError> {
    // What can be refused without the vault is refused before the
    // passphrase is asked: a missing input file, a file for the terminal.
    let input = match command {
        FilesCommand::Put { path, .. } if path.as_os_str() != "-" => {
            let file = std::fs::File::open(path)
                .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
            Some(file)
        }
        FilesCommand::Get { out: None, .. } if std::io::stdout().is_terminal() => {
            return Err(CliError::usage(
                "refusing to write a stored file to the terminal: pass --out FILE, or --out - to write it anyway",
            ));
        }
        _ => None,
    };
    let vault = unlock(global)?;
    match command {
        FilesCommand::Put {
            app,
            name,
            content_type,
            ..
        } => {
            let store = vault.app(app)?.files()?;
            let (mut input, total): (Box<dyn Read>, Option<u64>) = match input {
                None => (Box::new(std::io::stdin().lock()), None),
                Some(file) => {
                    let len = file.metadata().map(|m| m.len()).ok();
                    (Box::new(file), len)
                }
            };
            let bar = byte_bar(global, total, "Encrypting");
            let info = store.put(name, &mut input, content_type.as_deref(), &mut |n| {
                bar.set_position(n)
            })?;
            bar.finish_and_clear();
            Ok(Report {
                text: format!("Stored {:?} ({} bytes)", info.name, info.size),
                json: json!({"stored": file_json(&info)}),
            })
        }
        FilesCommand::Get { app, name, out } => {
            let store = vault.app(app)?.files()?;
            let mut reader = store.open_file(name).map_err(|e| match e {
                coffer_device::Error::NoSuchFile { .. } => no_such_file(app, name),
                other => other.into(),
            })?;
            let to_stdout = out.as_ref().is_none_or(|p| p.as_os_str() == "-");
            let bar = byte_bar(global, Some(reader.len()), "Decrypting");
            let copied = if to_stdout {
                copy_with_progress(&mut reader, &mut std::io::stdout().lock(), &bar)?
            } else {
                let path = out
                    .as_ref()
                    .map(|p| p.as_path())
                    .unwrap_or(std::path::Path::new("-"));
                // Written next to the target and renamed, so a failed
                // decryption never leaves a partial file under the name; and
                // the partial file is removed on errors and signals, or
                // swept by a later run (crate::partial).
                let mut partial = crate::partial::PartialFile::beside(path).map_err(|e| {
                    CliError::other(format!("cannot write beside {}: {e}", path.display()))
                })?;
                let n = copy_with_progress(&mut reader, partial.file_mut(), &bar)?;
                partial.persist(path).map_err(|e| {
                    CliError::other(format!("cannot write {}: {e}", path.display()))
                })?;
                n
            };
            bar.finish_and_clear();
            if to_stdout {
                return Ok(Report {
                    json: Value::Null,
                    text: String::new(),
                });
            }
            Ok(Report {
                text: format!("Wrote {copied} bytes"),
                json: json!({"name": name, "bytes": copied}),
            })
        }
        FilesCommand::Rm { app, name } => {
            if !vault.app(app)?.files()?.delete(name)? {
                return Err(no_such_file(app, name));
            }
            Ok(Report {
                json: json!({"deleted": name}),
                text: format!("Deleted {name:?}"),
            })
        }
        FilesCommand::Ls { app } => {
            let list = vault.app(app)?.files()?.list()?;
            Ok(Report {
                text: list
                    .iter()
                    .map(|f| {
                        format!(
                            "{:<32} {:>12}  {}",
                            f.name,
                            f.size,
                            f.content_type.as_deref().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n"),
                json: json!({"files": list.iter().map(file_json).collect::<Vec<_>>()}),
            })
        }
    }
}

/// In debug builds only, `COFFER_TEST_WRITE_DELAY_MS`: a pause after each
/// block written, so that tests can interrupt a copy half way.
fn test_write_delay() -> Option<std::time::Duration> {
    #[cfg(debug_assertions)]
    if let Some(ms) = std::env::var("COFFER_TEST_WRITE_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Some(std::time::Duration::from_millis(ms));
    }
    None
}

fn copy_with_progress(
    reader: &mut dyn Read,
    out: &mut dyn Write,
    bar: &ProgressBar,
) -> Result<u64, CliError> {
    let mut buf = zeroize::Zeroizing::new(vec![0u8; 256 * 1024]);
    let mut total = 0u64;
    let delay = test_write_delay();
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(
                    match e
                        .into_inner()
                        .map(|inner| inner.downcast::<coffer_device::Error>())
                    {
                        Some(Ok(err)) => (*err).into(),
                        Some(Err(other)) => CliError::other(other.to_string()),
                        None => CliError::other("read failed"),
                    },
                )
            }
        };
        out.write_all(&buf[..n])
            .map_err(|e| CliError::other(format!("cannot write: {e}")))?;
        total += n as u64;
        bar.set_position(total);
        if let Some(delay) = delay {
            std::thread::sleep(delay);
        }
    }
    out.flush()
        .map_err(|e| CliError::other(format!("cannot write: {e}")))?;
    Ok(total)
}

pub fn export(
    global: &Global,
    app: &str,
    out: &std::path::Path,
    kdf_time_ms: u64,
) -> Result<Report, CliError> {
    let vault = unlock(global)?;
    let handle = vault.app(app)?;
    let passphrase = crate::input::new_passphrase(global, "the archive")?;
    let bar = crate::commands::spinner(global, "Calibrating the archive's key derivation");
    let kdf = coffer_device::KdfParams::calibrate(
        coffer_device::KdfAlgorithm::Argon2id,
        std::time::Duration::from_millis(kdf_time_ms),
    );
    bar.finish_and_clear();
    let kdf = kdf?;
    // Written beside the target and renamed: never a half archive under the name.
    let dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| CliError::other(format!("cannot write in {}: {e}", dir.display())))?;
    let bar = byte_bar(global, None, "Exporting");
    let summary = {
        let mut writer = std::io::BufWriter::new(tmp.as_file_mut());
        let summary =
            handle.export(&mut writer, &passphrase, &kdf, &mut |n| bar.set_position(n))?;
        writer
            .flush()
            .map_err(|e| CliError::other(format!("cannot write the archive: {e}")))?;
        summary
    };
    tmp.as_file()
        .sync_all()
        .map_err(|e| CliError::other(format!("cannot write the archive: {e}")))?;
    tmp.persist(out)
        .map_err(|e| CliError::other(format!("cannot write {}: {e}", out.display())))?;
    bar.finish_and_clear();
    Ok(Report {
        text: format!(
            "Exported app '{app}' ({} files, {} bytes) to {}",
            summary.files,
            summary.bytes,
            out.display()
        ),
        json: json!({"app": app, "archive": out, "files": summary.files, "bytes": summary.bytes}),
    })
}

pub fn import(
    global: &Global,
    archive: &std::path::Path,
    rename: Option<&str>,
) -> Result<Report, CliError> {
    let vault = unlock(global)?;
    let file = std::fs::File::open(archive)
        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", archive.display())))?;
    let passphrase = crate::input::archive_passphrase(global)?;
    let bar = byte_bar(global, None, "Importing");
    let info = vault.import_app(
        std::io::BufReader::new(file),
        &passphrase,
        rename,
        &mut |n| bar.set_position(n),
    )?;
    bar.finish_and_clear();
    Ok(Report {
        text: format!("Imported app '{}'", info.name),
        json: json!({"imported": info.name, "capabilities": caps_json(info.capabilities)}),
    })
}
