//! Recovery at daemon start and write-ahead transitions: the seed's cases, each a named test.
//! The engine's state comes from records stored in the real store (or built by hand for the
//! pure decision); no VMs.

use bhatti_core::Thermal;
use store::{
    Change, Decision, ErrorKind, Intent, RecoveryInput, SkipReason, Status, Store, StoredRecord,
    UnknownReason, recovery,
};

use crate::common::{record, sandbox, store, user};

/// A sandbox of a fresh user with `status` and, if given, an engine record.
fn stored(s: &mut Store, name: &str, status: Status, rec: Option<(bool, Thermal)>) -> String {
    let owner = match s.user_by_name("owner") {
        Ok(u) => u,
        Err(_) => user(s, "owner"),
    };
    let sb = sandbox(s, &owner.id, name, Status::Running);
    if let Some((snapshot, thermal)) = rec {
        s.set_record(&sb.id, &record(name, snapshot, thermal)).unwrap();
    }
    if status != Status::Running {
        s.set_status(&sb.id, status).unwrap();
    }
    sb.id
}

/// Plans, applies, and returns the plan.
fn recover(s: &mut Store) -> store::RecoveryPlan {
    let plan = recovery::plan(s.recovery_inputs().unwrap());
    s.apply_recovery(&plan).unwrap();
    plan
}

fn decision<'a>(plan: &'a store::RecoveryPlan, id: &str) -> &'a Decision {
    &plan.outcome(id).unwrap().decision
}

#[test]
fn recover_stopped_with_snapshot_restores_as_stopped() {
    let (_d, mut s) = store();
    let id = stored(&mut s, "a", Status::Stopped, Some((true, Thermal::Cold)));
    let plan = recover(&mut s);
    assert!(matches!(decision(&plan, &id), Decision::Restore { mark_stopped: false, .. }));
    let records = plan.records();
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0],
        (id.clone(), record("a", true, Thermal::Cold)),
        "the engine gets the record as stored"
    );
    let sb = s.sandbox_by_id(&id).unwrap();
    assert_eq!((sb.status, sb.thermal), (Status::Stopped, Some(Thermal::Cold)));
}

#[test]
fn recover_stopped_without_snapshot_marks_unknown() {
    let (_d, mut s) = store();
    let id = stored(&mut s, "a", Status::Stopped, Some((false, Thermal::Cold)));
    let plan = recover(&mut s);
    assert_eq!(decision(&plan, &id), &Decision::MarkUnknown(UnknownReason::NoSnapshot));
    assert!(plan.records().is_empty(), "not handed to the engine");
    assert_eq!(s.sandbox_by_id(&id).unwrap().status, Status::Unknown);
}

#[test]
fn recover_running_with_snapshot_marks_stopped() {
    let (_d, mut s) = store();
    let id = stored(&mut s, "a", Status::Running, Some((true, Thermal::Hot)));
    let plan = recover(&mut s);
    assert!(matches!(decision(&plan, &id), Decision::Restore { mark_stopped: true, .. }));
    assert_eq!(plan.records().len(), 1);
    let sb = s.sandbox_by_id(&id).unwrap();
    assert_eq!((sb.status, sb.thermal), (Status::Stopped, Some(Thermal::Cold)), "comes back cold");
    assert!(sb.stopped_at.is_some());
}

#[test]
fn recover_running_without_snapshot_marks_unknown() {
    let (_d, mut s) = store();
    let id = stored(&mut s, "a", Status::Running, Some((false, Thermal::Hot)));
    let plan = recover(&mut s);
    assert_eq!(decision(&plan, &id), &Decision::MarkUnknown(UnknownReason::NoSnapshot));
    assert_eq!(s.sandbox_by_id(&id).unwrap().status, Status::Unknown);
}

#[test]
fn recover_skips_destroyed() {
    let (_d, mut s) = store();
    let id = stored(&mut s, "a", Status::Destroyed, Some((true, Thermal::Cold)));
    let plan = recover(&mut s);
    assert_eq!(decision(&plan, &id), &Decision::Skip(SkipReason::Destroyed));
    assert!(plan.records().is_empty());
    assert_eq!(s.sandbox_by_id(&id).unwrap().status, Status::Destroyed);
}

