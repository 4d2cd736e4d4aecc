//! `bhatti e2b cert`: a local CA and a wildcard certificate for `*.<domain>`, for E2B's
//! non-deprecated setup (`E2B_DOMAIN=<domain>`, HTTPS to `api.<domain>` and
//! `<port>-<id>.<domain>`) against the daemon's E2B listener (`e2b_tls_cert`, `e2b_tls_key`).
//!
//! Local, no daemon: files in a directory (default `<data_dir>/e2b-tls`): `ca.pem`, `ca.key`,
//! `cert.pem`, `key.pem` (keys 0600, written to a temporary file, fsynced, renamed).
//! Idempotent: an existing CA is kept (its key is loaded to sign), and the leaf is reissued only
//! when it no longer verifies against that CA for `api.<domain>` and `49983-x.<domain>` 30 days
//! from now (another domain, a new CA, near its end) or its key does not match it.
//!
//! The SDK (e2b 2.63) sends everything through `pyqwest` (reqwest + rustls, the platform
//! verifier: `rustls-native-certs`), with `httpx` only as an adapter above it; both take
//! `SSL_CERT_FILE` (which then replaces the system's roots for that process).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::Subcommand;
use serde::Serialize;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use super::error::{CliError, exit};
use super::print_json;

/// The domain when none is given: resolved to loopback by the SDK's resolver (RFC 6761).
pub const DEFAULT_DOMAIN: &str = "e2b.localhost";
/// How long a leaf is valid, and how long before its end it is reissued.
const LEAF_DAYS: i64 = 825;
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long the CA is valid.
const CA_DAYS: i64 = 3650;

/// `bhatti e2b ...`
#[derive(Debug, Subcommand)]
pub enum E2bCommand {
    /// Make a local CA and a certificate for `*.<domain>` (idempotent) and print the daemon's
    /// config lines and the SDK's variables.
    Cert {
        /// `E2B_DOMAIN` as the SDK will be given it: a name, with the listener's port when it
        /// is not 443 (`e2b.localhost:3443`).
        #[arg(long, default_value = DEFAULT_DOMAIN)]
        domain: String,
        /// Where the files go (default `<data_dir>/e2b-tls`).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// What `bhatti e2b cert` made (`--json`).
#[derive(Debug, Serialize)]
pub struct CertReport {
    /// The directory.
    pub dir: PathBuf,
    /// `E2B_DOMAIN` (with its port, if any).
    pub domain: String,
    /// The certificate's names.
    pub names: Vec<String>,
    /// The CA's certificate (what the SDK trusts).
    pub ca: PathBuf,
    /// Made by this run (else kept).
    pub ca_created: bool,
    /// The leaf certificate and its key (the daemon's).
    pub cert: PathBuf,
    /// The leaf's key.
    pub key: PathBuf,
    /// Issued by this run (else kept).
    pub cert_issued: bool,
    /// The daemon's config keys and their values.
    pub config: BTreeMap<String, String>,
    /// The SDK's environment (`E2B_API_KEY` too: a bhatti API key, not shown here).
    pub env: BTreeMap<String, String>,
}

/// Runs `bhatti e2b ...`.
/// `data_dir` is asked only when `--dir` is not given.
pub fn run(
    data_dir: impl FnOnce() -> anyhow::Result<PathBuf>,
    command: E2bCommand,
    json: bool,
) -> anyhow::Result<u8> {
    match command {
        E2bCommand::Cert { domain, dir } => {
            let dir = match dir {
                Some(dir) => dir,
                None => data_dir()?.join("e2b-tls"),
            };
            let report = ensure(&dir, &domain, SystemTime::now())?;
            if json {
                print_json(&report)?;
            } else {
                print_human(&report);
            }
            Ok(exit::OK)
        }
    }
}

fn print_human(r: &CertReport) {
    let state = |made: bool, yes: &'static str| if made { yes } else { "kept" };
    println!("CA:          {} ({})", r.ca.display(), state(r.ca_created, "created"));
    println!(
        "Certificate: {} for {} ({})",
        r.cert.display(),
        r.names.join(", "),
        state(r.cert_issued, "issued")
    );
    println!();
    println!("Add to the daemon's config (then restart it):");
    for (k, v) in &r.config {
        // A JSON string is a YAML string.
        println!("  {k}: {}", serde_json::Value::from(v.as_str()));
    }
    println!();
    println!("Set for the E2B SDK (and E2B_API_KEY to a bhatti API key):");
    for (k, v) in &r.env {
        println!("  export {k}={}", shell_quote(v));
    }
}

fn shell_quote(v: &str) -> String {
    if v.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-:".contains(&b)) {
        v.to_owned()
    } else {
        format!("'{}'", v.replace('\'', "'\\''"))
    }
}

/// `name[:port]`, the name a DNS name (lowercased, no trailing dot), the port 1..=65535.
pub fn parse_domain(text: &str) -> Result<(String, Option<u16>), CliError> {
    let text = text.trim().to_ascii_lowercase();
    let (name, port) = match text.rsplit_once(':') {
        Some((name, port)) => {
            let port = port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                CliError::Usage(format!("--domain {text:?}: the port must be 1..65535"))
            })?;
            (name.trim_end_matches('.'), Some(port))
        }
        None => (text.trim_end_matches('.'), None),
    };
    let valid = !name.is_empty()
        && name.parse::<std::net::IpAddr>().is_err()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid {
        return Err(CliError::Usage(format!(
            "--domain {text:?}: give a DNS name (e.g. {DEFAULT_DOMAIN}), optionally with :port"
        )));
    }
    Ok((name.to_owned(), port))
}

