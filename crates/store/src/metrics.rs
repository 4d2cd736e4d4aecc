//! Metrics snapshots: one row per minute, counter deltas and gauges, kept for 30 days.

use rusqlite::Row;

use crate::db::Store;
use crate::error::Result;
use crate::types::{Timestamp, f64_col};

/// One snapshot. Counters are deltas since the previous snapshot; the rest are gauges.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MetricsSnapshot {
    /// When.
    pub ts: Timestamp,
    /// API requests.
    pub api_requests: u64,
    /// API 5xx answers.
    pub api_errors: u64,
    /// Failed authentications.
    pub api_auth_failures: u64,
    /// Rate-limited API requests.
    pub api_rate_limited: u64,
    /// Public proxy requests.
    pub proxy_requests: u64,
    /// Public proxy errors.
    pub proxy_errors: u64,
    /// Cold wakes caused by the proxy.
    pub proxy_cold_wakes: u64,
    /// Rate-limited proxy requests.
    pub proxy_rate_limited: u64,
    /// Events the recorder dropped.
    pub events_dropped: u64,
    /// Sandboxes.
    pub sandboxes_total: u64,
    /// Hot sandboxes.
    pub sandboxes_hot: u64,
    /// Warm sandboxes.
    pub sandboxes_warm: u64,
    /// Cold (and not running) sandboxes.
    pub sandboxes_cold: u64,
    /// Users.
    pub users_total: u64,
    /// Users owning any sandbox.
    pub users_active: u64,
    /// Open public WebSockets.
    pub websockets_active: u64,
    /// Host memory, MiB.
    pub host_mem_total_mb: u64,
    /// Available host memory, MiB.
    pub host_mem_avail_mb: u64,
    /// Host load average, 1 minute.
    pub host_load_1m: f64,
}

const COLS: &str = "ts, api_requests, api_errors, api_auth_failures, api_rate_limited, \
    proxy_requests, proxy_errors, proxy_cold_wakes, proxy_rate_limited, events_dropped, \
    sandboxes_total, sandboxes_hot, sandboxes_warm, sandboxes_cold, users_total, users_active, \
    websockets_active, host_mem_total_mb, host_mem_avail_mb, host_load_1m";

impl MetricsSnapshot {
    fn counts(&self) -> [u64; 18] {
        [
            self.api_requests,
            self.api_errors,
            self.api_auth_failures,
            self.api_rate_limited,
            self.proxy_requests,
            self.proxy_errors,
            self.proxy_cold_wakes,
            self.proxy_rate_limited,
            self.events_dropped,
            self.sandboxes_total,
            self.sandboxes_hot,
            self.sandboxes_warm,
            self.sandboxes_cold,
            self.users_total,
            self.users_active,
            self.websockets_active,
            self.host_mem_total_mb,
            self.host_mem_avail_mb,
        ]
    }

    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        let c = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)?.unsigned_abs()) };
        Ok(MetricsSnapshot {
            ts: r.get(0)?,
            api_requests: c(1)?,
            api_errors: c(2)?,
            api_auth_failures: c(3)?,
            api_rate_limited: c(4)?,
            proxy_requests: c(5)?,
            proxy_errors: c(6)?,
            proxy_cold_wakes: c(7)?,
            proxy_rate_limited: c(8)?,
            events_dropped: c(9)?,
            sandboxes_total: c(10)?,
            sandboxes_hot: c(11)?,
            sandboxes_warm: c(12)?,
            sandboxes_cold: c(13)?,
            users_total: c(14)?,
            users_active: c(15)?,
            websockets_active: c(16)?,
            host_mem_total_mb: c(17)?,
            host_mem_avail_mb: c(18)?,
            host_load_1m: f64_col(r, 19)?,
        })
    }
}

impl Store {
    /// Appends a snapshot.
    pub fn record_metrics(&mut self, m: &MetricsSnapshot) -> Result<()> {
        let mut values: Vec<rusqlite::types::Value> = vec![m.ts.0.into()];
        // Counts beyond i64 are clamped (they would be nonsense anyway).
        values.extend(m.counts().iter().map(|&v| i64::try_from(v).unwrap_or(i64::MAX).into()));
        values.push(m.host_load_1m.into());
        let marks = (1..=values.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
        self.conn.execute(
            &format!("INSERT INTO metrics_snapshots ({COLS}) VALUES ({marks})"),
            rusqlite::params_from_iter(values),
        )?;
        Ok(())
    }

    /// Snapshots at or after `since`, oldest first.
    pub fn metrics_since(&self, since: Timestamp) -> Result<Vec<MetricsSnapshot>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLS} FROM metrics_snapshots WHERE ts >= ?1 ORDER BY ts, rowid"
        ))?;
        Ok(stmt.query_map([since], MetricsSnapshot::from_row)?.collect::<rusqlite::Result<_>>()?)
    }

    /// Deletes snapshots older than `before` (retention); returns how many.
    pub fn purge_metrics(&mut self, before: Timestamp) -> Result<usize> {
        Ok(self.conn.execute("DELETE FROM metrics_snapshots WHERE ts < ?1", [before])?)
    }
}
