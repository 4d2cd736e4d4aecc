//! The sandbox lifecycle through the engine on real VMs: template-free and template creates,
//! buffered and streaming exec, a PTY shell, files, sessions, bad input, destroy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use agent::{ExecEvent, ExecRequest, ReadOptions, SessionEvent};
use common::*;
use engine::{CreateSpec, ErrorKind, Template};
use proto::guest::GuestFile;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_without_template_then_exec_stream_shell_files_sessions() {
    let e = test_engine_with(|c| c.dns = vec!["192.0.2.53".parse().unwrap()]).await;
    let mut spec = small("plain");
    spec.env = [("GREETING".to_owned(), "it's \"quoted\" $HOME & more".to_owned())].into();
    spec.init = "echo init-ran-as-$(whoami); sleep 600".into();
    spec.scratch_volumes = vec![engine::ScratchVolume { mount: "/scratch".into(), size_mib: 32 }];
    spec.files = [(
        "/home/lohar/.config/app.toml".to_owned(),
        GuestFile { content: "YSA9IDEK".into(), mode: "0600".into() },
    )]
    .into();
    let info = e.create(&spec).await.unwrap();
    assert_eq!(info.thermal, engine::Thermal::Hot);

    // Buffered exec: user, env with special characters, vCPU default, exit codes.
    let out = e.exec("plain", &["sh", "-c", "whoami; echo \"$GREETING\"; nproc"]).await.unwrap();
    assert_eq!(out.stdout_text(), "lohar\nit's \"quoted\" $HOME & more\n1\n");
    let out = e.exec("plain", &["sh", "-c", "echo oops >&2; exit 42"]).await.unwrap();
    assert_eq!((out.exit_code, out.stderr_text().as_str()), (42, "oops\n"));

    // Injected file: content, mode, owner.
    let out = e
        .exec(
            "plain",
            &[
                "sh",
                "-c",
                "stat -c '%a %u' /home/lohar/.config/app.toml; cat /home/lohar/.config/app.toml",
            ],
        )
        .await
        .unwrap();
    assert_eq!(out.stdout_text(), "600 1000\na = 1\n");

    // Streaming exec: stdout and stderr events, exit code, and output that really streams.
    let req = ExecRequest::command([
        "sh",
        "-c",
        "echo one; sleep 1; echo two >&2; sleep 1; echo three; exit 7",
    ]);
    let mut stream = e.exec_stream("plain", &req, Duration::from_secs(30)).await.unwrap();
    let started = Instant::now();
    let (mut stdout, mut stderr, mut exit, mut first_at, mut last_at) =
        (Vec::new(), Vec::new(), None, None, None);
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            ExecEvent::Stdout(b) => {
                first_at.get_or_insert(started.elapsed());
                last_at = Some(started.elapsed());
                stdout.extend(b);
            }
            ExecEvent::Stderr(b) => stderr.extend(b),
            ExecEvent::Exit(code) => exit = Some(code),
        }
    }
    drop(stream);
    assert_eq!(
        (stdout.as_slice(), stderr.as_slice(), exit),
        (&b"one\nthree\n"[..], &b"two\n"[..], Some(7))
    );
    let spread = last_at.unwrap() - first_at.unwrap();
    assert!(spread > Duration::from_millis(1500), "output arrived in one piece: {spread:?}");

    // A PTY shell: type a command, read its output, exit.
    let mut shell = e.shell("plain", &ExecRequest::command(["sh"])).await.unwrap();
    shell.write(b"echo shell-$((6*7))\n").await.unwrap();
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.contains("shell-42") && Instant::now() < deadline {
        if let Ok(Ok(Some(SessionEvent::Output(b)))) =
            tokio::time::timeout(Duration::from_secs(5), shell.next()).await
        {
            seen.push_str(&String::from_utf8_lossy(&b));
        }
    }
    assert!(seen.contains("shell-42"), "{seen:?}");
    let shell_id = shell.id().to_owned();

    // Sessions: the init session ran and is listed with the shell; kill the shell's session.
    let sessions = e.sessions("plain").await.unwrap();
    let ids: Vec<&str> = sessions.iter().map(|s| s.session_id.as_str()).collect();
    assert!(ids.contains(&"init") && ids.contains(&shell_id.as_str()), "{ids:?}");
    drop(shell);
    let mut init = e.attach("plain", "init", false).await.unwrap();
    let mut replay = String::new();
    while !replay.contains("init-ran-as-lohar") {
        match tokio::time::timeout(Duration::from_secs(10), init.next()).await {
            Ok(Ok(Some(SessionEvent::Output(b)))) => replay.push_str(&String::from_utf8_lossy(&b)),
            other => panic!("no init output: {other:?} after {replay:?}"),
        }
    }
    drop(init);
    e.kill_session("plain", &shell_id).await.unwrap();

    // Files: write, read, windowed read, stat, list, errors keep the guest's text.
    e.file_write("plain", "/home/lohar/w/x.txt", "0644", b"l1\nl2\nl3\n").await.unwrap();
    let read = e.file_read("plain", "/home/lohar/w/x.txt", ReadOptions::default()).await.unwrap();
    assert_eq!(read.data, b"l1\nl2\nl3\n");
    let window = ReadOptions { offset: 2, limit: 1, max_bytes: 0 };
    assert_eq!(e.file_read("plain", "/home/lohar/w/x.txt", window).await.unwrap().data, b"l2\n");
    assert_eq!(e.file_stat("plain", "/home/lohar/w/x.txt").await.unwrap().size, 9);
    let names: Vec<String> =
        e.file_list("plain", "/home/lohar/w").await.unwrap().into_iter().map(|f| f.name).collect();
    assert_eq!(names, ["x.txt"]);
    let missing = e.file_read("plain", "/nope", ReadOptions::default()).await.unwrap_err();
    assert!(matches!(missing.kind(), ErrorKind::Guest(_)), "{missing}");

    // Name servers from the engine's config; a scratch volume, writable by the guest user.
    let out = e
        .exec(
            "plain",
            &[
                "sh",
                "-c",
                "grep nameserver /etc/resolv.conf; touch /scratch/x && stat -c %u /scratch",
            ],
        )
        .await
        .unwrap();
    assert_eq!(out.stdout_text(), "nameserver 192.0.2.53\n1000\n", "{}", out.stderr_text());

    // Listening ports (the agent's two) and a tunnel to one of them.
    let ports = e.listening_ports("plain").await.unwrap();
    assert!(ports.contains(&1024) && ports.contains(&1025), "{ports:?}");
    assert!(e.forward("plain", 0).await.is_err());
    drop(e.forward("plain", 1024).await.unwrap());

    // Destroy removes the sandbox and every file of it.
    e.destroy("plain").await.unwrap();
    assert!(!e.dir_of(&info.id).exists());
    assert!(e.exec("plain", &["true"]).await.unwrap_err().kind() == ErrorKind::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_from_a_template_and_refuse_bad_requests() {
    let e = test_engine().await;
    let template = Template {
        disk_size_mib: None,
        image: e.image.clone(),
        vcpus: Some(2),
        memory_mib: Some(192),
        env: [("ROLE".to_owned(), "template".to_owned())].into(),
        init: String::new(),
        volumes: vec![],
    };
    let mut spec = CreateSpec::from_template("tpl", &template);
    spec.env.insert("EXTRA".into(), "request".into());
    // A large config drive payload: 40 variables of 10 KB each.
    for i in 0..40 {
        spec.env.insert(format!("BIG_{i}"), format!("{i}").repeat(10_000 / format!("{i}").len()));
    }
    e.create(&spec).await.unwrap();
    let out = e
        .exec(
            "tpl",
            &[
                "sh",
                "-c",
                "nproc; echo $ROLE $EXTRA; awk '/MemTotal/ {print ($2 > 150000)}' /proc/meminfo",
            ],
        )
        .await
        .unwrap();
    assert_eq!(out.stdout_text(), "2\ntemplate request\n1\n");
    let big = e.exec("tpl", &["sh", "-c", "printf %s \"$BIG_39\" | wc -c"]).await.unwrap();
    assert_eq!(big.stdout_text().trim(), "10000");

    // Bad requests fail before anything is booted, and leave nothing behind.
    let mut bad = small("Bad_Name");
    assert_eq!(e.create(&bad).await.unwrap_err().kind(), ErrorKind::Invalid);
    bad = small("noimage");
    bad.image = "/nonexistent.ext4".into();
    let no_image = e.create(&bad).await.unwrap_err();
    assert_eq!(no_image.kind(), ErrorKind::NotFound);
    assert_eq!(no_image.to_string(), r#"image "nonexistent" not found"#);
    bad = small("badhost");
    bad.hostname = "not_a_hostname".into();
    assert_eq!(e.create(&bad).await.unwrap_err().kind(), ErrorKind::Invalid);
    bad = small("badowner").owned_by("a/b");
    assert_eq!(e.create(&bad).await.unwrap_err().kind(), ErrorKind::Invalid);
    bad = small("tinydisk");
    bad.disk_size_mib = Some(1);
    assert_eq!(e.create(&bad).await.unwrap_err().kind(), ErrorKind::Invalid);
    bad = small("novol");
    bad.volumes = vec![engine::volume::VolumeMount {
        path: e.data.path().join("missing.ext4"),
        mount: "/data".into(),
        read_only: false,
    }];
    assert_eq!(e.create(&bad).await.unwrap_err().kind(), ErrorKind::NotFound);
    bad = small("tpl");
    assert_eq!(e.create(&bad).await.unwrap_err().kind(), ErrorKind::AlreadyExists);
    for missing in ["nope", "x"] {
        assert!(e.exec(missing, &["true"]).await.unwrap_err().kind() == ErrorKind::NotFound);
        assert!(e.stop(missing, Duration::ZERO).await.unwrap_err().kind() == ErrorKind::NotFound);
        assert!(e.destroy(missing).await.unwrap_err().kind() == ErrorKind::NotFound);
    }
    // A create whose caller stops waiting mid-boot leaves nothing, and the name is free again.
    let gave_up = tokio::time::timeout(Duration::from_millis(300), e.create(&small("gone"))).await;
    assert!(gave_up.is_err(), "the boot finished within 300 ms");
    assert!(!e.data.path().join("sandboxes/gone").exists());
    e.create(&small("gone")).await.unwrap();
    e.destroy("gone").await.unwrap();
    let names: Vec<String> = e.list().into_iter().map(|s| s.id).collect();
    assert_eq!(names, ["tpl"]);
    let dirs = std::fs::read_dir(e.data.path().join("sandboxes")).unwrap().count();
    assert_eq!(dirs, 1);
}
