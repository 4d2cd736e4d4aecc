//! Starts an engine, creates one sandbox (a real microVM of the cached kernel and test image),
//! runs a command in it and destroys it. Everything it creates lives in the network namespace
//! `bhatti-quickstart` and a temp dir, both removed at the end.
//!
//! ```text
//! cargo run -p bhatti-engine --example quickstart -- [--json] [-- <argv...>]
//! ```

use std::path::PathBuf;
use std::time::Instant;

use engine::{CreateSpec, Engine, EngineConfig};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut json, mut argv) = (false, Vec::new());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--json" => json = true,
            "--" => argv.extend(args.by_ref()),
            other => {
                eprintln!("usage: quickstart [--json] [-- <argv...>] (unexpected {other:?})");
                return std::process::ExitCode::from(2);
            }
        }
    }
    if argv.is_empty() {
        argv =
            ["sh", "-c", "echo hello from $(hostname); uname -sr; id"].map(String::from).to_vec();
    }
    match run(&argv, json).await {
        Ok(code) => std::process::ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            if json {
                println!("{}", serde_json::json!({ "error": e }));
            } else {
                eprintln!("error: {e}");
            }
            std::process::ExitCode::from(1)
        }
    }
}

async fn run(argv: &[String], json: bool) -> Result<i32, String> {
    let data =
        std::env::var_os("BHATTI_DATA_DIR").map(PathBuf::from).unwrap_or("/var/lib/bhatti".into());
    let kernel = data.join("kernel/current/vmlinux");
    // BHATTI_IMAGE selects another image, e.g. images/minimal/current/rootfs.ext4.
    let image = std::env::var_os("BHATTI_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| data.join("images/test/current/rootfs.ext4"));
    for path in [&kernel, &image] {
        if !path.exists() {
            return Err(format!(
                "{} missing: run images/kernel/build and images/rootfs/build-test",
                path.display()
            ));
        }
    }
    let data_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut config = EngineConfig::new(data_dir.path().to_owned(), kernel);
    config.netns = "bhatti-quickstart".into();
    config.subnet =
        "10.240.0.0/24".parse().map_err(|e: engine::ippool::IpPoolError| e.to_string())?;
    let engine = Engine::new(config).await.map_err(|e| e.to_string())?;
    let result = create_and_run(&engine, image, argv, json).await;
    let _ = engine.destroy("quickstart").await;
    let _ = engine.netns().delete().await;
    result
}

async fn create_and_run(
    engine: &Engine,
    image: PathBuf,
    argv: &[String],
    json: bool,
) -> Result<i32, String> {
    let mut spec = CreateSpec::new("quickstart", &image);
    spec.memory_mib = 256;
    if !json {
        eprintln!("creating sandbox \"quickstart\" (image {})", image.display());
    }
    let start = Instant::now();
    let info = engine.create(&spec).await.map_err(|e| e.to_string())?;
    let ready_ms = start.elapsed().as_secs_f64() * 1000.0;
    let argv_refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let start = Instant::now();
    let out = engine.exec("quickstart", &argv_refs).await.map_err(|e| e.to_string())?;
    let exec_ms = start.elapsed().as_secs_f64() * 1000.0;
    if json {
        let doc = serde_json::json!({
            "sandbox": info.id,
            "ip": info.ip.to_string(),
            "ready_ms": ready_ms,
            "exec_ms": exec_ms,
            "exit_code": out.exit_code,
            "stdout": out.stdout_text(),
            "stderr": out.stderr_text(),
        });
        println!("{doc}");
    } else {
        eprintln!("sandbox {} at {} ready after {ready_ms:.0} ms", info.id, info.ip);
        print!("{}", out.stdout_text());
        eprint!("{}", out.stderr_text());
        eprintln!("[exit {} in {exec_ms:.1} ms]", out.exit_code);
    }
    Ok(out.exit_code)
}
