//! Boots one real microVM (the cached kernel and test image), runs a command in it through the
//! agent, and powers it off. Everything it creates lives in the network namespace
//! `bhatti-quickstart` and a temp dir, both removed at the end.
//!
//! ```text
//! cargo run -p bhatti-engine --example quickstart -- [--json] [-- <argv...>]
//! ```

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use engine::net::Netns;
use engine::vm::BootSpec;
use proto::guest::GuestConfig;

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
    let ns = Netns::create("bhatti-quickstart").await.map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let result = boot_and_run(&ns, dir.path().to_owned(), kernel, image, argv, json).await;
    let _ = ns.delete().await;
    result
}

async fn boot_and_run(
    ns: &Netns,
    dir: PathBuf,
    kernel: PathBuf,
    image: PathBuf,
    argv: &[String],
    json: bool,
) -> Result<i32, String> {
    let gateway = Ipv4Addr::new(10, 240, 0, 1);
    ns.setup_bridge("br0", gateway, 24).await.map_err(|e| e.to_string())?;
    let token = engine::configdrive::random_token().map_err(|e| e.to_string())?;
    let spec = BootSpec {
        kernel,
        image,
        dir,
        memory_mib: 256,
        memory_file: None,
        vcpus: 1,
        guest: GuestConfig { hostname: "quickstart".into(), token, ..Default::default() },
        ip: Ipv4Addr::new(10, 240, 0, 2),
        gateway,
        bridge: "br0".into(),
        tap: "tap-qs".into(),
        mac: [0x52, 0x54, 0x00, 0xf0, 0x00, 0x02],
        accel: vmm::Accel::Auto,
        ready_timeout: Duration::from_secs(60),
    };
    if !json {
        eprintln!(
            "booting a microVM (kernel {}, image {})",
            spec.kernel.display(),
            spec.image.display()
        );
    }
    let mut vm = engine::vm::boot(ns, &spec).await.map_err(|e| e.to_string())?;
    let argv_refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let start = Instant::now();
    let out = vm.client.exec(&argv_refs).await.map_err(|e| e.to_string())?;
    let exec_ms = start.elapsed().as_secs_f64() * 1000.0;
    if json {
        let doc = serde_json::json!({
            "accelerator": vm.qemu.accel.to_string(),
            "ready_ms": vm.ready_after.as_secs_f64() * 1000.0,
            "exec_ms": exec_ms,
            "exit_code": out.exit_code,
            "stdout": out.stdout_text(),
            "stderr": out.stderr_text(),
        });
        println!("{doc}");
    } else {
        eprintln!(
            "agent ready after {:.0} ms ({})",
            vm.ready_after.as_secs_f64() * 1000.0,
            vm.qemu.accel
        );
        print!("{}", out.stdout_text());
        eprint!("{}", out.stderr_text());
        eprintln!("[exit {} in {exec_ms:.1} ms]", out.exit_code);
    }
    // Clean power-off through the guest's init; QEMU exits by itself.
    let mut poweroff = agent::ExecRequest::command(["kill", "-TERM", "1"]);
    poweroff.user = Some("root".into());
    let _ = vm.client.exec_request(&poweroff, Duration::from_secs(5)).await;
    if vm.qemu.wait(Duration::from_secs(20)).await.is_err() {
        let _ = vm.qemu.kill().await;
    }
    Ok(out.exit_code)
}
