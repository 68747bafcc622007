//! What devices send and what the organization uses: readings (a table, a
//! chart over time, CSV) and usage (charts per organization, user and
//! device, CSV). Every number comes from the API's own queries.

use std::collections::BTreeMap;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use coffer_protocol::admin::{Csv, MemberList, ReadingsQuery, UsageQuery, UsageReport};
use coffer_protocol::data::{to_csv, ReadingsPage, StoredReading};
use futures_util::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};

use super::chart::{BarChart, LineChart};
use super::client::{Api, ConsoleError, Signed};
use super::devices::all_devices;
use super::pages::{self, When};

/// Readings one page shows (and charts): the newest of the filter. A
/// reading is at most about 4.4 KB as JSON, so a page stays under what the
/// console reads of one API answer ([`crate::local::MAX_LOCAL_ANSWER`]).
const PAGE_READINGS: i64 = 900;

/// The ranges the pages offer, in days.
pub(super) const RANGES: [u32; 4] = [1, 7, 30, 365];

/// The filter of the readings page, as its form sends it (empty fields
/// mean "any").
#[derive(Debug, Default, Deserialize)]
pub(super) struct ReadingsFilter {
    #[serde(default)]
    device: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    days: String,
}

/// The filter, checked.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Filter {
    pub(super) device: Option<i64>,
    pub(super) name: Option<String>,
    pub(super) days: u32,
}

impl ReadingsFilter {
    fn check(&self) -> Result<Filter, ConsoleError> {
        let bad = |what: &str| {
            ConsoleError::refused(StatusCode::BAD_REQUEST, format!("the filter's {what}"))
        };
        let device = match self.device.trim() {
            "" => None,
            d => Some(d.parse::<i64>().map_err(|_| bad("device is not an id"))?),
        };
        let name = Some(self.name.trim().to_owned()).filter(|n| !n.is_empty());
        if name.as_ref().is_some_and(|n| n.len() > 128) {
            return Err(bad("name is too long"));
        }
        let days = days_of(&self.days).ok_or_else(|| bad("range is not one the page offers"))?;
        Ok(Filter { device, name, days })
    }
}

/// A range from the form: one of [`RANGES`], 7 when not given.
fn days_of(text: &str) -> Option<u32> {
    match text.trim() {
        "" => Some(7),
        d => d.parse().ok().filter(|d| RANGES.contains(d)),
    }
}

/// The exclusive end of a range that holds this second.
fn until_now() -> i64 {
    crate::store::now_unix() + 1
}

fn since(days: u32) -> i64 {
    crate::store::now_unix() - i64::from(days) * 86_400
}

/// `path?query`, the query encoded from `query`.
fn with_query(path: &str, query: &impl Serialize) -> Result<String, ConsoleError> {
    let query = serde_urlencoded::to_string(query).map_err(|_| ConsoleError::internal())?;
    Ok(format!("{path}?{query}"))
}

/// Readings an export asks for at once: fewer pages, so fewer
/// `data_queried` audit rows (one per API query), in answers of up to
/// [`MAX_EXPORT_ANSWER`].
const EXPORT_READINGS: i64 = 5_000;

/// The largest export page read: 5,000 readings of at most about 4.4 KB.
const MAX_EXPORT_ANSWER: usize = 24 * 1024 * 1024;

/// Which readings a page asks the API for.
#[derive(Clone, Copy)]
enum Page {
    /// The newest `n`, newest first.
    Newest(i64),
    /// Up to `n` from the oldest with an id above `after`.
    After(i64, i64),
}

/// A page of the filter's readings taken at or after `from`.
async fn readings_page(
    api: &Api,
    org: i64,
    filter: &Filter,
    from: i64,
    page: Page,
) -> Result<ReadingsPage, ConsoleError> {
    let (after, limit, newest) = match page {
        Page::Newest(n) => (0, n, Some(true)),
        Page::After(after, n) => (after, n, None),
    };
    let query = ReadingsQuery {
        device: filter.device,
        from: Some(from),
        to: None,
        name: filter.name.clone(),
        after,
        limit: Some(limit),
        newest,
        format: None,
    };
    let path = with_query(&format!("/v1/orgs/{org}/data"), &query)?;
    if limit > PAGE_READINGS {
        api.get_large(&path, MAX_EXPORT_ANSWER).await
    } else {
        api.get(&path).await
    }
}

