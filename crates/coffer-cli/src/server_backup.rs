//! `coffer server backup` and `coffer server restore`: the paths and the
//! master key from the command line, the work in `coffer_server::backup`.

use serde_json::json;

use coffer_server::backup::{self, BackupError, Manifest, ServerFiles};
use coffer_server::keys::{Keyring, MasterKey};

use crate::cli::{ServerCommand, ServerFilesArgs};
use crate::commands::Report;
use crate::exit::{CliError, ExitCode};

fn refused(e: BackupError) -> CliError {
    let (exit, code) = match &e {
        BackupError::Postgres | BackupError::TargetExists { .. } => (ExitCode::Usage, "usage"),
        BackupError::NotABackup(_) => (ExitCode::Usage, "not_a_backup"),
        BackupError::Damaged(_) => (ExitCode::Corrupt, "backup_damaged"),
        BackupError::WrongMasterKey => (ExitCode::WrongSecret, "wrong_master_key"),
        BackupError::AuditBroken(_) => (ExitCode::AuditTampered, "audit_broken"),
        _ => (ExitCode::Other, "error"),
    };
    CliError {
        exit,
        code,
        message: e.to_string(),
    }
}

/// The server's files as `coffer serve` finds them with the same flags.
fn server_files(args: &ServerFilesArgs) -> Result<ServerFiles, CliError> {
    let url = match &args.database_url {
        Some(url) => url.clone(),
        None => crate::serve::default_database_url()?,
    };
    let database = backup::sqlite_file(&url).map_err(refused)?;
    let blob_dir = match (&args.blob_dir, args.blobs_in_s3) {
        (_, true) => None,
        (Some(dir), false) => Some(dir.clone()),
        (None, false) => Some(crate::serve::server_dir()?.join("blobs")),
    };
    Ok(ServerFiles {
        database,
        blob_dir,
        dev_tls_dir: Some(crate::serve::server_dir()?),
    })
}

fn manifest_json(m: &Manifest) -> serde_json::Value {
    json!({
        "created_at": m.created_at,
        "schema_version": m.schema_version,
        "database_bytes": m.database.bytes,
        "database_sha256": m.database.sha256,
        "pieces": m.blobs.map(|b| b.pieces),
        "piece_bytes": m.blobs.map(|b| b.bytes),
        "dev_tls": m.dev_tls,
    })
}

pub fn run(command: &ServerCommand) -> Result<Report, CliError> {
    match command {
        ServerCommand::Backup { out, files } => {
            let server = server_files(files)?;
            let manifest = backup::backup(&server, out).map_err(refused)?;
            let pieces = manifest
                .blobs
                .map_or("no local blob directory".to_owned(), |b| {
                    format!("{} file piece(s), {} bytes", b.pieces, b.bytes)
                });
            Ok(Report {
                text: format!(
                    "Backed up {} ({} bytes, schema {}) and {pieces} into {}{}.\nThe master key is not in it: keep a copy of it apart.",
                    server.database.display(),
                    manifest.database.bytes,
                    manifest.schema_version,
                    out.display(),
                    if manifest.dev_tls { ", with the development certificate" } else { "" },
                ),
                json: json!({"backup": out, "manifest": manifest_json(&manifest)}),
            })
        }
        ServerCommand::Restore {
            from,
            files,
            master_key_file,
        } => {
            let failed = |e: coffer_server::keys::KeyError| CliError::usage(e.to_string());
            let key = match (master_key_file, std::env::var("COFFER_MASTER_KEY").ok()) {
                (Some(path), _) => MasterKey::load(path).map_err(failed)?,
                (None, Some(text)) => {
                    MasterKey::from_hex(&zeroize::Zeroizing::new(text)).map_err(failed)?
                }
                (None, None) => {
                    return Err(CliError::usage(
                        "a restore needs the master key the server ran with: --master-key-file FILE (or COFFER_MASTER_KEY)",
                    ))
                }
            };
            let keys = Keyring::new(key, None);
            let server = server_files(files)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| CliError::other(format!("cannot start: {e}")))?;
            let restored = runtime
                .block_on(backup::restore(from, &server, &keys))
                .map_err(refused)?;
            Ok(Report {
                text: format!(
                    "Restored the backup of {} into {}: the master key opens it and the audit trail's {} rows verify.\nStart it with: coffer serve --database-url {} --master-key-file FILE",
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH
                            + std::time::Duration::from_secs(
                                u64::try_from(restored.manifest.created_at).unwrap_or(0)
                            )
                    ),
                    server.database.display(),
                    restored.audit_rows,
                    server.database.display(),
                ),
                json: json!({
                    "restored": server.database,
                    "audit_rows": restored.audit_rows,
                    "manifest": manifest_json(&restored.manifest),
                }),
            })
        }
    }
}
