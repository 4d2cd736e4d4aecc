//! `ANY /sandboxes/:id/proxy/:port[/rest]`: the authenticated reverse proxy to a port in the
//! guest (host.md 1.14).
//!
//! Every request gets its own connection, made by `engine.forward` (the agent's forward channel
//! to `localhost:<port>` in the guest), and hyper's HTTP/1 client speaks over it. Both bodies
//! stream frame by frame (never buffered whole), so chunked answers and SSE arrive as the guest
//! writes them. The connection carries the engine's lease, so the sandbox stays hot until the
//! answer's body is done (or the client goes away).
//!
//! The request is rewritten: `Host: localhost:<port>`, the path after the port (`/` if none),
//! the query kept but for its `token` parameters, `X-Forwarded-For` / `-Proto` / `-Host` set,
//! hop-by-hop headers removed, and the caller's `Authorization` removed (v1 handed the bhatti
//! API key to the guest).
//!
//! No API key reaches a guest (issue 19): the guest is code the user runs, often code the user
//! did not write, and the key works on every sandbox of its owner. So every `token` query
//! parameter is removed (the name compared percent-decoded and case-insensitively, `&` and `;`
//! both separating, every occurrence; the API's own WebSocket routes take `?token=`, and a
//! client written for them may send it here too), `Authorization` is removed, and a request that
//! still carries the key it authenticated with anywhere else the guest would see it (the path,
//! another parameter, another header such as `Cookie`; raw or percent-decoded) is refused with
//! 400 before the guest is contacted. The API sets no cookies, so there is no API cookie to
//! remove; the guest's own cookies pass. The request body is the application's and is not
//! searched.
//!
//! A WebSocket upgrade (`Connection: upgrade` + `Upgrade: websocket`) is sent to the guest as
//! such; when the guest answers 101 the client gets that answer and from then on the proxy
//! relays raw bytes both ways (it never parses frames) until either side ends or nothing moves
//! for [`IDLE_TIMEOUT`]; the relay holds the lease, so a long-lived socket keeps the sandbox hot.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::BoxError;
use axum::body::Body;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version, header};
use axum::response::Response;
use hyper::body::{Bytes, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};

use crate::auth::{CurrentUser, PresentedKey};
use crate::error::{ApiError, ApiResult};
use crate::key_scan::{holds, percent_decoded};
use crate::sandboxes::resolve_for_guest;
use crate::state::AppState;

/// How long the HTTP/1 handshake over a fresh forward connection may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the guest may take to start answering (the status line and headers).
const RESPONSE_HEAD_TIMEOUT: Duration = Duration::from_secs(300);
/// A body (either way) or a WebSocket relay with nothing moving for this long is cut (v1's
/// relay idle timeout).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long both sides of an accepted upgrade have to hand over their connections.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(30);
/// The relay's copy buffer, per direction.
const RELAY_BUFFER: usize = 16 * 1024;

/// Hop-by-hop headers (RFC 9110 7.6.1 plus the legacy ones Go's reverse proxy removes).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The client's IP, recorded for each accepted connection (`None` for a Unix socket): the
/// accept loop (`listen.rs`) puts `ConnectInfo<ClientAddr>` into every request.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

impl From<std::net::SocketAddr> for ClientAddr {
    fn from(addr: std::net::SocketAddr) -> Self {
        ClientAddr(Some(addr.ip()))
    }
}

impl From<tokio::net::unix::SocketAddr> for ClientAddr {
    fn from(_: tokio::net::unix::SocketAddr) -> Self {
        ClientAddr(None)
    }
}

/// A port in the URL: 1..65535, digits only.
fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok().filter(|p| *p != 0)
}

/// The port segment and the rest of the raw (still percent-encoded) path after
/// `/sandboxes/<id>/proxy/`; the rest keeps its leading `/` and defaults to `/`.
fn split_target(path: &str) -> Option<(&str, &str)> {
    let after = path.strip_prefix("/sandboxes/")?;
    let (_, after) = after.split_once('/')?;
    let after = after.strip_prefix("proxy/")?;
    match after.find('/') {
        Some(i) => Some((&after[..i], &after[i..])),
        None => Some((after, "/")),
    }
}

