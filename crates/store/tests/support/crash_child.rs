//! The child of the kill test (`tests/kill.rs`): runs a random mixed workload on a store until
//! it is killed, reporting each operation on stdout: `B <op>` before it starts and `A` only
//! after its commit returned. The parent SIGKILLs it at random points and checks the file.
//!
//! Usage: `store-crash-child <db path> <seed>`, with the engine record to store (JSON, from
//! the tests' one record helper) in `CRASH_RECORD_JSON`.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Write;

use store::{Change, Intent, NewEvent, NewSandbox, Quotas, Status, Store, Transition};

/// xorshift64*: the child needs reproducible randomness and no dev-dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, path, seed] = args.as_slice() else {
        return Err("usage: store-crash-child <db> <seed>".into());
    };
    let template: serde_json::Value = serde_json::from_str(&std::env::var("CRASH_RECORD_JSON")?)?;
    // splitmix64 first: the parent's seeds differ in low bits only.
    let mut z = seed.parse::<u64>()?.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    let mut rng = Rng((z ^ (z >> 31)) | 1);
    let mut out = std::io::stdout().lock();
    let mut say = |line: &str| -> std::io::Result<()> {
        writeln!(out, "{line}")?;
        out.flush()
    };
    let mut s = Store::open(path)?;
    let mut owner = s.user_by_name("owner").ok().map(|u| u.id);
    // name -> id of live sandboxes, and their pending transitions.
    let mut live: BTreeMap<String, String> =
        s.list_all_sandboxes()?.into_iter().map(|sb| (sb.name, sb.id)).collect();
    let mut pending: BTreeMap<String, Transition> = BTreeMap::new();
    for t in s.pending_transitions()? {
        if let Some((name, _)) = live.iter().find(|(_, id)| **id == t.sandbox_id) {
            pending.insert(name.clone(), t);
        }
    }
    loop {
        let Some(owner_id) = owner.clone() else {
            say("B user")?;
            let q = Quotas { max_sandboxes: u32::MAX, ..Quotas::default() };
            owner = Some(s.create_user("owner", q)?.0.id);
            say("A")?;
            continue;
        };
        let names: Vec<String> = live.keys().cloned().collect();
        let idle: Vec<&String> = names.iter().filter(|n| !pending.contains_key(*n)).collect();
        let roll = rng.below(100);
        if names.is_empty() || (roll < 20 && names.len() < 30) {
            let name = format!("s{:08x}", rng.next() as u32);
            say(&format!("B create {name}"))?;
            let new = NewSandbox {
                owner: owner_id,
                name: name.clone(),
                template_id: None,
                image: "minimal".into(),
                cpus: 1.0,
                memory_mb: 512,
                disk_size_mb: 0,
                labels: BTreeMap::new(),
                keep_hot: false,
                net_policy: bhatti_core::NetPolicy::default(),
            };
            let id = s.create_sandbox(&new)?.id;
            say("A")?;
            live.insert(name, id);
        } else if roll < 45 && !idle.is_empty() {
            let name = idle[rng.below(idle.len())];
            let status = [Status::Running, Status::Stopped, Status::Unknown][rng.below(3)];
            say(&format!("B status {name} {status}"))?;
            s.set_status(&live[name], status)?;
            say("A")?;
        } else if roll < 60 && !idle.is_empty() {
            let name = idle[rng.below(idle.len())].clone();
            say(&format!("B begin {name} stop"))?;
            let t = s.begin_transition(&live[&name], Intent::Stop)?;
            say("A")?;
            pending.insert(name, t);
        } else if roll < 75 && !pending.is_empty() {
            let name = pending.keys().nth(rng.below(pending.len())).cloned().unwrap_or_default();
            let snapshot = rng.below(2) == 1;
            let mut value = template.clone();
            value["name"] = serde_json::Value::from(name.clone());
            value["snapshot"] = serde_json::Value::from(snapshot);
            let record = bhatti_core::SandboxRecord::from_json(&value.to_string())?;
            say(&format!("B finish {name} stopped {snapshot}"))?;
            if let Some(t) = pending.remove(&name) {
                let change = Change {
                    status: Some(Status::Stopped),
                    record: Some(&record),
                    ..Change::default()
                };
                s.finish_transition(&t, &change)?;
            }
            say("A")?;
        } else if roll < 90 {
            let batch = rng.next() >> 1;
            let k = 1 + rng.below(5);
            say(&format!("B events {batch} {k}"))?;
            let events: Vec<NewEvent> =
                (0..k).map(|_| NewEvent::now(format!("kill.b{batch}"))).collect();
            s.record_events(&events)?;
            say("A")?;
        } else if !names.is_empty() {
            let name = names[rng.below(names.len())].clone();
            say(&format!("B destroy {name}"))?;
            s.delete_sandbox_by_id(&live[&name])?;
            say("A")?;
            live.remove(&name);
            pending.remove(&name);
        }
    }
}
