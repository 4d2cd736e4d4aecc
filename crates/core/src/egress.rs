//! A sandbox's egress policy and the rules over it: which destinations are never reachable,
//! which names a sandbox may resolve, which answers may open an address, how long a pin lasts.
//!
//! The API and CLI spell it as bhatti v2 did (`net_policy {default, allow_hosts, allow_cidrs}`,
//! `--egress public|deny`, `--allow-host`, `--allow-cidr`). The engine enforces it twice: its
//! resolver answers only what the policy allows (and pins what it answered), and nftables in the
//! engine's namespace let a guest's packets out only to what the policy and the pins allow.
//!
//! Pure: the engine's resolver and firewall and the server's validation all call these
//! functions, so they cannot disagree about what a rule means.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Host rules a policy may hold.
pub const MAX_HOST_RULES: usize = 256;
/// CIDR rules a policy may hold.
pub const MAX_CIDR_RULES: usize = 256;
/// A pinned address stays open at least this long, whatever the record's TTL (a record with
/// TTL 0 would otherwise close before the guest connects).
pub const MIN_PIN: Duration = Duration::from_secs(60);
/// ... and at most this long (a record with a TTL of a week does not keep an address open for
/// a week after the name moved).
pub const MAX_PIN: Duration = Duration::from_secs(3600);

/// What a sandbox reaches when no rule names the destination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Posture {
    /// The internet (never the host, metadata, other owners' sandboxes or private ranges).
    #[default]
    Public,
    /// Nothing but the daemon's DNS, plus what `allow_hosts` and `allow_cidrs` open.
    Deny,
}

impl Posture {
    /// The spelling of the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Deny => "deny",
        }
    }
}

/// A sandbox's egress policy as the API carries it (v2's `net_policy`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetPolicy {
    /// The posture.
    #[serde(default)]
    pub default: Posture,
    /// Names the sandbox may resolve and reach: `example.com` (that name only) or
    /// `*.example.com` (any name below it, not the name itself).
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    /// Address ranges the sandbox may reach (`10.1.0.0/16`, `192.0.2.7`); the only way to open
    /// a private range.
    #[serde(default)]
    pub allow_cidrs: Vec<String>,
}

/// An IPv4 range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    /// Network address (host bits zero).
    pub addr: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub len: u8,
}

impl Cidr {
    /// A range from an address and a prefix length; host bits are cleared.
    pub const fn new(addr: Ipv4Addr, len: u8) -> Self {
        let mask = mask(len);
        Self { addr: Ipv4Addr::from_bits(addr.to_bits() & mask), len }
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        ip.to_bits() & mask(self.len) == self.addr.to_bits()
    }

    /// Whether the two ranges share any address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }
}

const fn mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len as u32) }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl std::str::FromStr for Cidr {
    type Err = PolicyError;

    /// `a.b.c.d/len` or a bare address (`/32`). Host bits must be zero: `10.0.0.1/8` is more
    /// likely a typo than a wish to open `10.0.0.0/8`.
    fn from_str(text: &str) -> Result<Self, PolicyError> {
        let bad = || PolicyError::Cidr(text.to_owned());
        if text.contains(':') {
            return Err(PolicyError::Ipv6(text.to_owned()));
        }
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => {
                let len: u8 = len.parse().map_err(|_| bad())?;
                (addr, len)
            }
            None => (text, 32),
        };
        if len > 32 {
            return Err(bad());
        }
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let cidr = Cidr::new(addr, len);
        if cidr.addr != addr {
            return Err(PolicyError::HostBits(text.to_owned(), cidr));
        }
        Ok(cidr)
    }
}

