//! The calls behind `bhatti mcp`'s tools: each checks its arguments (pure functions, unit
//! tested below), calls the daemon's HTTP API through the CLI's client (so it acts as the key's
//! user, as every command does) and shapes the answer as a JSON object. A failure is a
//! [`ToolError`], which the server turns into a tool error result (`isError: true`), never into
//! a protocol error.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::{Method, header};
use http_body_util::BodyExt;
use rmcp::schemars;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::cli::client::{Client, QUICK, enc, full, sb_path};

/// `exec`'s timeout when none is given, and the most it may ask for.
pub const EXEC_DEFAULT_TIMEOUT: u64 = 60;
/// The longest `timeout_seconds` (a tool call is a model's turn waiting).
pub const EXEC_MAX_TIMEOUT: u64 = 600;
/// What `exec` returns of each stream: stdout's beginning, stderr's end.
pub const OUTPUT_CAP: usize = 64 << 10;
/// What `read_file` returns of a file at most (its beginning).
pub const READ_CAP: u64 = 1 << 20;
/// The largest `write_file` content, decoded (it travels inside one JSON-RPC message).
pub const WRITE_CAP: usize = 16 << 20;
/// Create and destroy boot or tear down a VM.
const LIFECYCLE: Duration = Duration::from_secs(600);
/// The wait for an exec's answer to begin (the daemon wakes a sleeping sandbox first).
const EXEC_HEAD_WAIT: Duration = Duration::from_secs(120);
/// Past the command's own timeout, how long the daemon has to say so before we stop waiting.
const EXEC_GRACE: Duration = Duration::from_secs(10);
/// The longest NDJSON line of an exec stream (the agent frames output far smaller).
const LINE_CAP: usize = 16 << 20;
/// The longest wait for the next piece of a file.
const IDLE: Duration = Duration::from_secs(60);

/// Why a tool call failed; its text is what the caller sees.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The arguments break a rule; says which.
    #[error("{0}")]
    Invalid(String),
    /// The daemon refused or could not be reached: its message (never carrying the key).
    #[error("{}", daemon_message(.0))]
    Daemon(anyhow::Error),
    /// The command ran past its timeout and was killed.
    #[error(
        "the command timed out after {0} s and was killed (timeout_seconds raises the limit, \
         up to {EXEC_MAX_TIMEOUT})"
    )]
    TimedOut(u64),
    /// The exec failed in the sandbox (not the command's exit code: that is a result).
    #[error("exec failed: {0}")]
    Exec(String),
}

/// The daemon's message with the cause chain, then the CLI's hint for known codes.
fn daemon_message(e: &anyhow::Error) -> String {
    match crate::cli::hint(e) {
        Some(hint) => format!("{e:#} (hint: {hint})"),
        None => format!("{e:#}"),
    }
}

impl From<anyhow::Error> for ToolError {
    fn from(e: anyhow::Error) -> Self {
        ToolError::Daemon(e)
    }
}

type Outcome = Result<Value, ToolError>;

fn required<'a>(what: &str, value: &'a str) -> Result<&'a str, ToolError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ToolError::Invalid(format!("{what} is required")));
    }
    Ok(value)
}

// ---- create, list, destroy ----

/// `create_sandbox`'s arguments.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct CreateSandboxArgs {
    /// A name (letters, digits, '.', '_', '-'; up to 63); a generated one when left out. A
    /// sandbox that already has this name is returned as it is.
    #[serde(default)]
    pub name: Option<String>,
    /// The image to boot (`bhatti image list`); the daemon's default when left out.
    #[serde(default)]
    pub image: Option<String>,
    /// A template (ID or name) whose image, resources, secrets and volumes fill what is left
    /// out.
    #[serde(default)]
    pub template: Option<String>,
    /// vCPUs (a fraction bounds CPU time); default 1.
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Guest memory in MB; default 1024.
    #[serde(default)]
    pub memory_mb: Option<u32>,
    /// Environment variables for every command run in the sandbox.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
}

