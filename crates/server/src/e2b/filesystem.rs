//! envd's `filesystem.Filesystem` on the agent's file operations: `Stat` and `ListDir` are
//! lohar's stat and list; `MakeDir`, `Move` and `Remove` run `mkdir`, `mv` and `rm` in the
//! guest (lohar has no frames for them yet). Watchers are lohar's directory watches (its WATCH
//! extension, inotify in the guest): `CreateWatcher` / `GetWatcherEvents` / `RemoveWatcher`
//! poll a buffer the daemon fills (`watchers.rs`), `WatchDir` streams them (`start`, then
//! `filesystem` events and `keepalive`s).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::E2bState;
use super::connect::{self, Code, RpcError};
use super::envd::Guest;
use super::watchers::{self, Event, Watcher};

/// The deepest `ListDir` walk and the most entries it answers.
const MAX_DEPTH: u32 = 16;
const MAX_ENTRIES: usize = 10_000;
/// Relative paths are the user's home's (E2B's rule; the guest's user is root).
const HOME: &str = "/root";

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Req {
    path: String,
    depth: Option<u32>,
    source: String,
    destination: String,
    recursive: bool,
    #[serde(rename = "watcherId")]
    watcher_id: String,
}

/// An absolute guest path.
pub fn absolute(path: &str) -> Result<String, RpcError> {
    if path.contains('\0') {
        return Err(RpcError::new(Code::InvalidArgument, "path contains NUL"));
    }
    if path.is_empty() {
        return Ok(HOME.into());
    }
    Ok(if path.starts_with('/') { path.to_owned() } else { format!("{HOME}/{path}") })
}

fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') { format!("{dir}{name}") } else { format!("{dir}/{name}") }
}

/// `rwxr-xr-x` of permission bits.
fn permissions(bits: u32, is_dir: bool) -> String {
    let mut out = String::from(if is_dir { "d" } else { "-" });
    for shift in [6, 3, 0] {
        let b = (bits >> shift) & 7;
        out.push(if b & 4 != 0 { 'r' } else { '-' });
        out.push(if b & 2 != 0 { 'w' } else { '-' });
        out.push(if b & 1 != 0 { 'x' } else { '-' });
    }
    out
}

/// envd's EntryInfo of the agent's file info.
pub fn entry(path: &str, f: &engine::FileInfo) -> serde_json::Value {
    let bits = u32::from_str_radix(&f.mode, 8).unwrap_or(0) & 0o7777;
    serde_json::json!({
        "name": f.name,
        "type": if f.is_dir { "FILE_TYPE_DIRECTORY" } else { "FILE_TYPE_FILE" },
        "path": path,
        "size": f.size.to_string(),
        "mode": bits | if f.is_dir { 0o040000 } else { 0o100000 },
        "permissions": permissions(bits, f.is_dir),
        "owner": "root",
        "group": "root",
        "modifiedTime": crate::times::rfc3339(store::Timestamp(f.mtime.saturating_mul(1000))),
    })
}

/// `POST /filesystem.Filesystem/{method}` (unary).
pub async fn call(
    State(state): State<E2bState>,
    axum::Extension(guest): axum::Extension<Guest>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = match method.as_str() {
        "Stat" => stat(&state, &guest, &body).await,
        "ListDir" => list_dir(&state, &guest, &body).await,
        "MakeDir" => make_dir(&state, &guest, &body).await,
        "Move" => move_entry(&state, &guest, &body).await,
        "Remove" => remove(&state, &guest, &body).await,
        "WatchDir" => return watch_dir(state, guest, &headers, &body).await,
        "CreateWatcher" => create_watcher(&state, &guest, &body).await,
        "GetWatcherEvents" => watcher_events(&state, &guest, &body),
        "RemoveWatcher" => remove_watcher(&state, &guest, &body),
        other => Err(RpcError::new(Code::Unimplemented, format!("filesystem.Filesystem/{other}"))),
    };
    match result {
        Ok(message) => connect::unary_response(&message),
        Err(e) => e.into_response(),
    }
}

