//! `bhatti fork <sandbox> -n N [--name a --name b]` and `bhatti create --from <sandbox>`:
//! copy-on-write clones of a running sandbox (`POST /sandboxes/:id/fork`).

use std::time::Duration;

use clap::Args;
use http::Method;

use super::client::sb_path;
use super::error::exit;
use super::ui::{Spinner, cache_edit};
use super::{Ctx, print_json};

/// A fork restores N clones; under TCG that is seconds.
const FORK: Duration = Duration::from_secs(600);

/// `bhatti fork`.
#[derive(Debug, Args)]
pub struct ForkArgs {
    /// The sandbox to clone (hot or warm; one that sleeps is woken first).
    sandbox: String,
    /// How many clones (1 to 16).
    #[arg(short = 'n', long = "count", default_value_t = 1)]
    count: u32,
    /// The clones' names, one per clone (repeatable; `<sandbox>-<6 hex>` when left out).
    #[arg(long = "name", value_name = "NAME")]
    names: Vec<String>,
}

/// Asks the daemon for the clones and answers them.
async fn fork_request(
    ctx: &Ctx,
    sandbox: &str,
    count: u32,
    names: Vec<String>,
) -> anyhow::Result<Vec<api::Sandbox>> {
    let body = api::ForkRequest { count, names };
    let what = if count == 1 { "a clone".to_owned() } else { format!("{count} clones") };
    let spinner = Spinner::start(format!("forking {sandbox} into {what}"));
    let clones: Vec<api::Sandbox> =
        ctx.client.json(Method::POST, &sb_path(sandbox, "/fork"), Some(&body), FORK).await?;
    drop(spinner);
    for clone in &clones {
        cache_edit(&clone.name, true);
    }
    Ok(clones)
}

/// `bhatti fork <sandbox> -n N`: the clones (a JSON array with `--json`).
pub async fn fork(ctx: &Ctx, a: ForkArgs) -> anyhow::Result<u8> {
    let clones = fork_request(ctx, &a.sandbox, a.count, a.names).await?;
    if ctx.json {
        return print_json(&clones).map(|()| exit::OK);
    }
    for clone in &clones {
        let ip = if clone.ip.is_empty() { "-" } else { &clone.ip };
        println!("sandbox/{} forked from {} ({}, {ip})", clone.name, a.sandbox, clone.id);
    }
    Ok(exit::OK)
}

/// `bhatti create --from <sandbox> [--name x]`: a fork of one (the sandbox object with
/// `--json`, as `create` prints).
pub async fn create_from(ctx: &Ctx, from: &str, name: Option<String>) -> anyhow::Result<u8> {
    let clones = fork_request(ctx, from, 1, name.into_iter().collect()).await?;
    let Some(clone) = clones.into_iter().next() else {
        anyhow::bail!("the daemon answered no clone");
    };
    if ctx.json {
        return print_json(&clone).map(|()| exit::OK);
    }
    println!(
        "sandbox/{} created from {from} ({} vCPU, {} MB)",
        clone.name, clone.cpus, clone.memory_mb
    );
    println!("  ID:    {}", clone.id);
    println!("  IP:    {}", if clone.ip.is_empty() { "-" } else { &clone.ip });
    println!("  Shell: bhatti shell {}", clone.name);
    Ok(exit::OK)
}