#[test]
fn recover_skips_sandbox_without_engine_state() {
    // No record: another engine's sandbox (v1's "not Firecracker"), or one the engine never
    // described. Left exactly as it is.
    let (_d, mut s) = store();
    let id = stored(&mut s, "a", Status::Running, None);
    let before = s.sandbox_by_id(&id).unwrap();
    let plan = recover(&mut s);
    assert_eq!(decision(&plan, &id), &Decision::Skip(SkipReason::NoEngineState));
    assert_eq!(s.sandbox_by_id(&id).unwrap(), before);
}

#[test]
fn recover_skips_already_unknown() {
    let (_d, mut s) = store();
    let id = stored(&mut s, "a", Status::Unknown, Some((true, Thermal::Cold)));
    let plan = recover(&mut s);
    assert_eq!(decision(&plan, &id), &Decision::Skip(SkipReason::AlreadyUnknown));
    assert!(plan.records().is_empty());
}

#[test]
fn recover_many_sandboxes_in_one_pass() {
    let (_d, mut s) = store();
    let cases = [
        ("stopped-snap", Status::Stopped, Some((true, Thermal::Cold)), Status::Stopped, true),
        ("stopped-nosnap", Status::Stopped, Some((false, Thermal::Cold)), Status::Unknown, false),
        ("running-snap", Status::Running, Some((true, Thermal::Warm)), Status::Stopped, true),
        ("running-nosnap", Status::Running, Some((false, Thermal::Hot)), Status::Unknown, false),
        ("destroyed", Status::Destroyed, Some((true, Thermal::Cold)), Status::Destroyed, false),
        ("foreign", Status::Running, None, Status::Running, false),
        ("stopped-snap-2", Status::Stopped, Some((true, Thermal::Cold)), Status::Stopped, true),
    ];
    let ids: Vec<_> = cases.iter().map(|(n, st, r, ..)| stored(&mut s, n, *st, *r)).collect();
    let plan = recover(&mut s);
    assert_eq!(plan.outcomes.len(), cases.len());
    let restored: Vec<_> = plan.records().into_iter().map(|(id, _)| id).collect();
    for (id, (name, _, _, after, restore)) in ids.iter().zip(cases) {
        assert_eq!(s.sandbox_by_id(id).unwrap().status, after, "{name}");
        assert_eq!(restored.contains(id), restore, "{name}");
    }
    // Running it again changes nothing: the first pass left every row decided.
    let again = recovery::plan(s.recovery_inputs().unwrap());
    assert_eq!(again.records().len(), 3);
    assert!(again.outcomes.iter().all(|o| !matches!(o.decision, Decision::MarkUnknown(_))));
}

