//! `coffer serve --config FILE`: the file's settings, under the
//! environment's, under the command line's; unknown or unsafe files refused.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn private(path: &Path, mode: u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

fn serve(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_coffer"));
    c.args(["--json", "serve"])
        .args(args)
        .env("XDG_DATA_HOME", home)
        .env("HOME", home)
        .env_remove("DATABASE_URL")
        .env_remove("COFFER_CONFIG")
        .env_remove("COFFER_LOG_FORMAT")
        .env_remove("COFFER_MASTER_KEY")
        .env_remove("COFFER_MASTER_KEY_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// The first line `coffer --json serve` prints once it listens.
fn started(mut command: Command) -> serde_json::Value {
    let mut child = command.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    serde_json::from_str(&line)
        .unwrap_or_else(|_| panic!("did not start: {}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn the_file_sets_what_flags_and_variables_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let (from_file, from_flag) = (free_port(), free_port());
    let file_db = dir.path().join("from-file.db");
    let env_db = dir.path().join("from-env.db");
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{from_file}\"\ndatabase_url = \"sqlite://{}\"\ndev-tls = true\ntrusted-proxy = [\"127.0.0.1\"]\nsync-retention = \"30d\"\n",
            file_db.display()
        ),
    )
    .unwrap();
    private(&config, 0o600);
    let config_s = config.to_str().unwrap();

    // Everything from the file: its address, its database, TLS on.
    let shown = started(serve(dir.path(), &["--config", config_s], &[]));
    assert_eq!(shown["listening"], format!("https://127.0.0.1:{from_file}"));
    assert!(file_db.exists());

    // The variable wins over the file, the flag over both.
    let env_url = format!("sqlite://{}", env_db.display());
    let shown = started(serve(
        dir.path(),
        &["--listen", &format!("127.0.0.1:{from_flag}")],
        &[("COFFER_CONFIG", config_s), ("DATABASE_URL", &env_url)],
    ));
    assert_eq!(shown["listening"], format!("https://127.0.0.1:{from_flag}"));
    assert!(env_db.exists());

    // A flag that cannot go with a setting of the file wins over it: the
    // file's dev-tls gives way to --tls-cert/--tls-key (the development
    // certificate made above, given as files).
    let cert = dir.path().join("coffer-server/dev-tls-cert.pem");
    let key = dir.path().join("coffer-server/dev-tls-key.pem");
    let shown = started(serve(
        dir.path(),
        &[
            "--config",
            config_s,
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    ));
    assert!(
        shown["listening"].as_str().unwrap().starts_with("https://"),
        "{shown}"
    );
}

fn refusal(dir: &Path, config: &Path) -> serde_json::Value {
    let out = serve(dir, &["--config", config.to_str().unwrap()], &[])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stderr).unwrap()
}

#[test]
fn unknown_settings_and_unsafe_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nlisten_on = 3\n").unwrap();
    private(&config, 0o600);
    let error = refusal(dir.path(), &config).to_string();
    assert!(error.contains("no setting \\\"listen_on\\\""), "{error}");
    assert!(error.contains("database-url"), "{error}");

    // A syntax error names the line, never quotes it (it may hold a
    // password).
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\ndatabase-url = \"postgres://c:hunter2@h/c\" oops\n",
    )
    .unwrap();
    let error = refusal(dir.path(), &config).to_string();
    assert!(error.contains("server.toml: line 2"), "{error}");
    assert!(!error.contains("hunter2"), "{error}");

    std::fs::write(&config, "dev-tls = \"yes\"\n").unwrap();
    assert!(refusal(dir.path(), &config)
        .to_string()
        .contains("true or false"));

    std::fs::write(&config, "listen = \"127.0.0.1:0\"\n").unwrap();
    private(&config, 0o620);
    assert!(refusal(dir.path(), &config)
        .to_string()
        .contains("other users can change it"));

    std::fs::write(
        &config,
        "database-url = \"postgres://coffer:hunter2@127.0.0.1/coffer\"\n",
    )
    .unwrap();
    private(&config, 0o644);
    let error = refusal(dir.path(), &config).to_string();
    assert!(error.contains("holds a database password"), "{error}");
    assert!(!error.contains("hunter2"), "{error}");
}
