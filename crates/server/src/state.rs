//! What every handler shares: the engine, the store, and the daemon's settings.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Settings the handlers need (the binary builds them from the config file).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Built-in images: `<images_dir>/<name>/current/rootfs.ext4` (what the image scripts
    /// build), `<data_dir>/images` by default.
    pub images_dir: PathBuf,
    /// The image a create without `image` uses.
    pub default_image: String,
    /// Hot -> warm after this long without activity.
    pub warm_after: Duration,
    /// Warm -> cold after this long warm.
    pub cold_after: Duration,
    /// How often the thermal manager looks.
    pub thermal_tick: Duration,
    /// How long a running exec may finish when the daemon shuts down.
    pub drain_timeout: Duration,
    /// Events older than this are purged (v1: 90 days), so the table cannot grow without
    /// bound.
    pub event_retention: Duration,
    /// How often the purge runs (v1: hourly).
    pub housekeeping_period: Duration,
    /// Metrics snapshots older than this are purged (v1: 30 days).
    pub metrics_retention: Duration,
    /// How often a metrics snapshot is taken (v1: every minute).
    pub metrics_period: Duration,
    /// Bytes all buffered execs together may hold (see `exec_budget.rs`); 256 MiB.
    pub exec_output_budget: usize,
    /// A new connection must deliver a complete request head this long after its accept, a
    /// keep-alive connection this long after the first byte of its next head; else it is
    /// closed (v1's `ReadHeaderTimeout`, 10 s). Both listeners.
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request in progress is closed after this long without
    /// the first byte of its next request (v1's `IdleTimeout`, 120 s). Both listeners.
    pub idle_timeout: Duration,
    /// The URLs published aliases answer at (`publish_urls.rs`); none by default.
    pub public_urls: crate::publish_urls::PublicUrls,
    /// The API's own base URL as browsers reach it (`https://api.example.com`): a share link is
    /// `<api_url>/_shell/<id>#token=...`. Unset, the mint answers the path only and the CLI
    /// puts its own API URL in front.
    pub api_url: Option<String>,
    /// The guest agent injected into imported and pulled images (`/usr/local/bin/lohar` in
    /// them); `<data_dir>/lohar` by default (config key `lohar`).
    pub lohar: PathBuf,
    /// The largest `docker save` tarball `POST /images/import` takes (413 beyond); v1's
    /// 10 GiB (config key `image_import_max_bytes`).
    pub image_import_max_bytes: u64,
    /// Registries pulled from over plain HTTP (`host:port`, config key
    /// `insecure_registries`); a reference may also say `http://` itself. Loopback only is
    /// the sane use.
    pub insecure_registries: Vec<String>,
    /// v1's `backup` config (volume backups to S3); off unless `s3_endpoint` is set.
    pub backup: crate::backup_config::BackupConfig,
    /// The API's per-user rate limits (v1's numbers; config `rate_limits`).
    pub rate_limits: crate::rate_limits::Rates,
    /// Creates restore shape snapshots when they can (config `shape_snapshots`, default true).
    pub shape_snapshots: bool,
}

impl Settings {
    /// v1's defaults: 30 s to warm, 30 min to cold, a tick every 10 s.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            images_dir: data_dir.join("images"),
            lohar: data_dir.join("lohar"),
            image_import_max_bytes: 10 * 1024 * 1024 * 1024,
            insecure_registries: Vec::new(),
            data_dir,
            default_image: "minimal".into(),
            warm_after: Duration::from_secs(30),
            cold_after: Duration::from_secs(30 * 60),
            thermal_tick: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            event_retention: Duration::from_secs(90 * 24 * 3600),
            housekeeping_period: Duration::from_secs(3600),
            metrics_retention: Duration::from_secs(30 * 24 * 3600),
            metrics_period: Duration::from_secs(60),
            exec_output_budget: 256 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            public_urls: crate::publish_urls::PublicUrls::None,
            api_url: None,
            backup: crate::backup_config::BackupConfig::default(),
            rate_limits: crate::rate_limits::Rates::default(),
            shape_snapshots: true,
        }
    }
}

/// The application's state, cheap to clone into every handler.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The sandbox engine.
    pub engine: Arc<engine::Engine>,
    /// The database.
    pub store: store::AsyncStore,
    /// Settings.
    pub settings: Arc<Settings>,
    /// When the daemon started (`/health`'s uptime).
    pub started: std::time::Instant,
    /// The memory buffered execs may hold, all together.
    pub exec_budget: crate::exec_budget::OutputBudget,
    /// Held across an egress policy change (row, then engine), so two racing changes cannot
    /// leave the engine enforcing one policy while the row shows the other.
    pub(crate) policy_changes: Arc<tokio::sync::Mutex<()>>,
    /// The public proxy's routes, limits, wakes and counters.
    pub public: Arc<crate::gate::Public>,
    /// The forwards (`forward.rs`), in memory only.
    pub forwards: crate::forwards::Forwards,
    /// The live web-shell connections, per sandbox (the cap, and revocation closing them).
    pub web_shells: Arc<crate::web_shells::WebShells>,
    /// The event recorder: `state.events.record(store::NewEvent { .. })` (`events.rs`).
    pub events: crate::events::Recorder,
    /// The image pulls running (`image_pull.rs`), to cancel them.
    pub(crate) pulls: crate::pulls::Pulls,
    /// The age identity secrets are sealed to (`<data_dir>/age.key`).
    pub sealer: Arc<crate::sealing::Sealer>,
    /// Each sandbox's decrypted secret environment, added to the execs it runs.
    pub secret_envs: Arc<crate::secret_envs::SecretEnvs>,
    /// Execs running, per user (the concurrent-exec quota).
    pub exec_slots: Arc<crate::exec_slots::ExecSlots>,
    /// The API's per-user rate limits.
    pub rate_limits: Arc<crate::rate_limits::UserLimits>,
    /// The shape snapshots creates restore (`shape_store.rs`).
    pub shapes: Arc<crate::shape_store::Shapes>,
}

impl AppState {
    /// A state over an engine and a store. Spawns the event recorder's writer, so it is called
    /// inside a Tokio runtime.
    pub fn new(engine: Arc<engine::Engine>, store: store::AsyncStore, settings: Settings) -> Self {
        let exec_budget = crate::exec_budget::OutputBudget::new(settings.exec_output_budget);
        // Installed before anything is counted.
        let _ = crate::telemetry::prometheus();
        let sealer = Arc::new(crate::sealing::Sealer::new(&settings.data_dir));
        let rate_limits = Arc::new(crate::rate_limits::UserLimits::new(settings.rate_limits));
        let shapes =
            Arc::new(crate::shape_store::Shapes::new(&settings.data_dir, settings.shape_snapshots));
        Self {
            engine,
            settings: Arc::new(settings),
            started: std::time::Instant::now(),
            exec_budget,
            policy_changes: Arc::default(),
            public: Arc::default(),
            forwards: crate::forwards::Forwards::default(),
            web_shells: Arc::default(),
            events: crate::events::Recorder::spawn(store.clone()),
            store,
            pulls: crate::pulls::Pulls::default(),
            sealer,
            secret_envs: Arc::default(),
            exec_slots: Arc::default(),
            rate_limits,
            shapes,
        }
    }
}
