//! The CLI: every command but `serve` is a client of the daemon's HTTP API (over TCP or the
//! local Unix socket), except `user`, which opens the daemon's store directly (v1: no HTTP
//! surface for users). Output is for people unless `--json`, which prints the API's JSON, one
//! document per command. Exit codes: `error::exit`.

mod admin;
mod client;
mod completion;
mod diff;
mod e2b;
mod endpoint;
mod error;
mod exec;
mod files;
mod fork;
mod images;
mod mcp;
mod publish;
mod sandboxes;
mod secrets;
mod setup;
mod share;
mod shell;
mod snapshots;
mod timing;
mod ui;
mod users;
mod volumes;

use std::path::PathBuf;

use clap::{Args, Subcommand};

pub use error::{exit_code, hint};

/// Flags every command takes.
#[derive(Debug, Clone, Default, Args)]
pub struct Global {
    /// The daemon's address: http://host:port or unix:/path/to/api.sock.
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// The API key.
    #[arg(long, global = true, value_name = "KEY", hide_env_values = true)]
    pub token: Option<String>,
    /// Machine output: the API's JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// The daemon's data directory (its socket; `state.db` for `user`).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print where the last HTTP request's time went (dns, connect, tls, server, transfer,
    /// total) on stderr.
    #[arg(long, global = true)]
    pub timing: bool,
}

/// The client commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a sandbox (idempotent by name).
    // Boxed: its flags would make every command as large as it is.
    Create(Box<sandboxes::CreateArgs>),
    /// List sandboxes.
    #[command(visible_alias = "ls")]
    List {
        /// Only sandboxes with this label (k=v; repeat to AND).
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
        /// `wide` adds CPUS MEMORY DISK IMAGE LABELS (v1's), then ID and CREATED.
        #[arg(short = 'o', long = "output", value_name = "FORMAT")]
        output: Option<sandboxes::ListFormat>,
    },
    /// Change a sandbox: rename, labels, keep-hot, egress policy.
    Edit(sandboxes::EditArgs),
    /// Write the CLI's config (~/.bhatti/config.yaml) after checking the key.
    Setup(setup::SetupArgs),
    /// Show one sandbox.
    #[command(visible_alias = "info")]
    Inspect {
        /// Name, ID or ID prefix.
        sandbox: String,
    },
    /// Run a command in a sandbox; exits with its exit code.
    Exec(exec::ExecArgs),
    /// Open an interactive shell (Ctrl+\ detaches; the session keeps running).
    #[command(visible_alias = "sh")]
    Shell(shell::ShellArgs),
    /// Print a share link: a terminal in the browser for anyone holding it (again: a new link,
    /// the old one stops working).
    Share {
        /// Name, ID or ID prefix.
        sandbox: String,
        /// End the link instead, closing every browser session it opened.
        #[arg(long)]
        revoke: bool,
    },
    /// List a sandbox's sessions.
    Ps {
        /// Name, ID or ID prefix.
        sandbox: String,
    },
    /// List a sandbox's listening ports and their proxy URLs.
    Ports {
        /// Name, ID or ID prefix.
        sandbox: String,
    },
    /// Publish a port on the daemon's public proxy under an alias; prints its URL.
    Publish(publish::PublishArgs),
    /// Remove a published port.
    Unpublish {
        /// Name, ID or ID prefix.
        sandbox: String,
        /// The published port.
        #[arg(short, long, value_parser = clap::value_parser!(u16).range(1..))]
        port: u16,
    },
    /// Forward a loopback port on the daemon's host to a port in the sandbox
    /// (`--list`, `--close`).
    Forward(publish::ForwardArgs),
    /// Stop a sandbox (saves its memory to disk).
    Stop {
        /// Name, ID or ID prefix.
        sandbox: String,
    },
    /// Start a stopped sandbox.
    Start {
        /// Name, ID or ID prefix.
        sandbox: String,
        /// Boot from the disk, discarding the saved memory.
        #[arg(long)]
        force: bool,
    },
    /// Destroy a sandbox and its disk.
    #[command(visible_alias = "rm")]
    Destroy {
        /// Name, ID or ID prefix.
        sandbox: String,
        /// Do not ask.
        #[arg(short, long)]
        yes: bool,
    },
    /// What changed in a sandbox's files since it was made (or since a snapshot).
    Diff(diff::DiffArgs),
    /// Read, write and list files in a sandbox.
    #[command(subcommand)]
    File(files::FileCommand),
    /// Images: list, inspect, import a `docker save` tarball, pull from a registry, save a
    /// sandbox's disk, delete.
    #[command(subcommand)]
    Image(images::ImageCommand),
    /// Set, list and delete secrets (given to sandboxes as variables: `create --secret`).
    #[command(subcommand)]
    Secret(secrets::SecretCommand),
    /// Named snapshots: checkpoint a running sandbox, resume it as new sandboxes.
    #[command(subcommand)]
    Snapshot(snapshots::SnapshotCommand),
    /// Clone a running sandbox N ways (copy-on-write: memory, processes, files; each clone
    /// gets its own address, hostname, token and entropy).
    Fork(fork::ForkArgs),
    /// Templates (global): presets for `create --template`.
    #[command(subcommand)]
    Template(snapshots::TemplateCommand),
    /// Persistent volumes and their backups.
    #[command(subcommand)]
    Volume(volumes::VolumeCommand),
    /// Manage users and their keys (opens the daemon's store: run on the daemon's host).
    #[command(subcommand)]
    User(users::UserCommand),
    /// The daemon's status, events and metrics (the admin's key).
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// E2B SDK setup on this host: `e2b cert` makes a local CA and a certificate for the E2B
    /// listener's domain.
    #[command(subcommand)]
    E2b(e2b::E2bCommand),
    /// Serve the Model Context Protocol on stdio: sandboxes as tools for a model (see --help
    /// for how to register it with a client).
    Mcp(mcp::McpArgs),
    /// Show the CLI's and the daemon's versions.
    Version,
    /// Print a shell completion script.
    Completion {
        /// bash, zsh or fish.
        shell: completion::Shell,
    },
}

