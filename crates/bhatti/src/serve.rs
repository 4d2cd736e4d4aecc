//! `bhatti serve`: the daemon.
//!
//! Start: the data directory (0700), the store, the first admin user (its key in
//! `<data_dir>/admin.key`, 0600, and on stderr only if that is a terminal; never in the log),
//! recovery (the store's pure decision over its rows and the engine's records, then the engine
//! brings the sandboxes back, then the start-up clean-ups), the background tasks, the listeners
//! (TCP and `<data_dir>/api.sock`, 0600, both closing connections that send no request head in
//! time), and the wakes of keep-hot sandboxes. Stop (SIGTERM, SIGINT): no new connections,
//! requests in flight get the drain timeout, every sandbox is suspended to disk and its record
//! stored, then the network's egress pieces (resolver, NAT, policy table, the uplink and the
//! host's table) are taken down.

use std::io::IsTerminal;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::config::Config;

/// How long a shutdown gives guest operations before cutting them, and the whole suspend.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(90);
/// How long a keep-hot sandbox may take to wake after a start.
const KEEP_HOT_WAKE: Duration = Duration::from_secs(60);

/// Runs the daemon until a signal.
pub async fn run(config: Config) -> anyhow::Result<()> {
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    // Listeners first: a taken port fails the start before anything else is touched.
    let tcp = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let socket_path = config.data_dir.join("api.sock");
    let unix = bind_unix(&socket_path)?;
    let public = match config.public_proxy_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("public proxy: listening on {addr}"))?,
        ),
        None => None,
    };
    let domain = match &config.domain {
        Some(domain) => {
            let tls = server::tls::server_config(&domain.tls_cert, &domain.tls_key)
                .context("domain mode")?;
            let tcp = tokio::net::TcpListener::bind(domain.listen)
                .await
                .with_context(|| format!("domain mode: listening on {}", domain.listen))?;
            Some((server::tls::listener(tcp, tls)?, domain.clone()))
        }
        None => None,
    };
    // The E2B listener's certificate is read before its port is taken: a missing or bad file
    // fails the start naming its key.
    let e2b_tls = match &config.e2b_tls {
        Some(tls) => Some(e2b_tls_config(tls)?),
        None => None,
    };
    let e2b = match &config.e2b {
        Some(e2b) => Some((
            tokio::net::TcpListener::bind(e2b.listen)
                .await
                .with_context(|| format!("e2b: listening on {}", e2b.listen))?,
            e2b.clone(),
        )),
        None => None,
    };
    let db = config.data_dir.join("state.db");
    // The store's errors name the file.
    let mut sync = store::Store::open(&db)?;
    ensure_admin(&mut sync, &config.data_dir)?;
    let uplink = uplink(&config).await?;
    let egress = uplink.as_ref().map(|(_, egress)| egress.clone());
    let (engine, recovered) = recover(&config, egress, &mut sync).await?;
    drop(sync);
    let store = store::AsyncStore::open(&db, &store::Options::default())?;
    // Which wall stands around each QEMU, and which cgroup hierarchy bounds it.
    tracing::info!(confinement = %engine.confinement(), "sandboxes");
    let state = server::AppState::new(Arc::new(engine), store, config.server());
    // Images: what an interrupted import or save left, the built-in images, and pulls that
    // died with the last daemon (they cannot be resumed: marked failed).
    server::image_catalog::clean_partial(&config.data_dir);
    if let Err(e) = server::image_catalog::sync_builtins(&state).await {
        tracing::warn!("registering the built-in images: {e}");
    }
    match state.store.write(|s| s.fail_running_tasks("interrupted by daemon restart")).await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(tasks = n, "tasks interrupted by the restart marked failed"),
        Err(e) => tracing::warn!("marking interrupted tasks failed: {e}"),
    }
    // The secrets key is made on the first start (0600, fsynced), not on the first secret.
    let sealer = Arc::clone(&state.sealer);
    tokio::task::spawn_blocking(move || sealer.identity().map(|_| ())).await??;
    // Shape snapshots whose kernel or image changed (no create can use them again).
    match server::shapes::sweep(&state).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "stale shape snapshots removed"),
        Err(e) => tracing::warn!("looking for stale shape snapshots: {e}"),
    }
    // Checkpoints the store has no row for (a crash between a capture and its row).
    match server::snapshots::remove_orphans(&state).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "orphan checkpoints removed"),
        Err(e) => tracing::warn!("looking for orphan checkpoints: {e}"),
    }
    tracing::info!(recovered, listen = %config.listen, "bhatti serve started");

    let meta = serde_json::json!({ "version": api::VERSION, "recovered": recovered });
    state.events.record(store::NewEvent {
        meta: meta.to_string(),
        ..store::NewEvent::now("daemon.started")
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let background = server::spawn_background(&state, stop_rx.clone());
    server::backup_schedule::spawn(state.clone());
    wake_keep_hot(&state);

    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let tcp = server::nodelay(tcp);
    let tcp_server = tokio::spawn(server::serve(state.clone(), tcp, stopped(stop_rx.clone())));
    let unix_server = tokio::spawn(server::serve(state.clone(), unix, stopped(stop_rx.clone())));
    let mut servers = vec![tcp_server, unix_server];
    if let Some(listener) = public {
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "public proxy (path mode) listening");
        let listener = server::nodelay(listener);
        servers.push(tokio::spawn(server::serve_public(
            state.clone(),
            listener,
            stopped(stop_rx.clone()),
        )));
    }
    if let Some((listener, domain)) = domain {
        tracing::info!(
            addr = %domain.listen, api = %domain.api_host, zone = %domain.proxy_zone,
            "domain mode (TLS) listening"
        );
        let names =
            server::public::domain::Domain { api_host: domain.api_host, zone: domain.proxy_zone };
        servers.push(tokio::spawn(server::serve_domain(
            state.clone(),
            listener,
            names,
            stopped(stop_rx.clone()),
        )));
    }

    if let Some((listener, e2b)) = e2b {
        let stop = stopped(stop_rx.clone());
        match e2b_tls {
            // Handshakes beside the accept loop, each with a deadline (`server::tls`): a
            // plain-HTTP client or a stalled handshake holds only its own connection.
            Some(tls) => {
                tracing::info!(addr = %e2b.listen, domain = ?e2b.domain, "e2b-compatible listener (TLS)");
                let listener = server::tls::listener(listener, tls)?;
                servers.push(tokio::spawn(server::e2b::serve(state.clone(), e2b, listener, stop)));
            }
            None => {
                tracing::info!(addr = %e2b.listen, "e2b-compatible listener");
                let listener = server::nodelay(listener);
                servers.push(tokio::spawn(server::e2b::serve(state.clone(), e2b, listener, stop)));
            }
        }
    }

    let signal = wait_for_signal().await?;
    tracing::info!(signal, "shutting down");
    let _ = stop_tx.send(true);
    // Requests in flight get the drain timeout; the listeners are closed already.
    let drain = state.settings.drain_timeout;
    for server in servers {
        if tokio::time::timeout(drain, server).await.is_err() {
            tracing::warn!("requests still running after {drain:?}; going on");
        }
    }
    for task in background {
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    }
    suspend_all(&state).await;
    let meta = serde_json::json!({ "signal": signal });
    state.events.record(store::NewEvent {
        meta: meta.to_string(),
        ..store::NewEvent::now("daemon.shutdown")
    });
    // What the recorder holds is written before the process ends.
    if tokio::time::timeout(Duration::from_secs(10), state.events.flush()).await.is_err() {
        tracing::warn!("events still queued after 10 s; going on");
    }
    // The namespace's side of egress, then the uplink and the host's table.
    state.engine.close_network().await;
    if let Some((uplink, _)) = &uplink {
        uplink.down().await;
    }
    let _ = std::fs::remove_file(&socket_path);
    Ok(())
}