/// Makes or keeps the files in `dir` for `domain` (see the module's doc).
pub fn ensure(dir: &Path, domain: &str, now: SystemTime) -> anyhow::Result<CertReport> {
    let (name, port) = parse_domain(domain)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    let dir = dir.canonicalize().map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    let (ca, ca_key, cert, key) =
        (dir.join("ca.pem"), dir.join("ca.key"), dir.join("cert.pem"), dir.join("key.pem"));
    let read = |p: &Path| match std::fs::read_to_string(p) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", p.display())),
    };
    let (ca_pem, ca_key_pem, ca_created) = match (read(&ca)?, read(&ca_key)?) {
        (Some(cert), Some(key)) => (cert, key, false),
        (None, None) => {
            let (cert_pem, key_pem) = new_ca(now)?;
            write_file(&ca_key, &key_pem, 0o600)?;
            write_file(&ca, &cert_pem, 0o644)?;
            (cert_pem, key_pem, true)
        }
        _ => anyhow::bail!(
            "{} has only one of ca.pem and ca.key: restore the other, or remove both to make a \
             new CA (every SDK then needs the new ca.pem)",
            dir.display()
        ),
    };
    let kept_leaf = match read(&cert)? {
        Some(leaf) if key.exists() => {
            leaf_covers(&ca_pem, &leaf, &name, now + RENEW_BEFORE)
                && server::tls::server_config(&cert, &key).is_ok()
        }
        _ => false,
    };
    if !kept_leaf {
        let (leaf_pem, leaf_key_pem) = issue_leaf(&ca_pem, &ca_key_pem, &name, now)?;
        write_file(&key, &leaf_key_pem, 0o600)?;
        write_file(&cert, &leaf_pem, 0o644)?;
    }
    let loopback = name == "localhost" || name.ends_with(".localhost");
    let listen_host = if loopback { "127.0.0.1" } else { "0.0.0.0" };
    let listen = format!("{listen_host}:{}", port.unwrap_or(443));
    let config = BTreeMap::from([
        ("e2b_listen".into(), listen),
        ("e2b_domain".into(), text_domain(&name, port)),
        ("e2b_tls_cert".into(), cert.to_string_lossy().into_owned()),
        ("e2b_tls_key".into(), key.to_string_lossy().into_owned()),
    ]);
    let env = BTreeMap::from([
        ("E2B_DOMAIN".into(), text_domain(&name, port)),
        ("SSL_CERT_FILE".into(), ca.to_string_lossy().into_owned()),
    ]);
    Ok(CertReport {
        names: leaf_names(&name),
        domain: text_domain(&name, port),
        dir,
        ca,
        ca_created,
        cert,
        key,
        cert_issued: !kept_leaf,
        config,
        env,
    })
}

