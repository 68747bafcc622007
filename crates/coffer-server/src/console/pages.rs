//! The console's pages: one template (`templates/console/`) and one struct
//! per page. askama escapes every value written into HTML, so a device
//! named `<img src=x onerror=…>` is shown as that text.

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use std::collections::BTreeMap;

use coffer_protocol::admin::{
    AuditEvents, AuditReport, DeviceList, DeviceSummary, EnrollmentCode, MeAnswer, MemberList,
    Membership, OrganizationList, UsageReport, WipeOrders, WipeState,
};
use coffer_protocol::data::ReadingsPage;
use coffer_protocol::device::WipeScope;
use coffer_protocol::policy::{Document, Rules};
use coffer_protocol::sync::{RecordDetail, RecordList};
use secrecy::ExposeSecret;

use super::chart::{BarChart, LineChart};
use super::client::Signed;
use super::data::{Filter, RANGES};
use super::policy::pretty_rules;
use super::records::console_link;
use super::sessions::Session;

/// What every signed-in page's header needs.
pub struct Frame {
    /// Who is signed in.
    pub user: String,
    /// The sign-out form's CSRF token.
    pub csrf: String,
    /// The organization the page is about: id, name, the user's role.
    pub org: Option<(i64, String, String)>,
    /// Whether the user is one of the server's operators.
    pub operator: bool,
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

    fn of(signed: &Signed, org: Option<i64>) -> Frame {
        Frame::new(&signed.api.session, &signed.me, org)
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
            operator: me.operator,
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
    /// `secs` Unix seconds.
    pub fn of_unix(secs: i64) -> When {
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
    PasswordPage,
    Tenants,
    Devices,
    Audit,
    DevicePage,
    EnrollmentCodePage,
    PolicyPage,
    Users,
    Readings,
    Usage,
    Records,
    RecordPage,
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
    /// The page for the signed-in user.
    pub fn new(signed: &Signed) -> Organizations {
        Organizations {
            frame: Some(Frame::of(signed, None)),
            operator: signed.me.operator,
            organizations: signed.me.organizations.clone(),
        }
    }
}

/// One organization on the operators' page.
pub struct TenantRow {
    id: i64,
    name: String,
    created_at: When,
    suspended: bool,
    members: i64,
    devices: i64,
}

/// Every organization of the server, for its operators.
#[derive(Template)]
#[template(path = "console/tenants.html")]
pub struct Tenants {
    frame: Option<Frame>,
    csrf: String,
    organizations: Vec<TenantRow>,
}

impl Tenants {
    /// The operators' page.
    pub fn new(signed: &Signed, list: OrganizationList) -> Tenants {
        let frame = Frame::of(signed, None);
        Tenants {
            csrf: frame.csrf.clone(),
            frame: Some(frame),
            organizations: list
                .organizations
                .into_iter()
                .map(|o| TenantRow {
                    id: o.id,
                    name: o.name,
                    created_at: When::of_unix(o.created_at),
                    suspended: o.suspended,
                    members: o.members,
                    devices: o.devices,
                })
                .collect(),
        }
    }
}

/// The signed-in user's password form.
#[derive(Template)]
#[template(path = "console/password.html")]
pub struct PasswordPage {
    frame: Option<Frame>,
    csrf: String,
    changed: bool,
}

impl PasswordPage {
    /// The form.
    pub fn new(signed: &Signed) -> PasswordPage {
        let frame = Frame::of(signed, None);
        PasswordPage {
            csrf: frame.csrf.clone(),
            frame: Some(frame),
            changed: false,
        }
    }

    /// The form again, saying the password was changed.
    pub fn changed(session: &Session, me: &MeAnswer) -> PasswordPage {
        let frame = Frame::new(session, me, None);
        PasswordPage {
            csrf: frame.csrf.clone(),
            frame: Some(frame),
            changed: true,
        }
    }
}

/// Where a device stands against the policy's check-in and grace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Checked in within two check-in intervals.
    OnTime,
    /// Missed two check-ins or more.
    Overdue,
    /// Offline longer than the policy's grace: it refuses to unlock until
    /// it checks in.
    PastGrace,
    /// Never checked in.
    Never,
    /// Revoked: it will not check in again.
    Revoked,
}

impl Standing {
    /// Where `device` stands at `now` under `rules`.
    pub fn of(device: &DeviceSummary, rules: &Rules, now: i64) -> Standing {
        if device.revoked {
            return Standing::Revoked;
        }
        let Some(seen) = device.last_seen_at else {
            return Standing::Never;
        };
        let away = now.saturating_sub(seen);
        let grace = i64::from(rules.offline.block_after_hours) * 3600;
        if grace > 0 && away > grace {
            Standing::PastGrace
        } else if away > 2 * i64::from(rules.check_in_secs.max(1)) {
            Standing::Overdue
        } else {
            Standing::OnTime
        }
    }