/// Whether a query parameter (`name[=value]`) is a `token` one: its name, percent-decoded, is
/// `token` in any case (`token`, `Token`, `%74oken`, `TO%4BEN`).
fn is_token_param(param: &str) -> bool {
    let name = param.split_once('=').map_or(param, |(name, _)| name);
    percent_decoded(name.as_bytes()).eq_ignore_ascii_case(b"token")
}

/// The query the guest gets: the caller's, byte for byte, without its `token` parameters.
/// Both `&` and `;` separate parameters (some frameworks still split on `;`); the separators
/// between the parameters kept stay as they were. `None` when nothing is left.
fn forwarded_query(query: &str) -> Option<String> {
    let mut kept = String::with_capacity(query.len());
    let mut start = 0;
    // Each parameter with the separator that preceded it (none for the first).
    let mut separator = "";
    for (i, c) in query.char_indices().chain(std::iter::once((query.len(), '&'))) {
        if c != '&' && c != ';' {
            continue;
        }
        let param = &query[start..i];
        if !is_token_param(param) {
            if !kept.is_empty() {
                kept.push_str(separator);
            }
            kept.push_str(param);
        }
        separator = &query[i..(i + 1).min(query.len())];
        start = i + 1;
    }
    (!kept.is_empty()).then_some(kept)
}

/// Whether the request the guest would get still carries `key`: in its target (path and
/// query) or in any header value.
fn carries_key(key: &[u8], target: &str, headers: &HeaderMap) -> bool {
    holds(target.as_bytes(), key) || headers.values().any(|v| holds(v.as_bytes(), key))
}