/// Everything a client command needs.
#[derive(Debug)]
pub struct Ctx {
    client: client::Client,
    json: bool,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Runs a client command; the exit code on success (`exec` passes the remote one through).
pub fn run(global: Global, command: Command) -> anyhow::Result<u8> {
    match command {
        Command::User(cmd) => {
            let dir = endpoint::data_dir(global.data_dir.as_deref(), &env)?;
            return users::run(&dir, cmd, global.json);
        }
        Command::E2b(cmd) => {
            let dir = || endpoint::data_dir(global.data_dir.as_deref(), &env);
            return e2b::run(dir, cmd, global.json);
        }
        Command::Completion { shell } => return completion::print(shell),
        Command::Setup(args) => return setup::run(global.url, global.token, args),
        _ => {}
    }
    let endpoint = endpoint::resolve(
        global.url.as_deref(),
        global.token.as_deref(),
        global.data_dir.as_deref(),
        &env,
    )?;
    let ctx = Ctx { client: client::Client::new(endpoint), json: global.json };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let code = runtime.block_on(dispatch(&ctx, command));
    if global.timing
        && let Some(phases) = ctx.client.timing().phases(std::time::Instant::now())
    {
        eprintln!("{}", timing::line(&phases));
    }
    // Nothing left to wait for (a shell's stdin thread blocks in a read it cannot leave).
    runtime.shutdown_background();
    code
}

async fn dispatch(ctx: &Ctx, command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Create(args) => sandboxes::create(ctx, *args).await,
        Command::List { labels, output } => {
            sandboxes::list(ctx, &labels, output.unwrap_or_default()).await
        }
        Command::Inspect { sandbox } => sandboxes::inspect(ctx, &sandbox).await,
        Command::Edit(args) => sandboxes::edit(ctx, args).await,
        Command::Exec(args) => exec::run(ctx, args).await,
        Command::Shell(args) => shell::run(ctx, args).await,
        Command::Ps { sandbox } => sandboxes::ps(ctx, &sandbox).await,
        Command::Share { sandbox, revoke } => share::run(ctx, &sandbox, revoke).await,
        Command::Ports { sandbox } => sandboxes::ports(ctx, &sandbox).await,
        Command::Publish(args) => publish::publish(ctx, args).await,
        Command::Unpublish { sandbox, port } => publish::unpublish(ctx, &sandbox, port).await,
        Command::Forward(args) => publish::forward(ctx, args).await,
        Command::Stop { sandbox } => sandboxes::stop(ctx, &sandbox).await,
        Command::Start { sandbox, force } => sandboxes::start(ctx, &sandbox, force).await,
        Command::Destroy { sandbox, yes } => sandboxes::destroy(ctx, &sandbox, yes).await,
        Command::Diff(args) => diff::run(ctx, args).await,
        Command::File(cmd) => files::run(ctx, cmd).await,
        Command::Image(cmd) => images::run(ctx, cmd).await,
        Command::Secret(cmd) => secrets::run(ctx, cmd).await,
        Command::Snapshot(cmd) => snapshots::snapshot(ctx, cmd).await,
        Command::Fork(args) => fork::fork(ctx, args).await,
        Command::Template(cmd) => snapshots::template(ctx, cmd).await,
        Command::Volume(cmd) => volumes::run(ctx, cmd).await,
        Command::Version => sandboxes::version(ctx).await,
        Command::Admin(cmd) => admin::run(ctx, cmd).await,
        Command::Mcp(args) => mcp::run(ctx, args).await,
        Command::User(_) | Command::E2b(_) | Command::Completion { .. } | Command::Setup(_) => {
            Ok(error::exit::OK)
        }
    }
}

