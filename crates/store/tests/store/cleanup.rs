//! The start-up clean-ups of host.md 4.6, each a named test.

use std::path::Path;

use bhatti_core::Thermal;
use store::{DataDirs, Status};

use crate::common::{record, sandbox, store, user};

fn touch(p: &Path) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, b"x").unwrap();
}

#[test]
fn cleanup_detaches_orphaned_attachments() {
    let (d, mut s) = store();
    let u = user(&mut s, "alice");
    let v = d.path().join("v.ext4");
    s.create_volume(&u.id, "data", 10, &v).unwrap();
    s.set_volume_ready(&u.id, "data").unwrap();
    let live = sandbox(&mut s, &u.id, "live", Status::Running);
    let lost = sandbox(&mut s, &u.id, "lost", Status::Running);
    let gone = sandbox(&mut s, &u.id, "gone", Status::Running);
    for sb in [&live, &lost, &gone] {
        s.attach_volume(&u.id, "data", &sb.id, "/data", true).unwrap();
    }
    s.set_status(&lost.id, Status::Unknown).unwrap();
    s.mark_destroyed(&gone.id).unwrap();
    let report = s.clean_up_at_start(&DataDirs::under(d.path())).unwrap();
    assert_eq!(report.detached, 2);
    let left: Vec<_> =
        s.volume(&u.id, "data").unwrap().attachments.into_iter().map(|a| a.sandbox_id).collect();
    assert_eq!(left, [live.id]);
}

#[test]
fn cleanup_removes_volume_files_without_rows() {
    let (d, mut s) = store();
    let u = user(&mut s, "alice");
    let dirs = DataDirs::under(d.path());
    let kept = dirs.volumes.join(&u.id).join("data.ext4");
    let stray = dirs.volumes.join(&u.id).join("deleted.ext4");
    let not_a_volume = dirs.volumes.join(&u.id).join("data.ext4.backup-tmp");
    for f in [&kept, &stray, &not_a_volume] {
        touch(f);
    }
    s.create_volume(&u.id, "data", 10, &kept).unwrap();
    let report = s.clean_up_at_start(&dirs).unwrap();
    assert_eq!(report.stray_volume_files, std::slice::from_ref(&stray));
    assert!(kept.exists() && !stray.exists() && not_a_volume.exists());
    assert!(report.failures.is_empty());
}

#[test]
fn cleanup_removes_stale_checkpoint_staging() {
    let (d, mut s) = store();
    let dirs = DataDirs::under(d.path());
    let engine_staging = dirs.checkpoints.join("cp1.tmp-123-0");
    let owner_staging = dirs.checkpoints.join("usr_0123456789abcdef").join("cp2.tmp");
    let finished = dirs.checkpoints.join("usr_0123456789abcdef").join("cp3");
    let inside_finished = dirs.checkpoints.join("cp4").join("x.tmp");
    for f in [
        &engine_staging.join("ram"),
        &owner_staging.join("ram"),
        &finished.join("ram"),
        &inside_finished,
    ] {
        touch(f);
    }
    let mut report = s.clean_up_at_start(&dirs).unwrap();
    report.stale_staging.sort();
    let mut want = vec![engine_staging.clone(), owner_staging.clone()];
    want.sort();
    assert_eq!(report.stale_staging, want);
    assert!(!engine_staging.exists() && !owner_staging.exists());
    assert!(
        finished.join("ram").exists() && inside_finished.exists(),
        "finished checkpoints untouched"
    );
}

#[test]
fn cleanup_removes_orphaned_publish_rules() {
    let (d, mut s) = store();
    let u = user(&mut s, "alice");
    let live = sandbox(&mut s, &u.id, "live", Status::Stopped);
    let dead = sandbox(&mut s, &u.id, "dead", Status::Running);
    s.create_publish_rule(&u.id, &live.id, 80, "live").unwrap();
    s.create_publish_rule(&u.id, &dead.id, 80, "dead").unwrap();
    s.set_status(&dead.id, Status::Unknown).unwrap();
    let report = s.clean_up_at_start(&DataDirs::under(d.path())).unwrap();
    assert_eq!(report.unpublished, 1);
    assert!(s.publish_route("live").is_ok());
    assert!(!s.alias_taken("dead").unwrap());
}

#[test]
fn cleanup_follows_recovery_decisions() {
    // A running sandbox without a snapshot becomes unknown at recovery; the clean-ups that
    // follow then free its volume and its alias.
    let (d, mut s) = store();
    let u = user(&mut s, "alice");
    let sb = sandbox(&mut s, &u.id, "a", Status::Running);
    s.set_record(&sb.id, &record("a", false, Thermal::Hot)).unwrap();
    s.create_volume(&u.id, "data", 10, &d.path().join("v.ext4")).unwrap();
    s.set_volume_ready(&u.id, "data").unwrap();
    s.attach_volume(&u.id, "data", &sb.id, "/d", false).unwrap();
    s.create_publish_rule(&u.id, &sb.id, 80, "a").unwrap();
    let plan = store::recovery::plan(s.recovery_inputs().unwrap());
    s.apply_recovery(&plan).unwrap();
    let report = s.clean_up_at_start(&DataDirs::under(d.path())).unwrap();
    assert_eq!((report.detached, report.unpublished), (1, 1));
}
