//! Shape snapshots as a user meets them: `bhatti template warm`, `bhatti create --template`
//! restoring on its first create, `bhatti create --boot`, and the shape store across a daemon
//! restart (`GET /shapes`, the admin's), against a real `bhatti serve` with real VMs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Setup, bhatti};
use reqwest::Method;

async fn shapes(s: &Setup) -> Vec<api::ShapeSnapshot> {
    let r = s.req(Method::GET, "/shapes").send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shapes_template_warm_create_boot_and_a_restart() {
    let mut s = Setup::new();
    s.start().await;
    bhatti(&s, &["template", "create", "--name", "small", "--memory", "192"]).ok();

    let r = bhatti(&s, &["template", "warm", "small", "--json"]).ok();
    let warmed: api::WarmResult = serde_json::from_str(&r.stdout).unwrap();
    assert!(warmed.created, "{r:?}");
    let r = bhatti(&s, &["template", "warm", "small"]).ok();
    assert!(r.stdout.contains(&warmed.key) && r.stdout.contains("already there"), "{r:?}");
    let list = shapes(&s).await;
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].key.as_str(), list[0].uses, list[0].source.as_str()),
        (warmed.key.as_str(), 0, "warm")
    );

    // The template's first create restores.
    bhatti(&s, &["create", "--template", "small", "--name", "a", "-e", "X=1"]).ok();
    bhatti(&s, &["create", "--template", "small", "--name", "b"]).ok();
    let list = shapes(&s).await;
    assert_eq!(list.iter().find(|e| e.key == warmed.key).map(|e| e.uses), Some(1), "{list:?}");
    assert_eq!(list.len(), 2, "a's env is another shape, recorded at its boot: {list:?}");
    let r = bhatti(&s, &["exec", "b", "--", "echo", "ran"]).ok();
    assert_eq!(r.stdout, "ran\n");

    // --boot boots and records nothing.
    bhatti(&s, &["create", "--template", "small", "--name", "c", "--boot"]).ok();
    let list = shapes(&s).await;
    assert_eq!(list.iter().map(|e| e.uses).sum::<u64>(), 1, "{list:?}");

    // A restart keeps the shape store, and creates restore from it.
    assert!(s.terminate().success());
    s.start().await;
    let after = shapes(&s).await;
    assert_eq!(after.len(), 2, "{after:?} ({})", s.logs());
    bhatti(&s, &["create", "--template", "small", "--name", "d"]).ok();
    let list = shapes(&s).await;
    assert_eq!(list.iter().find(|e| e.key == warmed.key).map(|e| e.uses), Some(2), "{list:?}");
    let r = bhatti(&s, &["exec", "d", "--", "echo", "ran"]).ok();
    assert_eq!(r.stdout, "ran\n");

    // The admin drops one; the next create of that shape boots and records it again.
    let r = s.req(Method::DELETE, &format!("/shapes/{}", warmed.key)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = s.req(Method::DELETE, &format!("/shapes/{}", warmed.key)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    bhatti(&s, &["create", "--template", "small", "--name", "e"]).ok();
    let list = shapes(&s).await;
    assert_eq!(list.iter().find(|e| e.key == warmed.key).map(|e| e.uses), Some(0), "{list:?}");
}
