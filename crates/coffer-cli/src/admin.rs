//! `coffer admin`: the control plane's API from the command line.

use std::path::PathBuf;

use reqwest::blocking::{Client, Response};
use reqwest::StatusCode;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::cli::{
    AdminArgs, AdminAuditCommand, AdminCommand, AdminDataCommand, AdminDeviceCommand,
    AdminPolicyCommand, DataFilter, Global,
};
use crate::commands::Report;
use crate::exit::{CliError, ExitCode};

const PASSWORD_ENV: &str = "COFFER_ADMIN_PASSWORD";

/// Where the session token is kept between commands (0600).
fn session_file() -> Result<PathBuf, CliError> {
    dirs::data_dir()
        .map(|d| d.join("coffer-admin").join("session"))
        .ok_or_else(|| CliError::usage("no data directory known for this user"))
}

fn read_session() -> Result<Zeroizing<String>, CliError> {
    let path = session_file()?;
    std::fs::read_to_string(&path)
        .map(|t| Zeroizing::new(t.trim().to_owned()))
        .map_err(|_| CliError::usage("not logged in: run 'coffer admin login --user NAME' first"))
}

fn write_session(token: &str) -> Result<(), CliError> {
    use std::io::Write;
    let path = session_file()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| CliError::other(e.to_string()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&path)
        .map_err(|e| CliError::other(format!("cannot write {}: {e}", path.display())))?;
    file.write_all(token.as_bytes())
        .map_err(|e| CliError::other(e.to_string()))
}

fn client(args: &AdminArgs) -> Result<Client, CliError> {
    let mut builder = Client::builder().timeout(std::time::Duration::from_secs(30));
    if let Some(path) = &args.ca_cert {
        let pem = std::fs::read(path)
            .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|_| CliError::usage(format!("{} is not a PEM certificate", path.display())))?;
        builder = builder
            .tls_built_in_root_certs(false)
            .add_root_certificate(cert);
    }
    builder
        .build()
        .map_err(|e| CliError::other(format!("cannot set up the HTTP client: {e}")))
}

/// The server's answer, or its typed error as a CLI error.
pub(crate) fn answer(response: reqwest::Result<Response>) -> Result<Value, CliError> {
    let response = response
        .map_err(|e| CliError::other(format!("cannot reach the server: {}", e.without_url())))?;
    let status = response.status();
    let text = response.text().unwrap_or_default();
    if status.is_success() {
        return Ok(if text.is_empty() {
            json!({})
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        });
    }
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or("error").to_owned();
    let message = body["error"]["message"].as_str().unwrap_or("").to_owned();
    let exit = match status {
        StatusCode::UNAUTHORIZED => ExitCode::WrongSecret,
        StatusCode::FORBIDDEN => ExitCode::Denied,
        StatusCode::NOT_FOUND => ExitCode::NotFound,
        StatusCode::CONFLICT => ExitCode::Conflict,
        StatusCode::TOO_MANY_REQUESTS => ExitCode::BackOff,
        s if s.is_client_error() => ExitCode::Usage,
        _ => ExitCode::Other,
    };
    Err(CliError {
        exit,
        code: "server_refused",
        message: format!("the server refused ({status}, {code}): {message}"),
    })
}

/// A secret from `env`, else a no-echo prompt on a terminal.
pub(crate) fn password(prompt: &str, env: &str) -> Result<Zeroizing<String>, CliError> {
    if let Ok(p) = std::env::var(env) {
        return Ok(Zeroizing::new(p));
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return Err(CliError::usage(format!(
            "no password given: set {env}, or run on a terminal"
        )));
    }
    rpassword::prompt_password(prompt)
        .map(Zeroizing::new)
        .map_err(|e| CliError::usage(format!("cannot read from the terminal: {e}")))
}

