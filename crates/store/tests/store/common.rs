//! Helpers shared by the store's tests.

use std::collections::BTreeMap;

use bhatti_core::{SandboxRecord, Thermal};
use store::{NewSandbox, Quotas, Sandbox, Status, Store, User};
use tempfile::TempDir;

/// A store in a fresh temporary directory (kept alive by the returned guard).
pub fn store() -> (TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("state.db")).unwrap();
    (dir, store)
}

/// A user with generous quotas.
pub fn user(s: &mut Store, name: &str) -> User {
    let q = Quotas { max_sandboxes: 100, max_snapshots: 100, max_images: 100, ..Quotas::default() };
    s.create_user(name, q).unwrap().0
}

/// What a sandbox called `name` of `owner` asks for.
pub fn new_sandbox(owner: &str, name: &str) -> NewSandbox {
    NewSandbox {
        owner: owner.into(),
        name: name.into(),
        template_id: None,
        image: "minimal".into(),
        cpus: 1.0,
        memory_mb: 1024,
        disk_size_mb: 0,
        labels: BTreeMap::new(),
        keep_hot: false,
        net_policy: bhatti_core::NetPolicy::default(),
    }
}

/// Creates a sandbox and brings it to `status`.
pub fn sandbox(s: &mut Store, owner: &str, name: &str, status: Status) -> Sandbox {
    let sb = s.create_sandbox(&new_sandbox(owner, name)).unwrap();
    if status != Status::Creating {
        s.set_status(&sb.id, status).unwrap();
    }
    s.sandbox_by_id(&sb.id).unwrap()
}

/// The one place tests build an engine record: a field the engine adds is a one-line fix here.
pub fn record(name: &str, snapshot: bool, thermal: Thermal) -> SandboxRecord {
    SandboxRecord {
        version: bhatti_core::RECORD_VERSION,
        id: name.into(),
        owner: "usr_test".into(),
        hostname: name.into(),
        disk_size_mib: None,
        dir: format!("/var/lib/bhatti/sandboxes/{name}").into(),
        image: "/var/lib/bhatti/images/minimal.ext4".into(),
        ip: std::net::Ipv4Addr::new(10, 0, 0, 2),
        mac: "52:54:00:00:00:02".into(),
        token: "agent-token-0123456789abcdef".into(),
        vcpus: 2,
        cpu_millis: Some(1500),
        memory_mib: 1024,
        env: [("SECRET_ENV".to_owned(), "hunter2".to_owned())].into(),
        init: String::new(),
        volumes: Vec::new(),
        thermal,
        snapshot,
        net_policy: Default::default(),
        memory_private: false,
    }
}

/// Labels from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}
