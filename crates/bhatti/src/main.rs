//! `bhatti`: the daemon (`bhatti serve`) and, in later versions, the CLI, in one binary.
//! `anyhow` lives here only, at the binary's edge; the libraries return typed errors.

mod config;
mod logging;
mod serve;

use clap::{Parser, Subcommand};

/// bhatti runs AI coding agents and untrusted code in real Linux microVMs.
#[derive(Debug, Parser)]
#[command(name = "bhatti", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: the HTTP API, the engine, the thermal manager.
    Serve,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bhatti: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve => {
            let config = config::Config::load()?;
            logging::init(config.log_format, &config.log_level)?;
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(serve::run(config))
        }
    }
}
