//! The daemon's configuration: v1's file (`/etc/bhatti/config.yaml`) and keys, our additions,
//! and `BHATTI_*` environment overrides (the environment wins over the file).
//!
//! YAML goes through `serde_norway`, a maintained fork of the archived `serde_yaml` with the
//! same API. Keys this version does not know are warned about (a typo must not pass silently)
//! and otherwise ignored, so a v1 file with Firecracker keys still loads. v1's `backup` block configures volume
//! backups (`server::BackupConfig`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

/// Where the file is looked for when `BHATTI_CONFIG` does not say.
pub const DEFAULT_PATH: &str = "/etc/bhatti/config.yaml";

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct File {
    // v1 keys.
    engine: Option<String>,
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    api_url: Option<String>,
    auth_token: Option<String>,
    dns_upstreams: Option<Vec<String>>,
    /// The path-mode public proxy's address; published URLs are built from it.
    public_proxy_listen: Option<String>,
    /// Domain mode: the API and aliases on one TLS listener.
    domain: Option<DomainFile>,
    /// Volume backups to S3 and their schedule.
    backup: Option<server::BackupConfig>,
    // Ours.
    kernel: Option<PathBuf>,
    images_dir: Option<PathBuf>,
    default_image: Option<String>,
    netns: Option<String>,
    subnet: Option<String>,
    accel: Option<String>,
    max_concurrent_boots: Option<usize>,
    /// Cold sandboxes whose next QEMU waits started ahead (0: none).
    restore_pool: Option<usize>,
    egress: Option<String>,
    egress_netns: Option<String>,
    uplink_range: Option<String>,
    thermal: Thermal,
    http: Http,
    rate_limits: RateLimitsFile,
    log_format: Option<String>,
    log_level: Option<String>,
    /// The guest agent injected into imported and pulled images.
    lohar: Option<PathBuf>,
    /// The largest image tarball an import takes.
    image_import_max_bytes: Option<u64>,
    /// Registries pulled from over plain HTTP (`host:port`).
    insecure_registries: Option<Vec<String>>,
    /// Creates restore shape snapshots (default true).
    shape_snapshots: Option<bool>,
    /// The E2B-compatible listener (issue 25), off unless set.
    e2b_listen: Option<String>,
    /// Its domain for `Host: <port>-<id>.<domain>` routing.
    e2b_domain: Option<String>,
    /// Its TLS certificate (PEM chain, e.g. `bhatti e2b cert`'s wildcard for `*.<domain>`).
    e2b_tls_cert: Option<PathBuf>,
    /// Its TLS private key (PEM).
    e2b_tls_key: Option<PathBuf>,
    /// Everything else: warned about.
    #[serde(flatten)]
    unknown: BTreeMap<String, serde_norway::Value>,
}

/// v1's `domain:` block (plus `listen`, ours: v1 always took :443).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct DomainFile {
    api_host: Option<String>,
    proxy_zone: Option<String>,
    acme_email: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    listen: Option<String>,
}

/// Domain mode, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainConfig {
    /// The API's host name.
    pub api_host: String,
    /// Aliases are `<alias>.<proxy_zone>`.
    pub proxy_zone: String,
    /// PEM certificate chain (covering `api_host` and `*.<proxy_zone>`).
    pub tls_cert: PathBuf,
    /// PEM private key.
    pub tls_key: PathBuf,
    /// The TLS listener (default `0.0.0.0:443`).
    pub listen: SocketAddr,
}

impl DomainFile {
    fn check(self) -> anyhow::Result<DomainConfig> {
        let need = |v: Option<String>, key: &str| {
            v.filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().trim_end_matches('.').to_ascii_lowercase())
                .ok_or_else(|| anyhow::anyhow!("domain.{key} is required in domain mode"))
        };
        let (tls_cert, tls_key) = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => (cert, key),
            _ if self.acme_email.is_some() => bail!(
                "domain.acme_email: ACME is not built into this daemon; give domain.tls_cert \
                 and domain.tls_key (a certificate for the API host and *.<proxy_zone>)"
            ),
            _ => bail!("domain mode needs domain.tls_cert and domain.tls_key"),
        };
        Ok(DomainConfig {
            api_host: need(self.api_host, "api_host")?,
            proxy_zone: need(self.proxy_zone, "proxy_zone")?,
            tls_cert,
            tls_key,
            listen: parse_listen(self.listen.as_deref().unwrap_or("0.0.0.0:443"))?,
        })
    }
}

/// The E2B listener's certificate and key (PEM files), read when the daemon starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct E2bTls {
    /// `e2b_tls_cert`.
    pub cert: PathBuf,
    /// `e2b_tls_key`.
    pub key: PathBuf,
}