/// The create request of `create_sandbox`'s arguments.
pub fn create_body(a: CreateSandboxArgs) -> Result<api::CreateSandbox, ToolError> {
    if let Some(cpus) = a.cpus
        && !(cpus.is_finite() && cpus > 0.0)
    {
        return Err(ToolError::Invalid(format!("cpus must be above 0 (got {cpus})")));
    }
    if a.memory_mb == Some(0) {
        return Err(ToolError::Invalid("memory_mb must be above 0".into()));
    }
    let text = |v: Option<String>| v.map(|s| s.trim().to_owned()).unwrap_or_default();
    Ok(api::CreateSandbox {
        name: text(a.name),
        image: text(a.image),
        template_id: text(a.template),
        cpus: a.cpus,
        memory_mb: a.memory_mb,
        env: a.env.unwrap_or_default(),
        ..api::CreateSandbox::default()
    })
}

/// `create_sandbox`: the sandbox as the API describes it.
pub async fn create_sandbox(client: &Client, a: CreateSandboxArgs) -> Outcome {
    let body = create_body(a)?;
    let sandbox: api::Sandbox =
        client.json(Method::POST, "/sandboxes", Some(&body), LIFECYCLE).await?;
    Ok(serde_json::to_value(sandbox).map_err(anyhow::Error::from)?)
}

/// `list_sandboxes`: the key's user's sandboxes.
pub async fn list_sandboxes(client: &Client) -> Outcome {
    let list: Vec<api::Sandbox> = client.get("/sandboxes").await?;
    Ok(json!({ "sandboxes": list }))
}

/// `destroy_sandbox`'s arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct DestroySandboxArgs {
    /// The sandbox: name, ID or unique ID prefix.
    pub name: String,
}

/// `destroy_sandbox`: the VM and its disk are gone.
pub async fn destroy_sandbox(client: &Client, a: DestroySandboxArgs) -> Outcome {
    let name = required("name", &a.name)?;
    let status: api::StatusBody =
        client.json::<_, ()>(Method::DELETE, &sb_path(name, ""), None, LIFECYCLE).await?;
    Ok(json!({ "sandbox": name, "status": status.status }))
}

// ---- exec ----

/// A command: a string for `sh -c`, or an argv.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum CommandArg {
    /// A shell command line, run by `sh -c`.
    Shell(String),
    /// A program and its arguments, run as they are (no shell).
    Argv(Vec<String>),
}

/// `exec`'s arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ExecArgs {
    /// The sandbox: name, ID or unique ID prefix.
    pub sandbox: String,
    /// A shell command line (run by `sh -c`), or an argv array run without a shell.
    pub command: CommandArg,
    /// Seconds before the command is killed: default 60, at most 600.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// Working directory.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Extra environment variables for this command.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
}

/// The exec request of `exec`'s arguments, and its timeout in seconds.
pub fn exec_body(a: ExecArgs) -> Result<(String, api::ExecBody, u64), ToolError> {
    let sandbox = required("sandbox", &a.sandbox)?.to_owned();
    let cmd = match a.command {
        CommandArg::Shell(line) if line.trim().is_empty() => {
            return Err(ToolError::Invalid("command is empty".into()));
        }
        CommandArg::Shell(line) => vec!["sh".to_owned(), "-c".to_owned(), line],
        CommandArg::Argv(argv) if argv.first().is_none_or(|p| p.is_empty()) => {
            return Err(ToolError::Invalid(
                "command: an argv needs a program as its first element".into(),
            ));
        }
        CommandArg::Argv(argv) => argv,
    };
    let timeout = a.timeout_seconds.unwrap_or(EXEC_DEFAULT_TIMEOUT);
    if !(1..=EXEC_MAX_TIMEOUT).contains(&timeout) {
        return Err(ToolError::Invalid(format!(
            "timeout_seconds must be 1..={EXEC_MAX_TIMEOUT} (got {timeout})"
        )));
    }
    let body = api::ExecBody {
        cmd,
        timeout_sec: i64::try_from(timeout).unwrap_or(60),
        env: a.env.unwrap_or_default(),
        cwd: a.cwd.unwrap_or_default(),
        ..api::ExecBody::default()
    };
    Ok((sandbox, body, timeout))
}

/// Which part of a stream is kept past the cap.
#[derive(Debug, Clone, Copy)]
pub enum Keep {
    /// The beginning (stdout: what a command printed first).
    Head,
    /// The end (stderr: where the error is).
    Tail,
}

/// A stream's text, at most `cap` bytes of it kept (cut at a character boundary), and how
/// much there was.
#[derive(Debug)]
pub struct Capped {
    keep: Keep,
    cap: usize,
    text: String,
    total: usize,
}

