//! The sandbox registry: create, find, list and destroy sandboxes on one network namespace.
//!
//! State lives in a `std::sync::Mutex` held only for map and pool updates, never across an
//! `.await`: operations take what they need (an `Arc` of the sandbox) and release the lock.
//! Boots are limited by a semaphore, so a burst of creates cannot start more emulated CPUs than
//! the machine can run.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agent::AgentClient;
use proto::guest::GuestConfig;
use tokio::sync::Semaphore;

use crate::error::EngineError;
use crate::ippool::{IpPool, Subnet};
use crate::net::Netns;
use crate::vm::{self, BootSpec, Vm};

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where sandbox directories live (`<data_dir>/sandboxes/<name>`).
    pub data_dir: PathBuf,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Network namespace name.
    pub netns: String,
    /// Bridge inside it.
    pub bridge: String,
    /// Guest subnet; the bridge takes its first address.
    pub subnet: Subnet,
    /// Accelerator request.
    pub accel: vmm::Accel,
    /// Boots (or restores) running at once.
    pub max_concurrent_boots: usize,
    /// How long a guest may take to answer after QEMU starts.
    pub ready_timeout: Duration,
}

/// What to create.
#[derive(Debug, Clone)]
pub struct CreateSpec {
    /// Unique name: lower-case letters, digits and `-`, at most 32 characters.
    pub name: String,
    /// Root filesystem image.
    pub image: PathBuf,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub vcpus: u8,
    /// Environment for every exec.
    pub env: BTreeMap<String, String>,
    /// Init script, run as the `init` session.
    pub init: String,
}

/// A sandbox's public facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxInfo {
    /// Name.
    pub name: String,
    /// Guest address.
    pub ip: Ipv4Addr,
    /// Its directory.
    pub dir: PathBuf,
}

struct Sandbox {
    info: SandboxInfo,
    /// The running VM; taken out on destroy.
    vm: Mutex<Option<Vm>>,
    client: Arc<AgentClient>,
}

/// The engine: one namespace, one bridge, many sandboxes.
pub struct Engine {
    config: EngineConfig,
    ns: Netns,
    pool: Mutex<IpPool>,
    sandboxes: Mutex<BTreeMap<String, Arc<Sandbox>>>,
    boots: Semaphore,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("netns", &self.config.netns).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a sandbox operation was refused.
fn refused(message: String) -> EngineError {
    EngineError::Refused(message)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
}

/// Sandboxes on disk when the engine starts were left by an engine that died: kill their QEMUs
/// (the TAPs vanish with them) and remove their directories. (Recovering them instead is the
/// store's job, once there is one.) Returns how many were removed.
fn clean_orphans(sandboxes_dir: &std::path::Path) -> Result<usize, EngineError> {
    let mut removed = 0;
    for entry in std::fs::read_dir(sandboxes_dir)?.flatten() {
        let dir = entry.path();
        if !dir.is_dir() {
            continue;
        }
        vm::kill_orphan(&dir);
        std::fs::remove_dir_all(&dir)?;
        removed += 1;
    }
    Ok(removed)
}

impl Engine {
    /// Sets up (idempotently) the namespace and bridge and an empty registry.
    pub async fn start(config: EngineConfig) -> Result<Self, EngineError> {
        let ns = Netns::create(&config.netns).await?;
        ns.setup_bridge(&config.bridge, config.subnet.gateway(), config.subnet.prefix()).await?;
        let sandboxes_dir = config.data_dir.join("sandboxes");
        std::fs::create_dir_all(&sandboxes_dir)?;
        let orphans = clean_orphans(&sandboxes_dir)?;
        if orphans > 0 {
            tracing::warn!("removed {orphans} sandboxes left by an earlier engine");
        }
        Ok(Self {
            pool: Mutex::new(IpPool::new(config.subnet)),
            sandboxes: Mutex::new(BTreeMap::new()),
            boots: Semaphore::new(config.max_concurrent_boots.max(1)),
            ns,
            config,
        })
    }

