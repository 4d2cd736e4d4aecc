//! Running external tools with a deadline, and blocking work off the async threads.

use std::time::Duration;

use tokio::process::Command;

use crate::error::EngineError;

/// Runs `cmd` to completion within `timeout`; a non-zero exit is an error carrying stderr.
pub async fn run(cmd: &mut Command, timeout: Duration) -> Result<Vec<u8>, EngineError> {
    let tool = format!("{:?}", cmd.as_std().get_program());
    cmd.kill_on_drop(true);
    let output = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| EngineError::ToolTimeout { tool: tool.clone(), secs: timeout.as_secs() })?
        .map_err(|source| EngineError::ToolStart { tool: tool.clone(), source })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        return Err(EngineError::Tool { tool, status: output.status, stderr });
    }
    Ok(output.stdout)
}

/// Runs slow blocking work (a large `remove_dir_all`, waiting for a killed process, a cgroup
/// removal that retries) on a blocking thread when a runtime is there, inline otherwise (a
/// drop outside any runtime).
pub(crate) fn off_thread(work: impl FnOnce() + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn_blocking(work);
        }
        Err(_) => work(),
    }
}
