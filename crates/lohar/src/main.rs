//! `lohar`: the guest agent, PID 1 in every bhatti sandbox.
//!
//! Modes, chosen at start:
//! - `LOHAR_TEST=1`: test mode. Listens on the Unix sockets `LOHAR_SOCK` (control) and
//!   `LOHAR_FWD_SOCK` (forward), runs the same handlers as in the VM, does no PID 1 work.
//!   `LOHAR_CONFIG` may name a `config.json` (token, env, init) so auth and the init session
//!   can be tested too. `LOHAR_BOOT_PROFILE` may name a boot profile script (the VM's
//!   `/etc/bhatti/init.sh`), with `LOHAR_BOOT_PROFILE_TIMEOUT_MS` in place of its 30 s.
//! - otherwise the PID 1 agent, which refuses to run unless it really is PID 1.

mod activity;
mod auth;
mod boot_profile;
mod config;
mod conn;
mod exec;
mod files;
mod forward;
mod guest_setup;
mod identity;
mod netif;
mod pid1;
mod pipes;
mod pty;
mod reaper;
mod reply;
mod ring;
mod rootfs;
mod server;
mod session;
mod spawn;
mod tcp_reset;
mod token;
mod watch;

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use config::{Agent, Mode};

use server::{Listener, Port};

fn main() -> ExitCode {
    if std::env::var_os("LOHAR_TEST").is_some_and(|v| v == "1") {
        return test_mode();
    }
    if std::process::id() != 1 {
        // v1 learned this the hard way: the PID 1 path powers the machine off on shutdown.
        eprintln!(
            "lohar: refusing to run: lohar is the init of a bhatti sandbox VM and must be PID 1 \
             (set LOHAR_TEST=1 with LOHAR_SOCK and LOHAR_FWD_SOCK for test mode)"
        );
        return ExitCode::from(2);
    }
    pid1::run()
}

fn test_mode() -> ExitCode {
    // Before any thread exists, so every thread inherits the mask and only the reaper loop
    // receives SIGCHLD/SIGTERM.
    if let Err(e) = reaper::block_signals() {
        eprintln!("lohar: cannot block signals: {e}");
        return ExitCode::from(1);
    }
    let (Some(control), Some(forward)) =
        (std::env::var_os("LOHAR_SOCK"), std::env::var_os("LOHAR_FWD_SOCK"))
    else {
        eprintln!("LOHAR_SOCK and LOHAR_FWD_SOCK required");
        return ExitCode::from(1);
    };
    let (control, forward) = (PathBuf::from(control), PathBuf::from(forward));
    let loaded = match std::env::var_os("LOHAR_CONFIG") {
        Some(path) => config::load(path.as_ref()),
        None => Err(config::ConfigError::Missing("LOHAR_CONFIG".into())),
    };
    // LOHAR_REQUIRE_TOKEN=1 applies the VM's fail-closed rule, so tests can watch it.
    let require_token = std::env::var_os("LOHAR_REQUIRE_TOKEN").is_some_and(|v| v == "1");
    let config = match config::decide(Mode::Test, require_token, loaded) {
        Ok(config) => config,
        Err(refusal) if require_token => {
            return serve_nothing(&refusal);
        }
        Err(refusal) => {
            eprintln!("lohar: {refusal}");
            return ExitCode::from(1);
        }
    };
    // Orphans of our commands are re-parented to us and reaped, as they would be under PID 1.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("lohar: cannot become a subreaper: {e}");
    }
    let listen = |path: &PathBuf| {
        let _ = std::fs::remove_file(path);
        UnixListener::bind(path).map_err(|e| format!("listen {}: {e}", path.display()))
    };
    let (control_listener, forward_listener) = match (listen(&control), listen(&forward)) {
        (Ok(c), Ok(f)) => (c, f),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("lohar: {e}");
            return ExitCode::from(1);
        }
    };
    let tcp = match tcp_listeners() {
        Ok(tcp) => tcp,
        Err(e) => {
            eprintln!("lohar: {e}");
            return ExitCode::from(1);
        }
    };
    let agent = Arc::new(Agent::new(config, Mode::Test));
    if !agent.config.init.is_empty()
        && let Err(e) = session::start_init(&agent.sessions, &agent.config)
    {
        eprintln!("lohar: init session: {e}");
    }
    let mut listeners = vec![
        (Listener::Unix(control_listener), Port::Control),
        (Listener::Unix(forward_listener), Port::Forward),
    ];
    listeners.extend(tcp);
    for (listener, port) in listeners {
        let agent = Arc::clone(&agent);
        std::thread::spawn(move || server::serve(agent, listener, port));
    }
    if let Some(script) = std::env::var_os("LOHAR_BOOT_PROFILE") {
        let timeout = std::env::var("LOHAR_BOOT_PROFILE_TIMEOUT_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map_or(boot_profile::TIMEOUT, std::time::Duration::from_millis);
        boot_profile::start(std::path::Path::new(&script), &agent.config.env, timeout);
    }
    eprintln!("lohar: test mode ready");
    reaper::run(|| {
        // Tests stop the agent with SIGTERM: take every command we started down with us.
        reaper::kill_all_children();
        let _ = std::fs::remove_file(&control);
        let _ = std::fs::remove_file(&forward);
        std::process::exit(0);
    });
    ExitCode::SUCCESS
}

/// Test mode under LOHAR_REQUIRE_TOKEN=1 without a usable token: like PID 1 in that case, no
/// listener at all, only the reaper; stops on SIGTERM.
fn serve_nothing(refusal: &config::Refusal) -> ExitCode {
    eprintln!("lohar: refusing to serve on the control and forward sockets: {refusal}");
    eprintln!("lohar: test mode ready (serving nothing)");
    reaper::run(|| std::process::exit(0));
    ExitCode::SUCCESS
}

/// Optional TCP listeners in test mode (`LOHAR_TCP_CONTROL`, `LOHAR_TCP_FORWARD`, e.g.
/// `127.0.0.1:0`), so the TCP path can be tested on loopback. Bound addresses are printed.
fn tcp_listeners() -> Result<Vec<(Listener, Port)>, String> {
    let mut out = Vec::new();
    for (var, port) in [("LOHAR_TCP_CONTROL", Port::Control), ("LOHAR_TCP_FORWARD", Port::Forward)]
    {
        let Ok(addr) = std::env::var(var) else {
            continue;
        };
        let listener =
            std::net::TcpListener::bind(&addr).map_err(|e| format!("listen {addr}: {e}"))?;
        let bound = listener.local_addr().map_err(|e| format!("listen {addr}: {e}"))?;
        eprintln!("lohar: {var}={bound}");
        out.push((Listener::Tcp(listener), port));
    }
    Ok(out)
}
