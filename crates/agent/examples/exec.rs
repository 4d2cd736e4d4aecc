//! Runs one command through a lohar agent and prints its output.
//!
//! ```text
//! cargo run -p bhatti-agent --example exec -- --unix <control.sock> <forward.sock> [--json] -- echo hi
//! cargo run -p bhatti-agent --example exec -- --tcp <guest-ip> [--token T] [--json] -- uname -a
//! ```

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use agent::{AgentClient, Endpoint};

fn usage() -> ! {
    eprintln!(
        "usage: exec (--unix <control> <forward> | --tcp <ip>) [--token T] [--json] -- <argv...>"
    );
    std::process::exit(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut endpoint, mut token, mut json, mut argv) = (None, None, false, Vec::new());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--unix" => {
                let (Some(c), Some(f)) = (args.next(), args.next()) else { usage() };
                endpoint = Some(Endpoint::unix(c, f));
            }
            "--tcp" => {
                let Some(ip) = args.next().and_then(|ip| ip.parse().ok()) else { usage() };
                endpoint = Some(Endpoint::guest(ip));
            }
            "--token" => token = args.next(),
            "--json" => json = true,
            "--" => argv.extend(args.by_ref()),
            _ => usage(),
        }
    }
    let Some(endpoint) = endpoint else { usage() };
    if argv.is_empty() {
        usage();
    }
    let client = AgentClient::new(endpoint, token);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let start = Instant::now();
    let result = client.exec(&argv).await;
    let elapsed: Duration = start.elapsed();
    match result {
        Ok(out) if json => {
            let doc = serde_json::json!({
                "exit_code": out.exit_code,
                "stdout": out.stdout_text(),
                "stderr": out.stderr_text(),
                "truncated": out.truncated,
                "elapsed_ms": elapsed.as_secs_f64() * 1000.0,
            });
            println!("{doc}");
            std::process::ExitCode::from(out.exit_code.clamp(0, 255) as u8)
        }
        Ok(out) => {
            print!("{}", out.stdout_text());
            eprint!("{}", out.stderr_text());
            eprintln!("[exit {} in {:.2} ms]", out.exit_code, elapsed.as_secs_f64() * 1000.0);
            std::process::ExitCode::from(out.exit_code.clamp(0, 255) as u8)
        }
        Err(e) => {
            if json {
                println!("{}", serde_json::json!({ "error": e.to_string() }));
            } else {
                eprintln!("error: {e}");
            }
            std::process::ExitCode::from(1)
        }
    }
}
