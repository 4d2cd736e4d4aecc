//! The sandbox registry: create, find, list and destroy sandboxes on one network namespace.
//!
//! The registry lives in `std::sync::Mutex`es held only for map, pool and claim updates, never
//! across an `.await`: operations clone the sandbox's handle and release the lock. Each sandbox
//! has an owner task (`sandbox.rs`) that alone changes its thermal state; guest operations
//! (`guest.rs`) take a lease from it (waking the sandbox if needed) and then talk to the agent
//! directly. Boots and restores are limited by one semaphore, so a burst of creates and wakes
//! cannot start more emulated CPUs than the machine can run.
//!
//! What a create, resume or destroy takes (the name, an address, volume claims, the directory)
//! is held by a [`Reservation`] that gives it all back when dropped unfinished, also when the
//! caller's future is dropped mid-way (a client that disconnects): nothing leaks, and the name
//! is free again.

mod checkpoints;
mod guest;
mod recovery;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use proto::guest::{GuestConfig, GuestVolume};
use tokio::sync::Semaphore;

use crate::checkpoint;
use crate::error::EngineError;
use crate::ippool::{IpPool, Subnet};
use crate::net::Netns;
use crate::sandbox::{self, Activity, Command, Handle, Lease};
pub use crate::spec::CreateSpec;
use crate::state::{SandboxRecord, Thermal};
use crate::vm::{self, BootSpec, Suspended, Vm, VolumeDisk};
use crate::volume::{Claims, VolumeMount};

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
    pool: Arc<Mutex<IpPool>>,
    sandboxes: Mutex<BTreeMap<String, Entry>>,
    claims: Arc<Mutex<Claims>>,
    boots: Arc<Semaphore>,
    /// One engine per data directory: a second would take the first's sandboxes for orphans.
    data_lock: Option<nix::fcntl::Flock<std::fs::File>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("netns", &self.config.netns).finish()
    }
}

/// What a create or checkpoint resume holds: the sandbox's name (its directory exists), its
/// address, its volume claims. Dropped without [`Reservation::keep`], it gives everything back
/// and removes the directory, whether the operation failed or its caller went away.
pub(crate) struct Reservation<'a> {
    engine: &'a Engine,
    name: String,
    ip: Ipv4Addr,
    dir: PathBuf,
    kept: bool,
}

impl Reservation<'_> {
    /// Claims volumes for the sandbox (given back with the rest on drop).
    fn claim_volumes(&self, volumes: &[VolumeMount]) -> Result<(), EngineError> {
        lock(&self.engine.claims).claim(&self.name, volumes)
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
        // A QEMU the owner has not ended yet (the caller went away mid-destroy) goes first.
        vm::kill_orphan(&self.dir);
        lock(&self.engine.claims).release(&self.name);
        lock(&self.engine.pool).release(self.ip);
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("removing {}: {e}", self.dir.display());
        }
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