/// Both TLS keys or neither, and only beside `e2b_listen`.
fn e2b_tls(
    listen: bool,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> anyhow::Result<Option<E2bTls>> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) if !listen => {
            bail!("e2b_tls_cert and e2b_tls_key need e2b_listen (the listener they are for)")
        }
        (Some(cert), Some(key)) => Ok(Some(E2bTls { cert, key })),
        (Some(_), None) => bail!("e2b_tls_cert is set but e2b_tls_key is not: give both"),
        (None, Some(_)) => bail!("e2b_tls_key is set but e2b_tls_cert is not: give both"),
    }
}

/// Thermal timings (ours; v1 compiled them in).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Thermal {
    warm_after_secs: Option<u64>,
    cold_after_secs: Option<u64>,
    tick_secs: Option<u64>,
}

/// Connection deadlines of both listeners (ours; v1 compiled in `ReadHeaderTimeout` 10 s and
/// `IdleTimeout` 120 s).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Http {
    header_read_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
}

/// The API's per-user rate limits (ours; v1 compiled them in): each class's bucket and the
/// number of users remembered.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RateLimitsFile {
    create: Option<RateFile>,
    exec: Option<RateFile>,
    read: Option<RateFile>,
    max_users: Option<usize>,
}

/// One class: a burst and a refill per minute.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateFile {
    burst: f64,
    per_minute: f64,
}

impl RateLimitsFile {
    fn check(&self) -> anyhow::Result<server::rate_limits::Rates> {
        let mut rates = server::rate_limits::Rates::default();
        let classes =
            [("create", self.create, &mut rates.create), ("exec", self.exec, &mut rates.exec)];
        let read = [("read", self.read, &mut rates.read)];
        for (name, given, into) in classes.into_iter().chain(read) {
            if let Some(r) = given {
                if !(r.burst.is_finite() && r.burst >= 1.0) {
                    bail!("rate_limits.{name}.burst must be at least 1");
                }
                if !(r.per_minute.is_finite() && r.per_minute >= 0.0) {
                    bail!("rate_limits.{name}.per_minute must be 0 or more");
                }
                *into = server::rate_limits::Rate { burst: r.burst, per_minute: r.per_minute };
            }
        }
        if let Some(n) = self.max_users {
            if n == 0 {
                bail!("rate_limits.max_users must be at least 1");
            }
            rates.max_users = n;
        }
        Ok(rates)
    }
}

/// v1 keys this daemon accepts and does not use.
const V1_IGNORED: &[&str] = &[
    "firecracker_bin",
    "firecracker_kernel",
    "firecracker_rootfs",
    "firecracker_jailer",
    "jail_uid",
    "jail_gid",
];

/// v1's `dns_upstreams` default, used when /etc/resolv.conf names no IPv4 server.
const V1_DNS_UPSTREAMS: [std::net::SocketAddr; 2] = [
    std::net::SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(1, 1, 1, 1), 53)),
    std::net::SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(8, 8, 8, 8), 53)),
];

const LINK_LOCAL: bhatti_core::egress::Cidr =
    bhatti_core::egress::Cidr::new(std::net::Ipv4Addr::new(169, 254, 0, 0), 16);

/// A `dns_upstreams` entry: `a.b.c.d` (port 53, as v1) or `a.b.c.d:port`.
fn parse_upstream(text: &str) -> anyhow::Result<std::net::SocketAddr> {
    if let Ok(ip) = text.parse::<std::net::Ipv4Addr>() {
        return Ok((ip, 53).into());
    }
    let addr: std::net::SocketAddr =
        text.parse().map_err(|_| anyhow::anyhow!("not an IPv4 address or address:port"))?;
    if !addr.is_ipv4() {
        bail!("IPv6 upstreams are not supported");
    }
    Ok(addr)
}

