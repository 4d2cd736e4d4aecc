//! The daemon's configuration: v1's file (`/etc/bhatti/config.yaml`) and keys, our additions,
//! and `BHATTI_*` environment overrides (the environment wins over the file).
//!
//! YAML goes through `serde_norway`, a maintained fork of the archived `serde_yaml` with the
//! same API. Keys this version does not know are warned about (a typo must not pass silently)
//! and otherwise ignored, so a v1 file with Firecracker or backup keys still loads.

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
    // Ours.
    kernel: Option<PathBuf>,
    images_dir: Option<PathBuf>,
    default_image: Option<String>,
    netns: Option<String>,
    subnet: Option<String>,
    accel: Option<String>,
    max_concurrent_boots: Option<usize>,
    thermal: Thermal,
    http: Http,
    log_format: Option<String>,
    log_level: Option<String>,
    /// Everything else: warned about.
    #[serde(flatten)]
    unknown: BTreeMap<String, serde_norway::Value>,
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

/// v1 keys this daemon accepts and does not use.
const V1_IGNORED: &[&str] = &[
    "public_proxy_listen",
    "domain",
    "firecracker_bin",
    "firecracker_kernel",
    "firecracker_rootfs",
    "firecracker_jailer",
    "jail_uid",
    "jail_gid",
    "backup",
];

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
    /// Name servers for guests.
    pub dns: Vec<std::net::Ipv4Addr>,
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
        let _ = (&file.api_url, &file.auth_token); // the CLI's keys, shared file
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
        let dns = file
            .dns_upstreams
            .unwrap_or_default()
            .iter()
            .map(|d| d.parse().with_context(|| format!("dns_upstreams entry {d:?}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
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
        Ok(Config {
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
            dns,
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
            dns: self.dns.clone(),
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
