//! The console's pages: one template (`templates/console/`) and one struct
//! per page. askama escapes every value written into HTML, so a device
//! named `<img src=x onerror=…>` is shown as that text.

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use coffer_protocol::admin::{
    AuditReport, DeviceList, DeviceSummary, EnrollmentCode, MeAnswer, Membership, WipeOrders,
    WipeState,
};
use coffer_protocol::device::WipeScope;
use coffer_protocol::policy::{Document, PublishRequest, Rules};
use secrecy::ExposeSecret;

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
    /// Whether the user's role in the page's organization may change its
    /// devices and policy (the API decides all the same; this only hides
    /// forms that would be refused).
    fn manages(&self) -> bool {
        self.org
            .as_ref()
            .is_some_and(|(_, _, role)| role == "owner" || role == "admin")
    }

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
        // RFC 3339 ends at year 9999: a time past it (a corrupt row) is
        // shown as that last second, never a panic.
        const LAST_RFC3339_SECOND: u64 = 253_402_300_799;
        let secs = u64::try_from(secs).unwrap_or(0).min(LAST_RFC3339_SECOND);
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let iso = humantime::format_rfc3339_seconds(at).to_string();
        // 2026-12-02T11:52:07Z → 2026-12-02 11:52 UTC
        let text = match (iso.get(..10), iso.get(11..16)) {
            (Some(day), Some(minute)) => format!("{day} {minute} UTC"),
            _ => iso.clone(),
        };
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

/// Pages answered `200 OK` as they render.
macro_rules! ok_pages {
    ($($page:ty),* $(,)?) => {$(
        impl IntoResponse for $page {
            fn into_response(self) -> Response {
                render(&self, StatusCode::OK)
            }
        }
    )*};
}

ok_pages!(
    SignIn,
    Organizations,
    Devices,
    Audit,
    DevicePage,
    EnrollmentCodePage,
    PolicyPage
);

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

