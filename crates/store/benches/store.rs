//! Store latency on the daemon's real access path (the async handle), as percentiles:
//! `cargo bench -p bhatti-store --bench store`. Not a timed test; numbers go in the README.
//!
//! * lookup of a sandbox by name (the per-request path), idle and under a concurrent writer;
//! * a status update (one write transaction, fsync'd: synchronous = FULL);
//! * an insert-heavy burst: sandbox creates one by one, events one by one and in batches;
//! * the dedicated connection threads against `spawn_blocking` around a mutex.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bhatti_core::SandboxRecord;
use store::{AsyncStore, NewEvent, NewSandbox, Options, Quotas, Status, Store};

const USERS: usize = 10;
const PER_USER: usize = 100;

fn pct(mut d: Vec<Duration>) -> String {
    d.sort();
    let at = |p: f64| d[((d.len() as f64 * p) as usize).min(d.len() - 1)];
    let us = |x: Duration| x.as_secs_f64() * 1e6;
    format!(
        "n={:<6} p50 {:>8.1} us   p95 {:>8.1} us   p99 {:>8.1} us   max {:>8.1} us",
        d.len(),
        us(at(0.50)),
        us(at(0.95)),
        us(at(0.99)),
        us(d[d.len() - 1])
    )
}

fn record(name: &str) -> SandboxRecord {
    // A record of realistic size; the bench only stores it.
    let json = format!(
        r#"{{"version":{v},"id":"{name}","owner":"usr_bench","hostname":"{name}","dir":"/var/lib/bhatti/sandboxes/{name}","image":"/var/lib/bhatti/images/minimal.ext4","ip":"10.0.0.2","mac":"52:54:00:00:00:02","token":"0123456789abcdef0123456789abcdef","vcpus":1,"memory_mib":1024,"env":{{"A":"b"}},"init":"","volumes":[],"thermal":"cold","snapshot":true}}"#,
        v = bhatti_core::RECORD_VERSION
    );
    SandboxRecord::from_json(&json).unwrap_or_else(|_| panic!("the bench's record JSON is stale"))
}

