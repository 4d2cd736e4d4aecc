//! `GET /metrics` (Prometheus text, the admin's key: the numbers are host-wide) and the
//! middleware that counts every API request by its route's template (`telemetry.rs`).

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::admin::Admin;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::telemetry;

/// Counts the request under its route's template (`unmatched` for the router's 404s).
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| route_label(p.as_str()));
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    if status == 401 {
        telemetry::auth_failed();
    }
    telemetry::request(&method, &route, status, started.elapsed());
    response
}

/// A route template as a label: `/sandboxes/:id/exec` (no braces: some parsers of the text
/// format stop a label set at the first `}`, even inside a quoted value).
fn route_label(template: &str) -> String {
    template.replace("{*", "*").replace('{', ":").replace('}', "")
}

/// `GET /metrics`: the Prometheus exposition text.
pub async fn scrape(State(state): State<AppState>, Admin(_): Admin) -> ApiResult<Response> {
    let handle = telemetry::prometheus()
        .ok_or_else(|| ApiError::Internal("the metrics recorder is not installed".into()))?;
    let (counts, users, _) = crate::metrics_snapshots::gauges(&state).await?;
    for (label, n) in [("hot", counts.hot), ("warm", counts.warm), ("cold", counts.cold)] {
        metrics::gauge!(telemetry::SANDBOXES, "state" => label).set(n as f64);
    }
    metrics::gauge!("bhatti_users").set(users.len() as f64);
    // Touch the in-flight gauges so they show as 0 before the first boot.
    metrics::gauge!(telemetry::BOOTS_IN_FLIGHT).increment(0.0);
    metrics::gauge!(telemetry::RESTORES_IN_FLIGHT).increment(0.0);
    metrics::counter!(telemetry::EVENTS_DROPPED).increment(0);
    handle.run_upkeep();
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn route_labels_have_no_braces() {
        for (template, want) in [
            ("/sandboxes", "/sandboxes"),
            ("/sandboxes/{id}/exec", "/sandboxes/:id/exec"),
            ("/sandboxes/{id}/proxy/{port}/{*rest}", "/sandboxes/:id/proxy/:port/*rest"),
        ] {
            assert_eq!(super::route_label(template), want);
        }
    }
}