/// The IPv4 name servers of a resolv.conf, in order (IPv6 ones are skipped: the resolver asks
/// over IPv4).
fn resolv_conf_upstreams(text: &str) -> Vec<std::net::SocketAddr> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<std::net::Ipv4Addr>().ok())
        .map(|ip| (ip, 53).into())
        .collect()
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (v1's).
    Json,
    /// Human-readable.
    Text,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// TCP address of the API.
    pub listen: SocketAddr,
    /// All state.
    pub data_dir: PathBuf,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Built-in images (`<images_dir>/<name>/current/rootfs.ext4`).
    pub images_dir: PathBuf,
    /// Image of a create without one.
    pub default_image: String,
    /// The engine's network namespace.
    pub netns: String,
    /// The guests' subnet.
    pub subnet: engine::Subnet,
    /// KVM, TCG or auto.
    pub accel: engine::Accel,
    /// Boots at once.
    pub max_concurrent_boots: usize,
    /// Cold sandboxes whose next QEMU waits started ahead for their wake (0: none).
    pub restore_pool: usize,
    /// Name servers for guests.
    pub dns: Vec<std::net::SocketAddr>,
    /// Whether sandboxes get a way out (`egress: host`, the default) or none (`off`).
    pub egress: bool,
    /// The namespace the uplink leads into instead of the daemon's own (tests).
    pub egress_netns: Option<String>,
    /// The link-local range the uplink's /30 is taken from.
    pub uplink_range: bhatti_core::egress::Cidr,
    /// Hot -> warm.
    pub warm_after: Duration,
    /// Warm -> cold.
    pub cold_after: Duration,
    /// Thermal tick.
    pub thermal_tick: Duration,
    /// A connection's request head must be complete within this (server::Settings).
    pub header_read_timeout: Duration,
    /// An idle keep-alive connection is closed after this (server::Settings).
    pub idle_timeout: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Log level filter (`info`, `debug`, ...).
    pub log_level: String,
    /// The API's base URL as browsers reach it (share links): `https://<domain.api_host>`, else
    /// the file's `api_url`.
    pub api_url: Option<String>,
    /// Where published aliases answer (from `public_proxy_listen` or `domain`).
    pub public_urls: server::PublicUrls,
    /// The path-mode public proxy's listener.
    pub public_proxy_listen: Option<SocketAddr>,
    /// Domain mode.
    pub domain: Option<DomainConfig>,
    /// The guest agent injected into imported and pulled images (`<data_dir>/lohar`).
    pub lohar: PathBuf,
    /// The largest `docker save` tarball an import takes (v1: 10 GiB).
    pub image_import_max_bytes: u64,
    /// Registries pulled from over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// v1's `backup` block (off unless `s3_endpoint` is set).
    pub backup: server::BackupConfig,
    /// The API's per-user rate limits.
    pub rate_limits: server::rate_limits::Rates,
    /// Creates restore shape snapshots (config `shape_snapshots`, default true).
    pub shape_snapshots: bool,
    /// The E2B-compatible listener (`e2b_listen`, `e2b_domain`).
    pub e2b: Option<server::e2b::E2bConfig>,
    /// Its TLS (`e2b_tls_cert`, `e2b_tls_key`): none, plain HTTP.
    pub e2b_tls: Option<E2bTls>,
    /// Warnings found while loading (unknown keys), logged once logging runs.
    pub warnings: Vec<String>,
}

/// A connection deadline of zero would close every connection before its first request.
fn at_least_1(key: &str, d: Duration) -> anyhow::Result<Duration> {
    if d.is_zero() {
        bail!("{key} must be at least 1");
    }
    Ok(d)
}

/// Reads the environment variable `BHATTI_<name>`, if set and not empty.
fn env(name: &str) -> Option<String> {
    std::env::var(format!("BHATTI_{name}")).ok().filter(|v| !v.is_empty())
}

/// v1 writes `:8080` for every interface.
pub fn parse_listen(text: &str) -> anyhow::Result<SocketAddr> {
    let full = if text.starts_with(':') { format!("0.0.0.0{text}") } else { text.to_owned() };
    full.parse().with_context(|| format!("listen address {text:?}"))
}

