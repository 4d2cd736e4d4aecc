//! `POST /sandboxes/:id/fork` against a real daemon with real VMs: N copy-on-write clones of a
//! running 512 MiB sandbox, each with the source's files and its own name, address and
//! hostname; quotas count every clone; another owner's source is 404; a stopped one 409; bad
//! input 400. Prints the wall time of a fork of 1 and of 4 and each clone's PSS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::Daemon;
use reqwest::Method;
use serde_json::json;

async fn fork(d: &Daemon, key: &str, source: &str, body: serde_json::Value) -> reqwest::Response {
    d.client
        .post(format!("{}/sandboxes/{source}/fork", d.url))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn status_and_error(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let error = serde_json::from_str::<api::ErrorBody>(&text).map(|b| b.error).unwrap_or(text);
    (status, error)
}

async fn out(d: &Daemon, sandbox: &str, script: &str) -> String {
    let r = d
        .req(Method::POST, &format!("/sandboxes/{sandbox}/exec"))
        .json(&json!({"cmd": ["sh", "-c", script]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{script}");
    let res: api::ExecResult = r.json().await.unwrap();
    assert_eq!(res.exit_code, 0, "{sandbox}: {script}: {}", res.stderr);
    res.stdout.trim().to_owned()
}

/// The PSS (KiB) of a sandbox's QEMU.
fn pss_kib(d: &Daemon, id: &str) -> u64 {
    let dir = d.state.settings.data_dir.join("engine/sandboxes").join(id);
    let pid = std::fs::read_to_string(dir.join("qemu.pid")).unwrap();
    let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", pid.trim())).unwrap();
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn live_sandboxes(d: &Daemon) -> usize {
    let list: Vec<api::Sandbox> =
        d.req(Method::GET, "/sandboxes").send().await.unwrap().json().await.unwrap();
    list.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_makes_clones_that_count_against_quotas() {
    let d = Daemon::start().await;
    let mallory = d.other_user("mallory").await;
    let r =
        d.req(Method::POST, "/secrets").json(&json!({"name": "FORK_SECRET", "value": "s3cr3t"}));
    assert_eq!(r.send().await.unwrap().status(), 201);
    let body = json!({
        "name": "src", "memory_mb": 512, "labels": {"team": "a"}, "secrets": ["FORK_SECRET"],
    });
    let r = d.req(Method::POST, "/sandboxes").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let src: api::Sandbox = r.json().await.unwrap();
    d.sh("src", "echo from-source > /home/lohar/f.txt && sync").await;

    // Bad input, someone else's source: nothing is made.
    let table = [
        ("count 0", json!({"count": 0}), 400, "count must be 1 to 16"),
        ("count 17", json!({"count": 17}), 400, "count must be 1 to 16"),
        ("names and count differ", json!({"count": 2, "names": ["a"]}), 400, "names: 1 given"),
        ("a name twice", json!({"count": 2, "names": ["a", "a"]}), 400, "given twice"),
        ("a bad name", json!({"count": 1, "names": ["-a"]}), 400, "invalid name"),
        ("the source's name", json!({"count": 1, "names": ["src"]}), 409, "already in use"),
    ];
    for (what, body, status, part) in table {
        let (got, error) = status_and_error(fork(&d, &d.key, "src", body).await).await;
        assert_eq!(got, status, "{what}: {error}");
        assert!(error.contains(part), "{what}: {error}");
    }
    let (status, _) = status_and_error(fork(&d, &mallory, "src", json!({"count": 1})).await).await;
    assert_eq!(status, 404, "another owner's sandbox");
    assert_eq!(live_sandboxes(&d).await, 1);

    // A fork of one.
    let t = Instant::now();
    let r = fork(&d, &d.key, "src", json!({"count": 1})).await;
    let one_took = t.elapsed();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let one: Vec<api::Sandbox> = r.json().await.unwrap();
    assert_eq!(one.len(), 1);
    assert!(one[0].name.starts_with("src-"), "{}", one[0].name);
    assert_eq!(out(&d, &one[0].name, "cat /home/lohar/f.txt").await, "from-source");
    // The clone has its source's secrets (the daemon adds them to every exec).
    assert_eq!(out(&d, &one[0].name, "echo $FORK_SECRET").await, "s3cr3t");
    let r = d.req(Method::DELETE, &format!("/sandboxes/{}", one[0].name)).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // Four named clones fill a quota of five sandboxes; a fifth clone is refused.
    let mut quotas = d.user.quotas;
    quotas.max_sandboxes = 5;
    let uid = d.user.id.clone();
    d.state.store.write(move |s| s.set_quotas(&uid, quotas)).await.unwrap();
    let names = ["c1", "c2", "c3", "c4"];
    let t = Instant::now();
    let r = fork(&d, &d.key, "src", json!({"count": 4, "names": names})).await;
    let four_took = t.elapsed();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let clones: Vec<api::Sandbox> = r.json().await.unwrap();
    let got: Vec<&str> = clones.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(got, names);
    let mut ips: Vec<&str> = clones.iter().map(|c| c.ip.as_str()).collect();
    ips.push(&src.ip);
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 5, "addresses are not all different: {ips:?}");
    let source_pss = pss_kib(&d, &src.id);
    for clone in &clones {
        assert_eq!((clone.memory_mb, clone.image.as_str()), (512, src.image.as_str()));
        assert_eq!(clone.labels, src.labels);
        assert_eq!(clone.status, "running");
        assert_eq!(out(&d, &clone.name, "cat /home/lohar/f.txt").await, "from-source");
        assert_eq!(out(&d, &clone.name, "hostname").await, clone.name);
        println!(
            "clone {}: PSS {} KiB (source {source_pss} KiB)",
            clone.name,
            pss_kib(&d, &clone.id)
        );
    }
    println!("fork of a 512 MiB sandbox: 1 clone {one_took:?}, 4 clones {four_took:?}");
    let (status, error) =
        status_and_error(fork(&d, &d.key, "src", json!({"count": 1})).await).await;
    assert_eq!(status, 429, "{error}");
    assert_eq!(live_sandboxes(&d).await, 5);
    assert_eq!(d.state.engine.thermal(&src.id).unwrap().to_string(), "hot");
    let q = store::EventQuery { kind: Some("sandbox.forked".into()), ..Default::default() };
    let forked = d.state.store.read(move |s| s.query_events(&q)).await.unwrap();
    assert_eq!(forked.len(), 5, "one sandbox.forked per clone");

    // A sandbox its user stopped is refused.
    for clone in names {
        let r = d.req(Method::DELETE, &format!("/sandboxes/{clone}")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = d.req(Method::POST, "/sandboxes/src/stop").send().await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let (status, error) =
        status_and_error(fork(&d, &d.key, "src", json!({"count": 1})).await).await;
    assert_eq!(status, 409, "{error}");
    assert_eq!(live_sandboxes(&d).await, 1);
    tokio::time::sleep(Duration::ZERO).await;
    d.stop().await;
}
