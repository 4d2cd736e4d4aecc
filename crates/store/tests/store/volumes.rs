use std::path::Path;

use store::{ErrorKind, Resource, Status, Store, StoreError, User, VolumeStatus};

use crate::common::{sandbox, store, user};

fn ready(s: &mut Store, u: &User, name: &str, mb: u32) -> store::Volume {
    s.create_volume(&u.id, name, mb, Path::new(&format!("/v/{}/{name}.ext4", u.id))).unwrap();
    s.set_volume_ready(&u.id, name).unwrap();
    s.volume(&u.id, name).unwrap()
}

#[test]
fn persistent_volume_create_and_get() {
    let (_d, mut s) = store();
    let u = user(&mut s, "alice");
    let v = s.create_volume(&u.id, "data", 100, Path::new("/v/data.ext4")).unwrap();
    assert!(v.id.starts_with("vol_"));
    assert_eq!((v.name.as_str(), v.size_mb, v.status), ("data", 100, VolumeStatus::Creating));
    assert_eq!(v.file_path, Path::new("/v/data.ext4"));
    assert!(v.attachments.is_empty());
    s.set_volume_ready(&u.id, "data").unwrap();
    assert_eq!(s.volume(&u.id, "data").unwrap().status, VolumeStatus::Ready);
    let bad = s.create_volume(&u.id, "zero", 0, Path::new("/v/z")).unwrap_err();
    assert_eq!(bad.kind(), ErrorKind::Invalid);
}

#[test]
fn persistent_volume_user_scoped() {
    let (_d, mut s) = store();
    let a = user(&mut s, "alice");
    let b = user(&mut s, "bob");
    ready(&mut s, &a, "data", 10);
    assert_eq!(s.volume(&b.id, "data").unwrap_err().kind(), ErrorKind::NotFound);
    ready(&mut s, &b, "data", 10);
    assert_eq!(s.list_volumes(&a.id).unwrap().len(), 1);
    assert_eq!(s.delete_volume(&b.id, "nope").unwrap_err().kind(), ErrorKind::NotFound);
    s.delete_volume(&b.id, "data").unwrap();
    assert!(s.volume(&a.id, "data").is_ok(), "the other owner's volume is untouched");
}

#[test]
fn persistent_volume_unique_constraint() {
    let (_d, mut s) = store();
    let u = user(&mut s, "alice");
    ready(&mut s, &u, "data", 10);
    let err = s.create_volume(&u.id, "data", 10, Path::new("/v/x")).unwrap_err();
    assert!(matches!(err, StoreError::Conflict { kind: Resource::Volume, .. }), "{err}");
}

