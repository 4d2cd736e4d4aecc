//! Named checkpoints through the engine: capture, delete, and resume as a new sandbox.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use super::{
    Engine, Reservation, SandboxInfo, Shape, address_pool_exhausted, check_name, check_owner,
    mac_for, parse_mac,
};
use crate::checkpoint::{self, Captured, Manifest};
use crate::error::{EngineError, Resource, io_at};
use crate::events::EventKind;
use crate::layout::{CheckpointFiles, SandboxFiles};
use crate::owner::{Command, Identity};

impl Engine {
    /// Captures a running sandbox as the checkpoint `checkpoint` of its owner. The sandbox is
    /// paused only while its files are copied and keeps running (a warm one stays warm). A
    /// cold sandbox is refused.
    /// Returns what the capture made and cost.
    pub async fn checkpoint(&self, id: &str, checkpoint: &str) -> Result<Captured, EngineError> {
        check_name(Resource::Checkpoint, checkpoint)?;
        let owner = self.owner_of(id)?;
        let dest = self.layout.checkpoint(&owner, checkpoint);
        if dest.dir().exists() {
            return Err(EngineError::exists(Resource::Checkpoint, checkpoint));
        }
        // RAM copies and agent tokens live here: the owner's eyes only.
        let parent = self.layout.owner_checkpoints(&owner);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&parent)
            .map_err(io_at("creating", &parent))?;
        let handle = self.handle(id)?;
        let name = checkpoint.to_owned();
        handle.ask(id, |reply| Command::Checkpoint { dest, name, reply }).await?
    }

    /// Deletes a checkpoint of `owner`.
    pub fn delete_checkpoint(&self, owner: &str, checkpoint: &str) -> Result<(), EngineError> {
        check_owner(owner)?;
        check_name(Resource::Checkpoint, checkpoint)?;
        let files = self.layout.checkpoint(owner, checkpoint);
        if !files.dir().exists() {
            return Err(EngineError::not_found(Resource::Checkpoint, checkpoint));
        }
        std::fs::remove_dir_all(files.dir()).map_err(io_at("removing", files.dir()))
    }

    /// Removes every checkpoint directory (of any owner) that is not in `keep`, a set of
    /// `(owner, checkpoint)` names, staging directories aside (the engine's start removes
    /// those), and answers how many went. The caller's list is the truth about which
    /// checkpoints exist (the daemon's store); names, not paths, so a data directory that
    /// moved keeps its checkpoints. Runs at the daemon's start, on a blocking thread (large
    /// removals).
    pub fn remove_checkpoints_except(
        &self,
        keep: &std::collections::HashSet<(String, String)>,
    ) -> usize {
        let mut removed = 0;
        let Ok(owners) = std::fs::read_dir(self.layout.checkpoints()) else {
            return 0;
        };
        for owner in owners.flatten() {
            let owner_name = owner.file_name().to_string_lossy().into_owned();
            let Ok(entries) = std::fs::read_dir(owner.path()) else { continue };
            for entry in entries.flatten() {
                let (path, name) = (entry.path(), entry.file_name().to_string_lossy().into_owned());
                let staging = CheckpointFiles::is_staging(&name);
                if staging || keep.contains(&(owner_name.clone(), name)) || !path.is_dir() {
                    continue;
                }
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => removed += 1,
                    Err(e) => {
                        tracing::warn!(dir = %path.display(), "removing an orphan checkpoint: {e}")
                    }
                }
            }
        }
        removed
    }

    /// Forks a hot or warm sandbox into new sandboxes `ids` (same owner): each a copy-on-write
    /// clone of one capture, with the source's memory, processes, sessions and files, and a
    /// fresh identity (the clone contract, see [`Engine::create_from_checkpoint_of`]). The
    /// source is paused only for the capture (its device state saved, its RAM and disk overlay
    /// copied) and keeps its thermal state; a cold source is refused (wake it first). Clones
    /// are restored concurrently, bounded by the engine's boot permits. All or nothing: when
    /// one clone fails, those made are destroyed and the first error is the answer.
    /// The capture is an internal checkpoint, deleted once the clones run: their hard links
    /// keep the files they share.
    pub async fn fork(&self, id: &str, ids: &[String]) -> Result<Vec<SandboxInfo>, EngineError> {
        self.check_open()?;
        for new in ids {
            check_name(Resource::Sandbox, new)?;
        }
        let owner = self.owner_of(id)?;
        let key = self.fork_capture(id).await?;
        let clones = ids.iter().map(|new| self.create_from_checkpoint(&owner, &key, new));
        let results = futures_util::future::join_all(clones).await;
        self.fork_release(&owner, &key).await;
        let mut made = Vec::new();
        let mut failed = None;
        for (new, result) in ids.iter().zip(results) {
            match result {
                Ok(info) => made.push(info),
                Err(e) => {
                    tracing::warn!(sandbox = %new, source = %id, "a fork's clone failed: {}", e.report());
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failed {
            for info in &made {
                if let Err(undo) = self.destroy(&info.id).await {
                    tracing::error!(sandbox = %info.id, "undoing a fork: {}", undo.report());
                }
            }
            return Err(e);
        }
        Ok(made)
    }

    /// The capture of a fork: an internal checkpoint of `id` (a cold sandbox is refused),
    /// whose name is answered; resume clones of it with [`Engine::create_from_checkpoint`]
    /// and give it back with [`Engine::fork_release`].
    pub async fn fork_capture(&self, id: &str) -> Result<String, EngineError> {
        let key = format!("fork-{}", crate::configdrive::random_hex(8)?);
        self.checkpoint(id, &key).await?;
        Ok(key)
    }

    /// Removes a fork's capture (off the async threads). Its clones keep running: the files
    /// they share are hard links.
    pub async fn fork_release(&self, owner: &str, key: &str) {
        let files = self.layout.checkpoint(owner, key);
        let removed =
            tokio::task::spawn_blocking(move || std::fs::remove_dir_all(files.dir())).await;
        if let Ok(Err(e)) = removed {
            tracing::warn!(checkpoint = %key, "removing a fork's capture: {e}");
        }
    }

    /// Resumes the checkpoint `checkpoint` of `owner` as a new sandbox `id` (same owner), with
    /// the memory, processes and files of the moment it was taken; the new sandbox has private
    /// copies of every file. It keeps the checkpoint's address when that is free; when the
    /// source (or another resume) holds it, the guest is moved to a new address before it
    /// joins the bridge, so both run side by side.
    pub async fn create_from_checkpoint(
        &self,
        owner: &str,
        checkpoint: &str,
        id: &str,
    ) -> Result<SandboxInfo, EngineError> {
        self.create_from_checkpoint_of(owner, checkpoint, owner, id, None).await
    }

    /// Resumes the checkpoint `checkpoint` of `from_owner` as a new sandbox `id` of `owner`
    /// (a template snapshot is kept by the daemon and cloned for every user), as
    /// [`Engine::create_from_checkpoint`] does; `hostname`, when given, replaces the
    /// checkpoint's in the guest and the record.
    pub async fn create_from_checkpoint_of(
        &self,
        from_owner: &str,
        checkpoint: &str,
        owner: &str,
        id: &str,
        hostname: Option<&str>,
    ) -> Result<SandboxInfo, EngineError> {
        self.check_open()?;
        check_owner(from_owner)?;
        check_owner(owner)?;
        check_name(Resource::Checkpoint, checkpoint)?;
        check_name(Resource::Sandbox, id)?;
        if let Some(hostname) = hostname {
            super::check_hostname(hostname)?;
        }
        let from = self.layout.checkpoint(from_owner, checkpoint);
        let manifest = Manifest::read(&from, checkpoint)?;
        let old = manifest.sandbox.ip;
        let reservation = self.reserve(id, |pool| match pool.claim_free(old) {
            Ok(()) => Ok(old),
            Err(_) => pool.allocate().map_err(address_pool_exhausted),
        })?;
        let who = Identity { id: id.to_owned(), owner: owner.to_owned() };
        self.restore_from(&from, &manifest, who, &reservation, hostname).await?;
        reservation.keep();
        self.events.send(id, EventKind::Created);
        self.info(id)
    }

    async fn restore_from(
        &self,
        from: &CheckpointFiles,
        manifest: &Manifest,
        who: Identity,
        reservation: &Reservation<'_>,
        hostname: Option<&str>,
    ) -> Result<(), EngineError> {
        let record = &manifest.sandbox;
        let ip = reservation.ip;
        // Another address than the checkpoint's: the guest moves to it before joining the bridge.
        let moved_from = (ip != record.ip).then_some(record.ip);
        let files: SandboxFiles = reservation.files.clone();
        // Copy-on-write: the RAM is the checkpoint's file, linked and mapped privately; the
        // disk a new overlay over a link of the checkpoint's (and the links of its own chain).
        // Links keep the files alive when the checkpoint is deleted. Only the device state
        // (consumed by the restore), the config drive and the volumes are copied.
        let t0 = std::time::Instant::now();
        let mut pairs =
            vec![(from.state(), files.state()), (from.config_drive(), files.config_drive())];
        checkpoint::link_shared(&from.ram(), &files.base_ram()).await?;
        let depth = crate::layout::layer_count(|i| from.layer(i));
        checkpoint::link_layers(depth, |i| from.layer(i), |i| files.layer(i)).await?;
        checkpoint::link_shared(&from.overlay(), &files.layer(depth)).await?;
        let backing = files.layer(depth);
        let backing_name = backing.file_name().map(std::ffi::OsStr::to_owned).unwrap_or_default();
        crate::run::run(
            tokio::process::Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
                .arg(&backing_name)
                .arg(files.overlay()),
            std::time::Duration::from_secs(30),
        )
        .await?;
        // The resumed sandbox gets private copies of the volumes as they were (v1 did too);
        // they live in its directory, as scratch volumes do.
        let mut volumes = record.volumes.clone();
        for (i, volume) in volumes.iter_mut().enumerate() {
            let private = files.scratch(i);
            pairs.push((from.volume(i), private.clone()));
            volume.path = private;
        }
        checkpoint::copy_files(pairs).await?;
        tracing::debug!(sandbox = %who.id, took = ?t0.elapsed(), depth, "clone's files");
        reservation.claim_volumes(&volumes)?;
        let mac = match moved_from {
            None => parse_mac(&record.mac)?,
            Some(_) => mac_for(ip),
        };
        let shape = Shape {
            image: &record.image,
            memory_mib: record.memory_mib,
            vcpus: record.vcpus,
            cpu_millis: record.cpu_millis,
            disk_size_mib: record.disk_size_mib,
            volumes: &volumes,
            ip,
            mac,
        };
        let mut spec = self.boot_spec(files, shape, crate::record::guest_config(record));
        spec.memory_private = true;
        spec.memory_file = Some(spec.files.base_ram());
        crate::isolation::admit(&self.ns, &self.port(&who.owner, &spec)).await?;
        // The checkpointed sandbox's policy comes with it.
        self.policies.admit(&spec.tap, ip, super::recorded_policy(record)).await?;
        let state = spec.files.state();
        let mut vm = {
            let _permit = self.boots.acquire().await.map_err(|_| EngineError::ShuttingDown)?;
            self.check_open()?;
            match moved_from {
                None => self.backend.restore(&self.ns, &spec, &state, None).await?,
                Some(old) => self.backend.restore_moved(&self.ns, &spec, &state, old).await?,
            }
        };
        // A resumed checkpoint is a new sandbox: its agent stops answering to the source's
        // token (which the source, and every other resume of the checkpoint, still holds).
        // The record, the config drive of a later boot and every later client use the new one.
        // The clone contract: a new token, hostname and machine-id, host entropy for the
        // guest's RNG (two clones of one checkpoint must never draw the same bytes), and the
        // guest's established connections to the outside reset (their peers knew the source).
        // The clock was corrected by the restore.
        let token = crate::configdrive::random_token()?;
        // A new hostname always: the caller's, else the new sandbox's ID.
        let hostname = match hostname {
            Some(name) => Some(name.to_owned()),
            None => super::check_hostname(&who.id).ok().map(|()| who.id.clone()),
        };
        let renew = proto::messages::SetIdentity {
            token: Some(token.clone()),
            hostname: hostname.clone(),
            machine_id: Some(crate::configdrive::random_hex(16)?),
            entropy: Some(crate::configdrive::random_hex(64)?),
            reset_connections: true,
        };
        match vm.client().set_identity(&renew).await {
            Ok(()) => {
                spec.guest.token = token;
                if let Some(hostname) = hostname {
                    spec.guest.hostname = hostname;
                }
                vm.set_client(self.backend.agent_client(&self.ns, &spec));
            }
            // An image whose lohar predates SET_IDENTITY (imported or built before it) cannot
            // renew: the clone keeps the source's token, as v1's did, rather than fail.
            Err(e) if e.kind() == agent::AgentErrorKind::Unsupported => {
                tracing::warn!(
                    sandbox = %who.id,
                    "the image's agent cannot renew its token (an older lohar): the resumed \
                     sandbox keeps its source's"
                );
            }
            Err(e) => return Err(e.into()),
        }
        self.adopt(who, spec, Some(vm), false);
        Ok(())
    }
}

/// Removes checkpoint staging directories a crash left (`<name>.tmp-*`), under every owner.
pub(super) fn clean_staging(checkpoints: &Path) {
    let Ok(owners) = std::fs::read_dir(checkpoints) else {
        return;
    };
    for owner in owners.flatten() {
        let Ok(entries) = std::fs::read_dir(owner.path()) else { continue };
        for entry in entries.flatten() {
            if CheckpointFiles::is_staging(&entry.file_name().to_string_lossy()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}