impl Capped {
    /// An empty stream.
    pub fn new(keep: Keep, cap: usize) -> Self {
        Capped { keep, cap, text: String::new(), total: 0 }
    }

    /// More of the stream.
    pub fn push(&mut self, s: &str) {
        self.total += s.len();
        match self.keep {
            Keep::Head => {
                let room = self.cap.saturating_sub(self.text.len());
                self.text.push_str(&s[..floor_boundary(s, room)]);
            }
            Keep::Tail => {
                self.text.push_str(s);
                // Trimmed in batches, so a stream of small pieces is not copied each time.
                if self.text.len() > self.cap.saturating_mul(2) {
                    self.trim_front();
                }
            }
        }
    }

    fn trim_front(&mut self) {
        if self.text.len() > self.cap {
            let cut = ceil_boundary(&self.text, self.text.len() - self.cap);
            self.text.drain(..cut);
        }
    }

    /// The text kept, and a note when some was dropped.
    pub fn finish(mut self, name: &str) -> (String, Option<String>) {
        if let Keep::Tail = self.keep {
            self.trim_front();
        }
        let note = (self.total > self.text.len()).then(|| {
            let part = match self.keep {
                Keep::Head => "first",
                Keep::Tail => "last",
            };
            format!(
                "{name} truncated: the {part} {} of {} bytes are shown",
                self.text.len(),
                self.total
            )
        });
        (self.text, note)
    }
}

/// The largest character boundary of `s` at or below `i`.
fn floor_boundary(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The smallest character boundary of `s` at or above `i`.
fn ceil_boundary(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// The result of a command that ran to its end (any exit code).
pub fn exec_result(exit_code: i32, stdout: Capped, stderr: Capped) -> Value {
    let (stdout, out_note) = stdout.finish("stdout");
    let (stderr, err_note) = stderr.finish("stderr");
    let mut result = json!({
        "exit_code": exit_code,
        "stdout": stdout,
        "stderr": stderr,
        "stdout_truncated": out_note.is_some(),
        "stderr_truncated": err_note.is_some(),
    });
    let notes: Vec<String> = out_note.into_iter().chain(err_note).collect();
    if !notes.is_empty() {
        result["notes"] = json!(notes);
    }
    result
}

/// `exec`: runs the command through the daemon's streaming exec, keeping [`OUTPUT_CAP`] of
/// each stream. The daemon enforces the timeout (its deadline drops the agent's connection,
/// which kills the command); ours only bounds a daemon that never says so.
pub async fn exec(client: &Client, a: ExecArgs) -> Outcome {
    let (sandbox, body, timeout) = exec_body(a)?;
    let started = Instant::now();
    let req = client
        .request(Method::POST, &sb_path(&sandbox, "/exec"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, api::NDJSON)
        .body(full(serde_json::to_vec(&body).map_err(anyhow::Error::from)?))
        .map_err(anyhow::Error::from)?;
    let resp = client.call(req, EXEC_HEAD_WAIT).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout) + EXEC_GRACE;
    let mut stdout = Capped::new(Keep::Head, OUTPUT_CAP);
    let mut stderr = Capped::new(Keep::Tail, OUTPUT_CAP);
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            // Dropping the body closes the connection, and the daemon the command's.
            Err(_) => return Err(ToolError::TimedOut(timeout)),
            Ok(None) => {
                return Err(ToolError::Exec("the stream ended without an exit status".into()));
            }
            Ok(Some(Err(e))) => return Err(ToolError::Exec(format!("reading the stream: {e}"))),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        buf.extend_from_slice(&data);
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let event: api::ExecEvent = serde_json::from_slice(&line[..end])
                .map_err(|e| ToolError::Exec(format!("the daemon's stream: {e}")))?;
            match event {
                api::ExecEvent::Stdout { data } => stdout.push(&data),
                api::ExecEvent::Stderr { data } => stderr.push(&data),
                api::ExecEvent::Exit { exit_code } => {
                    return Ok(exec_result(exit_code, stdout, stderr));
                }
                // The daemon's deadline ends the stream with an error event; one that comes
                // once the timeout has passed is that deadline.
                api::ExecEvent::Error { .. }
                    if started.elapsed() >= Duration::from_secs(timeout) =>
                {
                    return Err(ToolError::TimedOut(timeout));
                }
                api::ExecEvent::Error { data } => return Err(ToolError::Exec(data)),
            }
        }
        if buf.len() > LINE_CAP {
            return Err(ToolError::Exec("the daemon's stream has an over-long line".into()));
        }
    }
}

