//! `coffer admin`: the control plane's API from the command line.

use std::path::{Path, PathBuf};

use coffer_protocol::admin::{
    AddUser, AuditReport, ChangePassword, CreateOrganization, Csv, DeviceList, DeviceSummary,
    EnrollmentCode, MeAnswer, MemberList, NewEnrollmentCode, OperatorList, OrderWipe,
    OrganizationCreated, OrganizationList, OrganizationSummary, ReadingsQuery, SetRole, Setup,
    SetupAnswer, UsageQuery, UsageReport, UserAdded, WipeOrdered, WipeOrders,
};
use coffer_protocol::data::{ReadingsPage, StoredReading};
use coffer_protocol::policy::{Document, PolicyKey, PublishRequest, Rules, SignedPolicy};
use coffer_protocol::session::{Login, LoginAnswer};
use coffer_protocol::untrusted::Untrusted;
use coffer_protocol::{Answer, ErrorBody, NoContent, WireSecret};
use reqwest::blocking::{Client, Response};
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::cli::{
    AdminArgs, AdminAuditCommand, AdminCommand, AdminDataCommand, AdminDeviceCommand,
    AdminOperatorCommand, AdminOrgCommand, AdminPolicyCommand, DataFilter, Global,
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

/// The server `coffer admin` talks to when neither `--server` nor
/// `COFFER_SERVER` names one and no session is saved.
const DEFAULT_SERVER: &str = "http://127.0.0.1:8443";

/// What `coffer admin login` keeps (0600): the token, and the server (and
/// the CA certificate) it was issued through, so later commands go to the
/// same place and the token is never sent to another server.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedSession {
    server: String,
    ca_cert: Option<PathBuf>,
    token: String,
}

impl Drop for SavedSession {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.token);
    }
}

/// The saved session, if there is one. A file of an earlier version holds
/// the bare token: its server is not known.
fn saved_session() -> Option<SavedSession> {
    let text = Zeroizing::new(std::fs::read_to_string(session_file().ok()?).ok()?);
    let text = text.trim();
    if text.starts_with('{') {
        return serde_json::from_str(text).ok();
    }
    // An earlier version's bare token: its server is not known, so it
    // goes only to the default one (log in again to use another).
    Some(SavedSession {
        server: DEFAULT_SERVER.to_owned(),
        ca_cert: None,
        token: text.to_owned(),
    })
}

fn same_server(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// The token for `server`: refused when the session was made with another.
fn read_session(server: &str) -> Result<Zeroizing<String>, CliError> {
    let saved = saved_session().ok_or_else(|| {
        CliError::usage("not logged in: run 'coffer admin login --user NAME' first")
    })?;
    if !saved.server.is_empty() && !same_server(&saved.server, server) {
        return Err(CliError::usage(format!(
            "the saved session is for {}, not {server}: log in there first ('coffer admin --server {server} login --user NAME')",
            saved.server
        )));
    }
    Ok(Zeroizing::new(saved.token.clone()))
}

fn write_session(server: &str, ca_cert: Option<&Path>, token: &str) -> Result<(), CliError> {
    use std::io::Write;
    let path = session_file()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| CliError::other(e.to_string()))?;
    }
    let saved = SavedSession {
        server: server.trim_end_matches('/').to_owned(),
        // Absolute, so that it still names the file from another directory.
        ca_cert: ca_cert.map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned())),
        token: token.to_owned(),
    };
    let text =
        Zeroizing::new(serde_json::to_string(&saved).map_err(|e| CliError::other(e.to_string()))?);
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
    file.write_all(text.as_bytes())
        .map_err(|e| CliError::other(e.to_string()))
}

