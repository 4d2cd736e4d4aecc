//! Templates, secrets, images, snapshots, publish rules, tasks, events.

use std::path::{Path, PathBuf};

use store::{
    Ciphertext, ErrorKind, EventQuery, NewEvent, NewImage, NewTemplate, Resource, Status,
    StoreError, TaskStatus, TemplateMount, Timestamp,
};

use crate::common::{labels, sandbox, store, user};

#[test]
fn templates_crud() {
    let (_d, mut s) = store();
    let t = NewTemplate {
        name: "py".into(),
        image: "python".into(),
        cpus: 2.0,
        memory_mb: 2048,
        disk_size_mb: 4096,
        userdata: "#!/bin/sh".into(),
        secrets: vec!["TOKEN".into(), "KEY".into()],
        labels: labels(&[("lang", "python")]),
        mounts: vec![],
    };
    let got = s.create_template(&t).unwrap();
    assert_eq!(
        (got.name.as_str(), got.cpus, got.secrets.clone(), got.labels.clone()),
        ("py", 2.0, t.secrets.clone(), t.labels.clone())
    );
    assert_eq!(s.template(&got.id).unwrap(), got);
    let second = s
        .create_template(&NewTemplate {
            name: "b".into(),
            image: "x".into(),
            cpus: 1.0,
            ..Default::default()
        })
        .unwrap();
    let ids: Vec<_> = s.list_templates().unwrap().into_iter().map(|t| t.id).collect();
    assert_eq!(ids, [second.id.clone(), got.id.clone()], "newest first");
    s.delete_template(&got.id).unwrap();
    assert_eq!(s.template(&got.id).unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(s.delete_template(&got.id).unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(s.create_template(&NewTemplate::default()).unwrap_err().kind(), ErrorKind::Invalid);
}

#[test]
fn template_mounts() {
    let (_d, mut s) = store();
    let mounts = vec![
        TemplateMount {
            volume_name: "ws".into(),
            target: "/work".into(),
            readonly: false,
            auto_create: true,
        },
        TemplateMount {
            volume_name: "ref".into(),
            target: "/ref".into(),
            readonly: true,
            auto_create: false,
        },
    ];
    let t = s
        .create_template(&NewTemplate {
            name: "m".into(),
            image: "x".into(),
            cpus: 1.0,
            mounts: mounts.clone(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(s.template(&t.id).unwrap().mounts, mounts);
}

#[test]
fn secrets_crud() {
    let (_d, mut s) = store();
    let u = user(&mut s, "alice");
    let first = s.set_secret(&u.id, "TOKEN", &Ciphertext(b"age1".to_vec())).unwrap();
    assert_eq!(s.secret_value(&u.id, "TOKEN").unwrap(), Ciphertext(b"age1".to_vec()));
    let again = s.set_secret(&u.id, "TOKEN", &Ciphertext(b"age2".to_vec())).unwrap();
    assert_eq!(again.created_at, first.created_at, "upsert keeps created_at");
    assert!(again.updated_at >= first.updated_at);
    assert_eq!(s.secret_value(&u.id, "TOKEN").unwrap().0, b"age2");
    assert_eq!(s.secret(&u.id, "TOKEN").unwrap().name, "TOKEN");
    s.set_secret(&u.id, "A", &Ciphertext(vec![0])).unwrap();
    let names: Vec<_> = s.list_secrets(&u.id).unwrap().into_iter().map(|x| x.name).collect();
    assert_eq!(names, ["A", "TOKEN"], "sorted by name");
    s.delete_secret(&u.id, "TOKEN").unwrap();
    assert_eq!(s.secret_value(&u.id, "TOKEN").unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(s.delete_secret(&u.id, "TOKEN").unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(format!("{:?}", Ciphertext(b"sekrit".to_vec())), "Ciphertext(<6 bytes>)");
}

#[test]
fn secret_scoping_and_two_users_same_name() {
    let (_d, mut s) = store();
    let a = user(&mut s, "alice");
    let b = user(&mut s, "bob");
    s.set_secret(&a.id, "TOKEN", &Ciphertext(b"a".to_vec())).unwrap();
    assert_eq!(s.secret_value(&b.id, "TOKEN").unwrap_err().kind(), ErrorKind::NotFound);
    s.set_secret(&b.id, "TOKEN", &Ciphertext(b"b".to_vec())).unwrap();
    assert_eq!(s.secret_value(&a.id, "TOKEN").unwrap().0, b"a");
    assert_eq!(s.secret_value(&b.id, "TOKEN").unwrap().0, b"b");
    assert_eq!(s.list_secrets(&a.id).unwrap().len(), 1);
    assert_eq!(s.list_all_secrets().unwrap().len(), 2);
    let err = s.set_secret("usr_nobody", "X", &Ciphertext(vec![])).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

fn image(owner: Option<&str>, name: &str) -> NewImage {
    NewImage {
        owner: owner.map(str::to_owned),
        name: name.into(),
        source: "import:x".into(),
        file_path: PathBuf::from(format!("/img/{name}.ext4")),
        size_mb: 100,
        ..Default::default()
    }
}

#[test]
fn image_share_visibility_isolation_and_unshare() {
    let (_d, mut s) = store();
    let a = user(&mut s, "alice");
    let b = user(&mut s, "bob");
    let c = user(&mut s, "carol");
    let img = s.create_image(&image(Some(&a.id), "mine")).unwrap();
    assert_eq!(
        s.image_for(&b.id, "mine").unwrap_err().kind(),
        ErrorKind::NotFound,
        "invisible until shared"
    );
    s.share_image(&img.id, &b.id).unwrap();
    s.share_image(&img.id, &b.id).unwrap();
    assert_eq!(s.image_for(&b.id, "mine").unwrap().id, img.id);
    assert_eq!(
        s.image_for(&c.id, "mine").unwrap_err().kind(),
        ErrorKind::NotFound,
        "only the grantee"
    );
    assert_eq!(s.image_shares(&img.id).unwrap(), ["bob"]);
    s.share_image(&img.id, &c.id).unwrap();
    assert_eq!(s.image_shares(&img.id).unwrap(), ["bob", "carol"]);
    s.unshare_image(&img.id, &b.id).unwrap();
    assert_eq!(s.image_for(&b.id, "mine").unwrap_err().kind(), ErrorKind::NotFound, "revoked");
    assert_eq!(s.unshare_image(&img.id, &b.id).unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(s.share_image("img_nope", &b.id).unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn image_resolution_order_and_listing() {
    let (_d, mut s) = store();
    let a = user(&mut s, "alice");
    let b = user(&mut s, "bob");
    let global = s
        .create_image(&NewImage {
            id: Some("tier_minimal_amd64".into()),
            source: "built-in".into(),
            ..image(None, "minimal")
        })
        .unwrap();
    assert_eq!(global.id, "tier_minimal_amd64");
    let shared = s.create_image(&image(Some(&b.id), "minimal")).unwrap();
    s.share_image(&shared.id, &a.id).unwrap();
    assert_eq!(s.image_for(&a.id, "minimal").unwrap().id, shared.id, "shared before global");
    let own = s.create_image(&image(Some(&a.id), "minimal")).unwrap();
    assert_eq!(s.image_for(&a.id, "minimal").unwrap().id, own.id, "own first");
    s.create_image(&image(Some(&b.id), "private")).unwrap();
    let mut seen: Vec<_> = s.list_images(&a.id).unwrap().into_iter().map(|i| i.id).collect();
    seen.sort();
    let mut want = vec![global.id.clone(), shared.id.clone(), own.id.clone()];
    want.sort();
    assert_eq!(seen, want, "own + shared + global, not bob's private one");
    // Deleting resolves only the user's own rows.
    assert_eq!(s.delete_image(&a.id, "minimal").unwrap().id, own.id);
    assert_eq!(
        s.delete_image(&a.id, "minimal").unwrap_err().kind(),
        ErrorKind::NotFound,
        "global or shared: not own"
    );
    let dup = s.create_image(&image(None, "minimal")).unwrap_err();
    assert!(matches!(dup, StoreError::Conflict { kind: Resource::Image, .. }), "{dup}");
}

#[test]
fn get_image_by_name_and_user_by_name() {
    let (_d, mut s) = store();
    let a = user(&mut s, "alice");
    s.create_image(&image(Some(&a.id), "x")).unwrap();
    assert_eq!(s.image_by_name("x").unwrap().owner.as_deref(), Some(a.id.as_str()));
    assert_eq!(s.image_by_name("y").unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(s.user_by_name("alice").unwrap().id, a.id);
    assert_eq!(s.user_by_name("nobody").unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn image_quota() {
    let (_d, mut s) = store();
    let (u, _) = s.create_user("a", store::Quotas { max_images: 1, ..Default::default() }).unwrap();
    s.create_image(&image(Some(&u.id), "one")).unwrap();
    let err = s.create_image(&image(Some(&u.id), "two")).unwrap_err();
    assert!(matches!(err, StoreError::Limit { kind: Resource::Image, used: 1, max: 1 }), "{err}");
}

#[test]
fn snapshots_crud_and_quota() {
    let (_d, mut s) = store();
    let (u, _) =
        s.create_user("a", store::Quotas { max_snapshots: 2, ..Default::default() }).unwrap();
    let b = user(&mut s, "bob");
    let snap =
        s.create_snapshot(&u.id, "cp1", "sbx1", Path::new("/cp/cp1"), r#"{"v":1}"#, 12).unwrap();
    assert!(snap.id.starts_with("snap_"));
    assert_eq!(s.snapshot(&u.id, "cp1").unwrap(), snap);
    assert_eq!(s.snapshot(&b.id, "cp1").unwrap_err().kind(), ErrorKind::NotFound);
    let dup = s.create_snapshot(&u.id, "cp1", "sbx1", Path::new("/cp/x"), "", 1).unwrap_err();
    assert_eq!(dup.kind(), ErrorKind::Conflict);
    // The cheap check before a capture says the same.
    assert_eq!(s.check_snapshot_room(&u.id, "cp1").unwrap_err().kind(), ErrorKind::Conflict);
    s.check_snapshot_room(&u.id, "cp2").unwrap();
    s.check_snapshot_room(&b.id, "cp1").unwrap();
    s.create_snapshot(&u.id, "cp2", "sbx1", Path::new("/cp/cp2"), "", 1).unwrap();
    let full = s.create_snapshot(&u.id, "cp3", "sbx1", Path::new("/cp/cp3"), "", 1).unwrap_err();
    assert_eq!(full.kind(), ErrorKind::Limit);
    let room = s.check_snapshot_room(&u.id, "cp3").unwrap_err();
    assert_eq!(room.to_string(), "snapshot limit reached (2/2)");
    s.create_snapshot(&b.id, "cp1", "sbx2", Path::new("/cp/b1"), "", 1).unwrap();
    let mut dirs: Vec<_> = s.list_all_snapshots().unwrap().into_iter().map(|x| x.dir).collect();
    dirs.sort();
    assert_eq!(dirs, [Path::new("/cp/b1"), Path::new("/cp/cp1"), Path::new("/cp/cp2")]);
    let names: Vec<_> = s.list_snapshots(&u.id).unwrap().into_iter().map(|x| x.name).collect();
    assert_eq!(names, ["cp2", "cp1"]);
    assert_eq!(s.delete_snapshot(&u.id, "cp1").unwrap().dir, Path::new("/cp/cp1"));
    assert_eq!(s.delete_snapshot(&u.id, "cp1").unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn publish_rules() {
    let (_d, mut s) = store();
    let u = user(&mut s, "alice");
    let a = sandbox(&mut s, &u.id, "a", Status::Running);
    let b = sandbox(&mut s, &u.id, "b", Status::Running);
    // Create and get by alias.
    let r = s.create_publish_rule(&u.id, &a.id, 8080, "app-1").unwrap();
    assert!(r.id.starts_with("pub_") && r.created_at.millis() > 0);
    let (route, sb) = s.publish_route("app-1").unwrap();
    assert_eq!((route, sb.id.clone()), (r.clone(), a.id.clone()));
    assert!(s.alias_taken("app-1").unwrap());
    // Alias unique, (sandbox, port) unique, distinct conflicts.
    let alias = s.create_publish_rule(&u.id, &b.id, 9000, "app-1").unwrap_err();
    assert_eq!(alias.to_string(), r#"publish rule "app-1": alias is already taken"#);
    let port = s.create_publish_rule(&u.id, &a.id, 8080, "app-2").unwrap_err();
    assert_eq!(port.to_string(), r#"publish rule "8080": port is already published"#);
    // Another sandbox can publish the same port.
    s.create_publish_rule(&u.id, &b.id, 8080, "app-b").unwrap();
    s.create_publish_rule(&u.id, &a.id, 3000, "app-3").unwrap();
    s.create_publish_rule(&u.id, &a.id, 4000, "app-4").unwrap();
    assert_eq!(s.publish_route("missing").unwrap_err().kind(), ErrorKind::NotFound);
    let ports: Vec<_> =
        s.sandbox_publish_rules(&a.id).unwrap().into_iter().map(|r| r.port).collect();
    assert_eq!(ports, [3000, 4000, 8080]);
    assert_eq!(s.owner_publish_rules(&u.id).unwrap().len(), 4);
    assert_eq!(s.delete_publish_rule(&a.id, 3000).unwrap().alias, "app-3");
    assert_eq!(s.delete_publish_rule(&a.id, 3000).unwrap_err().kind(), ErrorKind::NotFound);
    // Deleting a sandbox's rules leaves the other sandbox's.
    assert_eq!(s.delete_sandbox_publish_rules(&a.id).unwrap(), 2);
    assert_eq!(s.sandbox_publish_rules(&b.id).unwrap().len(), 1);
    // Another owner cannot publish someone else's sandbox.
    let other = user(&mut s, "bob");
    let err = s.create_publish_rule(&other.id, &b.id, 1, "x").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    // A destroyed sandbox's alias leads nowhere.
    s.mark_destroyed(&b.id).unwrap();
    assert_eq!(s.publish_route("app-b").unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn tasks_lifecycle_and_purge() {
    let (_d, mut s) = store();
    let a = user(&mut s, "alice");
    let b = user(&mut s, "bob");
    let t = s.create_task(&a.id, "image_pull").unwrap();
    assert_eq!((t.status, t.progress.as_str()), (TaskStatus::Running, ""));
    assert_eq!(s.task(&b.id, &t.id).unwrap_err().kind(), ErrorKind::NotFound);
    s.set_task_progress(&t.id, "extracting layer 1/3").unwrap();
    assert_eq!(s.task(&a.id, &t.id).unwrap().progress, "extracting layer 1/3");
    s.complete_task(&t.id, r#"{"image":"x"}"#).unwrap();
    let done = s.task(&a.id, &t.id).unwrap();
    assert_eq!(
        (done.status, done.result.as_deref()),
        (TaskStatus::Completed, Some(r#"{"image":"x"}"#))
    );
    assert!(done.completed_at.is_some());
    assert_eq!(
        s.fail_task(&t.id, "late").unwrap_err().kind(),
        ErrorKind::Conflict,
        "already finished"
    );
    let f = s.create_task(&a.id, "image_pull").unwrap();
    s.fail_task(&f.id, "cancelled by user").unwrap();
    assert_eq!(s.task(&a.id, &f.id).unwrap().error.as_deref(), Some("cancelled by user"));
    let running = s.create_task(&a.id, "image_pull").unwrap();
    let future = Timestamp(Timestamp::now().millis() + 60_000);
    assert_eq!(s.purge_tasks(future).unwrap(), 2, "finished ones only");
    assert!(s.task(&a.id, &running.id).is_ok());
    assert_eq!(s.set_task_progress("task_nope", "x").unwrap_err().kind(), ErrorKind::NotFound);
}

fn ev(ts: i64, kind: &str, user: &str, sandbox: &str) -> NewEvent {
    NewEvent {
        ts: Timestamp(ts),
        kind: kind.into(),
        user_id: user.into(),
        sandbox_id: sandbox.into(),
        meta: "{}".into(),
    }
}

#[test]
fn insert_and_query_events() {
    let (_d, mut s) = store();
    s.record_events(&[
        ev(1000, "sandbox.created", "u1", "s1"),
        ev(2000, "sandbox.stopped", "u1", "s1"),
        ev(3000, "thermal.pause", "u2", "s2"),
        ev(4000, "sandboxes", "u2", ""),
        ev(5000, "sandbox.created", "u2", "s3"),
    ])
    .unwrap();
    let kinds = |q: EventQuery| -> Vec<String> {
        s.query_events(&q).unwrap().into_iter().map(|e| e.event.kind).collect()
    };
    assert_eq!(
        kinds(EventQuery { kind: Some("sandbox.created".into()), ..Default::default() }),
        ["sandbox.created", "sandbox.created"]
    );
    assert_eq!(
        kinds(EventQuery { kind: Some("sandbox".into()), ..Default::default() }),
        ["sandbox.created", "sandbox.stopped", "sandbox.created"],
        "prefix matches `sandbox.*`, not `sandboxes`; newest first"
    );
    assert_eq!(kinds(EventQuery { user_id: Some("u2".into()), ..Default::default() }).len(), 3);
    assert_eq!(kinds(EventQuery { sandbox_id: Some("s1".into()), ..Default::default() }).len(), 2);
    assert_eq!(
        kinds(EventQuery { since: Some(Timestamp(3000)), ..Default::default() }),
        ["sandbox.created", "sandboxes", "thermal.pause"]
    );
    assert_eq!(kinds(EventQuery { limit: Some(2), ..Default::default() }).len(), 2);
    let q = EventQuery {
        kind: Some("sandbox".into()),
        user_id: Some("u1".into()),
        limit: Some(1),
        ..Default::default()
    };
    assert_eq!(s.count_events(&q).unwrap(), 2, "count ignores the limit");
    // A batch with a bad event writes nothing.
    let err = s.record_events(&[ev(6000, "ok", "", ""), ev(7000, "", "", "")]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid);
    assert_eq!(s.count_events(&EventQuery::default()).unwrap(), 5);
}

#[test]
fn event_retention() {
    let (_d, mut s) = store();
    s.record_events(&[ev(1000, "a.b", "", ""), ev(2000, "a.b", "", ""), ev(3000, "a.b", "", "")])
        .unwrap();
    assert_eq!(s.purge_events(Timestamp(2500)).unwrap(), 2);
    assert_eq!(s.count_events(&EventQuery::default()).unwrap(), 1);
    assert_eq!(s.purge_events(Timestamp::now()).unwrap(), 1, "everything older than now");
}

#[test]
fn metrics_snapshots_query_sum_and_retention() {
    let (_d, mut s) = store();
    for (ts, requests) in [(1000, 10), (2000, 11), (3000, 12)] {
        let m = store::MetricsSnapshot {
            ts: Timestamp(ts),
            api_requests: requests,
            host_load_1m: 0.25,
            sandboxes_hot: 2,
            ..Default::default()
        };
        s.record_metrics(&m).unwrap();
    }
    let all = s.metrics_since(Timestamp(0)).unwrap();
    assert_eq!(all.iter().map(|m| m.api_requests).sum::<u64>(), 33);
    assert_eq!((all[0].host_load_1m, all[0].sandboxes_hot), (0.25, 2));
    assert_eq!(s.metrics_since(Timestamp(2000)).unwrap().len(), 2);
    assert_eq!(s.purge_metrics(Timestamp(2500)).unwrap(), 2);
    assert_eq!(s.metrics_since(Timestamp(0)).unwrap()[0].api_requests, 12);
}
