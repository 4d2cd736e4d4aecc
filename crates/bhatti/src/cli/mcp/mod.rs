//! `bhatti mcp`: the Model Context Protocol over stdio, so a model can create sandboxes, run
//! commands and move files in them as tools. A client of the daemon's HTTP API like every other
//! command (the same address and key lookup), so every tool acts as the key's user. stdout
//! carries the protocol alone; logs go to stderr.

mod server;
mod tools;

use clap::Args;
use rmcp::ServiceExt;

use super::Ctx;
use super::error::exit;

/// How to register the server, shown by `bhatti mcp --help`.
const REGISTER: &str = r#"Register it with an MCP client that starts stdio servers (Claude Desktop's
claude_desktop_config.json, Claude Code, Cursor, the `mcp` Python SDK, ...):

  {
    "mcpServers": {
      "bhatti": {
        "command": "bhatti",
        "args": ["mcp"],
        "env": {
          "BHATTI_URL": "http://127.0.0.1:8080",
          "BHATTI_TOKEN": "bht_..."
        }
      }
    }
  }

The daemon and the key are found as for every command: --url/--token (put them in "args"),
then the config file (BHATTI_CONFIG, else /etc/bhatti/config.yaml and ~/.bhatti/config.yaml
as `bhatti setup` writes it; it wins over the environment, as in v1), then BHATTI_URL and
BHATTI_TOKEN, then the local socket <data_dir>/api.sock. Every tool acts as that key's user.
Use the full path of `bhatti` when the client does not start it with your PATH.

Tools: create_sandbox, list_sandboxes, destroy_sandbox, exec (a shell string or an argv,
timeout_seconds default 60, at most 600), read_file, write_file, publish_port.

stdout carries the protocol; logs go to stderr (BHATTI_MCP_LOG=info or debug for more;
default warn): tool names, outcomes and times, never the key, arguments or output."#;

/// `bhatti mcp`.
#[derive(Debug, Args)]
#[command(after_long_help = REGISTER)]
pub struct McpArgs {}

/// Logs to stderr: stdout is the protocol. rmcp's own debug and trace lines print whole
/// messages (a file's content, an env value, a command's output), so it is held at info
/// whatever the level asked.
fn init_logging() {
    let level = std::env::var("BHATTI_MCP_LOG").unwrap_or_else(|_| "warn".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let filter = match "rmcp=info".parse() {
        Ok(cap) => filter.add_directive(cap),
        Err(_) => filter,
    };
    // A subscriber already installed (none here) would only mean no logs: not worth failing.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// Serves MCP on stdin/stdout until the client closes stdin.
pub async fn run(ctx: &Ctx, _args: McpArgs) -> anyhow::Result<u8> {
    init_logging();
    tracing::info!(daemon = %ctx.client.endpoint().display(), "bhatti mcp: serving on stdio");
    let service = server::Bhatti::new(ctx.client.clone())
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| anyhow::anyhow!("MCP handshake: {e}"))?;
    let reason = service.waiting().await?;
    tracing::info!(?reason, "bhatti mcp: done");
    Ok(exit::OK)
}