/// Whether a header holds `token` in its comma-separated list (case-insensitive).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// A WebSocket upgrade request.
pub(crate) fn is_websocket(headers: &HeaderMap) -> bool {
    has_token(headers, header::CONNECTION, "upgrade")
        && has_token(headers, header::UPGRADE, "websocket")
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The headers the guest gets.
pub(crate) fn upstream_headers(
    original: &HeaderMap,
    authority: Option<&str>,
    port: u16,
    client: Option<IpAddr>,
    websocket: bool,
    proto: &'static str,
) -> HeaderMap {
    let mut headers = original.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(header::AUTHORIZATION);
    headers.insert(header::HOST, HeaderValue::from(LocalHost(port)));
    let host = original
        .get(header::HOST)
        .cloned()
        .or_else(|| authority.and_then(|a| HeaderValue::from_str(a).ok()));
    let forwarded_host = HeaderName::from_static("x-forwarded-host");
    match host {
        Some(host) => headers.insert(forwarded_host, host),
        None => headers.remove(forwarded_host),
    };
    if let Some(ip) = client {
        // Like Go's reverse proxy: the client joins the list it sent.
        let prior: Vec<&str> =
            original.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect();
        let value =
            if prior.is_empty() { ip.to_string() } else { format!("{}, {ip}", prior.join(", ")) };
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert("x-forwarded-for", value);
        }
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    if websocket {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(upgrade) = original.get(header::UPGRADE) {
            headers.insert(header::UPGRADE, upgrade.clone());
        }
    }
    headers
}

/// `localhost:<port>` as a header value.
struct LocalHost(u16);

impl From<LocalHost> for HeaderValue {
    fn from(host: LocalHost) -> Self {
        // Digits and ASCII letters only: always a valid value.
        HeaderValue::from_str(&format!("localhost:{}", host.0))
            .unwrap_or(HeaderValue::from_static("localhost"))
    }
}

/// The handler for `/sandboxes/{id}/proxy/{port}` and everything below it.
pub async fn proxy(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(params): Path<Vec<(String, String)>>,
    request: Request,
) -> ApiResult<Response> {
    let invalid = || ApiError::BadRequest("invalid port".into());
    let (port_text, rest) = split_target(request.uri().path()).ok_or_else(invalid)?;
    let port = parse_port(port_text).ok_or_else(invalid)?;
    let target = match request.uri().query().and_then(forwarded_query) {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_owned(),
    };
    let client = request.extensions().get::<ConnectInfo<ClientAddr>>().and_then(|c| c.0.0);
    let websocket = is_websocket(request.headers());
    let headers = upstream_headers(
        request.headers(),
        request.uri().authority().map(|a| a.as_str()),
        port,
        client,
        websocket,
        "http",
    );
    // The last check, before any lookup or wake: the key this request authenticated with
    // appears nowhere the guest would see it.
    if let Some(key) = request.extensions().get::<PresentedKey>()
        && carries_key(key.as_bytes(), &target, &headers)
    {
        return Err(ApiError::BadRequest(
            "the request carries its API key outside Authorization; the proxy does not forward \
             an API key to the guest"
                .into(),
        ));
    }
    let id = params.into_iter().find(|(k, _)| k == "id").map(|(_, v)| v).unwrap_or_default();
    let sandbox = resolve_for_guest(&state, &user, &id).await?;
    // Waking the sandbox and opening the guest connection: a closed port is the engine's
    // `guest_port_closed` (502).
    let stream = state.engine.forward(&sandbox.id, port).await?;
    deliver(stream, request, &target, headers, sandbox.id).await
}

/// Sends `request` (rewritten: `target`, `headers`) to the guest over `stream` and answers with
/// the guest's answer, streamed; a WebSocket upgrade becomes a relay. Shared with the public
/// proxy.
pub(crate) async fn deliver(
    stream: engine::Leased<engine::Stream>,
    request: Request,
    target: &str,
    headers: HeaderMap,
    sandbox: String,
) -> ApiResult<Response> {
    if is_websocket(request.headers()) {
        upgrade(stream, request, target, headers, sandbox).await
    } else {
        http(stream, request, target, headers).await
    }
}

/// The HTTP/1 client over a forward connection.
async fn handshake<B>(
    stream: engine::Leased<engine::Stream>,
) -> ApiResult<(
    hyper::client::conn::http1::SendRequest<B>,
    hyper::client::conn::http1::Connection<TokioIo<engine::Leased<engine::Stream>>, B>,
)>
where
    B: hyper::body::Body + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        hyper::client::conn::http1::handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| ApiError::BadGateway("handshake timed out".into()))?
    .map_err(|e| ApiError::BadGateway(e.to_string()))
}

/// Sends the request and waits (bounded) for the answer's head.
async fn send<B>(
    sender: &mut hyper::client::conn::http1::SendRequest<B>,
    request: hyper::Request<B>,
) -> ApiResult<hyper::Response<hyper::body::Incoming>>
where
    B: hyper::body::Body + 'static,
{
    tokio::time::timeout(RESPONSE_HEAD_TIMEOUT, sender.send_request(request))
        .await
        .map_err(|_| {
            ApiError::BadGateway(format!("no answer within {} s", RESPONSE_HEAD_TIMEOUT.as_secs()))
        })?
        .map_err(|e| ApiError::BadGateway(e.to_string()))
}

/// The request the guest gets.
fn upstream_request<B>(
    method: &Method,
    target: &str,
    headers: HeaderMap,
    body: B,
) -> ApiResult<hyper::Request<B>> {
    let mut upstream = hyper::Request::new(body);
    *upstream.method_mut() = method.clone();
    *upstream.uri_mut() =
        target.parse().map_err(|_| ApiError::BadRequest("invalid proxy path".into()))?;
    *upstream.version_mut() = Version::HTTP_11;
    *upstream.headers_mut() = headers;
    Ok(upstream)
}

