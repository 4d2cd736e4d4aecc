//! The sandbox registry: create, find, list and destroy sandboxes on one network namespace.
//!
//! The registry lives in a `std::sync::Mutex` held only for map and pool updates, never across
//! an `.await`: operations clone the sandbox's handle and release the lock. Each sandbox has an
//! owner task (`sandbox.rs`) that alone changes its thermal state; guest operations take a lease
//! from it (waking the sandbox if needed) and then talk to the agent directly. Boots and restores
//! are limited by one semaphore, so a burst of creates and wakes cannot start more emulated CPUs
//! than the machine can run.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agent::{
    DetachedExec, ExecOutput, ExecRequest, ExecStream, FileContent, FileInfo, ReadOptions, Session,
    SessionInfo, Stream,
};
use proto::guest::{GuestConfig, GuestVolume};
use tokio::sync::Semaphore;

use crate::checkpoint::{self, Manifest};
use crate::error::EngineError;
use crate::ippool::{IpPool, Subnet};
use crate::net::Netns;
use crate::sandbox::{self, Activity, Command, Handle, Lease, Leased, STATE_FILE};
pub use crate::spec::CreateSpec;
use crate::state::{SandboxRecord, Thermal};
use crate::vm::{self, BootSpec, Suspended, VolumeDisk};
use crate::volume::VolumeMount;

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
    /// Deadline of a buffered exec unless the caller gives one.
    pub exec_timeout: Duration,
    /// Egress NAT out of the namespace; `None` keeps guests off any outside network.
    pub egress: Option<crate::egress::Egress>,
    /// Name servers written to the guests' resolv.conf (useful with egress).
    pub dns: Vec<Ipv4Addr>,
}

impl EngineConfig {
    /// Defaults for everything but where files live and which kernel boots.
    pub fn new(data_dir: PathBuf, kernel: PathBuf) -> Self {
        Self {
            data_dir,
            kernel,
            netns: "bhatti".into(),
            bridge: "br0".into(),
            subnet: Subnet::DEFAULT,
            accel: vmm::Accel::Auto,
            max_concurrent_boots: 2,
            ready_timeout: Duration::from_secs(60),
            exec_timeout: Duration::from_secs(600),
            egress: None,
            dns: Vec::new(),
        }
    }
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
    /// Thermal state now.
    pub thermal: Thermal,
}

struct Entry {
    name: String,
    ip: Ipv4Addr,
    dir: PathBuf,
    /// Volume files attached read-write (a second writer would corrupt them).
    writable_volumes: Vec<PathBuf>,
    handle: Handle,
}

impl Entry {
    fn info(&self) -> SandboxInfo {
        SandboxInfo {
            name: self.name.clone(),
            ip: self.ip,
            dir: self.dir.clone(),
            thermal: self.handle.shared.thermal(),
        }
    }
}

/// The engine: one namespace, one bridge, many sandboxes.
pub struct Engine {
    config: EngineConfig,
    ns: Netns,
    pool: Mutex<IpPool>,
    sandboxes: Mutex<BTreeMap<String, Entry>>,
    boots: Arc<Semaphore>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("netns", &self.config.netns).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn refused(message: String) -> EngineError {
    EngineError::Refused(message)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
}

fn check_name(what: &str, name: &str) -> Result<(), EngineError> {
    if valid_name(name) {
        return Ok(());
    }
    Err(refused(format!(
        "invalid {what} name {name:?}: use lower-case letters, digits and '-', at most 32"
    )))
}

/// Sandbox directories on disk that no record claims were left by an engine that died: kill
/// their QEMUs (the TAPs vanish with them) and remove them. Returns how many were removed.
fn clean_orphans(sandboxes_dir: &Path, keep: &[&Path]) -> Result<usize, EngineError> {
    let mut removed = 0;
    for entry in std::fs::read_dir(sandboxes_dir)?.flatten() {
        let dir = entry.path();
        if !dir.is_dir() || keep.contains(&dir.as_path()) {
            continue;
        }
        vm::kill_orphan(&dir);
        std::fs::remove_dir_all(&dir)?;
        removed += 1;
    }
    Ok(removed)
}

/// Volumes per sandbox (devices vdc..vdv).
const MAX_VOLUMES: usize = 20;

/// Longest Unix socket path (`sun_path` holds 108 bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Every sandbox's QMP socket lives at `<data_dir>/sandboxes/<name>/qmp.sock`; refuse a data
/// directory so deep that the longest name would not fit, instead of failing at some create.
fn check_socket_room(data_dir: &Path) -> Result<(), EngineError> {
    let longest = data_dir.join("sandboxes").join("x".repeat(32)).join("qmp.sock");
    let len = longest.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(refused(format!(
            "data directory {} is too deep: sandbox sockets would be {len} bytes long (max \
             {MAX_SOCKET_PATH}); use a shorter path",
            data_dir.display()
        )));
    }
    Ok(())
}