#[test]
fn persistent_volume_attach_detach() {
    let (_d, mut s) = store();
    let u = user(&mut s, "alice");
    ready(&mut s, &u, "data", 10);
    let sb = sandbox(&mut s, &u.id, "dev", Status::Running);
    let a = s.attach_volume(&u.id, "data", &sb.id, "/data", false).unwrap();
    assert_eq!((a.mount.as_str(), a.read_only), ("/data", false));
    assert_eq!(s.volume(&u.id, "data").unwrap().attachments, vec![a]);
    s.detach_volume(&u.id, "data", &sb.id).unwrap();
    assert!(s.volume(&u.id, "data").unwrap().attachments.is_empty());
    assert_eq!(s.detach_volume(&u.id, "data", &sb.id).unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn persistent_volume_double_rw_attach_rejected() {
    let (_d, mut s) = store();
    let u = user(&mut s, "alice");
    ready(&mut s, &u, "data", 10);
    let a = sandbox(&mut s, &u.id, "a", Status::Running);
    let b = sandbox(&mut s, &u.id, "b", Status::Running);
    s.attach_volume(&u.id, "data", &a.id, "/data", false).unwrap();
    let err = s.attach_volume(&u.id, "data", &b.id, "/data", false).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let again = s.attach_volume(&u.id, "data", &a.id, "/other", true).unwrap_err();
    assert_eq!(again.kind(), ErrorKind::Conflict, "one attachment per sandbox");
}

#[test]
fn persistent_volume_ro_multi_attach() {
    let (_d, mut s) = store();
    let u = user(&mut s, "alice");
    ready(&mut s, &u, "data", 10);
    for n in ["a", "b", "c"] {
        let sb = sandbox(&mut s, &u.id, n, Status::Running);
        s.attach_volume(&u.id, "data", &sb.id, "/data", true).unwrap();
    }
    assert_eq!(s.volume(&u.id, "data").unwrap().attachments.len(), 3);
}

#[test]
fn persistent_volume_rw_blocks_ro() {
    let (_d, mut s) = store();
    let u = user(&mut s, "alice");
    ready(&mut s, &u, "data", 10);
    let a = sandbox(&mut s, &u.id, "a", Status::Running);
    let b = sandbox(&mut s, &u.id, "b", Status::Running);
    s.attach_volume(&u.id, "data", &a.id, "/data", false).unwrap();
    let err = s.attach_volume(&u.id, "data", &b.id, "/data", true).unwrap_err();
    assert!(err.to_string().contains("read-write"), "{err}");
}

#[test]
fn persistent_volume_ro_blocks_rw() {
    let (_d, mut s) = store();
    let u = user(&mut s, "alice");
    ready(&mut s, &u, "data", 10);
    let a = sandbox(&mut s, &u.id, "a", Status::Running);
    let b = sandbox(&mut s, &u.id, "b", Status::Running);
    s.attach_volume(&u.id, "data", &a.id, "/data", true).unwrap();
    let err = s.attach_volume(&u.id, "data", &b.id, "/data", false).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
}

#[test]
fn persistent_volume_attach_needs_the_owners_live_sandbox() {
    let (_d, mut s) = store();
    let a = user(&mut s, "alice");
    let b = user(&mut s, "bob");
    ready(&mut s, &a, "data", 10);
    let theirs = sandbox(&mut s, &b.id, "x", Status::Running);
    let err = s.attach_volume(&a.id, "data", &theirs.id, "/data", true).unwrap_err();
    assert!(matches!(err, StoreError::NotFound { kind: Resource::Sandbox, .. }), "{err}");
    let dead = sandbox(&mut s, &a.id, "dead", Status::Destroyed);
    let err = s.attach_volume(&a.id, "data", &dead.id, "/data", true).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let err = s.attach_volume(&a.id, "nope", &dead.id, "/data", true).unwrap_err();
    assert!(matches!(err, StoreError::NotFound { kind: Resource::Volume, .. }), "{err}");
}

#[test]
fn persistent_volume_delete_while_attached() {
    let (_d, mut s) = store();
    let u = user(&mut s, "alice");
    ready(&mut s, &u, "data", 10);
    let sb = sandbox(&mut s, &u.id, "a", Status::Running);
    s.attach_volume(&u.id, "data", &sb.id, "/data", false).unwrap();
    let err = s.delete_volume(&u.id, "data").unwrap_err();
    assert_eq!(err.to_string(), r#"volume "data": has 1 active attachment(s)"#);
    s.detach_all_volumes(&sb.id).unwrap();
    assert_eq!(s.delete_volume(&u.id, "data").unwrap().name, "data");
}

#[test]
fn detach_all_persistent_volumes_for_sandbox() {
    let (_d, mut s) = store();
    let u = user(&mut s, "alice");
    ready(&mut s, &u, "v1", 10);
    ready(&mut s, &u, "v2", 10);
    let a = sandbox(&mut s, &u.id, "a", Status::Running);
    let b = sandbox(&mut s, &u.id, "b", Status::Running);
    s.attach_volume(&u.id, "v1", &a.id, "/1", true).unwrap();
    s.attach_volume(&u.id, "v2", &a.id, "/2", true).unwrap();
    s.attach_volume(&u.id, "v1", &b.id, "/1", true).unwrap();
    assert_eq!(s.detach_all_volumes(&a.id).unwrap(), 2);
    assert!(s.sandbox_volumes(&a.id).unwrap().is_empty());
    assert_eq!(s.sandbox_volumes(&b.id).unwrap().len(), 1, "the other sandbox keeps its own");
}

#[test]
fn sandbox_volumes_come_in_attach_order() {
    let (_d, mut s) = store();
    let u = user(&mut s, "alice");
    // Names sort the other way round, so order by name would fail.
    ready(&mut s, &u, "zeta", 10);
    ready(&mut s, &u, "alpha", 10);
    let sb = sandbox(&mut s, &u.id, "a", Status::Running);
    s.attach_volume(&u.id, "zeta", &sb.id, "/z", false).unwrap();
    s.attach_volume(&u.id, "alpha", &sb.id, "/a", true).unwrap();
    let got: Vec<_> =
        s.sandbox_volumes(&sb.id).unwrap().into_iter().map(|(v, a)| (v.name, a.mount)).collect();
    assert_eq!(got, [("zeta".to_owned(), "/z".to_owned()), ("alpha".to_owned(), "/a".to_owned())]);
}

#[test]
fn persistent_volume_creating_status_blocks_attach() {
    let (_d, mut s) = store();
    let u = user(&mut s, "alice");
    s.create_volume(&u.id, "data", 10, Path::new("/v/d")).unwrap();
    let sb = sandbox(&mut s, &u.id, "a", Status::Running);
    let err = s.attach_volume(&u.id, "data", &sb.id, "/data", false).unwrap_err();
    assert!(err.to_string().contains("being created"), "{err}");
}

#[test]
fn persistent_volume_resize_and_quota() {
    let (_d, mut s) = store();
    let (u, _) = s
        .create_user("alice", store::Quotas { max_volume_storage_mb: 100, ..Default::default() })
        .unwrap();
    ready(&mut s, &u, "a", 30);
    ready(&mut s, &u, "b", 50);
    assert_eq!(s.volume_storage_used(&u.id).unwrap(), 80);
    let err = s.create_volume(&u.id, "c", 21, Path::new("/v/c")).unwrap_err();
    assert!(
        matches!(err, StoreError::Limit { kind: Resource::Volume, used: 80, max: 100 }),
        "{err}"
    );
    s.create_volume(&u.id, "c", 20, Path::new("/v/c")).unwrap();
    assert_eq!(s.resize_volume(&u.id, "a", 60).unwrap().size_mb, 60);
    assert_eq!(
        s.volume_storage_used(&u.id).unwrap(),
        130,
        "resize does not re-check the quota (v1)"
    );
    assert_eq!(
        s.resize_volume(&u.id, "a", 60).unwrap_err().kind(),
        ErrorKind::Invalid,
        "must grow"
    );
    let sb = sandbox(&mut s, &u.id, "x", Status::Running);
    s.attach_volume(&u.id, "b", &sb.id, "/b", false).unwrap();
    assert_eq!(
        s.resize_volume(&u.id, "b", 70).unwrap_err().kind(),
        ErrorKind::Conflict,
        "attached"
    );
}

#[test]
fn destroying_a_sandbox_row_removes_its_attachments() {
    let (_d, mut s) = store();
    let u = user(&mut s, "alice");
    ready(&mut s, &u, "data", 10);
    let sb = sandbox(&mut s, &u.id, "a", Status::Running);
    s.attach_volume(&u.id, "data", &sb.id, "/data", false).unwrap();
    s.delete_sandbox(&u.id, &sb.id).unwrap();
    assert!(s.volume(&u.id, "data").unwrap().attachments.is_empty(), "foreign-key cascade");
}

#[test]
fn volume_backup_crud_order_retention_and_isolation() {
    let (_d, mut s) = store();
    let a = user(&mut s, "alice");
    let b = user(&mut s, "bob");
    let ids: Vec<String> = (0..5)
        .map(|i| s.create_volume_backup(&a.id, "data", &format!("k{i}"), 100 + i, "").unwrap().id)
        .collect();
    let got = s.volume_backup(&a.id, &ids[0]).unwrap();
    assert_eq!((got.s3_key.as_str(), got.size_bytes), ("k0", 100));
    let listed: Vec<_> =
        s.list_volume_backups(&a.id, "data").unwrap().into_iter().map(|x| x.id).collect();
    let newest_first: Vec<_> = ids.iter().rev().cloned().collect();
    assert_eq!(listed, newest_first);
    let beyond: Vec<_> =
        s.volume_backups_beyond(&a.id, "data", 3).unwrap().into_iter().map(|x| x.id).collect();
    assert_eq!(beyond, [ids[1].clone(), ids[0].clone()], "keep 3 of 5: the 2 oldest go");
    assert_eq!(s.volume_backup(&b.id, &ids[0]).unwrap_err().kind(), ErrorKind::NotFound);
    assert!(s.list_volume_backups(&b.id, "data").unwrap().is_empty());
    assert_eq!(s.delete_volume_backup(&b.id, &ids[0]).unwrap_err().kind(), ErrorKind::NotFound);
    s.delete_volume_backup(&a.id, &ids[0]).unwrap();
    assert_eq!(s.list_volume_backups(&a.id, "data").unwrap().len(), 4);
    let err = s.delete_user(&a.id).unwrap_err();
    assert!(err.to_string().contains("backup"), "{err}");
}
