//! A running guest's root disk served read-only over NBD by its own QEMU (`nbd-server-start` on
//! a Unix socket in the sandbox's directory, where the jailed QEMU may create one, and
//! `block-export-add` of the root drive's node), for the filesystem diff: the reader sees
//! exactly what the guest sees, through the block layer that writes it, while the guest runs.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use super::Vm;
use crate::error::EngineError;

/// Each QMP call's deadline.
const QMP: Duration = Duration::from_secs(5);
/// The export's ID and NBD name.
pub const EXPORT: &str = "root";
/// The root disk's drive ID (`-drive id=disk0`, see `vmm::cmdline`).
const ROOT_DRIVE: &str = "disk0";

/// Starts the export on `socket`.
pub async fn export_root(vm: &Vm, socket: &Path) -> Result<(), EngineError> {
    let qmp = &vm.qemu.qmp;
    let blocks = qmp.execute("query-block", None, QMP).await?;
    let node = blocks
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["device"] == ROOT_DRIVE)
        .and_then(|b| b["inserted"]["node-name"].as_str())
        .ok_or_else(|| vmm::VmmError::Protocol(format!("query-block: no {ROOT_DRIVE} node")))?
        .to_owned();
    // A socket an earlier export left (its QEMU died before removing it) is in the way.
    let _ = std::fs::remove_file(socket);
    // `nbd-server-start` takes QAPI's legacy socket address (the path wrapped in `data`).
    let addr = json!({ "addr": { "type": "unix", "data": { "path": socket } } });
    qmp.execute("nbd-server-start", Some(addr), QMP).await?;
    let export = json!({
        "type": "nbd", "id": EXPORT, "node-name": node, "name": EXPORT, "writable": false,
    });
    if let Err(e) = qmp.execute("block-export-add", Some(export), QMP).await {
        let _ = qmp.execute("nbd-server-stop", None, QMP).await;
        return Err(e.into());
    }
    Ok(())
}

/// Ends the export and the server (best effort: each step is tried).
pub async fn unexport_root(vm: &Vm, socket: &Path) -> Result<(), EngineError> {
    let qmp = &vm.qemu.qmp;
    let del = qmp.execute("block-export-del", Some(json!({ "id": EXPORT, "mode": "hard" })), QMP).await;
    let stop = qmp.execute("nbd-server-stop", None, QMP).await;
    let _ = std::fs::remove_file(socket);
    del?;
    stop?;
    Ok(())
}
