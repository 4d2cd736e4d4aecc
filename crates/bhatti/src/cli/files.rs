//! `bhatti file read|write|ls`: streamed both ways (the daemon streams to the agent).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use futures_util::TryStreamExt;
use http::{Method, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::AsyncWriteExt;

use super::client::{QUICK, enc, sb_path};
use super::error::{CliError, exit};
use super::{Ctx, print_json};

/// The agent's cap on one file (v1's 100 MiB); stdin is buffered up to it.
const WRITE_CAP: u64 = 100 << 20;
/// The longest wait for the next piece of a transfer.
const IDLE: Duration = Duration::from_secs(60);

/// `bhatti file ...`
#[derive(Debug, Subcommand)]
pub enum FileCommand {
    /// Print a file (or save it with -o).
    Read {
        /// Name, ID or ID prefix.
        sandbox: String,
        /// Absolute path in the guest.
        path: String,
        /// Write to this local file instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Write a file from a local file or stdin (`-` or nothing).
    Write {
        /// Name, ID or ID prefix.
        sandbox: String,
        /// Absolute path in the guest.
        path: String,
        /// Local file, or `-` for stdin (the default).
        source: Option<String>,
        /// Octal mode.
        #[arg(long, default_value = "0644")]
        mode: String,
    },
    /// List a directory.
    Ls {
        /// Name, ID or ID prefix.
        sandbox: String,
        /// Absolute path in the guest.
        path: String,
    },
}

/// Runs a file command.
pub async fn run(ctx: &Ctx, cmd: FileCommand) -> anyhow::Result<u8> {
    match cmd {
        FileCommand::Read { sandbox, path, output } => read(ctx, &sandbox, &path, output).await,
        FileCommand::Write { sandbox, path, source, mode } => {
            write(ctx, &sandbox, &path, source.as_deref(), &mode).await
        }
        FileCommand::Ls { sandbox, path } => ls(ctx, &sandbox, &path).await,
    }
}

fn files_path(sandbox: &str, path: &str, extra: &str) -> String {
    sb_path(sandbox, &format!("/files?path={}{extra}", enc(path)))
}

async fn read(ctx: &Ctx, sandbox: &str, path: &str, output: Option<PathBuf>) -> anyhow::Result<u8> {
    let req = ctx
        .client
        .request(Method::GET, &files_path(sandbox, path, ""))
        .body(super::client::empty())?;
    let resp = ctx.client.call(req, QUICK).await?;
    let mut out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match &output {
        Some(file) => Box::new(
            tokio::fs::File::create(file)
                .await
                .with_context(|| format!("creating {}", file.display()))?,
        ),
        None => Box::new(tokio::io::stdout()),
    };
    let mut body = resp.into_body();
    loop {
        let frame = match tokio::time::timeout(IDLE, body.frame()).await {
            Err(_) => anyhow::bail!("reading {path}: nothing for {}s", IDLE.as_secs()),
            Ok(None) => break,
            Ok(Some(f)) => f.map_err(|e| anyhow::anyhow!("reading {path}: {e}"))?,
        };
        if let Ok(data) = frame.into_data() {
            out.write_all(&data).await?;
        }
    }
    out.flush().await?;
    Ok(exit::OK)
}

/// The source as an open file and its length; stdin goes to a temporary file first (the API
/// needs the length before the body).
async fn open_source(source: Option<&str>) -> anyhow::Result<(tokio::fs::File, u64)> {
    match source {
        Some(local) if local != "-" => {
            let file = tokio::fs::File::open(local)
                .await
                .map_err(|e| anyhow::Error::new(CliError::NotFound(format!("{local}: {e}"))))?;
            let len = file.metadata().await?.len();
            Ok((file, len))
        }
        _ => {
            let tmp = tempfile::tempfile().context("a temporary file for stdin")?;
            let mut tmp = tokio::fs::File::from_std(tmp);
            let mut stdin = tokio::io::AsyncReadExt::take(tokio::io::stdin(), WRITE_CAP + 1);
            let len = tokio::io::copy(&mut stdin, &mut tmp).await.context("reading stdin")?;
            if len > WRITE_CAP {
                anyhow::bail!("stdin is over the {} MiB a file can have", WRITE_CAP >> 20);
            }
            tmp.flush().await?;
            tokio::io::AsyncSeekExt::rewind(&mut tmp).await?;
            Ok((tmp, len))
        }
    }
}

async fn write(
    ctx: &Ctx,
    sandbox: &str,
    path: &str,
    source: Option<&str>,
    mode: &str,
) -> anyhow::Result<u8> {
    let (file, len) = open_source(source).await?;
    if len > WRITE_CAP {
        anyhow::bail!("{len} bytes is over the {} MiB a file can have", WRITE_CAP >> 20);
    }
    let stream = tokio_util::io::ReaderStream::new(file).map_ok(Frame::data);
    let body = StreamBody::new(stream).boxed();
    let req = ctx
        .client
        .request(Method::PUT, &files_path(sandbox, path, &format!("&mode={}", enc(mode))))
        .header(header::CONTENT_LENGTH, len)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(body)?;
    // A 100 MiB upload at a slow agent: bounded, generously.
    let resp = ctx.client.call(req, Duration::from_secs(600)).await?;
    let status: api::StatusBody = super::client::decode(resp).await?;
    if ctx.json {
        print_json(&status)?;
    } else {
        println!("ok");
    }
    Ok(exit::OK)
}

async fn ls(ctx: &Ctx, sandbox: &str, path: &str) -> anyhow::Result<u8> {
    let list: Vec<api::FileInfo> = ctx.client.get(&files_path(sandbox, path, "&ls=true")).await?;
    if ctx.json {
        return print_json(&list).map(|()| exit::OK);
    }
    let width = list.iter().map(|f| f.size.to_string().len()).max().unwrap_or(1);
    for f in &list {
        let kind = if f.is_dir { 'd' } else { '-' };
        println!("{kind}{}  {:>width$}  {}", f.mode, f.size, f.name);
    }
    Ok(exit::OK)
}