impl Config {
    /// Loads `BHATTI_CONFIG` or the default file (a missing default file is fine: defaults),
    /// then applies the environment.
    pub fn load() -> anyhow::Result<Self> {
        let (path, required) = match env("CONFIG") {
            Some(p) => (PathBuf::from(p), true),
            None => (PathBuf::from(DEFAULT_PATH), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Self::from_yaml(&text, &path, &env)
    }

    /// The configuration a YAML text and an environment (`BHATTI_` + name -> value) give.
    pub fn from_yaml(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Self> {
        let file: File = if text.trim().is_empty() {
            File::default()
        } else {
            serde_norway::from_str(text).with_context(|| format!("parsing {}", path.display()))?
        };
        let mut warnings = Vec::new();
        for key in file.unknown.keys() {
            if V1_IGNORED.contains(&key.as_str()) {
                warnings.push(format!(
                    "{}: key {key:?} (v1) is not used by this daemon",
                    path.display()
                ));
            } else {
                warnings.push(format!("{}: unknown key {key:?} ignored", path.display()));
            }
        }
        if let Some(engine) = file.engine.as_deref()
            && !matches!(engine, "" | "firecracker" | "qemu")
        {
            bail!(
                "engine {engine:?}: this daemon runs QEMU (\"qemu\"; v1's \"firecracker\" is accepted)"
            );
        }
        // The CLI's keys (a shared file): `api_url` also tells the daemon how browsers reach
        // the API, for share links; domain mode's API host wins.
        let _ = &file.auth_token;
        let file_api_url = file.api_url.clone();
        let data_dir = env("DATA_DIR")
            .map(PathBuf::from)
            .or(file.data_dir)
            .unwrap_or_else(|| "/var/lib/bhatti".into());
        let listen = parse_listen(
            &env("LISTEN").or(file.listen).unwrap_or_else(|| "127.0.0.1:8080".into()),
        )?;
        let kernel = env("KERNEL")
            .map(PathBuf::from)
            .or(file.kernel)
            .unwrap_or_else(|| data_dir.join("kernel/current/vmlinux"));
        let images_dir = env("IMAGES_DIR")
            .map(PathBuf::from)
            .or(file.images_dir)
            .unwrap_or_else(|| data_dir.join("images"));
        let subnet_text = env("SUBNET").or(file.subnet).unwrap_or_else(|| "10.200.0.0/16".into());
        let subnet = subnet_text
            .parse::<engine::Subnet>()
            .map_err(|e| anyhow::anyhow!("subnet {subnet_text:?}: {e}"))?;
        let accel = match env("ACCEL").or(file.accel).as_deref() {
            None | Some("auto") => engine::Accel::Auto,
            Some("kvm") => engine::Accel::Kvm,
            Some("tcg") => engine::Accel::Tcg,
            Some(other) => bail!("accel {other:?}: use auto, kvm or tcg"),
        };
        let dns = match file.dns_upstreams {
            Some(list) => list
                .iter()
                .map(|d| parse_upstream(d).with_context(|| format!("dns_upstreams entry {d:?}")))
                .collect::<anyhow::Result<Vec<_>>>()?,
            None => {
                let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
                let found = resolv_conf_upstreams(&text);
                if found.is_empty() { V1_DNS_UPSTREAMS.to_vec() } else { found }
            }
        };
        let egress = match env("EGRESS").or(file.egress).as_deref() {
            None | Some("host") => true,
            Some("off") => false,
            Some(other) => bail!("egress {other:?}: use host or off"),
        };
        let range_text = env("UPLINK_RANGE").or(file.uplink_range);
        let uplink_range = match range_text {
            None => engine::uplink::DEFAULT_RANGE,
            Some(text) => {
                let range: bhatti_core::egress::Cidr =
                    text.parse().map_err(|e| anyhow::anyhow!("uplink_range {text:?}: {e}"))?;
                if !LINK_LOCAL.contains(range.addr) || range.len < 16 || range.len > 30 {
                    bail!("uplink_range {text:?}: use a /16 to /30 inside 169.254.0.0/16");
                }
                range
            }
        };
        let secs = |env_name: &str, v: Option<u64>, default: u64| -> anyhow::Result<Duration> {
            let v = match env(env_name) {
                Some(t) => t.parse().with_context(|| format!("BHATTI_{env_name}={t:?}"))?,
                None => v.unwrap_or(default),
            };
            Ok(Duration::from_secs(v))
        };
        let log_format = match env("LOG_FORMAT").or(file.log_format).as_deref() {
            None | Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            Some(other) => bail!("log_format {other:?}: use json or text"),
        };
        let public_text = env("PUBLIC_PROXY_LISTEN").or(file.public_proxy_listen);
        let public_proxy_listen = match &public_text {
            Some(text) => Some(
                parse_listen(text.trim())
                    .with_context(|| format!("public_proxy_listen {text:?}"))?,
            ),
            None => None,
        };
        let domain = file.domain.map(DomainFile::check).transpose()?;
        let backup = file.backup.unwrap_or_default();
        backup.check().map_err(|e| anyhow::anyhow!("backup: {e}"))?;
        let api_url = match &domain {
            Some(domain) => Some(format!("https://{}", domain.api_host)),
            None => file_api_url.filter(|u| !u.trim().is_empty()),
        };
        let public_urls = match (&domain, public_text) {
            (Some(domain), _) => server::PublicUrls::Domain { zone: domain.proxy_zone.clone() },
            (None, Some(base)) => server::PublicUrls::Path { base: base.trim().to_owned() },
            (None, None) => server::PublicUrls::None,
        };
        let lohar = env("LOHAR")
            .map(PathBuf::from)
            .or(file.lohar)
            .unwrap_or_else(|| data_dir.join("lohar"));
        let image_import_max_bytes = match env("IMAGE_IMPORT_MAX_BYTES") {
            Some(t) => t.parse().with_context(|| format!("BHATTI_IMAGE_IMPORT_MAX_BYTES={t:?}"))?,
            None => file.image_import_max_bytes.unwrap_or(10 * 1024 * 1024 * 1024),
        };
        if image_import_max_bytes == 0 {
            bail!("image_import_max_bytes must be at least 1");
        }
        let rate_limits = file.rate_limits.check()?;
        let e2b = match env("E2B_LISTEN").or(file.e2b_listen) {
            Some(text) => Some(server::e2b::E2bConfig {
                listen: parse_listen(text.trim())
                    .with_context(|| format!("e2b_listen {text:?}"))?,
                domain: env("E2B_DOMAIN")
                    .or(file.e2b_domain)
                    .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
                    .filter(|d| !d.is_empty()),
            }),
            None => None,
        };
        let e2b_tls = e2b_tls(
            e2b.is_some(),
            env("E2B_TLS_CERT").map(PathBuf::from).or(file.e2b_tls_cert),
            env("E2B_TLS_KEY").map(PathBuf::from).or(file.e2b_tls_key),
        )?;
        Ok(Config {
            e2b,
            e2b_tls,
            rate_limits,
            shape_snapshots: file.shape_snapshots.unwrap_or(true),
            lohar,
            image_import_max_bytes,
            insecure_registries: file.insecure_registries.unwrap_or_default(),
            backup,
            api_url,
            public_urls,
            public_proxy_listen,
            domain,
            listen,
            kernel,
            images_dir,
            default_image: env("DEFAULT_IMAGE")
                .or(file.default_image)
                .unwrap_or_else(|| "minimal".into()),
            netns: env("NETNS").or(file.netns).unwrap_or_else(|| "bhatti".into()),
            subnet,
            accel,
            max_concurrent_boots: file.max_concurrent_boots.unwrap_or(2),
            restore_pool: match env("RESTORE_POOL") {
                Some(t) => t.parse().with_context(|| format!("BHATTI_RESTORE_POOL={t:?}"))?,
                None => file.restore_pool.unwrap_or(engine::DEFAULT_RESTORE_POOL),
            },
            dns,
            egress,
            egress_netns: env("EGRESS_NETNS").or(file.egress_netns),
            uplink_range,
            warm_after: secs("WARM_AFTER_SECS", file.thermal.warm_after_secs, 30)?,
            cold_after: secs("COLD_AFTER_SECS", file.thermal.cold_after_secs, 30 * 60)?,
            thermal_tick: secs("THERMAL_TICK_SECS", file.thermal.tick_secs, 10)?,
            header_read_timeout: at_least_1(
                "http.header_read_timeout_secs",
                secs("HEADER_READ_TIMEOUT_SECS", file.http.header_read_timeout_secs, 10)?,
            )?,
            idle_timeout: at_least_1(
                "http.idle_timeout_secs",
                secs("IDLE_TIMEOUT_SECS", file.http.idle_timeout_secs, 120)?,
            )?,
            log_format,
            log_level: env("LOG_LEVEL").or(file.log_level).unwrap_or_else(|| "info".into()),
            data_dir,
            warnings,
        })
    }

    /// The engine's settings.
    pub fn engine(&self) -> engine::EngineConfig {
        engine::EngineConfig {
            netns: self.netns.clone(),
            subnet: self.subnet,
            accel: self.accel,
            max_concurrent_boots: self.max_concurrent_boots,
            restore_pool: self.restore_pool,
            // The resolver always runs (it forwards from the daemon's namespace, so names resolve
            // even with egress off); guests name only it.
            resolver: Some(engine::ResolverConfig {
                upstreams: self.dns.clone(),
                upstream_netns: self.egress_netns.clone(),
            }),
            ..engine::EngineConfig::new(self.data_dir.join("engine"), self.kernel.clone())
        }
    }

    /// The server's settings.
    pub fn server(&self) -> server::Settings {
        let mut s = server::Settings::new(self.data_dir.clone());
        s.images_dir = self.images_dir.clone();
        s.default_image = self.default_image.clone();
        s.warm_after = self.warm_after;
        s.cold_after = self.cold_after;
        s.thermal_tick = self.thermal_tick;
        s.header_read_timeout = self.header_read_timeout;
        s.idle_timeout = self.idle_timeout;
        s.public_urls = self.public_urls.clone();
        s.api_url = self.api_url.clone();
        s.lohar = self.lohar.clone();
        s.image_import_max_bytes = self.image_import_max_bytes;
        s.insecure_registries = self.insecure_registries.clone();
        s.backup = self.backup.clone();
        s.rate_limits = self.rate_limits;
        s.shape_snapshots = self.shape_snapshots;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn rate_limits_table() {
        // (name, the file, Ok(create burst, exec per minute, max users) or a part of the error).
        type Row = (&'static str, &'static str, Result<(f64, f64, usize), &'static str>);
        let table: [Row; 6] = [
            ("v1's defaults", "", Ok((10.0, 600.0, 10_000))),
            (
                "low numbers for tests",
                "rate_limits:\n  create: {burst: 2, per_minute: 6}\n  exec: {burst: 1, per_minute: 1}\n  max_users: 5\n",
                Ok((2.0, 1.0, 5)),
            ),
            (
                "a burst below 1",
                "rate_limits:\n  read: {burst: 0, per_minute: 5}\n",
                Err("read.burst"),
            ),
            (
                "a negative refill",
                "rate_limits:\n  exec: {burst: 3, per_minute: -1}\n",
                Err("exec.per_minute"),
            ),
            ("no users", "rate_limits:\n  max_users: 0\n", Err("max_users")),
            ("a typo", "rate_limits:\n  creat: {burst: 1, per_minute: 1}\n", Err("parsing")),
        ];
        for (name, text, want) in table {
            let got = Config::from_yaml(text, Path::new("c.yaml"), &no_env);
            match (got, want) {
                (Ok(c), Ok((burst, per_minute, users))) => {
                    let r = c.server().rate_limits;
                    assert_eq!(
                        (r.create.burst, r.exec.per_minute, r.max_users),
                        (burst, per_minute, users),
                        "{name}"
                    );
                }
                (Err(e), Err(part)) => assert!(format!("{e:#}").contains(part), "{name}: {e:#}"),
                (got, want) => {
                    panic!("{name}: got {:?}, want {want:?}", got.map(|c| c.rate_limits))
                }
            }
        }
    }

    #[test]
    fn upstreams_from_the_file_or_resolv_conf() {
        assert_eq!(parse_upstream("1.1.1.1").unwrap().to_string(), "1.1.1.1:53");
        assert_eq!(parse_upstream("127.0.0.1:5353").unwrap().to_string(), "127.0.0.1:5353");
        assert!(parse_upstream("::1").is_err() && parse_upstream("dns.google").is_err());
        let text = "# generated\nsearch lan\nnameserver 127.0.0.53\nnameserver ::1\n nameserver 9.9.9.9 \n";
        let got: Vec<String> = resolv_conf_upstreams(text).iter().map(|a| a.to_string()).collect();
        assert_eq!(got, ["127.0.0.53:53", "9.9.9.9:53"]);
    }

    #[test]
    fn domain_mode_needs_names_and_a_certificate() {
        let load = |yaml: &str| Config::from_yaml(yaml, Path::new("c.yaml"), &no_env);
        let c = load(
            "domain:\n  api_host: API.example.com\n  proxy_zone: apps.example.com.\n  \
             tls_cert: /etc/bhatti/cert.pem\n  tls_key: /etc/bhatti/key.pem\n",
        )
        .unwrap();
        let d = c.domain.clone().unwrap();
        assert_eq!(
            (d.api_host.as_str(), d.proxy_zone.as_str()),
            ("api.example.com", "apps.example.com")
        );
        assert_eq!(d.listen.to_string(), "0.0.0.0:443");
        assert_eq!(c.server().public_urls.url_for("web"), "https://web.apps.example.com");
        assert_eq!(c.server().api_url.as_deref(), Some("https://api.example.com"));
        let plain = load("api_url: http://box:8080").unwrap();
        assert_eq!(plain.server().api_url.as_deref(), Some("http://box:8080"));
        let acme = load("domain:\n  api_host: a.b\n  proxy_zone: c.d\n  acme_email: x@y.z\n");
        assert!(acme.unwrap_err().to_string().contains("ACME is not built"));
        assert!(load("domain:\n  api_host: a.b\n").is_err());
        assert!(load("domain:\n  api_hots: a.b\n").is_err(), "unknown keys in the block");
        assert!(load("public_proxy_listen: nonsense").is_err());
        assert_eq!(
            load("public_proxy_listen: \":8081\"")
                .unwrap()
                .public_proxy_listen
                .unwrap()
                .to_string(),
            "0.0.0.0:8081"
        );
    }

    #[test]
    fn e2b_listen_is_off_unless_set() {
        let load = |yaml: &str| Config::from_yaml(yaml, Path::new("c.yaml"), &no_env);
        assert_eq!(load("").unwrap().e2b, None);
        let c = load("e2b_listen: \"127.0.0.1:3049\"\ne2b_domain: e2b.localhost\n").unwrap();
        let e2b = c.e2b.unwrap();
        assert_eq!(e2b.listen.to_string(), "127.0.0.1:3049");
        assert_eq!(e2b.domain.as_deref(), Some("e2b.localhost"));
        assert_eq!(
            load("e2b_listen: \":3049\"").unwrap().e2b.unwrap().listen.to_string(),
            "0.0.0.0:3049"
        );
        assert!(load("e2b_listen: nonsense").is_err());
        assert_eq!(load("e2b_listen: \":3049\"").unwrap().e2b_tls, None);
    }

    #[test]
    fn e2b_tls_table() {
        let listen = "e2b_listen: \"127.0.0.1:3443\"\ne2b_domain: E2B.localhost:3443\n";
        // (name, the file, Ok(cert, key) or a part of the error).
        type Row = (&'static str, String, Result<(&'static str, &'static str), &'static str>);
        let rows: [Row; 5] = [
            (
                "both",
                format!("{listen}e2b_tls_cert: /t/cert.pem\ne2b_tls_key: /t/key.pem\n"),
                Ok(("/t/cert.pem", "/t/key.pem")),
            ),
            (
                "a cert without a key",
                format!("{listen}e2b_tls_cert: /t/cert.pem\n"),
                Err("e2b_tls_key is not"),
            ),
            (
                "a key without a cert",
                format!("{listen}e2b_tls_key: /t/key.pem\n"),
                Err("e2b_tls_cert is not"),
            ),
            (
                "no listener",
                "e2b_tls_cert: /t/cert.pem\ne2b_tls_key: /t/key.pem\n".into(),
                Err("need e2b_listen"),
            ),
            ("a typo is warned about", format!("{listen}e2b_tls_crt: /t/c.pem\n"), Err("")),
        ];
        for (name, text, want) in rows {
            let got = Config::from_yaml(&text, Path::new("c.yaml"), &no_env);
            match (got, want) {
                (Ok(c), Ok((cert, key))) => {
                    let tls = c.e2b_tls.unwrap();
                    assert_eq!((tls.cert.to_str(), tls.key.to_str()), (Some(cert), Some(key)));
                    let domain = c.e2b.unwrap().domain;
                    assert_eq!(domain.as_deref(), Some("e2b.localhost:3443"), "{name}");
                }
                (Ok(c), Err("")) => {
                    assert_eq!(c.e2b_tls, None, "{name}");
                    assert!(c.warnings.iter().any(|w| w.contains("e2b_tls_crt")), "{name}");
                }
                (Err(e), Err(part)) => assert!(format!("{e:#}").contains(part), "{name}: {e:#}"),
                (got, want) => panic!("{name}: got {:?}, want {want:?}", got.map(|c| c.e2b_tls)),
            }
        }
        let env = |k: &str| match k {
            "E2B_TLS_CERT" => Some("/env/cert.pem".to_owned()),
            "E2B_TLS_KEY" => Some("/env/key.pem".to_owned()),
            "E2B_DOMAIN" => Some("box.example".to_owned()),
            _ => None,
        };
        let c = Config::from_yaml(listen, Path::new("c.yaml"), &env).unwrap();
        assert_eq!(c.e2b_tls.unwrap().cert, PathBuf::from("/env/cert.pem"));
        assert_eq!(c.e2b.unwrap().domain.as_deref(), Some("box.example"));
    }

    #[test]
    fn public_proxy_listen_gives_path_urls() {
        let load = |yaml: &str| Config::from_yaml(yaml, Path::new("c.yaml"), &no_env);
        let c = load("").unwrap();
        assert_eq!(c.server().public_urls, server::PublicUrls::None);
        let c = load("public_proxy_listen: \"0.0.0.0:8081\"").unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(c.server().public_urls.url_for("web"), "http://0.0.0.0:8081/web/");
        let env = |k: &str| (k == "PUBLIC_PROXY_LISTEN").then(|| "127.0.0.1:9000".to_owned());
        let c = Config::from_yaml("", Path::new("c.yaml"), &env).unwrap();
        assert_eq!(c.server().public_urls.url_for("web"), "http://127.0.0.1:9000/web/");
    }

    #[test]
    fn the_restore_pool_from_the_file_and_the_environment() {
        let load = |yaml: &str| Config::from_yaml(yaml, Path::new("c.yaml"), &no_env);
        assert_eq!(load("").unwrap().restore_pool, engine::DEFAULT_RESTORE_POOL);
        assert_eq!(load("restore_pool: 0").unwrap().engine().restore_pool, 0);
        assert_eq!(load("restore_pool: 5").unwrap().engine().restore_pool, 5);
        assert!(load("restore_pool: -1").is_err());
        let env = |k: &str| (k == "RESTORE_POOL").then(|| "3".to_owned());
        assert_eq!(
            Config::from_yaml("restore_pool: 1", Path::new("c.yaml"), &env).unwrap().restore_pool,
            3
        );
        let bad = |k: &str| (k == "RESTORE_POOL").then(|| "many".to_owned());
        assert!(Config::from_yaml("", Path::new("c.yaml"), &bad).is_err());
    }

    #[test]
    fn egress_and_the_uplink_range() {
        let load = |yaml: &str| Config::from_yaml(yaml, Path::new("c.yaml"), &no_env);
        let c = load("").unwrap();
        assert!(c.egress);
        assert_eq!(c.uplink_range, engine::uplink::DEFAULT_RANGE);
        assert!(!load("egress: off").unwrap().egress);
        assert!(load("egress: open").is_err());
        assert_eq!(
            load("uplink_range: 169.254.7.0/28").unwrap().uplink_range.to_string(),
            "169.254.7.0/28"
        );
        assert!(load("uplink_range: 10.0.0.0/30").is_err(), "outside link-local");
        assert!(load("uplink_range: 169.254.7.0/31").is_err(), "no room for a /30");
        let c = load("dns_upstreams: [1.1.1.1, '127.0.0.1:5353']").unwrap();
        assert_eq!(c.dns.len(), 2);
    }

    #[test]
    fn the_environment_wins_over_the_file() {
        let env = |k: &str| (k == "LISTEN").then(|| "127.0.0.1:7000".to_owned());
        let c = Config::from_yaml("listen: \":9090\"\n", Path::new("x"), &env).unwrap();
        assert_eq!(c.listen, "127.0.0.1:7000".parse().unwrap());
    }

    #[test]
    fn a_v1_file_loads_with_warnings_for_what_is_not_used() {
        let yaml = "engine: firecracker\nlisten: \":9090\"\ndata_dir: /srv/bhatti\n\
                    firecracker_bin: /usr/local/bin/firecracker\nlistn: typo\n";
        let c = Config::from_yaml(yaml, Path::new("/etc/bhatti/config.yaml"), &no_env).unwrap();
        assert_eq!(c.listen, "0.0.0.0:9090".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("/srv/bhatti"));
        assert_eq!(c.kernel, PathBuf::from("/srv/bhatti/kernel/current/vmlinux"));
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(c.warnings.iter().any(|w| w.contains("\"listn\"") && w.contains("unknown")));
        assert!(c.warnings.iter().any(|w| w.contains("firecracker_bin") && w.contains("v1")));
    }

    #[test]
    fn v1s_backup_block_configures_backups() {
        let yaml = "backup:\n  s3_endpoint: http://127.0.0.1:9000\n  s3_region: eu-west-1\n  \
                    s3_bucket: vols\n  s3_access_key: AKIAEXAMPLE\n  s3_secret_key: s3cr3t\n  \
                    schedule:\n    - {volume: data, cron: \"0 3 * * *\", retention: 7}\n";
        let c = Config::from_yaml(yaml, Path::new("x"), &no_env).unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let b = c.server().backup;
        assert!(b.enabled());
        assert_eq!((b.s3_bucket.as_str(), b.s3_region.as_str()), ("vols", "eu-west-1"));
        assert_eq!(b.schedule[0].retention, 7);
        assert!(!format!("{c:?}").contains("s3cr3t"), "the secret key is never printed");
        let bad_cron = yaml.replace("0 3 * * *", "*/5 * * * *");
        assert!(Config::from_yaml(&bad_cron, Path::new("x"), &no_env).is_err());
        let no_bucket = yaml.replace("  s3_bucket: vols\n", "");
        assert!(Config::from_yaml(&no_bucket, Path::new("x"), &no_env).is_err());
        assert!(!Config::from_yaml("", Path::new("x"), &no_env).unwrap().server().backup.enabled());
    }

    #[test]
    fn defaults_and_bad_values() {
        let c = Config::from_yaml("", Path::new("x"), &no_env).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!((c.warm_after.as_secs(), c.cold_after.as_secs()), (30, 1800));
        assert!(Config::from_yaml("engine: docker\n", Path::new("x"), &no_env).is_err());
        assert!(Config::from_yaml("listen: nowhere\n", Path::new("x"), &no_env).is_err());
        assert!(Config::from_yaml("thermal: {warm: 1}\n", Path::new("x"), &no_env).is_err());
        let c = Config::from_yaml(
            "http: {header_read_timeout_secs: 3, idle_timeout_secs: 7}\n",
            Path::new("x"),
            &no_env,
        )
        .unwrap();
        assert_eq!(c.server().header_read_timeout, Duration::from_secs(3));
        assert_eq!(c.server().idle_timeout, Duration::from_secs(7));
        let c = Config::from_yaml("", Path::new("x"), &no_env).unwrap();
        assert_eq!(c.server().header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.server().idle_timeout, Duration::from_secs(120));
        let zero = "http: {header_read_timeout_secs: 0}\n";
        assert!(Config::from_yaml(zero, Path::new("x"), &no_env).is_err());
        assert!(Config::from_yaml("http: {idle: 1}\n", Path::new("x"), &no_env).is_err());
        assert!(Config::from_yaml("log_format: xml\n", Path::new("x"), &no_env).is_err());
    }
}
