//! Named checkpoints through the engine: capture, delete, and resume as a new sandbox.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::{Engine, Reservation, SandboxInfo, check_name, mac_for, parse_mac, refused};
use crate::checkpoint::{self, Manifest};
use crate::error::EngineError;
use crate::sandbox::{Command, STATE_FILE};
use crate::vm;

impl Engine {
    pub(super) fn checkpoints_dir(&self) -> PathBuf {
        self.config.data_dir.join("checkpoints")
    }

    fn checkpoint_dir(&self, checkpoint: &str) -> PathBuf {
        self.checkpoints_dir().join(checkpoint)
    }

    /// Captures a running sandbox as the named checkpoint. The sandbox is paused only while its
    /// files are copied and keeps running (a warm one stays warm). A cold sandbox is refused.
    pub async fn checkpoint(&self, name: &str, checkpoint: &str) -> Result<PathBuf, EngineError> {
        check_name("checkpoint", checkpoint)?;
        let dest = self.checkpoint_dir(checkpoint);
        if dest.exists() {
            return Err(refused(format!("checkpoint {checkpoint:?} already exists")));
        }
        // RAM copies and agent tokens live here: the owner's eyes only.
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(self.checkpoints_dir())?;
        let handle = self.handle(name)?;
        let d = dest.clone();
        handle.ask(name, |reply| Command::Checkpoint { dest: d, reply }).await??;
        Ok(dest)
    }

    /// Deletes a checkpoint.
    pub fn delete_checkpoint(&self, checkpoint: &str) -> Result<(), EngineError> {
        check_name("checkpoint", checkpoint)?;
        let dir = self.checkpoint_dir(checkpoint);
        if !dir.exists() {
            return Err(EngineError::NotFound(format!("checkpoint {checkpoint}")));
        }
        Ok(std::fs::remove_dir_all(dir)?)
    }

    /// Resumes a checkpoint as a new sandbox `name`, with the memory, processes and files of
    /// the moment it was taken; the new sandbox has private copies of every file. It keeps the
    /// checkpoint's address when that is free; when the source (or another resume) holds it,
    /// the guest is moved to a new address before it joins the bridge, so both run side by side.
    pub async fn resume_checkpoint(
        &self,
        checkpoint: &str,
        name: &str,
    ) -> Result<SandboxInfo, EngineError> {
        check_name("checkpoint", checkpoint)?;
        check_name("sandbox", name)?;
        let from = self.checkpoint_dir(checkpoint);
        let manifest = Manifest::read(&from)?;
        let old = manifest.sandbox.ip;
        let reservation = self.reserve(name, |pool| match pool.claim_free(old) {
            Ok(()) => Ok(old),
            Err(_) => pool.allocate().map_err(|e| refused(e.to_string())),
        })?;
        self.restore_from(&from, &manifest, name, &reservation).await?;
        reservation.keep();
        self.info(name)
    }

    async fn restore_from(
        &self,
        from: &Path,
        manifest: &Manifest,
        name: &str,
        reservation: &Reservation<'_>,
    ) -> Result<(), EngineError> {
        let record = &manifest.sandbox;
        let ip = reservation.ip;
        // Another address than the checkpoint's: the guest moves to it before joining the bridge.
        let moved_from = (ip != record.ip).then_some(record.ip);
        let dir = reservation.dir.clone();
        let mut pairs = vec![
            (from.join(STATE_FILE), dir.join(STATE_FILE)),
            (from.join(checkpoint::RAM_FILE), dir.join(checkpoint::RAM_FILE)),
            (from.join(vm::OVERLAY), dir.join(vm::OVERLAY)),
            (from.join(vm::CONFIG_DRIVE), dir.join(vm::CONFIG_DRIVE)),
        ];
        // The resumed sandbox gets private copies of the volumes as they were (v1 did too).
        let mut volumes = record.volumes.clone();
        for (i, volume) in volumes.iter_mut().enumerate() {
            let private = dir.join(checkpoint::volume_file(i));
            pairs.push((from.join(checkpoint::volume_file(i)), private.clone()));
            volume.path = private;
        }
        checkpoint::copy_files(pairs).await?;
        reservation.claim_volumes(&volumes)?;
        let mac = match moved_from {
            None => parse_mac(&record.mac)?,
            Some(_) => mac_for(ip),
        };
        let spec = self.boot_spec(
            &dir,
            &record.image,
            record.memory_mib,
            record.vcpus,
            record.guest_config(),
            &volumes,
            ip,
            mac,
        );
        let state = dir.join(STATE_FILE);
        let vm = {
            let _permit = self.boots.acquire().await.map_err(|_| super::shutting_down())?;
            match moved_from {
                None => vm::resume_from_disk(&self.ns, &spec, &state, None).await?,
                Some(old) => vm::resume_moved(&self.ns, &spec, &state, old).await?,
            }
        };
        self.adopt(name, spec, Some(vm), false);
        Ok(())
    }
}

/// Removes checkpoint staging directories a crash left (`<name>.tmp-*`).
pub(super) fn clean_staging(checkpoints: &Path) {
    let Ok(entries) = std::fs::read_dir(checkpoints) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().contains(".tmp-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
