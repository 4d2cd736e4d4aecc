//! Every error kind the real agent (lohar in test mode) can be made to produce, through the
//! client, so the engine can map kinds and never texts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use agent::{AgentClient, AgentError, AgentErrorKind, Endpoint, ExecRequest, ReadOptions};
use common::*;

/// The kind of a failed call, and the agent's text when the agent reported it.
fn kind<T: std::fmt::Debug>(result: Result<T, AgentError>) -> AgentErrorKind {
    let err = result.unwrap_err();
    if let AgentError::Agent(e) = &err {
        // The text is kept for display.
        assert!(!e.message().is_empty() && err.to_string().ends_with(e.message()));
    }
    err.kind()
}

#[tokio::test]
async fn client_file_errors_have_kinds() {
    use AgentErrorKind::*;
    let lohar = Lohar::start();
    let c = lohar.client();
    let plain = lohar.path("plain");
    c.file_write(&plain, "0644", b"x").await.unwrap();
    let missing = lohar.path("missing");
    let dir = lohar.dir.display().to_string();
    let opts = ReadOptions::default();
    assert_eq!(kind(c.file_read(&missing, opts).await), NotFound);
    assert_eq!(kind(c.file_stat(&missing).await), NotFound);
    assert_eq!(kind(c.file_list(&missing).await), NotFound);
    assert_eq!(kind(c.file_read(&dir, opts).await), IsADirectory);
    assert_eq!(kind(c.file_list(&plain).await), NotADirectory);
    assert_eq!(kind(c.file_write(&format!("{plain}/child"), "0644", b"x").await), NotADirectory);
    assert_eq!(kind(c.file_read("/dev/null", opts).await), Invalid, "not a regular file");
    assert_eq!(kind(c.file_write("", "0644", b"x").await), Invalid, "empty path");
    // The suites run as root, which no file mode stops; sysfs refuses root new files (EACCES)
    // and new directories (EPERM).
    assert_eq!(kind(c.file_write("/sys/bhatti-kind-test", "0644", b"x").await), PermissionDenied);
    assert_eq!(kind(c.file_write("/sys/bhatti-kind/x", "0644", b"x").await), PermissionDenied);
    let over = 100 * 1024 * 1024 + 1;
    let big = c.file_write_from(&lohar.path("big"), "0644", over, &mut tokio::io::empty()).await;
    assert_eq!(kind(big), TooLarge);
    assert_eq!(kind(c.file_open_read(&plain, opts, 0).await), TooLarge);
    let short = c.file_write_from(&lohar.path("short"), "0644", 5, &mut &b"abc"[..]).await;
    assert_eq!(kind(short), Invalid);
}

#[tokio::test]
async fn client_exec_and_session_errors_have_kinds() {
    use AgentErrorKind::*;
    let lohar = Lohar::start();
    let c = lohar.client();
    let call = Duration::from_secs(30);
    assert_eq!(kind(c.exec(&["/no/such/command"]).await), NotFound);
    let empty = ExecRequest { argv: Vec::new(), ..Default::default() };
    assert_eq!(kind(c.exec_request(&empty, call).await), Invalid);
    assert_eq!(kind(c.session_kill("s999").await), NotFound);
    assert_eq!(kind(c.attach("s999", false).await), NotFound);
    let session = c.piped_session(&ExecRequest::command(["sleep", "60"])).await.unwrap();
    assert_eq!(kind(c.attach(session.id(), true).await), Busy);
    assert_eq!(kind(c.set_time(std::time::SystemTime::now()).await), Unsupported);
    c.session_kill(session.id()).await.unwrap();
}

#[tokio::test]
async fn client_session_limit_is_limit_reached() {
    let lohar = Lohar::start();
    let c = lohar.client();
    let mut sessions = Vec::new();
    for _ in 0..20 {
        sessions.push(c.piped_session(&ExecRequest::command(["sleep", "60"])).await.unwrap());
    }
    let over = c.piped_session(&ExecRequest::command(["sleep", "60"])).await;
    assert_eq!(kind(over), AgentErrorKind::LimitReached);
}

#[tokio::test]
async fn client_transport_errors_have_kinds() {
    use AgentErrorKind::*;
    let dir = tempfile::tempdir().unwrap();
    let lohar = Lohar::start_in(dir, Some(TOKEN), false);
    assert_eq!(kind(AgentClient::new(lohar.endpoint(), None).activity().await), Unauthenticated);
    let gone = lohar.dir.join("nothing.sock");
    let nowhere = AgentClient::new(Endpoint::unix(&gone, &gone), None);
    assert_eq!(kind(nowhere.activity().await), Unreachable);
    assert_eq!(kind(nowhere.wait_ready(Duration::from_millis(50)).await), Timeout);
    let c = AgentClient::new(lohar.endpoint(), Some(TOKEN.into()));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    assert_eq!(kind(c.forward(port).await), ForwardRefused);
}