fn text_domain(name: &str, port: Option<u16>) -> String {
    match port {
        Some(port) => format!("{name}:{port}"),
        None => name.to_owned(),
    }
}

/// The leaf's names: the wildcard (`api.<name>`, `<port>-<id>.<name>`) and the name itself.
fn leaf_names(name: &str) -> Vec<String> {
    vec![format!("*.{name}"), name.to_owned()]
}

fn validity(params: &mut rcgen::CertificateParams, now: SystemTime, days: i64) {
    let now = time::OffsetDateTime::from(now);
    // An hour back: a client whose clock is a little behind still takes a fresh leaf.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

/// A new CA: (certificate PEM, key PEM).
fn new_ca(now: SystemTime) -> anyhow::Result<(String, String)> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.distinguished_name.push(rcgen::DnType::CommonName, "bhatti local E2B CA");
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "bhatti");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, now, CA_DAYS);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A leaf for `*.<name>` and `<name>` signed by the CA: (certificate PEM, key PEM).
fn issue_leaf(
    ca_pem: &str,
    ca_key_pem: &str,
    name: &str,
    now: SystemTime,
) -> anyhow::Result<(String, String)> {
    let ca_key = rcgen::KeyPair::from_pem(ca_key_pem)
        .map_err(|e| anyhow::anyhow!("ca.key is no usable private key: {e}"))?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca_pem, ca_key)
        .map_err(|e| anyhow::anyhow!("ca.pem is no usable CA certificate: {e}"))?;
    let mut params = rcgen::CertificateParams::new(leaf_names(name))?;
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("*.{name}"));
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, now, LEAF_DAYS);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Whether `leaf_pem` verifies against `ca_pem` (as a TLS client checks it, at `at`) for
/// `api.<name>` and for a sandbox host `49983-x.<name>`.
pub fn leaf_covers(ca_pem: &str, leaf_pem: &str, name: &str, at: SystemTime) -> bool {
    verify(ca_pem, leaf_pem, &format!("api.{name}"), at).is_ok()
        && verify(ca_pem, leaf_pem, &format!("49983-x.{name}"), at).is_ok()
}

/// A TLS client's check of `leaf_pem` for `host`, trusting only `ca_pem`.
pub fn verify(ca_pem: &str, leaf_pem: &str, host: &str, at: SystemTime) -> anyhow::Result<()> {
    use rustls::client::danger::ServerCertVerifier;
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes())?;
    let leaf = CertificateDer::from_pem_slice(leaf_pem.as_bytes())?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca)?;
    // ring, as the daemon's TLS (`server::tls`).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()?;
    let name = ServerName::try_from(host.to_owned())?;
    let since = at.duration_since(SystemTime::UNIX_EPOCH)?;
    verifier.verify_server_cert(&leaf, &[], &name, &[], UnixTime::since_unix_epoch(since))?;
    Ok(())
}

