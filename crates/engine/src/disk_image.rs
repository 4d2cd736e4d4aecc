//! A sandbox's disk as a standalone image: `qemu-img convert` of its qcow2 overlay (with the
//! base image under it) to one raw ext4 file.

use std::path::Path;
use std::time::Duration;

use tokio::process::Command;

use crate::error::EngineError;
use crate::run::run;

/// How long a copy may take (a large disk on a slow host).
const DEADLINE: Duration = Duration::from_secs(30 * 60);

/// Writes the disk `overlay` (qcow2 over its backing image) as the raw file `dest` (sparse).
/// `-U`: the running QEMU holds the image's lock; the caller has paused it, so the copy reads
/// a disk nothing writes to.
pub async fn flatten(overlay: &Path, dest: &Path) -> Result<(), EngineError> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["convert", "-U", "-q", "-f", "qcow2", "-O", "raw"]).arg(overlay).arg(dest);
    run(&mut cmd, DEADLINE).await.map(drop)
}
