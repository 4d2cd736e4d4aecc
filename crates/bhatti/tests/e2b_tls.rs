//! E2B's non-deprecated setup against bhatti: `E2B_DOMAIN` with HTTPS. The real
//! `bhatti e2b cert` makes the CA and the listener's certificate in the test's directory, the
//! daemon serves `e2b_listen` with `e2b_tls_cert` / `e2b_tls_key`, and the SDK
//! (`tests/e2b/test_tls.py`) gets only `E2B_DOMAIN=e2b.localhost:<port>`, `SSL_CERT_FILE` and
//! `E2B_API_KEY`. Plus the bad inputs: a certificate file that is missing or no PEM is a startup
//! error naming its key; plain HTTP to the TLS port fails cleanly and TLS goes on working.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Setup;
use common::e2b::{add_config, free_port, run_pytest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

/// What `bhatti e2b cert --json` answered.
struct Cert {
    json: serde_json::Value,
}

impl Cert {
    fn path(&self, key: &str) -> PathBuf {
        PathBuf::from(self.json[key].as_str().unwrap())
    }
    fn flag(&self, key: &str) -> bool {
        self.json[key].as_bool().unwrap()
    }
    /// The config lines it printed, as YAML.
    fn config(&self) -> String {
        // A JSON string is a YAML string.
        let lines = self.json["config"].as_object().unwrap();
        lines.iter().map(|(k, v)| format!("{k}: {v}\n")).collect()
    }
    fn env(&self, name: &str) -> String {
        self.json["env"][name].as_str().unwrap().to_owned()
    }
}

/// `bhatti e2b cert --dir DIR <args>` as a user runs it (no daemon, no config).
fn cert_command(dir: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bhatti"));
    for (k, _) in std::env::vars() {
        if k.starts_with("BHATTI_") {
            cmd.env_remove(k);
        }
    }
    let config = dir.with_extension("cli.yaml");
    std::fs::write(&config, "").unwrap();
    cmd.args(["e2b", "cert"])
        .args(args)
        .arg("--dir")
        .arg(dir)
        .env("BHATTI_CONFIG", config)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The real CLI: `bhatti e2b cert --dir DIR --domain DOMAIN --json`.
fn cert(dir: &Path, domain: &str) -> Cert {
    let out = cert_command(dir, &["--json", "--domain", domain]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Cert { json: serde_json::from_slice(&out.stdout).unwrap() }
}

/// The daemon's config for the TLS listener on `port` from what `cert` printed.
fn configure(s: &Setup, c: &Cert, port: u16) {
    let config = c.config();
    assert!(config.contains(&format!("e2b_listen: \"127.0.0.1:{port}\"")), "{config}");
    add_config(s, &config);
}

fn root_store(ca: &Path) -> rustls::RootCertStore {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_file(ca).unwrap()).unwrap();
    roots
}

/// One HTTP/1.1 request over TLS to `127.0.0.1:port` for `host`, trusting only `ca`; the answer.
async fn tls_get(ca: &Path, port: u16, host: &str, path: &str, key: &str) -> String {
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(root_store(ca))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nX-API-KEY: {key}\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn e2b_python_sdk_flows_pass_with_only_e2b_domain_over_tls() {
    let mut s = Setup::new();
    let port = free_port();
    let c = cert(&s.data.path().join("e2b-tls"), &format!("e2b.localhost:{port}"));
    configure(&s, &c, port);
    s.start().await;
    let env = vec![
        ("E2B_DOMAIN".to_owned(), c.env("E2B_DOMAIN")),
        ("SSL_CERT_FILE".to_owned(), c.env("SSL_CERT_FILE")),
        ("E2B_API_KEY".to_owned(), s.key()),
    ];
    assert_eq!(env[0].1, format!("e2b.localhost:{port}"));
    assert_eq!(PathBuf::from(&env[1].1), c.path("ca"));
    run_pytest(&s, "test_tls.py", &env, Duration::from_secs(900)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_to_the_tls_port_fails_cleanly_and_tls_goes_on_working() {
    let mut s = Setup::new();
    let port = free_port();
    let c = cert(&s.data.path().join("e2b-tls"), &format!("e2b.localhost:{port}"));
    configure(&s, &c, port);
    s.start().await;
    let ca = c.path("ca");
    let host = "api.e2b.localhost";
    let list = tls_get(&ca, port, host, "/v2/sandboxes", &s.key()).await;
    assert!(list.starts_with("HTTP/1.1 200"), "{list}");
    // A plain-HTTP client: no HTTP answer, the connection is closed (the handshake fails).
    let plain = tokio::task::spawn_blocking(move || {
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        tcp.write_all(b"GET /health HTTP/1.1\r\nHost: api.e2b.localhost\r\n\r\n").unwrap();
        let mut got = Vec::new();
        let started = Instant::now();
        let end = tcp.read_to_end(&mut got);
        (end.map_err(|e| e.kind()), got, started.elapsed())
    })
    .await
    .unwrap();
    let (end, got, took) = plain;
    // At most a TLS alert (a record starting with 0x15), never an HTTP answer.
    assert!(got.is_empty() || got[0] == 0x15, "plain HTTP got an answer: {got:?}");
    assert!(end.is_ok() || end == Err(std::io::ErrorKind::ConnectionReset), "{end:?}");
    assert!(took < Duration::from_secs(15), "the plain connection was held {took:?}");
    // A client that opens a connection and says nothing holds only its own slot meanwhile.
    let _silent = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let again = tls_get(&ca, port, host, "/v2/sandboxes", &s.key()).await;
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");
    // The sandbox host names verify too (the wildcard), and an unknown sandbox is a 404.
    let envd = tls_get(&ca, port, "49983-0123456789abcdef.e2b.localhost", "/health", "-").await;
    assert!(envd.starts_with("HTTP/1.1 "), "{envd}");
    assert!(!envd.starts_with("HTTP/1.1 200"), "{envd}");
}

/// Starts the daemon expecting it to fail; its stderr and log.
fn start_fails(s: &Setup) -> String {
    let log = s.data.path().join("failed.err");
    let mut child = s
        .serve_command()
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the daemon did not fail: {}", std::fs::read_to_string(&log).unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    std::fs::read_to_string(&log).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_certificate_or_key_file_is_a_startup_error_naming_its_key() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cert(&tmp.path().join("tls"), "e2b.localhost");
    let (good_cert, good_key) = (c.path("cert"), c.path("key"));
    let garbage = tmp.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let unreadable = tmp.path().join("unreadable.pem");
    std::fs::create_dir(&unreadable).unwrap();
    let missing = tmp.path().join("missing.pem");
    let other = cert(&tmp.path().join("other"), "e2b.localhost");
    // (name, cert, key, a part of the error)
    let rows: [(&str, &Path, &Path, &str); 5] = [
        ("a missing certificate", &missing, &good_key, "e2b_tls_cert"),
        ("a missing key", &good_cert, &missing, "e2b_tls_key"),
        ("a certificate that is no PEM", &garbage, &good_key, "e2b_tls_cert"),
        ("an unreadable key (a directory)", &good_cert, &unreadable, "e2b_tls_key"),
        ("a key of another certificate", &good_cert, &other.path("key"), "e2b_tls_cert and"),
    ];
    for (name, cert, key, want) in rows {
        let s = Setup::new();
        let port = free_port();
        add_config(
            &s,
            &format!(
                "e2b_listen: \"127.0.0.1:{port}\"\ne2b_domain: e2b.localhost\n\
                 e2b_tls_cert: {}\ne2b_tls_key: {}\n",
                cert.display(),
                key.display()
            ),
        );
        let err = start_fails(&s);
        assert!(err.contains(want), "{name}: {err}");
        assert!(
            err.contains(&cert.display().to_string()) || err.contains(&key.display().to_string()),
            "{name}: {err}"
        );
    }
    // A key without a certificate is a config error naming the missing key.
    let s = Setup::new();
    add_config(
        &s,
        &format!(
            "e2b_listen: \"127.0.0.1:{}\"\ne2b_tls_key: {}\n",
            free_port(),
            good_key.display()
        ),
    );
    let err = start_fails(&s);
    assert!(err.contains("e2b_tls_cert is not"), "{err}");
}

#[test]
fn e2b_cert_is_idempotent_keeps_the_ca_and_reissues_the_leaf_for_a_new_domain() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tls");
    let first = cert(&dir, "e2b.localhost:3443");
    assert!(first.flag("ca_created") && first.flag("cert_issued"));
    assert_eq!(first.env("E2B_DOMAIN"), "e2b.localhost:3443");
    for file in ["ca.key", "key.pem"] {
        let mode = std::fs::metadata(dir.join(file)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let (ca, leaf, key) = (read("ca.pem"), read("cert.pem"), read("key.pem"));
    let again = cert(&dir, "e2b.localhost:3443");
    assert!(!again.flag("ca_created") && !again.flag("cert_issued"));
    assert_eq!(
        (read("ca.pem"), read("cert.pem"), read("key.pem")),
        (ca.clone(), leaf.clone(), key)
    );
    let moved = cert(&dir, "sandboxes.example.com");
    assert!(!moved.flag("ca_created") && moved.flag("cert_issued"));
    assert_eq!(read("ca.pem"), ca);
    assert_ne!(read("cert.pem"), leaf);
    assert!(moved.config().contains("e2b_listen: \"0.0.0.0:443\""), "{}", moved.config());
    // The human output names the two variables and the config keys.
    let out = cert_command(&dir, &["--domain", "sandboxes.example.com"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for part in [
        "export E2B_DOMAIN=sandboxes.example.com",
        "export SSL_CERT_FILE=",
        "e2b_tls_cert:",
        "e2b_tls_key:",
        "(kept)",
    ] {
        assert!(text.contains(part), "{part}: {text}");
    }
    // Bad domains are usage errors.
    let bad = cert_command(&dir, &["--domain", "e2b.localhost:0"]);
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));
}
