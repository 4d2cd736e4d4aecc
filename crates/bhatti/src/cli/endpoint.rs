//! Where the daemon is and which key to show it, resolved once per invocation.
//!
//! v1's order: the flag, then the config file (`BHATTI_CONFIG` alone if set; else
//! `/etc/bhatti/config.yaml`, then the invoking user's `~/.bhatti/config.yaml`, honouring
//! `SUDO_USER`, filling what is still empty), then `BHATTI_URL` / `BHATTI_TOKEN`. Ours after
//! that: the daemon's Unix socket `<data_dir>/api.sock` when it exists (with the key in
//! `<data_dir>/admin.key` when no key was given and that file is readable: whoever can read it
//! is the admin already), else `http://localhost:8080`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

/// The CLI's keys of a config file (the daemon's keys in the same file are ignored here).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FileKeys {
    api_url: Option<String>,
    auth_token: Option<String>,
    data_dir: Option<PathBuf>,
}

/// How to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Plain HTTP over TCP.
    Tcp {
        /// `host:port` to connect to and to send as `Host`.
        authority: String,
        /// A path prefix the API lives under (usually empty).
        prefix: String,
    },
    /// HTTP over the daemon's Unix socket.
    Unix(PathBuf),
}

/// The resolved endpoint.
#[derive(Clone)]
pub struct Endpoint {
    /// Where.
    pub target: Target,
    /// The bearer key, if any.
    pub token: Option<String>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("target", &self.target)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Endpoint {
    /// The address for people (`http://...` or `unix:<path>`).
    pub fn display(&self) -> String {
        match &self.target {
            Target::Tcp { authority, prefix } => format!("http://{authority}{prefix}"),
            Target::Unix(path) => format!("unix:{}", path.display()),
        }
    }
}

/// Parses an API URL: `http://host[:port][/prefix]`, `unix:<path>` (ours), or v1's bare
/// `host:port`.
pub fn parse_url(url: &str) -> anyhow::Result<Target> {
    let url = url.trim();
    if let Some(path) = url.strip_prefix("unix:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if !path.starts_with('/') {
            bail!("{url:?}: a unix: URL needs an absolute socket path");
        }
        return Ok(Target::Unix(path.into()));
    }
    if url.starts_with("https://") {
        bail!(
            "{url:?}: this CLI speaks plain HTTP only (no TLS in this build); use the daemon's \
             local address or socket, or an SSH tunnel"
        );
    }
    let rest = url.strip_prefix("http://").unwrap_or(url);
    if rest.contains("://") {
        bail!("{url:?}: use http://host:port or unix:/path/to/api.sock");
    }
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if host.is_empty() {
        bail!("{url:?}: no host");
    }
    // v1 writes `:8080` for every interface; as a client address that is localhost.
    let host = if host.starts_with(':') { format!("localhost{host}") } else { host.to_owned() };
    let has_port = host.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok());
    let authority = if has_port { host } else { format!("{host}:80") };
    Ok(Target::Tcp { authority, prefix: path.to_owned() })
}

