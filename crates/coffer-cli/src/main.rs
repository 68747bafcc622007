//! The `coffer` command. Prompts, wording and exit codes live here; the
//! device library holds none of them.

#![forbid(unsafe_code)]

mod admin;
mod admin_sync;
mod cli;
mod commands;
mod config;
mod control;
mod demo;
mod demo_control;
mod exit;
mod input;
mod manual;
mod partial;
mod serve;
mod server_backup;
mod stores;
mod sync;
mod unlock;

use clap::Parser;
use serde_json::json;

use crate::cli::{Cli, Command};
use crate::commands::Report;
use crate::exit::CliError;

fn run(cli: &Cli) -> Result<Report, CliError> {
    let g = &cli.global;
    match &cli.command {
        Command::Init(args) => commands::init(g, args),
        Command::Info => commands::info(g),
        Command::Vaults => commands::vaults(g),
        Command::Slot(command) => commands::slot(g, command),
        Command::RecoveryKey { name } => commands::recovery_key(g, name),
        Command::Wipe { yes } => commands::wipe(g, *yes),
        Command::Lockout { max, then, off } => commands::lockout(g, *max, then, *off),
        Command::TempKey {
            expires,
            single_use,
            name,
        } => commands::temp_key(g, name, *expires, *single_use),
        Command::Passwd { slot, kdf } => commands::passwd(g, slot.as_deref(), kdf),
        Command::Verify { deep: false } => commands::verify(g),
        // Answered with its own exit code, in main.
        Command::Verify { deep: true } => Err(CliError::other("unreachable")),
        Command::CheckIn => control::check_in(g),
        Command::Unlock {
            for_at_most,
            check_in_every,
        } => unlock::start(g, *for_at_most, *check_in_every),
        Command::Lock => unlock::lock(g),
        Command::UnlockAgent {
            for_at_most,
            check_in_every,
        } => unlock::run_agent(g, *for_at_most, *check_in_every),
        Command::Sync { command } => sync::sync(g, command.as_ref()),
        // Answered with its own exit code, in main.
        Command::Conflicts { .. } => Err(CliError::other("unreachable")),
        Command::Deliver {
            file,
            retries,
            mqtt,
        } => control::deliver(g, file.as_deref(), *retries, *mqtt),
        Command::Login { user, kdf } => control::login(g, user, kdf),
        Command::Enroll {
            server,
            code,
            name,
            pin_sha256,
            ca_cert,
        } => {
            let trust = control::trust(pin_sha256.as_deref(), ca_cert.as_deref())?;
            control::enroll(g, server, code.as_deref(), name.as_deref(), trust)
        }
        Command::Serve {
            listen,
            database_url,
            force_plain,
            tls_cert,
            tls_key,
            dev_tls,
            master_key_file,
            previous_master_key_file,
            adopt_unkeyed_audit_trail,
            trusted_proxies,
            trusted_proxy_header,
            sync_retention,
            log_format,
            blob_dir,
            s3_bucket,
            s3_endpoint,
            s3_region,
            s3_credentials_file,
            max_file_size,
            org_file_quota,
            upload_expiry,
            max_concurrent_pieces,
            mqtt,
            // Read before parsing (config.rs): its settings are flags now.
            config: _,
        } => {
            let tls = match (tls_cert, tls_key) {
                (Some(cert), Some(key)) => serve::Tls::Files(cert.clone(), key.clone()),
                _ if *dev_tls => serve::Tls::Dev,
                _ => serve::Tls::Off,
            };
            serve::run(
                g,
                serve::Options {
                    listen: *listen,
                    database_url: database_url.as_deref(),
                    force_plain: *force_plain,
                    tls,
                    master_key_file: master_key_file.as_deref(),
                    previous_master_key_file: previous_master_key_file.as_deref(),
                    adopt_unkeyed_audit: *adopt_unkeyed_audit_trail,
                    trusted_proxies: coffer_server::client_addr::TrustedProxies::new(
                        trusted_proxies.iter().copied(),
                        *trusted_proxy_header,
                    ),
                    sync_retention: *sync_retention,
                    log_format: *log_format,
                    files: serve::FileOptions {
                        blob_dir: blob_dir.as_deref(),
                        s3_bucket: s3_bucket.as_deref(),
                        s3_endpoint: s3_endpoint.as_deref(),
                        s3_region: s3_region.as_deref(),
                        s3_credentials_file: s3_credentials_file.as_deref(),
                        max_file_size: *max_file_size,
                        org_file_quota: *org_file_quota,
                        upload_expiry: *upload_expiry,
                        max_concurrent_pieces: usize::from(*max_concurrent_pieces),
                    },
                    mqtt: mqtt.mqtt_broker.as_deref().map(|broker_url| {
                        coffer_server::mqtt::MqttSettings {
                            broker_url,
                            public: mqtt.mqtt_public.as_deref(),
                            certificate: mqtt.mqtt_broker_cert.as_deref(),
                            admin_user: &mqtt.mqtt_admin_user,
                            admin_password_file: mqtt.mqtt_admin_password_file.as_deref(),
                            session_id: mqtt.mqtt_session_id.as_deref(),
                        }
                    }),
                },
            )
        }
        Command::Audit(command) => commands::audit(g, command),
        Command::Admin(args) => admin::run(g, args),
        Command::Server(command) => server_backup::run(command),
        Command::Rotate {
            new_recovery_key,
            reset_keys,
            yes,
        } => commands::rotate(g, new_recovery_key.as_deref(), *reset_keys, *yes),
        Command::Demo {
            keep,
            console: true,
            listen,
        } => serve::demo_console(g, *listen, *keep),
        Command::Demo { keep, .. } => demo::run(g, *keep),
        Command::Completions { shell } => manual::completions(*shell),
        Command::Man { dir } => manual::man_pages(dir),
        Command::App(command) => stores::app(g, command),
        Command::Sql { app, query } => stores::sql(g, app, query),
        Command::Kv(command) => stores::kv(g, command),
        Command::Records(command) => stores::records(g, command),
        Command::Files(command) => stores::files(g, command),
        Command::Export {
            app,
            out,
            kdf_time_ms,
        } => stores::export(g, app, out, *kdf_time_ms),
        Command::Import { archive, rename } => stores::import(g, archive, rename.as_deref()),
    }
}

