//! The console's pages: one template (`templates/console/`) and one struct
//! per page. askama escapes every value written into HTML, so a device
//! named `<img src=x onerror=…>` is shown as that text.

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use coffer_protocol::admin::{AuditReport, DeviceList, MeAnswer, Membership};

use super::sessions::Session;

/// What every signed-in page's header needs.
pub struct Frame {
    /// Who is signed in.
    pub user: String,
    /// The sign-out form's CSRF token.
    pub csrf: String,
    /// The organization the page is about: id, name, the user's role.
    pub org: Option<(i64, String, String)>,
}

impl Frame {
    fn new(session: &Session, me: &MeAnswer, org: Option<i64>) -> Frame {
        let org = org.map(|id| {
            let membership = me.organizations.iter().find(|m| m.id == id);
            (
                id,
                membership.map_or_else(|| format!("organization {id}"), |m| m.name.clone()),
                membership.map_or_else(|| "operator".to_owned(), |m| m.role.clone()),
            )
        });
        Frame {
            user: me.user.clone(),
            csrf: session.csrf().to_owned(),
            org,
        }
    }
}

/// A time, as UTC text (and machine-readable for the viewer's zone).
pub struct When {
    /// RFC 3339, UTC.
    pub iso: String,
    /// For people: `2026-12-02 11:52 UTC`.
    pub text: String,
}

impl When {
    fn of_unix(secs: i64) -> When {
        let at = std::time::UNIX_EPOCH
            + std::time::Duration::from_secs(u64::try_from(secs).unwrap_or(0));
        let iso = humantime::format_rfc3339_seconds(at).to_string();
        // 2026-12-02T11:52:07Z → 2026-12-02 11:52 UTC
        let text = format!("{} {} UTC", &iso[..10], &iso[11..16]);
        When { iso, text }
    }
}

fn render(page: &impl Template, status: StatusCode) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a console page failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page failed to render",
            )
                .into_response()
        }
    }
}

/// The sign-in form.
#[derive(Template)]
#[template(path = "console/sign_in.html")]
pub struct SignIn {
    frame: Option<Frame>,
    user: String,
    message: Option<String>,
}

impl SignIn {
    /// An empty form.
    pub fn blank() -> SignIn {
        SignIn {
            frame: None,
            user: String::new(),
            message: None,
        }
    }

    /// The form again, with why the last try failed.
    pub fn refused(user: &str, message: &str) -> SignIn {
        SignIn {
            frame: None,
            user: user.to_owned(),
            message: Some(message.to_owned()),
        }
    }
}

impl IntoResponse for SignIn {
    fn into_response(self) -> Response {
        render(&self, StatusCode::OK)
    }
}

/// The user's organizations.
#[derive(Template)]
#[template(path = "console/organizations.html")]
pub struct Organizations {
    frame: Option<Frame>,
    organizations: Vec<Membership>,
    operator: bool,
}

impl Organizations {
    /// The page for `me`.
    pub fn new(session: &Session, me: MeAnswer) -> Organizations {
        Organizations {
            frame: Some(Frame::new(session, &me, None)),
            operator: me.operator,
            organizations: me.organizations,
        }
    }
}

impl IntoResponse for Organizations {
    fn into_response(self) -> Response {
        render(&self, StatusCode::OK)
    }
}

/// One row of the devices table.
pub struct DeviceRow {
    id: i64,
    name: String,
    revoked: bool,
    last_seen: Option<When>,
    address: String,
    escrow: bool,
    pending_wipes: i64,
}

/// An organization's devices.
#[derive(Template)]
#[template(path = "console/devices.html")]
pub struct Devices {
    frame: Option<Frame>,
    org_id: i64,
    devices: Vec<DeviceRow>,
    /// Whether the user's role may revoke (the API decides all the same).
    manages: bool,
}

impl Devices {
    /// The page of `org`'s devices.
    pub fn new(session: &Session, me: &MeAnswer, org: i64, list: DeviceList) -> Devices {
        let frame = Frame::new(session, me, Some(org));
        let manages = frame
            .org
            .as_ref()
            .is_some_and(|(_, _, role)| role == "owner" || role == "admin");
        Devices {
            frame: Some(frame),
            org_id: org,
            manages,
            devices: list
                .devices
                .into_iter()
                .map(|d| DeviceRow {
                    id: d.id,
                    name: d.name,
                    revoked: d.revoked,
                    last_seen: d.last_seen_at.map(When::of_unix),
                    address: d.last_seen_address.unwrap_or_default(),
                    escrow: d.escrow,
                    pending_wipes: d.pending_wipes,
                })
                .collect(),
        }
    }
}

impl IntoResponse for Devices {
    fn into_response(self) -> Response {
        render(&self, StatusCode::OK)
    }
}

/// The audit trail's check.
#[derive(Template)]
#[template(path = "console/audit.html")]
pub struct Audit {
    frame: Option<Frame>,
    report: AuditReport,
}

impl Audit {
    /// The page of `org`'s audit check.
    pub fn new(session: &Session, me: &MeAnswer, org: i64, report: AuditReport) -> Audit {
        Audit {
            frame: Some(Frame::new(session, me, Some(org))),
            report,
        }
    }
}

impl IntoResponse for Audit {
    fn into_response(self) -> Response {
        render(&self, StatusCode::OK)
    }
}

/// A refusal or failure, with the API's message.
#[derive(Template)]
#[template(path = "console/error.html")]
pub struct ErrorPage {
    frame: Option<Frame>,
    status: u16,
    message: String,
}

/// The error page for `status`.
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let page = ErrorPage {
        frame: None,
        status: status.as_u16(),
        message: message.to_owned(),
    };
    render(&page, status)
}
