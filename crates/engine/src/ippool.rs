//! Guest addresses: allocation, release and reuse within the engine's subnet.
//!
//! Allocation walks round-robin from the last address handed out, so a released address is
//! reused as late as possible (a peer's stale ARP entry for it then has time to expire; the
//! engine also installs a fresh neighbour entry at boot). The network address, the gateway (the
//! bridge) and the broadcast address are never handed out.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// A subnet such as `10.0.0.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    network: u32,
    prefix: u8,
}

/// Why a subnet string or an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpPoolError {
    /// Not `a.b.c.d/len` with len 16..=30.
    #[error("invalid subnet {0:?}: expected a.b.c.d/len with len between 16 and 30")]
    BadSubnet(String),
    /// The address is already handed out.
    #[error("{0} is already in use")]
    InUse(Ipv4Addr),
    /// Every usable address is taken.
    #[error("no free address left in {0}")]
    Exhausted(Subnet),
    /// The address is outside the subnet or reserved.
    #[error("{0} is not a usable guest address in {1}")]
    NotUsable(Ipv4Addr, Subnet),
}

impl FromStr for Subnet {
    type Err = IpPoolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IpPoolError::BadSubnet(s.to_owned());
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(16..=30).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - u32::from(prefix));
        Ok(Subnet { network: u32::from(addr) & mask, prefix })
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.network), self.prefix)
    }
}

impl Subnet {
    /// `10.200.0.0/16`: room for 65,533 guests, outside the ranges home routers use.
    pub const DEFAULT: Subnet = Subnet { network: u32::from_be_bytes([10, 200, 0, 0]), prefix: 16 };

    fn size(&self) -> u32 {
        1 << (32 - u32::from(self.prefix))
    }

    /// The bridge's address: the first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 1)
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The whole subnet as a range.
    pub fn cidr(&self) -> bhatti_core::egress::Cidr {
        bhatti_core::egress::Cidr::new(Ipv4Addr::from(self.network), self.prefix)
    }

    /// Host offsets guests may use: after the gateway, before the broadcast address.
    fn usable(&self, offset: u32) -> bool {
        offset >= 2 && offset < self.size() - 1
    }
}

/// The set of guest addresses in use.
#[derive(Debug, Clone)]
pub struct IpPool {
    subnet: Subnet,
    in_use: BTreeSet<u32>,
    /// Offset of the last address handed out.
    last: u32,
}

impl IpPool {
    /// An empty pool over `subnet`.
    pub fn new(subnet: Subnet) -> Self {
        Self { subnet, in_use: BTreeSet::new(), last: 1 }
    }

    /// The pool's subnet.
    #[cfg(any(test, feature = "test-support"))]
    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    /// Hands out the next free address after the last one handed out.
    pub fn allocate(&mut self) -> Result<Ipv4Addr, IpPoolError> {
        let size = self.subnet.size();
        for step in 1..=size {
            let offset = (self.last + step) % size;
            if self.subnet.usable(offset) && !self.in_use.contains(&offset) {
                self.in_use.insert(offset);
                self.last = offset;
                return Ok(Ipv4Addr::from(self.subnet.network + offset));
            }
        }
        Err(IpPoolError::Exhausted(self.subnet))
    }

    /// Marks an address as taken (recovering sandboxes after a daemon restart).
    #[cfg(any(test, feature = "test-support"))]
    pub fn claim(&mut self, ip: Ipv4Addr) -> Result<(), IpPoolError> {
        let offset = self.offset(ip)?;
        self.in_use.insert(offset);
        Ok(())
    }

    /// Marks a specific address as taken, refusing one that already is (a checkpoint resumed
    /// with the address it was taken with).
    pub fn claim_free(&mut self, ip: Ipv4Addr) -> Result<(), IpPoolError> {
        let offset = self.offset(ip)?;
        if !self.in_use.insert(offset) {
            return Err(IpPoolError::InUse(ip));
        }
        Ok(())
    }

    /// Returns an address to the pool; releasing a free address is a no-op.
    pub fn release(&mut self, ip: Ipv4Addr) {
        if let Ok(offset) = self.offset(ip) {
            self.in_use.remove(&offset);
        }
    }

    /// Addresses in use.
    pub fn in_use(&self) -> usize {
        self.in_use.len()
    }

    fn offset(&self, ip: Ipv4Addr) -> Result<u32, IpPoolError> {
        let offset = u32::from(ip).wrapping_sub(self.subnet.network);
        if offset < self.subnet.size() && self.subnet.usable(offset) {
            Ok(offset)
        } else {
            Err(IpPoolError::NotUsable(ip, self.subnet))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(s: &str) -> IpPool {
        IpPool::new(s.parse().unwrap())
    }

    #[test]
    fn subnets_parse_and_normalise() {
        let subnet: Subnet = "10.7.3.9/24".parse().unwrap();
        assert_eq!(subnet.to_string(), "10.7.3.0/24");
        assert_eq!(subnet.gateway(), Ipv4Addr::new(10, 7, 3, 1));
        for bad in ["10.0.0.0", "10.0.0.0/8", "10.0.0.0/31", "x/24", "10.0.0.0/abc", ""] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn skips_network_gateway_and_broadcast_and_exhausts() {
        let mut p = pool("192.168.5.0/29");
        let got: Vec<Ipv4Addr> = (0..5).map(|_| p.allocate().unwrap()).collect();
        let expected: Vec<Ipv4Addr> = (2..=6).map(|h| Ipv4Addr::new(192, 168, 5, h)).collect();
        assert_eq!(got, expected);
        assert_eq!(p.allocate(), Err(IpPoolError::Exhausted("192.168.5.0/29".parse().unwrap())));
    }

    #[test]
    fn released_addresses_are_reused_last() {
        let mut p = pool("10.0.0.0/29");
        let a = p.allocate().unwrap();
        let b = p.allocate().unwrap();
        p.release(a);
        // Round-robin: the rest of the range comes before the released address.
        let next: Vec<Ipv4Addr> = (0..3).map(|_| p.allocate().unwrap()).collect();
        assert!(!next.contains(&a) && !next.contains(&b));
        assert_eq!(p.allocate().unwrap(), a);
        assert_eq!(p.in_use(), 5);
    }

    #[test]
    fn claim_and_release_validate_addresses() {
        let mut p = pool("10.0.0.0/24");
        p.claim(Ipv4Addr::new(10, 0, 0, 2)).unwrap();
        assert_eq!(p.allocate().unwrap(), Ipv4Addr::new(10, 0, 0, 3));
        assert!(p.claim(Ipv4Addr::new(10, 0, 0, 1)).is_err(), "gateway");
        assert!(p.claim(Ipv4Addr::new(10, 0, 0, 255)).is_err(), "broadcast");
        assert!(p.claim(Ipv4Addr::new(10, 0, 1, 2)).is_err(), "outside");
        p.release(Ipv4Addr::new(10, 9, 9, 9));
        assert_eq!(p.in_use(), 2);
    }

    #[test]
    fn a_16_bit_pool_hands_out_every_usable_address_once() {
        let mut p = pool("10.1.0.0/16");
        let mut seen = BTreeSet::new();
        for _ in 0..65_533 {
            assert!(seen.insert(p.allocate().unwrap()));
        }
        assert!(p.allocate().is_err());
    }
}
