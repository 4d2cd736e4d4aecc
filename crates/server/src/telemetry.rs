//! The daemon's numbers: Prometheus metrics through the `metrics` crate (rendered by
//! `metrics-exporter-prometheus` at `GET /metrics`) and the plain counters v1's minute
//! snapshots take deltas of (`metrics_snapshots.rs`).
//!
//! Labels are bounded: a request is labelled by its route's template (`/sandboxes/:id/exec`,
//! about 30 of them, `unmatched` for the rest), its method and its status class (`2xx`...),
//! never by a raw path, a name or an ID; wakes by the thermal state they left. Nothing secret
//! is a label.
//!
//! Another module counts a refusal with one call: [`rate_limited`]`("exec")`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// `bhatti_http_requests_total{method, route, status}`: answered API requests.
pub const HTTP_REQUESTS: &str = "bhatti_http_requests_total";
/// `bhatti_http_request_duration_seconds{method, route}`: time to the answer's head.
pub const HTTP_DURATION: &str = "bhatti_http_request_duration_seconds";
/// `bhatti_auth_failures_total`: requests refused 401.
pub const AUTH_FAILURES: &str = "bhatti_auth_failures_total";
/// `bhatti_rate_limited_total{class}`: requests refused by a rate limit (`create`, `exec`,
/// `read`, `proxy`).
pub const RATE_LIMITED: &str = "bhatti_rate_limited_total";
/// `bhatti_wakes_total{from}`: wakes to hot, by the state left (`warm`, `cold`).
pub const WAKES: &str = "bhatti_wakes_total";
/// `bhatti_wake_duration_seconds{from}`: how long those wakes took.
pub const WAKE_DURATION: &str = "bhatti_wake_duration_seconds";
/// `bhatti_sandboxes{state}`: sandboxes by thermal state (`hot`, `warm`, `cold`, `failed`;
/// rows not running count as `cold`, v1's rule), set at each scrape.
pub const SANDBOXES: &str = "bhatti_sandboxes";
/// `bhatti_boots_in_flight`: creates booting a VM now.
pub const BOOTS_IN_FLIGHT: &str = "bhatti_boots_in_flight";
/// `bhatti_restores_in_flight`: starts restoring a VM now.
pub const RESTORES_IN_FLIGHT: &str = "bhatti_restores_in_flight";
/// `bhatti_events_dropped_total`: events the recorder dropped (queue full).
pub const EVENTS_DROPPED: &str = "bhatti_events_dropped_total";
/// `bhatti_events_subscribers_dropped_total`: event subscribers disconnected for being slow.
pub const SUBSCRIBERS_DROPPED: &str = "bhatti_events_subscribers_dropped_total";

/// Latency buckets (seconds) for the histograms: 1 ms to 60 s.
const BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// The process's Prometheus recorder (the `metrics` crate's recorder is process-wide; every
/// daemon in a test process shares it), installed on first use.
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let built = PrometheusBuilder::new().set_buckets(BUCKETS).map(|b| b.build_recorder());
            match built {
                Ok(recorder) => {
                    let handle = recorder.handle();
                    match metrics::set_global_recorder(recorder) {
                        Ok(()) => Some(handle),
                        Err(e) => {
                            tracing::warn!("metrics: another recorder is installed: {e}");
                            None
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!("metrics: {e}");
                    None
                }
            }
        })
        .as_ref()
}

/// Counts a request refused by a rate limit of `class` (`create`, `exec`, `read`, `proxy`).
pub fn rate_limited(class: &'static str) {
    metrics::counter!(RATE_LIMITED, "class" => class).increment(1);
    // The public proxy's own counters feed the snapshots' proxy columns.
    if class != "proxy" {
        COUNTERS.api_rate_limited.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts a refused authentication.
pub fn auth_failed() {
    metrics::counter!(AUTH_FAILURES).increment(1);
    COUNTERS.api_auth_failures.fetch_add(1, Ordering::Relaxed);
}

/// Counts a wake to hot from `from`, which took `took`.
pub fn woke(from: &'static str, took: Duration) {
    metrics::counter!(WAKES, "from" => from).increment(1);
    metrics::histogram!(WAKE_DURATION, "from" => from).record(took.as_secs_f64());
}

/// Counts an answered API request. `route` is the route's template (bounded), never the
/// raw path.
pub fn request(method: &str, route: &str, status: u16, took: Duration) {
    let class = match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    let (method, route) = (method.to_owned(), route.to_owned());
    metrics::counter!(HTTP_REQUESTS, "method" => method.clone(), "route" => route.clone(), "status" => class)
        .increment(1);
    metrics::histogram!(HTTP_DURATION, "method" => method, "route" => route)
        .record(took.as_secs_f64());
    COUNTERS.api_requests.fetch_add(1, Ordering::Relaxed);
    if status >= 500 {
        COUNTERS.api_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// Something in flight (a boot, a restore), shown by a gauge while the guard lives.
#[derive(Debug)]
pub struct InFlight(&'static str);

impl InFlight {
    /// A boot in flight until dropped.
    pub fn boot() -> Self {
        Self::start(BOOTS_IN_FLIGHT)
    }

    /// A restore in flight until dropped.
    pub fn restore() -> Self {
        Self::start(RESTORES_IN_FLIGHT)
    }

    fn start(name: &'static str) -> Self {
        metrics::gauge!(name).increment(1.0);
        Self(name)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(self.0).decrement(1.0);
    }
}

/// Running totals for v1's minute snapshots (which store the deltas).
#[derive(Debug, Default)]
pub struct Counters {
    /// API requests answered.
    pub api_requests: AtomicU64,
    /// API 5xx answers.
    pub api_errors: AtomicU64,
    /// Refused authentications.
    pub api_auth_failures: AtomicU64,
    /// API requests refused by a rate limit.
    pub api_rate_limited: AtomicU64,
}

/// The process's totals (like the Prometheus recorder, shared by every daemon of a process).
pub static COUNTERS: Counters = Counters {
    api_requests: AtomicU64::new(0),
    api_errors: AtomicU64::new(0),
    api_auth_failures: AtomicU64::new(0),
    api_rate_limited: AtomicU64::new(0),
};

/// A counter's current total.
pub fn total(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}
