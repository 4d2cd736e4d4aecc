//! Durability, proven by killing it: a child process runs a mixed workload on the store and
//! is SIGKILLed at random points, over and over; after each kill the file is reopened (as the
//! next daemon would) and must hold every acknowledged write and no half-written one.
//!
//! The child (`tests/support/crash_child.rs`) prints `B <op>` before each operation and `A`
//! only after its commit returned. After a kill the parent drains the pipe, applies every
//! acknowledged operation to its model, and requires the database to equal the model, or the
//! model plus the one operation in flight (killed after its commit, before its `A`). Anything
//! else (a lost acknowledged write, a multi-row operation half applied, a pending transition
//! without its sandbox change) fails, with the seed to replay it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "store/common.rs"]
mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bhatti_core::Thermal;
use store::{EventQuery, Store};

const EPOCHS: u64 = 4;
const SIGKILL: i32 = 9;
const KILLS_PER_EPOCH: u64 = 55;

#[derive(Debug, Clone, PartialEq, Default)]
struct Model {
    user: bool,
    sandboxes: BTreeMap<String, Sb>,
    events: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, PartialEq)]
struct Sb {
    status: String,
    snapshot: Option<bool>,
    pending: bool,
}

/// What an operation line does to the model (the child's code does it to the database).
fn apply(m: &mut Model, op: &str) {
    let w: Vec<&str> = op.split(' ').collect();
    let missing = || panic!("op {op:?} on a sandbox the model lacks");
    match w[0] {
        "user" => m.user = true,
        "create" => {
            m.sandboxes.insert(
                w[1].into(),
                Sb { status: "creating".into(), snapshot: None, pending: false },
            );
        }
        "status" => m.sandboxes.get_mut(w[1]).unwrap_or_else(missing).status = w[2].into(),
        "begin" => m.sandboxes.get_mut(w[1]).unwrap_or_else(missing).pending = true,
        "finish" => {
            let s = m.sandboxes.get_mut(w[1]).unwrap_or_else(missing);
            s.pending = false;
            s.status = w[2].into();
            s.snapshot = Some(w[3] == "true");
        }
        "events" => {
            m.events.insert(format!("kill.b{}", w[1]), w[2].parse().unwrap());
        }
        "destroy" => {
            m.sandboxes.remove(w[1]);
        }
        other => panic!("unknown op {other:?}"),
    }
}

/// The database as the next daemon finds it.
fn observe(path: &Path) -> Model {
    let s = Store::open(path).expect("the killed store reopens");
    s.integrity_check().unwrap();
    let pending: HashSet<String> =
        s.pending_transitions().unwrap().into_iter().map(|t| t.sandbox_id).collect();
    let sandboxes = s
        .list_all_sandboxes()
        .unwrap()
        .into_iter()
        .map(|sb| {
            let snapshot = sb.record.map(|r| r.decode().expect("a stored record decodes").snapshot);
            let status = sb.status.as_str().to_owned();
            (sb.name, Sb { status, snapshot, pending: pending.contains(&sb.id) })
        })
        .collect();
    let mut events = BTreeMap::new();
    for e in s.query_events(&EventQuery { limit: Some(u32::MAX), ..Default::default() }).unwrap() {
        *events.entry(e.event.kind).or_insert(0) += 1;
    }
    Model { user: s.user_by_name("owner").is_ok(), sandboxes, events }
}

#[test]
fn sigkill_at_random_points_loses_nothing_acknowledged_and_shows_nothing_half_written() {
    let base_seed: u64 =
        std::env::var("KILL_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
                as u64
        });
    eprintln!("kill test seed {base_seed} (replay with KILL_TEST_SEED={base_seed})");
    let mut rng = fastrand::Rng::with_seed(base_seed);
    let record_json = common::record("template", false, Thermal::Cold).to_json();
    let started = Instant::now();
    let (mut kills, mut acked_total, mut in_flight_landed, mut during_open) =
        (0u64, 0usize, 0usize, 0usize);
    for epoch in 0..EPOCHS {
        // A fresh file per epoch, so kills also land in the first open's migrations.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut model = Model::default();
        for k in 0..KILLS_PER_EPOCH {
            let seed = base_seed ^ (epoch << 32 | k);
            let mut child = Command::new(env!("CARGO_BIN_EXE_store-crash-child"))
                .arg(&path)
                .arg(seed.to_string())
                .env("CRASH_RECORD_JSON", &record_json)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let mut seen: Vec<String> = Vec::new();
            if rng.u8(..10) == 0 {
                // Anywhere in start-up: exec, open, migrations, the first operation.
                std::thread::sleep(Duration::from_micros(rng.u64(..15_000)));
            } else {
                // After the n-th operation began, plus a jitter that lands inside it (before,
                // during or after its commit) or in a later one.
                let n = rng.usize(1..=25);
                let mut begun = 0;
                while begun < n {
                    let Some(Ok(line)) = lines.next() else { break };
                    begun += usize::from(line.starts_with('B'));
                    seen.push(line);
                }
                std::thread::sleep(Duration::from_micros(rng.u64(..3_000)));
            }
            child.kill().unwrap(); // SIGKILL
            seen.extend(lines.map_while(Result::ok));
            let status = child.wait().unwrap();
            if status.signal() != Some(SIGKILL) {
                let mut err = String::new();
                child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
                panic!("seed {seed}: the child ended on its own ({status}): {err}");
            }
            kills += 1;
            // Acknowledged operations, and the one in flight (begun, not acknowledged).
            let mut in_flight: Option<String> = None;
            for line in &seen {
                if let Some(op) = line.strip_prefix("B ") {
                    in_flight = Some(op.to_owned());
                } else if line == "A" {
                    apply(&mut model, &in_flight.take().expect("an A follows a B"));
                    acked_total += 1;
                }
            }
            during_open += usize::from(seen.is_empty());
            let found = observe(&path);
            if found != model {
                let mut with = model.clone();
                let op = in_flight.clone().unwrap_or_else(|| {
                    panic!("seed {seed}: no operation in flight, yet the file differs:\nmodel {model:#?}\nfound {found:#?}")
                });
                apply(&mut with, &op);
                assert_eq!(found, with, "seed {seed}: the file is neither before nor after {op:?}");
                in_flight_landed += 1;
            }
            model = found;
        }
    }
    eprintln!(
        "{kills} kills in {:.1} s: {acked_total} acknowledged operations checked, {in_flight_landed} \
         kills found their operation in the file unacknowledged (killed in its commit), {during_open} during start-up",
        started.elapsed().as_secs_f64()
    );
    assert!(kills >= 200);
    assert!(acked_total > kills as usize, "the workload made progress between kills");
}