/// As text, `a.b.c.d/len` (config files and records).
impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Ranges no policy opens: this network, loopback, link-local (cloud metadata lives at
/// 169.254.169.254), multicast and the reserved block with broadcast.
pub const NEVER: [Cidr; 5] = [
    Cidr::new(Ipv4Addr::new(0, 0, 0, 0), 8),
    Cidr::new(Ipv4Addr::new(127, 0, 0, 0), 8),
    Cidr::new(Ipv4Addr::new(169, 254, 0, 0), 16),
    Cidr::new(Ipv4Addr::new(224, 0, 0, 0), 4),
    Cidr::new(Ipv4Addr::new(240, 0, 0, 0), 4),
];

/// Ranges a policy opens only by naming them in `allow_cidrs`: RFC 1918, shared address space
/// (CGNAT, 100.64.0.0/10), and the IETF protocol block.
pub const PRIVATE: [Cidr; 5] = [
    Cidr::new(Ipv4Addr::new(10, 0, 0, 0), 8),
    Cidr::new(Ipv4Addr::new(172, 16, 0, 0), 12),
    Cidr::new(Ipv4Addr::new(192, 168, 0, 0), 16),
    Cidr::new(Ipv4Addr::new(100, 64, 0, 0), 10),
    Cidr::new(Ipv4Addr::new(192, 0, 0, 0), 24),
];

/// What kind of destination an address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Never reachable: [`NEVER`], or one of the deployment's own ranges (the host's uplink,
    /// the guests' subnet), given as `extra`.
    Never,
    /// Private: reachable only through an `allow_cidrs` rule naming it.
    Private,
    /// Everything else.
    Public,
}

/// Classifies `ip`; `extra` are the deployment's own never-reachable ranges.
pub fn classify(ip: Ipv4Addr, extra: &[Cidr]) -> Class {
    if NEVER.iter().chain(extra).any(|c| c.contains(ip)) {
        Class::Never
    } else if PRIVATE.iter().any(|c| c.contains(ip)) {
        Class::Private
    } else {
        Class::Public
    }
}

/// Why a policy is refused (the API's 400 `invalid net_policy: ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Not an IPv4 range.
    #[error("allow_cidrs: {0:?} is not an IPv4 address or a.b.c.d/len range")]
    Cidr(String),
    /// An IPv6 range (guests have no IPv6).
    #[error("allow_cidrs: {0:?} is IPv6; sandboxes have IPv4 only")]
    Ipv6(String),
    /// Host bits set.
    #[error("allow_cidrs: {0:?} has host bits set (did you mean {1}?)")]
    HostBits(String, Cidr),
    /// A range no policy may open.
    #[error("allow_cidrs: {0} overlaps {1}, which no policy can open")]
    Never(Cidr, Cidr),
    /// Not a host name or `*.` wildcard.
    #[error("allow_hosts: {0:?} is not a host name or *.name wildcard")]
    Host(String),
    /// Too many rules.
    #[error("{0}: at most {1} rules")]
    TooMany(&'static str, usize),
}

/// A checked policy: names lower-cased without a trailing dot, ranges parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The posture.
    pub posture: Posture,
    /// Host rules, normalised.
    pub hosts: Vec<HostRule>,
    /// Ranges.
    pub cidrs: Vec<Cidr>,
}

impl Default for Policy {
    fn default() -> Self {
        Self { posture: Posture::Public, hosts: Vec::new(), cidrs: Vec::new() }
    }
}

/// One host rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRule {
    /// This name only.
    Exact(String),
    /// Any name with at least one more label in front of this suffix.
    Below(String),
}

impl HostRule {
    fn parse(text: &str) -> Result<Self, PolicyError> {
        let bad = || PolicyError::Host(text.to_owned());
        let name = text.trim_end_matches('.').to_ascii_lowercase();
        let (rule, bare) = match name.strip_prefix("*.") {
            Some(rest) => (HostRule::Below(rest.to_owned()), rest.to_owned()),
            None => (HostRule::Exact(name.clone()), name),
        };
        if !is_host_name(&bare) {
            return Err(bad());
        }
        Ok(rule)
    }

    /// Whether `name` (normalised) matches: label-wise, anchored at the right, never a regex.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            HostRule::Exact(exact) => name == exact,
            HostRule::Below(suffix) => name
                .strip_suffix(suffix.as_str())
                .is_some_and(|front| front.len() > 1 && front.ends_with('.')),
        }
    }
}

