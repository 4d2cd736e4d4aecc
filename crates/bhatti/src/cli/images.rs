//! `bhatti image list|inspect|import|pull|save|delete` (host.md section 5; v1's subcommands,
//! `--json` everywhere). An import streams the tarball (never read whole into memory) with a
//! byte count on a terminal; a pull follows its task until it ends.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Subcommand;
use futures_util::TryStreamExt;
use http::{Method, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use super::client::{QUICK, enc, sb_path};
use super::error::{CliError, exit};
use super::{Ctx, print_json, ui};

/// `bhatti image ...`
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// List the images you can boot (yours, shared with you, global).
    #[command(visible_alias = "ls")]
    List,
    /// Show one image.
    #[command(visible_alias = "get")]
    Inspect {
        /// The image's name.
        name: String,
    },
    /// Import a `docker save` tarball (`--tar`), streamed to the daemon.
    Import {
        /// The image reference (names the image when `--name` is not given).
        reference: Option<String>,
        /// The image's name.
        #[arg(long)]
        name: Option<String>,
        /// The tarball (`docker save -o image.tar <ref>`).
        #[arg(long, value_name = "FILE")]
        tar: Option<PathBuf>,
    },
    /// Pull an image from an OCI registry (the daemon converts it); follows the task.
    Pull {
        /// The reference: `alpine:3.20`, `registry:5000/x:tag`, `http://127.0.0.1:5000/x:tag`.
        reference: String,
        /// The image's name (default: the reference's last path segment, `:` -> `-`).
        #[arg(long)]
        name: Option<String>,
        /// Registry credentials, `user:token`.
        #[arg(long, value_name = "USER:TOKEN", hide_env_values = true)]
        auth: Option<String>,
    },
    /// Save a sandbox's disk as an image.
    Save {
        /// Name, ID or ID prefix of the sandbox.
        sandbox: String,
        /// The image's name.
        #[arg(long)]
        name: String,
    },
    /// Delete one of your images.
    #[command(visible_alias = "rm")]
    Delete {
        /// The image's name.
        name: String,
    },
}

/// Runs an image command.
pub async fn run(ctx: &Ctx, cmd: ImageCommand) -> anyhow::Result<u8> {
    match cmd {
        ImageCommand::List => list(ctx).await,
        ImageCommand::Inspect { name } => inspect(ctx, &name).await,
        ImageCommand::Import { reference, name, tar } => {
            import(ctx, reference.as_deref(), name, tar).await
        }
        ImageCommand::Pull { reference, name, auth } => pull(ctx, &reference, name, auth).await,
        ImageCommand::Save { sandbox, name } => save(ctx, &sandbox, &name).await,
        ImageCommand::Delete { name } => delete(ctx, &name).await,
    }
}

/// The default name for a reference: its last path segment, tag joined with `-`
/// (`docker.io/library/alpine:3.20` -> `alpine-3.20`), without a digest.
pub fn name_from_reference(reference: &str) -> String {
    let no_scheme = reference.split_once("://").map_or(reference, |(_, r)| r);
    let no_digest = no_scheme.split('@').next().unwrap_or_default();
    let last = no_digest.rsplit('/').next().unwrap_or_default();
    last.replace(':', "-")
}

async fn list(ctx: &Ctx) -> anyhow::Result<u8> {
    let images: Vec<api::Image> = ctx.client.get("/images").await?;
    if ctx.json {
        return print_json(&images).map(|()| exit::OK);
    }
    let rows: Vec<Vec<String>> = images
        .iter()
        .map(|i| {
            let scope = if i.user_id.is_empty() { "admin" } else { "user" };
            vec![
                i.id.clone(),
                i.name.clone(),
                i.source.clone(),
                format!("{} MB", i.size_mb),
                scope.to_owned(),
            ]
        })
        .collect();
    print!("{}", ui::table(&["ID", "NAME", "SOURCE", "SIZE", "SCOPE"], &rows));
    Ok(exit::OK)
}

async fn inspect(ctx: &Ctx, name: &str) -> anyhow::Result<u8> {
    let image: api::Image =
        ctx.client.get(&format!("/images/{}", enc(name).replace('/', "%2F"))).await?;
    if ctx.json {
        return print_json(&image).map(|()| exit::OK);
    }
    println!("Name:     {}", image.name);
    println!("ID:       {}", image.id);
    println!("Source:   {}", image.source);
    println!("Size:     {} MB", image.size_mb);
    println!("Scope:    {}", if image.user_id.is_empty() { "admin (global)" } else { "user" });
    if !image.oci_digest.is_empty() {
        println!("Digest:   {}", image.oci_digest);
    }
    println!("Created:  {}", image.created_at);
    Ok(exit::OK)
}