/// Where the engine's own files live under the data directory; volumes and images must not
/// point into them (another sandbox's disk or memory).
fn inside_engine_files(data_dir: &Path, path: &Path) -> bool {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    ["sandboxes", "checkpoints"].iter().any(|d| {
        let dir = data_dir.join(d);
        path.starts_with(dir.canonicalize().unwrap_or(dir))
    })
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

    /// Reserves `name` and an address chosen by `pick` under the registry lock.
    fn reserve(
        &self,
        name: &str,
        pick: impl FnOnce(&mut IpPool) -> Result<Ipv4Addr, EngineError>,
    ) -> Result<Reservation<'_>, EngineError> {
        let dir = self.config.data_dir.join("sandboxes").join(name);
        let sandboxes = lock(&self.sandboxes);
        let exists = || refused(format!("sandbox {name:?} already exists"));
        if sandboxes.contains_key(name) {
            return Err(exists());
        }
        // The directory is the name's reservation: creating it is atomic.
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(exists()),
            Err(e) => return Err(e.into()),
        }
        let picked = pick(&mut lock(&self.pool));
        drop(sandboxes);
        match picked {
            Ok(ip) => Ok(Reservation { engine: self, name: name.to_owned(), ip, dir, kept: false }),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(e)
            }
        }
    }

    /// Starts the owner of a sandbox (hot with `vm`, else cold: with `snapshot`, its memory is
    /// on disk) and adds it to the registry.
    fn adopt(&self, name: &str, spec: BootSpec, vm: Option<Vm>, snapshot: bool) {
        let (ip, dir) = (spec.ip, spec.dir.clone());
        let client = match &vm {
            Some(vm) => Arc::clone(&vm.client),
            None => vm::agent_client(&self.ns, &spec),
        };
        let handle = sandbox::spawn(
            name.to_owned(),
            self.ns.clone(),
            spec,
            vm,
            client,
            snapshot,
            Arc::clone(&self.boots),
            sandbox::Giveback {
                pool: Arc::clone(&self.pool),
                claims: Arc::clone(&self.claims),
                bridge: self.config.bridge.clone(),
            },
        );
        let entry = Entry { name: name.to_owned(), ip, dir, handle };
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

    /// Deletes a volume that no sandbox has attached (read-only attachments count).
    pub fn delete_volume(&self, name: &str) -> Result<(), EngineError> {
        check_name("volume", name)?;
        let path = self.volume_path(name);
        // Held until the file is gone, so no create claims it in between.
        let claims = lock(&self.claims);
        let users = claims.users(&path);
        if users > 0 {
            return Err(refused(format!("volume {name:?} is attached to {users} sandbox(es)")));
        }
        std::fs::remove_file(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => EngineError::NotFound(format!("volume {name}")),
            _ => e.into(),
        })
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
            if inside_engine_files(&self.config.data_dir, &v.path) {
                return Err(refused(format!(
                    "{} belongs to a sandbox or checkpoint, not a volume",
                    v.path.display()
                )));
            }
        }
        Ok(())
    }

    /// Creates a sandbox and returns once its agent answers. On failure, or when the caller
    /// stops waiting, nothing is left behind.
    pub async fn create(&self, spec: &CreateSpec) -> Result<SandboxInfo, EngineError> {
        check_name("sandbox", &spec.name)?;
        if spec.vcpus == 0 || spec.memory_mib < 64 {
            return Err(refused("a sandbox needs at least 1 vCPU and 64 MiB".into()));
        }
        if !spec.image.is_file() || inside_engine_files(&self.config.data_dir, &spec.image) {
            return Err(refused(format!("image {} does not exist", spec.image.display())));
        }
        if spec.volumes.len() + spec.scratch_volumes.len() > MAX_VOLUMES {
            return Err(refused(format!("at most {MAX_VOLUMES} volumes per sandbox")));
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
        for (volume, _) in &scratch {
            volume.validate_mount()?;
            if volumes.iter().any(|v| v.mount == volume.mount) {
                return Err(refused(format!("two volumes are mounted at {}", volume.mount)));
            }
            volumes.push(volume.clone());
        }
        let reservation =
            self.reserve(&spec.name, |pool| pool.allocate().map_err(|e| refused(e.to_string())))?;
        reservation.claim_volumes(&spec.volumes)?;
        let ip = reservation.ip;
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
        for (volume, size_mib) in &scratch {
            crate::volume::create(&volume.path, *size_mib).await?;
        }
        let vm = {
            let _permit = self.boots.acquire().await.map_err(|_| shutting_down())?;
            vm::boot(&self.ns, &boot).await?
        };
        self.adopt(&spec.name, boot, Some(vm), false);
        reservation.keep();
        self.info(&spec.name)
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
        self.handle(name)?.ask(name, |reply| Command::Stop { wait, force: false, reply }).await?
    }

    /// Cold -> hot; after a crash, boots again from the disk.
    pub async fn start(&self, name: &str) -> Result<(), EngineError> {
        let start = |reply| Command::Start { from_disk: false, reply };
        self.handle(name)?.ask(name, start).await?
    }

    /// Cold -> hot by booting from the disk overlay, discarding the saved memory: for a
    /// sandbox whose saved state cannot be restored (v1 had `start --force`, which only retried).
    /// Files on the disk and volumes are kept; processes and unsynced page cache are not.
    pub async fn start_from_disk(&self, name: &str) -> Result<(), EngineError> {
        let start = |reply| Command::Start { from_disk: true, reply };
        self.handle(name)?.ask(name, start).await?
    }

    /// The host's activity cache, plus the agent's view when the sandbox is hot.
    pub async fn activity(&self, name: &str) -> Result<Activity, EngineError> {
        self.handle(name)?.ask(name, Command::Activity).await
    }

    /// The record to store so a restarted daemon can recover the sandbox.
    pub async fn export(&self, name: &str) -> Result<SandboxRecord, EngineError> {
        self.handle(name)?.ask(name, Command::Export).await
    }

    /// Destroys a sandbox: QEMU ends (its TAP vanishes with it), the address returns to the
    /// pool, its volume claims are given back and the directory (disk overlay, RAM file, state,
    /// config drive, scratch volumes, logs) is removed. Volumes attached to it are kept. Once it
    /// has begun, it completes even if the caller stops waiting.
    pub async fn destroy(&self, name: &str) -> Result<(), EngineError> {
        let entry = lock(&self.sandboxes)
            .remove(name)
            .ok_or_else(|| EngineError::NotFound(name.to_owned()))?;
        // The owner does the work, after anything it is busy with (a boot from disk, say): it
        // alone knows when nothing can recreate the files any more. Should this call be
        // dropped before the message goes out, the flag has the owner clean up anyway once its
        // queue closes.
        entry.handle.shared.destroyed.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = entry.handle.ask(name, Command::Destroy).await;
        Ok(())
    }

    /// Suspends every sandbox to disk for a daemon shutdown: operations still in flight after
    /// `wait` are cut (the daemon's connections end with it anyway). Returns a record for every
    /// sandbox, also those whose stop failed (they boot from their disk next time).
    pub async fn shutdown(&self, wait: Duration) -> Vec<(SandboxRecord, Option<EngineError>)> {
        let names: Vec<String> = lock(&self.sandboxes).keys().cloned().collect();
        let mut records = Vec::new();
        for name in names {
            let Ok(handle) = self.handle(&name) else { continue };
            let stopped = handle
                .ask(&name, |reply| Command::Stop { wait, force: true, reply })
                .await
                .and_then(|r| r);
            if let Ok(record) = handle.ask(&name, Command::Export).await {
                records.push((record, stopped.err()));
            }
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
