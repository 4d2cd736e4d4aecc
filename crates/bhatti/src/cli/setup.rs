//! `bhatti setup`: writes the CLI's config (`~/.bhatti/config.yaml`, 0600 in a 0700
//! directory, v1's keys `api_url` and `auth_token`) after checking the key against the daemon
//! with an authenticated call (`GET /sandboxes`: `/health` would accept any key).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;

use clap::Args;

use super::client::Client;
use super::endpoint::{Endpoint, invoking_home, parse_url};
use super::error::{CliError, exit};

/// `bhatti setup` flags.
#[derive(Debug, Args)]
pub struct SetupArgs {
    /// The daemon's address (http://host:port or unix:/path/api.sock).
    #[arg(long = "api-url", value_name = "URL")]
    pub api_url: Option<String>,
    /// The API key (read from stdin when not given).
    #[arg(long = "api-key", value_name = "KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// The terminal with echo off until dropped (the key typed at the prompt is never shown).
pub(super) struct NoEcho(rustix::termios::Termios);

impl NoEcho {
    /// `None` when stdin is no terminal (a pipe echoes nothing anyway).
    pub(super) fn enable() -> Option<Self> {
        let stdin = std::io::stdin();
        let orig = rustix::termios::tcgetattr(&stdin).ok()?;
        let mut quiet = orig.clone();
        quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
        // Keep the newline visible so the cursor moves on after the Enter.
        quiet.local_modes.insert(rustix::termios::LocalModes::ECHONL);
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &quiet).ok()?;
        Some(NoEcho(orig))
    }
}

impl Drop for NoEcho {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.0,
        );
    }
}

/// Reads the key from stdin: one line, with the terminal's echo off.
fn read_key() -> std::io::Result<String> {
    eprint!("API key: ");
    let _quiet = NoEcho::enable();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(line)
}

/// Runs `setup`: `--url`/`--token` (global) or `--api-url`/`--api-key`; a missing key is read
/// from stdin (one line, never echoed back).
pub fn run(url: Option<String>, token: Option<String>, args: SetupArgs) -> anyhow::Result<u8> {
    let url = args.api_url.or(url).unwrap_or_else(|| "http://localhost:8080".into());
    let key = match args.api_key.or(token) {
        Some(k) => k,
        None => read_key()?,
    };
    let key = key.trim().to_owned();
    if key.is_empty() {
        return Err(CliError::Usage("no API key given".into()).into());
    }
    let endpoint = Endpoint { target: parse_url(&url)?, token: Some(key.clone()) };
    let client = Client::new(endpoint);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // An authenticated call: a wrong key fails here, before anything is written.
    runtime.block_on(client.get::<Vec<api::Sandbox>>("/sandboxes"))?;
    let home = invoking_home(&|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .ok_or_else(|| CliError::Usage("no home directory (HOME is not set)".into()))?;
    let dir: PathBuf = home.join(".bhatti");
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
    let path = dir.join("config.yaml");
    let tmp = dir.join("config.yaml.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(format!("api_url: {url}\nauth_token: {key}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    println!("wrote {} (the key works against {url})", path.display());
    Ok(exit::OK)
}
