//! `Engine::diff`: which disks a sandbox's diff reads, and keeping the sandbox running while
//! it does (see `crate::diff` for the reading and comparing).
//!
//! - **The base.** `Creation`: the file the sandbox's overlay is backed by, from the overlay's
//!   qcow2 header (the base image, raw, read with `pread`; a checkpoint's overlay for a
//!   sandbox whose disk is chained to one, served by `qemu-nbd`). `Checkpoint`: that
//!   checkpoint's overlay (over its image), served by `qemu-nbd`.
//! - **The live disk.** Hot or warm: a lease (a warm sandbox is woken, as for any exec, so
//!   its guest can flush), `sync` in the guest, then QEMU serves the disk over NBD while the
//!   guest runs on; the export ends when the comparison does. Cold (or crashed): its overlay
//!   file through `qemu-nbd`, without waking it (what its guest had not flushed when it
//!   stopped is in its saved memory, not on the disk).
//!
//! One diff per sandbox at a time (QEMU has one NBD server); a second is `Busy`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Engine, lock};
use crate::diff::disk::{self, BackingFormat, Disk, QemuNbd, RawFile};
use crate::diff::nbd::NbdClient;
use crate::diff::{DiffBase, DiffError, DiffResult};
use crate::error::{EngineError, Resource};
use crate::owner::Command;
use crate::thermal::Thermal;

/// How long the guest's `sync` may take.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// The sandboxes (by overlay path: unique across engines in one process) being diffed.
fn running() -> std::sync::MutexGuard<'static, BTreeSet<PathBuf>> {
    static RUNNING: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
    RUNNING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Holds a sandbox's place in [`running`].
struct OneAtATime(PathBuf);

impl OneAtATime {
    fn take(id: &str, overlay: PathBuf) -> Result<Self, EngineError> {
        if !running().insert(overlay.clone()) {
            return Err(EngineError::Busy { id: id.to_owned(), in_flight: 1 });
        }
        Ok(Self(overlay))
    }
}

impl Drop for OneAtATime {
    fn drop(&mut self) {
        running().remove(&self.0);
    }
}

/// Where the base's bytes come from.
#[derive(Debug, Clone)]
enum Base {
    Raw(PathBuf),
    Qcow2(PathBuf),
}

impl Base {
    /// Opens it (blocking: `qemu-nbd` starts).
    fn open(&self) -> Result<Box<dyn Disk>, disk::DiskError> {
        Ok(match self {
            Base::Raw(p) => Box::new(RawFile::open(p)?),
            Base::Qcow2(p) => Box::new(QemuNbd::serve(p)?),
        })
    }

    /// What the overlay `overlay` is backed by (blocking: reads its header).
    fn backing_of(overlay: &Path) -> Result<Option<Self>, disk::DiskError> {
        let Some((path, format)) = disk::qcow2_backing(overlay)? else { return Ok(None) };
        let qcow2 = match format {
            BackingFormat::Raw => false,
            BackingFormat::Qcow2 => true,
            BackingFormat::Unknown => disk::is_qcow2(&path)?,
        };
        Ok(Some(if qcow2 { Base::Qcow2(path) } else { Base::Raw(path) }))
    }
}

fn unreadable(id: &str) -> impl FnOnce(DiffError) -> EngineError {
    let id = id.to_owned();
    move |source| EngineError::DiskUnreadable { id, source }
}

impl Engine {
    /// What changed in sandbox `id`'s root filesystem since `against`: paths added, changed
    /// and deleted with their sizes and modes (at most `diff::MAX_ENTRIES`, then
    /// `truncated`), and with `patch` the unified diffs of text files. The sandbox keeps
    /// running; a cold one is not woken. Another owner's checkpoint is not found.
    pub async fn diff(
        &self,
        id: &str,
        against: DiffBase,
        patch: bool,
    ) -> Result<DiffResult, EngineError> {
        let handle = self.handle(id)?;
        let (files, owner) = lock(&self.sandboxes)
            .get(id)
            .map(|e| (e.files.clone(), e.who.owner.clone()))
            .ok_or_else(|| EngineError::not_found(Resource::Sandbox, id))?;
        let overlay = files.overlay();
        let base = match &against {
            DiffBase::Creation => {
                let overlay = overlay.clone();
                tokio::task::spawn_blocking(move || Base::backing_of(&overlay))
                    .await?
                    .map_err(|e| unreadable(id)(e.into()))?
                    .ok_or_else(|| EngineError::DiskUnreadable {
                        id: id.to_owned(),
                        source: DiffError::NoBase,
                    })?
            }
            DiffBase::Checkpoint { owner: of, name } => {
                let cp = self.layout.checkpoint(of, name).overlay();
                if *of != owner || !cp.is_file() {
                    return Err(EngineError::not_found(Resource::Checkpoint, name.clone()));
                }
                Base::Qcow2(cp)
            }
        };
        let _one = OneAtATime::take(id, overlay.clone())?;
        let thermal = handle.shared.thermal();
        if matches!(thermal, Thermal::Cold | Thermal::Failed) {
            let started = Instant::now();
            let result = tokio::task::spawn_blocking(move || {
                let old = base.open()?;
                let new: Box<dyn Disk> = Box::new(QemuNbd::serve(&overlay)?);
                crate::diff::compare_disks(old, new, patch)
            })
            .await?
            .map_err(unreadable(id))?;
            tracing::info!(sandbox = %id, took = ?started.elapsed(), stats = ?result.stats, "diff (cold)");
            return Ok(result);
        }
        let lease = self.lease(id).await?;
        let flushed = Instant::now();
        let sync = agent::ExecRequest::command(["sync"]);
        match lease.run(lease.client().exec_request(&sync, FLUSH_TIMEOUT)).await {
            Ok(out) if out.exit_code == 0 => {}
            Ok(out) => tracing::warn!(sandbox = %id, "sync in the guest exited {}", out.exit_code),
            Err(e) if matches!(e.kind(), crate::ErrorKind::Guest(_)) => {
                tracing::warn!(sandbox = %id, "no sync in the guest: {}", e.report());
            }
            Err(e) => return Err(e),
        }
        let flush = flushed.elapsed();
        let socket = files.nbd_socket();
        let sock = socket.clone();
        handle.ask(id, |reply| Command::ExportDisk { socket: sock, reply }).await??;
        let sock = socket.clone();
        let compare = tokio::task::spawn_blocking(move || {
            let old = base.open()?;
            let live = NbdClient::connect(&sock, crate::diff::EXPORT, disk::NBD_TIMEOUT)
                .map_err(disk::DiskError::from)?;
            crate::diff::compare_disks(old, Box::new(live), patch)
        });
        // A sandbox stopped or destroyed meanwhile ends the diff at once (its NBD server goes
        // with its QEMU, and the blocking reader fails on its own).
        let result = tokio::select! {
            done = compare => done.map_err(EngineError::from).and_then(|r| r.map_err(unreadable(id))),
            gone = lease.ended() => Err(gone),
        };
        let sock = socket.clone();
        match handle.ask(id, |reply| Command::UnexportDisk { socket: sock, reply }).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) | Err(e) => {
                tracing::warn!(sandbox = %id, "ending the disk export: {}", e.report());
            }
        }
        drop(lease);
        let mut result = result?;
        result.stats.flush = flush;
        tracing::info!(sandbox = %id, stats = ?result.stats, "diff");
        Ok(result)
    }
}
