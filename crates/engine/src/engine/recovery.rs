//! Starting an engine: the namespace, one engine per data directory, sandboxes brought back from
//! stored records, and what a crashed engine left behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use super::{Engine, EngineConfig, check_name, check_socket_room, lock, parse_mac, refused};
use crate::checkpoint;
use crate::error::EngineError;
use crate::ippool::IpPool;
use crate::net::Netns;
use crate::sandbox::STATE_FILE;
use crate::state::{SandboxRecord, Thermal};
use crate::vm;
use crate::volume::Claims;

/// Takes the data directory's lock file, so two engines never share one data directory (the
/// second would take the first's sandboxes for orphans and remove them).
fn lock_data_dir(data_dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, EngineError> {
    std::fs::create_dir_all(data_dir)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(data_dir.join("engine.lock"))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
        refused(format!("data directory {} is in use by another engine", data_dir.display()))
    })
}

/// Sandbox directories that no record names were left by an engine that died before its store
/// knew them: kill their QEMUs (the TAPs vanish with them) and remove them.
fn clean_orphans(sandboxes_dir: &Path, keep: &[PathBuf]) -> Result<usize, EngineError> {
    let mut removed = 0;
    for entry in std::fs::read_dir(sandboxes_dir)?.flatten() {
        let dir = entry.path();
        let canonical = dir.canonicalize().unwrap_or_else(|_| dir.clone());
        if !dir.is_dir() || keep.contains(&canonical) {
            continue;
        }
        vm::kill_orphan(&dir);
        // One directory that will not go must not keep the engine from starting.
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!("removing orphan {}: {e}", dir.display()),
        }
    }
    Ok(removed)
}

impl Engine {
    /// Like [`Engine::new`], and brings back the sandboxes of `records` (from the store) as
    /// cold sandboxes: one whose state was saved wakes with its memory, one that was running
    /// when the daemon died (its QEMU is killed) boots again from its disk. Records that cannot
    /// be recovered are returned with the reason; their directories are kept (a subnet change
    /// must not delete disks), only directories no record names are removed.
    pub async fn new_recovering(
        config: EngineConfig,
        records: Vec<SandboxRecord>,
    ) -> Result<(Self, Vec<(String, EngineError)>), EngineError> {
        check_socket_room(&config.data_dir)?;
        let data_lock = lock_data_dir(&config.data_dir)?;
        let ns = Netns::create(&config.netns).await?;
        ns.setup_bridge(&config.bridge, config.subnet.gateway(), config.subnet.prefix()).await?;
        // The namespace outlives the engine: egress from an earlier configuration is undone.
        match &config.egress {
            Some(egress) => crate::egress::enable(&ns, config.subnet, egress).await?,
            None => crate::egress::disable_any(&ns).await?,
        }
        let sandboxes_dir = config.data_dir.join("sandboxes");
        std::fs::create_dir_all(&sandboxes_dir)?;
        super::checkpoints::clean_staging(&config.data_dir.join("checkpoints"));
        let engine = Self {
            pool: Arc::new(Mutex::new(IpPool::new(config.subnet))),
            sandboxes: Mutex::new(BTreeMap::new()),
            claims: Arc::new(Mutex::new(Claims::default())),
            boots: Arc::new(Semaphore::new(config.max_concurrent_boots.max(1))),
            data_lock: Some(data_lock),
            ns,
            config,
        };
        // Every directory a record names is kept, however the record spells it: the path it
        // stored and the one its name gives here (the data directory may be reached another way).
        let keep: Vec<PathBuf> = records
            .iter()
            .flat_map(|r| {
                let by_name = super::valid_name(&r.name).then(|| sandboxes_dir.join(&r.name));
                [Some(r.dir.clone()), by_name].into_iter().flatten()
            })
            .map(|p| p.canonicalize().unwrap_or(p))
            .collect();
        let mut failed = Vec::new();
        for record in records {
            let name = record.name.clone();
            if let Err(e) = engine.recover(record) {
                tracing::warn!(sandbox = %name, "not recovered: {e}");
                failed.push((name, e));
            }
        }
        let orphans = clean_orphans(&sandboxes_dir, &keep)?;
        if orphans > 0 {
            tracing::warn!("removed {orphans} sandboxes left by an earlier engine");
        }
        Ok((engine, failed))
    }

    fn recover(&self, record: SandboxRecord) -> Result<(), EngineError> {
        check_name("sandbox", &record.name)?;
        let expected = self.config.data_dir.join("sandboxes").join(&record.name);
        if record.dir != expected || !record.dir.join(vm::OVERLAY).exists() {
            return Err(refused(format!("sandbox {:?}: its disk is missing", record.name)));
        }
        if lock(&self.sandboxes).contains_key(&record.name) {
            return Err(refused(format!("sandbox {:?} is recorded twice", record.name)));
        }
        // A QEMU left running by a dead daemon cannot be adopted (its QMP client is gone with
        // the daemon); what it wrote to the disk stays, its memory is lost.
        vm::kill_orphan(&record.dir);
        // A restore consumes the state file, so one that is still there was never woken from.
        let snapshot = record.snapshot
            && record.thermal == Thermal::Cold
            && record.dir.join(STATE_FILE).exists()
            && record.dir.join(checkpoint::RAM_FILE).exists();
        let mac = parse_mac(&record.mac)?;
        lock(&self.pool).claim_free(record.ip).map_err(|e| refused(e.to_string()))?;
        let claimed = lock(&self.claims).claim(&record.name, &record.volumes);
        if let Err(e) = claimed {
            lock(&self.pool).release(record.ip);
            return Err(e);
        }
        let spec = self.boot_spec(
            &record.dir,
            &record.image,
            record.memory_mib,
            record.vcpus,
            record.guest_config(),
            &record.volumes,
            record.ip,
            mac,
        );
        self.adopt(&record.name, spec, None, snapshot);
        Ok(())
    }
}