fn read_file(path: &Path, required: bool) -> anyhow::Result<FileKeys> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Ok(FileKeys::default()),
        Ok(text) => {
            serde_norway::from_str(&text).with_context(|| format!("parsing {}", path.display()))
        }
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(FileKeys::default()),
        // Root's server file is often unreadable to a user: that is not an error (v1).
        Err(e) if !required && e.kind() == std::io::ErrorKind::PermissionDenied => {
            Ok(FileKeys::default())
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The invoking user's home: `SUDO_USER`'s when run through sudo, else `$HOME`.
pub fn invoking_home(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(user) = env("SUDO_USER")
        && let Ok(Some(u)) = nix::unistd::User::from_name(&user)
    {
        return Some(u.dir);
    }
    env("HOME").map(PathBuf::from)
}

/// The config files' values, in v1's order.
fn file_keys(env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<FileKeys> {
    if let Some(path) = env("BHATTI_CONFIG") {
        return read_file(Path::new(&path), true);
    }
    let mut keys = read_file(Path::new(crate::config::DEFAULT_PATH), false)?;
    if let Some(home) = invoking_home(env) {
        let user = read_file(&home.join(".bhatti/config.yaml"), false)?;
        keys.api_url = keys.api_url.or(user.api_url);
        keys.auth_token = keys.auth_token.or(user.auth_token);
        keys.data_dir = keys.data_dir.or(user.data_dir);
    }
    Ok(keys)
}

/// The daemon's data directory for local commands (`user`) and the socket: the flag,
/// `BHATTI_DATA_DIR`, the config file's `data_dir`, `/var/lib/bhatti`.
pub fn data_dir(
    flag: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<PathBuf> {
    if let Some(dir) = flag {
        return Ok(dir.to_owned());
    }
    if let Some(dir) = env("BHATTI_DATA_DIR") {
        return Ok(dir.into());
    }
    Ok(file_keys(env)?.data_dir.unwrap_or_else(|| "/var/lib/bhatti".into()))
}

/// Resolves the endpoint (see the module's doc for the order).
pub fn resolve(
    flag_url: Option<&str>,
    flag_token: Option<&str>,
    flag_data_dir: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Endpoint> {
    let file = file_keys(env)?;
    let nonempty = |s: Option<String>| s.filter(|v| !v.trim().is_empty());
    let url = nonempty(flag_url.map(str::to_owned))
        .or(nonempty(file.api_url))
        .or(nonempty(env("BHATTI_URL")));
    let token = nonempty(flag_token.map(str::to_owned))
        .or(nonempty(file.auth_token))
        .or(nonempty(env("BHATTI_TOKEN")))
        .map(|t| t.trim().to_owned());
    if let Some(url) = url {
        return Ok(Endpoint { target: parse_url(&url)?, token });
    }
    let dir = match flag_data_dir {
        Some(d) => d.to_owned(),
        None => env("BHATTI_DATA_DIR")
            .map(PathBuf::from)
            .or(file.data_dir)
            .unwrap_or_else(|| "/var/lib/bhatti".into()),
    };
    let socket = dir.join("api.sock");
    if socket.exists() {
        let token = token.or_else(|| {
            std::fs::read_to_string(dir.join("admin.key"))
                .ok()
                .map(|k| k.trim().to_owned())
                .filter(|k| !k.is_empty())
        });
        return Ok(Endpoint { target: Target::Unix(socket), token });
    }
    Ok(Endpoint {
        target: Target::Tcp { authority: "localhost:8080".into(), prefix: String::new() },
        token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:9000/").unwrap(),
            Target::Tcp { authority: "127.0.0.1:9000".into(), prefix: String::new() }
        );
        assert_eq!(
            parse_url("http://h/api").unwrap(),
            Target::Tcp { authority: "h:80".into(), prefix: "/api".into() }
        );
        assert_eq!(
            parse_url(":8080").unwrap(),
            Target::Tcp { authority: "localhost:8080".into(), prefix: String::new() }
        );
        assert_eq!(parse_url("unix:///run/a.sock").unwrap(), Target::Unix("/run/a.sock".into()));
        assert!(parse_url("https://x").is_err());
        assert!(parse_url("unix:rel").is_err());
        assert!(parse_url("ftp://x").is_err());
    }

    #[test]
    fn the_file_wins_over_the_environment_and_the_flag_over_both() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.yaml");
        std::fs::write(&cfg, "api_url: http://file:1\nauth_token: filekey\nlisten: x\n").unwrap();
        let cfg_s = cfg.display().to_string();
        let env = |k: &str| match k {
            "BHATTI_CONFIG" => Some(cfg_s.clone()),
            "BHATTI_URL" => Some("http://env:2".into()),
            "BHATTI_TOKEN" => Some("envkey".into()),
            _ => None,
        };
        let e = resolve(None, None, None, &env).unwrap();
        assert_eq!(e.display(), "http://file:1");
        assert_eq!(e.token.as_deref(), Some("filekey"));
        let e = resolve(Some("http://flag:3"), Some("flagkey"), None, &env).unwrap();
        assert_eq!((e.display().as_str(), e.token.as_deref()), ("http://flag:3", Some("flagkey")));
        assert!(!format!("{e:?}").contains("flagkey"));
    }

    #[test]
    fn the_local_socket_when_nothing_is_set_and_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.yaml");
        std::fs::write(&empty, "").unwrap();
        let (cfg, data) = (empty.display().to_string(), dir.path().display().to_string());
        let env = |k: &str| match k {
            "BHATTI_CONFIG" => Some(cfg.clone()),
            "BHATTI_DATA_DIR" => Some(data.clone()),
            _ => None,
        };
        // No socket: the default address.
        assert_eq!(resolve(None, None, None, &env).unwrap().display(), "http://localhost:8080");
        let _l = std::os::unix::net::UnixListener::bind(dir.path().join("api.sock")).unwrap();
        std::fs::write(dir.path().join("admin.key"), "bht_k\n").unwrap();
        let e = resolve(None, None, None, &env).unwrap();
        assert_eq!(e.target, Target::Unix(dir.path().join("api.sock")));
        assert_eq!(e.token.as_deref(), Some("bht_k"));
    }
}
