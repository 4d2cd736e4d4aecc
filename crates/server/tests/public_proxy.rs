//! The public proxy against a real daemon with a real VM: busybox `httpd` in the guest,
//! published under an alias, reached without a key on the proxy's own listener, hot, warm and
//! cold, with a burst of requests at a cold sandbox.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::Daemon;
use reqwest::Method;

const SITE: &str = r#"
set -e
mkdir -p /home/lohar/www/cgi-bin
echo hello-from-guest > /home/lohar/www/index.html
cat > /home/lohar/www/cgi-bin/env <<'EOF'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
echo "XFF=$HTTP_X_FORWARDED_FOR"
echo "HOST=$HTTP_HOST"
echo "URI=$REQUEST_URI"
echo "XFP=$HTTP_X_FORWARDED_PROTO"
EOF
cat > /home/lohar/www/cgi-bin/ticks <<'EOF'
#!/bin/sh
printf 'Content-Type: text/event-stream\r\n\r\n'
while true; do echo "data: tick"; echo; sleep 0.2; done
EOF
chmod 0755 /home/lohar/www/cgi-bin/*
"#;

/// The public proxy on an ephemeral port of its own; its base URL.
async fn public_listener(d: &Daemon) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(server::serve_public(
        d.state.clone(),
        server::nodelay(listener),
        std::future::pending(),
    ));
    url
}

async fn publish(d: &Daemon, sandbox_id: &str, port: u16, alias: &str) {
    let r = d
        .req(Method::POST, &format!("/sandboxes/{sandbox_id}/publish"))
        .json(&serde_json::json!({ "port": port, "alias": alias }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn thermal(d: &Daemon, id: &str) -> engine::Thermal {
    d.state.engine.thermal(id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_ports_answer_hot_warm_and_cold_and_a_burst_wakes_once() {
    let d = Daemon::start().await;
    let public = public_listener(&d).await;
    let sb = d.create("site").await;
    d.sh("site", SITE).await;
    let r = d
        .req(Method::POST, "/sandboxes/site/exec")
        .json(&serde_json::json!({"cmd": ["httpd", "-p", "8080", "-h", "/home/lohar/www"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    publish(&d, &sb.id, 8080, "site-app").await;

    // Hot: no key, the alias in the path, the rest of the path and the query to the guest.
    assert_eq!(get(&format!("{public}/site-app/")).await, (200, "hello-from-guest\n".into()));
    let (status, env) = get(&format!("{public}/site-app/cgi-bin/env?x=1")).await;
    assert_eq!(status, 200, "{env}");
    assert!(env.contains("XFF=127.0.0.1"), "{env}");
    assert!(env.contains("HOST=localhost:8080"), "{env}");
    assert!(env.contains("URI=/cgi-bin/env?x=1"), "{env}");
    // Nothing else is served: unknown aliases and the bare root are 404, before any wake.
    assert_eq!(get(&format!("{public}/nope/")).await.0, 404);
    assert_eq!(get(&format!("{public}/")).await.0, 404);

    // A stream arrives as the guest writes it (never buffered whole).
    let started = Instant::now();
    let mut ticks = reqwest::get(format!("{public}/site-app/cgi-bin/ticks")).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), ticks.chunk()).await.unwrap();
    assert!(first.unwrap().unwrap().starts_with(b"data: tick"));
    assert!(started.elapsed() < Duration::from_secs(5));
    // Traffic is activity: the open stream holds a lease, so the sandbox cannot be paused
    // under it; once the client goes, it can.
    assert!(d.state.engine.host_activity(&sb.id).unwrap().in_flight >= 1);
    let busy = d.state.engine.pause(&sb.id, Duration::ZERO).await.unwrap_err();
    assert_eq!(busy.kind(), engine::ErrorKind::Busy);
    drop(ticks);
    common::until("the stream's lease to end", Duration::from_secs(10), || async {
        d.state.engine.host_activity(&sb.id).unwrap().in_flight == 0
    })
    .await;

    // Warm: the first request wakes it.
    d.state.engine.pause(&sb.id, Duration::from_secs(5)).await.unwrap();
    assert_eq!(thermal(&d, &sb.id), engine::Thermal::Warm);
    assert_eq!(get(&format!("{public}/site-app/")).await, (200, "hello-from-guest\n".into()));
    assert_eq!(thermal(&d, &sb.id), engine::Thermal::Hot);

    // Cold, then a burst of 20 at once: every request answered, exactly one wake.
    d.state.engine.stop(&sb.id, Duration::from_secs(5)).await.unwrap();
    assert_eq!(thermal(&d, &sb.id), engine::Thermal::Cold);
    let mut events = d.state.engine.subscribe();
    let wakes_before = d.state.public.stats().wakes;
    let burst: Vec<_> = (0..20)
        .map(|_| {
            let url = format!("{public}/site-app/");
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    for request in burst {
        assert_eq!(request.await.unwrap(), (200, "hello-from-guest\n".into()));
    }
    assert_eq!(d.state.public.stats().wakes, wakes_before + 1, "one wake for the burst");
    let mut woke = 0;
    while let Ok(event) = events.try_recv() {
        if event.id == sb.id && matches!(event.kind, engine::EventKind::Woke { .. }) {
            woke += 1;
        }
    }
    assert_eq!(woke, 1, "the engine woke the sandbox once");
    let row: api::Sandbox =
        d.req(Method::GET, "/sandboxes/site").send().await.unwrap().json().await.unwrap();
    assert_eq!(row.status, "running");

    // Unpublished: the alias stops answering at once (its cached route is forgotten), and
    // answers again once published again.
    let r = d.req(Method::DELETE, "/sandboxes/site/publish/8080").send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(get(&format!("{public}/site-app/")).await.0, 404);
    publish(&d, &sb.id, 8080, "site-app").await;
    assert_eq!(get(&format!("{public}/site-app/")).await.0, 200);

    // Stopped by its user: it stays stopped, and the route says so.
    let r = d.req(Method::POST, "/sandboxes/site/stop").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (status, body) = get(&format!("{public}/site-app/")).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("sandbox_unavailable"), "{body}");
    assert_eq!(thermal(&d, &sb.id), engine::Thermal::Cold);

    // Destroyed: the alias leads nowhere (and its cached route is forgotten).
    let r = d.req(Method::DELETE, "/sandboxes/site").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(get(&format!("{public}/site-app/")).await.0, 404);
    d.stop().await;
}

/// Time to the first byte of the answer's body, in milliseconds.
async fn ttfb(request: reqwest::RequestBuilder) -> f64 {
    let started = Instant::now();
    let mut r = request.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap();
    assert!(first.is_some());
    started.elapsed().as_secs_f64() * 1000.0
}

fn p50_95_99(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    (at(0.50), at(0.95), at(0.99))
}

/// The issue's target: the public proxy's time to first byte on a hot sandbox within 1 ms p50
/// of the authenticated proxy's, measured in one run, interleaved. Asserts a loose bound
/// against regressions; prints the numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_ttfb_is_close_to_the_authenticated_proxys() {
    const N: usize = 200;
    let d = Daemon::start().await;
    let public = public_listener(&d).await;
    let sb = d.create("speed").await;
    d.sh("speed", "mkdir -p /home/lohar/www && echo hi > /home/lohar/www/index.html").await;
    let r = d
        .req(Method::POST, "/sandboxes/speed/exec")
        .json(&serde_json::json!({"cmd": ["httpd", "-p", "8080", "-h", "/home/lohar/www"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    publish(&d, &sb.id, 8080, "speed").await;
    let client = reqwest::Client::new();
    let (mut authed, mut open) = (Vec::new(), Vec::new());
    for i in 0..N + 10 {
        let a = ttfb(d.req(Method::GET, "/sandboxes/speed/proxy/8080/")).await;
        let p = ttfb(client.get(format!("{public}/speed/"))).await;
        // The first few warm the paths (connections, the route cache).
        if i >= 10 {
            authed.push(a);
            open.push(p);
        }
    }
    let (a50, a95, a99) = p50_95_99(authed);
    let (p50, p95, p99) = p50_95_99(open);
    eprintln!("authenticated proxy TTFB n={N} p50 {a50:.3} ms p95 {a95:.3} ms p99 {a99:.3} ms");
    eprintln!("public proxy TTFB        n={N} p50 {p50:.3} ms p95 {p95:.3} ms p99 {p99:.3} ms");
    let added = p50 - a50;
    eprintln!(
        "public - authenticated p50: {added:+.3} ms (target at most +1 ms): {}",
        if added <= 1.0 { "met" } else { "NOT met" }
    );
    assert!(added < 10.0, "the public proxy adds {added} ms at p50");
    assert!(p99 < a99 * 3.0 + 20.0, "public p99 {p99} vs {a99}");
    d.stop().await;
}

/// A CA, and a certificate it signed for the API host and the alias zone; PEM files written
/// into `dir`. Returns the CA's DER for the client's trust store.
fn certificates(dir: &std::path::Path) -> (Vec<u8>, std::path::PathBuf, std::path::PathBuf) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![
        "api.test".into(),
        "*.apps.test".into(),
        "a.site.apps.test".into(),
    ])
    .unwrap()
    .signed_by(&leaf_key, &issuer)
    .unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    (ca_cert.der().to_vec(), cert, key)
}

/// One HTTPS request for `host` (trusting `ca`) over a fresh connection; status and body.
async fn https_get(addr: std::net::SocketAddr, ca: &[u8], host: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(ca.to_vec())).unwrap();
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    // A server that closes without close_notify is fine here: the answer is what was read.
    let _ = tls.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_mode_serves_the_api_and_aliases_over_tls() {
    let d = Daemon::start().await;
    let (ca, cert, key) = certificates(d.data.path());
    let config = server::tls::server_config(&cert, &key).unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let domain =
        server::public::domain::Domain { api_host: "api.test".into(), zone: "apps.test".into() };
    tokio::spawn(server::serve_domain(
        d.state.clone(),
        server::tls::listener(tcp, config).unwrap(),
        domain,
        std::future::pending(),
    ));
    let sb = d.create("tls-site").await;
    d.sh("tls-site", SITE).await;
    let r = d
        .req(Method::POST, "/sandboxes/tls-site/exec")
        .json(&serde_json::json!({"cmd": ["httpd", "-p", "8080", "-h", "/home/lohar/www"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    publish(&d, &sb.id, 8080, "site").await;

    // An alias is a host below the zone; the whole path goes to the guest; the guest hears
    // that the client spoke HTTPS.
    assert_eq!(
        https_get(addr, &ca, "site.apps.test", "/").await,
        (200, "hello-from-guest\n".into())
    );
    let (status, env) = https_get(addr, &ca, "site.apps.test", "/cgi-bin/env?q=2").await;
    assert_eq!(status, 200, "{env}");
    assert!(env.contains("URI=/cgi-bin/env?q=2") && env.contains("XFP=https"), "{env}");
    // The API on its own host, authenticated as ever.
    let (status, health) = https_get(addr, &ca, "api.test", "/health").await;
    assert_eq!(status, 200, "{health}");
    assert!(health.contains("\"status\":\"ok\""), "{health}");
    assert_eq!(https_get(addr, &ca, "api.test", "/sandboxes").await.0, 401);
    // Nothing else.
    assert_eq!(https_get(addr, &ca, "nope.apps.test", "/").await.0, 404);
    assert_eq!(https_get(addr, &ca, "a.site.apps.test", "/").await.0, 404);
    d.stop().await;
}

/// A raw upgrade server in the guest (`nc -ll -e`): it answers 101 and then echoes bytes.
const UPGRADE_SERVER: &str = r#"
set -e
cat > /home/lohar/upgrade.sh <<'EOF'
#!/bin/sh
while IFS= read -r line; do
    line=$(printf '%s' "$line" | tr -d '\r')
    [ -z "$line" ] && break
done
printf 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n'
exec cat
EOF
chmod 0755 /home/lohar/upgrade.sh
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_through_the_public_proxy_is_relayed_and_keeps_the_sandbox_hot() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = Daemon::start().await;
    let public = public_listener(&d).await;
    let sb = d.create("ws-pub").await;
    d.sh("ws-pub", UPGRADE_SERVER).await;
    let r = d
        .req(Method::POST, "/sandboxes/ws-pub/exec")
        .json(&serde_json::json!({
            "cmd": ["nc", "-ll", "-p", "9000", "-e", "/home/lohar/upgrade.sh"], "detach": true,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    publish(&d, &sb.id, 9000, "chat").await;
    let addr = public.strip_prefix("http://").unwrap().to_owned();
    let request = format!(
        "GET /chat/socket HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    // nc may not listen yet: bounded retries until the guest answers 101.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut s = loop {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
            match tokio::time::timeout(Duration::from_secs(30), s.read(&mut byte)).await {
                Ok(Ok(1)) => head.push(byte[0]),
                _ => break,
            }
        }
        if head.starts_with(b"HTTP/1.1 101") {
            break s;
        }
        assert!(Instant::now() < deadline, "no 101: {}", String::from_utf8_lossy(&head));
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Raw bytes both ways, unparsed.
    let payload: Vec<u8> = [&[0x81u8, 0x02, 0x00, 0xff][..], b"hi\n"].concat();
    s.write_all(&payload).await.unwrap();
    let mut back = vec![0u8; payload.len()];
    tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut back)).await.unwrap().unwrap();
    assert_eq!(back, payload);
    // The relay is activity: a lease is out and the sandbox cannot be paused under it.
    assert!(d.state.engine.host_activity(&sb.id).unwrap().in_flight >= 1);
    let busy = d.state.engine.pause(&sb.id, Duration::ZERO).await.unwrap_err();
    assert_eq!(busy.kind(), engine::ErrorKind::Busy);
    drop(s);
    common::until("the relay's lease to end", Duration::from_secs(10), || async {
        d.state.engine.host_activity(&sb.id).unwrap().in_flight == 0
    })
    .await;
    d.stop().await;
}