// ---- files ----

/// `read_file`'s arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ReadFileArgs {
    /// The sandbox: name, ID or unique ID prefix.
    pub sandbox: String,
    /// Absolute path in the sandbox.
    pub path: String,
}

/// A file's bytes as the caller gets them: UTF-8 text as it is, anything else base64. `cut`
/// says the bytes are a file's beginning, so a character split at their end is not binary.
pub fn file_content(bytes: &[u8], cut: bool) -> (&'static str, String) {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => Some(text),
        // An incomplete character at the very end of a cut: the text before it.
        Err(e) if cut && e.error_len().is_none() => {
            std::str::from_utf8(&bytes[..e.valid_up_to()]).ok()
        }
        Err(_) => None,
    };
    match text {
        Some(text) if !text.contains('\0') => ("utf-8", text.to_owned()),
        _ => ("base64", base64::engine::general_purpose::STANDARD.encode(bytes)),
    }
}

/// `read_file`: at most [`READ_CAP`] bytes of the file, as text or base64.
pub async fn read_file(client: &Client, a: ReadFileArgs) -> Outcome {
    let sandbox = required("sandbox", &a.sandbox)?;
    let path = required("path", &a.path)?;
    let route = sb_path(sandbox, &format!("/files?path={}&max_bytes={READ_CAP}", enc(path)));
    let req = client
        .request(Method::GET, &route)
        .body(crate::cli::client::empty())
        .map_err(anyhow::Error::from)?;
    let resp = client.call(req, QUICK).await?;
    let size = resp
        .headers()
        .get(api::FILE_SIZE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let cap = usize::try_from(READ_CAP).unwrap_or(usize::MAX);
    let mut bytes: Vec<u8> = Vec::new();
    let mut more = false;
    let mut body = resp.into_body();
    loop {
        let frame = match tokio::time::timeout(IDLE, body.frame()).await {
            Err(_) => {
                return Err(ToolError::Exec(format!(
                    "reading {path}: nothing for {}s",
                    IDLE.as_secs()
                )));
            }
            Ok(None) => break,
            Ok(Some(f)) => f.map_err(|e| ToolError::Exec(format!("reading {path}: {e}")))?,
        };
        if let Ok(data) = frame.into_data() {
            let room = cap - bytes.len();
            more |= data.len() > room;
            bytes.extend_from_slice(&data[..data.len().min(room)]);
            if more {
                break;
            }
        }
    }
    let truncated = more || size.is_some_and(|s| s > bytes.len() as u64);
    let (encoding, content) = file_content(&bytes, truncated);
    let mut result = json!({
        "path": path,
        "encoding": encoding,
        "content": content,
        "bytes": bytes.len(),
        "truncated": truncated,
    });
    if let Some(size) = size {
        result["size"] = json!(size);
    }
    if truncated {
        result["note"] = json!(format!(
            "only the first {} bytes are shown (read_file returns at most {READ_CAP}); exec \
             with head/tail/sed reads other parts",
            bytes.len()
        ));
    }
    Ok(result)
}

/// `write_file`'s arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct WriteFileArgs {
    /// The sandbox: name, ID or unique ID prefix.
    pub sandbox: String,
    /// Absolute path in the sandbox (its directory must exist); replaced whole.
    pub path: String,
    /// The content: text, or base64 when `base64` is true.
    pub content: String,
    /// `content` is base64 (for binary files).
    #[serde(default)]
    pub base64: Option<bool>,
    /// Octal permission bits, e.g. "0755"; default "0644".
    #[serde(default)]
    pub mode: Option<String>,
}

