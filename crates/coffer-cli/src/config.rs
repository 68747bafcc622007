//! `coffer serve --config FILE`: the server's settings in a TOML file.
//!
//! Precedence, highest first: a flag on the command line, its environment
//! variable, the config file, the built-in default. The file's keys are
//! `coffer serve`'s long flags (`listen`, `database-url` or
//! `database_url`, …); each value becomes that flag, placed on the command
//! line before clap parses it unless the flag is already there or its
//! variable is set. So the file is checked by the very rules the flags are
//! (one parser, one list of settings), and `coffer serve --help` documents
//! both.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{ArgAction, CommandFactory};

use crate::cli::Cli;
use crate::exit::CliError;

/// The variable that names the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "COFFER_CONFIG";
/// The largest config file read.
const MAX_CONFIG: u64 = 1024 * 1024;

/// Where `serve` sits in `args` (after the program and the global options),
/// if the command is `coffer serve`.
fn serve_position(args: &[OsString]) -> Option<usize> {
    let serve = Cli::command();
    let globals: Vec<String> = serve
        .get_arguments()
        .filter(|a| a.get_action().takes_values())
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect();
    let mut i = 1;
    while i < args.len() {
        let arg = args[i].to_string_lossy();
        if arg == "serve" {
            return Some(i);
        }
        if !arg.starts_with('-') || arg == "--" {
            return None;
        }
        // A global option's value is not the command.
        if globals.iter().any(|g| *g == arg) {
            i += 1;
        }
        i += 1;
    }
    None
}

/// The config file `coffer serve` was given, by flag or variable.
fn config_path(serve_args: &[OsString]) -> Option<PathBuf> {
    let mut iter = serve_args.iter();
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if text == "--" {
            break;
        }
        if text == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(path) = text.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os(CONFIG_ENV).map(PathBuf::from)
}

fn refused(path: &Path, why: impl std::fmt::Display) -> CliError {
    CliError::usage(format!("config file {}: {why}", path.display()))
}