fn new_sandbox(owner: &str, name: &str) -> NewSandbox {
    NewSandbox {
        owner: owner.into(),
        name: name.into(),
        template_id: None,
        image: "minimal".into(),
        cpus: 1.0,
        memory_mb: 1024,
        disk_size_mb: 0,
        labels: BTreeMap::from([("team".to_owned(), "infra".to_owned())]),
        keep_hot: false,
        net_policy: bhatti_core::NetPolicy::default(),
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let mut s = Store::open(&path).unwrap();
    let q = Quotas { max_sandboxes: 1_000_000, ..Quotas::default() };
    let mut targets = Vec::new();
    for u in 0..USERS {
        let owner = s.create_user(&format!("user{u}"), q).unwrap().0.id;
        for i in 0..PER_USER {
            let name = format!("sb-{i}");
            let sb = s.create_sandbox(&new_sandbox(&owner, &name)).unwrap();
            s.set_record(&sb.id, &record(&name)).unwrap();
            s.set_status(&sb.id, Status::Running).unwrap();
            targets.push((owner.clone(), name, sb.id));
        }
    }
    drop(s);
    println!("store bench: {} sandboxes over {USERS} users, {}", targets.len(), path.display());
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let a = AsyncStore::open(&path, &Options::default()).unwrap();
    let pick = |i: usize| targets[(i * 7919) % targets.len()].clone();

    rt.block_on(async {
        // Warm-up: prepared-statement caches, page cache.
        for i in 0..200 {
            let (o, n, _) = pick(i);
            a.read(move |s| s.resolve_sandbox(&o, &n)).await.unwrap();
        }
        let mut d = Vec::new();
        for i in 0..5000 {
            let (o, n, _) = pick(i);
            let t = Instant::now();
            a.read(move |s| s.resolve_sandbox(&o, &n)).await.unwrap();
            d.push(t.elapsed());
        }
        println!("lookup by name (async, idle)         {}", pct(d));

        let mut d = Vec::new();
        for i in 0..1000 {
            let (_, _, id) = pick(i);
            let st = if i % 2 == 0 { Status::Stopped } else { Status::Running };
            let t = Instant::now();
            a.write(move |s| s.set_status(&id, st)).await.unwrap();
            d.push(t.elapsed());
        }
        println!("status update (async, fsync)         {}", pct(d));

        // Lookups while a writer commits back to back: the reader thread does not queue
        // behind the writer's fsyncs.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (a, stop) = (a.clone(), stop.clone());
            let targets = targets.clone();
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let id = targets[i % targets.len()].2.clone();
                    a.write(move |s| s.set_status(&id, Status::Running)).await.unwrap();
                    i += 1;
                }
                i
            })
        };
        let mut d = Vec::new();
        for i in 0..3000 {
            let (o, n, _) = pick(i);
            let t = Instant::now();
            a.read(move |s| s.resolve_sandbox(&o, &n)).await.unwrap();
            d.push(t.elapsed());
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let writes = writer.await.unwrap();
        println!("lookup by name (async, under writes) {}   ({writes} writes meanwhile)", pct(d));

        // Insert-heavy burst.
        let owner = targets[0].0.clone();
        let t0 = Instant::now();
        let mut d = Vec::new();
        for i in 0..1000 {
            let (o, n) = (owner.clone(), format!("burst-{i}"));
            let t = Instant::now();
            a.write(move |s| s.create_sandbox(&new_sandbox(&o, &n))).await.unwrap();
            d.push(t.elapsed());
        }
        let el = t0.elapsed();
        println!(
            "burst: 1000 sandbox creates          {}   total {:.2} s = {:.0}/s",
            pct(d),
            el.as_secs_f64(),
            1000.0 / el.as_secs_f64()
        );
        let t0 = Instant::now();
        let mut d = Vec::new();
        for _ in 0..1000 {
            let t = Instant::now();
            a.write(|s| s.record_events(&[NewEvent::now("bench.single")])).await.unwrap();
            d.push(t.elapsed());
        }
        let el = t0.elapsed();
        println!(
            "burst: 1000 events, 1 per commit     {}   total {:.2} s = {:.0}/s",
            pct(d),
            el.as_secs_f64(),
            1000.0 / el.as_secs_f64()
        );
        let t0 = Instant::now();
        let mut d = Vec::new();
        for _ in 0..100 {
            let batch: Vec<NewEvent> = (0..100).map(|_| NewEvent::now("bench.batch")).collect();
            let t = Instant::now();
            a.write(move |s| s.record_events(&batch)).await.unwrap();
            d.push(t.elapsed());
        }
        let el = t0.elapsed();
        println!(
            "burst: 10000 events, 100 per commit  {}   total {:.2} s = {:.0}/s",
            pct(d),
            el.as_secs_f64(),
            10000.0 / el.as_secs_f64()
        );
    });

    // Executors: the same lookup from 8 concurrent tasks, through the dedicated reader thread
    // and through spawn_blocking around a mutex-guarded connection.
    let shared = Arc::new(Mutex::new(Store::open(&path).unwrap()));
    rt.block_on(async {
        for (label, blocking) in [
            ("dedicated thread", false),
            ("spawn_blocking+mutex", true),
            ("dedicated thread", false),
            ("spawn_blocking+mutex", true),
        ] {
            let mut set = tokio::task::JoinSet::new();
            for task in 0..8 {
                let (a, shared, targets) = (a.clone(), shared.clone(), targets.clone());
                set.spawn(async move {
                    let mut d = Vec::new();
                    for i in 0..500 {
                        let (o, n, _) = targets[(task * 131 + i * 7919) % targets.len()].clone();
                        let t = Instant::now();
                        if blocking {
                            let shared = shared.clone();
                            tokio::task::spawn_blocking(move || {
                                shared.lock().unwrap().resolve_sandbox(&o, &n).map(|_| ())
                            })
                            .await
                            .unwrap()
                            .unwrap();
                        } else {
                            a.read(move |s| s.resolve_sandbox(&o, &n).map(|_| ())).await.unwrap();
                        }
                        d.push(t.elapsed());
                    }
                    d
                });
            }
            let mut all = Vec::new();
            while let Some(d) = set.join_next().await {
                all.extend(d.unwrap());
            }
            println!("8 concurrent lookups, {label:<21} {}", pct(all));
        }
    });

    // The CLI's path: the sync store, no runtime.
    let s = Store::open(&path).unwrap();
    let mut d = Vec::new();
    for i in 0..5000 {
        let (o, n, _) = pick(i);
        let t = Instant::now();
        s.resolve_sandbox(&o, &n).unwrap();
        d.push(t.elapsed());
    }
    println!("lookup by name (sync, CLI)           {}", pct(d));
}
