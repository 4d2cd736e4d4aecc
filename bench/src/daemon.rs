//! The daemon under test: one this runner starts (`bhatti serve` on a temp data directory, its
//! own namespace and port) or a live one (`--url`), and the HTTP calls the scenarios make.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::Method;
use serde_json::{Value, json};

/// A daemon this runner started; killed (with its QEMUs and namespace) when dropped.
pub struct OwnDaemon {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    netns: String,
}

impl OwnDaemon {
    /// Starts `bin serve` and waits up to 60 s for `/health`.
    pub async fn start(bin: &Path, artifacts: &Path) -> anyhow::Result<(OwnDaemon, Api)> {
        Self::start_with(bin, artifacts, Slot::Main, "", &[]).await
    }

    /// [`OwnDaemon::start`] with more config lines (`extra`, YAML) and environment (`env`, which
    /// wins over the runner's own); every [`Slot`] has a namespace and subnet of its own, so
    /// the runner's daemons run side by side, and its thermal timings ([`Slot::thermal`]).
    pub async fn start_with(
        bin: &Path,
        artifacts: &Path,
        slot: Slot,
        extra: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<(OwnDaemon, Api)> {
        let dir = tempfile::Builder::new().prefix("bhatti-bench-").tempdir()?;
        let config = dir.path().join("config.yaml");
        // The benchmark measures latency, not v1's rate limits (its execs come faster).
        std::fs::write(
            &config,
            format!(
                "log_format: text\nrate_limits: {{create: {{burst: 1000000, per_minute: 1000000}}, exec: {{burst: 1000000, per_minute: 1000000}}, read: {{burst: 1000000, per_minute: 1000000}}}}\n{extra}"
            ),
        )?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let pid = std::process::id();
        let (tag, octet) = slot.net();
        let thermal = slot.thermal();
        let netns = format!("bhatti-{tag}{pid}");
        let child = Command::new(bin)
            .arg("serve")
            .env("BHATTI_CONFIG", &config)
            .env("BHATTI_DATA_DIR", dir.path().join("state"))
            .env("BHATTI_LISTEN", format!("127.0.0.1:{port}"))
            .env("BHATTI_NETNS", &netns)
            .env("BHATTI_SUBNET", format!("10.{}.{octet}.0/20", pid % 100 + 120))
            .env("BHATTI_KERNEL", artifacts.join("kernel/current/vmlinux"))
            .env("BHATTI_IMAGES_DIR", artifacts.join("images"))
            .env("BHATTI_DEFAULT_IMAGE", "test")
            .env("BHATTI_WARM_AFTER_SECS", thermal.warm_after_secs.to_string())
            .env("BHATTI_COLD_AFTER_SECS", thermal.cold_after_secs.to_string())
            .env("BHATTI_THERMAL_TICK_SECS", thermal.tick_secs.to_string())
            .envs(env.iter().copied())
            .stdout(std::fs::File::create(dir.path().join("daemon.log"))?)
            .stderr(std::fs::File::create(dir.path().join("daemon.err"))?)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut d = OwnDaemon { dir, child: Some(child), netns };
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        let http = client()?;
        loop {
            if let Ok(r) = http.get(format!("{base}/health")).send().await
                && r.status() == 200
            {
                break;
            }
            if let Some(c) = d.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!("the daemon exited ({status}): {}", d.logs());
            }
            if Instant::now() > deadline {
                bail!("the daemon never answered /health: {}", d.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let key = std::fs::read_to_string(d.dir.path().join("state/admin.key"))
            .context("reading the admin key")?;
        let api = Api { base, token: key.trim().to_owned(), http, data_dir: Some(d.state()) };
        Ok((d, api))
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Whether a line of the daemon's log (stdout or stderr) so far contains every one of
    /// `needles` (quoting differs between the text and JSON log formats).
    pub fn log_has_line_with(&self, needles: &[&str]) -> bool {
        ["daemon.err", "daemon.log"].iter().any(|f| {
            std::fs::read_to_string(self.dir.path().join(f))
                .is_ok_and(|t| t.lines().any(|l| needles.iter().all(|n| l.contains(n))))
        })
    }

    pub fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        let all = format!("{}\n{}", read("daemon.err"), read("daemon.log"));
        let tail: Vec<&str> = all.lines().rev().take(30).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for OwnDaemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        kill_processes_naming(self.dir.path());
        let _ = Command::new("ip").args(["netns", "delete", &self.netns]).status();
    }
}

/// Which of the runner's daemons: each has its own namespace and `/20` subnet, and its thermal
/// timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The daemon under test for every row but the thermally cold ones.
    Main,
    /// The thermally cold rows of the lifecycle and proxy groups (the default config, short
    /// thermal timings).
    Cold,
    /// The cold wake rows with the restore pool on (`restore_pool: 2`) ...
    PoolOn,
    /// ... and off (`restore_pool: 0`).
    PoolOff,
}

/// A daemon's `thermal` settings (the `BHATTI_*_SECS` variables, which win over the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThermalTimings {
    pub warm_after_secs: u64,
    pub cold_after_secs: u64,
    pub tick_secs: u64,
}

impl Slot {
    #[cfg(test)]
    pub const ALL: [Slot; 4] = [Slot::Main, Slot::Cold, Slot::PoolOn, Slot::PoolOff];