/// The TAP of a guest address: unique per address and short enough for IFNAMSIZ.
fn tap_name(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("tap{}-{}", o[2], o[3])
}

/// The MAC of a guest address (locally administered QEMU prefix).
fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x52, 0x54, 0x00, o[1], o[2], o[3]]
}

fn parse_mac(text: &str) -> Result<[u8; 6], EngineError> {
    let bytes: Vec<u8> = text.split(':').filter_map(|b| u8::from_str_radix(b, 16).ok()).collect();
    bytes.try_into().map_err(|_| refused(format!("bad MAC {text:?}")))
}

impl Engine {
    /// Sets up (idempotently) the namespace and bridge and an empty registry; removes what a
    /// crashed engine left.
    pub async fn new(config: EngineConfig) -> Result<Self, EngineError> {
        let (engine, _) = Self::new_recovering(config, Vec::new()).await?;
        Ok(engine)
    }

    /// Like [`Engine::new`], and brings back the sandboxes of `records` (from the store) as
    /// cold sandboxes: one whose state was saved wakes with its memory, one that was running
    /// when the daemon died (its QEMU is killed) boots again from its disk. Records that cannot
    /// be recovered are returned with the reason; their directories are removed.
    pub async fn new_recovering(
        config: EngineConfig,
        records: Vec<SandboxRecord>,
    ) -> Result<(Self, Vec<(String, EngineError)>), EngineError> {
        check_socket_room(&config.data_dir)?;
        let ns = Netns::create(&config.netns).await?;
        ns.setup_bridge(&config.bridge, config.subnet.gateway(), config.subnet.prefix()).await?;
        if let Some(egress) = &config.egress {
            crate::egress::enable(&ns, config.subnet, egress).await?;
        }
        let sandboxes_dir = config.data_dir.join("sandboxes");
        std::fs::create_dir_all(&sandboxes_dir)?;
        let engine = Self {
            pool: Mutex::new(IpPool::new(config.subnet)),
            sandboxes: Mutex::new(BTreeMap::new()),
            boots: Arc::new(Semaphore::new(config.max_concurrent_boots.max(1))),
            ns,
            config,
        };
        let mut failed = Vec::new();
        for record in records {
            let name = record.name.clone();
            if let Err(e) = engine.recover(record) {
                failed.push((name, e));
            }
        }
        let keep: Vec<PathBuf> = lock(&engine.sandboxes).values().map(|e| e.dir.clone()).collect();
        let keep: Vec<&Path> = keep.iter().map(PathBuf::as_path).collect();
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
        // A QEMU left running by a dead daemon cannot be adopted (its QMP client is gone with
        // the daemon); what it wrote to the disk stays, its memory is lost.
        vm::kill_orphan(&record.dir);
        let snapshot = record.snapshot
            && record.thermal == Thermal::Cold
            && record.dir.join(STATE_FILE).exists()
            && record.dir.join(checkpoint::RAM_FILE).exists();
        let mac = parse_mac(&record.mac)?;
        lock(&self.pool).claim_free(record.ip).map_err(|e| refused(e.to_string()))?;
        let spec = self.boot_spec(
            &record.dir,
            &record.image,
            record.memory_mib,
            record.vcpus,
            GuestConfig {
                sandbox_id: record.name.clone(),
                hostname: record.name.clone(),
                token: record.token.clone(),
                env: record.env.clone(),
                init: record.init.clone(),
                ..Default::default()
            },
            &record.volumes,
            record.ip,
            mac,
        );
        let client = vm::agent_client(&self.ns, &spec);
        let handle = sandbox::spawn(
            record.name.clone(),
            self.ns.clone(),
            spec,
            None,
            client,
            snapshot,
            Arc::clone(&self.boots),
        );
        self.register(&record.name, record.ip, record.dir.clone(), &record.volumes, handle);
        Ok(())
    }

