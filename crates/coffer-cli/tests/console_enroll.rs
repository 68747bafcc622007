//! The console and the real CLI together (issue 18): an enrollment code
//! made on the console's page of a real `coffer serve --dev-tls` is spent
//! by `coffer enroll`, and the device then appears on the console's
//! devices page.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Command, Stdio};

use reqwest::header::{ORIGIN, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The first `value="…"` after `name="csrf"`.
fn csrf_in(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let at = html.find(marker).unwrap() + marker.len();
    html[at..].split('"').next().unwrap().to_owned()
}

#[test]
fn a_code_from_the_console_enrolls_with_coffer_enroll_and_the_device_appears() {
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    std::fs::create_dir_all(&server_dir).unwrap();
    let url = format!("sqlite://{}", server_dir.join("server.db").display());
    let server = support::DevServer::start(&server_dir, &url);
    let http = reqwest::blocking::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(server.ca()).unwrap()).unwrap(),
        )
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = &server.base;
    let r = http
        .post(format!("{base}/v1/setup"))
        .json(
            &json!({"setup_token": server.setup_token, "organization": "Acme",
                      "owner": "alice", "password": "correct horse battery"}),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let org = r.json::<Value>().unwrap()["organization_id"]
        .as_i64()
        .unwrap();

    // Sign in to the console (over TLS: the __Host- cookie) and make a code.
    let r = http
        .post(format!("{base}/console/sign-in"))
        .form(&[("user", "alice"), ("password", "correct horse battery")])
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let set = r.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(set.starts_with("__Host-coffer_console="), "{set}");
    let cookie = set.split(';').next().unwrap().to_owned();
    let devices = format!("{base}/console/orgs/{org}/devices");
    let page = |url: &str| {
        http.get(url)
            .header("cookie", &cookie)
            .send()
            .unwrap()
            .text()
            .unwrap()
    };
    let csrf = csrf_in(&page(&devices));
    let r = http
        .post(format!("{base}/console/orgs/{org}/enrollment-codes"))
        .header("cookie", &cookie)
        .header(ORIGIN, base.as_str())
        .form(&[("csrf", csrf.as_str())])
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let html = r.text().unwrap();
    let marker = "id=\"enrollment-code\" class=\"code\">";
    let at = html.find(marker).unwrap() + marker.len();
    let code = html[at..].split('<').next().unwrap().to_owned();
    assert_eq!(code.len(), 48, "{code}");

    // The device: a vault, enrolled by the real command with the code.
    let space = dir.path().join("space");
    let coffer = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_coffer"))
            .arg("--json")
            .args(args)
            .env("COFFER_SPACE", &space)
            .env("COFFER_PASSPHRASE", "alice's long passphrase")
            .env_remove("COFFER_RECOVERY_KEY")
            .env_remove("COFFER_ENROLL_CODE")
            .env_remove("COFFER_SERVER")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    coffer(&["init", "--name", "alice", "--kdf-time-ms", "0"]);
    let enrolled = coffer(&[
        "enroll",
        "--server",
        base,
        "--code",
        &code,
        "--name",
        "ward-tablet-7",
        "--pin-sha256",
        &server.fingerprint,
    ]);
    let device = enrolled["device_id"].as_i64().unwrap();

    // The console lists it, by the name it enrolled with, escrow held.
    let html = page(&devices);
    let row = &html[html.find(&format!("id=\"device-{device}\"")).unwrap()..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(
        row.contains("ward-tablet-7") && row.contains("held"),
        "{row}"
    );
}
