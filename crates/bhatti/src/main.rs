//! `bhatti`: the daemon (`bhatti serve`) and the CLI (every other command), in one binary.
//! `anyhow` lives here only, at the binary's edge; the libraries return typed errors.

#![forbid(unsafe_code)]

mod cli;
mod config;
mod logging;
mod serve;

use clap::{Parser, Subcommand};

/// bhatti runs AI coding agents and untrusted code in real Linux microVMs.
#[derive(Debug, Parser)]
#[command(name = "bhatti", version, about)]
struct Cli {
    #[command(flatten)]
    global: cli::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: the HTTP API, the engine, the thermal manager.
    Serve,
    #[command(flatten)]
    Client(cli::Command),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve => serve().map(|()| 0),
        Command::Client(command) => cli::run(cli.global, command),
    };
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("bhatti: {e:#}");
            if let Some(hint) = cli::hint(&e) {
                eprintln!("hint: {hint}");
            }
            std::process::ExitCode::from(cli::exit_code(&e))
        }
    }
}

fn serve() -> anyhow::Result<()> {
    let config = config::Config::load()?;
    logging::init(config.log_format, &config.log_level)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve::run(config))
}