/// Numeric readings as series by name, for the chart.
fn series(readings: &[StoredReading]) -> Vec<(String, Vec<(i64, f64)>)> {
    let mut by_name: BTreeMap<&str, Vec<(i64, f64)>> = BTreeMap::new();
    for r in readings {
        if let Some(v) = r.value.as_f64() {
            by_name.entry(&r.name).or_default().push((r.at, v));
        }
    }
    by_name
        .into_iter()
        .map(|(name, mut points)| {
            points.sort_by_key(|p| p.0);
            (name.to_owned(), points)
        })
        .collect()
}

pub(super) async fn readings(
    signed: Signed,
    Path(org): Path<i64>,
    Query(form): Query<ReadingsFilter>,
) -> Result<Response, ConsoleError> {
    let filter = form.check()?;
    let devices = all_devices(&signed.api, org).await?;
    // One more than shown: whether there are older ones.
    let mut page = readings_page(
        &signed.api,
        org,
        &filter,
        since(filter.days),
        Page::Newest(PAGE_READINGS + 1),
    )
    .await?;
    let shown = usize::try_from(PAGE_READINGS).unwrap_or(usize::MAX);
    let more = page.readings.len() > shown;
    page.readings.truncate(shown);
    let chart = LineChart::new(series(&page.readings), |t| When::of_unix(t).text);
    Ok(pages::Readings::new(&signed, org, &filter, devices, page, more, chart).into_response())
}

/// A CSV file the browser saves.
fn csv_download(name: &str, body: Body) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response()
}

/// Every reading of the filter as CSV, streamed a page of the API's at a
/// time (memory stays one page, however many match). The export is of the
/// readings stored when it starts: its range and the newest id are fixed
/// then, so devices sending more cannot keep it going. The first page is
/// read before the answer starts, so a refusal is still a page with its
/// status; a failure later cuts the download short (the browser shows it
/// as failed, not as a shorter file that looks whole).
pub(super) async fn readings_csv(
    signed: Signed,
    Path(org): Path<i64>,
    Query(form): Query<ReadingsFilter>,
) -> Result<Response, ConsoleError> {
    let filter = form.check()?;
    let from = since(filter.days);
    let newest = readings_page(&signed.api, org, &filter, from, Page::Newest(1)).await?;
    let last_id = newest.readings.first().map_or(0, |r| r.id);
    let first = readings_page(
        &signed.api,
        org,
        &filter,
        from,
        Page::After(0, EXPORT_READINGS),
    )
    .await?;
    let header = stream::once(async { Ok::<_, std::io::Error>(Bytes::from(to_csv(&[]))) });
    let api = signed.api;
    let pages = stream::unfold(Some(first), move |page| {
        let api = api.clone();
        let filter = filter.clone();
        async move {
            let mut page = page?;
            let past_end = page.readings.iter().any(|r| r.id > last_id);
            page.readings.retain(|r| r.id <= last_id);
            let rows = to_csv(&page.readings);
            // Without the header row `to_csv` writes first.
            let body = rows
                .split_once('\n')
                .map_or("", |(_, rest)| rest)
                .to_owned();
            let next = match page.next_after {
                Some(after) if !past_end && after < last_id => {
                    match readings_page(
                        &api,
                        org,
                        &filter,
                        from,
                        Page::After(after, EXPORT_READINGS),
                    )
                    .await
                    {
                        Ok(next) => Some(next),
                        Err(_) => {
                            return Some((
                                Err(std::io::Error::other("a page of the export failed")),
                                None,
                            ))
                        }
                    }
                }
                _ => None,
            };
            Some((Ok(Bytes::from(body)), next))
        }
    });
    Ok(csv_download(
        &format!("readings-org{org}.csv"),
        Body::from_stream(header.chain(pages)),
    ))
}

/// The usage page's filter.
#[derive(Debug, Default, Deserialize)]
pub(super) struct UsageFilter {
    #[serde(default)]
    by: String,
    #[serde(default)]
    days: String,
}

