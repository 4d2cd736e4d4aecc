//! Guest network interfaces: bringing `lo` up and reading the kernel's `ip=` parameter.

use std::net::Ipv4Addr;

/// The parts of `ip=<client>::<gateway>:<netmask>::<device>:off...` lohar uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelIp {
    /// Guest address.
    pub client: Ipv4Addr,
    /// Gateway, if any.
    pub gateway: Option<Ipv4Addr>,
    /// Device, default `eth0`.
    pub device: String,
}

/// Finds and parses `ip=` in a kernel command line.
pub fn parse_kernel_ip(cmdline: &str) -> Option<KernelIp> {
    let value = cmdline.split_whitespace().find_map(|arg| arg.strip_prefix("ip="))?;
    let fields: Vec<&str> = value.split(':').collect();
    let client = fields.first()?.parse().ok()?;
    let gateway = fields.get(2).and_then(|g| g.parse().ok());
    let device = fields.get(5).filter(|d| !d.is_empty()).unwrap_or(&"eth0").to_string();
    Some(KernelIp { client, gateway, device })
}

/// A socket for interface ioctls.
fn ioctl_socket() -> std::io::Result<std::net::UdpSocket> {
    std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| std::net::UdpSocket::bind("[::]:0"))
}

/// An `ifreq` naming `name`.
fn ifreq(name: &str) -> std::io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
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

/// Runs one interface ioctl on `req`.
fn ioctl(
    sock: &std::net::UdpSocket,
    request: libc::c_ulong,
    req: &mut libc::ifreq,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: every request used here reads or writes the ifreq we own for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), request as _, req as *mut libc::ifreq) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Parses `52:54:00:0a:00:02`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| if b.len() == 2 { u8::from_str_radix(b, 16).ok() } else { None })
        .collect::<Option<_>>()?;
    let mac: [u8; 6] = bytes.try_into().ok()?;
    // Unicast only (the group bit of the first byte clear).
    (mac[0] & 1 == 0).then_some(mac)
}

/// Moves `eth0` (or the kernel's `ip=` device) to the address of `req`, a moment from now: the
/// caller has just answered over a connection to the old address, and that answer should leave
/// before the address it uses disappears.
pub fn move_interface_later(req: proto::messages::SetNet, mac: [u8; 6]) {
    let spawned = std::thread::Builder::new().name("set-net".into()).spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let device = std::fs::read_to_string("/proc/cmdline")
            .ok()
            .and_then(|c| parse_kernel_ip(&c))
            .map_or_else(|| "eth0".to_owned(), |k| k.device);
        match move_interface(&device, &req, mac) {
            Ok(()) => eprintln!("lohar: {device} moved to {}/{}", req.ip, req.prefix),
            Err(e) => eprintln!("lohar: moving {device} to {}: {e}", req.ip),
        }
    });
    if let Err(e) = spawned {
        eprintln!("lohar: set net: {e}");
    }
}

fn move_interface(
    device: &str,
    req: &proto::messages::SetNet,
    mac: [u8; 6],
) -> std::io::Result<()> {
    let sock = ioctl_socket()?;
    // The MAC first: virtio-net changes it live, and a MAC change flushes the guest's neighbour
    // table, so nothing learnt under the old identity survives.
    let mut r = ifreq(device)?;
    // SAFETY: writing the hwaddr member of a zeroed ifreq union.
    unsafe {
        r.ifr_ifru.ifru_hwaddr.sa_family = libc::ARPHRD_ETHER;
        for (dst, src) in r.ifr_ifru.ifru_hwaddr.sa_data.iter_mut().zip(mac) {
            *dst = src as libc::c_char;
        }
    }
    ioctl(&sock, libc::SIOCSIFHWADDR as _, &mut r)?;
    // Replacing the primary address removes the routes through it.
    let mut r = ifreq(device)?;
    r.ifr_ifru.ifru_addr = sockaddr_v4(req.ip);
    ioctl(&sock, libc::SIOCSIFADDR as _, &mut r)?;
    let mask = Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(req.prefix)).unwrap_or(0));
    let mut r = ifreq(device)?;
    r.ifr_ifru.ifru_netmask = sockaddr_v4(mask);
    ioctl(&sock, libc::SIOCSIFNETMASK as _, &mut r)?;
    add_default_route(&sock, req.gateway)
}

fn add_default_route(sock: &std::net::UdpSocket, gateway: Ipv4Addr) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: rtentry is plain old data; zeroed is a valid value.
    let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
    route.rt_dst = sockaddr_v4(Ipv4Addr::UNSPECIFIED);
    route.rt_genmask = sockaddr_v4(Ipv4Addr::UNSPECIFIED);
    route.rt_gateway = sockaddr_v4(gateway);
    route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    // SAFETY: SIOCADDRT reads the rtentry we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT as _, &route) } < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    Ok(())
}

/// Sets IFF_UP|IFF_RUNNING on an interface with the classic ioctls (no netlink needed for this).
pub fn bring_up(name: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let sock = ioctl_socket()?;
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own for the call's duration.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(parse_mac("52:54:00:0a:00:02"), Some([0x52, 0x54, 0, 0x0a, 0, 2]));
        for bad in [
            "",
            "52:54:00:0a:00",
            "52:54:00:0a:00:02:03",
            "5:54:00:0a:00:02",
            "zz:54:00:0a:00:02",
            "01:00:5e:00:00:01",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn parses_the_engine_boot_argument() {
        let cmdline =
            "console=ttyS0 ip=10.0.0.2::10.0.0.1:255.255.255.0::eth0:off:1.1.1.1:8.8.8.8: quiet";
        let ip = parse_kernel_ip(cmdline).unwrap();
        assert_eq!(ip.client, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(ip.gateway, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(ip.device, "eth0");
    }

    #[test]
    fn missing_or_partial_ip_argument() {
        assert!(parse_kernel_ip("console=ttyS0").is_none());
        assert!(parse_kernel_ip("ip=dhcp").is_none());
        let ip = parse_kernel_ip("ip=192.168.1.5").unwrap();
        assert_eq!((ip.gateway, ip.device.as_str()), (None, "eth0"));
    }
}
