//! The scenarios. Every bhatti row is measured interleaved with its baseline where one exists,
//! so drift on a shared machine hits both alike. Failed iterations are counted, not hidden.

pub mod cold;
pub mod issue24;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Args;
use crate::baseline::Baseline;
use crate::daemon::Api;
use crate::report::{Report, Row, Samples, Target, ms};

const WARMUP: usize = 3;
const MEMORY_MIB: u32 = 512;
const HTTPD_PORT: u16 = 8080;
const OS_RELEASE_PATH: &str = "/home/lohar/os-release";
const OS_RELEASE: &str = "PRETTY_NAME=\"Ubuntu 24.04.1 LTS\"\nNAME=\"Ubuntu\"\nVERSION_ID=\"24.04\"\n\
VERSION=\"24.04.1 LTS (Noble Numbat)\"\nVERSION_CODENAME=noble\nID=ubuntu\nID_LIKE=debian\n\
HOME_URL=\"https://www.ubuntu.com/\"\nSUPPORT_URL=\"https://help.ubuntu.com/\"\n\
BUG_REPORT_URL=\"https://bugs.launchpad.net/ubuntu/\"\n\
PRIVACY_POLICY_URL=\"https://www.ubuntu.com/legal/terms-and-policies/privacy-policy\"\n\
UBUNTU_CODENAME=noble\nLOGO=ubuntu-logo\n";
const PAUSE_WAIT: Duration = Duration::from_secs(10);

pub struct Bench {
    pub api: Api,
    pub base: Arc<Baseline>,
    run: String,
    n: usize,
    ln: usize,
    images: Vec<String>,
    /// Sandbox names this run created through the API (destroyed at the end).
    pub created: Vec<String>,
    /// Sandbox IDs created on the in-process engine.
    engine_created: Vec<String>,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    /// For a second daemon (the restore pool rows): the `bhatti` binary and the artifacts.
    bhatti: PathBuf,
    artifacts: PathBuf,
    /// Whether the daemon under test is the runner's own (not `--url`).
    own_daemon: bool,
    /// Scenario groups to run (`--only`); empty: all.
    only: Vec<String>,
    /// The daemon of the lifecycle and proxy cold rows (started on first use).
    cold: Option<cold::ColdDaemon>,
}

impl Bench {
    pub fn new(api: Api, base: Baseline, run: String, args: &Args) -> Bench {
        let images = args
            .images
            .iter()
            .filter(|i| {
                let exists =
                    args.artifacts.join("images").join(i).join("current/rootfs.ext4").exists();
                if !exists {
                    println!("image {i} is not built: its create row is skipped");
                }
                exists
            })
            .cloned()
            .collect();
        Bench {
            api,
            base: Arc::new(base),
            run,
            n: args.n,
            ln: args.lifecycle_n,
            images,
            created: Vec::new(),
            engine_created: Vec::new(),
            rows: Vec::new(),
            notes: Vec::new(),
            bhatti: args.bhatti.clone(),
            artifacts: args.artifacts.clone(),
            own_daemon: args.url.is_none(),
            only: args.only.clone(),
            cold: None,
        }
    }

    fn name(&self, what: &str) -> String {
        format!("bench-{}-{what}", self.run)
    }

    fn eid(&self, what: &str) -> String {
        format!("b{}-{what}", self.run)
    }