    /// The namespace's tag and the third octet of its `10.x.<octet>.0/20` subnet.
    pub fn net(self) -> (&'static str, u8) {
        match self {
            Slot::Main => ("bd", 0),
            Slot::Cold => ("bc", 16),
            Slot::PoolOn => ("bp", 32),
            Slot::PoolOff => ("bq", 48),
        }
    }

    /// Main: warm rows must measure warm sandboxes (idle ones go warm after 2 s, checked
    /// through the API before timing) and nothing goes cold by itself during the run, so no
    /// hot or warm row meets a thermal stop. The others exist for the thermally cold rows: an
    /// idle sandbox is paused after 1 s and suspended to disk 1 s later, so a sample waits a
    /// few seconds, not the defaults' 30 s + 30 min. Their sandboxes stay `keep_hot` between
    /// samples, so no thermal stop runs while another row is measured.
    pub fn thermal(self) -> ThermalTimings {
        match self {
            Slot::Main => {
                ThermalTimings { warm_after_secs: 2, cold_after_secs: 86_400, tick_secs: 1 }
            }
            Slot::Cold | Slot::PoolOn | Slot::PoolOff => {
                ThermalTimings { warm_after_secs: 1, cold_after_secs: 1, tick_secs: 1 }
            }
        }
    }
}

/// SIGKILLs every process whose command line names `dir` (the QEMUs of a data directory that
/// is ours alone).
pub fn kill_processes_naming(dir: &Path) {
    let needle = dir.display().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else { return };
    for entry in procs.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        if pid == std::process::id() as i32 {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

pub fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(180))
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .build()?)
}

/// The HTTP API, authenticated.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
    /// The daemon's data directory when known (QEMU pid files for the RSS rows).
    pub data_dir: Option<PathBuf>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("base", &self.base).finish_non_exhaustive()
    }
}

