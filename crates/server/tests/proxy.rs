//! The authenticated reverse proxy and the ports API against a real daemon with real VMs:
//! busybox `httpd` (static files and CGI) and a raw `nc` upgrade server in the guest.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::Daemon;
use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET /sandboxes/<sandbox>/ports`.
async fn ports(d: &Daemon, sandbox: &str) -> Vec<api::Port> {
    let r = d.req(Method::GET, &format!("/sandboxes/{sandbox}/ports")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// Waits (bounded) until the guest listens on `port`.
async fn wait_listening(d: &Daemon, sandbox: &str, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if ports(d, sandbox).await.iter().any(|p| p.container_port == port) {
            return;
        }
        assert!(Instant::now() < deadline, "{sandbox}: nothing listens on {port} after 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (bounded) until the sandbox's leases out satisfy `pred`.
async fn wait_in_flight(d: &Daemon, id: &str, pred: impl Fn(usize) -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = d.state.engine.host_activity(id).unwrap().in_flight;
        if pred(n) {
            return;
        }
        assert!(Instant::now() < deadline, "in_flight {n}: expected {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn percentiles(mut ms: Vec<f64>) -> (f64, f64, f64) {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
    (at(0.50), at(0.95), at(0.99))
}

const SITE: &str = r#"
set -e
mkdir -p /home/lohar/www/cgi-bin
echo hello-from-guest > /home/lohar/www/index.html
cat > /home/lohar/www/cgi-bin/env <<'EOF'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
echo "QUERY=$QUERY_STRING"
echo "XFH=$HTTP_X_FORWARDED_HOST"
echo "XFP=$HTTP_X_FORWARDED_PROTO"
echo "XFF=$HTTP_X_FORWARDED_FOR"
echo "AUTH=$HTTP_AUTHORIZATION"
echo "CUSTOM=$HTTP_X_CUSTOM"
echo "HOST=$HTTP_HOST"
echo "METHOD=$REQUEST_METHOD"
EOF
cat > /home/lohar/www/cgi-bin/echo <<'EOF'
#!/bin/sh
printf 'Content-Type: application/octet-stream\r\n\r\n'
head -c "$CONTENT_LENGTH"
EOF
cat > /home/lohar/www/cgi-bin/slow <<'EOF'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
echo first
sleep 1
echo second
EOF
cat > /home/lohar/www/cgi-bin/ticks <<'EOF'
#!/bin/sh
printf 'Content-Type: text/event-stream\r\n\r\n'
while true; do echo "data: tick"; echo; sleep 0.2; done
EOF
chmod 0755 /home/lohar/www/cgi-bin/*
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_through_the_proxy_and_ports() {
    let d = Daemon::start().await;
    let web = d.create("web").await;
    d.sh("web", SITE).await;
    d.detach("web", &["httpd", "-f", "-p", "8080", "-h", "/home/lohar/www"]).await;
    wait_listening(&d, "web", 8080).await;

    // Routing: the root (with and without the trailing slash), a file, the guest's own 404.
    for path in [
        "/sandboxes/web/proxy/8080/",
        "/sandboxes/web/proxy/8080",
        "/sandboxes/web/proxy/8080/index.html",
    ] {
        let r = d.req(Method::GET, path).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.text().await.unwrap(), "hello-from-guest\n", "{path}");
    }
    let by_id = format!("/sandboxes/{}/proxy/8080/", web.id);
    assert_eq!(d.req(Method::GET, &by_id).send().await.unwrap().status(), 200);
    let r = d.req(Method::GET, "/sandboxes/web/proxy/8080/missing.html").send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body = r.text().await.unwrap();
    assert!(body.contains("404 Not Found") && !body.contains("\"code\""), "{body}");

    // The rewrite: query kept, forwarded headers set, Host rewritten, the caller's key gone,
    // other headers (the positive control) passed.
    let r = d
        .req(Method::GET, "/sandboxes/web/proxy/8080/cgi-bin/env?a=1&b=two%20words")
        .header("x-custom", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let env = r.text().await.unwrap();
    let host = d.url.strip_prefix("http://").unwrap();
    for line in [
        "QUERY=a=1&b=two%20words".to_owned(),
        format!("XFH={host}"),
        "XFP=http".to_owned(),
        "XFF=127.0.0.1".to_owned(),
        "AUTH=".to_owned(),
        "CUSTOM=kept".to_owned(),
        "HOST=localhost:8080".to_owned(),
        "METHOD=GET".to_owned(),
    ] {
        assert!(env.lines().any(|l| l == line), "{line:?} missing in:\n{env}");
    }
    assert!(!env.contains(&d.key), "the API key reached the guest");
    // A request body streams to the guest and back.
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let r = d
        .req(Method::POST, "/sandboxes/web/proxy/8080/cgi-bin/echo")
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), payload.as_slice());

    // Streaming: the first line arrives before the guest has written the second.
    let started = Instant::now();
    let mut r = d.req(Method::GET, "/sandboxes/web/proxy/8080/cgi-bin/slow").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut first_at = None;
    let mut text = String::new();
    while let Some(chunk) = r.chunk().await.unwrap() {
        first_at.get_or_insert(started.elapsed());
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let (first_at, total) = (first_at.unwrap(), started.elapsed());
    assert_eq!(text, "first\nsecond\n");
    assert!(total >= Duration::from_secs(1), "{total:?}");
    assert!(first_at + Duration::from_millis(500) < total, "first {first_at:?}, total {total:?}");

    // An endless stream (SSE): events arrive while it runs, and a client that goes away
    // closes the guest connection and gives the lease back.
    let mut r = d.req(Method::GET, "/sandboxes/web/proxy/8080/cgi-bin/ticks").send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    while text.matches("data: tick").count() < 3 {
        let chunk = tokio::time::timeout(Duration::from_secs(30), r.chunk()).await.unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap().unwrap()));
    }
    wait_in_flight(&d, &web.id, |n| n >= 1, ">= 1 while the stream is open").await;
    drop(r);
    wait_in_flight(&d, &web.id, |n| n == 0, "0 after the client went away").await;

    // Errors: a bad port is refused before any lookup, then unknown / other owner's sandbox,
    // then a port nothing listens on.
    for sandbox in ["web", "nope"] {
        for port in ["0", "70000", "abc"] {
            let r = d
                .req(Method::GET, &format!("/sandboxes/{sandbox}/proxy/{port}/x"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "{sandbox} {port}");
            assert_eq!(r.json::<api::ErrorBody>().await.unwrap().error, "invalid port");
        }
    }
    let r = d.req(Method::GET, "/sandboxes/nope/proxy/8080/").send().await.unwrap();
    assert_eq!(r.status(), 404);
    let other = d.other_user("mallory").await;
    let r = d
        .client
        .get(format!("{}/sandboxes/web/proxy/8080/", d.url))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = d.client.get(format!("{}/sandboxes/web/proxy/8080/", d.url)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = d.req(Method::GET, "/sandboxes/web/proxy/9999/").send().await.unwrap();
    assert_eq!(r.status(), 502);
    let body: api::ErrorBody = r.json().await.unwrap();
    assert_eq!(body.code, "guest_port_closed", "{body:?}");

    // An upgrade the guest declines (httpd answers it as a plain GET) passes through as HTTP.
    let r = d
        .req(Method::GET, "/sandboxes/web/proxy/8080/index.html")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "hello-from-guest\n");

    // Time to first byte: through the proxy vs a direct forward connection to the guest port.
    let get = b"GET /index.html HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let (mut direct, mut proxied) = (Vec::new(), Vec::new());
    for _ in 0..50 {
        let t = Instant::now();
        let mut s = d.state.engine.forward(&web.id, 8080).await.unwrap();
        s.write_all(get).await.unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(s.read(&mut byte).await.unwrap(), 1);
        direct.push(t.elapsed().as_secs_f64() * 1000.0);
        drop(s);
        let t = Instant::now();
        let r = d.req(Method::GET, "/sandboxes/web/proxy/8080/index.html").send().await.unwrap();
        proxied.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let (d50, d95, d99) = percentiles(direct);
    let (p50, p95, p99) = percentiles(proxied);
    println!("ttfb direct forward: p50 {d50:.2} ms, p95 {d95:.2} ms, p99 {d99:.2} ms");
    println!("ttfb via the proxy:  p50 {p50:.2} ms, p95 {p95:.2} ms, p99 {p99:.2} ms");
    println!("proxy overhead at p50: {:.2} ms", p50 - d50);
    assert!(p99 < 2000.0, "proxy p99 {p99:.1} ms");

    // Every proxied exchange gave its lease back.
    wait_in_flight(&d, &web.id, |n| n == 0, "0 after the exchanges").await;

    // Ports: per sandbox (the URL uses the ID as given) and across the user's hot sandboxes.
    let listed = ports(&d, "web").await;
    assert!(
        listed.iter().any(|p| p.container_port == 8080
            && p.proxy_url == "/sandboxes/web/proxy/8080/"
            && p.sandbox_id.is_empty()),
        "{listed:?}"
    );
    let all: Vec<api::Port> =
        d.req(Method::GET, "/ports").send().await.unwrap().json().await.unwrap();
    assert!(
        all.iter().any(|p| p.sandbox_id == web.id
            && p.container_port == 8080
            && p.proxy_url == format!("/sandboxes/{}/proxy/8080/", web.id)),
        "{all:?}"
    );
    // Another user sees none of it.
    let theirs = d.client.get(format!("{}/ports", d.url)).bearer_auth(&other).send().await;
    assert_eq!(theirs.unwrap().text().await.unwrap(), "[]");
    // A warm sandbox is left out of `/ports` and stays warm.
    d.state.engine.pause(&web.id, Duration::ZERO).await.unwrap();
    assert_eq!(d.state.engine.thermal(&web.id).unwrap(), engine::Thermal::Warm);
    let all: Vec<api::Port> =
        d.req(Method::GET, "/ports").send().await.unwrap().json().await.unwrap();
    assert!(all.is_empty(), "{all:?}");
    assert_eq!(d.state.engine.thermal(&web.id).unwrap(), engine::Thermal::Warm);
    // The per-sandbox route does wake it (and so does the proxy).
    assert!(ports(&d, "web").await.iter().any(|p| p.container_port == 8080));
    assert_eq!(d.state.engine.thermal(&web.id).unwrap(), engine::Thermal::Hot);
    d.state.engine.pause(&web.id, Duration::ZERO).await.unwrap();
    let r = d.req(Method::GET, "/sandboxes/web/proxy/8080/").send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "hello-from-guest\n");
    assert_eq!(d.state.engine.thermal(&web.id).unwrap(), engine::Thermal::Hot);
    d.stop().await;
}

const UPGRADE_SERVER: &str = r#"
set -e
cat > /home/lohar/upgrade.sh <<'EOF'
#!/bin/sh
while IFS= read -r line; do
    line=$(printf '%s' "$line" | tr -d '\r')
    [ -z "$line" ] && break
done
printf 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: from-guest\r\n\r\n'
exec "$@"
EOF
printf '#!/bin/sh\nexec /home/lohar/upgrade.sh cat\n' > /home/lohar/ws.sh
printf '#!/bin/sh\nexec /home/lohar/upgrade.sh head -c 1\n' > /home/lohar/once.sh
chmod 0755 /home/lohar/upgrade.sh /home/lohar/ws.sh /home/lohar/once.sh
"#;

/// Reads an HTTP head (bounded) from a raw connection.
async fn read_head(s: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 16 * 1024, "head too long");
        let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut byte))
            .await
            .expect("no answer in 30 s")
            .unwrap();
        assert_eq!(n, 1, "eof in the head: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_relays_raw_bytes_and_keeps_the_sandbox_hot() {
    let d = Daemon::start().await;
    let ws = d.create("ws").await;
    d.sh("ws", UPGRADE_SERVER).await;
    // 9000 echoes everything (cat); 9001 echoes one byte and closes (head -c 1).
    d.detach("ws", &["nc", "-ll", "-p", "9000", "-e", "/home/lohar/ws.sh"]).await;
    d.detach("ws", &["nc", "-ll", "-p", "9001", "-e", "/home/lohar/once.sh"]).await;
    wait_listening(&d, "ws", 9000).await;
    wait_listening(&d, "ws", 9001).await;
    wait_in_flight(&d, &ws.id, |n| n == 0, "0 before the upgrade").await;

    let upgrade = |port: u16| {
        format!(
            "GET /sandboxes/ws/proxy/{port}/chat?room=1 HTTP/1.1\r\nHost: {}\r\n\
             Authorization: Bearer {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            d.url.strip_prefix("http://").unwrap(),
            d.key
        )
    };
    let addr = d.url.strip_prefix("http://").unwrap().to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(upgrade(9000).as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains("sec-websocket-accept: from-guest"), "{head}");
    // Raw bytes (a fake frame header, NUL, 0xff) come back as they were: nothing is parsed.
    let payload: Vec<u8> = [&[0x81u8, 0x05, 0x00, 0xff][..], b"hello through the proxy\n"].concat();
    for _ in 0..3 {
        s.write_all(&payload).await.unwrap();
        let mut back = vec![0u8; payload.len()];
        tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut back))
            .await
            .expect("no echo in 30 s")
            .unwrap();
        assert_eq!(back, payload);
    }
    // The open relay holds the lease: the sandbox cannot be paused under it.
    wait_in_flight(&d, &ws.id, |n| n >= 1, ">= 1 while the relay is open").await;
    let busy = d.state.engine.pause(&ws.id, Duration::ZERO).await.unwrap_err();
    assert_eq!(busy.kind(), engine::ErrorKind::Busy);
    assert_eq!(d.state.engine.thermal(&ws.id).unwrap(), engine::Thermal::Hot);
    // Closing the client ends the relay and gives the lease back; then pausing works.
    drop(s);
    wait_in_flight(&d, &ws.id, |n| n == 0, "0 after the client closed").await;
    d.state.engine.pause(&ws.id, Duration::ZERO).await.unwrap();
    assert_eq!(d.state.engine.thermal(&ws.id).unwrap(), engine::Thermal::Warm);

    // The guest closing ends it too (and the upgrade wakes the warm sandbox): 9001 echoes
    // one byte and exits, and the client's read then sees the end.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(upgrade(9001).as_bytes()).await.unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 101"));
    assert_eq!(d.state.engine.thermal(&ws.id).unwrap(), engine::Thermal::Hot);
    s.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut one)).await.unwrap().unwrap();
    assert_eq!(&one, b"x");
    let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut one)).await.unwrap();
    assert_eq!(n.unwrap(), 0, "the client side was not closed");
    wait_in_flight(&d, &ws.id, |n| n == 0, "0 after the guest closed").await;

    // An upgrade to a port nothing listens on is a 502.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(upgrade(9998).as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    d.stop().await;
}

/// A raw HTTP server in the guest: `nc -ll -e` runs this per connection; it appends the
/// request head, byte for byte, to `requests.log` and answers 200 (also to an upgrade).
const LOGGING_SERVER: &str = r#"
set -e
cat > /home/lohar/log.sh <<'SCRIPT'
#!/bin/sh
CR=$(printf '\r')
{
    while IFS= read -r line; do
        printf '%s\n' "$line"
        if [ "$line" = "$CR" ] || [ -z "$line" ]; then break; fi
    done
    echo '----'
} >> /home/lohar/requests.log
printf 'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n'
SCRIPT
chmod 0755 /home/lohar/log.sh
: > /home/lohar/requests.log
"#;

/// One request over a fresh raw connection (nothing normalised: dot segments, header case and
/// percent-encoding go out as written); the status and the body.
async fn raw_request(addr: &str, target: &str, headers: &[String]) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut answer))
        .await
        .expect("no answer in 60 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// Issue 19 item 1: whatever way a request carries the API key, the guest never sees it, nor
/// an `Authorization` header; other parameters and the guest's own cookies arrive as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_api_key_reaches_the_guest_however_the_request_carries_it() {
    let d = Daemon::start().await;
    d.create("kg").await;
    d.sh("kg", LOGGING_SERVER).await;
    d.detach("kg", &["nc", "-ll", "-p", "8090", "-e", "/home/lohar/log.sh"]).await;
    wait_listening(&d, "kg", 8090).await;
    let addr = d.url.strip_prefix("http://").unwrap().to_owned();
    let k = d.key.clone();
    let bearer = || vec![format!("Authorization: Bearer {k}")];
    let upgrade = || vec!["Connection: Upgrade".to_owned(), "Upgrade: websocket".to_owned()];
    let with = |mut h: Vec<String>, more: &str| {
        h.push(more.to_owned());
        h
    };
    let p = "/sandboxes/kg/proxy/8090";

    // (what, target, headers, the request line's target the guest must log). Each target has
    // a unique `n=` so its log entry (or its absence) can be found.
    let forwarded: Vec<(&str, String, Vec<String>, &str)> = vec![
        ("query first", format!("{p}/a?token={k}&n=1&x=1"), bearer(), "/a?n=1&x=1"),
        ("query last", format!("{p}/a?n=2&x=1&token={k}"), bearer(), "/a?n=2&x=1"),
        (
            "query middle",
            format!("{p}/a?n=3&token={k}&y=two%20words"),
            bearer(),
            "/a?n=3&y=two%20words",
        ),
        (
            "repeated, any case",
            format!("{p}/a?token={k}&n=4&token={k}&TOKEN={k}&Token=x"),
            bearer(),
            "/a?n=4",
        ),
        (
            "percent-encoded name",
            format!("{p}/a?%74oken={k}&n=5&TO%4BEN={k}&to%6ben={k}"),
            bearer(),
            "/a?n=5",
        ),
        ("semicolons", format!("{p}/a?n=6;token={k};z=1"), bearer(), "/a?n=6;z=1"),
        ("root, no slash", format!("{p}?token={k}&n=7"), bearer(), "/?n=7"),
        ("root, slash", format!("{p}/?n=8&token={k}"), bearer(), "/?n=8"),
        ("dir, slash", format!("{p}/d/?n=9&token={k}"), bearer(), "/d/?n=9"),
        (
            "websocket upgrade",
            format!("{p}/x/ws?token={k}&n=10"),
            [bearer(), upgrade()].concat(),
            "/x/ws?n=10",
        ),
        (
            "lower-case bearer",
            format!("{p}/a?n=11"),
            vec![format!("authorization: bearer {k}")],
            "/a?n=11",
        ),
        ("capitals", format!("{p}/a?n=12"), vec![format!("AUTHORIZATION: BEARER {k}")], "/a?n=12"),
        (
            "the guest's cookies pass",
            format!("{p}/a?n=13"),
            with(bearer(), "Cookie: session=abc; theme=dark"),
            "/a?n=13",
        ),
    ];
    for (what, target, headers, _) in &forwarded {
        let (status, body) = raw_request(&addr, target, headers).await;
        assert_eq!((status, body.as_str()), (200, "ok\n"), "{what}: {target}");
    }
    // Refused before the guest: the key elsewhere than `Authorization` (400), or a query key
    // on the proxy without a header (401: `?token=` is no key here, not even on a path ending
    // in `/ws` or one that cleans to the API's own WebSocket route).
    let refused: Vec<(&str, String, Vec<String>, u16)> = vec![
        ("key in the path", format!("{p}/{k}/x?n=101"), bearer(), 400),
        ("token= as a path segment", format!("{p}/token={k}?n=102"), bearer(), 400),
        ("encoded query in the path", format!("{p}/a%3Ftoken%3D{k}?n=103"), bearer(), 400),
        ("another parameter", format!("{p}/a?access_token={k}&n=104"), bearer(), 400),
        ("encoded value", format!("{p}/a?x={}&n=105", k.replace('_', "%5F")), bearer(), 400),
        (
            "in a cookie",
            format!("{p}/a?n=106"),
            with(bearer(), &format!("Cookie: s=1; b={k}")),
            400,
        ),
        ("another header", format!("{p}/a?n=107"), with(bearer(), &format!("X-Api-Key: {k}")), 400),
        ("query token only", format!("{p}/a?token={k}&n=108"), vec![], 401),
        ("query token, ws path", format!("{p}/x/ws?token={k}&n=109"), upgrade(), 401),
        ("query token, ws/", format!("{p}/ws/?token={k}&n=110"), vec![], 401),
        ("dot segments to /ws", format!("{p}/../../ws?token={k}&n=111"), upgrade(), 401),
        ("dot segments, exec/ws", format!("{p}/../../exec/ws?token={k}&n=112"), vec![], 401),
    ];
    for (what, target, headers, want) in &refused {
        let (status, body) = raw_request(&addr, target, headers).await;
        assert_eq!(status, *want, "{what}: {target}: {body}");
        assert!(!body.contains(&k), "{what}: the answer echoes the key: {body}");
    }

    let r = d.req(Method::GET, "/sandboxes/kg/files?path=/home/lohar/requests.log").send().await;
    let log = r.unwrap().text().await.unwrap();
    assert!(!log.contains(&k), "the API key reached the guest:\n{log}");
    assert!(!log.contains(&k["bht_".len()..]), "part of the API key reached the guest:\n{log}");
    for line in log.lines() {
        let name = line.split(':').next().unwrap_or_default().to_ascii_lowercase();
        assert!(name != "authorization", "an Authorization header reached the guest:\n{log}");
    }
    for (what, _, _, want) in &forwarded {
        // `lines` ends a line at `\r\n` too.
        let line = format!("GET {want} HTTP/1.1");
        assert!(log.lines().any(|l| l == line), "{what}: {line:?} missing in:\n{log}");
    }
    assert!(log.lines().any(|l| l == "cookie: session=abc; theme=dark"), "{log}");
    for n in 101..=112 {
        assert!(!log.contains(&format!("n={n}")), "request {n} reached the guest:\n{log}");
    }
    d.stop().await;
}
