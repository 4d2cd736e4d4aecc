-- One row per minute of daemon metrics: counter deltas and gauges (v1's metrics_snapshots).

CREATE TABLE metrics_snapshots (
    ts                 INTEGER NOT NULL,
    api_requests       INTEGER NOT NULL,
    api_errors         INTEGER NOT NULL,
    api_auth_failures  INTEGER NOT NULL,
    api_rate_limited   INTEGER NOT NULL,
    proxy_requests     INTEGER NOT NULL,
    proxy_errors       INTEGER NOT NULL,
    proxy_cold_wakes   INTEGER NOT NULL,
    proxy_rate_limited INTEGER NOT NULL,
    events_dropped     INTEGER NOT NULL,
    sandboxes_total    INTEGER NOT NULL,
    sandboxes_hot      INTEGER NOT NULL,
    sandboxes_warm     INTEGER NOT NULL,
    sandboxes_cold     INTEGER NOT NULL,
    users_total        INTEGER NOT NULL,
    users_active       INTEGER NOT NULL,
    websockets_active  INTEGER NOT NULL,
    host_mem_total_mb  INTEGER NOT NULL,
    host_mem_avail_mb  INTEGER NOT NULL,
    host_load_1m       REAL NOT NULL
) STRICT;
CREATE INDEX metrics_snapshots_ts ON metrics_snapshots (ts);
