//! Starting an engine: the namespace, one engine per data directory, sandboxes brought back from
//! stored records, and what a crashed engine left behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use super::{
    Engine, EngineConfig, Shape, check_name, check_owner, check_socket_room, lock, parse_mac,
};
use crate::error::{EngineError, Resource, io_at};
use crate::events::Events;
use crate::ippool::IpPool;
use crate::layout::{DataDir, SandboxFiles};
use crate::machine::Backend;
use crate::net::Netns;
use crate::owner::Identity;
use crate::record::SandboxRecord;
use crate::thermal::Thermal;
use crate::volume::Claims;

/// Takes the data directory's lock file, so two engines never share one data directory (the
/// second would take the first's sandboxes for orphans and remove them).
fn lock_data_dir(layout: &DataDir) -> Result<nix::fcntl::Flock<std::fs::File>, EngineError> {
    std::fs::create_dir_all(layout.root()).map_err(io_at("creating", layout.root()))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(layout.lock_file())
        .map_err(io_at("opening", layout.lock_file()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
        EngineError::invalid(format!(
            "data directory {} is in use by another engine",
            layout.root().display()
        ))
    })
}

/// Sandbox directories that no record names were left by an engine that died before its store
/// knew them: kill their QEMUs (the TAPs vanish with them) and remove them. Blocking: runs on
/// a blocking thread.
fn clean_orphans(
    backend: &dyn Backend,
    sandboxes_dir: &Path,
    keep: &[PathBuf],
) -> Result<usize, EngineError> {
    let mut removed = 0;
    for entry in
        std::fs::read_dir(sandboxes_dir).map_err(io_at("listing", sandboxes_dir))?.flatten()
    {
        let dir = entry.path();
        let canonical = dir.canonicalize().unwrap_or_else(|_| dir.clone());
        if !dir.is_dir() || keep.contains(&canonical) {
            continue;
        }
        backend.kill_orphan(&SandboxFiles::new(&dir));
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
    /// be recovered are returned with the reason (by sandbox ID); their directories are kept (a
    /// subnet change must not delete disks), only directories no record names are removed.
    pub async fn new_recovering(
        config: EngineConfig,
        records: Vec<SandboxRecord>,
    ) -> Result<(Self, Vec<(String, EngineError)>), EngineError> {
        let layout = DataDir::new(config.data_dir.clone());
        check_socket_room(&layout)?;
        let data_lock = lock_data_dir(&layout)?;
        let ns = Netns::create(&config.netns).await?;
        ns.setup_bridge(&config.bridge, config.subnet.gateway(), config.subnet.prefix()).await?;
        // The namespace outlives the engine: egress from an earlier configuration is undone.
        match &config.egress {
            Some(egress) => crate::egress::enable(&ns, config.subnet, egress).await?,
            None => crate::egress::disable_any(&ns).await?,
        }
        let sandboxes_dir = layout.sandboxes();
        std::fs::create_dir_all(&sandboxes_dir).map_err(io_at("creating", &sandboxes_dir))?;
        super::checkpoints::clean_staging(&layout.checkpoints());
        // The VMM (QEMU) behind the machine interface; its host probes run once, off the async
        // threads, before the first boot needs them (a host without QEMU's files for the jails
        // fails here, not at the first create).
        let backend: Arc<dyn Backend> = Arc::new(crate::vm::Qemu::new(crate::vm::PoolConfig {
            capacity: config.restore_pool,
            ttl: config.restore_pool_ttl,
        }));
        let probe = Arc::clone(&backend);
        let confine = config.confine;
        tokio::task::spawn_blocking(move || probe.prepare_host(confine)).await??;
        let engine = Self {
            pool: Arc::new(Mutex::new(IpPool::new(config.subnet))),
            sandboxes: Mutex::new(BTreeMap::new()),
            creating: Mutex::new(BTreeMap::new()),
            claims: Arc::new(Mutex::new(Claims::default())),
            boots: Arc::new(Semaphore::new(config.max_concurrent_boots.max(1))),
            backend,
            events: Events::new(),
            groups: Mutex::new(BTreeMap::new()),
            policies: Arc::new(crate::netpolicy::Policies::new(ns.clone())),
            resolver: Mutex::new(None),
            closing: AtomicBool::new(false),
            data_lock: Some(data_lock),
            ns,
            layout,
            config,
        };
        // Every directory a record names is kept, however the record spells it: the path it
        // stored and the one its ID gives here (the data directory may be reached another way).
        let keep: Vec<PathBuf> = records
            .iter()
            .flat_map(|r| {
                let by_id =
                    super::valid_id(&r.id).then(|| engine.layout.sandbox(&r.id).dir().to_owned());
                [Some(r.dir.clone()), by_id].into_iter().flatten()
            })
            .map(|p| p.canonicalize().unwrap_or(p))
            .collect();
        let mut failed = Vec::new();
        for record in records {
            let id = record.id.clone();
            let dir = engine.layout.sandbox(&id);
            let backend = Arc::clone(&engine.backend);
            let recovered = tokio::task::spawn_blocking(move || {
                // A QEMU left running by a dead daemon cannot be adopted (its QMP client is
                // gone with the daemon); what it wrote to the disk stays, its memory is lost.
                backend.kill_orphan(&dir);
            })
            .await
            .map_err(EngineError::from)
            .and_then(|()| engine.recover(record));
            if let Err(e) = recovered {
                tracing::warn!(sandbox = %id, "not recovered: {}", e.report());
                failed.push((id, e));
            }
        }
        // The filter is replaced whole, with the recovered sandboxes' ports already admitted:
        // none of them is ever unfiltered, and ports an earlier engine left are gone.
        let ports: Vec<_> = lock(&engine.sandboxes)
            .values()
            .map(|entry| (entry.who.owner.clone(), entry.ip, entry.mac))
            .collect();
        let ports: Vec<_> = ports
            .into_iter()
            .map(|(owner, ip, mac)| crate::isolation::Port {
                tap: super::tap_name(ip),
                mac,
                ip,
                group: engine.group_of(&owner),
            })
            .collect();
        crate::isolation::install(&engine.ns, &engine.config.bridge, engine.config.subnet, &ports)
            .await?;
        // The same for the egress filter: the recovered sandboxes' policies are in it from the
        // first moment.
        let extra: Vec<_> = engine.config.egress.iter().filter_map(|e| e.link).collect();
        let rules = engine.policies.all_rules();
        crate::egress_filter::install(
            &engine.ns,
            &engine.config.bridge,
            engine.config.subnet,
            &extra,
            &rules,
        )
        .await?;
        if let Some(resolver) = &engine.config.resolver {
            let sockets = match &resolver.upstream_netns {
                None => crate::dns::SocketSource::Here,
                Some(name) => crate::dns::SocketSource::netns(&Netns::create(name).await?)
                    .map_err(|source| EngineError::Net {
                        op: format!("make DNS sockets in namespace {name}"),
                        source,
                    })?,
            };
            let upstreams = crate::dns::Upstreams { servers: resolver.upstreams.clone(), sockets };
            let mut never = extra.clone();
            never.push(engine.config.subnet.cidr());
            let gateway = engine.config.subnet.gateway();
            let started = crate::dns::Resolver::start(
                &engine.ns,
                gateway,
                Arc::clone(&engine.policies),
                upstreams,
                never,
            )
            .await
            .map_err(|source| EngineError::Net {
                op: format!("listen for DNS on {gateway}:53"),
                source,
            })?;
            *lock(&engine.resolver) = Some(started);
        }
        let backend = Arc::clone(&engine.backend);
        let orphans =
            tokio::task::spawn_blocking(move || clean_orphans(&*backend, &sandboxes_dir, &keep))
                .await??;
        if orphans > 0 {
            tracing::warn!("removed {orphans} sandboxes left by an earlier engine");
        }
        if engine.config.confine {
            let (netns, backend) = (engine.config.netns.clone(), Arc::clone(&engine.backend));
            let swept = tokio::task::spawn_blocking(move || backend.sweep_leftovers(&netns))
                .await
                .unwrap_or(0);
            if swept > 0 {
                tracing::info!("removed {swept} cgroups left by an earlier engine");
            }
        }
        Ok((engine, failed))
    }

    fn recover(&self, record: SandboxRecord) -> Result<(), EngineError> {
        check_name(Resource::Sandbox, &record.id)?;
        check_owner(&record.owner)?;
        let files = self.layout.sandbox(&record.id);
        if record.dir != files.dir() || !files.overlay().exists() {
            return Err(EngineError::not_found(Resource::Sandbox, &record.id));
        }
        if lock(&self.sandboxes).contains_key(&record.id) {
            return Err(EngineError::exists(Resource::Sandbox, &record.id));
        }
        // A restore consumes the state file, so one that is still there was never woken from.
        let ram = if record.memory_private { files.base_ram() } else { files.ram() };
        let snapshot = record.snapshot
            && record.thermal == Thermal::Cold
            && files.state().exists()
            && ram.exists();
        let mac = parse_mac(&record.mac)?;
        lock(&self.pool).claim_free(record.ip).map_err(super::address_pool_exhausted)?;
        let claimed = lock(&self.claims).claim(&record.id, &record.volumes);
        if let Err(e) = claimed {
            lock(&self.pool).release(record.ip);
            return Err(e);
        }
        let shape = Shape {
            image: &record.image,
            memory_mib: record.memory_mib,
            vcpus: record.vcpus,
            cpu_millis: record.cpu_millis,
            disk_size_mib: record.disk_size_mib,
            volumes: &record.volumes,
            ip: record.ip,
            mac,
        };
        let mut spec = self.boot_spec(files, shape, crate::record::guest_config(&record));
        if record.memory_private && snapshot {
            spec.memory_private = true;
            spec.memory_file = Some(spec.files.base_ram());
        }
        self.policies.remember(&spec.tap, record.ip, super::recorded_policy(&record));
        let who = Identity { id: record.id.clone(), owner: record.owner.clone() };
        self.adopt(who, spec, None, snapshot);
        Ok(())
    }
}