/// The bytes and mode of `write_file`'s arguments.
pub fn write_body(a: &WriteFileArgs) -> Result<(Vec<u8>, String), ToolError> {
    required("sandbox", &a.sandbox)?;
    required("path", &a.path)?;
    let bytes = if a.base64.unwrap_or(false) {
        let compact: String = a.content.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|e| ToolError::Invalid(format!("content is not valid base64: {e}")))?
    } else {
        a.content.as_bytes().to_vec()
    };
    if bytes.len() > WRITE_CAP {
        return Err(ToolError::Invalid(format!(
            "content of {} bytes: write_file takes at most {} MiB",
            bytes.len(),
            WRITE_CAP >> 20
        )));
    }
    let mode = a.mode.as_deref().map(str::trim).unwrap_or("0644");
    let octal = mode.strip_prefix("0o").unwrap_or(mode);
    if !(3..=4).contains(&octal.len()) || !octal.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(ToolError::Invalid(format!(
            "mode must be octal permission bits such as \"0644\" (got {mode:?})"
        )));
    }
    Ok((bytes, octal.to_owned()))
}

/// `write_file`: the file replaced with the content.
pub async fn write_file(client: &Client, a: WriteFileArgs) -> Outcome {
    let (bytes, mode) = write_body(&a)?;
    let (sandbox, path) = (a.sandbox.trim(), a.path.trim());
    let route = sb_path(sandbox, &format!("/files?path={}&mode={}", enc(path), enc(&mode)));
    let len = bytes.len();
    let req = client
        .request(Method::PUT, &route)
        .header(header::CONTENT_LENGTH, len)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(full(bytes))
        .map_err(anyhow::Error::from)?;
    client.call(req, LIFECYCLE).await?;
    Ok(json!({ "path": path, "bytes": len, "mode": mode }))
}

// ---- publish ----

/// `publish_port`'s arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct PublishPortArgs {
    /// The sandbox: name, ID or unique ID prefix.
    pub sandbox: String,
    /// The port a server listens on in the sandbox (1..65535).
    pub port: u32,
}

/// The checked port of `publish_port`'s arguments.
pub fn publish_port_number(a: &PublishPortArgs) -> Result<u16, ToolError> {
    required("sandbox", &a.sandbox)?;
    u16::try_from(a.port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| ToolError::Invalid(format!("port must be 1..65535 (got {})", a.port)))
}

/// `publish_port`: the port's public URL, or, on a daemon without a public proxy, the URL of
/// the authenticated proxy (which needs the caller's key; the key is never in the answer).
pub async fn publish_port(client: &Client, a: PublishPortArgs) -> Outcome {
    let port = publish_port_number(&a)?;
    let body = api::PublishRequest { port: u32::from(port), alias: String::new() };
    let rule: api::PublishRule = client
        .json(Method::POST, &sb_path(a.sandbox.trim(), "/publish"), Some(&body), QUICK)
        .await?;
    if rule.url.contains(bhatti_core::publish::NO_PROXY_MARKER) {
        let base = client.endpoint().display();
        return Ok(json!({
            "url": format!("{base}/sandboxes/{}/proxy/{}/", rule.sandbox_id, rule.port),
            "port": rule.port,
            "alias": rule.alias,
            "public": false,
            "note": "the daemon has no public proxy (public_proxy_listen in its config): this \
                     URL is its authenticated proxy, so requests need the same API key as \
                     this MCP server's, as the header `Authorization: Bearer <key>`",
        }));
    }
    Ok(json!({ "url": rule.url, "port": rule.port, "alias": rule.alias, "public": true }))
}

