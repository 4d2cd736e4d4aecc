//! A real daemon in-process: the engine on real QEMU microVMs (TCG here) in a namespace of its
//! own, the store in a temporary directory, the server on an ephemeral loopback port.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

pub fn data_dir() -> PathBuf {
    std::env::var_os("BHATTI_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/bhatti".into())
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Deletes the test's namespace when dropped.
pub struct NetnsGuard(String);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "delete", &self.0]).status();
    }
}

/// A running daemon and a client for it.
pub struct Daemon {
    pub url: String,
    pub key: String,
    pub client: reqwest::Client,
    pub state: server::AppState,
    pub user: store::User,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    // Dropped last: the engine's QEMUs die before the namespace goes.
    pub data: tempfile::TempDir,
    _guard: NetnsGuard,
}

impl Daemon {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A daemon whose settings `f` adjusts first (short thermal timings, say).
    pub async fn start_with(f: impl FnOnce(&mut server::Settings)) -> Self {
        Self::start_with_engine(f, |_| {}).await
    }

    /// A daemon whose settings `f` and engine configuration `e` are adjusted first.
    pub async fn start_with_engine(
        f: impl FnOnce(&mut server::Settings),
        e: impl FnOnce(&mut engine::EngineConfig),
    ) -> Self {
        let data = tempfile::tempdir().unwrap();
        let kernel = data_dir().join("kernel/current/vmlinux");
        assert!(kernel.exists(), "{} missing: run images/kernel/build", kernel.display());
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let netns = format!("bhatti-s{}-{n}", std::process::id());
        let guard = NetnsGuard(netns.clone());
        let engine_config = engine::EngineConfig {
            netns,
            subnet: format!("10.{}.{}.0/24", std::process::id() % 200 + 20, n % 250 + 1)
                .parse()
                .unwrap(),
            max_concurrent_boots: 1,
            ..engine::EngineConfig::new(data.path().join("engine"), kernel)
        };
        let mut engine_config = engine_config;
        e(&mut engine_config);
        let engine = Arc::new(engine::Engine::new(engine_config).await.unwrap());
        let db = data.path().join("state.db");
        let mut sync = store::Store::open(&db).unwrap();
        let (user, key) = sync.create_user("tester", store::Quotas::default()).unwrap();
        drop(sync);
        let store = store::AsyncStore::open(&db, &store::Options::default()).unwrap();
        let mut settings = server::Settings::new(data.path().to_owned());
        settings.images_dir = data_dir().join("images");
        settings.default_image = "test".into();
        // The suites measure other things (perf, bursts of execs, polling); the rate limits
        // are tested with their own numbers in tenancy.rs.
        let lots = server::rate_limits::Rate { burst: 1e9, per_minute: 1e9 };
        settings.rate_limits.create = lots;
        settings.rate_limits.exec = lots;
        settings.rate_limits.read = lots;
        f(&mut settings);
        let state = server::AppState::new(engine, store, settings);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task =
            tokio::spawn(server::serve(state.clone(), server::nodelay(listener), async move {
                let _ = rx.await;
            }));
        Daemon {
            url,
            key: key.expose().to_owned(),
            client: reqwest::Client::new(),
            state,
            user,
            shutdown: Some(tx),
            task: Some(task),
            data,
            _guard: guard,
        }
    }

    /// A request with the user's key.
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, format!("{}{path}", self.url)).bearer_auth(&self.key)
    }

    /// Creates a small sandbox and returns its JSON.
    pub async fn create(&self, name: &str) -> api::Sandbox {
        let body = serde_json::json!({"name": name, "memory_mb": 128});
        let r = self.req(reqwest::Method::POST, "/sandboxes").json(&body).send().await.unwrap();
        assert_eq!(r.status(), 201, "{:?}", r.text().await);
        r.json().await.unwrap()
    }

    /// Runs a shell script in the guest (as `lohar`) and checks it succeeded.
    pub async fn sh(&self, sandbox: &str, script: &str) {
        let r = self
            .req(reqwest::Method::POST, &format!("/sandboxes/{sandbox}/exec"))
            .json(&serde_json::json!({"cmd": ["sh", "-c", script]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let out: api::ExecResult = r.json().await.unwrap();
        assert_eq!(out.exit_code, 0, "{script}: {}", out.stderr);
    }

    /// Starts a command detached in the guest.
    pub async fn detach(&self, sandbox: &str, cmd: &[&str]) {
        let r = self
            .req(reqwest::Method::POST, &format!("/sandboxes/{sandbox}/exec"))
            .json(&serde_json::json!({"cmd": cmd, "detach": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
    }

    /// Another user and their key.
    pub async fn other_user(&self, name: &str) -> String {
        let name = name.to_owned();
        let (_, key) = self
            .state
            .store
            .write(move |s| s.create_user(&name, store::Quotas::default()))
            .await
            .unwrap();
        key.expose().to_owned()
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

/// Polls `f` every 20 ms until it holds, or fails the test after `limit`.
pub async fn until<F, Fut>(what: &str, limit: std::time::Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + limit;
    while !f().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