async fn stat_of(
    state: &E2bState,
    guest: &Guest,
    path: &str,
) -> Result<serde_json::Value, RpcError> {
    let info =
        state.app.engine.file_stat(&guest.id, path).await.map_err(super::error::rpc_engine)?;
    Ok(entry(path, &info))
}

async fn stat(state: &E2bState, guest: &Guest, body: &[u8]) -> Result<serde_json::Value, RpcError> {
    let req: Req = connect::unary_request(body)?;
    let path = absolute(&req.path)?;
    Ok(serde_json::json!({ "entry": stat_of(state, guest, &path).await? }))
}

async fn list_dir(
    state: &E2bState,
    guest: &Guest,
    body: &[u8],
) -> Result<serde_json::Value, RpcError> {
    let req: Req = connect::unary_request(body)?;
    let root = absolute(&req.path)?;
    let depth = req.depth.unwrap_or(1).clamp(1, MAX_DEPTH);
    let mut entries = Vec::new();
    let mut level = vec![root];
    for _ in 0..depth {
        let mut next = Vec::new();
        for dir in level {
            let list = state
                .app
                .engine
                .file_list(&guest.id, &dir)
                .await
                .map_err(super::error::rpc_engine)?;
            for f in list.iter().filter(|f| !f.mode.is_empty()) {
                let path = join(&dir, &f.name);
                if f.is_dir {
                    next.push(path.clone());
                }
                entries.push(entry(&path, f));
                if entries.len() >= MAX_ENTRIES {
                    return Ok(serde_json::json!({ "entries": entries }));
                }
            }
        }
        level = next;
    }
    Ok(serde_json::json!({ "entries": entries }))
}

/// Runs a file command in the guest; a non-zero exit is its stderr as an error.
async fn run(state: &E2bState, guest: &Guest, argv: &[&str]) -> Result<(), RpcError> {
    let out = state.app.engine.exec(&guest.id, argv).await.map_err(super::error::rpc_engine)?;
    if out.exit_code == 0 {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    let code = if stderr.contains("No such file") { Code::NotFound } else { Code::Internal };
    Err(RpcError::new(code, format!("{}: {stderr}", argv[0])))
}

async fn make_dir(
    state: &E2bState,
    guest: &Guest,
    body: &[u8],
) -> Result<serde_json::Value, RpcError> {
    let req: Req = connect::unary_request(body)?;
    let path = absolute(&req.path)?;
    if stat_of(state, guest, &path).await.is_ok() {
        return Err(RpcError::new(Code::AlreadyExists, format!("{path} already exists")));
    }
    run(state, guest, &["mkdir", "-p", "--", &path]).await?;
    Ok(serde_json::json!({ "entry": stat_of(state, guest, &path).await? }))
}

async fn move_entry(
    state: &E2bState,
    guest: &Guest,
    body: &[u8],
) -> Result<serde_json::Value, RpcError> {
    let req: Req = connect::unary_request(body)?;
    let (from, to) = (absolute(&req.source)?, absolute(&req.destination)?);
    stat_of(state, guest, &from).await?;
    run(state, guest, &["mv", "--", &from, &to]).await?;
    Ok(serde_json::json!({ "entry": stat_of(state, guest, &to).await? }))
}

async fn remove(
    state: &E2bState,
    guest: &Guest,
    body: &[u8],
) -> Result<serde_json::Value, RpcError> {
    let req: Req = connect::unary_request(body)?;
    let path = absolute(&req.path)?;
    stat_of(state, guest, &path).await?;
    run(state, guest, &["rm", "-rf", "--", &path]).await?;
    Ok(serde_json::json!({}))
}

/// envd's `EVENT_TYPE_*` of a watch event; `None` for what envd does not report (`started`,
/// `overflow`).
fn event_type(kind: engine::WatchKind) -> Option<&'static str> {
    use engine::WatchKind::*;
    Some(match kind {
        Create => "EVENT_TYPE_CREATE",
        Write => "EVENT_TYPE_WRITE",
        Remove => "EVENT_TYPE_REMOVE",
        Rename => "EVENT_TYPE_RENAME",
        Chmod => "EVENT_TYPE_CHMOD",
        Started | Overflow => return None,
    })
}