async fn import(
    ctx: &Ctx,
    reference: Option<&str>,
    name: Option<String>,
    tar: Option<PathBuf>,
) -> anyhow::Result<u8> {
    let Some(tar) = tar else {
        return Err(CliError::Usage(
            "give the tarball with --tar (make one with `docker save -o image.tar <ref>`)".into(),
        )
        .into());
    };
    let name = match (name, reference) {
        (Some(n), _) => n,
        (None, Some(r)) => name_from_reference(r),
        (None, None) => return Err(CliError::Usage("--name is required with --tar".into()).into()),
    };
    let file = tokio::fs::File::open(&tar)
        .await
        .map_err(|e| anyhow::Error::new(CliError::NotFound(format!("{}: {e}", tar.display()))))?;
    let len = file.metadata().await?.len();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&sent);
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).map_ok(move |b| {
        counter.fetch_add(b.len() as u64, Ordering::Relaxed);
        Frame::data(b)
    });
    let body = StreamBody::new(stream).boxed();
    let req = ctx
        .client
        .request(Method::POST, &format!("/images/import?name={}", enc(&name)))
        .header(header::CONTENT_LENGTH, len)
        .header(header::CONTENT_TYPE, "application/x-tar")
        .body(body)?;
    let progress = (!ctx.json && ui::stderr_tty()).then(|| {
        let (sent, name) = (Arc::clone(&sent), name.clone());
        tokio::spawn(async move {
            loop {
                let n = sent.load(Ordering::Relaxed);
                if n >= len {
                    eprint!("\r\x1b[2Kconverting image/{name}...");
                } else {
                    eprint!("\r\x1b[2Kuploading {} / {} MB", n >> 20, len >> 20);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    });
    // Upload and conversion: a large image takes minutes.
    let answer = ctx.client.call(req, Duration::from_secs(3600)).await;
    if let Some(task) = progress {
        task.abort();
        eprint!("\r\x1b[2K");
    }
    let imported: api::Imported = super::client::decode(answer?).await?;
    if ctx.json {
        print_json(&imported)?;
    } else {
        println!("image/{} imported ({} MB)", imported.name, imported.size_mb);
    }
    Ok(exit::OK)
}

async fn pull(
    ctx: &Ctx,
    reference: &str,
    name: Option<String>,
    auth: Option<String>,
) -> anyhow::Result<u8> {
    let name = name.unwrap_or_else(|| name_from_reference(reference));
    let body = api::PullRequest { reference: reference.to_owned(), name: name.clone(), auth };
    let started: api::PullStarted =
        ctx.client.json(Method::POST, "/images/pull", Some(&body), QUICK).await?;
    if started.status == "exists" {
        if ctx.json {
            print_json(&started)?;
        } else {
            println!("image/{} is up to date ({})", started.image, started.digest);
        }
        return Ok(exit::OK);
    }
    let path = format!("/tasks/{}", enc(&started.task_id));
    let tty = !ctx.json && ui::stderr_tty();
    let mut last = String::new();
    let task = loop {
        let task: api::Task = ctx.client.get(&path).await?;
        // Every step seen is shown (a quick pull may be done at the first look).
        if task.progress != last && !task.progress.is_empty() {
            if tty {
                eprint!("\r\x1b[2K{}", task.progress);
            } else if !ctx.json {
                eprintln!("{}", task.progress);
            }
            last = task.progress.clone();
        }
        if task.status != "running" {
            break task;
        }
        tokio::time::sleep(Duration::from_millis(if tty { 500 } else { 1000 })).await;
    };
    if tty {
        eprint!("\r\x1b[2K");
    }
    if ctx.json {
        print_json(&task)?;
    }
    if task.status == "failed" {
        let hint = if task.error.contains("401") || task.error.contains("unauthorized") {
            " (a private image? try --auth user:token, or `docker pull` + `bhatti image import`)"
        } else {
            ""
        };
        return Err(anyhow::anyhow!("pull failed: {}{hint}", task.error));
    }
    if !ctx.json {
        let result: Option<api::PullResult> = serde_json::from_str(&task.result).ok();
        let size = result.map(|r| r.size_mb).unwrap_or_default();
        println!("image/{name} pulled ({size} MB)");
    }
    Ok(exit::OK)
}

async fn save(ctx: &Ctx, sandbox: &str, name: &str) -> anyhow::Result<u8> {
    let body = api::SaveImageRequest { name: name.to_owned() };
    let _spinner = (!ctx.json).then(|| ui::Spinner::start(format!("saving image/{name}")));
    let image: api::Image = ctx
        .client
        .json(
            Method::POST,
            &sb_path(sandbox, "/save-image"),
            Some(&body),
            Duration::from_secs(1800),
        )
        .await?;
    drop(_spinner);
    if ctx.json {
        print_json(&image)?;
    } else {
        println!("image/{} saved from sandbox/{sandbox} ({} MB)", image.name, image.size_mb);
    }
    Ok(exit::OK)
}

async fn delete(ctx: &Ctx, name: &str) -> anyhow::Result<u8> {
    let status: api::StatusBody = ctx
        .client
        .json::<_, ()>(
            Method::DELETE,
            &format!("/images/{}", enc(name).replace('/', "%2F")),
            None,
            QUICK,
        )
        .await?;
    if ctx.json {
        print_json(&status)?;
    } else {
        println!("image/{name} deleted");
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_references() {
        for (reference, want) in [
            ("alpine", "alpine"),
            ("alpine:3.20", "alpine-3.20"),
            ("docker.io/library/alpine:3.20", "alpine-3.20"),
            ("127.0.0.1:5000/x/busy:1", "busy-1"),
            ("http://127.0.0.1:5000/busy:1", "busy-1"),
            ("ghcr.io/a/b@sha256:abc", "b"),
        ] {
            assert_eq!(name_from_reference(reference), want, "{reference}");
        }
    }
}
