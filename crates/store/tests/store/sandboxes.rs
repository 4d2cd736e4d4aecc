use bhatti_core::{NetPolicy, Posture, Thermal};
use store::{Change, ErrorKind, Resource, Status, StoreError};

use crate::common::{labels, new_sandbox, record, sandbox, store, user};

#[test]
fn sandbox_crud() {
    let (_d, mut s) = store();
    let u = user(&mut s, "alice");
    let mut want = new_sandbox(&u.id, "dev");
    want.cpus = 1.5;
    want.memory_mb = 2048;
    want.keep_hot = true;
    want.template_id = Some("tpl".into());
    let sb = s.create_sandbox(&want).unwrap();
    assert_eq!(sb.id.len(), 16);
    assert_eq!(sb.status, Status::Creating);
    assert_eq!((sb.cpus, sb.memory_mb, sb.keep_hot), (1.5, 2048, true));
    assert_eq!(sb.template_id.as_deref(), Some("tpl"));
    assert_eq!(sb.labels, labels(&[]), "no labels read back as empty");
    assert!(sb.record.is_none() && sb.thermal.is_none() && !sb.has_shell_token);
    assert_eq!(s.sandbox(&u.id, &sb.id).unwrap(), sb);
    s.update_sandbox(
        &sb.id,
        &Change {
            status: Some(Status::Running),
            thermal: Some(Thermal::Hot),
            ip: Some("10.0.0.2"),
            record: None,
            user_stopped: None,
        },
    )
    .unwrap();
    let got = s.sandbox(&u.id, &sb.id).unwrap();
    assert_eq!(
        (got.status, got.thermal, got.ip.as_str()),
        (Status::Running, Some(Thermal::Hot), "10.0.0.2")
    );
    assert!(got.stopped_at.is_none());
    assert!(!got.user_stopped, "a new sandbox was not stopped by its user");
    s.set_status(&sb.id, Status::Stopped).unwrap();
    let got = s.sandbox(&u.id, &sb.id).unwrap();
    assert!(got.stopped_at.is_some(), "stopping records when");
    assert_eq!(got.thermal, Some(Thermal::Hot), "fields not in the change are kept");
    s.set_keep_hot(&u.id, &sb.id, false).unwrap();
    assert!(!s.sandbox(&u.id, &sb.id).unwrap().keep_hot);
    assert_eq!(s.list_sandboxes(&u.id, &[]).unwrap().len(), 1);
    s.delete_sandbox(&u.id, &sb.id).unwrap();
    assert_eq!(s.sandbox(&u.id, &sb.id).unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn create_validates_and_enforces_the_quota() {
    let (_d, mut s) = store();
    let (u, _) =
        s.create_user("alice", store::Quotas { max_sandboxes: 2, ..Default::default() }).unwrap();
    let mut bad = new_sandbox(&u.id, "");
    assert_eq!(s.create_sandbox(&bad).unwrap_err().kind(), ErrorKind::Invalid);
    bad.name = "x".into();
    bad.cpus = 0.0;
    assert_eq!(s.create_sandbox(&bad).unwrap_err().kind(), ErrorKind::Invalid);
    let nobody = s.create_sandbox(&new_sandbox("usr_nobody", "x")).unwrap_err();
    assert!(matches!(nobody, StoreError::NotFound { kind: Resource::User, .. }), "{nobody}");
    sandbox(&mut s, &u.id, "a", Status::Running);
    let b = sandbox(&mut s, &u.id, "b", Status::Running);
    let err = s.create_sandbox(&new_sandbox(&u.id, "c")).unwrap_err();
    assert!(matches!(err, StoreError::Limit { kind: Resource::Sandbox, used: 2, max: 2 }), "{err}");
    assert_eq!(err.kind(), ErrorKind::Limit);
    s.mark_destroyed(&b.id).unwrap();
    s.create_sandbox(&new_sandbox(&u.id, "c")).unwrap();
}

#[test]
fn sandbox_scoping() {
    let (_d, mut s) = store();
    let a = user(&mut s, "alice");
    let b = user(&mut s, "bob");
    let sa = sandbox(&mut s, &a.id, "dev", Status::Running);
    sandbox(&mut s, &b.id, "other", Status::Running);
    // Another owner's row is "not found", never "forbidden".
    assert_eq!(s.sandbox(&b.id, &sa.id).unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(s.resolve_sandbox(&b.id, &sa.id).unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(s.resolve_sandbox(&b.id, "dev").unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(s.delete_sandbox(&b.id, &sa.id).unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(s.list_sandboxes(&a.id, &[]).unwrap().len(), 1);
    assert_eq!(s.list_sandboxes(&b.id, &[]).unwrap().len(), 1);
    assert_eq!(s.list_all_sandboxes().unwrap().len(), 2);
    assert_eq!(s.sandbox_by_id(&sa.id).unwrap().id, sa.id);
}

#[test]
fn resolve_by_id_then_name_then_unique_prefix() {
    let (_d, mut s) = store();
    let u = user(&mut s, "alice");
    let dev = sandbox(&mut s, &u.id, "dev", Status::Running);
    assert_eq!(s.resolve_sandbox(&u.id, &dev.id).unwrap().id, dev.id);
    assert_eq!(s.resolve_sandbox(&u.id, "dev").unwrap().id, dev.id);
    assert_eq!(s.resolve_sandbox(&u.id, &dev.id[..6]).unwrap().id, dev.id);
    let short = &dev.id[..store::MIN_ID_PREFIX - 1];
    assert_eq!(s.resolve_sandbox(&u.id, short).unwrap_err().kind(), ErrorKind::NotFound);
    // A name that is another sandbox's ID wins over the name only by exact ID.
    let named_like_id = sandbox(&mut s, &u.id, &dev.id, Status::Running);
    assert_eq!(s.resolve_sandbox(&u.id, &dev.id).unwrap().id, dev.id, "exact ID first");
    assert_ne!(named_like_id.id, dev.id);
    // A destroyed sandbox's name no longer resolves; its ID still does.
    s.mark_destroyed(&dev.id).unwrap();
    s.delete_sandbox(&u.id, &named_like_id.id).unwrap();
    assert_eq!(s.resolve_sandbox(&u.id, "dev").unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(s.resolve_sandbox(&u.id, &dev.id).unwrap().status, Status::Destroyed);
}

#[test]
fn ambiguous_prefix_is_a_conflict() {
    let (_d, mut s) = store();
    let u = user(&mut s, "alice");
    s.set_quotas(&u.id, store::Quotas { max_sandboxes: 100_000, ..Default::default() }).unwrap();
    // 4-hex-char prefixes collide among 16^4 values after a few hundred IDs (birthday bound).
    let mut seen = std::collections::HashMap::new();
    let prefix = loop {
        let sb = s.create_sandbox(&new_sandbox(&u.id, &format!("s{}", seen.len()))).unwrap();
        let p = sb.id[..store::MIN_ID_PREFIX].to_owned();
        if seen.insert(p.clone(), sb.id).is_some() {
            break p;
        }
    };
    let err = s.resolve_sandbox(&u.id, &prefix).unwrap_err();
    assert!(matches!(err, StoreError::Conflict { kind: Resource::Sandbox, .. }), "{err}");
}

#[test]
fn sandbox_name_uniqueness_per_user() {
    let (_d, mut s) = store();
    let a = user(&mut s, "alice");
    let b = user(&mut s, "bob");
    let first = sandbox(&mut s, &a.id, "dev", Status::Running);
    let err = s.create_sandbox(&new_sandbox(&a.id, "dev")).unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { kind: Resource::Sandbox, name, .. } if name == "dev"),
        "{err}"
    );
    assert_eq!(err.to_string(), r#"sandbox "dev": name is already in use"#);
    sandbox(&mut s, &b.id, "dev", Status::Running);
    s.mark_destroyed(&first.id).unwrap();
    s.create_sandbox(&new_sandbox(&a.id, "dev")).unwrap();
}

#[test]
fn rename_sandbox() {
    let (_d, mut s) = store();
    let u = user(&mut s, "alice");
    let sb = sandbox(&mut s, &u.id, "old", Status::Running);
    let renamed = s.rename_sandbox(&u.id, &sb.id, "new").unwrap();
    assert_eq!(renamed.name, "new");
    assert_eq!(s.resolve_sandbox(&u.id, "old").unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(s.resolve_sandbox(&u.id, "new").unwrap().id, sb.id);
    assert_eq!(s.rename_sandbox(&u.id, &sb.id, "new").unwrap().name, "new", "same name: no-op");
}

#[test]
fn rename_sandbox_conflict() {
    let (_d, mut s) = store();
    let u = user(&mut s, "alice");
    let a = sandbox(&mut s, &u.id, "a", Status::Running);
    sandbox(&mut s, &u.id, "b", Status::Running);
    let err = s.rename_sandbox(&u.id, &a.id, "b").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert_eq!(s.sandbox(&u.id, &a.id).unwrap().name, "a", "unchanged");
}

#[test]
fn rename_sandbox_destroyed_name_reusable() {
    let (_d, mut s) = store();
    let u = user(&mut s, "alice");
    let a = sandbox(&mut s, &u.id, "a", Status::Running);
    let b = sandbox(&mut s, &u.id, "b", Status::Running);
    s.mark_destroyed(&b.id).unwrap();
    assert_eq!(s.rename_sandbox(&u.id, &a.id, "b").unwrap().name, "b");
}

#[test]
fn rename_sandbox_other_user_cannot_rename() {
    let (_d, mut s) = store();
    let a = user(&mut s, "alice");
    let b = user(&mut s, "bob");
    let sb = sandbox(&mut s, &a.id, "mine", Status::Running);
    assert_eq!(s.rename_sandbox(&b.id, &sb.id, "theirs").unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(s.sandbox_by_id(&sb.id).unwrap().name, "mine");
}

#[test]
fn count_live_sandboxes() {
    let (_d, mut s) = store();
    let a = user(&mut s, "alice");
    let b = user(&mut s, "bob");
    sandbox(&mut s, &a.id, "1", Status::Running);
    sandbox(&mut s, &a.id, "2", Status::Stopped);
    sandbox(&mut s, &a.id, "3", Status::Destroyed);
    sandbox(&mut s, &b.id, "1", Status::Running);
    assert_eq!(s.count_live_sandboxes(&a.id).unwrap(), 2);
    assert_eq!(s.count_live_sandboxes(&b.id).unwrap(), 1);
}

#[test]
fn delete_sandbox_by_id() {
    let (_d, mut s) = store();
    let u = user(&mut s, "alice");
    let sb = sandbox(&mut s, &u.id, "dev", Status::Running);
    s.delete_sandbox_by_id(&sb.id).unwrap();
    assert_eq!(s.delete_sandbox_by_id(&sb.id).unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn destroyed_sandbox_takes_no_status_change() {
    let (_d, mut s) = store();
    let u = user(&mut s, "alice");
    let sb = sandbox(&mut s, &u.id, "dev", Status::Destroyed);
    let err = s.set_status(&sb.id, Status::Running).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "a late engine event cannot revive it");
    s.mark_destroyed(&sb.id).unwrap();
    assert_eq!(
        s.set_status("0000000000000000", Status::Running).unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn engine_record_round_trip() {
    let (_d, mut s) = store();
    let u = user(&mut s, "alice");
    let sb = sandbox(&mut s, &u.id, "dev", Status::Running);
    assert!(sb.record.is_none(), "no record until the engine writes one");
    let r = record("dev", true, Thermal::Cold);
    s.set_record(&sb.id, &r).unwrap();
    let got = s.sandbox_by_id(&sb.id).unwrap();
    assert_eq!(got.record.as_ref().unwrap().decode().unwrap(), r);
    // A second write replaces the first.
    let r2 = record("dev", false, Thermal::Hot);
    s.set_record(&sb.id, &r2).unwrap();
    assert_eq!(s.sandbox_by_id(&sb.id).unwrap().record.unwrap().decode().unwrap(), r2);
    // The record holds the agent token and the environment: Debug shows neither.
    let shown = format!("{:?}", s.sandbox_by_id(&sb.id).unwrap());
    assert!(!shown.contains(&r.token) && !shown.contains("hunter2"), "{shown}");
}

fn policy(default: Posture, hosts: &[&str], cidrs: &[&str]) -> NetPolicy {
    NetPolicy {
        default,
        allow_hosts: hosts.iter().map(|h| h.to_string()).collect(),
        allow_cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
    }
}

#[test]
fn net_policy_round_trip() {
    let (_d, mut s) = store();
    let u = user(&mut s, "alice");
    let plain = sandbox(&mut s, &u.id, "plain", Status::Running);
    assert_eq!(plain.net_policy, NetPolicy::default(), "a create without one is public");
    let deny = policy(Posture::Deny, &["pypi.org", "*.pythonhosted.org"], &["10.0.0.0/8"]);
    let mut new = new_sandbox(&u.id, "locked");
    new.net_policy = deny.clone();
    let sb = s.create_sandbox(&new).unwrap();
    assert_eq!(sb.net_policy, deny);
    assert_eq!(s.sandbox(&u.id, &sb.id).unwrap().net_policy, deny);
    // The setter answers the policy it replaced; every read shows the new one.
    let open = policy(Posture::Public, &[], &["192.168.1.0/24"]);
    assert_eq!(s.set_net_policy(&u.id, &sb.id, &open).unwrap(), deny);
    assert_eq!(s.sandbox_by_id(&sb.id).unwrap().net_policy, open);
    let listed = s.list_sandboxes(&u.id, &[]).unwrap();
    assert_eq!(listed.iter().find(|l| l.id == sb.id).unwrap().net_policy, open);
    assert_eq!(s.sandbox(&u.id, &plain.id).unwrap().net_policy, NetPolicy::default());
    // The engine's stored record follows, so a recovery restores what the row shows.
    s.set_record(&sb.id, &record("locked", true, Thermal::Cold)).unwrap();
    s.set_net_policy(&u.id, &sb.id, &deny).unwrap();
    let got = s.sandbox_by_id(&sb.id).unwrap();
    let rec = got.record.unwrap().decode().unwrap();
    assert_eq!((got.net_policy, rec.net_policy), (deny.clone(), deny.clone()));
    assert_eq!(rec.token, record("locked", true, Thermal::Cold).token, "the rest is kept");
    // Another owner's, a missing and a destroyed sandbox are not found, and keep theirs.
    let bob = user(&mut s, "bob");
    let err = s.set_net_policy(&bob.id, &sb.id, &open).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(s.set_net_policy(&u.id, "nope", &open).unwrap_err().kind(), ErrorKind::NotFound);
    s.mark_destroyed(&plain.id).unwrap();
    let err = s.set_net_policy(&u.id, &plain.id, &open).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(s.sandbox_by_id(&sb.id).unwrap().net_policy, deny);
}

#[test]
fn net_policy_of_a_row_made_before_policies_is_public() {
    let (d, mut s) = store();
    let u = user(&mut s, "alice");
    let sb = sandbox(&mut s, &u.id, "old", Status::Running);
    let raw = rusqlite::Connection::open(d.path().join("state.db")).unwrap();
    // What migration 7 gives existing rows.
    raw.execute("UPDATE sandboxes SET net_policy = '{}' WHERE id = ?1", [&sb.id]).unwrap();
    assert_eq!(s.sandbox_by_id(&sb.id).unwrap().net_policy, NetPolicy::default());
    // The column holds JSON only; JSON of another shape is a corrupt row, not a default.
    let not_json = raw.execute("UPDATE sandboxes SET net_policy = '{' WHERE id = ?1", [&sb.id]);
    assert!(not_json.is_err(), "the column's CHECK refuses text that is not JSON");
    raw.execute(
        r#"UPDATE sandboxes SET net_policy = '{"default":"open"}' WHERE id = ?1"#,
        [&sb.id],
    )
    .unwrap();
    drop(raw);
    let err = s.sandbox_by_id(&sb.id).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
}

#[test]
fn shell_token_round_trip() {
    let (_d, mut s) = store();
    let a = user(&mut s, "alice");
    let b = user(&mut s, "bob");
    let sb = sandbox(&mut s, &a.id, "dev", Status::Running);
    assert!(!s.check_shell_token(&sb.id, "").unwrap(), "no token set");
    s.set_shell_token(&a.id, &sb.id, Some("tok1")).unwrap();
    assert!(s.sandbox_by_id(&sb.id).unwrap().has_shell_token);
    assert!(s.check_shell_token(&sb.id, "tok1").unwrap());
    assert!(!s.check_shell_token(&sb.id, "tok2").unwrap());
    s.set_shell_token(&a.id, &sb.id, Some("tok2")).unwrap();
    assert!(!s.check_shell_token(&sb.id, "tok1").unwrap(), "rotation kills the old token");
    assert!(s.check_shell_token(&sb.id, "tok2").unwrap());
    assert_eq!(s.set_shell_token(&b.id, &sb.id, None).unwrap_err().kind(), ErrorKind::NotFound);
    s.set_shell_token(&a.id, &sb.id, None).unwrap();
    assert!(!s.check_shell_token(&sb.id, "tok2").unwrap());
    assert!(!s.check_shell_token("missing", "tok2").unwrap());
    s.set_shell_token(&a.id, &sb.id, Some("tok3")).unwrap();
    s.mark_destroyed(&sb.id).unwrap();
    assert!(!s.check_shell_token(&sb.id, "tok3").unwrap(), "destroyed: refused like the rest");
}

#[test]
fn labels_create_and_read() {
    let (_d, mut s) = store();
    let u = user(&mut s, "alice");
    let mut n = new_sandbox(&u.id, "dev");
    n.labels = labels(&[("team", "infra"), ("example.com/tier", "web")]);
    let sb = s.create_sandbox(&n).unwrap();
    assert_eq!(s.sandbox_by_id(&sb.id).unwrap().labels, n.labels);
}

#[test]
fn labels_filter_and() {
    let (_d, mut s) = store();
    let u = user(&mut s, "alice");
    for (name, l) in [
        ("a", labels(&[("env", "prod"), ("team", "x")])),
        ("b", labels(&[("env", "prod"), ("team", "y")])),
        ("c", labels(&[("env", "dev")])),
    ] {
        let mut n = new_sandbox(&u.id, name);
        n.labels = l;
        s.create_sandbox(&n).unwrap();
    }
    let sel = |pairs: &[(&str, &str)]| -> Vec<String> {
        let p: Vec<_> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut names: Vec<_> =
            s.list_sandboxes(&u.id, &p).unwrap().into_iter().map(|x| x.name).collect();
        names.sort();
        names
    };
    assert_eq!(sel(&[]), ["a", "b", "c"]);
    assert_eq!(sel(&[("env", "prod")]), ["a", "b"]);
    assert_eq!(sel(&[("env", "prod"), ("team", "y")]), ["b"]);
    assert_eq!(sel(&[("env", "prod"), ("team", "z")]), Vec::<String>::new());
    assert_eq!(sel(&[("missing", "")]), Vec::<String>::new());
}

#[test]
fn labels_update_merge() {
    let (_d, mut s) = store();
    let u = user(&mut s, "alice");
    let mut n = new_sandbox(&u.id, "dev");
    n.labels = labels(&[("a", "1"), ("b", "2"), ("c", "3")]);
    let sb = s.create_sandbox(&n).unwrap();
    let got =
        s.update_labels(&u.id, &sb.id, &labels(&[("a", "9"), ("d", "4")]), &["b".into()]).unwrap();
    assert_eq!(got, labels(&[("a", "9"), ("c", "3"), ("d", "4")]));
    assert_eq!(s.sandbox_by_id(&sb.id).unwrap().labels, got);
}

#[test]
fn labels_update_wrong_user_and_no_op() {
    let (_d, mut s) = store();
    let a = user(&mut s, "alice");
    let b = user(&mut s, "bob");
    let mut n = new_sandbox(&a.id, "dev");
    n.labels = labels(&[("a", "1")]);
    let sb = s.create_sandbox(&n).unwrap();
    let err = s.update_labels(&b.id, &sb.id, &labels(&[("x", "y")]), &[]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(s.sandbox_by_id(&sb.id).unwrap().labels, labels(&[("a", "1")]), "untouched");
    assert_eq!(s.update_labels(&a.id, &sb.id, &labels(&[]), &[]).unwrap(), labels(&[("a", "1")]));
    let missing = s.update_labels(&a.id, "0000000000000000", &labels(&[]), &[]).unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound, "a no-op still needs the sandbox");
}

#[test]
fn list_is_newest_first() {
    let (_d, mut s) = store();
    let u = user(&mut s, "alice");
    for name in ["first", "second", "third"] {
        sandbox(&mut s, &u.id, name, Status::Running);
    }
    let names: Vec<_> = s.list_sandboxes(&u.id, &[]).unwrap().into_iter().map(|x| x.name).collect();
    assert_eq!(names, ["third", "second", "first"]);
}
