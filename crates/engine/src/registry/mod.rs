//! The sandbox registry: create, find, list and destroy sandboxes on one network namespace.
//!
//! Sandboxes are keyed by an opaque ID the caller chooses (the store's), and belong to an owner.
//! The registry lives in `std::sync::Mutex`es held only for map, pool and claim updates, never
//! across an `.await`: operations clone the sandbox's handle and release the lock. Each sandbox
//! has an owner task (`owner.rs`) that alone changes its thermal state; guest operations
//! (`guest.rs`) take a lease (waking the sandbox if needed) and then talk to the agent
//! directly. Boots and restores are limited by one semaphore, so a burst of creates and wakes
//! cannot start more emulated CPUs than the machine can run.
//!
//! What a create (also from a checkpoint) or destroy takes (the ID, an address, volume claims, the directory)
//! is held by a [`Reservation`] that gives it all back when dropped unfinished, also when the
//! caller's future is dropped mid-way (a client that disconnects): nothing leaks, and the ID
//! is free again.
//!
//! Once [`Engine::shutdown`] begins, the engine starts nothing: no create, lease, wake or
//! create from a checkpoint (they fail with [`EngineError::ShuttingDown`]).

mod checkpoints;
mod diff;
mod guest;
mod recovery;
mod shapes;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use proto::guest::{GuestConfig, GuestVolume};
use tokio::sync::{Semaphore, broadcast, oneshot, watch};

use crate::error::{EngineError, Exhausted, GoneReason, Resource, io_at};
use crate::events::{Event, EventKind, Events};
use crate::ippool::{IpPool, Subnet};
use crate::layout::{DataDir, SandboxFiles};
use crate::lease::{Activity, Lease};
use crate::machine::{Backend, BootSpec, Machine, Suspended, VolumeDisk, guest_device};
use crate::net::Netns;
use crate::owner::{self, Command, Giveback, Handle, Identity};
use crate::record::SandboxRecord;
use crate::run::off_thread;
pub use crate::spec::CreateSpec;
use crate::thermal::Thermal;
use crate::volume::{Claims, VolumeChecks, VolumeMount};

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where sandbox directories live (`<data_dir>/sandboxes/<id>`).
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
    /// How QEMU caches disks on the host (guest flushes are honoured unless `Unsafe`).
    pub disk_cache: vmm::DiskCache,
    /// Boots (or restores) running at once.
    pub max_concurrent_boots: usize,
    /// How long a guest may take to answer after QEMU starts.
    pub ready_timeout: Duration,
    /// How long one boot may hold a boot slot: a guest slow to answer (or one that never will)
    /// goes on booting until `ready_timeout`, but no longer keeps other creates waiting.
    pub boot_slot: Duration,
    /// Deadline of a buffered exec unless the caller gives one.
    pub exec_timeout: Duration,
    /// Egress NAT out of the namespace; `None` keeps guests off any outside network.
    pub egress: Option<crate::egress::Egress>,
    /// Name servers written to the guests' resolv.conf when the engine runs no resolver.
    pub dns: Vec<Ipv4Addr>,
    /// Serve DNS on the bridge's gateway (guests' resolv.conf names it), forwarding by each
    /// sandbox's egress policy; `None` runs no resolver.
    pub resolver: Option<ResolverConfig>,
    /// Confine every QEMU (its own uid, a private root, namespaces, seccomp, a cgroup; see
    /// `jail`). Off only to measure what confinement costs.
    pub confine: bool,
    /// Guests booted from now on report the memory they free (virtio-balloon free page
    /// reporting) and QEMU hands it back to the host. Off only for the benchmark's baseline.
    pub free_page_reporting: bool,
    /// Cold sandboxes whose next QEMU is started ahead, waiting for their wake (the most
    /// recently suspended ones; `vm/pool.rs`); 0: none. Counted against nobody's quota.
    pub restore_pool: usize,
    /// How long a QEMU started ahead waits for its wake before it is ended.
    pub restore_pool_ttl: Duration,
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
            disk_cache: vmm::DiskCache::default(),
            max_concurrent_boots: 2,
            ready_timeout: Duration::from_secs(60),
            boot_slot: Duration::from_secs(20),
            exec_timeout: Duration::from_secs(600),
            egress: None,
            dns: Vec::new(),
            resolver: None,
            confine: true,
            free_page_reporting: true,
            restore_pool: DEFAULT_RESTORE_POOL,
            restore_pool_ttl: Duration::from_secs(300),
        }
    }
}

/// Cold sandboxes with a QEMU started ahead by default: none. Under TCG the pool gains nothing
/// measurable end to end (the QEMU start is ~155 ms of a wake whose rest is re-translation),
/// each waiting QEMU costs 30-40 MiB, and the pre-start holds up the owner's next command (the
/// API's stop waits for its record export: 64 -> 285 ms p50 in the 2026-12-07 bench). Set
/// `restore_pool` to turn it on (see the README's "QEMUs started ahead").
pub const DEFAULT_RESTORE_POOL: usize = 0;

/// Where the engine's resolver forwards to.
#[derive(Debug, Clone)]
pub struct ResolverConfig {
    /// Upstream name servers, in the order they are tried.
    pub upstreams: Vec<std::net::SocketAddr>,
    /// The namespace upstream sockets are made in (`None`: the daemon's own). The tests'
    /// stand-in for the host.
    pub upstream_netns: Option<String>,
}

/// A sandbox's public facts (no host paths, no secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxInfo {
    /// The caller's ID.
    pub id: String,
    /// Owner.
    pub owner: String,
    /// Guest hostname.
    pub hostname: String,
    /// Guest address.
    pub ip: Ipv4Addr,
    /// Thermal state now.
    pub thermal: Thermal,
}

struct Entry {
    who: Identity,
    hostname: String,
    ip: Ipv4Addr,
    mac: [u8; 6],
    files: SandboxFiles,
    handle: Handle,
}

