//! Resetting the guest's TCP connections to the outside (SET_IDENTITY's `reset_connections`): a
//! clone must not continue its source's conversations, whose peers already talk to the source.
//!
//! The kernel's own way (`SOCK_DESTROY` over sock_diag) needs `CONFIG_INET_DIAG_DESTROY`, which
//! the guest kernel does not have. Instead: the connections are read from `/proc/net/tcp{,6}`,
//! each one's owning process is found through `/proc/<pid>/fd`, the socket is duplicated into
//! the agent with `pidfd_getfd(2)`, and `connect(AF_UNSPEC)` disconnects it, which in Linux's
//! TCP (`tcp_disconnect`) sends a RST to the peer and fails the owner's next call with
//! ECONNRESET (or gives it EOF). Kept: listening sockets, connections whose peer is loopback or
//! the guest itself, and the agent's own connections (local port 1024 or 1025: the host's).

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use proto::limits::{CONTROL_PORT, FORWARD_PORT};

/// One line of `/proc/net/tcp` or `/proc/net/tcp6`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Local address and port.
    pub local: (IpAddr, u16),
    /// Peer address and port.
    pub remote: (IpAddr, u16),
    /// The kernel's TCP state number (1 ESTABLISHED, 10 LISTEN, ...).
    pub state: u8,
    /// The socket's inode (0: no file, e.g. TIME_WAIT or not yet accepted).
    pub inode: u64,
}

const ESTABLISHED: u8 = 1;
const SYN_SENT: u8 = 2;
const CLOSE_WAIT: u8 = 8;

/// Parses the text of `/proc/net/tcp` or `/proc/net/tcp6` (header line skipped, bad lines
/// ignored).
pub fn parse_proc_net_tcp(text: &str) -> Vec<Entry> {
    text.lines().skip(1).filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Entry> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let local = parse_endpoint(fields.get(1)?)?;
    let remote = parse_endpoint(fields.get(2)?)?;
    let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
    let inode = fields.get(9)?.parse().ok()?;
    Some(Entry { local, remote, state, inode })
}

/// `0100007F:0400`: the address as the kernel prints it (32-bit words in host order, `%08X`),
/// then the port in hex.
fn parse_endpoint(text: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for i in (0..addr.len()).step_by(8) {
        let word = u32::from_str_radix(addr.get(i..i + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
        _ => return None,
    };
    Some((ip, port))
}

/// Whether a connection is one SET_IDENTITY resets: a live connection (established, closing
/// from the peer's side, or still connecting) to a peer outside the guest that is not the
/// agent's own.
pub fn should_reset(entry: &Entry) -> bool {
    if !matches!(entry.state, ESTABLISHED | SYN_SENT | CLOSE_WAIT) {
        return false;
    }
    if entry.local.1 == CONTROL_PORT || entry.local.1 == FORWARD_PORT {
        return false;
    }
    let peer = canonical(entry.remote.0);
    !(peer.is_loopback() || peer.is_unspecified() || peer == canonical(entry.local.0))
}

/// `::ffff:a.b.c.d` as `a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// What a reset did.
#[derive(Debug, Default)]
pub struct Report {
    /// Connections reset.
    pub reset: usize,
    /// Connections that vanished before they could be reset (their owner exited or closed).
    pub gone: usize,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "reset {} outside TCP connection(s) ({} gone already)", self.reset, self.gone)
    }
}

/// Resets every outside connection (see the module doc). Fails only if a connection that still
/// exists could not be reset.
pub fn reset_outside_connections() -> Result<Report, String> {
    let mut targets: Vec<Entry> = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        match std::fs::read_to_string(table) {
            Ok(text) => targets.extend(parse_proc_net_tcp(&text).into_iter().filter(should_reset)),
            // No IPv6 in the kernel: no tcp6 table.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{table}: {e}")),
        }
    }
    let mut report = Report::default();
    // Established but never accepted (or orphaned) sockets have no file to act on.
    targets.retain(|t| t.inode != 0);
    if targets.is_empty() {
        return Ok(report);
    }
    let owners = socket_owners();
    let mut failures = Vec::new();
    for target in &targets {
        let Some(&(pid, fd)) = owners.get(&target.inode) else {
            report.gone += 1;
            continue;
        };
        match disconnect(pid, fd) {
            Ok(()) => report.reset += 1,
            Err(nix::errno::Errno::ESRCH | nix::errno::Errno::EBADF) => report.gone += 1,
            Err(e) => failures.push(format!(
                "{}:{} -> {}:{} (pid {pid}): {e}",
                target.local.0, target.local.1, target.remote.0, target.remote.1
            )),
        }
    }
    if failures.is_empty() {
        Ok(report)
    } else {
        Err(format!("{report}; could not reset {}", failures.join(", ")))
    }
}

/// Socket inode to one (pid, fd) that holds it.
fn socket_owners() -> HashMap<u64, (i32, i32)> {
    let mut owners = HashMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return owners;
    };
    for proc_entry in procs.flatten() {
        let Some(pid) = proc_entry.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd_entry in fds.flatten() {
            let Some(fd) = fd_entry.file_name().to_str().and_then(|f| f.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(link) = std::fs::read_link(fd_entry.path()) else {
                continue;
            };
            let inode = link
                .to_str()
                .and_then(|l| l.strip_prefix("socket:["))
                .and_then(|l| l.strip_suffix(']'))
                .and_then(|l| l.parse::<u64>().ok());
            if let Some(inode) = inode {
                owners.entry(inode).or_insert((pid, fd));
            }
        }
    }
    owners
}

