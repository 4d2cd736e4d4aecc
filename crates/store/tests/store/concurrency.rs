//! Several connections on one file (the CLI opens the daemon's database while it runs, as in
//! v1) and the daemon's async handle.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use store::{AsyncStore, ErrorKind, EventQuery, NewEvent, Options, Status, Store};

use crate::common::{new_sandbox, store, user};

#[test]
fn concurrent_writers_and_readers_on_separate_connections() {
    let (d, mut s) = store();
    let u = user(&mut s, "alice");
    s.set_quotas(&u.id, store::Quotas { max_sandboxes: 10_000, ..Default::default() }).unwrap();
    let path = d.path().join("state.db");
    const WRITERS: usize = 4;
    const EACH: usize = 40;
    // Every writer, both readers and this thread.
    let start = Arc::new(Barrier::new(WRITERS + 3));
    let writers_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (path, owner, start) = (path.clone(), u.id.clone(), start.clone());
            std::thread::spawn(move || {
                let mut s = Store::open(&path).unwrap();
                start.wait();
                for i in 0..EACH {
                    // Alternating a multi-row transaction and a single insert.
                    let sb = s.create_sandbox(&new_sandbox(&owner, &format!("w{w}-{i}"))).unwrap();
                    s.record_events(&[NewEvent::now("t.a"), NewEvent::now("t.b")]).unwrap();
                    s.set_status(&sb.id, Status::Running).unwrap();
                }
            })
        })
        .collect();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (path, owner, start) = (path.clone(), u.id.clone(), start.clone());
            let done = writers_done.clone();
            std::thread::spawn(move || {
                let s = Store::open(&path).unwrap();
                start.wait();
                let mut last = 0;
                loop {
                    let n = s.count_live_sandboxes(&owner).unwrap() as usize;
                    let events = s.count_events(&EventQuery::default()).unwrap();
                    assert!(n >= last, "a reader never sees the count go back");
                    assert_eq!(events % 2, 0, "a two-event batch is never half visible");
                    last = n;
                    // Ends when all is seen, or (a writer failed) once the writers are gone.
                    if n == WRITERS * EACH || done.load(std::sync::atomic::Ordering::SeqCst) {
                        return;
                    }
                }
            })
        })
        .collect();
    start.wait();
    let wrote: Vec<_> = writers.into_iter().map(|t| t.join()).collect();
    writers_done.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in readers {
        t.join().unwrap();
    }
    assert!(wrote.iter().all(Result::is_ok), "every writer finished without an error");
    assert_eq!(s.count_live_sandboxes(&u.id).unwrap() as usize, WRITERS * EACH);
    assert_eq!(s.count_events(&EventQuery::default()).unwrap() as usize, WRITERS * EACH * 2);
    s.integrity_check().unwrap();
}