impl Entry {
    fn info(&self) -> SandboxInfo {
        SandboxInfo {
            id: self.who.id.clone(),
            owner: self.who.owner.clone(),
            hostname: self.hostname.clone(),
            ip: self.ip,
            thermal: self.handle.shared.thermal(),
        }
    }
}

/// The engine: one namespace, one bridge, many sandboxes.
pub struct Engine {
    config: EngineConfig,
    layout: DataDir,
    ns: Netns,
    pool: Arc<Mutex<IpPool>>,
    sandboxes: Mutex<BTreeMap<String, Entry>>,
    /// Creates in flight, by ID (locked after `sandboxes` when both are held): a destroy
    /// cancels one and waits until everything it took is given back.
    creating: Mutex<BTreeMap<String, InFlightCreate>>,
    claims: Arc<Mutex<Claims>>,
    boots: Arc<Semaphore>,
    /// The VMM (QEMU today) behind the narrow machine interface.
    backend: Arc<dyn Backend>,
    events: Events,
    /// Each owner's network group (ports of one group reach each other, of different groups
    /// never); numbered from 1 as owners appear.
    groups: Mutex<BTreeMap<String, u32>>,
    /// Every sandbox's egress policy and pins, by address (the resolver's and the firewall's).
    policies: Arc<crate::netpolicy::Policies>,
    /// The resolver on the gateway, when configured (taken by [`Engine::close_network`]).
    resolver: Mutex<Option<crate::dns::Resolver>>,
    /// Set when shutdown begins: nothing new starts after it.
    closing: AtomicBool,
    /// One engine per data directory: a second would take the first's sandboxes for orphans.
    data_lock: Option<nix::fcntl::Flock<std::fs::File>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("netns", &self.config.netns).finish()
    }
}

/// What a create (also from a checkpoint) holds: the sandbox's ID (its directory exists), its
/// address, its volume claims. Dropped without [`Reservation::keep`], it gives everything back
/// (the QEMU a cancelled boot left, the directory, the neighbour entry, the port's filter
/// rules, then the address and claims) on a task of its own, whether the operation failed,
/// was cancelled by a destroy, or its caller went away.
pub(crate) struct Reservation<'a> {
    engine: &'a Engine,
    id: String,
    ip: Ipv4Addr,
    files: SandboxFiles,
    kept: bool,
    /// Dropped when everything is back (or at once when kept): a destroy that cancelled the
    /// create waits for that.
    done: Option<watch::Sender<()>>,
}

impl Reservation<'_> {
    /// Claims volumes for the sandbox (given back with the rest on drop).
    fn claim_volumes(&self, volumes: &[VolumeMount]) -> Result<(), EngineError> {
        lock(&self.engine.claims).claim(&self.id, volumes)
    }

    /// The operation finished: the sandbox keeps what was reserved.
    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        // The ID is free at once: the directory moves aside (one rename), and the slow part
        // (a QEMU still dying when the caller went away mid-create, a large removal, the
        // network clean-up) goes to a task. The address and claims go back only after that,
        // so no new TAP can meet the old one.
        let original = self.files.clone();
        let trash = self.engine.layout.trash(&self.id);
        let files = match std::fs::rename(original.dir(), trash.dir()) {
            Ok(()) => trash,
            Err(_) => original.clone(),
        };
        let giveback = GiveBack {
            backend: Arc::clone(&self.engine.backend),
            giveback: self.engine.giveback(),
            ns: self.engine.ns.clone(),
            id: self.id.clone(),
            ip: self.ip,
            original,
            files,
            _done: self.done.take(),
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(giveback.run());
            }
            // No runtime (a drop at process end): the files and the pool, no namespace work.
            Err(_) => giveback.files_and_pool(),
        }
    }
}

/// What an unfinished [`Reservation`] gives back.
struct GiveBack {
    backend: Arc<dyn Backend>,
    /// The pool and claims the address and volumes go back to, and the bridge.
    giveback: Giveback,
    ns: Netns,
    id: String,
    ip: Ipv4Addr,
    /// Where the directory was (the QMP socket path QEMU was started with).
    original: SandboxFiles,
    /// Where it is now.
    files: SandboxFiles,
    /// Held for its drop: closed once everything is back.
    _done: Option<watch::Sender<()>>,
}

impl GiveBack {
    async fn run(self) {
        let (files, original, id) = (self.files.clone(), self.original.clone(), self.id.clone());
        let (backend, netns) = (Arc::clone(&self.backend), self.ns.name().to_owned());
        let removed = tokio::task::spawn_blocking(move || {
            crate::teardown::remove_files(&*backend, &netns, &id, &files, &original);
        });
        if removed.await.is_err() {
            tracing::warn!(sandbox = %self.id, "removing a failed create's files did not finish");
        }
        let tap = tap_name(self.ip);
        let (bridge, policies) = (&self.giveback.bridge, &self.giveback.policies);
        crate::teardown::unplug(&self.ns, bridge, policies, &self.id, self.ip, &tap).await;
        self.release();
    }

    fn files_and_pool(self) {
        let netns = self.ns.name();
        crate::teardown::remove_files(&*self.backend, netns, &self.id, &self.files, &self.original);
        self.release();
    }

    /// The address and claims go back last; `done` drops with `self`.
    fn release(self) {
        self.giveback.release(&self.id, self.ip);
    }
}

/// A create in flight, as a destroy finds it.
struct InFlightCreate {
    /// Fires the cancellation (taken by the first destroy).
    cancel: Option<oneshot::Sender<()>>,
    /// Closed when the create's reservation is kept or fully given back.
    done: watch::Receiver<()>,
}

/// Removes a create's entry from [`Engine::creating`] however the create ends (also when its
/// future is dropped).
struct CreatingEntry<'a> {
    engine: &'a Engine,
    id: String,
}