fn event_json(e: &Event) -> serde_json::Value {
    serde_json::json!({ "name": e.name, "type": e.kind })
}

/// Starts a guest watch; the engine's errors as envd's (a missing path is `not_found`, a file
/// `invalid_argument`, through `error.rs`).
async fn start_watch(
    state: &E2bState,
    guest: &Guest,
    body_path: &str,
    recursive: bool,
) -> Result<engine::Leased<engine::WatchStream>, RpcError> {
    let path = absolute(body_path)?;
    state.app.engine.watch(&guest.id, &path, recursive).await.map_err(super::error::rpc_engine)
}

/// `CreateWatcher {path, recursive}` -> `{watcherId}`.
async fn create_watcher(
    state: &E2bState,
    guest: &Guest,
    body: &[u8],
) -> Result<serde_json::Value, RpcError> {
    let req: Req = connect::unary_request(body)?;
    if state.watchers.count(&guest.id) >= watchers::MAX_PER_SANDBOX {
        return Err(RpcError::new(Code::ResourceExhausted, watchers::TooMany.to_string()));
    }
    let stream = start_watch(state, guest, &req.path, req.recursive).await?;
    let (id, watcher) = state
        .watchers
        .insert(&guest.id)
        .map_err(|e| RpcError::new(Code::ResourceExhausted, e.to_string()))?;
    tokio::spawn(drain(Arc::clone(&state.watchers), id.clone(), watcher, stream));
    Ok(serde_json::json!({ "watcherId": id }))
}

/// A watcher's task: guest events into its buffer, until it is removed, expires or the guest
/// watch ends (dropping the stream closes the guest watch).
async fn drain(
    registry: Arc<watchers::Registry>,
    id: String,
    watcher: Arc<Watcher>,
    stream: engine::Leased<engine::WatchStream>,
) {
    let (mut stream, lease) = stream.into_parts();
    let mut check = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = watcher.stopped() => break,
            gone = lease.ended() => {
                tracing::debug!(watcher = %id, "e2b watcher ended with its sandbox: {gone}");
                break;
            }
            _ = check.tick() => {
                if watcher.expired(std::time::Instant::now()) {
                    tracing::info!(watcher = %id, "e2b watcher expired (never polled)");
                    break;
                }
            }
            next = stream.next() => match next {
                Some(Ok(e)) => {
                    if e.kind == engine::WatchKind::Overflow {
                        tracing::warn!(watcher = %id, "guest watch overflowed; events lost");
                    }
                    if let Some(kind) = event_type(e.kind)
                        && !watcher.push(Event { name: e.name, kind })
                    {
                        tracing::warn!(watcher = %id, "e2b watcher buffer full; event dropped");
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(watcher = %id, "guest watch failed: {e}");
                    break;
                }
                None => break,
            },
        }
    }
    registry.forget(&id);
}

fn watcher_events(
    state: &E2bState,
    guest: &Guest,
    body: &[u8],
) -> Result<serde_json::Value, RpcError> {
    let req: Req = connect::unary_request(body)?;
    let watcher = state.watchers.get(&guest.id, &req.watcher_id).ok_or_else(|| {
        RpcError::new(Code::NotFound, format!("watcher {} not found", req.watcher_id))
    })?;
    let events: Vec<serde_json::Value> = watcher.take().iter().map(event_json).collect();
    Ok(serde_json::json!({ "events": events }))
}

