//! `POST /sandboxes/:id/exec`: buffered (JSON), streaming (NDJSON, each event flushed as it
//! happens) and detached. Every mode wakes the sandbox through the engine's lease.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::auth::CurrentUser;
use crate::error::{ApiError, ApiResult};
use crate::request::Json;
use crate::sandboxes::resolve_for_guest;
use crate::state::AppState;

/// v1's default and range of `timeout_sec`.
const DEFAULT_TIMEOUT: u64 = 300;
const MAX_TIMEOUT: u64 = 86_400;

fn timeout_of(timeout_sec: i64) -> Duration {
    match u64::try_from(timeout_sec) {
        Ok(s) if (1..=MAX_TIMEOUT).contains(&s) => Duration::from_secs(s),
        _ => Duration::from_secs(DEFAULT_TIMEOUT),
    }
}

fn request_of(body: &api::ExecBody) -> engine::ExecRequest {
    let mut req = engine::ExecRequest::command(body.cmd.iter().cloned());
    if !body.env.is_empty() {
        req.env = Some(body.env.clone());
    }
    if !body.cwd.is_empty() {
        req.cwd = Some(body.cwd.clone());
    }
    req
}

fn wants_stream(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) == Some(api::NDJSON)
}

/// The handler.
pub async fn exec(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<api::ExecBody>,
) -> ApiResult<Response> {
    let sandbox = resolve_for_guest(&state, &user, &id).await?;
    if body.cmd.is_empty() {
        return Err(ApiError::BadRequest("cmd required".into()));
    }
    crate::sandboxes::check_env(&body.env).map_err(ApiError::BadRequest)?;
    let timeout = timeout_of(body.timeout_sec);
    let slot = state.exec_slots.acquire(&user.id, user.quotas.max_concurrent_execs)?;
    let mut req = request_of(&body);
    crate::secrets::add_env(&state, &sandbox.id, &mut req).await.map_err(ApiError::Internal)?;
    if body.detach {
        let output = if body.output_file.is_empty() {
            format!("/tmp/bhatti-exec-{}.log", crate::request::new_request_id().split_off(4))
        } else {
            body.output_file.clone()
        };
        req.output_file = Some(output.clone());
        let started = state.engine.exec_detached(&sandbox.id, &req).await?;
        let out = api::DetachedResult { pid: started.pid, output_file: output, detached: true };
        return Ok(axum::Json(out).into_response());
    }
    if wants_stream(&headers) {
        return stream(&state, &sandbox.id, &req, timeout, slot).await;
    }
    let out = buffered(&state, &sandbox.id, &req, timeout).await?;
    drop(slot);
    Ok(buffered_response(out))
}

/// A buffered exec: the agent client keeps stdout's beginning and stderr's end (10 MiB each),
/// within the daemon-wide budget (`exec_budget.rs`). The first slice of the budget is reserved
/// before the command starts, so a 503 means the command never ran.
async fn buffered(
    state: &AppState,
    id: &str,
    req: &engine::ExecRequest,
    timeout: Duration,
) -> ApiResult<engine::ExecOutput> {
    let reservation = state.exec_budget.reserve(crate::exec_budget::FIRST_SLICE_WAIT).await?;
    let room = crate::exec_budget::SharedReservation::new(reservation);
    Ok(state.engine.exec_request_within(id, req, timeout, room).await?)
}

/// The JSON answer, and the header that names the streams that were cut.
fn buffered_response(out: engine::ExecOutput) -> Response {
    let cut: Vec<&str> = [(out.stdout_truncated, "stdout"), (out.stderr_truncated, "stderr")]
        .into_iter()
        .filter_map(|(cut, name)| cut.then_some(name))
        .collect();
    let mut response = axum::Json(api::ExecResult {
        exit_code: out.exit_code,
        stdout: out.stdout_text(),
        stderr: out.stderr_text(),
        stdout_truncated: out.stdout_truncated,
        stderr_truncated: out.stderr_truncated,
    })
    .into_response();
    if !cut.is_empty()
        && let Ok(value) = HeaderValue::from_str(&cut.join(","))
    {
        response.headers_mut().insert(api::OUTPUT_TRUNCATED_HEADER, value);
    }
    response
}

fn line(event: &api::ExecEvent) -> Bytes {
    let mut text = serde_json::to_vec(event).unwrap_or_default();
    text.push(b'\n');
    Bytes::from(text)
}

/// NDJSON: one line per output frame, sent as it arrives; `exit` or `error` ends it. A failure
/// of the transport mid-stream becomes an `error` line (v1 just ended the body).
async fn stream(
    state: &AppState,
    id: &str,
    req: &engine::ExecRequest,
    timeout: Duration,
    slot: crate::exec_slots::ExecSlot,
) -> ApiResult<Response> {
    let mut running = state.engine.exec_stream(id, req, timeout).await?;
    // A small channel: a slow client back-pressures the command through the agent.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(8);
    tokio::spawn(async move {
        // The exec counts against its user's concurrent execs until its stream ends.
        let _slot = slot;
        loop {
            let event = match running.next().await {
                Some(Ok(engine::ExecEvent::Stdout(data))) => {
                    api::ExecEvent::Stdout { data: String::from_utf8_lossy(&data).into_owned() }
                }
                Some(Ok(engine::ExecEvent::Stderr(data))) => {
                    api::ExecEvent::Stderr { data: String::from_utf8_lossy(&data).into_owned() }
                }
                Some(Ok(engine::ExecEvent::Exit(code))) => api::ExecEvent::Exit { exit_code: code },
                Some(Err(e)) => api::ExecEvent::Error { data: e.to_string() },
                None => api::ExecEvent::Error { data: "the exec ended without an exit".into() },
            };
            let last = matches!(event, api::ExecEvent::Exit { .. } | api::ExecEvent::Error { .. });
            // The client went away: dropping the stream kills the command.
            if tx.send(Ok(line(&event))).await.is_err() || last {
                break;
            }
        }
    });
    let body = Body::from_stream(tokio_stream_of(rx));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(api::NDJSON));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    Ok(response)
}

/// A receiver as a stream of body chunks.
fn tokio_stream_of(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, Infallible>>,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_outside_v1_range_fall_back_to_300_s() {
        assert_eq!(timeout_of(0), Duration::from_secs(300));
        assert_eq!(timeout_of(-5), Duration::from_secs(300));
        assert_eq!(timeout_of(86_401), Duration::from_secs(300));
        assert_eq!(timeout_of(12), Duration::from_secs(12));
    }
}