pub fn run(global: &Global, args: &AdminArgs) -> Result<Report, CliError> {
    let http = client(args)?;
    let url = |path: &str| format!("{}{path}", args.server.trim_end_matches('/'));
    let authed = |method: reqwest::Method, path: &str| -> Result<_, CliError> {
        let token = read_session()?;
        Ok(http
            .request(method, url(path))
            .header("X-Auth-Token", token.as_str()))
    };
    let value = match &args.command {
        AdminCommand::Setup {
            organization,
            owner,
        } => {
            let token = password("Setup token: ", "COFFER_SETUP_TOKEN")?;
            let password = password(&format!("Password for {owner}: "), PASSWORD_ENV)?;
            answer(
                http.post(url("/v1/setup"))
                    .json(&json!({
                        "setup_token": token.as_str(),
                        "organization": organization,
                        "owner": owner,
                        "password": password.as_str(),
                    }))
                    .send(),
            )?
        }
        AdminCommand::Login { user } => {
            let password = password(&format!("Password for {user}: "), PASSWORD_ENV)?;
            let body = answer(
                http.post(url("/v1/login"))
                    .json(&json!({"user": user, "password": password.as_str()}))
                    .send(),
            )?;
            let token = body["token"].as_str().unwrap_or_default();
            write_session(token)?;
            json!({"logged_in": user, "expires_at": body["expires_at"]})
        }
        AdminCommand::Logout => {
            let answered = answer(authed(reqwest::Method::POST, "/v1/logout")?.send());
            let _ = std::fs::remove_file(session_file()?);
            answered?;
            json!({"logged_out": true})
        }
        AdminCommand::Me => answer(authed(reqwest::Method::GET, "/v1/me")?.send())?,
        AdminCommand::AddUser { org, user, role } => {
            let initial = password(
                &format!("Initial password for {user}: "),
                "COFFER_NEW_PASSPHRASE",
            )?;
            answer(
                authed(reqwest::Method::POST, &format!("/v1/orgs/{org}/users"))?
                    .json(&json!({"user": user, "password": initial.as_str(), "role": role}))
                    .send(),
            )?
        }
        AdminCommand::SetRole { org, user_id, role } => answer(
            authed(
                reqwest::Method::PUT,
                &format!("/v1/orgs/{org}/users/{user_id}/role"),
            )?
            .json(&json!({"role": role}))
            .send(),
        )?,
        AdminCommand::RemoveUser { org, user_id } => answer(
            authed(
                reqwest::Method::DELETE,
                &format!("/v1/orgs/{org}/users/{user_id}"),
            )?
            .send(),
        )?,
        AdminCommand::EnrollCode { org, valid_for } => answer(
            authed(
                reqwest::Method::POST,
                &format!("/v1/orgs/{org}/enrollment-codes"),
            )?
            .json(&json!({"valid_for_secs": valid_for.as_secs()}))
            .send(),
        )?,
        AdminCommand::Device(command) => device(command, &authed)?,
        AdminCommand::Policy(command) => policy(command, &authed)?,
        AdminCommand::Data(command) => data(global, command, &authed)?,
        AdminCommand::Usage {
            org,
            by,
            from,
            to,
            csv,
        } => {
            let mut query = vec![("by", by.clone())];
            if let Some(from) = from {
                query.push(("from", from.to_string()));
            }
            if let Some(to) = to {
                query.push(("to", to.to_string()));
            }
            if *csv {
                query.push(("format", "csv".into()));
            }
            answer(
                authed(reqwest::Method::GET, &format!("/v1/orgs/{org}/usage"))?
                    .query(&query)
                    .send(),
            )?
        }
        AdminCommand::DisableUser { org, user_id } => answer(
            authed(
                reqwest::Method::POST,
                &format!("/v1/orgs/{org}/users/{user_id}/disable"),
            )?
            .send(),
        )?,
        AdminCommand::EnableUser { org, user_id } => answer(
            authed(
                reqwest::Method::POST,
                &format!("/v1/orgs/{org}/users/{user_id}/enable"),
            )?
            .send(),
        )?,
        AdminCommand::Audit(AdminAuditCommand::Verify) => {
            let report = answer(authed(reqwest::Method::GET, "/v1/audit/verify")?.send())?;
            if report["intact"] != json!(true) {
                return Err(CliError {
                    exit: ExitCode::AuditTampered,
                    code: "audit_tampered",
                    message: format!(
                        "the server's audit trail is broken at row {}: {}",
                        report["broken_at"],
                        report["problem"].as_str().unwrap_or("")
                    ),
                });
            }
            report
        }
    };
    let text = match &value {
        Value::String(s) => s.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    };
    Ok(Report { json: value, text })
}

/// Builds an authenticated request to the server.
type Authed<'a> =
    dyn Fn(reqwest::Method, &str) -> Result<reqwest::blocking::RequestBuilder, CliError> + 'a;

fn device(command: &AdminDeviceCommand, authed: &Authed<'_>) -> Result<Value, CliError> {
    use reqwest::Method;
    match command {
        AdminDeviceCommand::List { org } => {
            answer(authed(Method::GET, &format!("/v1/orgs/{org}/devices"))?.send())
        }
        AdminDeviceCommand::Revoke { org, device } => answer(
            authed(
                Method::POST,
                &format!("/v1/orgs/{org}/devices/{device}/revoke"),
            )?
            .send(),
        )
        .map(|_| json!({"revoked": device})),
        AdminDeviceCommand::Wipe { org, device, user } => answer(
            authed(
                Method::POST,
                &format!("/v1/orgs/{org}/devices/{device}/wipe"),
            )?
            .json(&json!({"user": user}))
            .send(),
        ),
        AdminDeviceCommand::Wipes { org, device } => answer(
            authed(
                Method::GET,
                &format!("/v1/orgs/{org}/devices/{device}/wipes"),
            )?
            .send(),
        ),
        AdminDeviceCommand::CancelWipe { org, device, order } => answer(
            authed(
                Method::POST,
                &format!("/v1/orgs/{org}/devices/{device}/wipes/{order}/cancel"),
            )?
            .send(),
        )
        .map(|_| json!({"cancelled": order})),
    }
}