impl From<DeviceSummary> for DeviceRow {
    fn from(d: DeviceSummary) -> DeviceRow {
        DeviceRow {
            id: d.id,
            name: d.name,
            revoked: d.revoked,
            last_seen: d.last_seen_at.map(When::of_unix),
            address: d.last_seen_address.unwrap_or_default(),
            escrow: d.escrow,
            pending_wipes: d.pending_wipes,
        }
    }
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
        let manages = frame.manages();
        Devices {
            frame: Some(frame),
            org_id: org,
            manages,
            devices: list.devices.into_iter().map(DeviceRow::from).collect(),
        }
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

/// One wipe order on a device's page.
pub struct WipeRow {
    id: i64,
    scope: String,
    user: String,
    state: String,
    pending: bool,
    ordered_at: When,
    acknowledged_at: Option<When>,
    cancelled_at: Option<When>,
}

/// One device: its state, its wipe orders, and the wipe form.
#[derive(Template)]
#[template(path = "console/device.html")]
pub struct DevicePage {
    frame: Option<Frame>,
    org_id: i64,
    device: DeviceRow,
    wipes: Vec<WipeRow>,
    manages: bool,
}

impl DevicePage {
    /// The page of one device of `org`.
    pub fn new(
        session: &Session,
        me: &MeAnswer,
        org: i64,
        device: DeviceSummary,
        wipes: WipeOrders,
    ) -> DevicePage {
        let frame = Frame::new(session, me, Some(org));
        let manages = frame.manages();
        DevicePage {
            frame: Some(frame),
            org_id: org,
            manages,
            device: DeviceRow::from(device),
            wipes: wipes
                .orders
                .into_iter()
                .rev()
                .map(|w| WipeRow {
                    id: w.id,
                    scope: match &w.scope {
                        WipeScope::Device => "whole device".to_owned(),
                        WipeScope::User => "one user".to_owned(),
                        WipeScope::Unknown(other) => other.clone(),
                        _ => "another scope".to_owned(),
                    },
                    user: w.user.unwrap_or_default(),
                    pending: w.state == WipeState::Pending,
                    state: w.state.as_str().to_owned(),
                    ordered_at: When::of_unix(w.ordered_at),
                    acknowledged_at: w.acknowledged_at.map(When::of_unix),
                    cancelled_at: w.cancelled_at.map(When::of_unix),
                })
                .collect(),
        }
    }
}

/// A new enrollment code, as text and as a QR code.
#[derive(Template)]
#[template(path = "console/enrollment_code.html")]
pub struct EnrollmentCodePage {
    frame: Option<Frame>,
    code: String,
    expires_at: When,
    /// An SVG this server drew from the code (hex digits only): the one
    /// value the template writes unescaped.
    qr_svg: String,
}

impl EnrollmentCodePage {
    /// The page for a code just made.
    pub fn new(
        session: &Session,
        me: &MeAnswer,
        org: i64,
        code: &EnrollmentCode,
    ) -> EnrollmentCodePage {
        let text = code.code.expose_secret().to_owned();
        let qr_svg = qrcode::QrCode::new(text.as_bytes())
            .map(|qr| {
                qr.render::<qrcode::render::svg::Color<'_>>()
                    .min_dimensions(200, 200)
                    .build()
            })
            .unwrap_or_default();
        EnrollmentCodePage {
            frame: Some(Frame::new(session, me, Some(org))),
            code: text,
            expires_at: When::of_unix(code.expires_at),
            qr_svg,
        }
    }
}

fn pretty_rules(rules: &Rules) -> String {
    // Plain structs with string keys: serializing cannot fail.
    serde_json::to_string_pretty(rules).unwrap_or_default()
}

/// The current policy and the form to change it.
#[derive(Template)]
#[template(path = "console/policy.html")]
pub struct PolicyPage {
    frame: Option<Frame>,
    org_id: i64,
    current: Option<(i64, When, String)>,
    next_version: i64,
    draft: String,
    manages: bool,
}

impl PolicyPage {
    /// The page of `org`'s policy (`None`: never published).
    pub fn new(
        session: &Session,
        me: &MeAnswer,
        org: i64,
        current: Option<Document>,
    ) -> PolicyPage {
        let frame = Frame::new(session, me, Some(org));
        let manages = frame.manages();
        let rules = current
            .as_ref()
            .map(|d| d.rules.clone())
            .unwrap_or_default();
        PolicyPage {
            frame: Some(frame),
            org_id: org,
            next_version: current.as_ref().map_or(1, |d| d.version.saturating_add(1)),
            current: current.map(|d| {
                (
                    d.version,
                    When::of_unix(d.issued_at),
                    pretty_rules(&d.rules),
                )
            }),
            draft: pretty_rules(&rules),
            manages,
        }
    }
}

/// One line of the policy diff.
pub struct DiffLine {
    /// `+`, `-` or ` `.
    sign: char,
    /// The CSS class of the line.
    class: &'static str,
    text: String,
}

/// The rules about to be published, against the current ones.
#[derive(Template)]
#[template(path = "console/policy_preview.html")]
pub struct PolicyPreview {
    frame: Option<Frame>,
    org_id: i64,
    version: String,
    rules: String,
    problem: Option<String>,
    diff: Vec<DiffLine>,
    changed: bool,
}

impl PolicyPreview {
    /// A valid draft: its diff, and the publish form.
    pub fn new(
        session: &Session,
        me: &MeAnswer,
        org: i64,
        current: Option<&Document>,
        request: &PublishRequest,
    ) -> PolicyPreview {
        let old = current.map(|d| pretty_rules(&d.rules)).unwrap_or_default();
        let new = pretty_rules(&request.rules);
        let diff: Vec<DiffLine> = similar::TextDiff::from_lines(&old, &new)
            .iter_all_changes()
            .map(|change| {
                let (sign, class) = match change.tag() {
                    similar::ChangeTag::Delete => ('-', "removed"),
                    similar::ChangeTag::Insert => ('+', "added"),
                    similar::ChangeTag::Equal => (' ', "same"),
                };
                DiffLine {
                    sign,
                    class,
                    text: change.value().trim_end_matches('\n').to_owned(),
                }
            })
            .collect();
        PolicyPreview {
            frame: Some(Frame::new(session, me, Some(org))),
            org_id: org,
            version: request.version.to_string(),
            changed: diff.iter().any(|l| l.sign != ' '),
            rules: new,
            problem: None,
            diff,
        }
    }

    /// A draft that is not a policy: why, and the form again.
    pub fn refused(
        session: &Session,
        me: &MeAnswer,
        org: i64,
        version: &str,
        rules: &str,
        problem: &str,
    ) -> PolicyPreview {
        PolicyPreview {
            frame: Some(Frame::new(session, me, Some(org))),
            org_id: org,
            version: version.to_owned(),
            rules: rules.to_owned(),
            problem: Some(problem.to_owned()),
            diff: Vec::new(),
            changed: false,
        }
    }
}

impl IntoResponse for PolicyPreview {
    fn into_response(self) -> Response {
        let status = if self.problem.is_some() {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::OK
        };
        render(&self, status)
    }
}

#[cfg(test)]
mod tests {
    use super::When;

    #[test]
    fn times_are_shown_in_utc_and_never_panic() {
        let w = When::of_unix(1_795_000_000);
        assert_eq!(w.iso, "2026-11-18T11:06:40Z");
        assert_eq!(w.text, "2026-11-18 11:06 UTC");
        assert_eq!(When::of_unix(-5).iso, "1970-01-01T00:00:00Z");
        assert_eq!(When::of_unix(i64::MAX).iso, "9999-12-31T23:59:59Z");
    }
}