#[test]
fn a_second_writer_waits_for_the_lock_then_fails_typed_after_the_busy_timeout() {
    let (d, mut s) = store();
    let u = user(&mut s, "alice");
    let path = d.path().join("state.db");
    // Hold the write lock from a raw connection, as a long CLI transaction would.
    let holder = rusqlite::Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut impatient =
        Store::open_with(&path, &Options { busy_timeout: Duration::from_millis(50) }).unwrap();
    let err = impatient.create_sandbox(&new_sandbox(&u.id, "x")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    // Reads go on while the lock is held (WAL).
    assert_eq!(impatient.count_live_sandboxes(&u.id).unwrap(), 0);
    // Released within the timeout: the writer waits and succeeds.
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let mut patient =
            Store::open_with(&path, &Options { busy_timeout: Duration::from_secs(20) }).unwrap();
        tx.send(()).unwrap();
        patient.create_sandbox(&new_sandbox(&u.id, "y")).map(|_| ())
    });
    rx.recv().unwrap();
    holder.execute_batch("COMMIT").unwrap();
    waiter.join().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_store_runs_reads_and_writes_off_the_runtime() {
    let (d, mut s) = store();
    let u = user(&mut s, "alice");
    drop(s);
    let a = AsyncStore::open(d.path().join("state.db"), &Options::default()).unwrap();
    let owner = u.id.clone();
    let sb = a.write(move |s| s.create_sandbox(&new_sandbox(&owner, "dev"))).await.unwrap();
    // Threads, not the runtime: the closure runs on the store's own named threads.
    let writer = a.write(|_| Ok(std::thread::current().name().map(str::to_owned))).await.unwrap();
    let reader = a.read(|_| Ok(std::thread::current().name().map(str::to_owned))).await.unwrap();
    assert_eq!(
        (writer.as_deref(), reader.as_deref()),
        (Some("store-writer"), Some("store-reader"))
    );
    // A read sees the last committed write.
    let owner = u.id.clone();
    let got = a.read(move |s| s.resolve_sandbox(&owner, "dev")).await.unwrap();
    assert_eq!(got.id, sb.id);
    // Many concurrent calls from many tasks.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (a, owner, id) = (a.clone(), u.id.clone(), sb.id.clone());
        tasks.spawn(async move {
            if i % 2 == 0 {
                a.write(move |s| s.set_status(&id, Status::Running)).await
            } else {
                a.read(move |s| s.resolve_sandbox(&owner, "dev").map(|_| ())).await
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    // Typed errors come through unchanged.
    let owner = u.id.clone();
    let err = a.read(move |s| s.resolve_sandbox(&owner, "nope")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_store_survives_a_panicking_call_and_honours_its_deadline() {
    let (d, s) = store();
    drop(s);
    let path = d.path().join("state.db");
    let writer = Store::open(&path).unwrap();
    let reader = Store::open(&path).unwrap();
    let a = AsyncStore::from_stores(writer, reader, Duration::from_millis(200)).unwrap();
    let err =
        a.write(|_| -> store::Result<()> { panic!("bug in a store call") }).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    // The thread lives on. A loaded machine can make one call miss the short deadline, so it
    // gets a few tries; a dead thread fails every one.
    let mut alive = false;
    for _ in 0..10 {
        if a.write(|s| s.schema_version()).await.is_ok() {
            alive = true;
            break;
        }
    }
    assert!(alive, "the thread lives on");
    // A call stuck past the deadline answers Unavailable; it is released afterwards.
    let (release, stuck) = std::sync::mpsc::channel::<()>();
    let err = a
        .read(move |_| stuck.recv().map_err(|_| store::StoreError::Unavailable("x")))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("deadline"), "{err}");
    release.send(()).unwrap();
    assert!(a.read(|s| s.schema_version()).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_and_daemon_share_the_file() {
    // The daemon holds its async handle; the CLI opens the same file with a plain `Store`
    // (as `bhatti user create` does) while the daemon writes.
    let (d, s) = store();
    drop(s);
    let path = d.path().join("state.db");
    let daemon = AsyncStore::open(&path, &Options::default()).unwrap();
    let cli_path = path.clone();
    let cli = tokio::task::spawn_blocking(move || {
        let mut cli = Store::open(&cli_path).unwrap();
        (0..20)
            .map(|i| cli.create_user(&format!("u{i}"), store::Quotas::default()).unwrap().1)
            .collect::<Vec<_>>()
    });
    for i in 0..20 {
        daemon
            .write(move |s| s.record_events(&[NewEvent::now(format!("daemon.e{i}"))]))
            .await
            .unwrap();
    }
    let keys = cli.await.unwrap();
    // Every key the CLI made authenticates through the daemon's reader at once.
    for key in keys {
        let user = daemon.read(move |s| s.user_by_api_key(key.expose())).await.unwrap();
        assert!(user.name.starts_with('u'));
    }
    let n = daemon.read(|s| s.count_events(&EventQuery::default())).await.unwrap();
    assert_eq!(n, 20);
}
