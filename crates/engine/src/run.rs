//! Running external tools with a deadline.

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
        .map_err(|e| EngineError::Tool { tool: tool.clone(), message: e.to_string() })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        return Err(EngineError::Tool { tool, message: format!("{}: {stderr}", output.status) });
    }
    Ok(output.stdout)
}