/// Reads the file: private enough for what it holds, and TOML.
fn read(path: &Path) -> Result<toml::Table, CliError> {
    use std::io::Read;
    // One open: what is checked is what is read.
    let file = std::fs::File::open(path).map_err(|e| refused(path, e))?;
    let meta = file.metadata().map_err(|e| refused(path, e))?;
    if meta.len() > MAX_CONFIG {
        return Err(refused(path, "larger than 1 MiB"));
    }
    let mut text = String::new();
    file.take(MAX_CONFIG + 1)
        .read_to_string(&mut text)
        .map_err(|e| refused(path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        // Another user's file could be rewritten by them, whatever its mode.
        if meta.uid() != coffer_sys::effective_uid() && meta.uid() != 0 {
            return Err(refused(
                path,
                format!(
                    "it belongs to another user (uid {}): the server's user or root must own it",
                    meta.uid()
                ),
            ));
        }
        let mode = meta.permissions().mode();
        // Whoever can write it can point the server at their database.
        if mode & 0o022 != 0 {
            return Err(refused(
                path,
                format!(
                    "other users can change it (mode {:04o}): chmod go-w it",
                    mode & 0o7777
                ),
            ));
        }
        if mode & 0o044 != 0 && holds_a_password(&text) {
            return Err(refused(
                path,
                "it holds a database password and other users can read it: chmod 600 it, or give the password in PGPASSWORD",
            ));
        }
    }
    text.parse::<toml::Table>().map_err(|e| {
        // The parser's own rendering quotes the line, which may hold a
        // password: the line number and the message only.
        let line = e
            .span()
            .map(|span| text[..span.start.min(text.len())].lines().count().max(1));
        let at = line.map(|n| format!("line {n}: ")).unwrap_or_default();
        refused(path, format!("{at}{}", e.message()))
    })
}

/// Whether a URL with a password (`scheme://user:password@host`) is in
/// the text.
fn holds_a_password(text: &str) -> bool {
    text.split("://").skip(1).any(|rest| {
        let authority = rest.split(['/', '"', '\'']).next().unwrap_or("");
        authority
            .rsplit_once('@')
            .is_some_and(|(userinfo, _)| userinfo.contains(':'))
    })
}

/// `args` with the settings of `coffer serve`'s config file, if it has
/// one, put in as flags (those not already on the command line or in the
/// environment).
pub fn with_config(args: Vec<OsString>) -> Result<Vec<OsString>, CliError> {
    let Some(at) = serve_position(&args) else {
        return Ok(args);
    };
    let Some(path) = config_path(&args[at + 1..]) else {
        return Ok(args);
    };
    let table = read(&path)?;
    let command = Cli::command();
    let serve = command
        .find_subcommand("serve")
        .ok_or_else(|| CliError::other("no serve command"))?;
    let given: Vec<String> = args[at + 1..]
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut added: Vec<OsString> = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let arg = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "config" && long != "help")
            .ok_or_else(|| {
                let known: Vec<&str> = serve
                    .get_arguments()
                    .filter_map(|a| a.get_long())
                    .filter(|l| *l != "config" && *l != "help")
                    .collect();
                refused(
                    &path,
                    format!("no setting {key:?}; the settings are: {}", known.join(", ")),
                )
            })?;
        let flag = format!("--{long}");
        let is_given = |a: &clap::Arg| {
            let on_command_line = a.get_long().is_some_and(|l| {
                let flag = format!("--{l}");
                given
                    .iter()
                    .any(|g| *g == flag || g.starts_with(&format!("{flag}=")))
            });
            on_command_line || a.get_env().is_some_and(|v| std::env::var_os(v).is_some())
        };
        // The command line and the environment win, over this setting and
        // over any setting that cannot go with what they gave
        // (`dev-tls = true` in the file, `--tls-cert` on the command line).
        // (clap records a conflict on one side: both are looked at.)
        let conflicts = serve.get_arg_conflicts_with(arg).into_iter().any(is_given)
            || serve.get_arguments().filter(|b| is_given(b)).any(|b| {
                serve
                    .get_arg_conflicts_with(b)
                    .iter()
                    .any(|c| c.get_id() == arg.get_id())
            });
        if is_given(arg) || conflicts {
            continue;
        }
        let switch = matches!(arg.get_action(), ArgAction::SetTrue);
        let scalar = |v: &toml::Value| -> Result<String, CliError> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(n) => Ok(n.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                _ => Err(refused(&path, format!("{key}: a string or a number"))),
            }
        };
        match value {
            toml::Value::Boolean(on) if switch => {
                if *on {
                    added.push(flag.into());
                }
            }
            _ if switch => return Err(refused(&path, format!("{key}: true or false"))),
            toml::Value::Array(items) => {
                if !matches!(arg.get_action(), ArgAction::Append) {
                    return Err(refused(&path, format!("{key}: one value, not a list")));
                }
                for item in items {
                    // One word: a value starting with '-' stays a value.
                    added.push(format!("{flag}={}", scalar(item)?).into());
                }
            }
            other => added.push(format!("{flag}={}", scalar(other)?).into()),
        }
    }
    let mut out = args;
    out.splice(at + 1..at + 1, added);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_in_a_url_is_seen() {
        assert!(holds_a_password(
            r#"database_url = "postgres://coffer:secret@db/coffer""#
        ));
        assert!(!holds_a_password(
            r#"database_url = "postgres://coffer@db/coffer""#
        ));
        assert!(!holds_a_password(r#"listen = "127.0.0.1:8443""#));
    }

    #[test]
    fn serve_is_found_after_the_global_options() {
        let args: Vec<OsString> = [
            "coffer", "--space", "serve", "--json", "serve", "--listen", "x",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        assert_eq!(serve_position(&args), Some(4));
        let args: Vec<OsString> = ["coffer", "kv", "get", "serve"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(serve_position(&args), None);
    }
}