/// The server and CA certificate of this command: the flags (or their
/// variables), else the saved session's, else the default.
fn destination(args: &AdminArgs) -> (String, Option<PathBuf>) {
    let saved = saved_session();
    let server = args
        .server
        .clone()
        .or_else(|| {
            saved
                .as_ref()
                .map(|s| s.server.clone())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
    let ca_cert = args.ca_cert.clone().or_else(|| {
        saved
            .filter(|s| same_server(&s.server, &server))
            .and_then(|s| s.ca_cert.clone())
    });
    (server, ca_cert)
}

fn client(ca_cert: Option<&Path>) -> Result<Client, CliError> {
    let mut builder = Client::builder().timeout(std::time::Duration::from_secs(30));
    if let Some(path) = ca_cert {
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

/// The server's answer decoded as `T`, or its typed error (an
/// [`ErrorBody`]) as a CLI error.
pub(crate) fn answer<T: Answer>(response: reqwest::Result<Response>) -> Result<T, CliError> {
    let response = response.map_err(|e| unreachable(&e))?;
    let status = response.status();
    let body = response.bytes().unwrap_or_default();
    if status.is_success() {
        return T::decode(&body).map_err(|e| {
            CliError::other(format!(
                "the server's answer is not what this version understands: {e}"
            ))
        });
    }
    // The server's stable code is passed on to scripts when this version
    // knows it; an unknown one stays `server_refused`.
    let (code, known, message) = match ErrorBody::decode(&body) {
        // The server's text is data: escaped and bounded before it reaches
        // the terminal.
        Ok(ErrorBody { error }) => (
            Untrusted::new(error.code.as_str()).to_string(),
            error.code.known(),
            Untrusted::new(&error.message).at_most(500).to_string(),
        ),
        Err(_) => ("error".to_owned(), None, String::new()),
    };
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
        code: known.unwrap_or("server_refused"),
        message: format!("the server refused ({status}, {code}): {message}"),
    })
}

/// Why no answer came, in words that name the cause and what to do: a URL
/// that is not one, a certificate not trusted, an address that refuses, a
/// server too slow; else the error's own chain of causes.
pub(crate) fn unreachable(e: &reqwest::Error) -> CliError {
    let address = e.url().map(|u| {
        format!(
            "{}:{}",
            u.host_str().unwrap_or("?"),
            u.port_or_known_default().unwrap_or(0)
        )
    });
    let debug = format!("{e:?}");
    let mut causes = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        causes.push_str(": ");
        causes.push_str(&cause.to_string());
        source = cause.source();
    }
    // A builder error is the URL's when it has none, or not an http one
    // (`cp.example:8443` parses with the scheme `cp.example`); else a
    // header value (a damaged saved session).
    let bad_url = e
        .url()
        .is_none_or(|u| !matches!(u.scheme(), "http" | "https"));
    let message = if e.is_builder() && bad_url {
        "the server's URL is not one coffer can use: give it whole, with its scheme \
         (https://cp.example:8443, or http:// for a server on this machine)"
            .to_owned()
    } else if debug.contains("UnknownIssuer") {
        format!(
            "the server at {} shows a certificate this machine does not trust: give its CA \
             (--ca-cert FILE, the dev-tls-cert.pem of `coffer serve --dev-tls`)",
            address.as_deref().unwrap_or("?")
        )
    } else if debug.contains("InvalidCertificate") {
        format!(
            "the server at {} shows a certificate that is not valid for it{causes} \
             (another name than the one in the URL, or expired)",
            address.as_deref().unwrap_or("?")
        )
    } else if e.is_timeout() {
        format!(
            "the server at {} did not answer in time",
            address.as_deref().unwrap_or("?")
        )
    } else if e.is_connect() {
        format!(
            "cannot connect to {}{causes} (is coffer serve running there, and the port right?)",
            address.as_deref().unwrap_or("the server")
        )
    } else {
        format!("cannot reach the server{causes}")
    };
    CliError::other(Untrusted::new(&message).at_most(600).to_string())
}

/// An answer as the `--json` output shows it.
pub(crate) fn shown<T: serde::Serialize>(answer: &T) -> Result<Value, CliError> {
    serde_json::to_value(answer)
        .map_err(|e| CliError::other(format!("cannot show the server's answer: {e}")))
}

/// A secret from `env`, else a no-echo prompt on a terminal.
pub(crate) fn password(prompt: &str, env: &str) -> Result<Zeroizing<String>, CliError> {
    if let Ok(p) = std::env::var(env) {
        return Ok(Zeroizing::new(p));
    }
    if !crate::input::has_terminal() {
        return Err(CliError::usage(format!(
            "no password given: set {env}, or run on a terminal"
        )));
    }
    rpassword::prompt_password(prompt)
        .map(Zeroizing::new)
        .map_err(|e| CliError::usage(format!("cannot read from the terminal: {e}")))
}

/// A new password: from `env`, else typed twice on the terminal (three
/// tries), so a typo does not become the password.
pub(crate) fn new_password(prompt: &str, env: &str) -> Result<Zeroizing<String>, CliError> {
    if std::env::var_os(env).is_some() {
        return password(prompt, env);
    }
    for _ in 0..crate::input::TRIES {
        let first = password(prompt, env)?;
        let second = password("Repeat it: ", env)?;
        if first == second {
            return Ok(first);
        }
        crate::input::tell("The two passwords differ; try again.");
    }
    Err(CliError::usage("the passwords did not match three times"))
}

pub fn run(global: &Global, args: &AdminArgs) -> Result<Report, CliError> {
    let (server, ca_cert) = destination(args);
    let http = client(ca_cert.as_deref())?;
    let url = |path: &str| format!("{}{path}", server.trim_end_matches('/'));
    let authed = |method: reqwest::Method, path: &str| -> Result<_, CliError> {
        let token = read_session(&server)?;
        Ok(http
            .request(method, url(path))
            .header(coffer_protocol::AUTH_HEADER, token.as_str()))
    };
    let value = match &args.command {
        AdminCommand::Setup {
            organization,
            owner,
        } => {
            let token = password("Setup token: ", "COFFER_SETUP_TOKEN")?;
            let password = new_password(&format!("Password for {owner}: "), PASSWORD_ENV)?;
            let request = Setup {
                setup_token: WireSecret::from(token),
                organization: organization.clone(),
                owner: owner.clone(),
                password: WireSecret::from(password),
            };
            let set_up: SetupAnswer = answer(http.post(url("/v1/setup")).json(&request).send())?;
            shown(&set_up)?
        }
        AdminCommand::Login { user } => {
            let password = password(&format!("Password for {user}: "), PASSWORD_ENV)?;
            let request = Login {
                user: user.clone(),
                password: WireSecret::from(password),
            };
            let session: LoginAnswer = answer(http.post(url("/v1/login")).json(&request).send())?;
            write_session(&server, ca_cert.as_deref(), session.token.expose_secret())?;
            json!({"logged_in": user, "expires_at": session.expires_at})
        }
        AdminCommand::Password => {
            let old = password("Current password: ", PASSWORD_ENV)?;
            let new = new_password("New password: ", "COFFER_NEW_PASSPHRASE")?;
            let request = ChangePassword {
                old_password: WireSecret::from(old),
                new_password: WireSecret::from(new),
            };
            let NoContent = answer(
                authed(reqwest::Method::POST, "/v1/me/password")?
                    .json(&request)
                    .send(),
            )?;
            json!({"password_changed": true})
        }
        AdminCommand::Logout => {
            let answered: Result<NoContent, _> =
                answer(authed(reqwest::Method::POST, "/v1/logout")?.send());
            let _ = std::fs::remove_file(session_file()?);
            answered?;
            json!({"logged_out": true})
        }
        AdminCommand::Me => {
            let me: MeAnswer = answer(authed(reqwest::Method::GET, "/v1/me")?.send())?;
            shown(&me)?
        }
        AdminCommand::AddUser { org, user, role } => {
            let initial = new_password(
                &format!("Initial password for {user}: "),
                "COFFER_NEW_PASSPHRASE",
            )?;
            let request = AddUser {
                user: user.clone(),
                password: WireSecret::from(initial),
                role: role.clone(),
            };
            let added: UserAdded = answer(
                authed(reqwest::Method::POST, &format!("/v1/orgs/{org}/users"))?
                    .json(&request)
                    .send(),
            )?;
            shown(&added)?
        }
        AdminCommand::SetRole { org, who, role } => {
            let user_id = user_id(&authed, *org, who)?;
            let NoContent = answer(
                authed(
                    reqwest::Method::PUT,
                    &format!("/v1/orgs/{org}/users/{user_id}/role"),
                )?
                .json(&SetRole { role: role.clone() })
                .send(),
            )?;
            json!({})
        }
        AdminCommand::Users { org } => {
            let members: MemberList =
                answer(authed(reqwest::Method::GET, &format!("/v1/orgs/{org}/users"))?.send())?;
            shown(&members)?
        }
        AdminCommand::RemoveUser { org, who } => {
            let user_id = user_id(&authed, *org, who)?;
            let NoContent = answer(
                authed(
                    reqwest::Method::DELETE,
                    &format!("/v1/orgs/{org}/users/{user_id}"),
                )?
                .send(),
            )?;
            json!({})
        }
        AdminCommand::EnrollCode { org, valid_for } => {
            let request = NewEnrollmentCode {
                valid_for_secs: Some(i64::try_from(valid_for.as_secs()).unwrap_or(i64::MAX)),
            };
            let code: EnrollmentCode = answer(
                authed(
                    reqwest::Method::POST,
                    &format!("/v1/orgs/{org}/enrollment-codes"),
                )?
                .json(&request)
                .send(),
            )?;
            json!({"code": code.code.expose_secret(), "expires_at": code.expires_at})
        }
        AdminCommand::Device(command) => device(command, &authed)?,
        AdminCommand::Policy(command) => policy(command, &authed)?,
        AdminCommand::Data(command) => data(global, command, &authed)?,
        AdminCommand::Records(command) => crate::admin_sync::records(command, &authed)?,
        AdminCommand::Authors(command) => crate::admin_sync::authors(command, &authed)?,
        AdminCommand::Usage {
            org,
            by,
            from,
            to,
            csv,
        } => {
            let query = UsageQuery {
                from: *from,
                to: *to,
                by: Some(by.clone()),
                format: csv.then(|| "csv".to_owned()),
            };
            let request = authed(reqwest::Method::GET, &format!("/v1/orgs/{org}/usage"))?
                .query(&query)
                .send();
            if *csv {
                let Csv(text) = answer(request)?;
                Value::String(text)
            } else {
                let usage: UsageReport = answer(request)?;
                shown(&usage)?
            }
        }
        AdminCommand::DisableUser { org, who } => {
            let user_id = user_id(&authed, *org, who)?;
            let NoContent = answer(
                authed(
                    reqwest::Method::POST,
                    &format!("/v1/orgs/{org}/users/{user_id}/disable"),
                )?
                .send(),
            )?;
            json!({})
        }
        AdminCommand::EnableUser { org, who } => {
            let user_id = user_id(&authed, *org, who)?;
            let NoContent = answer(
                authed(
                    reqwest::Method::POST,
                    &format!("/v1/orgs/{org}/users/{user_id}/enable"),
                )?
                .send(),
            )?;
            json!({})
        }
        AdminCommand::Audit(AdminAuditCommand::Verify { org }) => {
            let path = match org {
                Some(org) => format!("/v1/orgs/{org}/audit/verify"),
                None => "/v1/audit/verify".to_owned(),
            };
            let report: AuditReport = answer(authed(reqwest::Method::GET, &path)?.send())?;
            if !report.intact {
                let at = report
                    .broken_at
                    .map_or_else(String::new, |row| format!(" at row {row}"));
                return Err(CliError {
                    exit: ExitCode::AuditTampered,
                    code: "audit_tampered",
                    message: format!(
                        "the server's audit trail is broken{at}: {}",
                        Untrusted::new(report.problem.as_deref().unwrap_or(""))
                    ),
                });
            }
            shown(&report)?
        }
        AdminCommand::Org(command) => organization(command, &authed)?,
        AdminCommand::Operator(command) => {
            use reqwest::Method;
            match command {
                AdminOperatorCommand::List => {
                    let listed: OperatorList =
                        answer(authed(Method::GET, "/v1/operators")?.send())?;
                    shown(&listed)?
                }
                AdminOperatorCommand::Add { user_id } => {
                    let NoContent =
                        answer(authed(Method::PUT, &format!("/v1/operators/{user_id}"))?.send())?;
                    json!({"operator_added": user_id})
                }
                AdminOperatorCommand::Remove { user_id } => {
                    let NoContent = answer(
                        authed(Method::DELETE, &format!("/v1/operators/{user_id}"))?.send(),
                    )?;
                    json!({"operator_removed": user_id})
                }
            }
        }
    };
    let text = match &value {
        Value::String(s) => s.clone(),
        // Written already (an export streamed to standard output).
        Value::Null => String::new(),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    };
    Ok(Report { json: value, text })
}

/// `coffer admin org …`: the operators' commands.
fn organization(command: &AdminOrgCommand, authed: &Authed<'_>) -> Result<Value, CliError> {
    use reqwest::Method;
    let show = |org: i64| -> Result<OrganizationSummary, CliError> {
        answer(authed(Method::GET, &format!("/v1/orgs/{org}"))?.send())
    };
    Ok(match command {
        AdminOrgCommand::Create { name, owner } => {
            let initial = new_password(
                &format!("Initial password for {owner}: "),
                "COFFER_NEW_PASSPHRASE",
            )?;
            let request = CreateOrganization {
                name: name.clone(),
                owner: owner.clone(),
                password: WireSecret::from(initial),
            };
            let created: OrganizationCreated =
                answer(authed(Method::POST, "/v1/orgs")?.json(&request).send())?;
            shown(&created)?
        }
        AdminOrgCommand::List => {
            let listed: OrganizationList = answer(authed(Method::GET, "/v1/orgs")?.send())?;
            shown(&listed)?
        }
        AdminOrgCommand::Show { org } => shown(&show(*org)?)?,
        AdminOrgCommand::Suspend { org } | AdminOrgCommand::Resume { org } => {
            let action = match command {
                AdminOrgCommand::Suspend { .. } => "suspend",
                _ => "resume",
            };
            let NoContent =
                answer(authed(Method::POST, &format!("/v1/orgs/{org}/{action}"))?.send())?;
            shown(&show(*org)?)?
        }
        AdminOrgCommand::Delete { org, confirm_name } => {
            let found = show(*org)?;
            if found.name != *confirm_name {
                return Err(CliError::usage(format!(
                    "organization {org} is named {:?}, not {:?}: nothing deleted",
                    Untrusted::new(&found.name),
                    Untrusted::new(confirm_name)
                )));
            }
            let NoContent = answer(authed(Method::DELETE, &format!("/v1/orgs/{org}"))?.send())?;
            json!({"deleted": org, "name": found.name})
        }
    })
}

/// The id of the user `who` names: given, or looked up by name among the
/// organization's members.
fn user_id(authed: &Authed<'_>, org: i64, who: &crate::cli::UserRef) -> Result<i64, CliError> {
    if let Some(id) = who.user_id {
        return Ok(id);
    }
    let name = who.user.as_deref().unwrap_or_default();
    let members: MemberList =
        answer(authed(reqwest::Method::GET, &format!("/v1/orgs/{org}/users"))?.send())?;
    members
        .members
        .iter()
        .find(|m| m.name == name)
        .map(|m| m.id)
        .ok_or_else(|| CliError {
            exit: ExitCode::NotFound,
            code: "no_such_user",
            message: format!(
                "organization {org} has no user named {:?} ('coffer admin users --org {org}' lists them)",
                Untrusted::new(name)
            ),
        })
}

/// Builds an authenticated request to the server.
pub(crate) type Authed<'a> =
    dyn Fn(reqwest::Method, &str) -> Result<reqwest::blocking::RequestBuilder, CliError> + 'a;

fn device(command: &AdminDeviceCommand, authed: &Authed<'_>) -> Result<Value, CliError> {
    use reqwest::Method;
    match command {
        AdminDeviceCommand::List { org } => {
            let devices: DeviceList =
                answer(authed(Method::GET, &format!("/v1/orgs/{org}/devices"))?.send())?;
            shown(&devices)
        }
        AdminDeviceCommand::Revoke { org, device } => {
            let NoContent = answer(
                authed(
                    Method::POST,
                    &format!("/v1/orgs/{org}/devices/{device}/revoke"),
                )?
                .send(),
            )?;
            Ok(json!({"revoked": device}))
        }
        AdminDeviceCommand::Wipe {
            org,
            device,
            user,
            yes,
        } => {
            if !yes {
                let found: DeviceSummary = answer(
                    authed(Method::GET, &format!("/v1/orgs/{org}/devices/{device}"))?.send(),
                )?;
                let name = found.name.clone();
                let what = match user {
                    Some(user) => format!("the slot of {:?} on", Untrusted::new(user)),
                    None => "every key and all the data of".to_owned(),
                };
                let question = format!(
                    "This orders a wipe of {what} device {device} ({:?}) at its next check-in. Type the device's name to confirm: ",
                    Untrusted::new(&name)
                );
                if !crate::input::confirm(
                    &question,
                    &name,
                    "ordering a wipe needs --yes when not run on a terminal",
                )? {
                    return Err(CliError::usage("not confirmed; no wipe was ordered"));
                }
            }
            let ordered: WipeOrdered = answer(
                authed(
                    Method::POST,
                    &format!("/v1/orgs/{org}/devices/{device}/wipe"),
                )?
                .json(&OrderWipe { user: user.clone() })
                .send(),
            )?;
            shown(&ordered)
        }
        AdminDeviceCommand::Wipes { org, device } => {
            let orders: WipeOrders = answer(
                authed(
                    Method::GET,
                    &format!("/v1/orgs/{org}/devices/{device}/wipes"),
                )?
                .send(),
            )?;
            shown(&orders)
        }
        AdminDeviceCommand::CancelWipe { org, device, order } => {
            let NoContent = answer(
                authed(
                    Method::POST,
                    &format!("/v1/orgs/{org}/devices/{device}/wipes/{order}/cancel"),
                )?
                .send(),
            )?;
            Ok(json!({"cancelled": order}))
        }
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
            // Checked here as the server would: invalid JSON, and unknown or
            // mistyped rules, are refused before anything is sent.
            serde_json::from_str::<serde::de::IgnoredAny>(&text)
                .map_err(|e| CliError::usage(format!("the rules are not valid JSON: {e}")))?;
            let rules: Rules = serde_json::from_str(&text).map_err(|e| {
                CliError::usage(format!(
                    "the rules are not a policy's rules (docs/formats/policy.md): {e}"
                ))
            })?;
            let request = PublishRequest {
                version: *version,
                rules,
            };
            let published: SignedPolicy = answer(
                authed(Method::POST, &format!("/v1/orgs/{org}/policies"))?
                    .json(&request)
                    .send(),
            )?;
            Ok(json!({"published": version, "signature": published.signature}))
        }
        AdminPolicyCommand::Show { org } => {
            let key: PolicyKey =
                answer(authed(Method::GET, &format!("/v1/orgs/{org}/policy-key"))?.send())?;
            let latest: SignedPolicy =
                answer(authed(Method::GET, &format!("/v1/orgs/{org}/policies/latest"))?.send())?;
            let valid = match (hex::decode(&key.public_key), hex::decode(&latest.signature)) {
                (Ok(key), Ok(signature)) => {
                    coffer_protocol::policy::verify(&key, latest.document.as_bytes(), &signature)
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
            let parsed: Document = serde_json::from_str(&latest.document).map_err(|e| {
                CliError::other(format!(
                    "the latest policy is not a policy document this version understands: {e}"
                ))
            })?;
            Ok(json!({
                "version": latest.version,
                "signature_valid": true,
                "public_key": key.public_key,
                "published_at": latest.published_at,
                "rules": shown(&parsed.rules)?,
            }))
        }
    }
}

fn data_query(filter: &DataFilter, after: i64, limit: i64) -> ReadingsQuery {
    ReadingsQuery {
        newest: None,
        device: filter.device,
        from: filter.from,
        to: filter.to,
        name: filter.name.clone(),
        after,
        limit: Some(limit),
        format: None,
    }
}

fn data(
    global: &Global,
    command: &AdminDataCommand,
    authed: &Authed<'_>,
) -> Result<Value, CliError> {
    use reqwest::Method;
    let page = |filter: &DataFilter, after: i64, limit: i64| -> Result<ReadingsPage, CliError> {
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
        } => shown(&page(filter, *after, *limit)?),
        AdminDataCommand::Export {
            filter,
            format,
            out,
        } => {
            let mut readings: Vec<StoredReading> = Vec::new();
            let mut after = 0;
            let progress = crate::commands::spinner(global, "exporting readings");
            loop {
                let ReadingsPage {
                    readings: rows,
                    next_after,
                } = page(filter, after, coffer_server::api::MAX_QUERY_ROWS)?;
                readings.extend(rows);
                progress.set_message(format!("exporting readings: {}", readings.len()));
                match next_after {
                    Some(next) => after = next,
                    None => break,
                }
            }
            progress.finish_and_clear();
            let text = if format == "csv" {
                coffer_protocol::data::to_csv(&readings)
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