impl std::fmt::Display for HostRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostRule::Exact(name) => f.write_str(name),
            HostRule::Below(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

/// RFC 1123 host name: dot-separated labels of letters, digits and `-` (`_` allowed too, as
/// service names use it), 1 to 63 characters, not starting or ending with `-`, at most 253 in
/// all. No wildcards inside.
fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Lower-cases a queried name and drops its trailing dot, as rules are stored.
pub fn normalise_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl NetPolicy {
    /// Checks the policy and normalises it; duplicates are dropped.
    pub fn check(&self) -> Result<Policy, PolicyError> {
        if self.allow_hosts.len() > MAX_HOST_RULES {
            return Err(PolicyError::TooMany("allow_hosts", MAX_HOST_RULES));
        }
        if self.allow_cidrs.len() > MAX_CIDR_RULES {
            return Err(PolicyError::TooMany("allow_cidrs", MAX_CIDR_RULES));
        }
        let mut hosts = Vec::new();
        for text in &self.allow_hosts {
            let rule = HostRule::parse(text.trim())?;
            if !hosts.contains(&rule) {
                hosts.push(rule);
            }
        }
        let mut cidrs = Vec::new();
        for text in &self.allow_cidrs {
            let cidr: Cidr = text.trim().parse()?;
            if let Some(never) = NEVER.iter().find(|n| n.overlaps(&cidr)) {
                return Err(PolicyError::Never(cidr, *never));
            }
            if !cidrs.contains(&cidr) {
                cidrs.push(cidr);
            }
        }
        Ok(Policy { posture: self.default, hosts, cidrs })
    }
}

impl Policy {
    /// The API's spelling of this policy (normalised).
    pub fn to_net_policy(&self) -> NetPolicy {
        NetPolicy {
            default: self.posture,
            allow_hosts: self.hosts.iter().map(ToString::to_string).collect(),
            allow_cidrs: self.cidrs.iter().map(ToString::to_string).collect(),
        }
    }

    /// Whether the resolver must pin what it answers: only a `deny` posture opens addresses by
    /// name (under `public` every public address is open anyway).
    pub fn pins(&self) -> bool {
        self.posture == Posture::Deny
    }

    /// What the resolver does with a query for `name` (normalised).
    pub fn dns(&self, name: &str) -> DnsVerdict {
        match self.posture {
            Posture::Public => DnsVerdict::Forward,
            Posture::Deny if self.hosts.iter().any(|rule| rule.matches(name)) => {
                DnsVerdict::ForwardAndPin
            }
            Posture::Deny => DnsVerdict::Refuse,
        }
    }

    /// Whether an answer to an allowed name may open `ip` (`extra`: the deployment's own
    /// never-reachable ranges). An allowed name that resolves to the host, metadata or a
    /// private range (DNS rebinding) opens nothing, unless a CIDR rule names the address.
    pub fn may_pin(&self, ip: Ipv4Addr, extra: &[Cidr]) -> bool {
        match classify(ip, extra) {
            Class::Never => false,
            Class::Private => self.cidrs.iter().any(|c| c.contains(ip)),
            Class::Public => true,
        }
    }

    /// Whether a new connection to `ip` leaves the sandbox, given whether the resolver pinned
    /// it. The firewall implements exactly this table; the engine's test compares them.
    pub fn allows(&self, ip: Ipv4Addr, pinned: bool, extra: &[Cidr]) -> bool {
        match classify(ip, extra) {
            Class::Never => false,
            Class::Private => self.cidrs.iter().any(|c| c.contains(ip)),
            Class::Public => match self.posture {
                Posture::Public => true,
                Posture::Deny => pinned || self.cidrs.iter().any(|c| c.contains(ip)),
            },
        }
    }
}

/// What the resolver does with a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsVerdict {
    /// Ask upstream and relay the answer.
    Forward,
    /// Ask upstream, pin the answer's addresses for this sandbox, then relay it.
    ForwardAndPin,
    /// Answer REFUSED.
    Refuse,
}