/// Prints a value as pretty JSON on stdout.
fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Splits `KEY=VAL` arguments.
/// `--env` values as v1 takes them: `-e A=1,B=2` is two variables. A comma starts a new
/// variable only where `NAME=` follows it, so a value with commas (`-e PATH=/a,/b`) stays whole;
/// each `-e` may also carry one variable.
fn split_env_args(items: &[String]) -> Vec<String> {
    let starts_variable = |rest: &str| {
        rest.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !name.as_bytes()[0].is_ascii_digit()
        })
    };
    let mut out = Vec::new();
    for item in items {
        let mut current = String::new();
        for (i, part) in item.split(',').enumerate() {
            if i > 0 && starts_variable(part) {
                out.push(std::mem::take(&mut current));
            } else if i > 0 {
                current.push(',');
            }
            current.push_str(part);
        }
        out.push(current);
    }
    out
}

fn key_values(
    items: &[String],
    what: &str,
) -> Result<std::collections::BTreeMap<String, String>, error::CliError> {
    items
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(error::CliError::Usage(format!("{what} {kv:?}: use KEY=VALUE"))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_arguments_split_as_v1() {
        let table: [(&str, &[&str], &[&str]); 6] = [
            ("two in one", &["A=1,B=2"], &["A=1", "B=2"]),
            ("repeated", &["A=1", "B=2"], &["A=1", "B=2"]),
            ("a comma in a value", &["PATH=/a,/b"], &["PATH=/a,/b"]),
            ("a comma, then a variable", &["L=x,y,B_2=3"], &["L=x,y", "B_2=3"]),
            ("a digit does not start a name", &["A=1,2=3"], &["A=1,2=3"]),
            ("an empty value", &["A=,B="], &["A=", "B="]),
        ];
        for (name, args, want) in table {
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            assert_eq!(split_env_args(&args), want, "{name}");
        }
        let vars = key_values(&split_env_args(&["A=1,B=2".into()]), "--env").unwrap();
        assert_eq!(vars.len(), 2);
    }
}
