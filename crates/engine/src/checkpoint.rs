//! Named checkpoints: a running sandbox captured to a directory, resumable later as a new sandbox.
//!
//! A checkpoint holds the device state, a copy of the RAM file, the disk overlay, the config
//! drive and private copies of the attached volumes, plus `manifest.json`. The source is paused
//! only while its files are copied (sparse, reflinked where the filesystem can) and keeps running.
//! Unlike v1's Firecracker snapshots, QEMU's device state names no host paths (the command line
//! does), so a resume never needs symlinks into the source's directory and can never overwrite
//! the source's files.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::process::Command;

use crate::error::EngineError;
use crate::run::run;
use crate::sandbox::STATE_FILE;
use crate::state::SandboxRecord;
use crate::vm::{self, BootSpec, Vm};

/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// The RAM copy's file name.
pub const RAM_FILE: &str = "ram";

/// What a checkpoint directory holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version (1).
    pub version: u32,
    /// The source sandbox.
    pub source: String,
    /// Seconds since the epoch.
    pub created_at: u64,
    /// The source's record at capture time; volume paths are replaced by the copies' file names
    /// inside the checkpoint directory.
    pub sandbox: SandboxRecord,
}

impl Manifest {
    /// Reads `manifest.json` from a checkpoint directory.
    pub fn read(dir: &Path) -> Result<Self, EngineError> {
        let text = std::fs::read_to_string(dir.join(MANIFEST)).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                EngineError::NotFound(format!("checkpoint {}", dir.display()))
            } else {
                e.into()
            }
        })?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| EngineError::Refused(format!("bad checkpoint manifest: {e}")))?;
        if manifest.version != 1 {
            return Err(EngineError::Refused(format!(
                "checkpoint manifest version {} is not supported",
                manifest.version
            )));
        }
        Ok(manifest)
    }
}

/// The file name of the `index`-th volume copy.
pub fn volume_file(index: usize) -> String {
    format!("vol{index}.ext4")
}

/// Copies files concurrently with `cp --sparse=always --reflink=auto` (holes stay holes, and a
/// CoW filesystem shares the blocks).
pub async fn copy_files(pairs: Vec<(PathBuf, PathBuf)>) -> Result<(), EngineError> {
    let mut copies = tokio::task::JoinSet::new();
    for (from, to) in pairs {
        copies.spawn(async move {
            run(
                Command::new("cp").args(["--sparse=always", "--reflink=auto"]).arg(&from).arg(&to),
                Duration::from_secs(300),
            )
            .await
            .map(drop)
        });
    }
    while let Some(done) = copies.join_next().await {
        done.map_err(|e| EngineError::Tool { tool: "cp".into(), message: e.to_string() })??;
    }
    Ok(())
}

/// Captures a running (hot or warm) VM into `dest`. The VM is left paused; the caller runs it
/// again if it was hot. Fails before pausing if `dest` exists; a failure leaves no directory.
pub async fn capture(
    vm: &Vm,
    spec: &BootSpec,
    record: &SandboxRecord,
    dest: &Path,
) -> Result<(), EngineError> {
    if dest.exists() {
        return Err(EngineError::Refused(format!("checkpoint {} already exists", dest.display())));
    }
    let Some(ram) = &spec.memory_file else {
        return Err(EngineError::Refused("the sandbox has no RAM file to checkpoint".into()));
    };
    // A staging directory of its own (two captures to one name must not share one); the final
    // name is taken atomically at the end, by the first to finish.
    static STAGING: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = STAGING.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file_name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let staging = dest.with_file_name(format!("{file_name}.tmp-{}-{n}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let result = async {
        vm.qemu.qmp.stop(Duration::from_secs(5)).await?;
        vm.qemu.save_state(&staging.join(STATE_FILE), Duration::from_secs(30)).await?;
        let mut pairs = vec![
            (ram.clone(), staging.join(RAM_FILE)),
            (spec.dir.join(vm::OVERLAY), staging.join(vm::OVERLAY)),
            (spec.dir.join(vm::CONFIG_DRIVE), staging.join(vm::CONFIG_DRIVE)),
        ];
        let mut sandbox = record.clone();
        for (i, volume) in sandbox.volumes.iter_mut().enumerate() {
            pairs.push((volume.path.clone(), staging.join(volume_file(i))));
            volume.path = PathBuf::from(volume_file(i));
        }
        copy_files(pairs).await?;
        let manifest = Manifest {
            version: 1,
            source: record.name.clone(),
            created_at: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            sandbox,
        };
        let text = serde_json::to_string_pretty(&manifest).unwrap_or_default();
        std::fs::write(staging.join(MANIFEST), text)?;
        nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &staging,
            nix::fcntl::AT_FDCWD,
            dest,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        )
        .map_err(|e| match e {
            nix::errno::Errno::EEXIST | nix::errno::Errno::ENOTEMPTY => {
                EngineError::Refused(format!("checkpoint {} already exists", dest.display()))
            }
            e => std::io::Error::from(e).into(),
        })
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{RECORD_VERSION, Thermal};

    fn manifest() -> Manifest {
        Manifest {
            version: 1,
            source: "src".into(),
            created_at: 1_700_000_000,
            sandbox: SandboxRecord {
                version: RECORD_VERSION,
                name: "src".into(),
                dir: "/d/sandboxes/src".into(),
                image: "/d/images/test.ext4".into(),
                ip: "10.0.0.2".parse().unwrap(),
                mac: "52:54:00:00:00:02".into(),
                token: "t".into(),
                vcpus: 2,
                memory_mib: 1024,
                env: Default::default(),
                init: String::new(),
                volumes: vec![crate::volume::VolumeMount {
                    path: volume_file(0).into(),
                    mount: "/work".into(),
                    read_only: false,
                }],
                thermal: Thermal::Hot,
                snapshot: false,
            },
        }
    }

    #[test]
    fn manifest_round_trips_and_refuses_what_it_cannot_read() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(Manifest::read(dir.path()), Err(EngineError::NotFound(_))));
        let m = manifest();
        std::fs::write(dir.path().join(MANIFEST), serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(Manifest::read(dir.path()).unwrap(), m);
        let v2 = serde_json::to_string(&m).unwrap().replacen(r#""version":1"#, r#""version":9"#, 1);
        std::fs::write(dir.path().join(MANIFEST), v2).unwrap();
        assert!(Manifest::read(dir.path()).unwrap_err().to_string().contains("version 9"));
        std::fs::write(dir.path().join(MANIFEST), "{").unwrap();
        assert!(matches!(Manifest::read(dir.path()), Err(EngineError::Refused(_))));
    }
}