#[cfg(test)]
mod tests {
    // The tables' row types are spelled out where they are used.
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity)]
    use super::*;

    fn exec_args(command: Value, timeout: Option<u64>) -> ExecArgs {
        serde_json::from_value(json!({
            "sandbox": "sb", "command": command, "timeout_seconds": timeout,
        }))
        .unwrap()
    }

    #[test]
    fn exec_arguments_table() {
        // (name, command, timeout, Ok(argv, timeout) or Err(fragment of the message))
        let table: Vec<(&str, Value, Option<u64>, Result<(Vec<&str>, u64), &str>)> = vec![
            (
                "a string runs under sh -c",
                json!("echo hi"),
                None,
                Ok((vec!["sh", "-c", "echo hi"], 60)),
            ),
            ("an argv runs as it is", json!(["ls", "-l"]), Some(5), Ok((vec!["ls", "-l"], 5))),
            ("the longest timeout", json!("true"), Some(600), Ok((vec!["sh", "-c", "true"], 600))),
            ("an empty string", json!("  "), None, Err("command is empty")),
            ("an empty argv", json!([]), None, Err("needs a program")),
            ("an argv without a program", json!([""]), None, Err("needs a program")),
            (
                "a zero timeout",
                json!("true"),
                Some(0),
                Err("timeout_seconds must be 1..=600 (got 0)"),
            ),
            ("a timeout over the cap", json!("true"), Some(601), Err("(got 601)")),
        ];
        for (name, command, timeout, want) in table {
            let got = exec_body(exec_args(command, timeout));
            match (got, want) {
                (Ok((sb, body, t)), Ok((argv, want_t))) => {
                    assert_eq!(sb, "sb", "{name}");
                    assert_eq!(body.cmd, argv, "{name}");
                    assert_eq!(t, want_t, "{name}");
                    assert_eq!(body.timeout_sec, i64::try_from(want_t).unwrap(), "{name}");
                }
                (Err(e), Err(fragment)) => {
                    assert!(matches!(e, ToolError::Invalid(_)), "{name}: {e:?}");
                    assert!(e.to_string().contains(fragment), "{name}: {e}");
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
        let blank: ExecArgs =
            serde_json::from_value(json!({"sandbox": " ", "command": "true"})).unwrap();
        assert!(exec_body(blank).unwrap_err().to_string().contains("sandbox is required"));
        // Neither a string nor a list of strings: the arguments do not parse at all (rmcp
        // answers invalid params).
        assert!(serde_json::from_value::<ExecArgs>(json!({"sandbox": "s", "command": 3})).is_err());
        let env: ExecArgs = serde_json::from_value(
            json!({"sandbox": "s", "command": "env", "cwd": "/tmp", "env": {"A": "1"}}),
        )
        .unwrap();
        let (_, body, _) = exec_body(env).unwrap();
        assert_eq!((body.cwd.as_str(), body.env.get("A").map(String::as_str)), ("/tmp", Some("1")));
    }

    #[test]
    fn create_arguments_table() {
        let table: Vec<(&str, Value, Result<(&str, &str, &str), &str>)> = vec![
            ("nothing", json!({}), Ok(("", "", ""))),
            (
                "all",
                json!({"name": " web ", "image": "test", "template": "py", "cpus": 0.5, "memory_mb": 512}),
                Ok(("web", "test", "py")),
            ),
            ("zero cpus", json!({"cpus": 0}), Err("cpus must be above 0")),
            ("negative cpus", json!({"cpus": -1.5}), Err("cpus must be above 0")),
            ("zero memory", json!({"memory_mb": 0}), Err("memory_mb must be above 0")),
        ];
        for (name, args, want) in table {
            let got = create_body(serde_json::from_value(args).unwrap());
            match (got, want) {
                (Ok(body), Ok((n, image, template))) => {
                    assert_eq!((body.name.as_str(), body.image.as_str()), (n, image), "{name}");
                    assert_eq!(body.template_id, template, "{name}");
                }
                (Err(e), Err(fragment)) => assert!(e.to_string().contains(fragment), "{name}: {e}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn write_arguments_table() {
        let table: Vec<(&str, Value, Result<(&[u8], &str), &str>)> = vec![
            ("text", json!({"content": "hi\n"}), Ok((b"hi\n", "0644"))),
            ("base64", json!({"content": "AAH/", "base64": true}), Ok((&[0, 1, 255], "0644"))),
            (
                "base64 with line breaks",
                json!({"content": "AA\nH/\n", "base64": true}),
                Ok((&[0, 1, 255], "0644")),
            ),
            ("a mode", json!({"content": "", "mode": "0755"}), Ok((b"", "0755"))),
            ("three digits", json!({"content": "", "mode": "600"}), Ok((b"", "600"))),
            ("0o prefix", json!({"content": "", "mode": "0o700"}), Ok((b"", "700"))),
            (
                "bad base64",
                json!({"content": "not base64!", "base64": true}),
                Err("not valid base64"),
            ),
            (
                "a mode that is not octal",
                json!({"content": "", "mode": "0899"}),
                Err("mode must be octal"),
            ),
            (
                "a mode too long",
                json!({"content": "", "mode": "012345"}),
                Err("mode must be octal"),
            ),
            ("no path", json!({"content": "", "path": ""}), Err("path is required")),
        ];
        for (name, extra, want) in table {
            let mut args = json!({"sandbox": "sb", "path": "/tmp/f"});
            for (k, v) in extra.as_object().unwrap() {
                args[k] = v.clone();
            }
            let got = write_body(&serde_json::from_value(args).unwrap());
            match (got, want) {
                (Ok((bytes, mode)), Ok((want_bytes, want_mode))) => {
                    assert_eq!(
                        (bytes.as_slice(), mode.as_str()),
                        (want_bytes, want_mode),
                        "{name}"
                    );
                }
                (Err(e), Err(fragment)) => assert!(e.to_string().contains(fragment), "{name}: {e}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
        let big = WriteFileArgs {
            sandbox: "sb".into(),
            path: "/f".into(),
            content: "x".repeat(WRITE_CAP + 1),
            base64: None,
            mode: None,
        };
        assert!(write_body(&big).unwrap_err().to_string().contains("at most 16 MiB"));
    }

    #[test]
    fn publish_ports_table() {
        for (port, ok) in [(0, false), (1, true), (8080, true), (65535, true), (65536, false)] {
            let a = PublishPortArgs { sandbox: "sb".into(), port };
            assert_eq!(publish_port_number(&a).is_ok(), ok, "port {port}");
        }
    }

    #[test]
    fn output_is_cut_at_the_cap_with_a_note() {
        // Under the cap: all of it, no note.
        let mut out = Capped::new(Keep::Head, 8);
        out.push("abc");
        assert_eq!(out.finish("stdout"), ("abc".to_owned(), None));
        // stdout keeps its beginning, across pieces.
        let mut out = Capped::new(Keep::Head, 8);
        for piece in ["abcde", "fghij", "klm"] {
            out.push(piece);
        }
        let (text, note) = out.finish("stdout");
        assert_eq!(text, "abcdefgh");
        assert_eq!(note.unwrap(), "stdout truncated: the first 8 of 13 bytes are shown");
        // stderr keeps its end, also past several trims.
        let mut err = Capped::new(Keep::Tail, 4);
        for piece in ["0123", "4567", "89", "abcdef"] {
            err.push(piece);
        }
        let (text, note) = err.finish("stderr");
        assert_eq!(text, "cdef");
        assert_eq!(note.unwrap(), "stderr truncated: the last 4 of 16 bytes are shown");
        // Never a split character: 'é' is two bytes.
        let mut out = Capped::new(Keep::Head, 3);
        out.push("aéé");
        assert_eq!(out.finish("stdout").0, "aé");
        let mut err = Capped::new(Keep::Tail, 3);
        err.push("ééa");
        assert_eq!(err.finish("stderr").0, "éa");
        // The result carries both flags and the notes.
        let mut out = Capped::new(Keep::Head, 2);
        out.push("hello");
        let result = exec_result(3, out, Capped::new(Keep::Tail, 2));
        assert_eq!(result["exit_code"], 3);
        assert_eq!(result["stdout"], "he");
        assert_eq!(
            (result["stdout_truncated"].as_bool(), result["stderr_truncated"].as_bool()),
            (Some(true), Some(false))
        );
        assert_eq!(result["notes"][0], "stdout truncated: the first 2 of 5 bytes are shown");
        let whole = exec_result(0, Capped::new(Keep::Head, 2), Capped::new(Keep::Tail, 2));
        assert!(whole.get("notes").is_none());
    }

    #[test]
    fn file_content_is_text_or_base64() {
        assert_eq!(file_content(b"hello\n", false), ("utf-8", "hello\n".to_owned()));
        assert_eq!(file_content(&[0, 1, 255], false), ("base64", "AAH/".to_owned()));
        // Valid UTF-8 holding a NUL is binary.
        assert_eq!(file_content(b"a\0b", false).0, "base64");
        // A cut through a character at the end: still text, without the half character.
        let cut = &"aé".as_bytes()[..2];
        assert_eq!(file_content(cut, true), ("utf-8", "a".to_owned()));
        assert_eq!(file_content(cut, false).0, "base64");
    }

    #[test]
    fn tool_errors_say_what_happened() {
        assert!(
            ToolError::TimedOut(2)
                .to_string()
                .starts_with("the command timed out after 2 s and was killed")
        );
        let api = crate::cli::error::CliError::from_answer(
            401,
            br#"{"error":"unauthorized","code":"unauthorized"}"#,
        );
        let msg = ToolError::Daemon(anyhow::Error::new(api)).to_string();
        assert!(msg.starts_with("401: unauthorized (hint: check your key"), "{msg}");
    }
}
