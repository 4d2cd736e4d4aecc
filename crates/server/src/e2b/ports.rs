//! Ports other than envd's, through the listener: a request whose target (`E2b-Sandbox-Port`,
//! or `Host: <port>-<id>.<domain>`) names another port goes, as it came, to that port in the
//! guest (E2B's `sbx.get_host(port)`; the code interpreter's 49999). `envd.rs` has checked
//! the access rule and the guest-access rule first.
//!
//! The forwarding is the daemon's reverse proxy (`crate::proxy`): the engine's forward channel
//! to `localhost:<port>` in the guest (which wakes a sleeping sandbox and holds its lease while
//! the answer streams), hyper's HTTP/1 client over it, both bodies streamed frame by frame
//! (the code interpreter's `/execute` answer is a long NDJSON stream), WebSocket upgrades
//! relayed. The guest gets the path and query as sent and the proxy's header rewrite (`Host:
//! localhost:<port>`, `X-Forwarded-*`, no hop-by-hop headers, no `Authorization`); the
//! listener's own credentials (`X-Access-Token`, `E2B-Traffic-Access-Token`, `X-API-KEY`)
//! never reach it.
//!
//! The code interpreter's server starts at boot (the image's `/etc/bhatti/init.sh`), so a
//! `run_code` right after create can find its port still closed: that port is waited for (a
//! connect attempt every [`RETRY`], at most [`CODE_INTERPRETER_WAIT`]). Any other closed port
//! answers 502 at once.

use std::time::Duration;

use axum::extract::Request;
use axum::extract::connect_info::ConnectInfo;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use super::E2bState;
use crate::error::ApiError;
use crate::proxy::{self, ClientAddr};

/// E2B's code interpreter port (`JUPYTER_PORT` in `e2b_code_interpreter`).
pub const CODE_INTERPRETER_PORT: u16 = 49999;

/// How long a closed code interpreter port is waited for.
pub const CODE_INTERPRETER_WAIT: Duration = Duration::from_secs(60);

/// Between connect attempts to a port still closed.
const RETRY: Duration = Duration::from_millis(250);

/// Headers the listener reads itself; the guest never gets them.
const LISTENER_HEADERS: [&str; 3] = ["x-access-token", "e2b-traffic-access-token", "x-api-key"];

/// How long a closed `port` is waited for before the answer is 502.
fn wait_for(port: u16) -> Duration {
    if port == CODE_INTERPRETER_PORT { CODE_INTERPRETER_WAIT } else { Duration::ZERO }
}

/// Forwards `req` to `port` in sandbox `sandbox` and answers with the guest's answer, streamed.
pub async fn forward(state: &E2bState, sandbox: &str, port: u16, req: Request) -> Response {
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str()).to_owned();
    let client = req.extensions().get::<ConnectInfo<ClientAddr>>().and_then(|c| c.0.0);
    let websocket = proxy::is_websocket(req.headers());
    let mut headers = proxy::upstream_headers(
        req.headers(),
        req.uri().authority().map(|a| a.as_str()),
        port,
        client,
        websocket,
        "http",
    );
    for name in LISTENER_HEADERS {
        headers.remove(name);
    }
    let stream = match connect(state, sandbox, port).await {
        Ok(stream) => stream,
        Err(e) => return answer(e),
    };
    match proxy::deliver(stream, req, &target, headers, sandbox.to_owned()).await {
        Ok(response) => response,
        Err(e) => answer(e),
    }
}

/// The engine's forward connection, retried while the port is closed and [`wait_for`] lasts.
async fn connect(
    state: &E2bState,
    sandbox: &str,
    port: u16,
) -> Result<engine::Leased<engine::Stream>, ApiError> {
    let deadline = Instant::now() + wait_for(port);
    loop {
        match state.app.engine.forward(sandbox, port).await {
            Ok(stream) => return Ok(stream),
            Err(e)
                if e.kind() == engine::ErrorKind::Guest(engine::GuestErrorKind::PortClosed)
                    && Instant::now() + RETRY < deadline =>
            {
                tokio::time::sleep(RETRY).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// E2B's error shape; a gateway failure (closed port, no answer) says what happened, with the
/// status the SDK reads (502: the code interpreter's TimeoutException).
fn answer(e: ApiError) -> Response {
    let (status, _) = e.status();
    if status == StatusCode::BAD_GATEWAY {
        let body = serde_json::json!({ "code": 502, "message": e.to_string() });
        return (status, axum::Json(body)).into_response();
    }
    super::error::E2bError::Api(e).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_ports_waited_for_table() {
        let rows = [
            ("code interpreter", CODE_INTERPRETER_PORT, CODE_INTERPRETER_WAIT),
            ("user port", 8080, Duration::ZERO),
            ("envd (never forwarded)", super::super::ENVD_PORT, Duration::ZERO),
        ];
        for (name, port, want) in rows {
            assert_eq!(wait_for(port), want, "{name}");
        }
    }
}
