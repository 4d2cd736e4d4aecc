//! Networking inside a network namespace the engine owns: the namespace itself, a bridge with
//! the gateway address, and one TAP per VM.
//!
//! Namespaces are created with `ip netns add` (which also sets up the bind mount under
//! /run/netns); everything inside them is done with the classic ioctls from a thread that has
//! entered the namespace, so nothing parses `ip` output. A TAP is opened non-persistent: it
//! disappears when the last descriptor (QEMU's) closes, so a VM's TAP cannot outlive it.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sched::{CloneFlags, setns};
use tokio::process::Command;

use crate::error::EngineError;
use crate::run::run;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const SIOCBRADDBR: libc::c_ulong = 0x89a0;
const SIOCBRADDIF: libc::c_ulong = 0x89a2;
/// Not in the libc crate for Linux (linux/sockios.h).
const SIOCDARP: libc::c_ulong = 0x8953;

/// A named network namespace under /run/netns.
#[derive(Debug, Clone)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

fn net_err(op: impl Into<String>) -> impl FnOnce(io::Error) -> EngineError {
    let op = op.into();
    move |source| EngineError::Net { op, source }
}

impl Netns {
    /// Opens the namespace `name`, creating it if needed (idempotent).
    pub async fn create(name: &str) -> Result<Self, EngineError> {
        let path = Path::new("/run/netns").join(name);
        if !path.exists() {
            run(Command::new("ip").args(["netns", "add", name]), Duration::from_secs(10)).await?;
        }
        let ns = Self { name: name.to_owned(), path };
        ns.enter(|| interface_up("lo")).await.map_err(net_err("bring up lo"))?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bind-mounted path (`/run/netns/<name>`), for `setns`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Deletes the namespace and everything in it (bridge, TAPs).
    pub async fn delete(&self) -> Result<(), EngineError> {
        if self.path.exists() {
            run(Command::new("ip").args(["netns", "delete", &self.name]), Duration::from_secs(10))
                .await?;
        }
        Ok(())
    }

    /// Runs `f` on a fresh thread that has entered the namespace; sockets and devices it
    /// creates belong to the namespace. (A fresh thread, never a pooled one, so no other work
    /// ever runs in the wrong namespace.)
    pub async fn enter<T, F>(&self, f: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> io::Result<T> + Send + 'static,
    {
        let path = self.path.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new().name("netns".into()).spawn(move || {
            let result = File::open(&path)
                .and_then(|ns| setns(ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from))
                .and_then(|()| f());
            let _ = tx.send(result);
        })?;
        rx.await.map_err(|_| io::Error::other("namespace thread died"))?
    }

    /// Applies an nftables JSON document inside the namespace, atomically (nft applies a file
    /// as one transaction).
    pub async fn nft(&self, doc: &serde_json::Value) -> Result<(), EngineError> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, "nft", "-j", "-f", "-"]);
        apply_nft(cmd, doc, &self.name).await
    }

    /// Creates the bridge (if missing), gives it `gateway/prefix` and brings it up.
    pub async fn setup_bridge(
        &self,
        bridge: &str,
        gateway: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), EngineError> {
        let bridge = bridge.to_owned();
        self.enter(move || {
            let sock = ioctl_socket()?;
            let name = ifname(&bridge)?;
            // SAFETY: SIOCBRADDBR reads a NUL-terminated interface name.
            let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCBRADDBR as _, name.as_ptr()) };
            if rc < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
                return Err(io::Error::last_os_error());
            }
            // A bridge without a MAC of its own takes its lowest port's, so it changes whenever
            // a TAP comes or goes, and a MAC change flushes every neighbour entry on it, the
            // permanent ones of the other guests included. A fixed MAC keeps them.
            let o = gateway.octets();
            set_mac(&sock, &bridge, [0x52, 0x54, 0x00, o[1], o[2], o[3]])?;
            set_ipv4(&sock, &bridge, libc::SIOCSIFADDR as _, gateway)?;
            set_ipv4(&sock, &bridge, libc::SIOCSIFNETMASK as _, prefix_to_mask(prefix))?;
            // Strict reverse-path filtering on the guests' side: a guest sending from an
            // address outside its subnet (spoofing) is dropped here, whatever `all` says.
            std::fs::write(format!("/proc/sys/net/ipv4/conf/{bridge}/rp_filter"), "1")?;
            interface_up(&bridge)
        })
        .await
        .map_err(net_err(format!("set up bridge in namespace {}", self.name)))
    }

    /// Opens a TAP device `tap` in the namespace, attaches it to `bridge` and brings it up.
    /// The returned descriptor is what QEMU gets; the device vanishes when it is closed.
    pub async fn open_tap(&self, tap: &str, bridge: &str) -> Result<OwnedFd, EngineError> {
        let (tap, bridge) = (tap.to_owned(), bridge.to_owned());
        let op = format!("open TAP {tap} in namespace {}", self.name);
        self.enter(move || {
            let dev = create_tap(&tap)?;
            add_to_bridge(&tap, &bridge)?;
            interface_up(&tap)?;
            Ok(dev)
        })
        .await
        .map_err(net_err(op))
    }

    /// Opens a TAP outside any bridge, with the MAC `mac` and loose reverse-path filtering: a
    /// private link to one guest, reached with sockets bound to the device, while another guest
    /// on the bridge holds the same address. [`Netns::join_bridge`] ends the isolation.
    pub async fn open_isolated_tap(&self, tap: &str, mac: [u8; 6]) -> Result<OwnedFd, EngineError> {
        let tap = tap.to_owned();
        let op = format!("open isolated TAP {tap} in namespace {}", self.name);
        self.enter(move || {
            let dev = create_tap(&tap)?;
            set_mac(&ioctl_socket()?, &tap, mac)?;
            // Replies arrive on the TAP, which has no address of its own, from an address the
            // routes put behind the bridge: any reverse-path filtering drops them (loose mode
            // too, for a device without an address). The effective value is the larger of the
            // device's and `all`'s; the other devices keep their own.
            std::fs::write("/proc/sys/net/ipv4/conf/all/rp_filter", "0")?;
            std::fs::write(format!("/proc/sys/net/ipv4/conf/{tap}/rp_filter"), "0")?;
            interface_up(&tap)?;
            Ok(dev)
        })
        .await
        .map_err(net_err(op))
    }

    /// Gives an isolated TAP a MAC of its own and attaches it to `bridge`.
    pub async fn join_bridge(
        &self,
        tap: &str,
        bridge: &str,
        mac: [u8; 6],
    ) -> Result<(), EngineError> {
        let (tap, bridge) = (tap.to_owned(), bridge.to_owned());
        let op = format!("attach {tap} to {bridge} in namespace {}", self.name);
        self.enter(move || {
            set_mac(&ioctl_socket()?, &tap, mac)?;
            add_to_bridge(&tap, &bridge)
        })
        .await
        .map_err(net_err(op))
    }

    /// The MAC of an interface.
    pub async fn mac(&self, dev: &str) -> Result<[u8; 6], EngineError> {
        let dev = dev.to_owned();
        let op = format!("read the MAC of {dev} in namespace {}", self.name);
        self.enter(move || {
            let sock = ioctl_socket()?;
            let mut req = ifreq(&dev)?;
            // SAFETY: SIOCGIFHWADDR fills the hwaddr member of our ifreq.
            if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR as _, &mut req) } < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut mac = [0u8; 6];
            // SAFETY: the kernel just wrote the hwaddr member.
            let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
            for (dst, src) in mac.iter_mut().zip(data) {
                *dst = src as u8;
            }
            Ok(mac)
        })
        .await
        .map_err(net_err(op))
    }

    /// Installs a permanent neighbour entry `ip -> mac` on `dev`, so the first packet to a new
    /// guest goes out without an ARP round trip (and a stale entry from a previous guest with
    /// the same IP is replaced).
    pub async fn set_neighbour(
        &self,
        dev: &str,
        ip: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<(), EngineError> {
        let dev = dev.to_owned();
        self.enter(move || {
            let sock = ioctl_socket()?;
            // SAFETY: arpreq is plain old data; all-zero is valid.
            let mut req: libc::arpreq = unsafe { std::mem::zeroed() };
            req.arp_pa = sockaddr_v4(ip);
            req.arp_ha.sa_family = libc::ARPHRD_ETHER;
            for (dst, src) in req.arp_ha.sa_data.iter_mut().zip(mac) {
                *dst = src as libc::c_char;
            }
            req.arp_flags = libc::ATF_PERM | libc::ATF_COM;
            for (dst, src) in req.arp_dev.iter_mut().zip(ifname(&dev)?.as_bytes()) {
                *dst = *src as libc::c_char;
            }
            // SAFETY: SIOCSARP reads the arpreq we own.
            if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSARP as _, &req) } < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
        .await
        .map_err(net_err(format!("set neighbour {ip} in namespace {}", self.name)))
    }

    /// Removes the neighbour entry for `ip` on `dev` (a destroyed guest's). Absent is fine.
    pub async fn delete_neighbour(&self, dev: &str, ip: Ipv4Addr) -> Result<(), EngineError> {
        let dev = dev.to_owned();
        self.enter(move || {
            let sock = ioctl_socket()?;
            // SAFETY: arpreq is plain old data; all-zero is valid.
            let mut req: libc::arpreq = unsafe { std::mem::zeroed() };
            req.arp_pa = sockaddr_v4(ip);
            for (dst, src) in req.arp_dev.iter_mut().zip(ifname(&dev)?.as_bytes()) {
                *dst = *src as libc::c_char;
            }
            // SAFETY: SIOCDARP reads the arpreq we own.
            if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCDARP as _, &req) } < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ENXIO) {
                    return Err(e);
                }
            }
            Ok(())
        })
        .await
        .map_err(net_err(format!("delete neighbour {ip} in namespace {}", self.name)))
    }

    /// The permanent neighbour entries on `dev` (those the engine installs; entries the kernel
    /// is still resolving or has learnt come and go by themselves).
    pub async fn neighbours(&self, dev: &str) -> Result<Vec<Ipv4Addr>, EngineError> {
        let dev = dev.to_owned();
        self.enter(move || {
            // /proc/net follows the process's namespace; thread-self follows this thread's.
            let table = std::fs::read_to_string("/proc/thread-self/net/arp")?;
            Ok(table
                .lines()
                .skip(1)
                .filter_map(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    let flags =
                        u32::from_str_radix(cols.get(2)?.trim_start_matches("0x"), 16).ok()?;
                    let permanent = flags & libc::ATF_PERM as u32 != 0;
                    (permanent && cols.get(5) == Some(&dev.as_str()))
                        .then(|| cols[0].parse().ok())?
                })
                .collect())
        })
        .await
        .map_err(net_err(format!("read neighbours in namespace {}", self.name)))
    }

    /// Names of the interfaces in the namespace (from /sys, read inside it).
    pub async fn interfaces(&self) -> Result<Vec<String>, EngineError> {
        self.enter(|| {
            // sysfs shows the namespace of the process that mounted it, so ask the kernel
            // through if_nameindex, which follows the calling thread's namespace.
            Ok(nix::net::if_::if_nameindex()?
                .iter()
                .map(|i| i.name().to_string_lossy().into_owned())
                .collect())
        })
        .await
        .map_err(net_err("list interfaces"))
    }
}