/// The E2B listener's TLS configuration; an error names the config key whose file failed.
fn e2b_tls_config(
    tls: &crate::config::E2bTls,
) -> anyhow::Result<std::sync::Arc<server::tls::ServerConfig>> {
    server::tls::server_config(&tls.cert, &tls.key).map_err(|e| {
        let key = match &e {
            server::tls::TlsError::Read { path, .. } | server::tls::TlsError::Pem { path, .. }
                if Path::new(path) == tls.key =>
            {
                format!("e2b_tls_key ({})", tls.key.display())
            }
            server::tls::TlsError::Read { .. } | server::tls::TlsError::Pem { .. } => {
                format!("e2b_tls_cert ({})", tls.cert.display())
            }
            server::tls::TlsError::Config(_) => format!(
                "e2b_tls_cert and e2b_tls_key ({}, {})",
                tls.cert.display(),
                tls.key.display()
            ),
        };
        // One line: the error's text already carries its cause.
        anyhow::anyhow!("e2b listener TLS: {key}: {e}")
    })
}

/// Makes the uplink (`egress: host`) or removes one an earlier run left (`egress: off`).
async fn uplink(
    config: &Config,
) -> anyhow::Result<Option<(engine::uplink::Uplink, engine::Egress)>> {
    let uplink_config = engine::uplink::UplinkConfig {
        range: config.uplink_range,
        host_netns: config.egress_netns.clone(),
        marker: config.data_dir.join("uplink.forwarding"),
    };
    if !config.egress {
        engine::uplink::sweep_leftovers(&config.netns, &uplink_config)
            .await
            .context("removing an earlier uplink")?;
        tracing::info!("egress off: sandboxes have no way out");
        return Ok(None);
    }
    let (uplink, egress) =
        engine::uplink::Uplink::up(&config.netns, &uplink_config, &[config.subnet.cidr()])
            .await
            .context("making the uplink (egress: host; set egress: off to run without)")?;
    if uplink.default_route {
        tracing::info!(link = %uplink.link(), "egress: sandboxes reach out through the host");
    } else {
        tracing::warn!(
            link = %uplink.link(),
            "egress: the host has no default route, so sandboxes have no way out until it gets one"
        );
    }
    Ok(Some((uplink, egress)))
}