impl UsageFilter {
    fn check(&self) -> Result<(&'static str, u32), ConsoleError> {
        let by = match self.by.trim() {
            "" | "org" => "org",
            "user" => "user",
            "device" => "device",
            _ => {
                return Err(ConsoleError::refused(
                    StatusCode::BAD_REQUEST,
                    "usage is by org, user or device",
                ))
            }
        };
        let days = days_of(&self.days).ok_or_else(|| {
            ConsoleError::refused(
                StatusCode::BAD_REQUEST,
                "the range is not one the page offers",
            )
        })?;
        Ok((by, days))
    }
}

/// The usage of `[from, to)`, by `by`.
async fn usage_of(
    api: &Api,
    org: i64,
    by: &str,
    from: i64,
    to: i64,
) -> Result<UsageReport, ConsoleError> {
    let query = UsageQuery {
        from: Some(from),
        to: Some(to),
        by: Some(by.to_owned()),
        format: None,
    };
    api.get(&with_query(&format!("/v1/orgs/{org}/usage"), &query)?)
        .await
}

pub(super) async fn usage(
    signed: Signed,
    Path(org): Path<i64>,
    Query(form): Query<UsageFilter>,
) -> Result<Response, ConsoleError> {
    let (by, days) = form.check()?;
    let to = until_now();
    let from = since(days);
    let report = usage_of(&signed.api, org, by, from, to).await?;
    // Requests over time, in one grouped query: hours for a day, days up
    // to a month, weeks past; a bucket with no request drawn empty.
    let (bucket_by, width): (&str, i64) = match days {
        1 => ("hour", 3_600),
        d if d <= 31 => ("day", 86_400),
        _ => ("week", 604_800),
    };
    let buckets = usage_of(&signed.api, org, bucket_by, from, to).await?;
    let counted: BTreeMap<i64, i64> = buckets
        .rows
        .iter()
        .filter_map(|r| r.id.map(|start| (start, r.requests)))
        .collect();
    let mut over_time = Vec::new();
    let mut start = from - from.rem_euclid(width);
    while start < to {
        let requests = counted.get(&start).copied().unwrap_or(0);
        over_time.push((
            When::of_unix(start.max(from)).text,
            u64::try_from(requests).unwrap_or(0),
        ));
        start += width;
    }
    // Names for ids, from the API's lists.
    let names: BTreeMap<i64, String> = match by {
        "user" => {
            let members: MemberList = signed.api.get(&format!("/v1/orgs/{org}/users")).await?;
            members
                .members
                .into_iter()
                .map(|m| (m.id, m.name))
                .collect()
        }
        "device" => all_devices(&signed.api, org)
            .await?
            .into_iter()
            .map(|d| (d.id, d.name))
            .collect(),
        _ => BTreeMap::new(),
    };
    let per_key: Vec<(String, u64)> = report
        .rows
        .iter()
        .map(|r| {
            let name = r
                .id
                .and_then(|id| names.get(&id).cloned())
                .unwrap_or_else(|| r.id.map_or_else(|| "all".to_owned(), |id| format!("#{id}")));
            (name, u64::try_from(r.requests).unwrap_or(0))
        })
        .collect();
    Ok(pages::Usage::new(
        &signed,
        org,
        by,
        days,
        &report,
        &names,
        BarChart::new(&over_time),
        BarChart::new(&per_key),
    )
    .into_response())
}

pub(super) async fn usage_csv(
    signed: Signed,
    Path(org): Path<i64>,
    Query(form): Query<UsageFilter>,
) -> Result<Response, ConsoleError> {
    let (by, days) = form.check()?;
    let query = UsageQuery {
        from: Some(since(days)),
        to: Some(until_now()),
        by: Some(by.to_owned()),
        format: Some("csv".to_owned()),
    };
    let Csv(text) = signed
        .api
        .get(&with_query(&format!("/v1/orgs/{org}/usage"), &query)?)
        .await?;
    Ok(csv_download(
        &format!("usage-org{org}-by-{by}.csv"),
        Body::from(text),
    ))
}