impl Api {
    pub fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token)
    }

    /// Sends, and fails on a non-2xx status with the body's text.
    async fn call(&self, rb: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let r = rb.send().await?;
        if !r.status().is_success() {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            bail!("{status}: {}", body.chars().take(300).collect::<String>());
        }
        Ok(r)
    }

    /// `POST /sandboxes` with any body; returns the answer's JSON.
    pub async fn create_json(&self, body: &Value) -> anyhow::Result<Value> {
        let r = self.call(self.req(Method::POST, "/sandboxes").json(body)).await?;
        Ok(r.json().await?)
    }

    /// `GET /openapi.json` (public): what routes and request fields this daemon has.
    pub async fn openapi(&self) -> anyhow::Result<Value> {
        let r = self.call(self.http.get(format!("{}/openapi.json", self.base))).await?;
        Ok(r.json().await?)
    }

    /// `POST /sandboxes/<name>/fork {"count": n}`: the clones' IDs. A 404 or 405 (no such
    /// route on this daemon) is [`Fork::NoRoute`].
    pub async fn fork(&self, name: &str, count: usize) -> anyhow::Result<Fork> {
        let r = self
            .req(Method::POST, &format!("/sandboxes/{name}/fork"))
            .json(&json!({ "count": count }))
            .send()
            .await?;
        let status = r.status();
        if status == 404 || status == 405 {
            return Ok(Fork::NoRoute(status.as_u16()));
        }
        let body = r.text().await.unwrap_or_default();
        if status != 201 {
            bail!("{status}: {}", body.chars().take(300).collect::<String>());
        }
        let v: Value = serde_json::from_str(&body).context("the fork answer is not JSON")?;
        let ids: Vec<String> = v
            .as_array()
            .context("the fork answer is not an array")?
            .iter()
            .filter_map(|s| s["id"].as_str().map(str::to_owned))
            .collect();
        anyhow::ensure!(ids.len() == count, "asked for {count} clones, got {}", ids.len());
        Ok(Fork::Clones(ids))
    }

    /// Creates a sandbox; returns its ID.
    pub async fn create(
        &self,
        name: &str,
        image: &str,
        memory_mb: u32,
        keep_hot: bool,
    ) -> anyhow::Result<String> {
        let body =
            json!({"name": name, "image": image, "memory_mb": memory_mb, "keep_hot": keep_hot});
        let r = self.call(self.req(Method::POST, "/sandboxes").json(&body)).await?;
        let v: Value = r.json().await?;
        v["id"].as_str().map(str::to_owned).context("no id in the create answer")
    }

    pub async fn post(&self, path: &str) -> anyhow::Result<()> {
        self.call(self.req(Method::POST, path)).await?.bytes().await?;
        Ok(())
    }

    pub async fn destroy(&self, name: &str) -> anyhow::Result<()> {
        self.call(self.req(Method::DELETE, &format!("/sandboxes/{name}"))).await?.bytes().await?;
        Ok(())
    }

    /// GET, the body read in full; returns its length.
    pub async fn get(&self, path: &str) -> anyhow::Result<usize> {
        Ok(self.call(self.req(Method::GET, path)).await?.bytes().await?.len())
    }

    /// The ID of a sandbox by name.
    pub async fn get_id(&self, name: &str) -> anyhow::Result<String> {
        let r = self.call(self.req(Method::GET, &format!("/sandboxes/{name}"))).await?;
        let v: Value = r.json().await?;
        v["id"].as_str().map(str::to_owned).context("no id")
    }

    /// Buffered exec; a non-zero exit is a failure.
    pub async fn exec(&self, name: &str, cmd: &[&str]) -> anyhow::Result<String> {
        let r = self
            .call(
                self.req(Method::POST, &format!("/sandboxes/{name}/exec"))
                    .json(&json!({ "cmd": cmd })),
            )
            .await?;
        let v: Value = r.json().await?;
        if v["exit_code"].as_i64() != Some(0) {
            bail!("exit {}: {}", v["exit_code"], v["stderr"]);
        }
        Ok(v["stdout"].as_str().unwrap_or_default().to_owned())
    }

    /// Starts `cmd` detached.
    pub async fn exec_detached(&self, name: &str, cmd: &[&str]) -> anyhow::Result<()> {
        let body = json!({ "cmd": cmd, "detach": true, "output_file": "/tmp/detached.log" });
        self.call(self.req(Method::POST, &format!("/sandboxes/{name}/exec")).json(&body))
            .await?
            .bytes()
            .await?;
        Ok(())
    }

    pub async fn write_file(&self, name: &str, path: &str, data: Vec<u8>) -> anyhow::Result<()> {
        self.call(
            self.req(Method::PUT, &format!("/sandboxes/{name}/files?path={path}")).body(data),
        )
        .await?
        .bytes()
        .await?;
        Ok(())
    }

    pub async fn read_file(&self, name: &str, path: &str) -> anyhow::Result<usize> {
        let r = self.call(self.req(Method::GET, &format!("/sandboxes/{name}/files?path={path}")));
        Ok(r.await?.bytes().await?.len())
    }

    /// The `thermal` field of `GET /sandboxes/<name>`.
    pub async fn thermal(&self, name: &str) -> anyhow::Result<String> {
        let v = self.sandbox(name).await?;
        Ok(v["thermal"].as_str().unwrap_or_default().to_owned())
    }

    /// `GET /sandboxes/<name>` (never wakes the sandbox).
    pub async fn sandbox(&self, name: &str) -> anyhow::Result<Value> {
        let r = self.call(self.req(Method::GET, &format!("/sandboxes/{name}"))).await?;
        Ok(r.json().await?)
    }

    /// `PATCH /sandboxes/<name> {"keep_hot": ..}`: on, the thermal manager leaves the sandbox
    /// alone (and a sleeping one is woken); off, it cools it once idle.
    pub async fn set_keep_hot(&self, name: &str, keep_hot: bool) -> anyhow::Result<()> {
        let body = json!({ "keep_hot": keep_hot });
        self.call(self.req(Method::PATCH, &format!("/sandboxes/{name}")).json(&body))
            .await?
            .bytes()
            .await?;
        Ok(())
    }

    /// The ID of the newest event of type `kind` about the sandbox (`GET /events`, newest
    /// first), `None` if there is none.
    pub async fn newest_event_id(&self, name: &str, kind: &str) -> anyhow::Result<Option<i64>> {
        let path = format!("/events?type={kind}&sandbox={name}&limit=1");
        let r = self.call(self.req(Method::GET, &path)).await?;
        let v: Value = r.json().await?;
        let list = v.as_array().context("GET /events did not answer a list")?;
        Ok(list.first().and_then(|e| e["id"].as_i64()))
    }

    /// Polls until the sandbox reports `want` (bounded).
    pub async fn wait_thermal(
        &self,
        name: &str,
        want: &str,
        within: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let now = self.thermal(name).await?;
            if now == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{name} is {now:?}, not {want:?}, after {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// VmRSS (MiB) of the sandbox's QEMU, from its pid file in the daemon's data directory.
    pub fn qemu_rss_mib(&self, id: &str) -> anyhow::Result<f64> {
        let dir = self.data_dir.as_ref().context("the daemon's data directory is unknown")?;
        qemu_rss_mib(&dir.join("engine/sandboxes").join(id).join("qemu.pid"))
    }
}

/// What `POST /sandboxes/<name>/fork` answered.
#[derive(Debug)]
pub enum Fork {
    Clones(Vec<String>),
    /// This daemon has no fork route (its status).
    NoRoute(u16),
}

impl Api {
    /// PSS (MiB) of the sandbox's QEMU: `Pss:` of `/proc/<pid>/smaps_rollup`, which splits
    /// every shared page among the processes mapping it (copy-on-write clones share the
    /// source's RAM file pages).
    pub fn qemu_pss_mib(&self, id: &str) -> anyhow::Result<f64> {
        let dir = self.data_dir.as_ref().context("the daemon's data directory is unknown")?;
        let pid_file = dir.join("engine/sandboxes").join(id).join("qemu.pid");
        let pid = std::fs::read_to_string(&pid_file)
            .with_context(|| format!("reading {}", pid_file.display()))?;
        let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", pid.trim()))?;
        smaps_pss_mib(&rollup)
    }
}

/// The `Pss:` line of an `smaps_rollup`, in MiB.
pub fn smaps_pss_mib(rollup: &str) -> anyhow::Result<f64> {
    let kb: f64 = rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no Pss line")?;
    Ok(kb / 1024.0)
}

pub fn qemu_rss_mib(pid_file: &Path) -> anyhow::Result<f64> {
    let pid = std::fs::read_to_string(pid_file)
        .with_context(|| format!("reading {}", pid_file.display()))?;
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim()))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    Ok(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_have_their_own_namespace_and_subnet() {
        let nets: Vec<(&str, u8)> = Slot::ALL.iter().map(|s| s.net()).collect();
        for (i, (tag, octet)) in nets.iter().enumerate() {
            assert_eq!(octet % 16, 0, "{tag}: a /20 starts on a multiple of 16");
            for (other, o) in &nets[i + 1..] {
                assert_ne!(tag, other, "namespace tags");
                assert_ne!(octet, o, "subnets of {tag} and {other}");
            }
        }
    }

    #[test]
    fn only_the_cold_slots_cool_to_disk() {
        let main = Slot::Main.thermal();
        // The run is far shorter than a day: the hot and warm rows never meet a thermal stop.
        assert!(main.cold_after_secs >= 86_400, "{main:?}");
        assert_eq!((main.warm_after_secs, main.tick_secs), (2, 1), "warm rows: warm after 2 s");
        for slot in [Slot::Cold, Slot::PoolOn, Slot::PoolOff] {
            let t = slot.thermal();
            // Idle -> warm -> cold within a few ticks, so a cold sample waits seconds.
            assert!(t.warm_after_secs + t.cold_after_secs + 2 * t.tick_secs <= 5, "{slot:?}");
            assert!(t.tick_secs >= 1, "{slot:?}: the daemon's ticker needs a period");
        }
    }

    #[test]
    fn pss_from_smaps_rollup() {
        let rollup = "55a4c0000000-7ffd5b1fe000 ---p 00000000 00:00 0  [rollup]\n\
                      Rss:              131072 kB\nPss:               40960 kB\n\
                      Pss_Anon:          10240 kB\nPss_File:          30720 kB\n";
        assert_eq!(smaps_pss_mib(rollup).ok(), Some(40.0), "Pss, not Pss_Anon or Rss");
        assert!(smaps_pss_mib("Rss: 12 kB\n").is_err(), "no Pss line");
    }
}
