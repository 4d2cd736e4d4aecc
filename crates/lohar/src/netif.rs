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

/// Sets IFF_UP|IFF_RUNNING on an interface with the classic ioctls (no netlink needed for this).
pub fn bring_up(name: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let sock =
        std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| std::net::UdpSocket::bind("[::]:0"))?;
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
