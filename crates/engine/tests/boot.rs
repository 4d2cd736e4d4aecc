//! The first real microVM: the lean kernel and the test image under QEMU, lohar as PID 1, the
//! host agent client over TCP inside a private network namespace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use agent::{AgentError, ReadOptions};
use common::*;
use proto::guest::{GuestConfig, GuestFile};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_boots_runs_commands_moves_files_and_powers_off() {
    let net = TestNet::new().await;
    let guest = GuestConfig {
        env: [("FROM_CONFIG".to_owned(), "drive".to_owned())].into(),
        files: [(
            "/home/lohar/.config/greeting".to_owned(),
            GuestFile { content: "aGVsbG8gZnJvbSB0aGUgZHJpdmU=".into(), mode: "0600".into() },
        )]
        .into(),
        init: "echo init-ran-as-$(id -u) > /tmp/init.out; exec sleep 600".into(),
        ..Default::default()
    };
    let mut vm = boot_with(&net, 2, 256, guest).await;
    eprintln!("agent ready {:?} after QEMU start ({})", vm.ready_after, vm.qemu.accel);

    let out = vm.client.exec(&["echo", "hello from the guest"]).await.unwrap();
    assert_eq!((out.stdout_text().as_str(), out.exit_code), ("hello from the guest\n", 0));
    // lohar really is PID 1 and the config drive was applied.
    let out = vm
        .client
        .exec(&[
            "sh",
            "-c",
            "cat /proc/1/comm; hostname; id -u; test -e /run/bhatti/config || echo drive-gone",
        ])
        .await
        .unwrap();
    assert_eq!(out.stdout_text(), "lohar\nvm2\n1000\ndrive-gone\n");

    // Config drive: env for every exec, files with their mode and owner, the init session.
    let out = vm.client.exec(&["sh", "-c", "echo $FROM_CONFIG; cat /home/lohar/.config/greeting; stat -c '%a %u' /home/lohar/.config/greeting"]).await.unwrap();
    assert_eq!(
        out.stdout_text(),
        "drive\nhello from the drive600 1000\n",
        "stderr: {}\nconsole: {}",
        out.stderr_text(),
        vm.serial_log()
    );
    let sessions = vm.client.session_list().await.unwrap();
    assert!(sessions.iter().any(|s| s.session_id == "init" && s.running), "{sessions:?}");
    // The init session starts once the agent listens, so give it a moment.
    let mut init = Vec::new();
    for _ in 0..50 {
        if let Ok(file) = vm.client.file_read("/tmp/init.out", ReadOptions::default()).await {
            init = file.data;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(init, b"init-ran-as-1000\n");

    vm.client.file_write("/home/lohar/note.txt", "0640", b"written by the host").await.unwrap();
    let read = vm.client.file_read("/home/lohar/note.txt", ReadOptions::default()).await.unwrap();
    assert_eq!((read.data.as_slice(), read.mode.as_str()), (&b"written by the host"[..], "0640"));
    let activity = vm.client.activity().await.unwrap();
    assert!(activity.last_activity_unix > 1_600_000_000, "guest clock: {activity:?}");

    // A wrong token is refused by the guest.
    let wrong = agent::AgentClient::new(vm.client.endpoint().clone(), Some("f".repeat(32)));
    assert!(
        matches!(wrong.exec(&["true"]).await.unwrap_err(), AgentError::Agent(t) if t == "auth required")
    );

    // Clean power-off: SIGTERM to PID 1 syncs and powers the VM off; QEMU exits by itself.
    let mut req = agent::ExecRequest::command(["kill", "-TERM", "1"]);
    req.user = Some("root".into());
    let _ = vm.client.exec_request(&req, Duration::from_secs(5)).await;
    let status = vm.qemu.wait(Duration::from_secs(20)).await;
    assert!(status.is_ok(), "QEMU did not exit after power-off: {status:?}\n{}", vm.serial_log());
    assert!(vm.serial_log().contains("lohar: powering off"));
}
