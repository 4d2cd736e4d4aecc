//! The web shell on a real guest: the share-token routes and the socket's protocol (as v1's
//! shell handler tests, over a real WebSocket), and a real headless Chromium (Debian's
//! `chromium`, driven over the DevTools protocol) opening a share link, typing, resizing and
//! being revoked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::cdp::browser_protocol::emulation::SetDeviceMetricsOverrideParams;
use chromiumoxide::page::{Page, ScreenshotParams};
use common::{Daemon, until};
use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use tokio_tungstenite::tungstenite::Message;

const CHROMIUM: &str = "/usr/bin/chromium";

async fn mint(d: &Daemon, id: &str) -> api::ShellToken {
    let r = d.req(Method::POST, &format!("/sandboxes/{id}/shell-token")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn revoke(d: &Daemon, id: &str) {
    let r = d.req(Method::DELETE, &format!("/sandboxes/{id}/shell-token")).send().await.unwrap();
    assert_eq!(r.status(), 204);
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A socket to `/_shell/<id>/ws` that has sent `token`, and the server's first text answer.
async fn connect(d: &Daemon, id: &str, token: &str) -> (Ws, serde_json::Value) {
    let url = format!("{}/_shell/{id}/ws", d.url.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let auth = serde_json::json!({"type": "auth", "token": token}).to_string();
    ws.send(Message::text(auth)).await.unwrap();
    let first = next_text(&mut ws).await.expect("a first message");
    (ws, serde_json::from_str(&first).unwrap())
}

/// The next text message, or `None` when the socket closes (30 s at most).
async fn next_text(ws: &mut Ws) -> Option<String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await.expect("in time") {
            Some(Ok(Message::Text(t))) => return Some(t.to_string()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

/// Reads until the output holds `want` (60 s at most); false if the socket closes first.
async fn output_until(ws: &mut Ws, want: &str) -> bool {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !String::from_utf8_lossy(&seen).contains(want) {
        match tokio::time::timeout_at(deadline, ws.next()).await.expect("output in time") {
            Some(Ok(Message::Binary(b))) => seen.extend_from_slice(&b),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return false,
            Some(Ok(_)) => {}
        }
    }
    true
}

/// v1's shell handler tests (host.md section 8), over a real socket to a real guest.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_page_and_socket_as_v1() {
    let d = Daemon::start().await;
    let sb = d.create("ws-shell").await;
    let other = d.create("ws-other").await;

    // Generate and rotate (TestShellTokenGenerateAndRevoke).
    let first = mint(&d, &sb.id).await;
    assert_eq!(first.token.len(), 64);
    assert_eq!(first.url, format!("/_shell/{}#token={}", sb.id, first.token));
    let token = mint(&d, &sb.id).await;
    assert_ne!(token.token, first.token, "rotation makes a new token");
    assert!(!format!("{token:?}").contains(&token.token), "Debug hides the token");

    // The page (TestShellHTMLServed, ...ForAnyID, TestShellRoutingEdgeCases).
    for path in [format!("/_shell/{}", sb.id), format!("/_shell/{}/", sb.id), "/_shell/nope".into()]
    {
        let r = d.client.get(format!("{}{path}", d.url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers().clone();
        assert_eq!(h["content-type"], "text/html; charset=utf-8");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["cache-control"], "no-store");
        let csp = h["content-security-policy"].to_str().unwrap().to_owned();
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        let nonce = csp.split("'nonce-").nth(1).unwrap().split('\'').next().unwrap().to_owned();
        let body = r.text().await.unwrap();
        assert_eq!(body.matches(&format!("nonce=\"{nonce}\"")).count(), 3, "scripts carry it");
    }
    for (path, want) in [
        ("/_shell", 404),
        ("/_shell/", 404),
        ("/_shell/x/y", 404),
        ("/_shell/_assets/nope.js", 404),
        ("/_shell/_assets/xterm.js", 200),
        ("/_shell/../../sandboxes", 401),
    ] {
        let r = d.client.get(format!("{}{path}", d.url)).send().await.unwrap();
        assert_eq!(r.status(), want, "{path}");
    }

    // Refusals look alike (TestShellWSBadToken, ...NoToken, ...NonexistentSandbox,
    // ...TokenRotationInvalidatesOld).
    let unauthorized = serde_json::json!({"type": "error", "error": "unauthorized"});
    for (id, t) in [
        (sb.id.as_str(), "0".repeat(64)),
        (other.id.as_str(), token.token.clone()),
        ("no-such-sandbox", token.token.clone()),
        (sb.id.as_str(), first.token.clone()),
    ] {
        let (mut ws, answer) = connect(&d, id, &t).await;
        assert_eq!(answer, unauthorized, "{id}");
        assert_eq!(next_text(&mut ws).await, None, "then closed");
    }

    // A session (TestShellWSAuthSuccess): connected, then terminal bytes; five at once and a
    // sixth is refused (TestShellWSConcurrentLimit).
    let mut live = Vec::new();
    for i in 0..5 {
        let (mut ws, answer) = connect(&d, &sb.id, &token.token).await;
        assert_eq!(answer["type"], "connected", "{i}: {answer}");
        assert_eq!(answer["sandbox"], "ws-shell");
        ws.send(Message::binary(format!("echo web-$(({i}+40))\n").into_bytes())).await.unwrap();
        assert!(output_until(&mut ws, &format!("web-{}", i + 40)).await, "{i} answers");
        live.push(ws);
    }
    let (_ws, answer) = connect(&d, &sb.id, &token.token).await;
    assert_eq!(answer, serde_json::json!({"type": "error", "error": "too many sessions"}));
    assert_eq!(d.state.web_shells.live(&sb.id), 5);

    // Revocation closes them all (TestShellWSRevokeDisconnects) and frees their places.
    revoke(&d, &sb.id).await;
    for ws in &mut live {
        assert_eq!(next_text(ws).await, None, "closed by the revocation");
    }
    let id = sb.id.clone();
    until("the places to be freed", Duration::from_secs(30), || {
        let n = d.state.web_shells.live(&id);
        async move { n == 0 }
    })
    .await;
    let (_ws, answer) = connect(&d, &sb.id, &token.token).await;
    assert_eq!(answer, unauthorized, "a revoked token opens nothing");
    d.stop().await;
}

/// The terminal's whole buffer, as text.
const BUFFER: &str = "(() => { const b = window.term.buffer.active; const out = []; \
    for (let i = 0; i < b.length; i++) { const l = b.getLine(i); \
    if (l) out.push(l.translateToString(true)); } return out.join('\\n'); })()";

async fn eval_string(page: &Page, js: &str) -> String {
    let value = tokio::time::timeout(Duration::from_secs(10), page.evaluate(js))
        .await
        .expect("evaluate in time")
        .unwrap();
    value.into_value::<String>().unwrap_or_default()
}

async fn status(page: &Page) -> String {
    eval_string(page, "document.getElementById('status').textContent").await
}

/// Polls the page until `js` (a string expression) holds `want` (90 s at most: a cold wake
/// under TCG is slow).
async fn page_until(page: &Page, what: &str, js: &str, want: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let got = eval_string(page, js).await;
        if want(&got) {
            return got;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}; status {:?}, buffer:\n{}",
            status(page).await,
            eval_string(page, BUFFER).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Types into the terminal as a user would: key events on xterm's input element.
async fn type_line(page: &Page, line: &str) {
    let input = page.find_element(".xterm-helper-textarea").await.unwrap();
    input.focus().await.unwrap();
    input.type_str(line).await.unwrap();
    input.press_key("Enter").await.unwrap();
}

/// The "done when": open a share link in a real headless browser, type, resize, be
/// revoked; a wrong token shows `unauthorized`. A screenshot of the page is kept at
/// `$CARGO_TARGET_TMPDIR/web_shell.png`.
#[tokio::test(flavor = "multi_thread")]
async fn a_share_link_in_headless_chromium() {
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/setup (it installs Debian's chromium)"
    );
    let d = Daemon::start().await;
    let sb = d.create("browser").await;
    let token = mint(&d, &sb.id).await;

    let profile = tempfile::tempdir().unwrap();
    let config = BrowserConfig::builder()
        .chrome_executable(CHROMIUM)
        .new_headless_mode()
        .no_sandbox()
        .arg("--disable-gpu")
        .user_data_dir(profile.path())
        .window_size(900, 600)
        .viewport(None)
        .launch_timeout(Duration::from_secs(60))
        .request_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let (mut browser, mut handler) = Browser::launch(config).await.expect("chromium starts");
    // Events the crate does not know (a newer Chromium's) are errors it reports and carries on.
    let events = tokio::spawn(async move { while handler.next().await.is_some() {} });

    let link = format!("{}{}", d.url, token.url);
    let page = browser.new_page(link.as_str()).await.unwrap();
    page_until(&page, "connected", "document.getElementById('status').textContent", |s| {
        s.starts_with("connected to browser")
    })
    .await;
    let address = eval_string(&page, "location.href").await;
    assert!(!address.contains("token"), "the token is gone from the address bar: {address}");

    // Type, and see the guest answer.
    type_line(&page, "echo hi$((40+2))").await;
    page_until(&page, "hi42 in the terminal", BUFFER, |b| b.lines().any(|l| l.trim() == "hi42"))
        .await;

    // Resize the window; the terminal follows, and so does the guest's idea of it.
    let size = "`${window.term.rows} ${window.term.cols}`";
    let before = eval_string(&page, size).await;
    page.execute(SetDeviceMetricsOverrideParams::new(1280, 800, 1.0, false)).await.unwrap();
    let after = page_until(&page, "the terminal to grow", size, |s| s != before).await;
    type_line(&page, "stty size").await;
    page_until(&page, "stty size to follow the window", BUFFER, |b| {
        b.lines().any(|l| l.trim() == after)
    })
    .await;

    // The artifact: the page as a person would see it.
    let png = page.screenshot(ScreenshotParams::builder().build()).await.unwrap();
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("web_shell.png");
    std::fs::write(&shot, &png).unwrap();
    eprintln!("screenshot: {}", shot.display());

    // Revoked: the page says so, and typing reaches nothing.
    revoke(&d, &sb.id).await;
    page_until(
        &page,
        "the revocation to show",
        "document.getElementById('status').textContent",
        |s| s == "error: revoked",
    )
    .await;
    let buffer = eval_string(&page, BUFFER).await;
    type_line(&page, "echo typed-after-revoke").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(eval_string(&page, BUFFER).await, buffer, "nothing echoes after revocation");

    // A wrong token (a fresh link of another token, then revoked... or simply made up).
    let wrong = format!("{}/_shell/{}#token={}", d.url, sb.id, "ab".repeat(32));
    let page2 = browser.new_page(wrong.as_str()).await.unwrap();
    page_until(&page2, "unauthorized", "document.getElementById('status').textContent", |s| {
        s == "error: unauthorized"
    })
    .await;

    let _ = tokio::time::timeout(Duration::from_secs(10), browser.close()).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), browser.wait()).await;
    events.abort();
    d.stop().await;
}