/// A MAC in its usual text form (`52:54:00:0a:c8:00`), as QEMU's command line, the guest's
/// SET_NET and the sandbox record spell it.
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// A netmask from a prefix length.
pub fn prefix_to_mask(prefix: u8) -> Ipv4Addr {
    let bits = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix.min(32))) };
    Ipv4Addr::from(bits)
}

fn ioctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before wrapping.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

fn ifname(name: &str) -> io::Result<CString> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in interface name"))
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    let name = ifname(name)?;
    // SAFETY: ifreq is plain old data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

fn interface_index(sock: &OwnedFd, name: &str) -> io::Result<libc::c_int> {
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFINDEX fills ifru_ifindex of our ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFINDEX as _, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just wrote the ifindex member.
    Ok(unsafe { req.ifr_ifru.ifru_ifindex })
}

/// An IPv4 address as the generic `sockaddr` the ioctls take.
fn sockaddr_v4(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(addr).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes; the kernel reads it as sockaddr_in.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn set_ipv4(sock: &OwnedFd, name: &str, request: libc::c_ulong, addr: Ipv4Addr) -> io::Result<()> {
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_v4(addr);
    // SAFETY: SIOCSIFADDR/SIOCSIFNETMASK read our ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), request as _, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Creates a TAP device (non-persistent: it goes when the descriptor closes).
fn create_tap(tap: &str) -> io::Result<OwnedFd> {
    let dev = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun")?;
    let mut req = ifreq(tap)?;
    req.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI;
    // SAFETY: TUNSETIFF reads and updates the ifreq we own.
    if unsafe { libc::ioctl(dev.as_raw_fd(), TUNSETIFF as _, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(dev))
}

fn add_to_bridge(port: &str, bridge: &str) -> io::Result<()> {
    let sock = ioctl_socket()?;
    let index = interface_index(&sock, port)?;
    let mut add = ifreq(bridge)?;
    add.ifr_ifru.ifru_ifindex = index;
    // SAFETY: SIOCBRADDIF reads the bridge name and the port's ifindex from our ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCBRADDIF as _, &add) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_mac(sock: &OwnedFd, name: &str, mac: [u8; 6]) -> io::Result<()> {
    let mut req = ifreq(name)?;
    // SAFETY: writing the hwaddr member of a zeroed ifreq union.
    unsafe {
        req.ifr_ifru.ifru_hwaddr.sa_family = libc::ARPHRD_ETHER;
        for (dst, src) in req.ifr_ifru.ifru_hwaddr.sa_data.iter_mut().zip(mac) {
            *dst = src as libc::c_char;
        }
    }
    // SAFETY: SIOCSIFHWADDR reads our ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFHWADDR as _, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn interface_up(name: &str) -> io::Result<()> {
    let sock = ioctl_socket()?;
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write our ifreq.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Applies an nftables JSON document in the daemon's own namespace (the uplink's host side).
pub async fn nft_here(doc: &serde_json::Value) -> Result<(), EngineError> {
    let mut cmd = Command::new("nft");
    cmd.args(["-j", "-f", "-"]);
    apply_nft(cmd, doc, "of the host").await
}

/// Runs `cmd` (an `nft -j -f -`) with `doc` on its stdin. The document goes in from an
/// anonymous temporary file, so the shared `run` (deadline, stderr in the error) applies
/// unchanged and there is no pipe to feed while waiting.
async fn apply_nft(mut cmd: Command, doc: &serde_json::Value, ns: &str) -> Result<(), EngineError> {
    use std::io::{Seek, Write};
    let io_err = |source: io::Error| EngineError::Net {
        op: format!("prepare nftables input for namespace {ns}"),
        source,
    };
    let mut input = tempfile::tempfile().map_err(io_err)?;
    input.write_all(doc.to_string().as_bytes()).map_err(io_err)?;
    input.rewind().map_err(io_err)?;
    run(cmd.stdin(std::process::Stdio::from(input)), Duration::from_secs(10)).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(prefix_to_mask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(prefix_to_mask(16), Ipv4Addr::new(255, 255, 0, 0));
        assert_eq!(prefix_to_mask(32), Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(prefix_to_mask(0), Ipv4Addr::new(0, 0, 0, 0));
    }

    /// Deletes the namespace even when an assertion fails.
    struct Cleanup(String);

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip").args(["netns", "delete", &self.0]).status();
        }
    }

    #[tokio::test]
    async fn namespace_bridge_and_tap_lifecycle() {
        let name = format!("bhatti-unit-{}", std::process::id());
        let ns = Netns::create(&name).await.unwrap();
        let _cleanup = Cleanup(name.clone());
        ns.setup_bridge("br0", Ipv4Addr::new(10, 99, 0, 1), 24).await.unwrap();
        // Idempotent.
        ns.setup_bridge("br0", Ipv4Addr::new(10, 99, 0, 1), 24).await.unwrap();
        let tap = ns.open_tap("tap0", "br0").await.unwrap();
        let names = ns.interfaces().await.unwrap();
        assert!(
            names.contains(&"br0".to_owned()) && names.contains(&"tap0".to_owned()),
            "{names:?}"
        );
        // The TAP is gone once its descriptor closes.
        drop(tap);
        let names = ns.interfaces().await.unwrap();
        assert!(!names.contains(&"tap0".to_owned()), "{names:?}");
        // Nothing leaked into the machine's own namespace.
        let host: Vec<String> = nix::net::if_::if_nameindex()
            .unwrap()
            .iter()
            .map(|i| i.name().to_string_lossy().into_owned())
            .collect();
        assert!(!host.contains(&"tap0".to_owned()));
        ns.delete().await.unwrap();
        assert!(!Path::new("/run/netns").join(&name).exists());
    }
}
