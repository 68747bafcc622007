//! Prometheus metrics of this server process, at `/metrics`: requests by
//! route template and status class, and their total duration. Route
//! templates (`/v1/orgs/{org_id}/devices`), never raw paths or queries, so
//! no id or credential reaches a metric. And files sync's bytes: piece
//! bytes accepted, blob bytes served, uploads completed, stored files
//! found broken.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

#[derive(Default)]
struct Counts {
    requests: u64,
    seconds: f64,
}

/// (method, route template, status class).
type Series = (String, String, String);

/// Files sync's counters.
#[derive(Default)]
struct FileCounts {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    uploads_completed: AtomicU64,
    blobs_broken: AtomicU64,
}

/// MQTT ingest's counters: messages stored, retries of stored batches,
/// and messages dropped by reason.
#[derive(Default)]
struct MqttCounts {
    stored: AtomicU64,
    duplicates: AtomicU64,
    dropped: Mutex<BTreeMap<&'static str, u64>>,
}

/// The counters, shared by every request of this process.
#[derive(Clone, Default)]
pub struct Metrics(
    Arc<Mutex<BTreeMap<Series, Counts>>>,
    Arc<FileCounts>,
    Arc<MqttCounts>,
);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Counts `n` bytes of file pieces accepted (durable).
    pub fn file_bytes_in(&self, n: u64) {
        self.1.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` bytes of files served.
    pub fn file_bytes_out(&self, n: u64) {
        self.1.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts an upload completed (its blob stored).
    pub fn upload_completed(&self) {
        self.1.uploads_completed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a stored file found broken (a piece missing or not opening).
    pub fn blob_broken(&self) {
        self.1.blobs_broken.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an MQTT message stored as a new batch.
    pub fn mqtt_stored(&self) {
        self.2.stored.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an MQTT message that repeated a stored batch.
    pub fn mqtt_duplicate(&self) {
        self.2.duplicates.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an MQTT message dropped for `reason` (one of a fixed set).
    pub fn mqtt_dropped(&self, reason: &'static str) {
        *self
            .2
            .dropped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(reason)
            .or_default() += 1;
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::from(
            "# HELP coffer_http_requests_total HTTP requests served, by route and status class.\n\
             # TYPE coffer_http_requests_total counter\n",
        );
        for ((method, route, status), c) in counts.iter() {
            out.push_str(&format!(
                "coffer_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {}\n",
                c.requests
            ));
        }
        out.push_str(
            "# HELP coffer_http_request_seconds_total Time spent serving them.\n\
             # TYPE coffer_http_request_seconds_total counter\n",
        );
        for ((method, route, status), c) in counts.iter() {
            out.push_str(&format!(
                "coffer_http_request_seconds_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {:.6}\n",
                c.seconds
            ));
        }
        let files = &self.1;
        for (name, help, value) in [
            (
                "coffer_file_bytes_in_total",
                "Bytes of file pieces accepted (stored durably).",
                &files.bytes_in,
            ),
            (
                "coffer_file_bytes_out_total",
                "Bytes of files served to devices and admins.",
                &files.bytes_out,
            ),
            (
                "coffer_file_uploads_completed_total",
                "Uploads whose whole file matched and was stored.",
                &files.uploads_completed,
            ),
            (
                "coffer_file_blobs_broken_total",
                "Stored files found broken (a piece missing or not opening); a new upload repairs each.",
                &files.blobs_broken,
            ),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                value.load(Ordering::Relaxed)
            ));
        }
        let mqtt = &self.2;
        for (name, help, value) in [
            (
                "coffer_mqtt_batches_stored_total",
                "MQTT messages stored as new data batches.",
                &mqtt.stored,
            ),
            (
                "coffer_mqtt_batches_duplicate_total",
                "MQTT messages that repeated a stored batch (a redelivery): stored once.",
                &mqtt.duplicates,
            ),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                value.load(Ordering::Relaxed)
            ));
        }
        out.push_str(
            "# HELP coffer_mqtt_messages_dropped_total MQTT messages dropped, by reason.\n\
             # TYPE coffer_mqtt_messages_dropped_total counter\n",
        );
        for (reason, n) in mqtt
            .dropped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            out.push_str(&format!(
                "coffer_mqtt_messages_dropped_total{{reason=\"{reason}\"}} {n}\n"
            ));
        }
        out
    }
}

/// The method's name if it is one HTTP defines, else "other": a client
/// may send any token as a method, and each new one must not become a new
/// series (or a long string in a usage row).
pub(crate) fn method_name(method: &axum::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

/// Counts every request after it is served.
pub async fn count(State(metrics): State<Metrics>, req: Request, next: Next) -> Response {
    let method = method_name(req.method()).to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(req).await;
    let status = format!("{}xx", response.status().as_u16() / 100);
    let mut counts = metrics.0.lock().unwrap_or_else(PoisonError::into_inner);
    let entry = counts.entry((method, route, status)).or_default();
    entry.requests += 1;
    entry.seconds += started.elapsed().as_secs_f64();
    response
}
