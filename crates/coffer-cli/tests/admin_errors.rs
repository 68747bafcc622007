//! `coffer admin`'s errors name their cause and what to do (issue 16,
//! item 11): a URL without a scheme, a certificate not trusted, a port
//! nobody listens on.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Command, Stdio};

fn admin(home: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .arg("admin")
        .args(args)
        .env("HOME", home)
        .env("XDG_DATA_HOME", home)
        .env("COFFER_ADMIN_PASSWORD", "correct horse battery")
        .env_remove("COFFER_SERVER")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn unreachable_servers_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let login = |server: &str| admin(&home, &["--server", server, "login", "--user", "alice"]);

    let (_, said) = login("cp.example:8443");
    assert!(said.contains("with its scheme"), "{said}");
    assert!(!said.contains("builder error"), "{said}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let (_, said) = login(&format!("http://127.0.0.1:{port}"));
    assert!(
        said.contains(&format!("cannot connect to 127.0.0.1:{port}")),
        "{said}"
    );

    // A real server whose development certificate this machine does not
    // trust: the answer says to give its CA, and giving it works.
    let server_dir = dir.path().join("server");
    std::fs::create_dir_all(&server_dir).unwrap();
    let url = format!("sqlite://{}", server_dir.join("server.db").display());
    let server = support::DevServer::start(&server_dir, &url);
    let (code, said) = login(&server.base);
    assert_ne!(code, Some(0));
    assert!(
        said.contains("does not trust") && said.contains("--ca-cert"),
        "{said}"
    );
    assert!(!said.contains("error sending request"), "{said}");
    let ca = server.ca();
    let (_, said) = admin(
        &home,
        &[
            "--server",
            &server.base,
            "--ca-cert",
            ca.to_str().unwrap(),
            "login",
            "--user",
            "alice",
        ],
    );
    // Trusted now: the server answers (no such user yet), no transport error.
    assert!(
        !said.contains("does not trust") && !said.contains("cannot connect"),
        "{said}"
    );
    // With --json, the server's own stable code reaches the script.
    let out = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(["--json", "admin", "--server", &server.base, "--ca-cert"])
        .arg(&ca)
        .args(["login", "--user", "alice"])
        .env("HOME", &home)
        .env("XDG_DATA_HOME", &home)
        .env("COFFER_ADMIN_PASSWORD", "correct horse battery")
        .env_remove("COFFER_SERVER")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let error: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(error["error"]["code"], "invalid_credentials", "{error}");
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn the_saved_session_remembers_its_server_and_goes_nowhere_else() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let server_dir = dir.path().join("server");
    std::fs::create_dir_all(&server_dir).unwrap();
    let url = format!("sqlite://{}", server_dir.join("server.db").display());
    let server = support::DevServer::start(&server_dir, &url);
    let ca = server.ca();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_coffer"))
            .args(["--json", "admin"])
            .args(args)
            .env("HOME", &home)
            .env("XDG_DATA_HOME", &home)
            .env("COFFER_ADMIN_PASSWORD", "correct horse battery")
            .env("COFFER_SETUP_TOKEN", &server.setup_token)
            .env_remove("COFFER_SERVER")
            .env_remove("COFFER_CA_CERT")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let ca_s = ca.to_str().unwrap();
    let set_up = run(&[
        "--server",
        &server.base,
        "--ca-cert",
        ca_s,
        "setup",
        "--organization",
        "Acme",
        "--owner",
        "alice",
    ]);
    assert!(
        set_up.status.success(),
        "{}",
        String::from_utf8_lossy(&set_up.stderr)
    );
    let logged_in = run(&[
        "--server",
        &server.base,
        "--ca-cert",
        ca_s,
        "login",
        "--user",
        "alice",
    ]);
    assert!(
        logged_in.status.success(),
        "{}",
        String::from_utf8_lossy(&logged_in.stderr)
    );
    // No --server, no --ca-cert: the session's.
    let me = run(&["me"]);
    assert!(
        me.status.success(),
        "{}",
        String::from_utf8_lossy(&me.stderr)
    );
    // Users by name, as well as by id.
    let add = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args([
            "--json", "admin", "add-user", "--org", "1", "--user", "bob", "--role", "member",
        ])
        .env("HOME", &home)
        .env("XDG_DATA_HOME", &home)
        .env("COFFER_NEW_PASSPHRASE", "bob's long server password")
        .env_remove("COFFER_SERVER")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    for args in [
        &["set-role", "--org", "1", "--user", "bob", "--role", "admin"][..],
        &["disable-user", "--org", "1", "--user", "bob"],
        &["enable-user", "--org", "1", "--user", "bob"],
    ] {
        let out = run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let users: serde_json::Value =
        serde_json::from_slice(&run(&["users", "--org", "1"]).stdout).unwrap();
    let bob = users["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "bob")
        .unwrap()
        .clone();
    assert_eq!(bob["role"], "admin", "{users}");
    let nobody = run(&["remove-user", "--org", "1", "--user", "nobody"]);
    assert_eq!(nobody.status.code(), Some(9));
    assert!(run(&["remove-user", "--org", "1", "--user", "bob"])
        .status
        .success());
    // One's own password: the old one, then the new one.
    let changed = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(["--json", "admin", "password"])
        .env("HOME", &home)
        .env("XDG_DATA_HOME", &home)
        .env("COFFER_ADMIN_PASSWORD", "correct horse battery")
        .env("COFFER_NEW_PASSPHRASE", "a new and longer password")
        .env_remove("COFFER_SERVER")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        changed.status.success(),
        "{}",
        String::from_utf8_lossy(&changed.stderr)
    );
    // Another server: the token is not sent there.
    let elsewhere = run(&["--server", "http://127.0.0.1:9", "me"]);
    assert_eq!(elsewhere.status.code(), Some(2));
    let said = String::from_utf8_lossy(&elsewhere.stderr);
    assert!(said.contains("the saved session is for"), "{said}");
    assert!(!said.contains("cannot connect"), "{said}");
}
