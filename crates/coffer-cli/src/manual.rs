//! `coffer completions SHELL` and `coffer man DIR`: generated from the CLI
//! definition itself (clap's own crates), so they cannot drift from it.

use std::io::Write;

use clap::CommandFactory;
use serde_json::json;

use crate::cli::Cli;
use crate::commands::Report;
use crate::exit::CliError;

/// The completion script for `shell`, written to standard output.
pub fn completions(shell: clap_complete::Shell) -> Result<Report, CliError> {
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "coffer", &mut script);
    // The script is the output, with or without --json: a shell reads it.
    // A reader that stops early (`| head`) ends it quietly.
    let mut out = std::io::stdout().lock();
    match out.write_all(&script).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(CliError::other(format!("cannot write the script: {e}")));
        }
        _ => {}
    }
    Ok(Report {
        json: serde_json::Value::Null,
        text: String::new(),
    })
}

/// One man page per command (`coffer.1`, `coffer-serve.1`,
/// `coffer-admin-device-wipe.1`, …) written into `dir`, each with the
/// global options its command takes.
pub fn man_pages(dir: &std::path::Path) -> Result<Report, CliError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::usage(format!("cannot create {}: {e}", dir.display())))?;
    let mut command = Cli::command().disable_help_subcommand(true);
    // Built: the global options are copied into every subcommand, and the
    // names are the ones a user types (coffer-admin-device-wipe).
    command.build();
    let mut written = Vec::new();
    write_pages(&command, dir, &mut written)?;
    Ok(Report {
        json: json!({"dir": dir.display().to_string(), "pages": written}),
        text: format!(
            "coffer man: {} pages in {} (try: MANPATH={}/..: man coffer)",
            written.len(),
            dir.display(),
            dir.display()
        ),
    })
}

fn write_pages(
    command: &clap::Command,
    dir: &std::path::Path,
    written: &mut Vec<String>,
) -> Result<(), CliError> {
    let name = command
        .get_display_name()
        .unwrap_or_else(|| command.get_name())
        .to_owned();
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone())
        .render(&mut page)
        .map_err(|e| CliError::other(format!("cannot render the man page of {name}: {e}")))?;
    let file = format!("{name}.1");
    std::fs::write(dir.join(&file), page)
        .map_err(|e| CliError::other(format!("cannot write {file}: {e}")))?;
    written.push(file);
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, written)?;
    }
    Ok(())
}