impl Drop for CreatingEntry<'_> {
    fn drop(&mut self) {
        lock(&self.engine.creating).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
}

fn check_name(what: Resource, name: &str) -> Result<(), EngineError> {
    if valid_id(name) {
        return Ok(());
    }
    Err(EngineError::invalid(format!(
        "invalid {what} name {name:?}: use lower-case letters, digits and '-', at most 32"
    )))
}

fn check_owner(owner: &str) -> Result<(), EngineError> {
    let ok = !owner.is_empty()
        && owner.len() <= 64
        && owner.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        return Ok(());
    }
    Err(EngineError::invalid(format!(
        "invalid owner {owner:?}: use letters, digits, '_' and '-', at most 64"
    )))
}

/// RFC 1123 label: what a guest accepts as its hostname.
pub(super) fn check_hostname(hostname: &str) -> Result<(), EngineError> {
    let ok = !hostname.is_empty()
        && hostname.len() <= 63
        && hostname.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !hostname.starts_with('-')
        && !hostname.ends_with('-');
    if ok {
        return Ok(());
    }
    Err(EngineError::invalid(format!(
        "invalid hostname {hostname:?}: use letters, digits and '-' (not at either end), at most 63"
    )))
}

/// Volumes per sandbox (devices vdc..vdv).
const MAX_VOLUMES: usize = 20;
/// The largest disk a sandbox may ask for (1 TiB).
const MAX_DISK_MIB: u32 = 1024 * 1024;