fn policy(command: &AdminPolicyCommand, authed: &Authed<'_>) -> Result<Value, CliError> {
    use reqwest::Method;
    match command {
        AdminPolicyCommand::Publish { org, version, file } => {
            let text = if file.as_os_str() == "-" {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                    .map_err(|e| CliError::usage(format!("cannot read standard input: {e}")))?;
                text
            } else {
                std::fs::read_to_string(file)
                    .map_err(|e| CliError::usage(format!("cannot read {}: {e}", file.display())))?
            };
            let rules: Value = serde_json::from_str(&text)
                .map_err(|e| CliError::usage(format!("the rules are not valid JSON: {e}")))?;
            let published = answer(
                authed(Method::POST, &format!("/v1/orgs/{org}/policies"))?
                    .json(&json!({"version": version, "rules": rules}))
                    .send(),
            )?;
            Ok(json!({"published": version, "signature": published["signature"]}))
        }
        AdminPolicyCommand::Show { org } => {
            let key = answer(authed(Method::GET, &format!("/v1/orgs/{org}/policy-key"))?.send())?;
            let latest =
                answer(authed(Method::GET, &format!("/v1/orgs/{org}/policies/latest"))?.send())?;
            let document = latest["document"].as_str().unwrap_or_default();
            let valid = match (
                hex::decode(key["public_key"].as_str().unwrap_or_default()),
                hex::decode(latest["signature"].as_str().unwrap_or_default()),
            ) {
                (Ok(key), Ok(signature)) => {
                    coffer_server::policy::verify(&key, document.as_bytes(), &signature)
                }
                _ => false,
            };
            if !valid {
                return Err(CliError {
                    exit: ExitCode::Corrupt,
                    code: "bad_signature",
                    message:
                        "the latest policy's signature does not verify with the organization's key"
                            .into(),
                });
            }
            let parsed: Value = serde_json::from_str(document).unwrap_or(Value::Null);
            Ok(json!({
                "version": latest["version"],
                "signature_valid": true,
                "public_key": key["public_key"],
                "published_at": latest["published_at"],
                "rules": parsed["rules"],
            }))
        }
    }
}

fn data_query(filter: &DataFilter, after: i64, limit: i64) -> Vec<(&'static str, String)> {
    let mut query = vec![("after", after.to_string()), ("limit", limit.to_string())];
    let optional = [
        ("device", filter.device.map(|d| d.to_string())),
        ("from", filter.from.map(|t| t.to_string())),
        ("to", filter.to.map(|t| t.to_string())),
        ("name", filter.name.clone()),
    ];
    query.extend(
        optional
            .into_iter()
            .filter_map(|(name, value)| Some((name, value?))),
    );
    query
}

fn data(
    global: &Global,
    command: &AdminDataCommand,
    authed: &Authed<'_>,
) -> Result<Value, CliError> {
    use reqwest::Method;
    let page = |filter: &DataFilter, after: i64, limit: i64| {
        answer(
            authed(Method::GET, &format!("/v1/orgs/{}/data", filter.org))?
                .query(&data_query(filter, after, limit))
                .send(),
        )
    };
    match command {
        AdminDataCommand::Query {
            filter,
            after,
            limit,
        } => page(filter, *after, *limit),
        AdminDataCommand::Export {
            filter,
            format,
            out,
        } => {
            let mut readings: Vec<coffer_server::data::StoredReading> = Vec::new();
            let mut after = 0;
            let progress = crate::commands::spinner(global, "exporting readings");
            loop {
                let body = page(filter, after, coffer_server::api::MAX_QUERY_ROWS)?;
                let rows: Vec<coffer_server::data::StoredReading> =
                    serde_json::from_value(body["readings"].clone()).map_err(|e| {
                        CliError::other(format!("the server's answer is not readings: {e}"))
                    })?;
                readings.extend(rows);
                progress.set_message(format!("exporting readings: {}", readings.len()));
                match body["next_after"].as_i64() {
                    Some(next) => after = next,
                    None => break,
                }
            }
            progress.finish_and_clear();
            let text = if format == "csv" {
                coffer_server::data::to_csv(&readings)
            } else {
                serde_json::to_string_pretty(&readings).unwrap_or_default() + "\n"
            };
            match out {
                Some(path) => {
                    std::fs::write(path, text).map_err(|e| {
                        CliError::other(format!("cannot write {}: {e}", path.display()))
                    })?;
                    Ok(json!({"exported": readings.len(), "to": path.display().to_string()}))
                }
                None => Ok(Value::String(text)),
            }
        }
    }
}