/// How long an answered address stays pinned: the record's TTL, within [`MIN_PIN`] and
/// [`MAX_PIN`].
pub fn pin_for(ttl_secs: u32) -> Duration {
    Duration::from_secs(u64::from(ttl_secs)).clamp(MIN_PIN, MAX_PIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    fn policy(default: Posture, hosts: &[&str], cidrs: &[&str]) -> Policy {
        NetPolicy {
            default,
            allow_hosts: hosts.iter().map(|s| s.to_string()).collect(),
            allow_cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
        }
        .check()
        .unwrap()
    }

    #[test]
    fn cidrs_parse_strictly() {
        let rows: &[(&str, &str, Result<&str, &str>)] = &[
            ("a range", "10.1.0.0/16", Ok("10.1.0.0/16")),
            ("a bare address", "192.0.2.7", Ok("192.0.2.7/32")),
            ("everything", "0.0.0.0/0", Ok("0.0.0.0/0")),
            ("host bits", "10.0.0.1/8", Err("host bits")),
            ("too long", "10.0.0.0/33", Err("not an IPv4")),
            ("not a number", "10.0.0.0/x", Err("not an IPv4")),
            ("a name", "example.com", Err("not an IPv4")),
            ("ipv6", "fd00::/8", Err("IPv6")),
            ("ipv6 host route", "::1/128", Err("IPv6")),
        ];
        for (row, text, want) in rows {
            let got = text.parse::<Cidr>().map(|c| c.to_string()).map_err(|e| e.to_string());
            match (want, got) {
                (Ok(want), Ok(got)) => assert_eq!(&got, want, "{row}"),
                (Err(want), Err(got)) => assert!(got.contains(want), "{row}: {got}"),
                (want, got) => panic!("{row}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn policies_are_checked_and_normalised() {
        // (row, allow_hosts, allow_cidrs, normalised hosts and cidrs or an error's words)
        type Row<'a> = (
            &'a str,
            &'a [&'a str],
            &'a [&'a str],
            Result<(&'a [&'a str], &'a [&'a str]), &'a str>,
        );
        let rows: &[Row] = &[
            ("empty", &[], &[], Ok((&[], &[]))),
            (
                "names lower-cased, trailing dot and duplicates dropped",
                &["PyPI.org.", "pypi.org", "*.Example.com"],
                &["10.0.0.0/8", "10.0.0.0/8"],
                Ok((&["pypi.org", "*.example.com"], &["10.0.0.0/8"])),
            ),
            ("wildcard in the middle", &["a.*.com"], &[], Err("allow_hosts")),
            ("bare star", &["*"], &[], Err("allow_hosts")),
            ("empty label", &["a..com"], &[], Err("allow_hosts")),
            ("url, not a name", &["https://pypi.org"], &[], Err("allow_hosts")),
            ("label too long", &[&"a".repeat(64)], &[], Err("allow_hosts")),
            ("metadata can never open", &[], &["169.254.169.254"], Err("no policy can open")),
            ("loopback can never open", &[], &["127.0.0.0/8"], Err("no policy can open")),
            ("everything overlaps loopback", &[], &["0.0.0.0/0"], Err("no policy can open")),
        ];
        for (row, hosts, cidrs, want) in rows {
            let got = NetPolicy {
                default: Posture::Deny,
                allow_hosts: hosts.iter().map(|s| s.to_string()).collect(),
                allow_cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
            }
            .check()
            .map(|p| p.to_net_policy())
            .map_err(|e| e.to_string());
            match (want, got) {
                (Ok((hosts, cidrs)), Ok(got)) => {
                    assert_eq!(&got.allow_hosts, hosts, "{row}");
                    assert_eq!(&got.allow_cidrs, cidrs, "{row}");
                }
                (Err(want), Err(got)) => assert!(got.contains(want), "{row}: {got}"),
                (want, got) => panic!("{row}: want {want:?}, got {got:?}"),
            }
        }
        let many = NetPolicy { allow_hosts: vec!["a.com".into(); 257], ..Default::default() };
        assert!(many.check().is_err());
    }

    #[test]
    fn host_rules_match_by_labels() {
        let rows: &[(&str, &str, &str, bool)] = &[
            ("exact", "pypi.org", "pypi.org", true),
            ("exact is not a suffix", "pypi.org", "files.pypi.org", false),
            ("exact is not a prefix", "pypi.org", "pypi.org.evil.com", false),
            ("wildcard below", "*.github.com", "api.github.com", true),
            ("wildcard deeper", "*.github.com", "a.b.github.com", true),
            ("wildcard not the apex", "*.github.com", "github.com", false),
            ("wildcard needs a label boundary", "*.github.com", "evilgithub.com", false),
            ("wildcard needs a label boundary 2", "*.github.com", "x.evilgithub.com", false),
        ];
        for (row, rule, name, want) in rows {
            let rule = HostRule::parse(rule).unwrap();
            assert_eq!(rule.matches(&normalise_name(name)), *want, "{row}");
        }
    }

    #[test]
    fn the_resolver_answers_by_posture_and_rules() {
        let public = policy(Posture::Public, &[], &[]);
        let deny = policy(Posture::Deny, &[], &[]);
        let allow = policy(Posture::Deny, &["pypi.org", "*.pythonhosted.org"], &[]);
        let rows: &[(&str, &Policy, &str, DnsVerdict)] = &[
            ("public forwards anything", &public, "example.com", DnsVerdict::Forward),
            ("deny refuses everything", &deny, "example.com", DnsVerdict::Refuse),
            ("an allowed name is pinned", &allow, "pypi.org", DnsVerdict::ForwardAndPin),
            (
                "a wildcard name is pinned",
                &allow,
                "files.pythonhosted.org",
                DnsVerdict::ForwardAndPin,
            ),
            ("another name is refused", &allow, "evil.com", DnsVerdict::Refuse),
        ];
        for (row, policy, name, want) in rows {
            assert_eq!(policy.dns(name), *want, "{row}");
        }
    }

    #[test]
    fn what_a_connection_may_reach() {
        let extra = [Cidr::new(ip("10.203.0.0"), 24)];
        let public = policy(Posture::Public, &[], &[]);
        let public_lan = policy(Posture::Public, &[], &["192.168.1.0/24"]);
        let deny = policy(Posture::Deny, &["pypi.org"], &["198.51.100.0/24"]);
        let rows: &[(&str, &Policy, &str, bool, bool)] = &[
            ("public: the internet", &public, "93.184.216.34", false, true),
            ("public: metadata never", &public, "169.254.169.254", false, false),
            ("public: loopback never", &public, "127.0.0.1", false, false),
            ("public: multicast never", &public, "224.0.0.1", false, false),
            ("public: the guests' subnet never", &public, "10.203.0.9", false, false),
            ("public: a private range needs a rule", &public, "192.168.1.5", false, false),
            ("public: CGNAT needs a rule", &public, "100.64.0.1", false, false),
            ("public: a rule opens a private range", &public_lan, "192.168.1.5", false, true),
            ("public: the rule is exact", &public_lan, "192.168.2.5", false, false),
            ("deny: an unpinned address", &deny, "93.184.216.34", false, false),
            ("deny: a pinned address", &deny, "93.184.216.34", true, true),
            ("deny: a cidr rule", &deny, "198.51.100.7", false, true),
            ("deny: a pin never opens metadata", &deny, "169.254.169.254", true, false),
            ("deny: a pin never opens a private range", &deny, "10.0.0.1", true, false),
        ];
        for (row, policy, addr, pinned, want) in rows {
            assert_eq!(policy.allows(ip(addr), *pinned, &extra), *want, "{row}");
        }
    }

    #[test]
    fn rebinding_answers_open_nothing() {
        let extra = [Cidr::new(ip("10.203.0.0"), 24)];
        let allow = policy(Posture::Deny, &["corp.example"], &["10.9.0.0/16"]);
        let rows: &[(&str, &str, bool)] = &[
            ("a public address", "203.0.113.10", true),
            ("loopback", "127.0.0.1", false),
            ("metadata", "169.254.169.254", false),
            ("a private address", "192.168.0.1", false),
            ("the guests' subnet", "10.203.0.1", false),
            ("a private address a cidr rule opens", "10.9.3.4", true),
        ];
        for (row, addr, want) in rows {
            assert_eq!(allow.may_pin(ip(addr), &extra), *want, "{row}");
        }
    }

    #[test]
    fn pins_last_the_ttl_within_bounds() {
        assert_eq!(pin_for(0), MIN_PIN);
        assert_eq!(pin_for(300), Duration::from_secs(300));
        assert_eq!(pin_for(u32::MAX), MAX_PIN);
    }

    #[test]
    fn the_wire_spelling_is_v2s() {
        let p: NetPolicy = serde_json::from_str(
            r#"{"default":"deny","allow_hosts":["pypi.org"],"allow_cidrs":["10.0.0.0/8"]}"#,
        )
        .unwrap();
        assert_eq!(p.default, Posture::Deny);
        let p: NetPolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(p, NetPolicy::default());
        assert_eq!(serde_json::to_value(Posture::Public).unwrap(), "public");
        assert!(serde_json::from_str::<NetPolicy>(r#"{"default":"open"}"#).is_err());
    }
}
