use store::{ErrorKind, Quotas, Resource, Status, StoreError};

use crate::common::{sandbox, store, user};

#[test]
fn user_crud() {
    let (_d, mut s) = store();
    let q = Quotas { max_sandboxes: 7, ..Quotas::default() };
    let (alice, key) = s.create_user("alice", q).unwrap();
    assert!(alice.id.starts_with("usr_"));
    assert!(key.expose().starts_with("bht_") && key.expose().len() == 4 + 64);
    assert_eq!(alice.quotas, q);
    assert_eq!(s.user(&alice.id).unwrap(), alice);
    assert_eq!(s.user_by_name("alice").unwrap(), alice);
    assert_eq!(s.user_by_api_key(key.expose()).unwrap(), alice);
    let wrong = s.user_by_api_key("bht_0000").unwrap_err();
    assert_eq!(wrong.kind(), ErrorKind::NotFound);
    user(&mut s, "bob");
    let names: Vec<_> = s.list_users().unwrap().into_iter().map(|u| u.name).collect();
    assert_eq!(names, ["alice", "bob"]);
    let q2 = Quotas { max_images: 1, ..q };
    s.set_quotas(&alice.id, q2).unwrap();
    assert_eq!(s.user(&alice.id).unwrap().quotas, q2);
    assert_eq!(s.user("usr_nobody").unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn api_key_is_stored_as_sha256_only() {
    let (d, mut s) = store();
    let (_, key) = s.create_user("alice", Quotas::default()).unwrap();
    assert_eq!(format!("{key:?}"), "ApiKey(<redacted>)");
    drop(s);
    let raw = std::fs::read(d.path().join("state.db")).unwrap();
    let wal = std::fs::read(d.path().join("state.db-wal")).unwrap_or_default();
    let needle = key.expose().as_bytes();
    let hash = store::sha256_hex(key.expose());
    for bytes in [&raw, &wal] {
        assert!(!bytes.windows(needle.len()).any(|w| w == needle), "key found in the file");
    }
    let has_hash = |b: &Vec<u8>| b.windows(64).any(|w| w == hash.as_bytes());
    assert!(has_hash(&raw) || has_hash(&wal), "the hash is what is stored");
}

#[test]
fn user_delete_refused_with_sandboxes() {
    let (_d, mut s) = store();
    let u = user(&mut s, "alice");
    let sb = sandbox(&mut s, &u.id, "dev", Status::Running);
    let err = s.delete_user(&u.id).unwrap_err();
    assert!(matches!(err, StoreError::Conflict { kind: Resource::User, .. }), "{err}");
    assert!(err.to_string().contains("1 active sandbox"), "{err}");
    // Destroyed sandboxes do not hold the user; their rows go with it.
    s.mark_destroyed(&sb.id).unwrap();
    s.delete_user(&u.id).unwrap();
    assert_eq!(s.sandbox_by_id(&sb.id).unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(s.delete_user(&u.id).unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn user_delete_refused_with_secrets() {
    let (_d, mut s) = store();
    let u = user(&mut s, "alice");
    s.set_secret(&u.id, "TOKEN", &store::Ciphertext(vec![1, 2, 3])).unwrap();
    let err = s.delete_user(&u.id).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.to_string().contains("secret"), "{err}");
}

#[test]
fn user_delete_refused_with_volumes() {
    let (d, mut s) = store();
    let u = user(&mut s, "alice");
    s.create_volume(&u.id, "data", 10, &d.path().join("v.ext4")).unwrap();
    let err = s.delete_user(&u.id).unwrap_err();
    assert!(err.to_string().contains("1 volume"), "{err}");
}

#[test]
fn key_rotation() {
    let (_d, mut s) = store();
    let (u, old) = s.create_user("alice", Quotas::default()).unwrap();
    let new = s.rotate_api_key(&u.id).unwrap();
    assert_ne!(old, new);
    assert_eq!(s.user_by_api_key(old.expose()).unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(s.user_by_api_key(new.expose()).unwrap().id, u.id);
    assert_eq!(s.rotate_api_key("usr_nobody").unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn next_subnet_index_is_max_plus_one() {
    let (_d, mut s) = store();
    let a = user(&mut s, "a");
    assert_eq!(a.subnet_index, 1, "1 when there are no users");
    let b = user(&mut s, "b");
    let c = user(&mut s, "c");
    assert_eq!((b.subnet_index, c.subnet_index), (2, 3));
    // A gap below the maximum is not filled.
    s.delete_user(&b.id).unwrap();
    assert_eq!(user(&mut s, "d").subnet_index, 4);
}

#[test]
fn user_duplicate_name_rejected() {
    let (_d, mut s) = store();
    user(&mut s, "alice");
    let err = s.create_user("alice", Quotas::default()).unwrap_err();
    assert!(matches!(err, StoreError::Conflict { kind: Resource::User, .. }), "{err}");
    assert_eq!(s.create_user("", Quotas::default()).unwrap_err().kind(), ErrorKind::Invalid);
}