/// A plain HTTP exchange.
async fn http(
    stream: engine::Leased<engine::Stream>,
    request: Request,
    target: &str,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (mut sender, conn) = handshake::<IdleBody<Body>>(stream).await?;
    // The connection (and with it the lease) ends when the answer's body is done or dropped.
    let (done, mut gone) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        tokio::select! {
            result = conn => {
                if let Err(e) = result {
                    tracing::debug!("proxy connection: {e}");
                }
            }
            _ = &mut gone => {}
        }
    });
    let (parts, client_body) = request.into_parts();
    let upstream =
        upstream_request(&parts.method, target, headers, IdleBody::new(client_body, None))?;
    let answer = send(&mut sender, upstream).await?;
    drop(sender);
    let (mut parts, body) = answer.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, Body::new(IdleBody::new(body, Some(done)))))
}

/// A WebSocket upgrade: the guest's 101 goes back to the client, then raw bytes are relayed.
async fn upgrade(
    stream: engine::Leased<engine::Stream>,
    mut request: Request,
    target: &str,
    headers: HeaderMap,
    sandbox: String,
) -> ApiResult<Response> {
    let client_side = hyper::upgrade::on(&mut request);
    let (mut sender, conn) = handshake::<http_body_util::Empty<Bytes>>(stream).await?;
    // As for plain HTTP: a declined upgrade's connection ends with its answer's body.
    let (done, mut gone) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        tokio::select! {
            result = conn.with_upgrades() => {
                if let Err(e) = result {
                    tracing::debug!("proxy upgrade connection: {e}");
                }
            }
            _ = &mut gone => {}
        }
    });
    let upstream =
        upstream_request(request.method(), target, headers, http_body_util::Empty::new())?;
    let mut answer = send(&mut sender, upstream).await?;
    drop(sender);
    if answer.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The guest declined: its answer passes through as a plain one.
        let (mut parts, body) = answer.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        return Ok(Response::from_parts(parts, Body::new(IdleBody::new(body, Some(done)))));
    }
    let guest_side = hyper::upgrade::on(&mut answer);
    tokio::spawn(async move {
        let _done = done;
        let sides = tokio::time::timeout(UPGRADE_TIMEOUT, async {
            let (client, guest) = tokio::join!(client_side, guest_side);
            Ok::<_, hyper::Error>((client?, guest?))
        });
        match sides.await {
            Ok(Ok((client, guest))) => {
                let moved = relay(TokioIo::new(client), TokioIo::new(guest), IDLE_TIMEOUT).await;
                tracing::debug!(sandbox = %sandbox, ?moved, "proxied websocket closed");
            }
            Ok(Err(e)) => tracing::debug!(sandbox = %sandbox, "proxied websocket upgrade: {e}"),
            Err(_) => tracing::debug!(sandbox = %sandbox, "proxied websocket upgrade timed out"),
        }
    });
    let (parts, _) = answer.into_parts();
    Ok(Response::from_parts(parts, Body::empty()))
}

/// Why a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// The client's side ended (EOF or error).
    Client,
    /// The guest's side ended.
    Guest,
    /// Nothing moved either way for the idle timeout.
    Idle,
}

