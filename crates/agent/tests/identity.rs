//! SET_IDENTITY against the real lohar in test mode: every field is validated before anything
//! changes, fields are applied in order with the token last, and the ERROR names the field.
//! (Test mode writes the `/etc` files under `LOHAR_IDENTITY_ROOT` and makes no system calls;
//! the VM test `crates/engine/tests/identity.rs` covers sethostname, the RNG and the reset.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use agent::{AgentClient, AgentError};
use proto::messages::SetIdentity;

mod common;

use common::*;

const ID: &str = "0123456789abcdef0123456789abcdef";

struct Guest {
    lohar: testkit::TestLohar,
    root: tempfile::TempDir,
}

impl Guest {
    /// lohar with the token [`TOKEN`] and a fake root holding `/etc/hostname` = `old`.
    fn start(with_root: bool) -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/hostname"), "old\n").unwrap();
        std::fs::write(root.path().join("etc/hosts"), "127.0.0.1 localhost old\n").unwrap();
        let root_str = root.path().display().to_string();
        let env = [("LOHAR_IDENTITY_ROOT", root_str.as_str())];
        let config = format!(r#"{{"token":"{TOKEN}"}}"#);
        let options = testkit::Options {
            config: Some(config.as_bytes()),
            env: if with_root { &env } else { &[] },
            echo_stderr: false,
        };
        let lohar = testkit::TestLohar::start(&lohar_bin(), tempfile::tempdir().unwrap(), options);
        Guest { lohar, root }
    }

    fn client(&self, token: &str) -> AgentClient {
        let endpoint = agent::Endpoint::unix(self.lohar.control(), self.lohar.forward());
        AgentClient::new(endpoint, Some(token.into()))
    }

    fn read(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(self.root.path().join(path)).ok()
    }

    async fn token_works(&self, token: &str) -> bool {
        self.client(token).exec(&["true"]).await.is_ok()
    }
}

fn full() -> SetIdentity {
    SetIdentity {
        token: Some("2".repeat(32)),
        hostname: Some("clone-1".into()),
        machine_id: Some(ID.into()),
        entropy: Some("5a".repeat(64)),
        reset_connections: true,
    }
}

fn agent_error(err: AgentError) -> String {
    match err {
        AgentError::Agent(text) => text.to_string(),
        other => panic!("expected the agent's ERROR, got {other:?}"),
    }
}

#[tokio::test]
async fn set_identity_applies_every_field() {
    let guest = Guest::start(true);
    guest.client(TOKEN).set_identity(&full()).await.unwrap();
    assert_eq!(guest.read("etc/hostname").as_deref(), Some("clone-1\n"));
    assert_eq!(guest.read("etc/hosts").as_deref(), Some("127.0.0.1 localhost clone-1\n"));
    assert_eq!(guest.read("etc/machine-id"), Some(format!("{ID}\n")));
    assert!(!guest.token_works(TOKEN).await, "the old token still works");
    assert!(guest.token_works(&"2".repeat(32)).await, "the new token does not work");
    let names: Vec<_> = std::fs::read_dir(guest.root.path().join("etc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!names.iter().any(|n| n.contains("tmp")), "temporary files left: {names:?}");
}

/// Bad input is refused with an ERROR naming the field, and nothing changes: not the files,
/// not the token.
#[tokio::test]
async fn set_identity_refuses_bad_fields_without_changing_anything() {
    let guest = Guest::start(true);
    type Edit = fn(&mut SetIdentity);
    let rows: &[(&str, Edit, &str)] = &[
        ("hostname with a dot", |r| r.hostname = Some("a.b".into()), "set identity: hostname: "),
        ("empty hostname", |r| r.hostname = Some(String::new()), "set identity: hostname: "),
        ("hostname of 64", |r| r.hostname = Some("h".repeat(64)), "set identity: hostname: "),
        (
            "uppercase machine id",
            |r| r.machine_id = Some(ID.to_uppercase()),
            "set identity: machine_id: ",
        ),
        ("short machine id", |r| r.machine_id = Some("abc".into()), "set identity: machine_id: "),
        ("entropy not hex", |r| r.entropy = Some("zz".into()), "set identity: entropy: "),
        ("entropy too long", |r| r.entropy = Some("00".repeat(513)), "set identity: entropy: "),
        ("empty token", |r| r.token = Some(String::new()), "set identity: token: "),
        ("token too long", |r| r.token = Some("t".repeat(257)), "set identity: token: "),
    ];
    for (name, edit, prefix) in rows {
        let mut req = full();
        edit(&mut req);
        let err = agent_error(guest.client(TOKEN).set_identity(&req).await.unwrap_err());
        assert!(err.starts_with(prefix), "{name}: {err}");
        assert_eq!(guest.read("etc/hostname").as_deref(), Some("old\n"), "{name}");
        assert_eq!(guest.read("etc/machine-id"), None, "{name}");
        assert!(guest.token_works(TOKEN).await, "{name}: the token changed");
    }
}

/// Fields are applied entropy, machine-id, hostname, connections, token: when the machine ID
/// cannot be written, the hostname and the token are left as they were.
#[tokio::test]
async fn set_identity_failing_machine_id_leaves_hostname_and_token() {
    let guest = Guest::start(true);
    std::fs::create_dir_all(guest.root.path().join("etc/machine-id/in-the-way")).unwrap();
    let err = agent_error(guest.client(TOKEN).set_identity(&full()).await.unwrap_err());
    assert!(err.starts_with("set identity: machine_id: "), "{err}");
    assert_eq!(guest.read("etc/hostname").as_deref(), Some("old\n"));
    assert!(guest.token_works(TOKEN).await, "the token changed although machine_id failed");
    assert!(!guest.token_works(&"2".repeat(32)).await);
    // Once the way is clear the same request succeeds.
    std::fs::remove_dir_all(guest.root.path().join("etc/machine-id")).unwrap();
    guest.client(TOKEN).set_identity(&full()).await.unwrap();
    assert_eq!(guest.read("etc/hostname").as_deref(), Some("clone-1\n"));
}

/// In test mode without a directory for the files, hostname and machine-id would change the
/// host's: refused (a token alone still renews).
#[tokio::test]
async fn set_identity_in_test_mode_never_touches_the_host() {
    let guest = Guest::start(false);
    let host_name = std::fs::read_to_string("/etc/hostname").ok();
    let err = agent_error(guest.client(TOKEN).set_identity(&full()).await.unwrap_err());
    assert!(err.contains("refused in test mode"), "{err}");
    assert_eq!(std::fs::read_to_string("/etc/hostname").ok(), host_name);
    assert!(guest.token_works(TOKEN).await);
    let token_only = SetIdentity { token: Some("3".repeat(32)), ..Default::default() };
    guest.client(TOKEN).set_identity(&token_only).await.unwrap();
    assert!(guest.token_works(&"3".repeat(32)).await);
    assert!(!Path::new(&guest.root.path().join("etc/machine-id")).exists());
}