    fn register(
        &self,
        name: &str,
        ip: Ipv4Addr,
        dir: PathBuf,
        volumes: &[VolumeMount],
        handle: Handle,
    ) {
        let writable_volumes =
            volumes.iter().filter(|v| !v.read_only).map(|v| v.path.clone()).collect();
        let entry = Entry { name: name.to_owned(), ip, dir, writable_volumes, handle };
        lock(&self.sandboxes).insert(name.to_owned(), entry);
    }

    /// The engine's network namespace.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// Where the volume called `name` lives.
    pub fn volume_path(&self, name: &str) -> PathBuf {
        self.config.data_dir.join("volumes").join(format!("{name}.ext4"))
    }

    /// Creates the persistent volume `name` (an ext4 image of `size_mib`).
    pub async fn create_volume(&self, name: &str, size_mib: u32) -> Result<PathBuf, EngineError> {
        check_name("volume", name)?;
        let path = self.volume_path(name);
        crate::volume::create(&path, size_mib).await?;
        Ok(path)
    }

    /// Deletes a volume that no sandbox has attached.
    pub fn delete_volume(&self, name: &str) -> Result<(), EngineError> {
        check_name("volume", name)?;
        let path = self.volume_path(name);
        if self.volume_users(&path) > 0 {
            return Err(refused(format!("volume {name:?} is attached")));
        }
        std::fs::remove_file(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => EngineError::NotFound(format!("volume {name}")),
            _ => e.into(),
        })
    }

    fn volume_users(&self, path: &Path) -> usize {
        lock(&self.sandboxes)
            .values()
            .filter(|e| e.writable_volumes.iter().any(|v| v == path))
            .count()
    }

    #[allow(clippy::too_many_arguments)]
    fn boot_spec(
        &self,
        dir: &Path,
        image: &Path,
        memory_mib: u32,
        vcpus: u8,
        mut guest: GuestConfig,
        volumes: &[VolumeMount],
        ip: Ipv4Addr,
        mac: [u8; 6],
    ) -> BootSpec {
        guest.dns = self.config.dns.iter().map(Ipv4Addr::to_string).collect();
        guest.volumes = volumes
            .iter()
            .enumerate()
            .map(|(i, v)| GuestVolume {
                device: vm::guest_device(i),
                mount: v.mount.clone(),
                fs: "ext4".into(),
                read_only: v.read_only,
            })
            .collect();
        BootSpec {
            kernel: self.config.kernel.clone(),
            image: image.to_owned(),
            dir: dir.to_owned(),
            memory_mib,
            memory_file: Some(dir.join(checkpoint::RAM_FILE)),
            vcpus,
            guest,
            volumes: volumes
                .iter()
                .map(|v| VolumeDisk { path: v.path.clone(), read_only: v.read_only })
                .collect(),
            ip,
            gateway: self.config.subnet.gateway(),
            prefix: self.config.subnet.prefix(),
            bridge: self.config.bridge.clone(),
            tap: tap_name(ip),
            mac,
            accel: self.config.accel,
            ready_timeout: self.config.ready_timeout,
        }
    }

    fn check_volumes(&self, volumes: &[VolumeMount]) -> Result<(), EngineError> {
        for (i, v) in volumes.iter().enumerate() {
            v.validate()?;
            if volumes[..i].iter().any(|o| o.path == v.path || o.mount == v.mount) {
                return Err(refused(format!("volume {} is listed twice", v.path.display())));
            }
            if !v.read_only && self.volume_users(&v.path) > 0 {
                return Err(refused(format!(
                    "volume {} is attached read-write to another sandbox",
                    v.path.display()
                )));
            }
        }
        if volumes.len() > MAX_VOLUMES {
            return Err(refused("at most 20 volumes per sandbox".into()));
        }
        Ok(())
    }

    /// Creates a sandbox and returns once its agent answers. On failure nothing is left behind.
    pub async fn create(&self, spec: &CreateSpec) -> Result<SandboxInfo, EngineError> {
        check_name("sandbox", &spec.name)?;
        if spec.vcpus == 0 || spec.memory_mib < 64 {
            return Err(refused("a sandbox needs at least 1 vCPU and 64 MiB".into()));
        }
        if !spec.image.is_file() {
            return Err(refused(format!("image {} does not exist", spec.image.display())));
        }
        self.check_volumes(&spec.volumes)?;
        let dir = self.config.data_dir.join("sandboxes").join(&spec.name);
        // Scratch volumes live in the sandbox's directory and go with it.
        let scratch: Vec<(VolumeMount, u32)> = spec
            .scratch_volumes
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let path = dir.join(format!("scratch{i}.ext4"));
                (VolumeMount { path, mount: v.mount.clone(), read_only: false }, v.size_mib)
            })
            .collect();
        let mut volumes = spec.volumes.clone();
        if volumes.len() + scratch.len() > MAX_VOLUMES {
            return Err(refused(format!("at most {MAX_VOLUMES} volumes per sandbox")));
        }
        for (volume, _) in &scratch {
            volume.validate_mount()?;
            if volumes.iter().any(|v| v.mount == volume.mount) {
                return Err(refused(format!("two volumes are mounted at {}", volume.mount)));
            }
            volumes.push(volume.clone());
        }
        // Reserve the name and an address under the lock; boot outside it.
        let ip = {
            let sandboxes = lock(&self.sandboxes);
            if sandboxes.contains_key(&spec.name) || dir.exists() {
                return Err(refused(format!("sandbox {:?} already exists", spec.name)));
            }
            lock(&self.pool).allocate().map_err(|e| refused(e.to_string()))?
        };
        let guest = GuestConfig {
            sandbox_id: spec.name.clone(),
            hostname: spec.name.clone(),
            token: crate::configdrive::random_token()?,
            env: spec.env.clone(),
            init: spec.init.clone(),
            files: spec.files.clone(),
            ..Default::default()
        };
        let boot = self.boot_spec(
            &dir,
            &spec.image,
            spec.memory_mib,
            spec.vcpus,
            guest,
            &volumes,
            ip,
            mac_for(ip),
        );
        let booted = async {
            std::fs::create_dir_all(&dir)?;
            for (volume, size_mib) in &scratch {
                crate::volume::create(&volume.path, *size_mib).await?;
            }
            let _permit = self.boots.acquire().await.map_err(|_| shutting_down())?;
            vm::boot(&self.ns, &boot).await
        }
        .await;
        match booted {
            Ok(vm) => {
                let client = Arc::clone(&vm.client);
                let handle = sandbox::spawn(
                    spec.name.clone(),
                    self.ns.clone(),
                    boot,
                    Some(vm),
                    client,
                    false,
                    Arc::clone(&self.boots),
                );
                self.register(&spec.name, ip, dir.clone(), &volumes, handle);
                self.info(&spec.name)
            }
            Err(e) => {
                lock(&self.pool).release(ip);
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    fn handle(&self, name: &str) -> Result<Handle, EngineError> {
        lock(&self.sandboxes)
            .get(name)
            .map(|e| e.handle.clone())
            .ok_or_else(|| EngineError::NotFound(name.to_owned()))
    }

    /// A sandbox's facts.
    pub fn info(&self, name: &str) -> Result<SandboxInfo, EngineError> {
        lock(&self.sandboxes)
            .get(name)
            .map(Entry::info)
            .ok_or_else(|| EngineError::NotFound(name.to_owned()))
    }

    /// Every sandbox, by name.
    pub fn list(&self) -> Vec<SandboxInfo> {
        lock(&self.sandboxes).values().map(Entry::info).collect()
    }

    /// Thermal state, without waking anything.
    pub fn thermal(&self, name: &str) -> Result<Thermal, EngineError> {
        Ok(self.handle(name)?.shared.thermal())
    }

    /// Makes the sandbox hot (waking it from warm or cold) and holds it so until the lease is
    /// dropped. Every guest operation below goes through this.
    pub async fn lease(&self, name: &str) -> Result<Lease, EngineError> {
        self.handle(name)?.ask(name, Command::Lease).await?
    }

    /// Wakes the sandbox (warm or cold) if needed.
    pub async fn ensure_hot(&self, name: &str) -> Result<(), EngineError> {
        self.lease(name).await.map(drop)
    }

    /// Hot -> warm: vCPUs paused, memory kept. Waits up to `wait` for guest operations in
    /// flight, then refuses with [`EngineError::Busy`]. No-op when already warm.
    pub async fn pause(&self, name: &str, wait: Duration) -> Result<(), EngineError> {
        self.handle(name)?.ask(name, |reply| Command::Pause { wait, reply }).await?
    }

    /// Warm -> hot (same as [`Engine::ensure_hot`]).
    pub async fn resume(&self, name: &str) -> Result<(), EngineError> {
        self.ensure_hot(name).await
    }

    /// Hot or warm -> cold: device state and RAM on disk, QEMU gone. Waits up to `wait` for
    /// guest operations in flight. Returns what the suspend cost (`None` if already cold).
    pub async fn stop(&self, name: &str, wait: Duration) -> Result<Option<Suspended>, EngineError> {
        self.handle(name)?.ask(name, |reply| Command::Stop { wait, reply }).await?
    }

    /// Cold -> hot; after a crash, boots again from the disk.
    pub async fn start(&self, name: &str) -> Result<(), EngineError> {
        self.handle(name)?.ask(name, Command::Start).await?
    }

    /// The host's activity cache, plus the agent's view when the sandbox is hot.
    pub async fn activity(&self, name: &str) -> Result<Activity, EngineError> {
        self.handle(name)?.ask(name, Command::Activity).await
    }

    /// The record to store so a restarted daemon can recover the sandbox.
    pub async fn export(&self, name: &str) -> Result<SandboxRecord, EngineError> {
        self.handle(name)?.ask(name, Command::Export).await
    }

    /// Runs `argv` and buffers its output (within the engine's exec deadline).
    pub async fn exec(&self, name: &str, argv: &[&str]) -> Result<ExecOutput, EngineError> {
        let req = ExecRequest::command(argv.iter().copied());
        self.exec_request(name, &req, self.config.exec_timeout).await
    }

    /// Runs a full exec request, buffered.
    pub async fn exec_request(
        &self,
        name: &str,
        req: &ExecRequest,
        timeout: Duration,
    ) -> Result<ExecOutput, EngineError> {
        let lease = self.lease(name).await?;
        Ok(lease.client().exec_request(req, timeout).await?)
    }

    /// Runs an exec whose output streams; the sandbox stays hot while the stream lives.
    pub async fn exec_stream(
        &self,
        name: &str,
        req: &ExecRequest,
        timeout: Duration,
    ) -> Result<Leased<ExecStream>, EngineError> {
        let lease = self.lease(name).await?;
        let stream = lease.client().exec_stream(req, timeout).await?;
        Ok(Leased::new(stream, lease))
    }

    /// Starts a command that outlives the request.
    pub async fn exec_detached(
        &self,
        name: &str,
        req: &ExecRequest,
    ) -> Result<DetachedExec, EngineError> {
        let lease = self.lease(name).await?;
        Ok(lease.client().exec_detached(req).await?)
    }

    /// A PTY session (a shell unless `req` says otherwise); hot while attached.
    pub async fn shell(
        &self,
        name: &str,
        req: &ExecRequest,
    ) -> Result<Leased<Session>, EngineError> {
        let lease = self.lease(name).await?;
        let session = lease.client().shell(req).await?;
        Ok(Leased::new(session, lease))
    }

    /// A piped (non-TTY) session; hot while attached.
    pub async fn piped_session(
        &self,
        name: &str,
        req: &ExecRequest,
    ) -> Result<Leased<Session>, EngineError> {
        let lease = self.lease(name).await?;
        let session = lease.client().piped_session(req).await?;
        Ok(Leased::new(session, lease))
    }

    /// Attaches to an existing session.
    pub async fn attach(
        &self,
        name: &str,
        session_id: &str,
        if_detached: bool,
    ) -> Result<Leased<Session>, EngineError> {
        let lease = self.lease(name).await?;
        let session = lease.client().attach(session_id, if_detached).await?;
        Ok(Leased::new(session, lease))
    }

    /// The guest's sessions.
    pub async fn sessions(&self, name: &str) -> Result<Vec<SessionInfo>, EngineError> {
        let lease = self.lease(name).await?;
        Ok(lease.client().session_list().await?)
    }

    /// Kills a session.
    pub async fn kill_session(&self, name: &str, session_id: &str) -> Result<(), EngineError> {
        let lease = self.lease(name).await?;
        Ok(lease.client().session_kill(session_id).await?)
    }

    /// Reads a file (or a window of its lines).
    pub async fn file_read(
        &self,
        name: &str,
        path: &str,
        opts: ReadOptions,
    ) -> Result<FileContent, EngineError> {
        let lease = self.lease(name).await?;
        Ok(lease.client().file_read(path, opts).await?)
    }

    /// Writes a file atomically.
    pub async fn file_write(
        &self,
        name: &str,
        path: &str,
        mode: &str,
        data: &[u8],
    ) -> Result<(), EngineError> {
        let lease = self.lease(name).await?;
        Ok(lease.client().file_write(path, mode, data).await?)
    }

    /// Stats a path.
    pub async fn file_stat(&self, name: &str, path: &str) -> Result<FileInfo, EngineError> {
        let lease = self.lease(name).await?;
        Ok(lease.client().file_stat(path).await?)
    }

    /// Lists a directory.
    pub async fn file_list(&self, name: &str, path: &str) -> Result<Vec<FileInfo>, EngineError> {
        let lease = self.lease(name).await?;
        Ok(lease.client().file_list(path).await?)
    }

    /// TCP ports the guest listens on (IPv4 and IPv6), sorted.
    pub async fn listening_ports(&self, name: &str) -> Result<Vec<u16>, EngineError> {
        let lease = self.lease(name).await?;
        let mut ports = std::collections::BTreeSet::new();
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            match lease.client().file_read(table, ReadOptions::default()).await {
                Ok(content) => {
                    ports.extend(crate::ports::listening(&String::from_utf8_lossy(&content.data)))
                }
                // A guest kernel without IPv6 has no tcp6 table.
                Err(e) if e.is_agent_error() && table.ends_with('6') => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(ports.into_iter().collect())
    }

    /// A byte stream to `localhost:port` in the guest; hot while open.
    pub async fn forward(&self, name: &str, port: u16) -> Result<Leased<Stream>, EngineError> {
        if port == 0 {
            return Err(refused("port 0 is not a valid port".into()));
        }
        let lease = self.lease(name).await?;
        let stream = lease.client().forward(port).await?;
        Ok(Leased::new(stream, lease))
    }

    fn checkpoint_dir(&self, checkpoint: &str) -> PathBuf {
        self.config.data_dir.join("checkpoints").join(checkpoint)
    }

    /// Captures a running sandbox as the named checkpoint. The sandbox is paused only while its
    /// files are copied and keeps running (a warm one stays warm). A cold sandbox is refused.
    pub async fn checkpoint(&self, name: &str, checkpoint: &str) -> Result<PathBuf, EngineError> {
        check_name("checkpoint", checkpoint)?;
        let dest = self.checkpoint_dir(checkpoint);
        if dest.exists() {
            return Err(refused(format!("checkpoint {checkpoint:?} already exists")));
        }
        std::fs::create_dir_all(self.config.data_dir.join("checkpoints"))?;
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
        let dir = self.config.data_dir.join("sandboxes").join(name);
        let (ip, moved_from) = {
            let sandboxes = lock(&self.sandboxes);
            if sandboxes.contains_key(name) || dir.exists() {
                return Err(refused(format!("sandbox {name:?} already exists")));
            }
            let mut pool = lock(&self.pool);
            let old = manifest.sandbox.ip;
            match pool.claim_free(old) {
                Ok(()) => (old, None),
                Err(_) => (pool.allocate().map_err(|e| refused(e.to_string()))?, Some(old)),
            }
        };
        let result = self.restore_from(&from, &manifest, name, &dir, ip, moved_from).await;
        match result {
            Ok(()) => self.info(name),
            Err(e) => {
                lock(&self.pool).release(ip);
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    async fn restore_from(
        &self,
        from: &Path,
        manifest: &Manifest,
        name: &str,
        dir: &Path,
        ip: Ipv4Addr,
        moved_from: Option<Ipv4Addr>,
    ) -> Result<(), EngineError> {
        let record = &manifest.sandbox;
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
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
        let mac = match moved_from {
            None => parse_mac(&record.mac)?,
            Some(_) => mac_for(ip),
        };
        let spec = self.boot_spec(
            dir,
            &record.image,
            record.memory_mib,
            record.vcpus,
            GuestConfig {
                sandbox_id: record.name.clone(),
                hostname: record.name.clone(),
                token: record.token.clone(),
                env: record.env.clone(),
                init: record.init.clone(),
                ..Default::default()
            },
            &volumes,
            ip,
            mac,
        );
        let state = dir.join(STATE_FILE);
        let vm = {
            let _permit = self.boots.acquire().await.map_err(|_| shutting_down())?;
            match moved_from {
                None => vm::resume_from_disk(&self.ns, &spec, &state, None).await?,
                Some(old) => vm::resume_moved(&self.ns, &spec, &state, old).await?,
            }
        };
        let client = Arc::clone(&vm.client);
        let handle = sandbox::spawn(
            name.to_owned(),
            self.ns.clone(),
            spec,
            Some(vm),
            client,
            false,
            Arc::clone(&self.boots),
        );
        self.register(name, ip, dir.to_owned(), &volumes, handle);
        Ok(())
    }

    /// Destroys a sandbox: QEMU ends (its TAP vanishes with it), the address returns to the
    /// pool and the directory (disk overlay, RAM file, state, config drive, logs) is removed.
    /// Volumes attached to it are kept.
    pub async fn destroy(&self, name: &str) -> Result<(), EngineError> {
        let entry = lock(&self.sandboxes)
            .remove(name)
            .ok_or_else(|| EngineError::NotFound(name.to_owned()))?;
        // The owner may already be gone (engine shutting down); the files go regardless.
        let _ = entry.handle.ask(name, Command::Destroy).await;
        vm::kill_orphan(&entry.dir);
        if let Err(e) = self.ns.delete_neighbour(&self.config.bridge, entry.ip).await {
            tracing::warn!(sandbox = name, "{e}");
        }
        lock(&self.pool).release(entry.ip);
        match std::fs::remove_dir_all(&entry.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Suspends every hot or warm sandbox to disk (daemon shutdown), so a restarted daemon wakes
    /// them with their memory. Returns the records to store.
    pub async fn shutdown(
        &self,
        wait: Duration,
    ) -> Vec<Result<SandboxRecord, (String, EngineError)>> {
        let names: Vec<String> = lock(&self.sandboxes).keys().cloned().collect();
        let mut records = Vec::new();
        for name in names {
            let stopped = self.stop(&name, wait).await;
            let record = match stopped {
                Ok(_) => self.export(&name).await,
                Err(e) => Err(e),
            };
            records.push(record.map_err(|e| (name, e)));
        }
        records
    }
}

fn shutting_down() -> EngineError {
    refused("the engine is shutting down".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_too_deep_for_socket_paths_is_refused() {
        assert!(check_socket_room(Path::new("/var/lib/bhatti")).is_ok());
        let deep = PathBuf::from(format!("/{}", "d".repeat(60)));
        let err = check_socket_room(&deep).unwrap_err().to_string();
        assert!(err.contains("too deep"), "{err}");
    }

    #[test]
    fn names_macs_and_taps() {
        assert!(valid_name("dev-1") && valid_name(&"a".repeat(32)));
        for bad in ["", "-x", "Dev", "a_b", "a.b", &"a".repeat(33)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        let ip = Ipv4Addr::new(10, 200, 3, 7);
        assert_eq!(tap_name(ip), "tap3-7");
        assert_eq!(parse_mac(&vm::mac_text(mac_for(ip))).unwrap(), mac_for(ip));
        assert!(parse_mac("52:54:00").is_err() && parse_mac("zz:54:00:00:00:00").is_err());
    }
}
