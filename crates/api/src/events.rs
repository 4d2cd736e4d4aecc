//! Events, the admin's status and metrics snapshots (ours: v1 kept these behind local CLI
//! commands on its SQLite file, host.md 1.24; the shapes follow its `admin ... --json`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One event (`GET /events`, `GET /admin/events`; a line of `?follow=true`'s NDJSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    /// Sequence number (absent on a followed event, which is not yet written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    /// RFC 3339.
    pub ts: String,
    /// Type, e.g. `sandbox.created`.
    #[serde(rename = "type")]
    pub kind: String,
    /// User (empty if none).
    #[serde(default)]
    pub user_id: String,
    /// Sandbox (empty if none).
    #[serde(default)]
    pub sandbox_id: String,
    /// Details.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub meta: serde_json::Value,
}

/// Sandboxes by thermal state (not running counts as cold, v1's rule).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ThermalCounts {
    /// All live sandboxes.
    pub total: u64,
    /// Running, hot.
    pub hot: u64,
    /// Running, paused.
    pub warm: u64,
    /// On disk, or not running.
    pub cold: u64,
}

/// The host's load.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostLoad {
    /// 1-minute load average (`/proc/loadavg`).
    pub load_1m: f64,
    /// `MemTotal`, MiB.
    pub mem_total_mb: u64,
    /// `MemAvailable`, MiB.
    pub mem_available_mb: u64,
}

/// One user's line in the status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserSandboxes {
    /// User ID.
    pub id: String,
    /// Name.
    pub name: String,
    /// Live sandboxes.
    pub sandboxes: u64,
}

/// `GET /admin/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AdminStatus {
    /// The daemon's version.
    pub version: String,
    /// Go-style duration (`2h15m30s`).
    pub uptime: String,
    /// Sandboxes by thermal state.
    pub sandboxes: ThermalCounts,
    /// Users and their sandboxes.
    pub users: Vec<UserSandboxes>,
    /// Events the recorder dropped since the start (its queue was full).
    pub events_dropped: u64,
    /// The host.
    pub host: HostLoad,
    /// Counter totals over the kept snapshots (`api_requests`, `api_errors`, ...).
    pub totals: BTreeMap<String, u64>,
    /// The last 10 events.
    pub recent_events: Vec<Event>,
}

/// One minute's snapshot (`GET /admin/metrics`): counters are deltas over the minute, the
/// rest gauges.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MetricsSnapshot {
    /// RFC 3339.
    pub ts: String,
    /// API requests.
    pub api_requests: u64,
    /// API 5xx answers.
    pub api_errors: u64,
    /// Refused authentications.
    pub api_auth_failures: u64,
    /// Rate-limited API requests.
    pub api_rate_limited: u64,
    /// Public proxy requests.
    pub proxy_requests: u64,
    /// Public proxy errors (no wake slot).
    pub proxy_errors: u64,
    /// Wakes the public proxy caused.
    pub proxy_cold_wakes: u64,
    /// Rate-limited proxy requests.
    pub proxy_rate_limited: u64,
    /// Events dropped.
    pub events_dropped: u64,
    /// Sandboxes.
    pub sandboxes_total: u64,
    /// Hot.
    pub sandboxes_hot: u64,
    /// Warm.
    pub sandboxes_warm: u64,
    /// Cold or not running.
    pub sandboxes_cold: u64,
    /// Users.
    pub users_total: u64,
    /// Users owning a sandbox.
    pub users_active: u64,
    /// Open public WebSockets.
    pub websockets_active: u64,
    /// Host memory, MiB.
    pub host_mem_total_mb: u64,
    /// Available host memory, MiB.
    pub host_mem_avail_mb: u64,
    /// Host 1-minute load.
    pub host_load_1m: f64,
}
