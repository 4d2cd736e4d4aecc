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

use crate::error::{EngineError, Resource, io_at};
use crate::layout::CheckpointFiles;
use crate::run::run;
use crate::record::SandboxRecord;
use crate::machine::Machine;
use crate::machine::BootSpec;

/// What a checkpoint directory holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version (1).
    pub version: u32,
    /// The source sandbox's ID.
    pub source: String,
    /// Seconds since the epoch.
    pub created_at: u64,
    /// The source's record at capture time; volume paths are replaced by the copies' file names
    /// inside the checkpoint directory.
    pub sandbox: SandboxRecord,
}

impl Manifest {
    /// Reads the manifest of the checkpoint `name` from its directory.
    pub fn read(files: &CheckpointFiles, name: &str) -> Result<Self, EngineError> {
        let text = std::fs::read_to_string(files.manifest()).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                EngineError::not_found(Resource::Checkpoint, name)
            } else {
                io_at("reading", files.manifest())(e)
            }
        })?;
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| {
            EngineError::invalid(format!("checkpoint {name:?} has a damaged manifest: {e}"))
        })?;
        if manifest.version != 1 {
            return Err(EngineError::invalid(format!(
                "checkpoint {name:?}: manifest version {} is not supported",
                manifest.version
            )));
        }
        Ok(manifest)
    }
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
        done??;
    }
    Ok(())
}

/// Hard-links `from` to `to` and makes the file read-only (it is shared from now on: a
/// checkpoint's RAM or disk layer under its clones); across file systems, a copy.
pub async fn link_shared(from: &Path, to: &Path) -> Result<(), EngineError> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::hard_link(from, to) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            copy_files(vec![(from.to_owned(), to.to_owned())]).await?;
        }
        Err(e) => return Err(io_at("linking", from)(e)),
    }
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o444))
        .map_err(io_at("setting the mode of", to))
}

/// Links the read-only layers `0..count` of one directory's disk chain into another.
pub async fn link_layers(
    count: usize,
    from: impl Fn(usize) -> PathBuf,
    to: impl Fn(usize) -> PathBuf,
) -> Result<(), EngineError> {
    for i in 0..count {
        link_shared(&from(i), &to(i)).await?;
    }
    Ok(())
}

/// What a capture produced.
#[derive(Debug, Clone)]
pub struct Captured {
    /// The checkpoint's directory.
    pub dir: PathBuf,
    /// Bytes its files take on the disk (sparse files count what they hold).
    pub bytes: u64,
    /// The whole capture.
    pub took: Duration,
    /// Of which: flushing its files, manifest and directory before publishing it.
    pub sync: Duration,
}

/// Flushes every file of `dir` and then the directory itself to the disk (off the async
/// threads): what a rename then publishes is complete even after a power loss.
pub async fn sync_tree(dir: &Path) -> Result<(), EngineError> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || -> Result<(), EngineError> {
        for entry in std::fs::read_dir(&dir).map_err(io_at("listing", &dir))? {
            let path = entry.map_err(io_at("listing", &dir))?.path();
            let meta = std::fs::symlink_metadata(&path).map_err(io_at("reading", &path))?;
            if meta.is_file() {
                sync_file(&path)?;
            }
        }
        sync_dir(&dir)
    })
    .await?
}

/// The bytes the files of `dir` occupy on the disk.
fn allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.blocks() * 512).sum())
        .unwrap_or(0)
}

/// Moves `from` to `to`: a rename, or a copy and a removal across file systems.
async fn move_file(from: &Path, to: &Path) -> Result<(), EngineError> {
    match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            copy_files(vec![(from.to_owned(), to.to_owned())]).await?;
            std::fs::remove_file(from).map_err(io_at("removing", from))
        }
        Err(e) => {
            let _ = std::fs::remove_file(from);
            Err(io_at("moving", from)(e))
        }
    }
}

/// Flushes a directory's entries (a rename or removal inside it) to the disk.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), EngineError> {
    sync_file(dir)
}

/// Flushes a file (or directory) and its metadata to the disk.
fn sync_file(path: &Path) -> Result<(), EngineError> {
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(io_at("flushing", path))
}