/// Duplicates `pid`'s `fd` into the agent and disconnects the socket (`connect(AF_UNSPEC)`:
/// the kernel sends a RST for a live connection). The duplicate is closed afterwards; the
/// owner keeps its descriptor, now of a reset socket.
fn disconnect(pid: i32, fd: i32) -> Result<(), nix::errno::Errno> {
    use nix::errno::Errno;
    // SAFETY: pidfd_open(pid, flags) has no pointer arguments.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    // SAFETY: pidfd_getfd(pidfd, targetfd, flags) has no pointer arguments.
    let sock = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if sock < 0 {
        return Err(Errno::last());
    }
    // SAFETY: as above, a fresh descriptor that only we own.
    let sock = unsafe { OwnedFd::from_raw_fd(sock as i32) };
    let unspec =
        libc::sockaddr { sa_family: libc::AF_UNSPEC as libc::sa_family_t, sa_data: [0; 14] };
    // SAFETY: `unspec` is a valid sockaddr of the length given, alive for the call.
    let rc = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            &unspec,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(Errno::last());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0400 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0 100 0 0 10 0
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1002 1 0 100 0 0 10 0
   2: 0203000A:0400 0103000A:A000 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0 20 4 30 10 -1
   3: 0203000A:B000 0103000A:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 1004 1 0 20 4 30 10 -1
   4: 0100007F:B001 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 1005 1 0 20 4 30 10 -1
   5: 0203000A:B002 08080808:0050 06 00000000:00000000 03:00000000 00000000     0        0 0 3 0
   6: 0203000A:B003 08080808:01BB 08 00000000:00000000 00:00000000 00000000     0        0 1006 1 0 20 4 30 10 -1
   7: 0203000A:B004 0203000A:1F90 01 00000000:00000000 00:00000000 00000000     0        0 1007 1 0 20 4 30 10 -1
   8: 0203000A:0401 0103000A:A001 01 00000000:00000000 00:00000000 00000000     0        0 1008 1 0 20 4 30 10 -1
";

    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:C000 01 00000000:00000000 00:00000000 00000000     0        0 2001 1 0 20 4 30 10 -1
   1: 0000000000000000FFFF00000203000A:1F90 0000000000000000FFFF00000103000A:C001 01 00000000:00000000 00:00000000 00000000     0        0 2002 1 0 20 4 30 10 -1
   2: 0000000000000000FFFF00000203000A:1F90 0000000000000000FFFF00000100007F:C002 01 00000000:00000000 00:00000000 00000000     0        0 2003 1 0 20 4 30 10 -1
   3: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2004 1 0 100 0 0 10 0
";

    #[test]
    fn proc_net_tcp_is_parsed() {
        let v4 = parse_proc_net_tcp(TCP);
        assert_eq!(v4.len(), 9);
        assert_eq!(v4[2].local, ("10.0.3.2".parse().unwrap(), 1024));
        assert_eq!(v4[2].remote, ("10.0.3.1".parse().unwrap(), 0xA000));
        assert_eq!((v4[2].state, v4[2].inode), (1, 1003));
        let v6 = parse_proc_net_tcp(TCP6);
        assert_eq!(v6.len(), 4);
        assert_eq!(v6[0].remote.0, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(v6[1].remote.0, "::ffff:10.0.3.1".parse::<IpAddr>().unwrap());
        assert!(parse_proc_net_tcp("header\nnot a line\n").is_empty());
    }

    #[test]
    fn which_connections_are_reset() {
        let v4 = parse_proc_net_tcp(TCP);
        let v6 = parse_proc_net_tcp(TCP6);
        let rows: &[(&str, &Entry, bool)] = &[
            ("listener on the control port", &v4[0], false),
            ("loopback listener", &v4[1], false),
            ("the host's connection to the agent's control port", &v4[2], false),
            ("guest to an outside server", &v4[3], true),
            ("loopback connection", &v4[4], false),
            ("time-wait", &v4[5], false),
            ("close-wait to the outside", &v4[6], true),
            ("guest to its own address", &v4[7], false),
            ("the host's connection to the forward port", &v4[8], false),
            ("ipv6 loopback", &v6[0], false),
            ("v4-mapped outside peer", &v6[1], true),
            ("v4-mapped loopback peer", &v6[2], false),
            ("ipv6 listener", &v6[3], false),
        ];
        for (name, entry, want) in rows {
            assert_eq!(should_reset(entry), *want, "{name}");
        }
    }

    /// The mechanism itself, on loopback in the test process: the peer of a disconnected
    /// socket reads a reset, the owner's descriptor stays open but is dead.
    #[test]
    fn disconnect_resets_the_peer() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        server.read_exact(&mut buf).unwrap();
        disconnect(std::process::id() as i32, client.as_raw_fd()).unwrap();
        server.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        let err = server.read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
        assert!(client.write_all(b"more").is_err(), "the owner's socket still writes");
    }
}
