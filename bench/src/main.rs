//! `bhatti-bench`: the table a user compares, with bhatti's own cost shown as ratios to
//! baselines measured in the same run (bare QEMU, the engine in-process without HTTP, a direct
//! forward to the guest port). See `bench/README.md`.

#![forbid(unsafe_code)]

mod baseline;
mod chart;
mod daemon;
mod readme;
mod report;
mod scenarios;

use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;

use crate::report::{Meta, Report};

#[derive(Debug, Parser)]
#[command(name = "bhatti-bench", about = "bhatti benchmarks against same-run baselines")]
pub struct Args {
    /// A live daemon to measure instead of starting one (its sandboxes named `bench-*` by this
    /// run are destroyed at the end).
    #[arg(long, requires = "token")]
    pub url: Option<String>,
    /// API key for `--url`.
    #[arg(long, env = "BHATTI_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// With `--url`: the daemon's data directory, for the QEMU RSS rows.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The `bhatti` binary to start.
    #[arg(long, default_value = "target/release/bhatti")]
    pub bhatti: PathBuf,
    /// Kernel and images (`kernel/current/vmlinux`, `images/<name>/current/rootfs.ext4`).
    #[arg(long, default_value = "/var/lib/bhatti")]
    pub artifacts: PathBuf,
    /// Samples per exec, file, API and proxy-hot scenario.
    #[arg(long, default_value_t = 30)]
    pub n: usize,
    /// Samples per lifecycle, warm and cold scenario (each costs seconds under TCG).
    #[arg(long, default_value_t = 8)]
    pub lifecycle_n: usize,
    /// Smoke run: n = 3 everywhere.
    #[arg(long)]
    pub quick: bool,
    /// Images to measure create with (`minimal` is skipped when it is not built).
    #[arg(long, value_delimiter = ',', default_value = "test,minimal")]
    pub images: Vec<String>,
    /// Only these scenario groups (comma-separated): hot, warm, memory, proxy, lifecycle,
    /// ttfc, fork, pool. Default: all.
    #[arg(long, value_delimiter = ',', value_parser = ["hot", "warm", "memory", "proxy", "lifecycle", "ttfc", "fork", "pool"])]
    pub only: Vec<String>,
    /// Where results go.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    /// A label for the results (e.g. "smoke run on a loaded machine").
    #[arg(long)]
    pub label: Option<String>,
    /// Only regenerate, from the newest full (non-smoke) results file: the marked results
    /// section of this README (default bench/README.md), the performance section of the main
    /// README (`--main-readme`) and the chart (`--chart`, and `<results>.svg` beside the
    /// file); then exit.
    #[arg(long, value_name = "README")]
    pub write_readme: Option<Option<PathBuf>>,
    /// With `--write-readme`: the main README, whose `<!-- bench:start -->` ...
    /// `<!-- bench:end -->` section gets the headline rows.
    #[arg(long, default_value = "README.md")]
    pub main_readme: PathBuf,
    /// With `--write-readme`: where the chart goes (the main README links it by this path).
    #[arg(long, default_value = "docs/perf.svg")]
    pub chart: PathBuf,
    /// With `--write-readme`: smoke runs count as results too (the newest of all files).
    #[arg(long)]
    pub allow_smoke: bool,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if let Some(readme) = &args.write_readme {
        let readme = readme.clone().unwrap_or_else(|| "bench/README.md".into());
        let (from, report) = report::latest(&args.out, args.allow_smoke)?;
        report::write_readme(&readme, &from, &report)?;
        let svg = chart::render(&report)?;
        let beside = from.with_extension("svg");
        if let Some(dir) = args.chart.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&beside, &svg).with_context(|| format!("{}", beside.display()))?;
        std::fs::write(&args.chart, &svg).with_context(|| format!("{}", args.chart.display()))?;
        let name = from.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        readme::write(&args.main_readme, &report, &name, &args.chart.to_string_lossy())?;
        println!(
            "{}, {}, {} and {} regenerated from {}",
            readme.display(),
            args.main_readme.display(),
            args.chart.display(),
            beside.display(),
            from.display()
        );
        return Ok(());
    }
    if args.quick {
        args.n = 3;
        args.lifecycle_n = 3;
    }
    anyhow::ensure!(args.n >= 1 && args.lifecycle_n >= 1, "n must be at least 1");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let started_at = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let meta = machine(&args, started_at);
    println!(
        "bhatti-bench: {} / {} cores / {} / {} / kernel {} / commit {}",
        meta.cpu, meta.cores, meta.accel, meta.qemu, meta.kernel, meta.commit
    );
    println!("n = {} (exec/files/API), {} (lifecycle/warm/cold)", args.n, args.lifecycle_n);

    // Everything the run creates is torn down when these drop, also on Ctrl+C and errors.
    let (own, api) = match &args.url {
        Some(url) => {
            let token = args.token.clone().context("--token is required with --url")?;
            let api = daemon::Api {
                base: url.trim_end_matches('/').to_owned(),
                token,
                http: daemon::client()?,
                data_dir: args.data_dir.clone(),
            };
            (None, api)
        }
        None => {
            anyhow::ensure!(
                args.bhatti.exists(),
                "{} missing: build it (cargo build --release -p bhatti) or run scripts/bench",
                args.bhatti.display()
            );
            let (d, api) = daemon::OwnDaemon::start(&args.bhatti, &args.artifacts).await?;
            (Some(d), api)
        }
    };
    let base = baseline::Baseline::new(&args.artifacts).await?;
    let run_id = format!("{:x}", started_at % 0xffffff);
    let mut bench = scenarios::Bench::new(api.clone(), base, run_id, &args);

    let outcome = tokio::select! {
        r = bench.all() => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted (Ctrl+C): cleaning up")),
    };
    println!("\ncleaning up {} sandboxes", bench.created.len());
    bench.cleanup().await;
    if let Err(e) = &outcome {
        eprintln!("error: {e:#}");
        if let Some(d) = &own {
            eprintln!("daemon log tail:\n{}", d.logs());
        }
    }
    let mut meta = meta;
    meta.duration_secs = started.elapsed().as_secs_f64();
    meta.target = if args.url.is_some() {
        "live daemon (--url)".into()
    } else {
        "started by the runner".into()
    };
    let mut report = Report { meta, rows: bench.rows, targets: Vec::new(), notes: bench.notes };
    scenarios::link_and_check(&mut report);
    drop(bench.base);
    drop(own);
    outcome?;
    // A partial run is no full run either: `--write-readme` passes it over like a smoke run.
    let suffix = if args.quick || !args.only.is_empty() { "-smoke" } else { "" };
    let md = report.save(&args.out, suffix)?;
    let svg = md.with_extension("svg");
    std::fs::write(&svg, chart::render(&report)?)?;
    println!("\n{}", report.markdown());
    println!("results: {}", md.display());
    Ok(())
}

fn cmd_out(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn machine(args: &Args, started_at: u64) -> Meta {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_mib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024);
    let accel = match vmm::Accel::Auto.resolve() {
        Ok(a) => a.to_string(),
        Err(e) => format!("unknown ({e})"),
    };
    let kernel = std::fs::read_link(args.artifacts.join("kernel/current"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let label = args.label.clone().unwrap_or_else(|| match (args.quick, args.only.is_empty()) {
        (true, true) => "smoke run (n=3)".into(),
        (true, false) => format!("smoke run (n=3; only {})", args.only.join(",")),
        (false, false) => format!("smoke run (partial: only {})", args.only.join(",")),
        (false, true) => "full run".into(),
    });
    Meta {
        started_at,
        date: report::date(started_at),
        commit: cmd_out("git", &["rev-parse", "--short", "HEAD"]),
        cpu,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        memory_mib,
        accel,
        qemu: cmd_out("qemu-system-x86_64", &["--version"]).lines().next().unwrap_or("").to_owned(),
        kernel,
        load_avg_at_start: std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
        n_exec: args.n,
        n_lifecycle: args.lifecycle_n,
        label,
        duration_secs: 0.0,
        target: String::new(),
    }
}