/// The first start makes an admin user and writes its key where only root can read it.
fn ensure_admin(store: &mut store::Store, data_dir: &Path) -> anyhow::Result<()> {
    if !store.list_users()?.is_empty() {
        return Ok(());
    }
    let quotas = store::Quotas { max_sandboxes: 50, ..store::Quotas::default() };
    let (user, key) = store.create_user("admin", quotas)?;
    let path = data_dir.join("admin.key");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut file, format!("{}\n", key.expose()).as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    // The key goes to the terminal that started the daemon, and only to a terminal: a daemon
    // started in the background (the quickstart's `bhatti serve >>bhatti.log 2>&1`, systemd's
    // journal) has its stderr in a log file, which is kept, rotated and read by more people
    // than the 0600 key file. The log says where the key is, never the key.
    if std::io::stderr().is_terminal() {
        eprintln!("bhatti: admin API key (also in {}): {}", path.display(), key.expose());
        tracing::info!(user = %user.id, file = %path.display(), "created the admin user");
    } else {
        tracing::info!(
            user = %user.id,
            file = %path.display(),
            "created the admin user; its API key is in the file (printed only to a terminal)"
        );
    }
    Ok(())
}

/// Recovery: the store decides over its rows, the engine brings back what it can, and what it
/// could not is marked unknown; then the start-up clean-ups.
async fn recover(
    config: &Config,
    egress: Option<engine::Egress>,
    store: &mut store::Store,
) -> anyhow::Result<(engine::Engine, usize)> {
    let inputs = store.recovery_inputs()?;
    let records: std::collections::HashMap<String, store::StoredRecord> =
        inputs.iter().filter_map(|i| Some((i.id.clone(), i.record.clone()?))).collect();
    let mut plan = store::recovery::plan(inputs);
    // Ours, beyond v1: a sandbox that ran without a saved memory image still has its disk;
    // the engine boots it from there at its next wake (files kept, processes lost) instead of
    // leaving it unknown.
    for outcome in &mut plan.outcomes {
        if outcome.decision == store::Decision::MarkUnknown(store::UnknownReason::NoSnapshot)
            && let Some(Ok(record)) = records.get(&outcome.id).map(store::StoredRecord::decode)
        {
            outcome.decision =
                store::Decision::Restore { record: Box::new(record), mark_stopped: true };
        }
    }
    store.apply_recovery(&plan)?;
    let wanted: Vec<engine::SandboxRecord> = plan.records().into_iter().map(|(_, r)| r).collect();
    let count = wanted.len();
    let engine_config = engine::EngineConfig { egress, ..config.engine() };
    let (engine, failed) = engine::Engine::new_recovering(engine_config, wanted)
        .await
        .context("starting the engine")?;
    for (id, error) in &failed {
        tracing::warn!(sandbox = %id, "not recovered: {error}");
        store.set_status(id, store::Status::Unknown)?;
    }
    let report = store.clean_up_at_start(&store::DataDirs::under(&config.data_dir))?;
    tracing::info!(?report, "start-up clean-ups");
    Ok((engine, count - failed.len()))
}

