//! Boot measurements: 10 boots of the test image, p50/p95/max of QEMU start to agent ready, the
//! guest uptime when lohar starts, lohar's own start-up, and QEMU's RSS once the guest idles.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

fn summary(name: &str, unit: &str, mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let (p50, p95, max) =
        (percentile(&values, 50.0), percentile(&values, 95.0), values[values.len() - 1]);
    println!("| {name} | {} | {p50:.0} {unit} | {p95:.0} {unit} | {max:.0} {unit} |", values.len());
    p50
}

/// Parses `lohar: started at guest uptime 1.23s` from the serial log (milliseconds).
fn guest_uptime_ms(serial: &str) -> Option<f64> {
    serial
        .lines()
        .find_map(|l| {
            l.strip_prefix("lohar: started at guest uptime ")?
                .strip_suffix('s')?
                .parse::<f64>()
                .ok()
        })
        .map(|s| s * 1000.0)
}

/// Parses `lohar: boot +123ms tcp_listen` (milliseconds since lohar started).
fn lohar_listen_ms(serial: &str) -> Option<f64> {
    serial
        .lines()
        .find_map(|l| l.strip_prefix("lohar: boot +")?.strip_suffix("ms tcp_listen")?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_measurements() {
    let boots: usize =
        std::env::var("BHATTI_BOOTS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let net = TestNet::new().await;
    let (mut ready, mut uptime, mut listen, mut rss) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..boots {
        let mut vm = boot(&net, 10 + i as u8, 256).await;
        ready.push(vm.ready_after.as_secs_f64() * 1000.0);
        let serial = vm.serial_log();
        uptime.extend(guest_uptime_ms(&serial));
        listen.extend(lohar_listen_ms(&serial));
        // RSS once the guest has settled.
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss.extend(vm.qemu.rss_kib().map(|k| k as f64 / 1024.0));
        vm.qemu.kill().await.unwrap();
    }
    let (kernel, image) = artifacts();
    println!("\nboot measurements ({boots} boots, TCG, 256 MiB guest)\n");
    println!("| metric | n | p50 | p95 | max |\n|---|---|---|---|---|");
    let ready_p50 =
        summary("QEMU start -> agent ready (first authenticated exec)", "ms", ready.clone());
    summary("guest uptime when lohar starts", "ms", uptime);
    summary("lohar start -> listening", "ms", listen);
    let rss_p50 = summary("QEMU RSS after boot, idle", "MiB", rss.clone());
    println!(
        "\nkernel {} bytes, test image {} bytes (apparent)\n",
        std::fs::metadata(&kernel).unwrap().len(),
        std::fs::metadata(&image).unwrap().len()
    );
    // Loose bounds for a noisy shared machine; the numbers above are what we report.
    assert!(ready.iter().all(|ms| *ms < 20_000.0), "a boot took over 20 s: {ready:?}");
    assert!(ready_p50 < 10_000.0);
    assert!(rss_p50 < 200.0, "RSS p50 {rss_p50} MiB");
    assert!(rss.iter().all(|m| *m < 300.0), "{rss:?}");
}
