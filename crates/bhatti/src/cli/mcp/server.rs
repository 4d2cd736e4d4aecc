//! The MCP server: the tool definitions (names, descriptions, argument schemas from
//! `tools.rs`'s types) and how a call's outcome becomes a tool result. A failure is a result
//! with `isError: true` and the reason as text; only arguments that do not parse at all (a
//! number where a string goes) are JSON-RPC errors, which rmcp answers itself.

use std::time::Instant;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, tool, tool_handler, tool_router};
use serde_json::Value;

use super::tools::{self, ToolError};
use crate::cli::client::Client;

/// `bhatti mcp`'s server: a client of one daemon with one key.
#[derive(Debug, Clone)]
pub struct Bhatti {
    client: Client,
    tool_router: ToolRouter<Self>,
}

/// A call's outcome as MCP's result. Logs the tool's name, how it went and how long it took;
/// never its arguments (file contents, environment values) or its output.
fn result(tool: &str, started: Instant, outcome: Result<Value, ToolError>) -> CallToolResult {
    let ms = started.elapsed().as_millis();
    match outcome {
        Ok(value) => {
            tracing::info!(tool, ms, "tool call done");
            CallToolResult::structured(value)
        }
        Err(e) => {
            let message = e.to_string();
            tracing::info!(tool, ms, error = %message, "tool call failed");
            CallToolResult::error(vec![ContentBlock::text(message)])
        }
    }
}

#[tool_router]
impl Bhatti {
    /// A server talking to the daemon through `client`.
    pub fn new(client: Client) -> Self {
        Bhatti { client, tool_router: Self::tool_router() }
    }

    #[tool(
        description = "Create a sandbox: a Linux microVM with its own disk and network. Returns \
                       the sandbox (its name, id, status, ip). With a name that is taken by one \
                       of your sandboxes, returns that one unchanged."
    )]
    async fn create_sandbox(
        &self,
        Parameters(args): Parameters<tools::CreateSandboxArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let started = Instant::now();
        Ok(result("create_sandbox", started, tools::create_sandbox(&self.client, args).await))
    }

    #[tool(description = "List your sandboxes with their status and thermal state.")]
    async fn list_sandboxes(&self) -> Result<CallToolResult, ErrorData> {
        let started = Instant::now();
        Ok(result("list_sandboxes", started, tools::list_sandboxes(&self.client).await))
    }

    #[tool(description = "Destroy a sandbox: its VM, disk and published ports are gone.")]
    async fn destroy_sandbox(
        &self,
        Parameters(args): Parameters<tools::DestroySandboxArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let started = Instant::now();
        Ok(result("destroy_sandbox", started, tools::destroy_sandbox(&self.client, args).await))
    }

    #[tool(description = "Run a command in a sandbox and wait for it: a string runs under \
                          `sh -c`, an array runs as argv. Returns exit_code, stdout (its first \
                          64 KiB) and stderr (its last 64 KiB); a non-zero exit code is a normal \
                          result. A command still running after timeout_seconds (default 60, at \
                          most 600) is killed and the call fails saying so. No stdin.")]
    async fn exec(
        &self,
        Parameters(args): Parameters<tools::ExecArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let started = Instant::now();
        Ok(result("exec", started, tools::exec(&self.client, args).await))
    }

    #[tool(description = "Read a file in a sandbox: UTF-8 text as it is (encoding \"utf-8\"), \
                          anything else as base64 (encoding \"base64\"); at most its first 1 MiB \
                          (truncated says so).")]
    async fn read_file(
        &self,
        Parameters(args): Parameters<tools::ReadFileArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let started = Instant::now();
        Ok(result("read_file", started, tools::read_file(&self.client, args).await))
    }

    #[tool(description = "Write a file in a sandbox, replacing it whole: content is text, or \
                          base64 with base64: true (binary files); mode is octal (default \
                          \"0644\"). At most 16 MiB.")]
    async fn write_file(
        &self,
        Parameters(args): Parameters<tools::WriteFileArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let started = Instant::now();
        Ok(result("write_file", started, tools::write_file(&self.client, args).await))
    }

    #[tool(description = "Publish a port a server listens on in a sandbox and return its URL. \
                          On a daemon without a public proxy the URL is its authenticated proxy \
                          (public: false): requests need your API key as a bearer token.")]
    async fn publish_port(
        &self,
        Parameters(args): Parameters<tools::PublishPortArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let started = Instant::now();
        Ok(result("publish_port", started, tools::publish_port(&self.client, args).await))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Bhatti {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("bhatti", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "bhatti runs Linux microVM sandboxes. create_sandbox makes one (note its name), \
                 exec runs commands in it, read_file/write_file move files, publish_port gives \
                 a URL for a server in it, destroy_sandbox removes it. Every sandbox belongs to \
                 the API key this server was started with.",
            )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// The tools' names (the Python client's test checks the same list).
    const TOOL_NAMES: [&str; 7] = [
        "create_sandbox",
        "list_sandboxes",
        "destroy_sandbox",
        "exec",
        "read_file",
        "write_file",
        "publish_port",
    ];

    fn server() -> Bhatti {
        let endpoint = crate::cli::endpoint::resolve(
            Some("http://127.0.0.1:9"),
            Some("bht_secret"),
            None,
            &|_| None,
        )
        .unwrap();
        Bhatti::new(Client::new(endpoint))
    }

    #[test]
    fn tools_are_listed_with_object_schemas() {
        let tools = server().tool_router.list_all();
        let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        names.sort_unstable();
        let mut want = TOOL_NAMES.to_vec();
        want.sort_unstable();
        assert_eq!(names, want);
        for tool in &tools {
            assert_eq!(tool.input_schema.get("type").and_then(|t| t.as_str()), Some("object"));
            assert!(tool.description.as_deref().is_some_and(|d| !d.is_empty()), "{}", tool.name);
        }
        let exec = tools.iter().find(|t| t.name == "exec").unwrap();
        let required = exec.input_schema.get("required").unwrap();
        assert_eq!(required, &serde_json::json!(["sandbox", "command"]));
    }

    #[test]
    fn the_server_never_shows_its_key() {
        let debug = format!("{:?}", server());
        assert!(!debug.contains("bht_secret"), "{debug}");
    }

    #[tokio::test]
    async fn an_unreachable_daemon_is_a_tool_error() {
        let s = server();
        let out = s.list_sandboxes().await.unwrap();
        assert_eq!(out.is_error, Some(true));
        let text = format!("{:?}", out.content);
        assert!(text.contains("cannot reach the daemon at http://127.0.0.1:9"), "{text}");
        assert!(!text.contains("bht_secret"), "{text}");
    }
}