/// Relays bytes both ways until either side ends or nothing moves for `idle`; then both are
/// dropped, so the other side's blocked reader returns too.
pub async fn relay<C, G>(client: C, guest: G, idle: Duration) -> RelayEnd
where
    C: AsyncRead + AsyncWrite + Send,
    G: AsyncRead + AsyncWrite + Send,
{
    let started = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let (client_read, client_write) = tokio::io::split(client);
    let (guest_read, guest_write) = tokio::io::split(guest);
    let idle_watch = async {
        loop {
            let moved = Duration::from_millis(last.load(Ordering::Relaxed));
            let quiet = started.elapsed().saturating_sub(moved);
            if quiet >= idle {
                return;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    };
    tokio::select! {
        () = pump(client_read, guest_write, &last, started) => RelayEnd::Client,
        () = pump(guest_read, client_write, &last, started) => RelayEnd::Guest,
        () = idle_watch => RelayEnd::Idle,
    }
}

/// Copies one direction until EOF or an error, recording when bytes last moved.
async fn pump<R, W>(mut from: R, mut to: W, last: &AtomicU64, started: Instant)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; RELAY_BUFFER];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let now = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        last.store(now, Ordering::Relaxed);
        if to.write_all(&buf[..n]).await.is_err() || to.flush().await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// A body passed through frame by frame that fails after [`IDLE_TIMEOUT`] of waiting for the
/// next frame; optionally it signals (by being dropped) that the exchange is over.
struct IdleBody<B> {
    inner: B,
    timer: Pin<Box<Sleep>>,
    waiting: bool,
    _done: Option<tokio::sync::oneshot::Sender<()>>,
}

impl<B> IdleBody<B> {
    fn new(inner: B, done: Option<tokio::sync::oneshot::Sender<()>>) -> Self {
        Self {
            inner,
            timer: Box::pin(tokio::time::sleep(IDLE_TIMEOUT)),
            waiting: false,
            _done: done,
        }
    }
}

impl<B> hyper::body::Body for IdleBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if !this.waiting {
            // Only the time spent waiting for the source counts, not a slow reader.
            this.waiting = true;
            this.timer.as_mut().reset(Instant::now() + IDLE_TIMEOUT);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    Poll::Ready(Some(Err(
                        format!("no data for {} s", IDLE_TIMEOUT.as_secs()).into()
                    )))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_1_to_65535_digits_only() {
        assert_eq!(parse_port("8080"), Some(8080));
        assert_eq!(parse_port("65535"), Some(65535));
        assert_eq!(parse_port("1"), Some(1));
        for bad in ["0", "65536", "70000", "abc", "", "+80", "-1", "080800", " 80"] {
            assert_eq!(parse_port(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn targets_keep_the_raw_rest_and_default_to_root() {
        assert_eq!(split_target("/sandboxes/a/proxy/80"), Some(("80", "/")));
        assert_eq!(split_target("/sandboxes/a/proxy/80/"), Some(("80", "/")));
        assert_eq!(split_target("/sandboxes/a/proxy/80/x/%20y/"), Some(("80", "/x/%20y/")));
        assert_eq!(split_target("/sandboxes/a/proxy/abc/x"), Some(("abc", "/x")));
    }

    #[test]
    fn the_guest_never_sees_the_callers_key_or_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer bht_secret"));
        h.insert(header::HOST, HeaderValue::from_static("api.example:8080"));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("x-custom", HeaderValue::from_static("kept"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        let ip = Some(IpAddr::from([127, 0, 0, 1]));
        let out = upstream_headers(&h, None, 3000, ip, false, "http");
        assert!(out.get(header::AUTHORIZATION).is_none());
        assert!(out.get("x-private").is_none() && out.get(header::CONNECTION).is_none());
        assert!(out.get(header::TRANSFER_ENCODING).is_none());
        assert_eq!(out["x-custom"], "kept");
        assert_eq!(out[header::HOST], "localhost:3000");
        assert_eq!(out["x-forwarded-host"], "api.example:8080");
        assert_eq!(out["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(out["x-forwarded-proto"], "http");
    }

    #[test]
    fn token_parameters_never_reach_the_guest_and_the_rest_passes_as_sent() {
        let table = [
            ("first", "token=k&a=1", Some("a=1")),
            ("last", "a=1&token=k", Some("a=1")),
            ("middle", "a=1&token=k&b=2", Some("a=1&b=2")),
            ("repeated", "token=k&a=1&token=j&token=", Some("a=1")),
            ("alone", "token=k", None),
            ("no value", "token&a=1", Some("a=1")),
            ("capital", "Token=k&a=1", Some("a=1")),
            ("upper", "a=1&TOKEN=k", Some("a=1")),
            ("percent-encoded name", "%74oken=k&a=1", Some("a=1")),
            ("encoded upper", "a=1&TO%4BEN=k", Some("a=1")),
            ("semicolon", "a=1;token=k;b=2", Some("a=1;b=2")),
            ("mixed separators", "token=k;a=1&b=2", Some("a=1&b=2")),
            (
                "other names kept",
                "tokens=1&my_token=2&token_=3",
                Some("tokens=1&my_token=2&token_=3"),
            ),
            ("values kept as sent", "a=two%20words&b=%2F&c", Some("a=two%20words&b=%2F&c")),
            ("empty pairs kept", "a=1&&b=2", Some("a=1&&b=2")),
            ("plus is not a separator", "tok+en=1", Some("tok+en=1")),
            ("empty", "", None),
        ];
        for (name, query, want) in table {
            assert_eq!(forwarded_query(query).as_deref(), want, "{name}: {query}");
        }
    }

    #[test]
    fn a_key_anywhere_the_guest_would_see_it_is_found() {
        let key = b"bht_0123abcd";
        let mut h = HeaderMap::new();
        h.insert("x-custom", HeaderValue::from_static("kept"));
        assert!(!carries_key(key, "/a?b=1", &h));
        assert!(carries_key(key, "/bht_0123abcd/x", &h));
        assert!(carries_key(key, "/a?access_token=bht_0123abcd", &h));
        assert!(carries_key(key, "/a?x=bht%5F0123abcd", &h));
        assert!(carries_key(key, "/a%2Fbht%5f0123abcd", &h));
        h.insert(header::COOKIE, HeaderValue::from_static("s=1; k=bht_0123abcd"));
        assert!(carries_key(key, "/a", &h));
        assert!(!carries_key(key, "/a?x=bht_0123abc", &HeaderMap::new()));
        assert_eq!(percent_decoded(b"%41%4a%zz%4"), b"AJ%zz%4");
    }

    #[test]
    fn websocket_upgrades_keep_their_upgrade_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_websocket(&h));
        let out = upstream_headers(&h, Some("h:1"), 9000, None, true, "https");
        assert_eq!(out[header::CONNECTION], "upgrade");
        assert_eq!(out[header::UPGRADE], "websocket");
        assert_eq!(out["x-forwarded-host"], "h:1");
        assert_eq!(out["x-forwarded-proto"], "https");
        assert!(out.get("x-forwarded-for").is_none());
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!is_websocket(&h));
    }

    #[tokio::test]
    async fn the_relay_ends_both_sides_when_either_ends() {
        // Data flows both ways, then the guest side closing ends the relay (v1's
        // TestRelayBidirectional_* cases over in-memory pipes).
        let (client, mut client_peer) = tokio::io::duplex(64);
        let (guest, mut guest_peer) = tokio::io::duplex(64);
        let relay = tokio::spawn(relay(client, guest, Duration::from_secs(60)));
        client_peer.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        guest_peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        guest_peer.write_all(b"pong").await.unwrap();
        client_peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        drop(guest_peer);
        let end = tokio::time::timeout(Duration::from_secs(5), relay).await.unwrap().unwrap();
        assert_eq!(end, RelayEnd::Guest);
        // The client's reader returns (EOF) instead of blocking forever.
        let n = tokio::time::timeout(Duration::from_secs(5), client_peer.read(&mut buf)).await;
        assert_eq!(n.unwrap().unwrap(), 0);
    }

    #[tokio::test]
    async fn the_relay_ends_when_the_client_ends_or_nothing_moves() {
        let (client, client_peer) = tokio::io::duplex(64);
        let (guest, mut guest_peer) = tokio::io::duplex(64);
        let relay_task = tokio::spawn(relay(client, guest, Duration::from_secs(60)));
        drop(client_peer);
        let end = tokio::time::timeout(Duration::from_secs(5), relay_task).await.unwrap().unwrap();
        assert_eq!(end, RelayEnd::Client);
        let mut buf = [0u8; 1];
        assert_eq!(guest_peer.read(&mut buf).await.unwrap(), 0);

        let (client, _client_peer) = tokio::io::duplex(64);
        let (guest, _guest_peer) = tokio::io::duplex(64);
        let end = tokio::time::timeout(
            Duration::from_secs(5),
            relay(client, guest, Duration::from_millis(100)),
        )
        .await
        .unwrap();
        assert_eq!(end, RelayEnd::Idle);
    }
}