    fn row(&mut self, section: &str, name: &str, s: &Samples) {
        let row = Row::new(section, name, "ms", s);
        let p = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.1}"));
        println!(
            "  {name:<44} n={:<3} failed={} p50={} p95={} p99={} max={}",
            row.n,
            row.failed,
            p(row.p50),
            p(row.p95),
            p(row.p99),
            p(row.max)
        );
        for e in &row.errors {
            println!("    failure: {e}");
        }
        self.rows.push(row);
    }

    fn mib_row(&mut self, section: &str, name: &str, s: &Samples) {
        self.row(section, name, s);
        if let Some(r) = self.rows.last_mut() {
            r.unit = "MiB".into();
        }
    }

    async fn api_create(
        &mut self,
        what: &str,
        image: &str,
        mib: u32,
        keep_hot: bool,
    ) -> anyhow::Result<String> {
        let name = self.name(what);
        self.created.push(name.clone());
        self.api.create(&name, image, mib, keep_hot).await?;
        Ok(name)
    }

    async fn engine_create(&mut self, what: &str, mib: u32) -> anyhow::Result<String> {
        let id = self.eid(what);
        self.engine_created.push(id.clone());
        Baseline::call(self.base.engine.create(&self.base.spec(&id, mib))).await?;
        Ok(id)
    }

    /// Destroys what the run created (sequentially, a few retries each), and stops the cold
    /// rows' daemon (with its QEMUs and namespace).
    pub async fn cleanup(&mut self) {
        self.cold = None;
        for name in std::mem::take(&mut self.created) {
            for attempt in 0..3 {
                match self.api.destroy(&name).await {
                    Ok(()) => break,
                    Err(e) if e.to_string().starts_with("404") => break,
                    Err(e) if attempt == 2 => eprintln!("could not destroy {name}: {e:#}"),
                    Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            }
        }
        for id in std::mem::take(&mut self.engine_created) {
            let _ = Baseline::call(self.base.engine.destroy(&id)).await;
        }
    }

    pub async fn all(&mut self) -> anyhow::Result<()> {
        let on = |what: &str| self.only.is_empty() || self.only.iter().any(|o| o == what);
        let (hot, warm, memory, proxy, lifecycle) =
            (on("hot"), on("warm"), on("memory"), on("proxy"), on("lifecycle"));
        let (ttfc, fork, pool) = (on("ttfc"), on("fork"), on("pool"));
        if hot {
            println!("\n== exec, concurrency, files, API (hot sandboxes)");
            self.hot().await?;
        }
        if warm {
            println!("\n== thermal: warm wake, pause/resume, idle RSS");
            self.warm().await?;
        }
        if memory {
            println!("\n== memory given back (free page reporting)");
            self.memory_returned().await?;
        }
        if proxy {
            println!("\n== proxy");
            self.proxy().await?;
        }
        if lifecycle {
            println!("\n== lifecycle");
            self.lifecycle().await?;
        }
        let features = self.features().await;
        println!("\ndaemon features: boot {:?}, fork {:?}", features.boot, features.fork);
        if ttfc {
            println!("\n== time to first command: shape snapshot restore vs boot");
            self.time_to_first_command(&features).await?;
        }
        if fork {
            println!("\n== fork into 1 and 4 clones");
            self.fork(&features).await?;
        }
        if pool {
            println!("\n== cold wake, restore pool on and off");
            self.cold_wake_pool().await?;
        }
        Ok(())
    }

    async fn hot(&mut self) -> anyhow::Result<()> {
        let x = self
            .api_create("x", "test", MEMORY_MIB, true)
            .await
            .context("creating the exec sandbox")?;
        let ex = self.engine_create("x", MEMORY_MIB).await.context("engine create")?;
        let (api, base) = (self.api.clone(), self.base.clone());
        for _ in 0..WARMUP {
            api.exec(&x, &["true"]).await?;
            base.exec(&ex, &["true"]).await?;
        }
        // v1 cats /etc/os-release; the test image (busybox) has none: the same bytes, placed.
        api.write_file(&x, OS_RELEASE_PATH, OS_RELEASE.as_bytes().to_vec()).await?;
        Baseline::call(base.engine.file_write(&ex, OS_RELEASE_PATH, "0644", OS_RELEASE.as_bytes()))
            .await?;
        for (label, argv) in [
            ("exec true", &["true"][..]),
            ("exec echo hello", &["echo", "hello"][..]),
            ("exec cat os-release (a 400 B file)", &["cat", OS_RELEASE_PATH][..]),
        ] {
            let (mut a, mut e) = (Samples::default(), Samples::default());
            for _ in 0..self.n {
                let t = Instant::now();
                let r = api.exec(&x, argv).await;
                a.record(t, r);
                let t = Instant::now();
                let r = base.exec(&ex, argv).await;
                e.record(t, r);
            }
            self.row("Exec (hot sandbox)", label, &a);
            self.row("Exec (hot sandbox)", &format!("engine {label}"), &e);
        }

        let reps = (self.n / 3).max(3);
        for par in [5usize, 10, 20] {
            let (mut a, mut e) = (Samples::default(), Samples::default());
            for _ in 0..reps {
                let t = Instant::now();
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..par {
                    let (api, x) = (api.clone(), x.clone());
                    set.spawn(async move { api.exec(&x, &["true"]).await });
                }
                let r = join_all(set).await;
                a.record(t, r);
                let t = Instant::now();
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..par {
                    let (base, ex) = (base.clone(), ex.clone());
                    set.spawn(async move { base.exec(&ex, &["true"]).await });
                }
                let r = join_all(set).await;
                e.record(t, r);
            }
            self.row("Concurrency (wall clock)", &format!("{par} parallel exec true"), &a);
            self.row("Concurrency (wall clock)", &format!("engine {par} parallel exec true"), &e);
        }

        for (label, size) in
            [("1 KiB", 1024usize), ("10 KiB", 10 << 10), ("100 KiB", 100 << 10), ("1 MiB", 1 << 20)]
        {
            let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            let path = format!("/home/lohar/bench-{size}.bin");
            let (mut aw, mut ew, mut ar, mut er) =
                (Samples::default(), Samples::default(), Samples::default(), Samples::default());
            for _ in 0..self.n {
                let t = Instant::now();
                let r = api.write_file(&x, &path, data.clone()).await;
                aw.record(t, r);
                let t = Instant::now();
                let r = Baseline::call(base.engine.file_write(&ex, &path, "0644", &data)).await;
                ew.record(t, r);
                let t = Instant::now();
                let r = api.read_file(&x, &path).await.and_then(|len| {
                    if len == size { Ok(()) } else { bail!("read {len} bytes, wrote {size}") }
                });
                ar.record(t, r);
                let t = Instant::now();
                let r = Baseline::call(base.engine.file_read(
                    &ex,
                    &path,
                    engine::ReadOptions::default(),
                ))
                .await
                .and_then(|c| {
                    if c.data.len() == size { Ok(()) } else { bail!("read {} bytes", c.data.len()) }
                });
                er.record(t, r);
            }
            self.row("Files", &format!("file write {label}"), &aw);
            self.row("Files", &format!("engine file write {label}"), &ew);
            self.row("Files", &format!("file read {label}"), &ar);
            self.row("Files", &format!("engine file read {label}"), &er);
        }

        let (mut h, mut l, mut i) = (Samples::default(), Samples::default(), Samples::default());
        for _ in 0..self.n {
            let t = Instant::now();
            let r = api.get("/health").await;
            h.record(t, r);
            let t = Instant::now();
            let r = api.get("/sandboxes").await;
            l.record(t, r);
            let t = Instant::now();
            let r = api.get(&format!("/sandboxes/{x}")).await;
            i.record(t, r);
        }
        self.row("API", "GET /health (HTTP floor)", &h);
        self.row("API", "list (GET /sandboxes)", &l);
        self.row("API", "inspect (GET /sandboxes/<name>)", &i);
        Ok(())
    }

    async fn warm(&mut self) -> anyhow::Result<()> {
        let (api, base) = (self.api.clone(), self.base.clone());
        // Two identical fresh sandboxes for the RSS rows: one kept hot, one left to go warm.
        let hot = self.api_create("mh", "test", MEMORY_MIB, true).await?;
        let w = self.api_create("w", "test", MEMORY_MIB, false).await?;
        let ew = self.engine_create("w", MEMORY_MIB).await?;
        for _ in 0..WARMUP {
            api.exec(&hot, &["true"]).await?;
            api.exec(&w, &["true"]).await?;
            base.exec(&ew, &["true"]).await?;
        }
        let hot_id = api.get_id(&hot).await?;
        let w_id = api.get_id(&w).await?;
        let (mut a, mut e, mut pause, mut resume) =
            (Samples::default(), Samples::default(), Samples::default(), Samples::default());
        let (mut rss_hot, mut rss_warm, mut rss_engine) =
            (Samples::default(), Samples::default(), Samples::default());
        let mut manager = true;
        for _ in 0..self.ln {
            // The daemon's thermal manager pauses `w` after 2 s idle: checked, not assumed.
            let warm = if manager {
                api.wait_thermal(&w, "warm", Duration::from_secs(15)).await
            } else {
                Err(anyhow::anyhow!("skipped: the sandbox never went warm"))
            };
            if manager && warm.is_err() && a.ok.is_empty() {
                manager = false;
                let note = "warm rows through the API not measured: a sandbox idle for 15 s with \
                            warm_after = 2 s stayed hot (no thermal manager in this daemon yet?)";
                println!("  {note}");
                self.notes.push(note.into());
            }
            match api.qemu_rss_mib(&hot_id) {
                Ok(v) => rss_hot.push(v),
                Err(e) => rss_hot.fail(e),
            }
            match warm {
                Ok(()) => {
                    match api.qemu_rss_mib(&w_id) {
                        Ok(v) => rss_warm.push(v),
                        Err(e) => rss_warm.fail(e),
                    }
                    let t = Instant::now();
                    let r = api.exec(&w, &["true"]).await;
                    a.record(t, r);
                }
                Err(err) => {
                    rss_warm.fail(anyhow::anyhow!("not warm"));
                    a.fail(err);
                }
            }
            if let Ok(v) = base.qemu_rss_mib(&ew) {
                rss_engine.push(v);
            }
            // Keeps the hot twin's history like the warm one's.
            let _ = api.exec(&hot, &["true"]).await;
            let t = Instant::now();
            let r = Baseline::call(base.engine.pause(&ew, PAUSE_WAIT)).await;
            pause.record(t, r);
            let t = Instant::now();
            let r = base.exec(&ew, &["true"]).await;
            e.record(t, r);
            if Baseline::call(base.engine.pause(&ew, PAUSE_WAIT)).await.is_ok() {
                let t = Instant::now();
                let r = Baseline::call(base.engine.unpause(&ew)).await;
                resume.record(t, r);
            }
        }
        self.row("Thermal", "warm wake + exec true", &a);
        self.row("Thermal", "engine warm wake + exec true", &e);
        self.row("Thermal", "engine pause (QMP stop)", &pause);
        self.row("Thermal", "engine resume (QMP cont)", &resume);
        self.mib_row("Memory (idle QEMU VmRSS, 512 MiB guests)", "idle RSS, hot sandbox", &rss_hot);
        self.mib_row(
            "Memory (idle QEMU VmRSS, 512 MiB guests)",
            "idle RSS, warm sandbox",
            &rss_warm,
        );
        self.mib_row(
            "Memory (idle QEMU VmRSS, 512 MiB guests)",
            "engine sandbox RSS (hot)",
            &rss_engine,
        );
        Ok(())
    }

    /// A 512 MiB guest fills 400 MiB of tmpfs and removes it; 10 s later, its QEMU's idle
    /// VmRSS and its RAM file's allocated size, with free page reporting (the engine's default)
    /// and, interleaved, on an engine with `free_page_reporting = false` (the baseline). In
    /// process on both sides: what is measured is the QEMU, not the HTTP path, and growing the
    /// guest's `/dev/shm` needs a root exec.
    async fn memory_returned(&mut self) -> anyhow::Result<()> {
        const SECTION: &str = "Memory given back (512 MiB guest, 400 MiB allocated and freed)";
        const BACK: u64 = 300;
        let on = self.base.clone();
        let off = Baseline::with(&on.artifacts, "bo", 251, |c| c.free_page_reporting = false)
            .await
            .context("the reporting-off engine")?;
        let on_id = self.engine_create("mr", MEMORY_MIB).await?;
        let off_id = self.eid("mr-off");
        Baseline::call(off.engine.create(&off.spec(&off_id, MEMORY_MIB))).await?;
        let fill = "mount -o remount,size=460m /dev/shm && dd if=/dev/zero of=/dev/shm/hog bs=1M count=400";
        let (mut before, mut rss_on, mut rss_off, mut file_on, mut file_off, mut back) = (
            Samples::default(),
            Samples::default(),
            Samples::default(),
            Samples::default(),
            Samples::default(),
            Samples::default(),
        );
        let n = self.ln.min(5);
        for _ in 0..n {
            for (base, id, reporting) in [(&*on, &on_id, true), (&off, &off_id, false)] {
                let dir = base.sandbox_dir(id);
                let ram = dir.join("ram");
                let rss = || crate::daemon::qemu_rss_mib(&dir.join("qemu.pid"));
                if reporting {
                    match rss() {
                        Ok(v) => before.push(v),
                        Err(e) => before.fail(e),
                    }
                }
                let cycle = async {
                    base.exec_root(id, &["sh", "-c", fill]).await?;
                    let full = rss()?;
                    base.exec_root(id, &["rm", "/dev/shm/hog"]).await?;
                    let t = Instant::now();
                    let mut returned = None;
                    while t.elapsed() < Duration::from_secs(10) {
                        if returned.is_none() && full - rss()? >= BACK as f64 {
                            returned = Some(ms(t.elapsed()));
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    let file = allocated_mib(&ram)?;
                    anyhow::Ok((rss()?, file, returned))
                };
                let (rss_row, file_row) = if reporting {
                    (&mut rss_on, &mut file_on)
                } else {
                    (&mut rss_off, &mut file_off)
                };
                match cycle.await {
                    Ok((r, f, returned)) => {
                        rss_row.push(r);
                        file_row.push(f);
                        if reporting {
                            match returned {
                                Some(v) => back.push(v),
                                None => back
                                    .fail(anyhow::anyhow!("{BACK} MiB were not back within 10 s")),
                            }
                        }
                    }
                    Err(e) => {
                        let text = format!("{e:#}");
                        rss_row.fail(e);
                        file_row.fail(anyhow::anyhow!("{text}"));
                        if reporting {
                            back.fail(anyhow::anyhow!("{text}"));
                        }
                    }
                }
            }
        }
        let _ = Baseline::call(off.engine.destroy(&off_id)).await;
        drop(off);
        self.mib_row(SECTION, "idle RSS before the allocation", &before);
        self.mib_row(SECTION, "idle RSS 10 s after the free", &rss_on);
        self.mib_row(SECTION, "idle RSS 10 s after the free, reporting off", &rss_off);
        self.mib_row(SECTION, "RAM file allocated 10 s after the free", &file_on);
        self.mib_row(SECTION, "RAM file allocated 10 s after the free, reporting off", &file_off);
        self.row(SECTION, "time until 300 of the 400 MiB are back", &back);
        Ok(())
    }

    async fn proxy(&mut self) -> anyhow::Result<()> {
        const SECTION: &str = "Proxy (time to first byte, busybox httpd)";
        let (api, base) = (self.api.clone(), self.base.clone());
        let p = self.api_create("p", "test", MEMORY_MIB, false).await?;
        let url = format!("/sandboxes/{p}/proxy/{HTTPD_PORT}/");
        if !serve_httpd(&api, &p, &url).await? {
            let note = "proxy rows skipped: GET /sandboxes/{id}/proxy/{port}/ answers 404 on this daemon (no proxy route yet)";
            println!("  {note}");
            self.notes.push(note.into());
            return Ok(());
        }
        let ep = self.engine_create("p", MEMORY_MIB).await?;
        Baseline::call(base.engine.exec(&ep, &HTTPD_ROOT)).await?;
        let mut req = engine::ExecRequest::command(["httpd", "-f", "-p", "8080", "-h", "/tmp/www"]);
        req.output_file = Some("/tmp/httpd.log".into());
        Baseline::call(base.engine.exec_detached(&ep, &req)).await?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Err(e) = forward_ttfb(&base, &ep).await {
            if Instant::now() > deadline {
                bail!("httpd in the engine sandbox never answered: {e:#}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut cold_sb = None;
        for (label, mode) in [("hot", 0), ("warm", 1), ("cold", 2)] {
            let count = if mode == 0 { self.n } else { self.ln };
            if mode == 2 {
                // A sandbox of the cold rows' daemon, suspended by its thermal manager before
                // every sample (a user's stop would answer 409 not_running, not wake).
                cold_sb = self.proxy_cold_sandbox().await?;
            }
            let (mut a, mut e) = (Samples::default(), Samples::default());
            for _ in 0..count {
                match (mode, &cold_sb) {
                    (2, Some((capi, pc, curl))) => {
                        cold::wake_sample(capi, pc, &mut a, proxy_ttfb(capi, curl)).await;
                    }
                    (2, None) => {}
                    _ => {
                        let prep = match mode {
                            1 => api.wait_thermal(&p, "warm", Duration::from_secs(30)).await,
                            _ => Ok(()),
                        };
                        match prep {
                            Ok(()) => match proxy_ttfb(&api, &url).await {
                                Ok(v) => a.push(v),
                                Err(err) => a.fail(err),
                            },
                            Err(err) => a.fail(err),
                        }
                    }
                }
                let prep = match mode {
                    1 => Baseline::call(base.engine.pause(&ep, PAUSE_WAIT)).await,
                    2 => Baseline::call(base.engine.stop(&ep, PAUSE_WAIT)).await.map(drop),
                    _ => Ok(()),
                };
                match prep {
                    Ok(()) => match forward_ttfb(&base, &ep).await {
                        Ok(v) => e.push(v),
                        Err(err) => e.fail(err),
                    },
                    Err(err) => e.fail(err),
                }
            }
            let name = format!("proxy TTFB {label}");
            if mode == 2 && cold_sb.is_none() {
                self.skip(SECTION, &name, "ms", cold::NEEDS_OWN_DAEMON);
            } else {
                self.row(SECTION, &name, &a);
            }
            self.row(SECTION, &format!("engine forward TTFB {label}"), &e);
        }
        if let Some((capi, pc, _)) = &cold_sb {
            let _ = capi.destroy(pc).await;
        }
        Ok(())
    }

    /// The cold proxy row's sandbox, serving httpd, on the cold rows' daemon (kept hot until
    /// a sample makes it cold): its daemon's API, its name and its proxy URL.
    async fn proxy_cold_sandbox(&mut self) -> anyhow::Result<Option<(Api, String, String)>> {
        let Some(capi) = self.cold_api().await? else { return Ok(None) };
        let pc = self.name("pc");
        capi.create(&pc, "test", MEMORY_MIB, true).await.context("the cold proxy sandbox")?;
        let url = format!("/sandboxes/{pc}/proxy/{HTTPD_PORT}/");
        anyhow::ensure!(
            serve_httpd(&capi, &pc, &url).await?,
            "the cold rows' daemon has no proxy route"
        );
        Ok(Some((capi, pc, url)))
    }

    async fn lifecycle(&mut self) -> anyhow::Result<()> {
        let (api, base) = (self.api.clone(), self.base.clone());
        let mut s = Table::new();
        let names = [
            "bare QEMU boot (test, 512 MiB)",
            "create (test, 512 MiB)",
            "engine create (test, 512 MiB)",
            "create (minimal, 512 MiB)",
            "stop (cold, 512 MiB)",
            "engine stop (512 MiB)",
            "stop (cold, 1 GiB)",
            "engine stop (1 GiB)",
            "start",
            "engine start",
            "cold wake + exec true",
            "engine cold wake + exec true",
            "destroy",
            "engine destroy",
        ];
        for n in names {
            s.insert(n, Samples::default());
        }
        let minimal = self.images.iter().any(|i| i == "minimal");
        let test = self.images.iter().any(|i| i == "test");
        // Cold wake: a sandbox on the cold rows' daemon, suspended by its thermal manager
        // before every sample (a user's stop would leave it stopped until `start`).
        let capi = if test { self.cold_api().await? } else { None };
        let cold_sb = match capi {
            Some(capi) => {
                let lc = self.name("lc");
                capi.create(&lc, "test", MEMORY_MIB, true)
                    .await
                    .context("the cold wake sandbox")?;
                for _ in 0..WARMUP {
                    capi.exec(&lc, &["true"]).await?;
                }
                Some((capi, lc))
            }
            None => None,
        };
        for i in 0..self.ln {
            println!("  iteration {}/{}", i + 1, self.ln);
            let r = base.bare_boot(i, MEMORY_MIB).await;
            match r {
                Ok(v) => sample(&mut s, names[0]).push(v),
                Err(e) => sample(&mut s, names[0]).fail(e),
            }
            if test {
                let t = Instant::now();
                let r = self.api_create(&format!("l{i}"), "test", MEMORY_MIB, false).await;
                if let Some(name) = sample(&mut s, "create (test, 512 MiB)").record(t, r) {
                    self.api_cycle(&mut s, &name).await;
                }
            }
            if let Some((capi, lc)) = &cold_sb {
                let wake = cold::timed_exec(capi, lc);
                cold::wake_sample(capi, lc, sample(&mut s, "cold wake + exec true"), wake).await;
            }
            let t = Instant::now();
            let r = self.engine_create(&format!("l{i}"), MEMORY_MIB).await;
            if let Some(id) = sample(&mut s, "engine create (test, 512 MiB)").record(t, r) {
                engine_cycle(&base, &mut s, &id).await;
            }
            if minimal {
                let t = Instant::now();
                let r = self.api_create(&format!("m{i}"), "minimal", MEMORY_MIB, false).await;
                if let Some(name) = sample(&mut s, "create (minimal, 512 MiB)").record(t, r) {
                    let _ = api.destroy(&name).await;
                }
            }
            // 1 GiB guests: booted, one exec, stopped (they dirtied far under 50 MiB).
            if let Ok(name) = self.api_create(&format!("g{i}"), "test", 1024, false).await {
                let r = api.exec(&name, &["true"]).await;
                let t = Instant::now();
                let r = match r {
                    Ok(_) => api.post(&format!("/sandboxes/{name}/stop")).await,
                    Err(e) => Err(e),
                };
                sample(&mut s, "stop (cold, 1 GiB)").record(t, r);
                let _ = api.destroy(&name).await;
            } else {
                sample(&mut s, "stop (cold, 1 GiB)").fail(anyhow::anyhow!("create failed"));
            }
            if let Ok(id) = self.engine_create(&format!("g{i}"), 1024).await {
                let r = base.exec(&id, &["true"]).await;
                let t = Instant::now();
                let r = match r {
                    Ok(()) => Baseline::call(base.engine.stop(&id, PAUSE_WAIT)).await.map(drop),
                    Err(e) => Err(e),
                };
                sample(&mut s, "engine stop (1 GiB)").record(t, r);
                let _ = Baseline::call(base.engine.destroy(&id)).await;
            }
        }
        if let Some((capi, lc)) = &cold_sb {
            let _ = capi.destroy(lc).await;
        }
        for n in names {
            if n == "create (minimal, 512 MiB)" && !minimal {
                continue;
            }
            if n == "cold wake + exec true" && cold_sb.is_none() {
                let why = if test { cold::NEEDS_OWN_DAEMON } else { "the test image is not built" };
                self.skip("Lifecycle", n, "ms", why);
                continue;
            }
            if let Some(v) = s.remove(n) {
                self.row("Lifecycle", n, &v);
            }
        }
        self.notes.push(
            "cold wake + exec: a sandbox the thermal manager suspended to disk (a daemon of the \
             runner's with warm after 1 s idle and cold 1 s later; `keep_hot` between samples), \
             woken by the exec; the snapshot was written a moment earlier and is still in the \
             host's page cache: this is the best case. v1 measured ~6x slower steady-state cold \
             wakes once other writes had evicted the cache (host.md section 7)."
                .into(),
        );
        self.notes.push(
            "start returns once the guest runs again; pages fault in lazily, so `cold wake + exec \
             true` is the real cold-start figure."
                .into(),
        );
        Ok(())
    }

    /// stop -> start -> exec -> destroy on an API sandbox (the cold wake is timed on a
    /// thermally cold sandbox of the cold rows' daemon: a user's stop does not wake on exec).
    async fn api_cycle(&self, s: &mut Table, name: &str) {
        let api = &self.api;
        if let Err(e) = api.exec(name, &["true"]).await {
            sample(s, "stop (cold, 512 MiB)").fail(e);
            return;
        }
        let t = Instant::now();
        let r = api.post(&format!("/sandboxes/{name}/stop")).await;
        if sample(s, "stop (cold, 512 MiB)").record(t, r).is_none() {
            return;
        }
        let t = Instant::now();
        let r = api.post(&format!("/sandboxes/{name}/start")).await;
        sample(s, "start").record(t, r);
        // A hot sandbox that served an exec is destroyed, like the engine's after its wake.
        let _ = api.exec(name, &["true"]).await;
        let t = Instant::now();
        let r = api.destroy(name).await;
        sample(s, "destroy").record(t, r);
    }
}

async fn engine_cycle(base: &Baseline, s: &mut Table, id: &str) {
    let e = &base.engine;
    if let Err(err) = base.exec(id, &["true"]).await {
        sample(s, "engine stop (512 MiB)").fail(err);
        return;
    }
    let t = Instant::now();
    let r = Baseline::call(e.stop(id, PAUSE_WAIT)).await;
    if sample(s, "engine stop (512 MiB)").record(t, r).is_none() {
        return;
    }
    let t = Instant::now();
    let r = Baseline::call(e.start(id)).await;
    sample(s, "engine start").record(t, r);
    let r = async {
        base.exec(id, &["true"]).await?;
        Baseline::call(e.stop(id, PAUSE_WAIT)).await
    }
    .await;
    match r {
        Ok(_) => {
            let t = Instant::now();
            let r = base.exec(id, &["true"]).await;
            sample(s, "engine cold wake + exec true").record(t, r);
        }
        Err(err) => sample(s, "engine cold wake + exec true").fail(err),
    }
    let t = Instant::now();
    let r = Baseline::call(e.destroy(id)).await;
    sample(s, "engine destroy").record(t, r);
}

type Table = std::collections::BTreeMap<&'static str, Samples>;

fn sample<'a>(s: &'a mut Table, name: &'static str) -> &'a mut Samples {
    s.entry(name).or_default()
}

/// Waits for every task; the first failure fails the whole (parallel) sample.
async fn join_all(
    mut set: tokio::task::JoinSet<anyhow::Result<impl Send + 'static>>,
) -> anyhow::Result<()> {
    let mut first = None;
    while let Some(r) = set.join_next().await {
        let r = r.map_err(anyhow::Error::from).and_then(|r| r.map(drop));
        if let Err(e) = r {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// The busybox httpd's document root, made in the guest.
const HTTPD_ROOT: [&str; 3] = ["sh", "-c", "mkdir -p /tmp/www && echo ok > /tmp/www/index.html"];

/// Starts busybox httpd (detached) in the sandbox and waits (bounded) until `url` (its proxy
/// URL) answers 200; `false` if the daemon has no proxy route (404 from a known sandbox).
async fn serve_httpd(api: &Api, name: &str, url: &str) -> anyhow::Result<bool> {
    api.exec(name, &HTTPD_ROOT).await?;
    api.exec_detached(name, &["httpd", "-f", "-p", &HTTPD_PORT.to_string(), "-h", "/tmp/www"])
        .await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = api.req(reqwest::Method::GET, url).send().await?.status();
        if status == 404 {
            return Ok(false);
        }
        if status.is_success() {
            return Ok(true);
        }
        if Instant::now() > deadline {
            bail!("the proxy never answered 200 (last {status})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One GET through the daemon's proxy: the time until the answer's head (its first bytes).
async fn proxy_ttfb(api: &Api, url: &str) -> anyhow::Result<f64> {
    let t = Instant::now();
    let r = api.req(reqwest::Method::GET, url).send().await?;
    let took = ms(t.elapsed());
    anyhow::ensure!(r.status().is_success(), "{}", r.status());
    r.bytes().await?;
    Ok(took)
}

/// `engine.forward` to the guest's httpd, one HTTP/1.0 request, time to its first byte.
async fn forward_ttfb(base: &Baseline, id: &str) -> anyhow::Result<f64> {
    let t = Instant::now();
    let fut = async {
        let mut stream = base.engine.forward(id, HTTPD_PORT).await?;
        stream.write_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n").await?;
        let mut first = [0u8; 1];
        let n = stream.read(&mut first).await?;
        let took = ms(t.elapsed());
        anyhow::ensure!(n == 1, "connection closed before any byte");
        // Drain (bounded) so the server is not left with a reset.
        let mut rest = Vec::new();
        let _ = (&mut stream).take(64 * 1024).read_to_end(&mut rest).await;
        anyhow::Ok(took)
    };
    tokio::time::timeout(crate::baseline::DEADLINE, fut).await.context("timed out")?
}

/// Bytes a file holds (`st_blocks * 512`, not its length), in MiB.
fn allocated_mib(path: &std::path::Path) -> anyhow::Result<f64> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    Ok((meta.blocks() * 512) as f64 / (1 << 20) as f64)
}

/// Links every row to its baseline and checks the issue's targets.
pub fn link_and_check(r: &mut Report) {
    let pairs: Vec<(String, String)> = r
        .rows
        .iter()
        .filter_map(|row| {
            let base = format!("engine {}", row.name);
            r.row(&base).map(|_| (row.name.clone(), base))
        })
        .collect();
    for (row, base) in pairs {
        r.link(&row, &base);
    }
    for (row, base) in [
        ("stop (cold, 512 MiB)", "engine stop (512 MiB)"),
        ("stop (cold, 1 GiB)", "engine stop (1 GiB)"),
        ("create (test, 512 MiB)", "bare QEMU boot (test, 512 MiB)"),
        ("engine create (test, 512 MiB)", "bare QEMU boot (test, 512 MiB)"),
        ("list (GET /sandboxes)", "GET /health (HTTP floor)"),
        ("inspect (GET /sandboxes/<name>)", "GET /health (HTTP floor)"),
        ("idle RSS, warm sandbox", "idle RSS, hot sandbox"),
        ("idle RSS 10 s after the free", "idle RSS 10 s after the free, reporting off"),
        (
            "RAM file allocated 10 s after the free",
            "RAM file allocated 10 s after the free, reporting off",
        ),
    ] {
        r.link(row, base);
    }
    {
        use issue24::*;
        for (row, base) in [
            (TTFC_SHAPE, TTFC_BOOT),
            (TTFC_BOOT, "bare QEMU boot (test, 512 MiB)"),
            (FORK1, TTFC_BOOT),
            (FORK4, FORK4_BASE),
            (FORK_CLONE_PSS, FORK_SOURCE_PSS),
            (POOL_ON, POOL_OFF),
        ] {
            r.link(row, base);
        }
    }
    for t in ["proxy TTFB hot", "proxy TTFB warm", "proxy TTFB cold"] {
        let base = t.replace("proxy TTFB", "engine forward TTFB");
        r.link(t, &base);
    }
    for name in [
        "engine pause (QMP stop)",
        "engine resume (QMP cont)",
        "idle RSS 10 s after the free, reporting off",
        "RAM file allocated 10 s after the free, reporting off",
    ] {
        if let Some(row) = r.rows.iter_mut().find(|x| x.name == name) {
            row.is_baseline = true;
        }
    }

    let targets = targets(r);
    for t in &targets {
        println!("target {}: {} ({}) {}", t.name, t.measured, t.limit, t.verdict());
    }
    r.targets = targets;
}

/// Every target, checked on the rows of `r` (pure: also for results files written before a
/// target existed, whose README section shows it "NOT MEASURED").
pub fn targets(r: &Report) -> Vec<Target> {
    let get = |name: &str, f: fn(&Row) -> Option<f64>| r.row(name).and_then(f);
    let p50 = |row: &Row| row.p50;
    let p99 = |row: &Row| row.p99;
    let mut targets = Vec::new();
    let mut ratio = |name: &str, a: Option<f64>, b: Option<f64>, limit: f64, what: &str| {
        let (measured, met) = match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => {
                (format!("{:.2}x ({a:.1} / {b:.1} ms)", a / b), Some(a / b <= limit))
            }
            _ => ("–".into(), None),
        };
        targets.push(Target {
            name: name.into(),
            measured,
            limit: format!("<= {limit}x {what}"),
            met,
        });
    };
    ratio(
        "API exec `true` p50 vs the engine's",
        get("exec true", p50),
        get("engine exec true", p50),
        1.3,
        "engine exec p50",
    );
    ratio(
        "20 parallel execs p99 vs one exec p99",
        get("20 parallel exec true", p99),
        get("exec true", p99),
        2.5,
        "single exec p99",
    );
    ratio(
        "create p50 vs bare QEMU boot p50",
        get("create (test, 512 MiB)", p50),
        get("bare QEMU boot (test, 512 MiB)", p50),
        1.2,
        "bare boot p50",
    );
    let abs = |name: &str, v: Option<f64>, limit: f64, unit: &str| {
        let (measured, met) = match v {
            Some(v) => (format!("{v:.1} {unit}"), Some(v <= limit)),
            None => ("–".into(), None),
        };
        Target { name: name.into(), measured, limit: format!("<= {limit} {unit}"), met }
    };
    let warm_add = match (get("warm wake + exec true", p50), get("exec true", p50)) {
        (Some(a), Some(b)) => Some(a - b),
        _ => None,
    };
    targets.push(abs("warm wake adds to an exec (p50 difference)", warm_add, 5.0, "ms"));
    targets.push(abs(
        "stop of a 1 GiB guest (dirtied < 50 MiB), p50",
        get("stop (cold, 1 GiB)", p50),
        100.0,
        "ms",
    ));
    let (warm, hot) = (get("idle RSS, warm sandbox", p50), get("idle RSS, hot sandbox", p50));
    targets.push(match (warm, hot) {
        (Some(w), Some(h)) => Target {
            name: "idle warm RSS vs idle hot RSS (p50)".into(),
            measured: format!("{w:.1} MiB vs {h:.1} MiB"),
            limit: "warm <= hot".into(),
            met: Some(w <= h),
        },
        _ => Target {
            name: "idle warm RSS vs idle hot RSS (p50)".into(),
            measured: "–".into(),
            limit: "warm <= hot".into(),
            met: None,
        },
    });
    targets.push(abs(
        "freed memory back: 300 of 400 MiB within (max)",
        get("time until 300 of the 400 MiB are back", |row| row.max),
        10_000.0,
        "ms",
    ));
    let grown = match (
        get("idle RSS 10 s after the free", p50),
        get("idle RSS before the allocation", p50),
    ) {
        (Some(a), Some(b)) => Some(a - b),
        _ => None,
    };
    targets.push(abs(
        "idle RSS 10 s after freeing 400 MiB, above its idle RSS before (p50)",
        grown,
        100.0,
        "MiB",
    ));
    targets.extend(issue24_targets(r));
    targets
}

/// Issue 24's targets (under TCG): time to first command from a shape snapshot p50 <= 250 ms
/// and <= 0.2x the boot path; 4 clones ready in <= 1.5 s (p50) with each clone's PSS <= 30%
/// of the source's (the largest, every sample); cold wake + exec `true` p50 <= 150 ms.
/// A skipped row makes its target "skipped: <why>", not measured.
pub fn issue24_targets(r: &Report) -> Vec<Target> {
    use issue24::*;
    let value = |name: &str, f: fn(&Row) -> Option<f64>| -> Result<f64, String> {
        match r.row(name) {
            None => Err("–".into()),
            Some(row) => match (&row.skipped, f(row)) {
                (Some(why), _) => Err(format!("skipped: {why}")),
                (None, Some(v)) => Ok(v),
                (None, None) => Err("– (every sample failed)".into()),
            },
        }
    };
    let target = |name: &str, v: Result<f64, String>, limit: f64, unit: &str| {
        let (measured, met) = match v {
            Ok(v) => (format!("{v:.1} {unit}"), Some(v <= limit)),
            Err(why) => (why, None),
        };
        Target { name: name.into(), measured, limit: format!("<= {limit} {unit}"), met }
    };
    let p50 = |row: &Row| row.p50;
    let max = |row: &Row| row.max;
    let ratio = match (value(TTFC_SHAPE, p50), value(TTFC_BOOT, p50)) {
        (Ok(a), Ok(b)) if b > 0.0 => Ok(a / b),
        (Ok(_), Ok(_)) => Err("– (boot p50 is 0)".into()),
        (Err(why), _) | (_, Err(why)) => Err(why),
    };
    let ratio_target = match ratio {
        Ok(x) => Target {
            name: "time to first command: shape restore vs boot (p50)".into(),
            measured: format!("{x:.2}x"),
            limit: "<= 0.2x the boot path".into(),
            met: Some(x <= 0.2),
        },
        Err(why) => Target {
            name: "time to first command: shape restore vs boot (p50)".into(),
            measured: why,
            limit: "<= 0.2x the boot path".into(),
            met: None,
        },
    };
    vec![
        target(
            "time to first command from a shape snapshot, p50",
            value(TTFC_SHAPE, p50),
            250.0,
            "ms",
        ),
        ratio_target,
        target("fork into 4 clones, every clone answering, p50", value(FORK4, p50), 1500.0, "ms"),
        target(
            "each extra clone's PSS, % of the source's (largest, every sample)",
            value(FORK_PSS_SHARE, max),
            30.0,
            "%",
        ),
        target("cold wake + exec `true`, p50", value("cold wake + exec true", p50), 150.0, "ms"),
    ]
}

#[cfg(test)]
mod tests {
    use super::issue24::*;
    use super::*;
    use crate::report::Samples;

    fn row(name: &str, v: &[f64]) -> Row {
        Row::new("s", name, "ms", &Samples { ok: v.to_vec(), ..Samples::default() })
    }

    fn verdicts(rows: Vec<Row>) -> Vec<(String, String, &'static str)> {
        let mut r = crate::readme::tests::fixture();
        r.rows = rows;
        issue24_targets(&r)
            .into_iter()
            .map(|t| (t.name.clone(), t.measured.clone(), t.verdict()))
            .collect()
    }

    #[test]
    fn issue24_targets_met_missed_and_skipped() {
        let met = verdicts(vec![
            row(TTFC_SHAPE, &[200.0, 240.0, 300.0]),
            row(TTFC_BOOT, &[1700.0, 1800.0]),
            row(FORK4, &[900.0, 1400.0]),
            row(FORK_PSS_SHARE, &[10.0, 29.0]),
            row("cold wake + exec true", &[120.0, 150.0, 400.0]),
        ]);
        let v: Vec<_> = met.iter().map(|t| t.2).collect();
        assert_eq!(v, ["MET"; 5], "{met:?}");
        assert_eq!(met[0].1, "240.0 ms");
        assert_eq!(met[1].1, "0.14x");

        let missed = verdicts(vec![
            row(TTFC_SHAPE, &[260.0]),
            row(TTFC_BOOT, &[1000.0]),
            row(FORK4, &[1600.0]),
            // Every clone must be under 30%: the largest sample decides.
            row(FORK_PSS_SHARE, &[10.0, 10.0, 31.0]),
            row("cold wake + exec true", &[151.0]),
        ]);
        let v: Vec<_> = missed.iter().map(|t| t.2).collect();
        assert_eq!(v, ["MISSED"; 5], "{missed:?}");

        let skipped = verdicts(vec![
            Row::skipped("s", TTFC_SHAPE, "ms", "no boot field"),
            row(TTFC_BOOT, &[1000.0]),
            Row::skipped("s", FORK4, "ms", "no fork route"),
            row(FORK_PSS_SHARE, &[]),
        ]);
        assert_eq!(skipped[0].1, "skipped: no boot field");
        assert_eq!(skipped[1].1, "skipped: no boot field", "the ratio too");
        assert_eq!(skipped[2].1, "skipped: no fork route");
        assert_eq!(skipped[3].1, "– (every sample failed)");
        assert_eq!(skipped[4].1, "–", "row absent");
        assert!(skipped.iter().all(|t| t.2 == "NOT MEASURED"), "{skipped:?}");
    }

    #[test]
    fn new_rows_are_linked_to_their_baselines() {
        let mut r = crate::readme::tests::fixture();
        r.rows = vec![
            row(TTFC_SHAPE, &[200.0]),
            row(TTFC_BOOT, &[1600.0]),
            row("bare QEMU boot (test, 512 MiB)", &[1500.0]),
            row(FORK4, &[1000.0]),
            row(FORK4_BASE, &[4000.0]),
            row(POOL_ON, &[100.0]),
            row(POOL_OFF, &[200.0]),
            Row::skipped("s", FORK1, "ms", "no fork route"),
        ];
        link_and_check(&mut r);
        let ratio = |n: &str| r.row(n).and_then(|x| x.ratio);
        assert_eq!(ratio(TTFC_SHAPE), Some(0.125));
        assert_eq!(
            r.row(TTFC_BOOT).unwrap().baseline.as_deref(),
            Some("bare QEMU boot (test, 512 MiB)")
        );
        assert!(r.row(TTFC_BOOT).unwrap().is_baseline, "and the baseline of the shape row");
        assert_eq!(ratio(FORK4), Some(0.25));
        assert_eq!(ratio(POOL_ON), Some(0.5));
        assert_eq!(ratio(FORK1), None, "a skipped row has no ratio");
    }
}
