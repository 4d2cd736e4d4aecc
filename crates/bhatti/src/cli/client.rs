//! The HTTP client: hyper's HTTP/1 over a TCP or Unix stream, one connection per request (the
//! CLI makes one or two requests per run), a deadline on connecting and on every wait.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::endpoint::{Endpoint, Target};
use super::error::CliError;
use super::timing::Timing;

/// A request body: a buffer or a stream.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// Connecting: the daemon is local, so a slow connect is a dead daemon.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Reading a JSON answer or an error body.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest JSON answer read (a list of many sandboxes is far below).
const JSON_CAP: usize = 64 << 20;
/// The waits of quick calls (reads, lists); long ones (create, stop, exec) pass their own.
pub const QUICK: Duration = Duration::from_secs(60);

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A buffered body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// Talks to one daemon.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
    /// The last request's phases (`--timing`).
    timing: Timing,
}

/// Any stream hyper can speak HTTP/1 over.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Stream for S {}

impl Client {
    /// A client of the endpoint.
    pub fn new(endpoint: Endpoint) -> Self {
        Client { endpoint, timing: Timing::default() }
    }

    /// The last request's phases (`--timing`).
    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn unreachable(&self, source: std::io::Error) -> CliError {
        CliError::Unreachable { url: self.endpoint.display(), source }
    }

    /// A connected stream to the daemon (also used by the WebSocket client). Each request has
    /// a connection of its own, so this is where a request's timing starts.
    pub async fn connect_stream(&self) -> Result<Box<dyn StreamObj>, CliError> {
        let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
        self.timing.start();
        match &self.endpoint.target {
            Target::Tcp { authority, .. } => {
                let connect = async {
                    let addrs = self.resolve(authority).await?;
                    let mut last = None;
                    for addr in addrs {
                        match tokio::net::TcpStream::connect(addr).await {
                            Ok(s) => return Ok(s),
                            Err(e) => last = Some(e),
                        }
                    }
                    Err(last.unwrap_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!("{authority}: no address"),
                        )
                    }))
                };
                let s = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                    .await
                    .map_err(|_| self.unreachable(timed_out()))?
                    .map_err(|e| self.unreachable(e))?;
                self.timing.connected();
                let _ = s.set_nodelay(true);
                Ok(Box::new(s))
            }
            Target::Unix(path) => {
                let s =
                    tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::UnixStream::connect(path))
                        .await
                        .map_err(|_| self.unreachable(timed_out()))?
                        .map_err(|e| self.unreachable(e))?;
                self.timing.connected();
                Ok(Box::new(s))
            }
        }
    }

    /// The addresses of `host:port`; a literal address needs no lookup (and no `dns` phase).
    async fn resolve(&self, authority: &str) -> std::io::Result<Vec<std::net::SocketAddr>> {
        if let Ok(addr) = authority.parse::<std::net::SocketAddr>() {
            return Ok(vec![addr]);
        }
        let addrs = tokio::net::lookup_host(authority).await?.collect();
        self.timing.resolved();
        Ok(addrs)
    }

    /// The path as sent (with the URL's prefix).
    pub fn path(&self, path: &str) -> String {
        match &self.endpoint.target {
            Target::Tcp { prefix, .. } => format!("{prefix}{path}"),
            Target::Unix(_) => path.to_owned(),
        }
    }

    /// The `Host` header's value.
    pub fn host(&self) -> &str {
        match &self.endpoint.target {
            Target::Tcp { authority, .. } => authority,
            Target::Unix(_) => "localhost",
        }
    }

    /// A request with the host, the key and our user agent set.
    pub fn request(&self, method: Method, path: &str) -> http::request::Builder {
        let mut b = Request::builder()
            .method(method)
            .uri(self.path(path))
            .header(header::HOST, self.host())
            .header(header::USER_AGENT, concat!("bhatti-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(token) = &self.endpoint.token
            && let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {token}"))
        {
            v.set_sensitive(true);
            b = b.header(header::AUTHORIZATION, v);
        }
        b
    }

    /// Sends a request and waits at most `wait` for the response's head. Any status.
    pub async fn send(
        &self,
        req: Request<Body>,
        wait: Duration,
    ) -> anyhow::Result<Response<Incoming>> {
        let stream = self.connect_stream().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake with the daemon")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let what = format!("{} {}", req.method(), req.uri().path());
        match tokio::time::timeout(wait, sender.send_request(req)).await {
            Ok(r) => {
                self.timing.head();
                r.with_context(|| format!("{what}: the daemon closed the connection"))
            }
            Err(_) => anyhow::bail!("{what}: no answer within {}s", wait.as_secs()),
        }
    }

    /// Sends a request; a non-2xx answer becomes `CliError::Api`.
    pub async fn call(
        &self,
        req: Request<Body>,
        wait: Duration,
    ) -> anyhow::Result<Response<Incoming>> {
        let resp = self.send(req, wait).await?;
        if resp.status().is_success() { Ok(resp) } else { Err(api_error(resp).await.into()) }
    }

    /// A request with an optional JSON body; the answer's status checked.
    pub async fn call_json<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        wait: Duration,
    ) -> anyhow::Result<Response<Incoming>> {
        let req = match body {
            Some(b) => self
                .request(method, path)
                .header(header::CONTENT_TYPE, "application/json")
                .body(full(serde_json::to_vec(b)?))?,
            None => self.request(method, path).body(empty())?,
        };
        self.call(req, wait).await
    }

    /// A request whose JSON answer is decoded.
    pub async fn json<T: DeserializeOwned, B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        wait: Duration,
    ) -> anyhow::Result<T> {
        let resp = self.call_json(method, path, body, wait).await?;
        decode(resp).await
    }

    /// `GET path`, decoded.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.json::<T, ()>(Method::GET, path, None, QUICK).await
    }
}

/// A boxed connected stream.
pub trait StreamObj: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<S: Stream> StreamObj for S {}

/// Reads a whole body, at most `cap` bytes, within the body deadline.
pub async fn read_body(resp: Response<Incoming>, cap: usize) -> anyhow::Result<Bytes> {
    let collected =
        tokio::time::timeout(BODY_TIMEOUT, Limited::new(resp.into_body(), cap).collect())
            .await
            .context("reading the answer: timed out")?
            .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?;
    Ok(collected.to_bytes())
}

/// Decodes a JSON answer.
pub async fn decode<T: DeserializeOwned>(resp: Response<Incoming>) -> anyhow::Result<T> {
    let bytes = read_body(resp, JSON_CAP).await?;
    serde_json::from_slice(&bytes).context("the daemon's answer is not the expected JSON")
}

/// The API error of a non-2xx answer: `{"error": ..., "code": ...}` or, failing that, the raw
/// text.
pub async fn api_error(resp: Response<Incoming>) -> CliError {
    let status = resp.status().as_u16();
    // An unreadable body is an empty one: the status still classifies the error.
    let body = read_body(resp, 1 << 20).await.unwrap_or_default();
    CliError::from_answer(status, &body)
}

/// Percent-encodes one path segment or query value.
pub fn enc(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b'/');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

/// A sandbox route: `/sandboxes/<id or name>` + `rest`.
pub fn sb_path(sandbox: &str, rest: &str) -> String {
    // A name or ID never holds '/', so a '/' must not reach the path.
    format!("/sandboxes/{}{rest}", enc(sandbox).replace('/', "%2F"))
}