/// Longest Unix socket path (`sun_path` holds 108 bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Every sandbox's QMP socket lives in its directory; refuse a data directory so deep that the
/// longest ID would not fit, instead of failing at some create.
fn check_socket_room(layout: &DataDir) -> Result<(), EngineError> {
    let longest = layout.sandbox(&"x".repeat(32)).qmp_socket();
    let len = longest.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(EngineError::invalid(format!(
            "data directory {} is too deep: sandbox sockets would be {len} bytes long (max \
             {MAX_SOCKET_PATH}); use a shorter path",
            layout.root().display()
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
    bytes.try_into().map_err(|_| EngineError::invalid(format!("bad MAC {text:?}")))
}

/// Whether `path` lies in the engine's own files (another sandbox's disk or memory), where
/// volumes and images must not point.
fn inside_engine_files(layout: &DataDir, path: &Path) -> bool {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    layout
        .private_trees()
        .into_iter()
        .any(|dir| path.starts_with(dir.canonicalize().unwrap_or(dir)))
}

fn address_pool_exhausted(_: crate::ippool::IpPoolError) -> EngineError {
    EngineError::Exhausted(Exhausted::Addresses)
}

impl Engine {
    /// Sets up (idempotently) the namespace and bridge and an empty registry. Sandbox
    /// directories no record names were left by a crashed engine: their QEMUs are killed and
    /// the directories removed (see [`Engine::new_recovering`] to keep sandboxes).
    pub async fn new(config: EngineConfig) -> Result<Self, EngineError> {
        let (engine, _) = Self::new_recovering(config, Vec::new()).await?;
        Ok(engine)
    }

    /// Test support: ends this engine the way a crash would, leaving its QEMUs running and its
    /// files in place, and releasing only the data-directory lock (which a dead process drops).
    #[doc(hidden)]
    pub fn simulate_crash(mut self) {
        self.data_lock.take();
        std::mem::forget(self);
    }

    /// How sandboxes' QEMUs are confined, in a sentence for the daemon's start log.
    pub fn confinement(&self) -> String {
        self.backend.confinement(self.config.confine)
    }

    /// Every thermal change of every sandbox from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn check_open(&self) -> Result<(), EngineError> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(EngineError::ShuttingDown);
        }
        Ok(())
    }

    /// Reserves `id` and an address chosen by `pick` under the registry lock.
    fn reserve(
        &self,
        id: &str,
        pick: impl FnOnce(&mut IpPool) -> Result<Ipv4Addr, EngineError>,
    ) -> Result<Reservation<'_>, EngineError> {
        self.reserve_tracked(id, pick, None)
    }

    /// [`Engine::reserve`], registering a create in flight under the same lock, so a destroy
    /// finds the ID either reserved (and cancels it) or not at all.
    fn reserve_tracked(
        &self,
        id: &str,
        pick: impl FnOnce(&mut IpPool) -> Result<Ipv4Addr, EngineError>,
        track: Option<oneshot::Sender<()>>,
    ) -> Result<Reservation<'_>, EngineError> {
        let files = self.layout.sandbox(id);
        let sandboxes = lock(&self.sandboxes);
        let exists = || EngineError::exists(Resource::Sandbox, id);
        if sandboxes.contains_key(id) {
            return Err(exists());
        }
        // The directory is the ID's reservation: creating it is atomic.
        match std::fs::DirBuilder::new().mode(0o700).create(files.dir()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(exists()),
            Err(e) => return Err(io_at("creating", files.dir())(e)),
        }
        let picked = pick(&mut lock(&self.pool));
        let ip = match picked {
            Ok(ip) => ip,
            Err(e) => {
                let _ = std::fs::remove_dir(files.dir());
                return Err(e);
            }
        };
        let mut done = None;
        if let Some(cancel) = track {
            let (tx, rx) = watch::channel(());
            lock(&self.creating)
                .insert(id.to_owned(), InFlightCreate { cancel: Some(cancel), done: rx });
            done = Some(tx);
        }
        drop(sandboxes);
        Ok(Reservation { engine: self, id: id.to_owned(), ip, files, kept: false, done })
    }

    /// The network group of `owner`, assigned on first use.
    fn group_of(&self, owner: &str) -> u32 {
        let mut groups = lock(&self.groups);
        let next = u32::try_from(groups.len()).unwrap_or(u32::MAX - 1).saturating_add(1);
        *groups.entry(owner.to_owned()).or_insert(next)
    }

    /// The bridge port of a sandbox as the isolation filter knows it.
    fn port(&self, owner: &str, spec: &BootSpec) -> crate::isolation::Port {
        crate::isolation::Port {
            tap: spec.tap.clone(),
            mac: spec.mac,
            ip: spec.ip,
            group: self.group_of(owner),
        }
    }

    /// Starts the owner of a sandbox (hot with `vm`, else cold: with `snapshot`, its memory is
    /// on disk) and adds it to the registry.
    fn adopt(&self, who: Identity, spec: BootSpec, vm: Option<Box<dyn Machine>>, snapshot: bool) {
        let (ip, mac, files, hostname) =
            (spec.ip, spec.mac, spec.files.clone(), spec.guest.hostname.clone());
        let client = match &vm {
            Some(vm) => Arc::clone(vm.client()),
            None => self.backend.agent_client(&self.ns, &spec),
        };
        let handle = owner::spawn(owner::Start {
            who: who.clone(),
            ns: self.ns.clone(),
            spec,
            vm,
            client,
            snapshot,
            boots: Arc::clone(&self.boots),
            backend: Arc::clone(&self.backend),
            giveback: self.giveback(),
            events: self.events.clone(),
        });
        let id = who.id.clone();
        let entry = Entry { who, hostname, ip, mac, files, handle };
        lock(&self.sandboxes).insert(id, entry);
    }

    /// Guest addresses taken (by sandboxes, and by creates in flight): what a test
    /// checks to see that a failed or cancelled create gave its address back.
    pub fn addresses_in_use(&self) -> usize {
        lock(&self.pool).in_use()
    }

    /// Where a sandbox's address and volume claims go back to.
    fn giveback(&self) -> Giveback {
        Giveback {
            pool: Arc::clone(&self.pool),
            claims: Arc::clone(&self.claims),
            bridge: self.config.bridge.clone(),
            policies: Arc::clone(&self.policies),
        }
    }

    /// The engine's network namespace.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// Where the volume `name` of `owner` lives.
    pub fn volume_path(&self, owner: &str, name: &str) -> PathBuf {
        self.layout.volume(owner, name)
    }

    /// Creates the persistent volume `name` of `owner` (an ext4 image of `size_mib`).
    pub async fn create_volume(
        &self,
        owner: &str,
        name: &str,
        size_mib: u32,
    ) -> Result<PathBuf, EngineError> {
        check_owner(owner)?;
        check_name(Resource::Volume, name)?;
        let path = self.layout.volume(owner, name);
        crate::volume::create(&path, size_mib).await?;
        Ok(path)
    }

    /// Deletes a volume that no sandbox has attached (read-only attachments count).
    pub fn delete_volume(&self, owner: &str, name: &str) -> Result<(), EngineError> {
        check_owner(owner)?;
        check_name(Resource::Volume, name)?;
        let path = self.layout.volume(owner, name);
        // Held until the file is gone, so no create claims it in between.
        let claims = lock(&self.claims);
        let users = claims.users(&path);
        if users > 0 {
            return Err(EngineError::InUse { name: name.to_owned(), users });
        }
        std::fs::remove_file(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => EngineError::not_found(Resource::Volume, name),
            _ => io_at("removing", &path)(e),
        })
    }

    /// The boot spec of a sandbox: its files, its guest configuration (volumes and name
    /// servers added), its address and MAC.
    fn boot_spec(&self, files: SandboxFiles, shape: Shape<'_>, mut guest: GuestConfig) -> BootSpec {
        if self.config.resolver.is_some() {
            // Only the resolver: listing public servers besides it would let a guest go around
            // its policy (and glibc would mix their answers).
            guest.dns = Vec::new();
            guest.dns_internal = self.config.subnet.gateway().to_string();
        } else {
            guest.dns = self.config.dns.iter().map(Ipv4Addr::to_string).collect();
        }
        guest.volumes = shape
            .volumes
            .iter()
            .enumerate()
            .map(|(i, v)| GuestVolume {
                device: guest_device(i),
                mount: v.mount.clone(),
                fs: "ext4".into(),
                read_only: v.read_only,
            })
            .collect();
        let id = files.dir().file_name().unwrap_or_default().to_string_lossy().into_owned();
        let cgroup = crate::jail::cgroup_name(&self.config.netns, &id);
        BootSpec {
            kernel: self.config.kernel.clone(),
            image: shape.image.to_owned(),
            memory_file: Some(files.ram()),
            memory_private: false,
            files,
            disk_size_mib: shape.disk_size_mib,
            memory_mib: shape.memory_mib,
            vcpus: shape.vcpus,
            guest,
            volumes: shape
                .volumes
                .iter()
                .map(|v| VolumeDisk { path: v.path.clone(), read_only: v.read_only })
                .collect(),
            ip: shape.ip,
            gateway: self.config.subnet.gateway(),
            prefix: self.config.subnet.prefix(),
            bridge: self.config.bridge.clone(),
            tap: tap_name(shape.ip),
            mac: shape.mac,
            accel: self.config.accel,
            disk_cache: self.config.disk_cache,
            ready_timeout: self.config.ready_timeout,
            free_page_reporting: self.config.free_page_reporting,
            confine: self
                .config
                .confine
                .then(|| crate::jail::Confinement { cpu_millis: shape.cpu_millis(), cgroup }),
        }
    }

    fn check_volumes(&self, volumes: &[VolumeMount]) -> Result<(), EngineError> {
        for (i, v) in volumes.iter().enumerate() {
            if inside_engine_files(&self.layout, &v.path) {
                return Err(EngineError::not_found(Resource::Volume, v.volume_name()));
            }
            v.validate()?;
            if volumes[..i].iter().any(|o| o.path == v.path || o.mount == v.mount) {
                return Err(EngineError::invalid(format!(
                    "volume {:?} is listed twice",
                    v.volume_name()
                )));
            }
        }
        Ok(())
    }

    fn check_spec(&self, spec: &CreateSpec) -> Result<(), EngineError> {
        check_name(Resource::Sandbox, &spec.id)?;
        check_owner(&spec.owner)?;
        check_hostname(spec.guest_hostname())?;
        if spec.vcpus == 0 || spec.memory_mib < 64 {
            return Err(EngineError::invalid("a sandbox needs at least 1 vCPU and 64 MiB"));
        }
        if let Some(millis) = spec.cpu_millis
            && !(crate::cgroup::MIN_CPU_MILLIS..=u32::from(spec.vcpus) * 1000).contains(&millis)
        {
            return Err(EngineError::invalid(format!(
                "cpus must be between 0.01 and the vCPU count ({}), got {}",
                spec.vcpus,
                f64::from(millis) / 1000.0
            )));
        }
        let image_name =
            || spec.image.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        if !spec.image.is_file() || inside_engine_files(&self.layout, &spec.image) {
            return Err(EngineError::not_found(Resource::Image, image_name()));
        }
        if let Some(mib) = spec.disk_size_mib {
            let image_mib = std::fs::metadata(&spec.image)
                .map_err(io_at("reading", &spec.image))?
                .len()
                .div_ceil(1024 * 1024);
            if u64::from(mib) < image_mib || mib > MAX_DISK_MIB {
                return Err(EngineError::invalid(format!(
                    "disk size {mib} MiB: must be between the image's {image_mib} MiB and \
                     {MAX_DISK_MIB} MiB"
                )));
            }
        }
        if spec.volumes.len() + spec.scratch_volumes.len() > MAX_VOLUMES {
            return Err(EngineError::Exhausted(Exhausted::VolumeSlots));
        }
        self.check_volumes(&spec.volumes)
    }

    /// Creates a sandbox and returns once its agent answers. On failure, when the caller stops
    /// waiting, or when a [`Engine::destroy`] of the same ID cancels it, nothing is left behind
    /// (a cancelled create answers [`EngineError::Cancelled`]).
    pub async fn create(&self, spec: &CreateSpec) -> Result<SandboxInfo, EngineError> {
        self.check_open()?;
        self.check_spec(spec)?;
        let files = self.layout.sandbox(&spec.id);
        // Scratch volumes live in the sandbox's directory and go with it.
        let scratch: Vec<(VolumeMount, u32)> = spec
            .scratch_volumes
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let path = files.scratch(i);
                (VolumeMount { path, mount: v.mount.clone(), read_only: false }, v.size_mib)
            })
            .collect();
        let mut volumes = spec.volumes.clone();
        for (volume, _) in &scratch {
            volume.validate_mount()?;
            if volumes.iter().any(|v| v.mount == volume.mount) {
                return Err(EngineError::invalid(format!(
                    "two volumes are mounted at {}",
                    volume.mount
                )));
            }
            volumes.push(volume.clone());
        }
        let (cancel, mut cancelled) = oneshot::channel();
        let reservation = self.reserve_tracked(
            &spec.id,
            |pool| pool.allocate().map_err(address_pool_exhausted),
            Some(cancel),
        )?;
        let _entry = CreatingEntry { engine: self, id: spec.id.clone() };
        let given_back = lock(&self.creating).get(&spec.id).map(|c| c.done.clone());
        let build = self.build(spec, reservation, volumes, scratch);
        let built = tokio::select! {
            // A destroy wins over a boot that has not finished: dropping `build` drops its
            // reservation, which gives everything back.
            biased;
            Ok(()) = &mut cancelled => Err(EngineError::Cancelled { id: spec.id.clone() }),
            built = build => built,
        };
        // A failed create answers once all it took is back (its address, TAP, filter rules,
        // neighbour entry, cgroup, directory), so its caller sees the engine as before.
        if built.is_err()
            && let Some(mut done) = given_back
        {
            while done.changed().await.is_ok() {}
        }
        built
    }

    /// The part of a create that a destroy may cancel: everything after the reservation.
    async fn build(
        &self,
        spec: &CreateSpec,
        reservation: Reservation<'_>,
        volumes: Vec<VolumeMount>,
        scratch: Vec<(VolumeMount, u32)>,
    ) -> Result<SandboxInfo, EngineError> {
        let files = self.layout.sandbox(&spec.id);
        reservation.claim_volumes(&spec.volumes)?;
        let ip = reservation.ip;
        let guest = GuestConfig {
            sandbox_id: spec.id.clone(),
            hostname: spec.guest_hostname().to_owned(),
            token: crate::configdrive::random_token()?,
            env: spec.env.clone(),
            init: spec.init.clone(),
            files: spec.files.clone(),
            ..Default::default()
        };
        let shape = Shape {
            image: &spec.image,
            memory_mib: spec.memory_mib,
            vcpus: spec.vcpus,
            cpu_millis: spec.cpu_millis,
            disk_size_mib: spec.disk_size_mib,
            volumes: &volumes,
            ip,
            mac: mac_for(ip),
        };
        let boot = self.boot_spec(files, shape, guest);
        // Filtered before QEMU exists: the guest's first frame already meets its rules.
        crate::isolation::admit(&self.ns, &self.port(&spec.owner, &boot)).await?;
        self.policies.admit(&boot.tap, ip, spec.net_policy.clone()).await?;
        for (volume, size_mib) in &scratch {
            crate::volume::create(&volume.path, *size_mib).await?;
        }
        let vm = self.boot_in_slot(&spec.id, &boot).await?;
        let who = Identity { id: spec.id.clone(), owner: spec.owner.clone() };
        self.adopt(who, boot, Some(vm), false);
        reservation.keep();
        self.events.send(&spec.id, EventKind::Created);
        self.info(&spec.id)
    }

    /// Boots `spec` holding one of the boot slots for at most `boot_slot`.
    async fn boot_in_slot(
        &self,
        id: &str,
        spec: &BootSpec,
    ) -> Result<Box<dyn Machine>, EngineError> {
        let permit = self.boots.acquire().await.map_err(|_| EngineError::ShuttingDown)?;
        self.check_open()?;
        let boot = self.backend.boot(&self.ns, spec);
        tokio::pin!(boot);
        tokio::select! {
            booted = &mut boot => booted,
            () = tokio::time::sleep(self.config.boot_slot) => {
                drop(permit);
                tracing::warn!(
                    sandbox = %id,
                    slot = ?self.config.boot_slot,
                    "the guest has not answered yet: its boot goes on without a boot slot"
                );
                boot.await
            }
        }
    }

    fn handle(&self, id: &str) -> Result<Handle, EngineError> {
        lock(&self.sandboxes)
            .get(id)
            .map(|e| e.handle.clone())
            .ok_or_else(|| EngineError::not_found(Resource::Sandbox, id))
    }

    fn owner_of(&self, id: &str) -> Result<String, EngineError> {
        lock(&self.sandboxes)
            .get(id)
            .map(|e| e.who.owner.clone())
            .ok_or_else(|| EngineError::not_found(Resource::Sandbox, id))
    }

    /// A sandbox's facts.
    pub fn info(&self, id: &str) -> Result<SandboxInfo, EngineError> {
        lock(&self.sandboxes)
            .get(id)
            .map(Entry::info)
            .ok_or_else(|| EngineError::not_found(Resource::Sandbox, id))
    }

    /// Every sandbox, by ID.
    pub fn list(&self) -> Vec<SandboxInfo> {
        lock(&self.sandboxes).values().map(Entry::info).collect()
    }

    /// Thermal state, without waking anything or waiting for the owner.
    pub fn thermal(&self, id: &str) -> Result<Thermal, EngineError> {
        Ok(self.handle(id)?.shared.thermal())
    }

    /// Makes the sandbox hot (waking it from warm or cold) and holds it so until the lease is
    /// dropped. Every guest operation below goes through this. A hot sandbox is leased without
    /// queueing behind its owner.
    pub async fn lease(&self, id: &str) -> Result<Lease, EngineError> {
        self.check_open()?;
        let handle = self.handle(id)?;
        if let Some(lease) = handle.shared.try_lease() {
            return Ok(lease);
        }
        handle.ask(id, Command::Lease).await?
    }

    /// A lease only if the sandbox is hot right now; never wakes it and never waits.
    pub fn try_lease(&self, id: &str) -> Result<Option<Lease>, EngineError> {
        self.check_open()?;
        Ok(self.handle(id)?.shared.try_lease())
    }

    /// Wakes the sandbox (warm or cold) if needed.
    pub async fn ensure_hot(&self, id: &str) -> Result<(), EngineError> {
        self.lease(id).await.map(drop)
    }

    /// Hot -> warm: vCPUs paused, memory kept. Waits up to `wait` for guest operations in
    /// flight, then refuses with [`EngineError::Busy`]. No-op when already warm.
    pub async fn pause(&self, id: &str, wait: Duration) -> Result<(), EngineError> {
        self.handle(id)?.ask(id, |reply| Command::Pause { wait, reply }).await?
    }

    /// Warm -> hot (same as [`Engine::ensure_hot`]).
    pub async fn unpause(&self, id: &str) -> Result<(), EngineError> {
        self.ensure_hot(id).await
    }

    /// Hot or warm -> cold: device state and RAM on disk, the disk and volumes flushed, QEMU
    /// gone. Waits up to `wait` for guest operations in flight, then refuses with
    /// [`EngineError::Busy`]; never cuts one (what the thermal manager needs: `wait = 0`, skip
    /// busy sandboxes). Returns what the suspend cost (`None` if already cold).
    pub async fn stop(&self, id: &str, wait: Duration) -> Result<Option<Suspended>, EngineError> {
        self.handle(id)?.ask(id, |reply| Command::Stop { wait, cut: None, reply }).await?
    }

    /// A user's stop, as `docker stop` stops a container whatever runs in it: whatever holds a
    /// lease (an attached shell, a running exec, a file transfer, a forwarded connection) is
    /// told at once ([`EngineError::Gone`], reason [`GoneReason::Stopped`]) and given a moment
    /// to let go, then the sandbox is suspended to disk as [`Engine::stop`] does. Sessions and
    /// detached commands live on in the saved memory; a cut exec's command is ended by the
    /// agent when its connection closes.
    pub async fn stop_now(&self, id: &str) -> Result<Option<Suspended>, EngineError> {
        let stop =
            |reply| Command::Stop { wait: Duration::ZERO, cut: Some(GoneReason::Stopped), reply };
        self.handle(id)?.ask(id, stop).await?
    }

    /// Cold -> hot; after a crash, boots again from the disk.
    pub async fn start(&self, id: &str) -> Result<(), EngineError> {
        self.check_open()?;
        let start = |reply| Command::Start { from_disk: false, reply };
        self.handle(id)?.ask(id, start).await?
    }

    /// Cold -> hot by booting from the disk overlay, discarding the saved memory: for a
    /// sandbox whose saved state cannot be restored (v1 had `start --force`, which only retried).
    /// Files on the disk and volumes are kept; processes and unsynced page cache are not.
    pub async fn start_from_disk(&self, id: &str) -> Result<(), EngineError> {
        self.check_open()?;
        let start = |reply| Command::Start { from_disk: true, reply };
        self.handle(id)?.ask(id, start).await?
    }

    /// The host's view of a sandbox's use (thermal state, last use, leases out), read without
    /// waking it and without queueing behind its owner: what a thermal tick needs.
    pub fn host_activity(&self, id: &str) -> Result<Activity, EngineError> {
        let shared = self.handle(id)?.shared;
        Ok(Activity {
            thermal: shared.thermal(),
            last_host_activity: shared.last_activity(),
            in_flight: shared.leases(),
            agent: None,
        })
    }

    /// [`Engine::host_activity`] plus the agent's own view when the sandbox is hot (asked
    /// through a lease that never wakes it).
    pub async fn activity(&self, id: &str) -> Result<Activity, EngineError> {
        let mut activity = self.host_activity(id)?;
        if let Some(lease) = self.handle(id)?.shared.try_lease() {
            activity.agent = lease.run(lease.client().activity()).await.ok();
        }
        Ok(activity)
    }

    /// Saves a sandbox's disk (its overlay over its image, flattened) as the raw ext4 file
    /// `dest`, for a new image: a hot sandbox is paused only while it is copied, a warm one
    /// stays paused, a cold one is refused (wake it first). The caller flushes the guest's
    /// caches first (`sync` through a lease) for a copy that holds its latest writes.
    pub async fn save_disk(&self, id: &str, dest: &std::path::Path) -> Result<(), EngineError> {
        let dest = dest.to_owned();
        self.handle(id)?.ask(id, |reply| Command::SaveDisk { dest, reply }).await?
    }

    /// The record to store so a restarted daemon can recover the sandbox.
    pub async fn export(&self, id: &str) -> Result<SandboxRecord, EngineError> {
        self.handle(id)?.ask(id, Command::Export).await
    }

    /// Test support: the sandbox's owner task panics, as a bug in it would.
    #[cfg(feature = "test-support")]
    pub async fn simulate_owner_panic(&self, id: &str) -> Result<(), EngineError> {
        let handle = self.handle(id)?;
        handle
            .tx_for_tests()
            .send(Command::Panic)
            .await
            .map_err(|_| EngineError::not_found(Resource::Sandbox, id))
    }

    /// Destroys a sandbox: QEMU ends (its TAP vanishes with it), the address returns to the
    /// pool, its volume claims are given back and the directory (disk overlay, RAM file, state,
    /// config drive, scratch volumes, logs) is removed. Volumes attached to it are kept. Once it
    /// has begun, it completes even if the caller stops waiting.
    pub async fn destroy(&self, id: &str) -> Result<(), EngineError> {
        let entry = loop {
            let found = {
                let mut sandboxes = lock(&self.sandboxes);
                match sandboxes.remove(id) {
                    Some(entry) => Ok(entry),
                    None => match lock(&self.creating).get_mut(id) {
                        Some(create) => Err(Some((create.cancel.take(), create.done.clone()))),
                        None => Err(None),
                    },
                }
            };
            match found {
                Ok(entry) => break entry,
                Err(None) => return Err(EngineError::not_found(Resource::Sandbox, id)),
                // A create in flight: cancel it and wait until all it took is back. Should
                // its boot have finished first, the sandbox is registered by then, and the
                // next turn destroys it as any other.
                Err(Some((cancel, mut done))) => {
                    if let Some(cancel) = cancel {
                        let _ = cancel.send(());
                    }
                    while done.changed().await.is_ok() {}
                    if !lock(&self.sandboxes).contains_key(id) {
                        self.events.send(id, EventKind::Destroyed);
                        return Ok(());
                    }
                }
            }
        };
        // The owner does the work, after anything it is busy with (a boot from disk, say): it
        // alone knows when nothing can recreate the files any more. Should this call be
        // dropped before the message goes out, the flag has the owner clean up anyway once its
        // queue closes.
        entry.handle.shared.destroyed.store(true, Ordering::SeqCst);
        // Streams and sessions end now, even if the owner is still busy (the owner cuts again
        // before it kills QEMU, for leases it handed out meanwhile).
        entry.handle.shared.cut(GoneReason::Destroyed);
        if entry.handle.ask(id, Command::Destroy).await.is_err() {
            // The owner failed earlier (its supervisor gave back the address and claims; its
            // QEMU went with it): only the files and the neighbour entry are left.
            let (files, backend) = (entry.files.clone(), Arc::clone(&self.backend));
            let (netns, sandbox) = (self.ns.name().to_owned(), id.to_owned());
            let (tx, rx) = tokio::sync::oneshot::channel();
            off_thread(move || {
                crate::teardown::remove_files(&*backend, &netns, &sandbox, &files, &files);
                let _ = tx.send(());
            });
            let _ = rx.await;
            let tap = tap_name(entry.ip);
            let (bridge, policies) = (&self.config.bridge, &self.policies);
            crate::teardown::unplug(&self.ns, bridge, policies, id, entry.ip, &tap).await;
            self.events.send(id, EventKind::Destroyed);
        }
        Ok(())
    }

    /// Replaces the egress policy of sandbox `id`, in any thermal state: new connections meet
    /// it at once, established ones it refuses are cut, and pins whose names it no longer
    /// allows are dropped.
    pub async fn set_net_policy(
        &self,
        id: &str,
        policy: bhatti_core::Policy,
    ) -> Result<(), EngineError> {
        let ip = lock(&self.sandboxes)
            .get(id)
            .map(|e| e.ip)
            .ok_or_else(|| EngineError::not_found(Resource::Sandbox, id))?;
        self.policies.change(ip, policy).await
    }

    /// The egress policy sandbox `id` runs with.
    pub fn net_policy(&self, id: &str) -> Result<bhatti_core::Policy, EngineError> {
        let ip = lock(&self.sandboxes)
            .get(id)
            .map(|e| e.ip)
            .ok_or_else(|| EngineError::not_found(Resource::Sandbox, id))?;
        self.policies.policy(ip).ok_or_else(|| EngineError::not_found(Resource::Sandbox, id))
    }

    /// What the resolver has done, when the engine runs one.
    pub fn resolver_stats(&self) -> Option<crate::dns::ResolverStats> {
        lock(&self.resolver).as_ref().map(crate::dns::Resolver::stats)
    }

    /// Takes down what the engine set up for egress in its namespace (the resolver, the NAT
    /// table and route, the policy table), after [`Engine::shutdown`]: the uplink that fed them
    /// goes next. Best effort, logged.
    pub async fn close_network(&self) {
        drop(lock(&self.resolver).take());
        if let Err(e) = crate::egress::disable_any(&self.ns).await {
            tracing::warn!("removing the egress NAT: {}", e.report());
        }
        if let Err(e) = crate::egress_filter::uninstall(&self.ns).await {
            tracing::warn!("removing the egress filter: {}", e.report());
        }
    }

    /// Suspends every sandbox to disk for a daemon shutdown. From the first moment no lease,
    /// wake or create starts. Sandboxes stop in parallel (at most
    /// [`SHUTDOWN_PARALLEL`] at once); operations still in flight after `wait` are cut (the
    /// daemon's connections end with it anyway); the whole takes at most `deadline`. Returns
    /// every sandbox's record with its stop's error, if any (a sandbox whose stop failed boots
    /// from its disk next time); a sandbox whose stop outlived the deadline has no record.
    pub async fn shutdown(
        &self,
        wait: Duration,
        deadline: Duration,
    ) -> Vec<(String, Result<(SandboxRecord, Option<EngineError>), EngineError>)> {
        self.closing.store(true, Ordering::SeqCst);
        // QEMUs started ahead for cold wakes go first, and none starts after.
        self.backend.close_pool().await;
        let until = tokio::time::Instant::now() + deadline;
        let handles: Vec<(String, Handle)> =
            lock(&self.sandboxes).iter().map(|(id, e)| (id.clone(), e.handle.clone())).collect();
        let limit = Arc::new(Semaphore::new(SHUTDOWN_PARALLEL));
        let mut stops = tokio::task::JoinSet::new();
        for (id, handle) in handles {
            let limit = Arc::clone(&limit);
            stops.spawn(async move {
                let work = async {
                    let _permit = limit.acquire().await.map_err(|_| EngineError::ShuttingDown)?;
                    let stopped = handle
                        .ask(&id, |reply| Command::Stop {
                            wait,
                            cut: Some(GoneReason::ShuttingDown),
                            reply,
                        })
                        .await
                        .and_then(|r| r);
                    let record = handle.ask(&id, Command::Export).await?;
                    Ok((record, stopped.err()))
                };
                let result = match tokio::time::timeout_at(until, work).await {
                    Ok(result) => result,
                    Err(_) => Err(EngineError::Busy { id: id.clone(), in_flight: 0 }),
                };
                (id, result)
            });
        }
        let mut results = Vec::new();
        while let Some(done) = stops.join_next().await {
            if let Ok(result) = done {
                results.push(result);
            }
        }
        results.sort_by(|a, b| a.0.cmp(&b.0));
        results
    }
}

