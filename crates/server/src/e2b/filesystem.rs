//! envd's `filesystem.Filesystem` on the agent's file operations: `Stat` and `ListDir` are
//! lohar's stat and list; `MakeDir`, `Move` and `Remove` run `mkdir`, `mv` and `rm` in the
//! guest (lohar has no frames for them yet). Watchers answer `unimplemented` until lohar has a
//! file watcher.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::E2bState;
use super::connect::{self, Code, RpcError};
use super::envd::Guest;

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
    body: Bytes,
) -> Response {
    let result = match method.as_str() {
        "Stat" => stat(&state, &guest, &body).await,
        "ListDir" => list_dir(&state, &guest, &body).await,
        "MakeDir" => make_dir(&state, &guest, &body).await,
        "Move" => move_entry(&state, &guest, &body).await,
        "Remove" => remove(&state, &guest, &body).await,
        "WatchDir" => {
            let e = RpcError::new(Code::Unimplemented, "watching is not supported yet");
            return connect::stream_error(&e);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