    fn text(self) -> &'static str {
        match self {
            Standing::OnTime => "on time",
            Standing::Overdue => "overdue",
            Standing::PastGrace => "past grace",
            Standing::Never => "never checked in",
            Standing::Revoked => "revoked",
        }
    }

    fn alarm(self) -> bool {
        matches!(self, Standing::Overdue | Standing::PastGrace)
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
    standing: &'static str,
    alarm: bool,
}

impl DeviceRow {
    fn new(d: DeviceSummary, rules: &Rules, now: i64) -> DeviceRow {
        let standing = Standing::of(&d, rules, now);
        DeviceRow {
            id: d.id,
            name: d.name,
            revoked: d.revoked,
            last_seen: d.last_seen_at.map(When::of_unix),
            address: d.last_seen_address.unwrap_or_default(),
            escrow: d.escrow,
            pending_wipes: d.pending_wipes,
            standing: standing.text(),
            alarm: standing.alarm(),
        }
    }
}

/// The rules devices are held to: the current policy's, or the defaults.
fn rules_of(policy: Option<&Document>) -> Rules {
    policy.map(|d| d.rules.clone()).unwrap_or_default()
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
    overdue: usize,
    check_in_secs: u32,
    grace_hours: u32,
    /// Where the next page starts.
    next_after: Option<i64>,
}

impl Devices {
    /// The page of `org`'s devices, each against `policy`'s rules.
    pub fn new(signed: &Signed, org: i64, list: DeviceList, policy: Option<&Document>) -> Devices {
        let frame = Frame::of(signed, Some(org));
        let manages = frame.manages();
        let rules = rules_of(policy);
        let now = crate::store::now_unix();
        let next_after = list.next_after;
        let devices: Vec<DeviceRow> = list
            .devices
            .into_iter()
            .map(|d| DeviceRow::new(d, &rules, now))
            .collect();
        Devices {
            frame: Some(frame),
            org_id: org,
            manages,
            next_after,
            overdue: devices.iter().filter(|d| d.alarm).count(),
            devices,
            check_in_secs: rules.check_in_secs,
            grace_hours: rules.offline.block_after_hours,
        }
    }
}

/// One row of the audit table.
pub struct AuditLine {
    id: i64,
    at: When,
    actor: String,
    action: String,
    details: String,
}

/// The audit trail: its check, with an alarm when broken, and a search.
#[derive(Template)]
#[template(path = "console/audit.html")]
pub struct Audit {
    frame: Option<Frame>,
    org_id: i64,
    /// The chain's check (on the first page of a search only).
    report: Option<AuditReport>,
    action: String,
    actor: String,
    q: String,
    events: Vec<AuditLine>,
    /// The older page's query.
    older: Option<String>,
}

impl Audit {
    /// The page of `org`'s audit check and the rows of a search.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        signed: &Signed,
        org: i64,
        report: Option<AuditReport>,
        action: &str,
        actor: &str,
        q: &str,
        events: AuditEvents,
        older: Option<String>,
    ) -> Audit {
        Audit {
            frame: Some(Frame::of(signed, Some(org))),
            org_id: org,
            report,
            action: action.to_owned(),
            actor: actor.to_owned(),
            q: q.to_owned(),
            events: events
                .events
                .into_iter()
                .map(|e| AuditLine {
                    id: e.id,
                    at: When::of_unix(e.at),
                    actor: e.actor,
                    action: e.action,
                    details: e.details.to_string(),
                })
                .collect(),
            older,
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
        signed: &Signed,
        org: i64,
        device: DeviceSummary,
        wipes: WipeOrders,
        policy: Option<&Document>,
    ) -> DevicePage {
        let frame = Frame::of(signed, Some(org));
        let manages = frame.manages();
        DevicePage {
            frame: Some(frame),
            org_id: org,
            manages,
            device: DeviceRow::new(device, &rules_of(policy), crate::store::now_unix()),
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

/// One line of a policy diff.
pub struct DiffLine {
    /// `+`, `-` or ` `.
    sign: char,
    /// The CSS class of the line.
    class: &'static str,
    text: String,
}

/// The lines of `old` to `new`; past `deadline` the diff gives up on
/// precision (never on correctness).
pub fn diff_lines(old: &str, new: &str, deadline: std::time::Instant) -> Vec<DiffLine> {
    similar::TextDiff::configure()
        .deadline(deadline)
        .diff_lines(old, new)
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
        .collect()
}

/// One published version in the policy's history.
pub struct HistoryRow {
    version: i64,
    published_at: When,
    published_by: String,
    /// What it changed against the version before (only changed lines).
    changes: Vec<DiffLine>,
}

/// The current policy, its history, and the form to change it.
#[derive(Template)]
#[template(path = "console/policy.html")]
pub struct PolicyPage {
    frame: Option<Frame>,
    org_id: i64,
    current: Option<(i64, When, String)>,
    history: Vec<HistoryRow>,
    next_version: i64,
    draft: String,
    manages: bool,
}

impl PolicyPage {
    /// The page of `org`'s policy: `documents` newest first, with when and
    /// by whom each was published, and each one's diff to the one before.
    pub fn new(
        signed: &Signed,
        org: i64,
        documents: Vec<(Document, i64, String)>,
        changes: Vec<Vec<DiffLine>>,
    ) -> PolicyPage {
        let frame = Frame::of(signed, Some(org));
        let manages = frame.manages();
        let current = documents.first().map(|(d, _, _)| d.clone());
        PolicyPage {
            frame: Some(frame),
            org_id: org,
            next_version: current.as_ref().map_or(1, |d| d.version.saturating_add(1)),
            draft: pretty_rules(&rules_of(current.as_ref())),
            current: current.map(|d| {
                (
                    d.version,
                    When::of_unix(d.issued_at),
                    pretty_rules(&d.rules),
                )
            }),
            history: documents
                .into_iter()
                .zip(changes)
                .map(|((d, at, by), diff)| HistoryRow {
                    version: d.version,
                    published_at: When::of_unix(at),
                    published_by: by,
                    changes: diff.into_iter().filter(|l| l.sign != ' ').collect(),
                })
                .collect(),
            manages,
        }
    }
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
        version: i64,
        rules: String,
        diff: Vec<DiffLine>,
    ) -> PolicyPreview {
        PolicyPreview {
            frame: Some(Frame::new(session, me, Some(org))),
            org_id: org,
            version: version.to_string(),
            changed: diff.iter().any(|l| l.sign != ' '),
            rules,
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

/// One row of the users table.
pub struct UserRow {
    id: i64,
    name: String,
    role: String,
    disabled: bool,
    created_at: When,
    /// Whether this is the signed-in user (no disable or remove of oneself).
    me: bool,
}

/// An organization's users.
#[derive(Template)]
#[template(path = "console/users.html")]
pub struct Users {
    frame: Option<Frame>,
    org_id: i64,
    users: Vec<UserRow>,
    manages: bool,
    roles: [&'static str; 4],
    csrf: String,
}

impl Users {
    /// The page of `org`'s members.
    pub fn new(signed: &Signed, org: i64, members: MemberList) -> Users {
        let frame = Frame::of(signed, Some(org));
        let manages = frame.manages();
        Users {
            csrf: frame.csrf.clone(),
            frame: Some(frame),
            org_id: org,
            manages,
            roles: ["owner", "admin", "member", "auditor"],
            users: members
                .members
                .into_iter()
                .map(|m| UserRow {
                    me: m.id == signed.me.user_id,
                    id: m.id,
                    name: m.name,
                    role: m.role,
                    disabled: m.disabled,
                    created_at: When::of_unix(m.created_at),
                })
                .collect(),
        }
    }
}

/// One reading in the table.
pub struct ReadingRow {
    device: String,
    at: When,
    name: String,
    value: String,
}

/// Readings: the filter, a chart and a table.
#[derive(Template)]
#[template(path = "console/readings.html")]
pub struct Readings {
    frame: Option<Frame>,
    org_id: i64,
    devices: Vec<(i64, String)>,
    device: Option<i64>,
    name: String,
    days: u32,
    ranges: [u32; 4],
    chart: LineChart,
    rows: Vec<ReadingRow>,
    /// More readings match than the page holds (it holds the newest).
    more: bool,
    /// The CSV link's query.
    csv_query: String,
}

/// Readings the table shows (the chart takes the whole page).
const TABLE_READINGS: usize = 500;

impl Readings {
    /// The readings page.
    pub fn new(
        signed: &Signed,
        org: i64,
        filter: &Filter,
        devices: Vec<DeviceSummary>,
        page: ReadingsPage,
        more: bool,
        chart: LineChart,
    ) -> Readings {
        let names: BTreeMap<i64, String> = devices.iter().map(|d| (d.id, d.name.clone())).collect();
        let device_name = |id: i64| names.get(&id).cloned().unwrap_or_else(|| format!("#{id}"));
        Readings {
            frame: Some(Frame::of(signed, Some(org))),
            org_id: org,
            devices: names.iter().map(|(id, n)| (*id, n.clone())).collect(),
            device: filter.device,
            name: filter.name.clone().unwrap_or_default(),
            days: filter.days,
            ranges: RANGES,
            chart,
            more,
            rows: page
                .readings
                .iter()
                .take(TABLE_READINGS)
                .map(|r| ReadingRow {
                    device: device_name(r.device_id),
                    at: When::of_unix(r.at),
                    name: r.name.clone(),
                    value: r.value.to_string(),
                })
                .collect(),
            csv_query: serde_urlencoded::to_string([
                (
                    "device",
                    filter.device.map(|d| d.to_string()).unwrap_or_default(),
                ),
                ("name", filter.name.clone().unwrap_or_default()),
                ("days", filter.days.to_string()),
            ])
            .unwrap_or_default(),
        }
    }
}

/// One row of the usage table.
pub struct UsageLine {
    name: String,
    requests: i64,
    bytes_in: i64,
    bytes_out: i64,
    millis: i64,
}

/// Usage: requests over time, and per organization, user or device.
#[derive(Template)]
#[template(path = "console/usage.html")]
pub struct Usage {
    frame: Option<Frame>,
    org_id: i64,
    by: &'static str,
    days: u32,
    ranges: [u32; 4],
    over_time: BarChart,
    per_key: BarChart,
    rows: Vec<UsageLine>,
}

impl Usage {
    /// The usage page.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        signed: &Signed,
        org: i64,
        by: &'static str,
        days: u32,
        report: &UsageReport,
        names: &BTreeMap<i64, String>,
        over_time: BarChart,
        per_key: BarChart,
    ) -> Usage {
        Usage {
            frame: Some(Frame::of(signed, Some(org))),
            org_id: org,
            by,
            days,
            ranges: RANGES,
            over_time,
            per_key,
            rows: report
                .rows
                .iter()
                .map(|r| UsageLine {
                    name: match r.id {
                        Some(id) => names.get(&id).cloned().unwrap_or_else(|| format!("#{id}")),
                        None => "(none)".to_owned(),
                    },
                    requests: r.requests,
                    bytes_in: r.bytes_in,
                    bytes_out: r.bytes_out,
                    millis: r.micros / 1000,
                })
                .collect(),
        }
    }
}

/// One row of the records list.
pub struct RecordRow {
    href: String,
    app: String,
    collection: String,
    id: String,
    author: String,
    deleted: bool,
    provisional: bool,
    conflicts: u32,
    updated_at: When,
}

/// Synced records.
#[derive(Template)]
#[template(path = "console/records.html")]
pub struct Records {
    frame: Option<Frame>,
    org_id: i64,
    app: String,
    collection: String,
    conflicts_only: bool,
    rows: Vec<RecordRow>,
    /// The next page's query.
    next: Option<String>,
}

impl Records {
    /// The records page.
    pub fn new(
        signed: &Signed,
        org: i64,
        app: String,
        collection: String,
        conflicts_only: bool,
        list: RecordList,
        next: Option<String>,
    ) -> Records {
        Records {
            frame: Some(Frame::of(signed, Some(org))),
            org_id: org,
            app,
            collection,
            conflicts_only,
            next,
            rows: list
                .records
                .into_iter()
                .map(|r| RecordRow {
                    href: console_link(org, &r.app, &r.collection, &r.id, false),
                    app: r.app,
                    collection: r.collection,
                    id: r.id,
                    author: r.author,
                    deleted: r.deleted,
                    provisional: r.provisional,
                    conflicts: r.conflicts,
                    updated_at: When::of_unix(r.updated_at),
                })
                .collect(),
        }
    }
}

/// One version of a record: the head or a conflict leaf.
pub struct VersionView {
    revision: String,
    author: String,
    deleted: bool,
    body: String,
    files: Vec<(String, u64)>,
}

/// One record: its head, its conflict leaves, and the resolve forms.
#[derive(Template)]
#[template(path = "console/record.html")]
pub struct RecordPage {
    frame: Option<Frame>,
    org_id: i64,
    action: String,
    app: String,
    collection: String,
    id: String,
    updated_at: When,
    head: VersionView,
    leaves: Vec<VersionView>,
    /// The leaves shown, for the resolve forms.
    leaf_names: String,
    duplicates: Vec<String>,
    manages: bool,
    csrf: String,
}

fn pretty_json(value: Option<&serde_json::Value>) -> String {
    value
        .and_then(|v| serde_json::to_string_pretty(v).ok())
        .unwrap_or_default()
}

impl RecordPage {
    /// The page of one record.
    pub fn new(signed: &Signed, org: i64, detail: RecordDetail) -> RecordPage {
        let frame = Frame::of(signed, Some(org));
        let manages = frame.manages();
        let s = &detail.summary;
        let files = |f: &[coffer_protocol::sync::FileRef]| {
            f.iter().map(|f| (f.name.clone(), f.size)).collect()
        };
        RecordPage {
            csrf: frame.csrf.clone(),
            frame: Some(frame),
            org_id: org,
            action: console_link(org, &s.app, &s.collection, &s.id, true),
            app: s.app.clone(),
            collection: s.collection.clone(),
            id: s.id.clone(),
            updated_at: When::of_unix(s.updated_at),
            head: VersionView {
                revision: s.revision.to_string(),
                author: s.author.clone(),
                deleted: s.deleted,
                body: pretty_json(detail.body.as_ref()),
                files: files(&detail.files),
            },
            leaf_names: detail
                .leaves
                .iter()
                .map(|l| l.revision.to_string())
                .collect::<Vec<_>>()
                .join(" "),
            leaves: detail
                .leaves
                .iter()
                .map(|l| VersionView {
                    revision: l.revision.to_string(),
                    author: l.author.clone(),
                    deleted: l.deleted,
                    body: pretty_json(l.body.as_ref()),
                    files: files(&l.files),
                })
                .collect(),
            duplicates: detail
                .duplicates
                .iter()
                .map(|d| format!("{}/{}", d.collection, d.id))
                .collect(),
            manages,
        }
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