#[test]
fn recover_decodes_numbers_stored_as_floats_or_integers() {
    let (_d, mut s) = store();
    let rec = record("a", true, Thermal::Cold);
    let as_ints = rec.to_json();
    assert!(as_ints.contains(r#""memory_mib":1024"#) && as_ints.contains(r#""vcpus":2"#));
    let as_floats = as_ints
        .replace(r#""memory_mib":1024"#, r#""memory_mib":1024.0"#)
        .replace(r#""vcpus":2"#, r#""vcpus":2.0"#)
        .replace(r#""version":1"#, r#""version":1.0"#);
    assert_ne!(as_floats, as_ints);
    for (name, text) in [("ints", as_ints), ("floats", as_floats)] {
        let input = RecoveryInput {
            id: name.into(),
            owner: "o".into(),
            status: Status::Stopped,
            record: Some(StoredRecord::from_json_text(text)),
            pending: None,
        };
        let plan = recovery::plan(vec![input]);
        match decision(&plan, name) {
            Decision::Restore { record, .. } => assert_eq!(**record, rec, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    // The typed columns tolerate both too: a REAL holding an integer, an INTEGER written as
    // an integral REAL (SQLite converts it on the way in).
    let id = stored(&mut s, "typed", Status::Running, None);
    let raw = rusqlite::Connection::open(s.path()).unwrap();
    raw.execute("UPDATE sandboxes SET cpus = 2, memory_mb = 2048.0 WHERE id = ?1", [&id]).unwrap();
    drop(raw);
    let sb = s.sandbox_by_id(&id).unwrap();
    assert_eq!((sb.cpus, sb.memory_mb), (2.0, 2048));
    // A fraction where an integer belongs is malformed, not rounded.
    let frac = rec.to_json().replace(r#""memory_mib":1024"#, r#""memory_mib":1024.5"#);
    let plan = recovery::plan(vec![RecoveryInput {
        id: "f".into(),
        owner: "o".into(),
        status: Status::Stopped,
        record: Some(StoredRecord::from_json_text(frac)),
        pending: None,
    }]);
    assert!(matches!(
        decision(&plan, "f"),
        Decision::MarkUnknown(UnknownReason::MalformedRecord(_))
    ));
}

#[test]
fn recover_malformed_record_marks_that_sandbox_unknown_and_goes_on() {
    let (d, mut s) = store();
    let good1 = stored(&mut s, "good1", Status::Stopped, Some((true, Thermal::Cold)));
    let bad = stored(&mut s, "bad", Status::Stopped, Some((true, Thermal::Cold)));
    let good2 = stored(&mut s, "good2", Status::Running, Some((true, Thermal::Cold)));
    // Damage one record behind the store's back (valid JSON, wrong shape, as a record of a
    // future engine version would be).
    let raw = rusqlite::Connection::open(d.path().join("state.db")).unwrap();
    raw.execute("UPDATE sandboxes SET record = '{\"version\":2,\"id\":7}' WHERE id = ?1", [&bad])
        .unwrap();
    drop(raw);
    let plan = recover(&mut s);
    match decision(&plan, &bad) {
        Decision::MarkUnknown(UnknownReason::MalformedRecord(why)) => assert!(!why.is_empty()),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.sandbox_by_id(&bad).unwrap().status, Status::Unknown);
    let restored: Vec<_> = plan.records().into_iter().map(|(id, _)| id).collect();
    assert_eq!(restored, [good1, good2], "the others are recovered");
}

#[test]
fn recover_reports_unfinished_transition() {
    let (_d, mut s) = store();
    let id = stored(&mut s, "a", Status::Running, Some((true, Thermal::Cold)));
    s.begin_transition(&id, Intent::Stop).unwrap();
    // Crash: no finish. Recovery names the interrupted intent and decides on the last
    // complete record.
    let plan = recover(&mut s);
    assert_eq!(plan.interrupted(), [(id.as_str(), "stop")]);
    assert!(matches!(decision(&plan, &id), Decision::Restore { mark_stopped: true, .. }));
    assert!(s.pending_transitions().unwrap().is_empty(), "cleared with the decision");
    assert!(recovery::plan(s.recovery_inputs().unwrap()).interrupted().is_empty());
}

#[test]
fn recover_finishes_an_interrupted_destroy() {
    let (_d, mut s) = store();
    let id = stored(&mut s, "a", Status::Running, Some((true, Thermal::Cold)));
    s.begin_transition(&id, Intent::Destroy).unwrap();
    let plan = recover(&mut s);
    assert_eq!(decision(&plan, &id), &Decision::FinishDestroy);
    assert!(plan.records().is_empty(), "the engine treats what is left as an orphan");
    assert_eq!(s.sandbox_by_id(&id).unwrap().status, Status::Destroyed);
}

#[test]
fn recover_interrupted_create_marks_unknown() {
    let (_d, mut s) = store();
    let u = user(&mut s, "owner");
    let sb = s.create_sandbox(&crate::common::new_sandbox(&u.id, "new")).unwrap();
    s.begin_transition(&sb.id, Intent::Create).unwrap();
    let plan = recover(&mut s);
    assert_eq!(decision(&plan, &sb.id), &Decision::MarkUnknown(UnknownReason::InterruptedCreate));
    assert_eq!(s.sandbox_by_id(&sb.id).unwrap().status, Status::Unknown);
}

#[test]
fn recovery_does_not_overwrite_a_row_changed_after_planning() {
    let (_d, mut s) = store();
    let id = stored(&mut s, "a", Status::Running, Some((false, Thermal::Hot)));
    let plan = recovery::plan(s.recovery_inputs().unwrap());
    s.set_status(&id, Status::Stopped).unwrap();
    s.apply_recovery(&plan).unwrap();
    assert_eq!(s.sandbox_by_id(&id).unwrap().status, Status::Stopped);
}

#[test]
fn transition_finish_applies_the_result_and_clears_the_intent_together() {
    let (_d, mut s) = store();
    let id = stored(&mut s, "a", Status::Running, Some((false, Thermal::Hot)));
    let t = s.begin_transition(&id, Intent::Stop).unwrap();
    assert_eq!(s.pending_transitions().unwrap(), vec![t.clone()]);
    let second = s.begin_transition(&id, Intent::Start).unwrap_err();
    assert_eq!(second.kind(), ErrorKind::Conflict, "one pending transition per sandbox");
    let rec = record("a", true, Thermal::Cold);
    s.finish_transition(
        &t,
        &Change {
            status: Some(Status::Stopped),
            thermal: Some(Thermal::Cold),
            ip: None,
            record: Some(&rec),
            user_stopped: Some(true),
        },
    )
    .unwrap();
    let sb = s.sandbox_by_id(&id).unwrap();
    assert_eq!((sb.status, sb.thermal), (Status::Stopped, Some(Thermal::Cold)));
    assert!(sb.user_stopped, "a user's stop is kept with the result");
    assert_eq!(sb.record.unwrap().decode().unwrap(), rec);
    assert!(s.pending_transitions().unwrap().is_empty());
    assert_eq!(
        s.finish_transition(&t, &Change::default()).unwrap_err().kind(),
        ErrorKind::NotFound,
        "finished once"
    );
    assert_eq!(s.begin_transition("nope", Intent::Stop).unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn transition_finish_is_all_or_nothing() {
    let (_d, mut s) = store();
    let id = stored(&mut s, "a", Status::Running, None);
    let t = s.begin_transition(&id, Intent::Destroy).unwrap();
    // The sandbox is destroyed behind the transition's back: applying a running status fails,
    // and the intent must stay (the delete rolled back with it).
    s.mark_destroyed(&id).unwrap();
    let err = s
        .finish_transition(&t, &Change { status: Some(Status::Running), ..Change::default() })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert_eq!(s.pending_transitions().unwrap(), vec![t]);
}

#[test]
fn recovery_volumes_come_in_attach_order() {
    // v1 rebuilt a sandbox's volumes from attachments at recovery (drive ids vol0, vol1 in
    // attachment order); the daemon reads them with `sandbox_volumes`.
    let (d, mut s) = store();
    let id = stored(&mut s, "a", Status::Stopped, Some((true, Thermal::Cold)));
    let owner = s.user_by_name("owner").unwrap();
    for name in ["b", "a"] {
        s.create_volume(&owner.id, name, 10, &d.path().join(format!("{name}.ext4"))).unwrap();
        s.set_volume_ready(&owner.id, name).unwrap();
        s.attach_volume(&owner.id, name, &id, &format!("/{name}"), false).unwrap();
    }
    recover(&mut s);
    let names: Vec<_> = s.sandbox_volumes(&id).unwrap().into_iter().map(|(v, _)| v.name).collect();
    assert_eq!(names, ["b", "a"]);
    // A sandbox without attachments has none (and that is no error).
    let other = stored(&mut s, "b", Status::Stopped, Some((true, Thermal::Cold)));
    assert!(s.sandbox_volumes(&other).unwrap().is_empty());
}
