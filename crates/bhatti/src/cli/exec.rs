//! `bhatti exec`: buffered (one JSON answer), or streamed as NDJSON when stdout is a terminal
//! (or `BHATTI_FORCE_STREAM=1`, v1's switch), or detached. The remote exit code is ours.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use clap::Args;
use http::{Method, header};
use http_body_util::BodyExt;

use super::client::{full, sb_path};
use super::error::exit;
use super::{Ctx, key_values, print_json};

/// The daemon's default command timeout (v1: 300 s).
const DEFAULT_TIMEOUT: u64 = 300;
/// One NDJSON line at most (the agent frames output far smaller).
const LINE_CAP: usize = 16 << 20;

/// `bhatti exec <sandbox> [flags] -- cmd args...`
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Name, ID or ID prefix.
    sandbox: String,
    /// Environment for the command (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VAL")]
    env: Vec<String>,
    /// Working directory.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    workdir: Option<String>,
    /// Seconds before the command is killed (1..86400; default 300).
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u32>,
    /// Start it in the background and return its PID and output file.
    #[arg(long)]
    detach: bool,
    /// The command and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    cmd: Vec<String>,
}

/// A remote exit code as ours: 0..=255 as is, anything else (a signal's negative code) 1.
fn code(remote: i32) -> u8 {
    u8::try_from(remote).unwrap_or(exit::FAILURE)
}

/// `bhatti exec`.
pub async fn run(ctx: &Ctx, a: ExecArgs) -> anyhow::Result<u8> {
    let timeout = a.timeout.map_or(DEFAULT_TIMEOUT, u64::from);
    let body = api::ExecBody {
        cmd: a.cmd,
        timeout_sec: i64::try_from(timeout).unwrap_or(0),
        detach: a.detach,
        env: key_values(&super::split_env_args(&a.env), "--env")?,
        cwd: a.workdir.unwrap_or_default(),
        ..api::ExecBody::default()
    };
    // The daemon enforces the timeout; ours only bounds a daemon that never answers.
    let wait = Duration::from_secs(timeout + 30);
    let path = sb_path(&a.sandbox, "/exec");
    if a.detach {
        let r: api::DetachedResult =
            ctx.client.json(Method::POST, &path, Some(&body), wait).await?;
        if ctx.json {
            print_json(&r)?;
        } else {
            println!("pid: {}", r.pid);
            println!("output: {}", r.output_file);
        }
        return Ok(exit::OK);
    }
    let force = std::env::var("BHATTI_FORCE_STREAM").is_ok_and(|v| v == "1");
    if !ctx.json && (force || std::io::stdout().is_terminal()) {
        return stream(ctx, &path, &body, wait).await;
    }
    let r: api::ExecResult = ctx.client.json(Method::POST, &path, Some(&body), wait).await?;
    if ctx.json {
        print_json(&r)?;
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(r.stdout.as_bytes())?;
        out.flush()?;
        let mut err = std::io::stderr().lock();
        err.write_all(r.stderr.as_bytes())?;
        if let Some(note) = truncation_note(&r) {
            writeln!(err, "{note}")?;
        }
        err.flush()?;
    }
    Ok(code(r.exit_code))
}

/// Said on stderr after a buffered answer the daemon cut, so a partial output is never taken
/// for the whole (the daemon keeps 10 MiB per stream).
fn truncation_note(r: &api::ExecResult) -> Option<String> {
    let cut = match (r.stdout_truncated, r.stderr_truncated) {
        (false, false) => return None,
        (true, false) => "stdout (its beginning kept)",
        (false, true) => "stderr (its end kept)",
        (true, true) => "stdout (its beginning kept) and stderr (its end kept)",
    };
    Some(format!(
        "bhatti: output truncated by the daemon: {cut}; BHATTI_FORCE_STREAM=1 streams all of it"
    ))
}

/// The NDJSON stream: each event's bytes to its stream as it arrives.
async fn stream(ctx: &Ctx, path: &str, body: &api::ExecBody, wait: Duration) -> anyhow::Result<u8> {
    let req = ctx
        .client
        .request(Method::POST, path)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, api::NDJSON)
        .body(full(serde_json::to_vec(body)?))?;
    let deadline = tokio::time::Instant::now() + wait;
    let resp = ctx.client.call(req, wait).await?;
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => anyhow::bail!("exec: no exit status within {}s", wait.as_secs()),
            Ok(None) => anyhow::bail!("exec: the stream ended without an exit status"),
            Ok(Some(frame)) => {
                frame.map_err(|e| anyhow::anyhow!("exec: reading the stream: {e}"))?
            }
        };
        let Ok(data) = frame.into_data() else { continue };
        buf.extend_from_slice(&data);
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<api::ExecEvent>(&line)? {
                api::ExecEvent::Stdout { data } => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(data.as_bytes())?;
                    out.flush()?;
                }
                api::ExecEvent::Stderr { data } => {
                    let mut err = std::io::stderr().lock();
                    err.write_all(data.as_bytes())?;
                    err.flush()?;
                }
                api::ExecEvent::Exit { exit_code } => return Ok(code(exit_code)),
                api::ExecEvent::Error { data } => anyhow::bail!("exec: {data}"),
            }
        }
        if buf.len() > LINE_CAP {
            anyhow::bail!("exec: a stream line over {} MiB", LINE_CAP >> 20);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn remote_codes() {
        assert_eq!((super::code(0), super::code(42), super::code(255)), (0, 42, 255));
        assert_eq!((super::code(-9), super::code(300)), (1, 1));
    }

    #[test]
    fn a_cut_answer_is_said_on_stderr_and_a_whole_one_is_not() {
        let mut r = api::ExecResult {
            exit_code: 0,
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
        };
        assert_eq!(super::truncation_note(&r), None);
        r.stderr_truncated = true;
        let note = super::truncation_note(&r).unwrap_or_default();
        assert!(note.contains("stderr (its end kept)") && !note.contains("stdout"), "{note}");
        r.stdout_truncated = true;
        let note = super::truncation_note(&r).unwrap_or_default();
        assert!(note.contains("stdout (its beginning kept) and stderr"), "{note}");
    }
}