    /// The engine's network namespace.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// Creates a sandbox and returns once its agent answers. On failure nothing is left behind.
    pub async fn create(&self, spec: &CreateSpec) -> Result<SandboxInfo, EngineError> {
        if !valid_name(&spec.name) {
            return Err(refused(format!(
                "invalid sandbox name {:?}: use lower-case letters, digits and '-', at most 32",
                spec.name
            )));
        }
        let dir = self.config.data_dir.join("sandboxes").join(&spec.name);
        // Reserve the name and an address under the lock; boot outside it.
        let ip = {
            let sandboxes = lock(&self.sandboxes);
            if sandboxes.contains_key(&spec.name) || dir.exists() {
                return Err(refused(format!("sandbox {:?} already exists", spec.name)));
            }
            lock(&self.pool).allocate().map_err(|e| refused(e.to_string()))?
        };
        let result = self.boot_new(spec, ip, &dir).await;
        match result {
            Ok(sandbox) => {
                let info = sandbox.info.clone();
                lock(&self.sandboxes).insert(spec.name.clone(), Arc::new(sandbox));
                Ok(info)
            }
            Err(e) => {
                lock(&self.pool).release(ip);
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    async fn boot_new(
        &self,
        spec: &CreateSpec,
        ip: Ipv4Addr,
        dir: &std::path::Path,
    ) -> Result<Sandbox, EngineError> {
        std::fs::create_dir_all(dir)?;
        let octets = ip.octets();
        let boot = BootSpec {
            kernel: self.config.kernel.clone(),
            image: spec.image.clone(),
            dir: dir.to_owned(),
            memory_mib: spec.memory_mib,
            memory_file: Some(dir.join("ram")),
            vcpus: spec.vcpus,
            guest: GuestConfig {
                sandbox_id: spec.name.clone(),
                hostname: spec.name.clone(),
                token: crate::configdrive::random_token()?,
                env: spec.env.clone(),
                init: spec.init.clone(),
                ..Default::default()
            },
            ip,
            gateway: self.config.subnet.gateway(),
            bridge: self.config.bridge.clone(),
            // Unique per address, short enough for IFNAMSIZ.
            tap: format!("tap{}-{}", octets[2], octets[3]),
            mac: [0x52, 0x54, 0x00, octets[1], octets[2], octets[3]],
            accel: self.config.accel,
            ready_timeout: self.config.ready_timeout,
        };
        let vm = {
            let _permit = self
                .boots
                .acquire()
                .await
                .map_err(|_| refused("engine is shutting down".into()))?;
            vm::boot(&self.ns, &boot).await?
        };
        let client = Arc::clone(&vm.client);
        let info = SandboxInfo { name: spec.name.clone(), ip, dir: dir.to_owned() };
        Ok(Sandbox { info, vm: Mutex::new(Some(vm)), client })
    }

    /// The agent client of a sandbox.
    pub fn client(&self, name: &str) -> Result<Arc<AgentClient>, EngineError> {
        self.get(name).map(|s| Arc::clone(&s.client))
    }

    fn get(&self, name: &str) -> Result<Arc<Sandbox>, EngineError> {
        lock(&self.sandboxes)
            .get(name)
            .cloned()
            .ok_or_else(|| EngineError::NotFound(name.to_owned()))
    }

    /// Every sandbox, by name.
    pub fn list(&self) -> Vec<SandboxInfo> {
        lock(&self.sandboxes).values().map(|s| s.info.clone()).collect()
    }

    /// Destroys a sandbox: QEMU ends (its TAP vanishes with it), the address returns to the
    /// pool and the directory (disk overlay, RAM file, config drive, logs) is removed.
    pub async fn destroy(&self, name: &str) -> Result<(), EngineError> {
        let sandbox = lock(&self.sandboxes)
            .remove(name)
            .ok_or_else(|| EngineError::NotFound(name.to_owned()))?;
        let vm = lock(&sandbox.vm).take();
        if let Some(mut vm) = vm {
            vm.qemu.kill().await?;
        }
        lock(&self.pool).release(sandbox.info.ip);
        match std::fs::remove_dir_all(&sandbox.info.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