/// The policy a record carries; one that no longer passes the checks (written by another
/// version) opens nothing.
pub(crate) fn recorded_policy(record: &SandboxRecord) -> bhatti_core::Policy {
    record.net_policy.check().unwrap_or_else(|e| {
        tracing::warn!(sandbox = %record.id, "its recorded egress policy is refused ({e}): deny");
        bhatti_core::Policy { posture: bhatti_core::Posture::Deny, ..Default::default() }
    })
}

/// Sandboxes a shutdown stops at once: each stop is mostly an fsync, so a few in parallel use
/// the disk well without one slow sandbox holding up the rest.
pub const SHUTDOWN_PARALLEL: usize = 4;

/// The shape of a VM to boot.
pub(crate) struct Shape<'a> {
    image: &'a Path,
    memory_mib: u32,
    vcpus: u8,
    cpu_millis: Option<u32>,
    disk_size_mib: Option<u32>,
    volumes: &'a [VolumeMount],
    ip: Ipv4Addr,
    mac: [u8; 6],
}

impl Shape<'_> {
    /// The CPU bound: what the caller asked for, else every vCPU a whole core.
    fn cpu_millis(&self) -> u32 {
        self.cpu_millis.unwrap_or(u32::from(self.vcpus) * 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_too_deep_for_socket_paths_is_refused() {
        assert!(check_socket_room(&DataDir::new("/var/lib/bhatti")).is_ok());
        let deep = DataDir::new(format!("/{}", "d".repeat(60)));
        let err = check_socket_room(&deep).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Invalid);
        assert!(err.to_string().contains("too deep"), "{err}");
    }

    #[test]
    fn ids_owners_hostnames_macs_and_taps() {
        assert!(valid_id("dev-1") && valid_id(&"a".repeat(32)) && valid_id("0123abcd"));
        for bad in ["", "-x", "Dev", "a_b", "a.b", "../x", &"a".repeat(33)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
        assert!(check_owner("usr_1a2b3c4d").is_ok());
        for bad in ["", "a/b", "a b", "..", &"o".repeat(65)] {
            assert_eq!(check_owner(bad).unwrap_err().kind(), crate::ErrorKind::Invalid, "{bad:?}");
        }
        assert!(check_hostname("My-Box1").is_ok());
        for bad in ["", "-a", "a-", "a.b", "a_b", &"h".repeat(64)] {
            assert!(check_hostname(bad).is_err(), "{bad:?}");
        }
        let ip = Ipv4Addr::new(10, 200, 3, 7);
        assert_eq!(tap_name(ip), "tap3-7");
        assert_eq!(parse_mac(&crate::net::mac_text(mac_for(ip))).unwrap(), mac_for(ip));
        assert!(parse_mac("52:54:00").is_err() && parse_mac("zz:54:00:00:00:00").is_err());
    }
}
