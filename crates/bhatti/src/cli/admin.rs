//! `bhatti admin status|events|metrics`: the daemon's admin routes (`/admin/...`, the admin
//! user's key only; anyone else gets 404). v1 read these from its SQLite file; ours go over
//! the API, so they work from anywhere the admin key does.

use clap::Subcommand;
use http::Method;
use http_body_util::BodyExt;

use super::client::enc;
use super::error::exit;
use super::ui::table;
use super::{Ctx, print_json};

/// The longest NDJSON line `--follow` accepts.
const MAX_LINE: usize = 1024 * 1024;

/// `bhatti admin`.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Version, uptime, sandboxes by thermal state, users, events dropped, host load.
    Status,
    /// Events, newest first (every user's).
    Events {
        /// A type prefix (`sandbox`, `thermal.wake`).
        #[arg(long = "type")]
        kind: Option<String>,
        /// A user (name or ID).
        #[arg(long)]
        user: Option<String>,
        /// A sandbox (ID, or a name of the admin's own).
        #[arg(long)]
        sandbox: Option<String>,
        /// An age (30s, 5m, 24h, 7d) or a time (2006-01-02, RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// How many (1..1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Keep printing events as they happen (NDJSON with --json).
        #[arg(short, long)]
        follow: bool,
    },
    /// Minute snapshots: requests, errors, wakes, sandboxes, host.
    Metrics {
        /// An age (30s, 5m, 24h, 7d) or a time.
        #[arg(long, default_value = "1h")]
        since: String,
    },
}

/// Runs an admin command.
pub async fn run(ctx: &Ctx, cmd: AdminCommand) -> anyhow::Result<u8> {
    match cmd {
        AdminCommand::Status => status(ctx).await,
        AdminCommand::Events { kind, user, sandbox, since, limit, follow } => {
            let mut q = vec![format!("limit={limit}")];
            for (k, v) in [("type", kind), ("user", user), ("sandbox", sandbox), ("since", since)] {
                if let Some(v) = v {
                    q.push(format!("{k}={}", enc(&v)));
                }
            }
            if follow {
                q.push("follow=true".into());
                return follow_events(ctx, &format!("/admin/events?{}", q.join("&"))).await;
            }
            let events: Vec<api::Event> =
                ctx.client.get(&format!("/admin/events?{}", q.join("&"))).await?;
            if ctx.json {
                return print_json(&events).map(|()| exit::OK);
            }
            let rows: Vec<Vec<String>> = events.iter().map(event_row).collect();
            print!("{}", table(&["TIME", "TYPE", "USER", "SANDBOX", "DETAILS"], &rows));
            Ok(exit::OK)
        }
        AdminCommand::Metrics { since } => {
            let rows: Vec<api::MetricsSnapshot> =
                ctx.client.get(&format!("/admin/metrics?since={}", enc(&since))).await?;
            if ctx.json {
                return print_json(&rows).map(|()| exit::OK);
            }
            let lines: Vec<Vec<String>> = rows
                .iter()
                .map(|m| {
                    vec![
                        m.ts.clone(),
                        m.api_requests.to_string(),
                        m.api_errors.to_string(),
                        m.proxy_requests.to_string(),
                        m.proxy_cold_wakes.to_string(),
                        m.sandboxes_hot.to_string(),
                        m.sandboxes_warm.to_string(),
                        m.sandboxes_cold.to_string(),
                        format!("{:.2}", m.host_load_1m),
                        format!("{}M", m.host_mem_avail_mb),
                    ]
                })
                .collect();
            let headers = [
                "TIME",
                "REQ",
                "ERR",
                "PROXY",
                "WAKES",
                "HOT",
                "WARM",
                "COLD",
                "LOAD",
                "MEM_AVAIL",
            ];
            print!("{}", table(&headers, &lines));
            Ok(exit::OK)
        }
    }
}

fn event_row(e: &api::Event) -> Vec<String> {
    let meta = match &e.meta {
        serde_json::Value::Object(m) if m.is_empty() => String::new(),
        other => other.to_string(),
    };
    vec![e.ts.clone(), e.kind.clone(), e.user_id.clone(), e.sandbox_id.clone(), meta]
}

async fn status(ctx: &Ctx) -> anyhow::Result<u8> {
    let s: api::AdminStatus = ctx.client.get("/admin/status").await?;
    if ctx.json {
        return print_json(&s).map(|()| exit::OK);
    }
    println!("version: {}   uptime: {}", s.version, s.uptime);
    println!(
        "sandboxes: {} (hot {}, warm {}, cold {})",
        s.sandboxes.total, s.sandboxes.hot, s.sandboxes.warm, s.sandboxes.cold
    );
    println!(
        "host: load {:.2}, memory {} of {} MiB available",
        s.host.load_1m, s.host.mem_available_mb, s.host.mem_total_mb
    );
    println!("events dropped: {}", s.events_dropped);
    let users: Vec<Vec<String>> = s
        .users
        .iter()
        .map(|u| vec![u.name.clone(), u.id.clone(), u.sandboxes.to_string()])
        .collect();
    print!("\n{}", table(&["USER", "ID", "SANDBOXES"], &users));
    let events: Vec<Vec<String>> = s.recent_events.iter().map(event_row).collect();
    print!("\n{}", table(&["TIME", "TYPE", "USER", "SANDBOX", "DETAILS"], &events));
    Ok(exit::OK)
}

/// `--follow`: one event per NDJSON line until the daemon ends the stream (or Ctrl+C).
async fn follow_events(ctx: &Ctx, path: &str) -> anyhow::Result<u8> {
    let req = ctx.client.request(Method::GET, path).body(super::client::empty())?;
    let resp = ctx.client.call(req, super::client::QUICK).await?;
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        buf.extend_from_slice(&data);
        while let Some(at) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=at).collect();
            if ctx.json {
                print!("{}", String::from_utf8_lossy(&line));
            } else if let Ok(e) = serde_json::from_slice::<api::Event>(&line) {
                println!("{}", event_row(&e).join("  "));
            }
        }
        anyhow::ensure!(buf.len() <= MAX_LINE, "an event line over {MAX_LINE} bytes");
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
    Ok(exit::OK)
}