/// Writes a command's report and a newline to standard output. A reader
/// that has gone (`coffer … | head -1`) ends it quietly: the command has
/// done its work, and a panic would say otherwise. Any other failure (a
/// full disk) is the command's failure.
fn emit(text: &str) -> Result<(), std::io::Error> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e),
        _ => Ok(()),
    }
}

/// A command line clap refused (or `--help`, `--version`): as clap says
/// it, or, when `--json` was given before the command, as the same JSON
/// error object every other failure is (code `usage`, exit 2).
fn argument_error(e: &clap::Error) -> std::process::ExitCode {
    use clap::error::ErrorKind;
    let wants_json = json_requested();
    let shown = matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
    if !wants_json || shown {
        e.exit();
    }
    let message = if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        "a command is needed here: see --help".to_owned()
    } else {
        // clap's words, without its colour, its usage block or its tips:
        // the lines before the first blank one, joined.
        let rendered = e.render().to_string();
        rendered
            .lines()
            .take_while(|l| !l.trim().is_empty())
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" ")
            .trim_start_matches("error: ")
            .to_owned()
    };
    let exit = exit::ExitCode::Usage as u8;
    let body = json!({"error": {"code": "usage", "exit_code": exit, "message": message}});
    eprintln!("{body}");
    std::process::ExitCode::from(exit)
}

/// Whether `--json` comes before the command's own arguments (`--`), for
/// errors shown before (or without) a parsed command line.
fn json_requested() -> bool {
    std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json")
}

/// Shows an error as every command does: the JSON error object with
/// `--json`, else `coffer: …`; the exit code to end with.
fn report_error(e: &CliError, json: bool) -> std::process::ExitCode {
    if json {
        let body =
            json!({"error": {"code": e.code, "exit_code": e.exit as u8, "message": e.message}});
        eprintln!("{body}");
    } else {
        eprintln!("coffer: {}", e.message);
    }
    std::process::ExitCode::from(e.exit as u8)
}

fn main() -> std::process::ExitCode {
    // Before any secret is read: no core dump and no same-user ptrace can copy
    // keys out of this process.
    let hardening = coffer_sys::harden_process();
    let args = match config::with_config(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(e) => return report_error(&e, json_requested()),
    };
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => return argument_error(&e),
    };
    if cfg!(target_os = "linux") && !(hardening.core_dumps_disabled && hardening.not_dumpable) {
        eprintln!("coffer: warning: could not switch off core dumps for this process; keys could reach a core file");
    }
    let result = match &cli.command {
        Command::Conflicts { command } => sync::conflicts(&cli.global, command.as_ref()),
        Command::Verify { deep: true } => commands::verify_deep(&cli.global),
        _ => run(&cli).map(|report| (report, None)),
    };
    match result {
        Ok((report, exit)) => {
            // A command that wrote its own output (kv get's raw bytes)
            // leaves its report empty.
            let written = if cli.global.json {
                if report.json.is_null() {
                    Ok(())
                } else {
                    emit(&serde_json::to_string_pretty(&report.json).unwrap_or_default())
                }
            } else if report.text.is_empty() {
                Ok(())
            } else {
                emit(&report.text)
            };
            if let Err(e) = written {
                eprintln!("coffer: cannot write the output: {e}");
                return std::process::ExitCode::from(exit::ExitCode::Other as u8);
            }
            exit.map_or(std::process::ExitCode::SUCCESS, |e| {
                std::process::ExitCode::from(e as u8)
            })
        }
        Err(e) => report_error(&e, cli.global.json),
    }
}
