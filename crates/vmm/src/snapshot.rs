//! Saving and loading device state with QEMU's migration to a file.
//!
//! Guest RAM lives in a shared `memory-backend-file`; with the `x-ignore-shared` capability the
//! migration stream carries device state only (tens of KiB), so saving costs what the device
//! state costs, not the guest size. Both sides must set the capability, which is why the
//! destination starts with `-incoming defer`.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::error::VmmError;
use crate::process::QemuProcess;

/// What a save cost.
#[derive(Debug, Clone, Copy)]
pub struct StateSaved {
    /// Wall time of the migration.
    pub duration: Duration,
    /// Size of the state file.
    pub bytes: u64,
}

const QMP_CALL: Duration = Duration::from_secs(5);

/// What a state file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFormat {
    /// Device state only (`x-ignore-shared`): guest RAM stays in its shared memory file.
    DevicesOnly,
    /// Device state and all of guest RAM, each page at a fixed offset (`mapped-ram`), for a VM
    /// with anonymous memory. Measured against `DevicesOnly` in the engine's RAM-placement test.
    MappedRam,
}

impl StateFormat {
    fn capability(self) -> &'static str {
        match self {
            StateFormat::DevicesOnly => "x-ignore-shared",
            StateFormat::MappedRam => "mapped-ram",
        }
    }
}

impl QemuProcess {
    async fn set_format(&self, format: StateFormat) -> Result<(), VmmError> {
        let caps =
            json!({ "capabilities": [{ "capability": format.capability(), "state": true }] });
        self.qmp.execute("migrate-set-capabilities", Some(caps), QMP_CALL).await.map(drop)
    }

    /// Writes the device state of a paused VM to `path` (RAM stays in its memory file).
    pub async fn save_state(&self, path: &Path, timeout: Duration) -> Result<StateSaved, VmmError> {
        self.save_state_as(path, StateFormat::DevicesOnly, timeout).await
    }

    /// Writes the state of a paused VM to `path` in `format`.
    pub async fn save_state_as(
        &self,
        path: &Path,
        format: StateFormat,
        timeout: Duration,
    ) -> Result<StateSaved, VmmError> {
        let start = Instant::now();
        self.set_format(format).await?;
        let uri = format!("file:{}", path.display());
        let started = self.qmp.execute("migrate", Some(json!({ "uri": uri })), QMP_CALL).await;
        if let Err(e) = started {
            // It may have started although the answer never came.
            self.cancel_migration().await;
            return Err(e);
        }
        if let Err(e) = self.wait_migration("save state", timeout).await {
            // A migration left running would finish later and stop the VM behind the caller's
            // back (and deactivate its disks): cancel it and wait until it has ended.
            self.cancel_migration().await;
            return Err(e);
        }
        let bytes = std::fs::metadata(path)?.len();
        Ok(StateSaved { duration: start.elapsed(), bytes })
    }

    /// Loads device state saved by [`QemuProcess::save_state`] into a QEMU started with
    /// `incoming`. The VM is paused afterwards; `cont` runs it.
    pub async fn load_state(&self, path: &Path, timeout: Duration) -> Result<Duration, VmmError> {
        self.load_state_as(path, StateFormat::DevicesOnly, timeout).await
    }

    /// Loads state saved in `format` into a QEMU started with `incoming`.
    pub async fn load_state_as(
        &self,
        path: &Path,
        format: StateFormat,
        timeout: Duration,
    ) -> Result<Duration, VmmError> {
        let start = Instant::now();
        self.set_format(format).await?;
        let uri = format!("file:{}", path.display());
        self.qmp.execute("migrate-incoming", Some(json!({ "uri": uri })), QMP_CALL).await?;
        self.wait_migration("load state", timeout).await?;
        Ok(start.elapsed())
    }

    /// Cancels an outgoing migration and waits (up to 5 s) until QEMU reports it ended.
    async fn cancel_migration(&self) {
        if let Err(e) = self.qmp.execute("migrate_cancel", None, QMP_CALL).await {
            tracing::warn!("migrate_cancel: {e}");
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match self.qmp.execute("query-migrate", None, QMP_CALL).await {
                Ok(info)
                    if matches!(
                        info["status"].as_str(),
                        Some("cancelled" | "failed" | "completed")
                    ) =>
                {
                    return;
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(_) => return,
            }
        }
        tracing::warn!("the migration did not end within 5 s of migrate_cancel");
    }

    /// Polls `query-migrate` until the migration completed or failed.
    async fn wait_migration(&self, op: &str, timeout: Duration) -> Result<(), VmmError> {
        let deadline = Instant::now() + timeout;
        loop {
            let info = self.qmp.execute("query-migrate", None, QMP_CALL).await?;
            match info["status"].as_str().unwrap_or("") {
                "completed" => return Ok(()),
                status @ ("failed" | "cancelled") => {
                    let desc = info["error-desc"].as_str().unwrap_or(status).to_owned();
                    return Err(VmmError::Qmp { command: op.into(), class: status.into(), desc });
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(VmmError::Timeout { op: op.into(), after: timeout });
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}