/// Wakes keep-hot sandboxes in the background (recovery brings everything back cold).
fn wake_keep_hot(state: &server::AppState) {
    let state = state.clone();
    tokio::spawn(async move {
        let rows = match state.store.read(|s| s.list_all_sandboxes()).await {
            Ok(rows) => rows,
            Err(e) => return tracing::warn!("listing keep-hot sandboxes: {e}"),
        };
        let wanted = |r: &store::Sandbox| {
            r.keep_hot && matches!(r.status, store::Status::Running | store::Status::Stopped)
        };
        for row in rows.into_iter().filter(wanted) {
            match tokio::time::timeout(KEEP_HOT_WAKE, state.engine.ensure_hot(&row.id)).await {
                Ok(Ok(())) => tracing::info!(sandbox = %row.id, "keep-hot sandbox woken"),
                Ok(Err(e)) => tracing::warn!(sandbox = %row.id, "waking a keep-hot sandbox: {e}"),
                Err(_) => tracing::warn!(sandbox = %row.id, "waking a keep-hot sandbox timed out"),
            }
        }
    });
}

/// The Unix socket listener, 0600, replacing a stale socket a crash left.
fn bind_unix(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", path.display()));
        }
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("listening on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} private", path.display()))?;
    Ok(listener)
}

async fn wait_for_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// Suspends every sandbox to disk and stores the records, so the next start wakes them with
/// their memory.
async fn suspend_all(state: &server::AppState) {
    let results = state.engine.shutdown(SHUTDOWN_WAIT, SHUTDOWN_DEADLINE).await;
    for (id, result) in results {
        let (record, error) = match result {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(sandbox = %id, "not suspended: {}", e.report());
                continue;
            }
        };
        if let Some(e) = error {
            tracing::warn!(
                sandbox = %id,
                "suspend failed (it boots from its disk next time): {}",
                e.report()
            );
        }
        let stored = state
            .store
            .write(move |s| {
                let ip = record.ip.to_string();
                let change = store::Change {
                    status: Some(store::Status::Stopped),
                    thermal: Some(record.thermal),
                    ip: Some(&ip),
                    record: Some(&record),
                    // A daemon shutdown is no user's stop: the next request wakes it.
                    user_stopped: None,
                };
                s.update_sandbox(&id, &change)
            })
            .await;
        if let Err(e) = stored {
            tracing::error!("storing a sandbox's record at shutdown: {e}");
        }
    }
}