fn remove_watcher(
    state: &E2bState,
    guest: &Guest,
    body: &[u8],
) -> Result<serde_json::Value, RpcError> {
    let req: Req = connect::unary_request(body)?;
    if !state.watchers.remove(&guest.id, &req.watcher_id) {
        return Err(RpcError::new(Code::NotFound, format!("watcher {} not found", req.watcher_id)));
    }
    Ok(serde_json::json!({}))
}

/// The keep-alive interval the client asks (`Keepalive-Ping-Interval`, seconds), bounded.
fn keepalive_of(headers: &HeaderMap) -> Duration {
    let secs = headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(30);
    Duration::from_secs(secs.clamp(1, 300))
}

/// `WatchDir` (server streaming): `{"start":{}}`, then `{"filesystem":{name,type}}` per event
/// and `{"keepalive":{}}` at the client's interval, until the client goes away (which ends the
/// guest watch) or the sandbox does (an `unavailable` end).
async fn watch_dir(state: E2bState, guest: Guest, headers: &HeaderMap, body: &[u8]) -> Response {
    let req: Req = match connect::stream_request(body) {
        Ok(r) => r,
        Err(e) => return connect::stream_error(&e),
    };
    let stream = match start_watch(&state, &guest, &req.path, req.recursive).await {
        Ok(s) => s,
        Err(e) => return connect::stream_error(&e),
    };
    let keepalive = keepalive_of(headers);
    let (tx, body) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let (mut stream, lease) = stream.into_parts();
        if tx.send(connect::message(&serde_json::json!({ "start": {} }))).await.is_err() {
            return;
        }
        let mut ping = tokio::time::interval(keepalive);
        ping.tick().await;
        loop {
            let message = tokio::select! {
                _ = tx.closed() => return,
                gone = lease.ended() => {
                    let e = RpcError::new(Code::Unavailable, gone.to_string());
                    let _ = tx.send(connect::end(Some(&e))).await;
                    return;
                }
                _ = ping.tick() => connect::message(&serde_json::json!({ "keepalive": {} })),
                next = stream.next() => match next {
                    Some(Ok(e)) => match event_type(e.kind) {
                        Some(kind) => {
                            let event = Event { name: e.name, kind };
                            connect::message(&serde_json::json!({ "filesystem": event_json(&event) }))
                        }
                        None => continue,
                    },
                    Some(Err(e)) => {
                        let e = RpcError::new(Code::Unavailable, e.to_string());
                        let _ = tx.send(connect::end(Some(&e))).await;
                        return;
                    }
                    None => {
                        let _ = tx.send(connect::end(None)).await;
                        return;
                    }
                },
            };
            if tx.send(message).await.is_err() {
                return;
            }
        }
    });
    connect::stream_response(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_table() {
        use engine::WatchKind::*;
        let rows = [
            (Create, Some("EVENT_TYPE_CREATE")),
            (Write, Some("EVENT_TYPE_WRITE")),
            (Remove, Some("EVENT_TYPE_REMOVE")),
            (Rename, Some("EVENT_TYPE_RENAME")),
            (Chmod, Some("EVENT_TYPE_CHMOD")),
            (Started, None),
            (Overflow, None),
        ];
        for (kind, want) in rows {
            assert_eq!(event_type(kind), want, "{kind:?}");
        }
    }

    #[test]
    fn paths_table() {
        let rows = [
            ("absolute", "/tmp/a", Ok("/tmp/a")),
            ("relative", "a/b", Ok("/root/a/b")),
            ("empty is home", "", Ok("/root")),
        ];
        for (name, path, want) in rows {
            assert_eq!(absolute(path).map_err(|e| e.code), want.map(str::to_owned), "{name}");
        }
        assert!(absolute("a\0b").is_err());
        assert_eq!(permissions(0o755, true), "drwxr-xr-x");
        assert_eq!(permissions(0o640, false), "-rw-r-----");
    }
}
