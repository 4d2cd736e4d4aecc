//! The real lohar in test mode for the client suites.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use agent::{AgentClient, Endpoint};

pub const TOKEN: &str = "feedfacefeedfacefeedfacefeedface";

/// The lohar binary: `LOHAR_BIN`, or the one cargo built next to this test's target dir.
pub fn lohar_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("LOHAR_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).unwrap().join("lohar");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build -p lohar` first or set LOHAR_BIN",
        bin.display()
    );
    bin
}

pub struct Lohar {
    pub process: testkit::TestLohar,
    pub dir: PathBuf,
    /// TCP control and forward addresses, when started with TCP listeners.
    pub tcp: Vec<String>,
}

impl Lohar {
    pub fn start() -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), None, false)
    }

    pub fn start_in(dir: tempfile::TempDir, token: Option<&str>, tcp: bool) -> Self {
        let config = token.map(|t| format!(r#"{{"token":"{t}"}}"#));
        let env: &[(&str, &str)] = if tcp {
            &[("LOHAR_TCP_CONTROL", "127.0.0.1:0"), ("LOHAR_TCP_FORWARD", "127.0.0.1:0")]
        } else {
            &[]
        };
        let options = testkit::Options {
            config: config.as_deref().map(str::as_bytes),
            env,
            echo_stderr: false,
        };
        let process = testkit::TestLohar::start(&lohar_bin(), dir, options);
        let tcp = ["LOHAR_TCP_CONTROL", "LOHAR_TCP_FORWARD"]
            .iter()
            .filter_map(|v| process.tcp.get(*v).cloned())
            .collect();
        Lohar { dir: process.dir().to_owned(), process, tcp }
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint::unix(self.process.control(), self.process.forward())
    }

    pub fn client(&self) -> AgentClient {
        AgentClient::new(self.endpoint(), None)
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// Stops the agent but keeps its directory for a successor.
    pub fn stop(self) -> tempfile::TempDir {
        self.process.stop().1
    }
}