/// Captures a running (hot or warm) VM into the checkpoint `name` at `dest`. The VM is left
/// paused; the caller runs it again if it was hot. Fails before pausing if `dest` exists; a
/// failure publishes nothing (its staging copy is removed on a blocking thread). Every file, the manifest and the directory are fsynced before
/// the rename that publishes the checkpoint.
pub async fn capture(
    vm: &dyn Machine,
    spec: &BootSpec,
    record: &SandboxRecord,
    dest: &CheckpointFiles,
    name: &str,
) -> Result<Captured, EngineError> {
    let started = std::time::Instant::now();
    if dest.dir().exists() {
        return Err(EngineError::exists(Resource::Checkpoint, name));
    }
    let Some(ram) = &spec.memory_file else {
        return Err(EngineError::invalid("the sandbox has no RAM file to checkpoint"));
    };
    // A staging directory of its own (two captures to one name must not share one); the final
    // name is taken atomically at the end, by the first to finish.
    static STAGING: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let staging = dest.staging(STAGING.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(staging.dir())
        .map_err(io_at("creating", staging.dir()))?;
    let result = async {
        // A jailed QEMU can write only inside its sandbox's directory: the state is written
        // there, then moved into the checkpoint (same file system: a rename).
        let written = spec.files.capture_state();
        vm.save(spec, &written).await?;
        move_file(&written, &staging.state()).await?;
        let mut pairs = vec![
            (spec.files.overlay(), staging.overlay()),
            (spec.files.config_drive(), staging.config_drive()),
        ];
        // A clone's RAM file is its checkpoint's, unchanged (what the clone wrote is in the
        // state just saved): a link, not a copy. Its disk chain's layers are links too; the
        // copied overlay names them relative to its directory.
        if spec.memory_private {
            link_shared(ram, &staging.ram()).await?;
        } else {
            pairs.push((ram.clone(), staging.ram()));
        }
        let layers = crate::layout::layer_count(|i| spec.files.layer(i));
        link_layers(layers, |i| spec.files.layer(i), |i| staging.layer(i)).await?;
        let mut sandbox = record.clone();
        for (i, volume) in sandbox.volumes.iter_mut().enumerate() {
            pairs.push((volume.path.clone(), staging.volume(i)));
            volume.path = PathBuf::from(CheckpointFiles::volume_name(i));
        }
        copy_files(pairs).await?;
        let manifest = Manifest {
            version: 1,
            source: record.id.clone(),
            created_at: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            sandbox,
        };
        let text = serde_json::to_string_pretty(&manifest).unwrap_or_default();
        std::fs::write(staging.manifest(), text).map_err(io_at("writing", staging.manifest()))?;
        let sync_started = std::time::Instant::now();
        sync_tree(staging.dir()).await?;
        let sync = sync_started.elapsed();
        nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            staging.dir(),
            nix::fcntl::AT_FDCWD,
            dest.dir(),
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        )
        .map_err(|e| match e {
            nix::errno::Errno::EEXIST | nix::errno::Errno::ENOTEMPTY => {
                EngineError::exists(Resource::Checkpoint, name)
            }
            e => io_at("publishing", staging.dir())(e.into()),
        })?;
        // The rename itself reaches the disk with the parent directory (an fsync: off the
        // async threads).
        if let Some(parent) = dest.dir().parent().map(Path::to_owned) {
            tokio::task::spawn_blocking(move || sync_dir(&parent)).await??;
        }
        Ok(Captured {
            dir: dest.dir().to_owned(),
            bytes: allocated_bytes(dest.dir()),
            took: started.elapsed(),
            sync,
        })
    }
    .await;
    if result.is_err() {
        // Copies of the RAM, disk and volumes: a large removal, on a blocking thread. A staging
        // directory that outlives a crash is removed at the next engine start.
        let dir = staging.dir().to_owned();
        crate::run::off_thread(move || {
            let _ = std::fs::remove_dir_all(dir);
        });
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::record::RECORD_VERSION;
    use crate::thermal::Thermal;

    fn manifest() -> Manifest {
        Manifest {
            version: 1,
            source: "src".into(),
            created_at: 1_700_000_000,
            sandbox: SandboxRecord {
                version: RECORD_VERSION,
                id: "src".into(),
                owner: "usr_1".into(),
                hostname: "src".into(),
                disk_size_mib: None,
                dir: "/d/sandboxes/src".into(),
                image: "/d/images/test.ext4".into(),
                ip: "10.0.0.2".parse().unwrap(),
                mac: "52:54:00:00:00:02".into(),
                token: "t".into(),
                vcpus: 2,
                cpu_millis: None,
                memory_mib: 1024,
                env: Default::default(),
                init: String::new(),
                volumes: vec![crate::volume::VolumeMount {
                    path: CheckpointFiles::volume_name(0).into(),
                    mount: "/work".into(),
                    read_only: false,
                }],
                thermal: Thermal::Hot,
                snapshot: false,
                net_policy: bhatti_core::NetPolicy::default(),
                memory_private: false,
            },
        }
    }

    #[test]
    fn manifest_round_trips_and_refuses_what_it_cannot_read() {
        let dir = tempfile::tempdir().unwrap();
        let files = CheckpointFiles::new(dir.path());
        let missing = Manifest::read(&files, "cp").unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::NotFound);
        assert_eq!(missing.to_string(), r#"checkpoint "cp" not found"#);
        let m = manifest();
        std::fs::write(files.manifest(), serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(Manifest::read(&files, "cp").unwrap(), m);
        let v2 = serde_json::to_string(&m).unwrap().replacen(r#""version":1"#, r#""version":9"#, 1);
        std::fs::write(files.manifest(), v2).unwrap();
        assert!(Manifest::read(&files, "cp").unwrap_err().to_string().contains("version 9"));
        std::fs::write(files.manifest(), "{").unwrap();
        assert_eq!(Manifest::read(&files, "cp").unwrap_err().kind(), ErrorKind::Invalid);
    }
}