/// Writes `path` whole or not at all: a temporary file with `mode`, fsynced, renamed, the
/// directory fsynced.
fn write_file(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path))
        .and_then(|()| match path.parent() {
            Some(dir) => std::fs::File::open(dir)?.sync_all(),
            None => Ok(()),
        });
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::anyhow!("writing {}: {e}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn domains_table() {
        // (name, --domain, the name and port it gives or None for a usage error)
        type Row = (&'static str, &'static str, Option<(&'static str, Option<u16>)>);
        let rows: [Row; 9] = [
            ("the default", "e2b.localhost", Some(("e2b.localhost", None))),
            ("with a port", "e2b.localhost:3443", Some(("e2b.localhost", Some(3443)))),
            ("case and a dot", "E2B.Example.COM.", Some(("e2b.example.com", None))),
            ("port zero", "e2b.localhost:0", None),
            ("port too large", "e2b.localhost:70000", None),
            ("an address", "127.0.0.1", None),
            ("a space", "e2b local", None),
            ("an empty label", "e2b..localhost", None),
            ("a wildcard", "*.e2b.localhost", None),
        ];
        for (name, text, want) in rows {
            let got = parse_domain(text).ok();
            assert_eq!(
                got,
                want.map(|(n, p)| (n.to_owned(), p)),
                "{name}: {:?}",
                parse_domain(text)
            );
        }
    }

    #[test]
    fn the_leaf_verifies_against_the_ca_for_the_domain_only() {
        let now = SystemTime::now();
        let (ca, ca_key) = new_ca(now).unwrap();
        let (leaf, _) = issue_leaf(&ca, &ca_key, "e2b.localhost", now).unwrap();
        // (name, host, verifies)
        let rows = [
            ("the control plane", "api.e2b.localhost", true),
            ("envd", "49983-0123abcd.e2b.localhost", true),
            ("a user port", "8080-0123abcd.e2b.localhost", true),
            ("the domain itself", "e2b.localhost", true),
            ("another domain", "api.example.com", false),
            ("a deeper name", "a.b.e2b.localhost", false),
            ("a parent", "localhost", false),
        ];
        for (name, host, want) in rows {
            let got = verify(&ca, &leaf, host, now);
            assert_eq!(got.is_ok(), want, "{name}: {got:?}");
        }
        // Another CA does not vouch for it.
        let (other, _) = new_ca(now).unwrap();
        assert!(verify(&other, &leaf, "api.e2b.localhost", now).is_err());
        // Near its end it is no longer covered (and is reissued).
        let late = now + Duration::from_secs((LEAF_DAYS as u64 + 1) * 24 * 3600);
        assert!(!leaf_covers(&ca, &leaf, "e2b.localhost", late));
        assert!(leaf_covers(&ca, &leaf, "e2b.localhost", now + RENEW_BEFORE));
    }

    #[test]
    fn ensure_keeps_the_ca_and_reissues_the_leaf_for_a_new_domain() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tls");
        let now = SystemTime::now();
        let first = ensure(&dir, "e2b.localhost:3443", now).unwrap();
        assert!(first.ca_created && first.cert_issued);
        assert_eq!(first.domain, "e2b.localhost:3443");
        for file in ["ca.key", "key.pem"] {
            let mode = std::fs::metadata(dir.join(file)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        let (ca, cert) = (read("ca.pem"), read("cert.pem"));
        let again = ensure(&dir, "e2b.localhost:3443", now).unwrap();
        assert!(!again.ca_created && !again.cert_issued);
        assert_eq!((read("ca.pem"), read("cert.pem")), (ca.clone(), cert.clone()));
        let moved = ensure(&dir, "sandbox.example.com", now).unwrap();
        assert!(!moved.ca_created && moved.cert_issued);
        assert_eq!(read("ca.pem"), ca);
        assert!(leaf_covers(&ca, &read("cert.pem"), "sandbox.example.com", now));
        assert!(!leaf_covers(&ca, &read("cert.pem"), "e2b.localhost", now));
        assert_eq!(moved.config["e2b_listen"], "0.0.0.0:443");
        assert_eq!(first.config["e2b_listen"], "127.0.0.1:3443");
        // A CA key without its certificate is not replaced silently.
        std::fs::remove_file(dir.join("ca.pem")).unwrap();
        let e = ensure(&dir, "e2b.localhost", now).unwrap_err();
        assert!(e.to_string().contains("only one of ca.pem and ca.key"), "{e}");
    }
}
