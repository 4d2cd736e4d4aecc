//! The daemon's shape snapshots (`shapes.rs` uses them): which exist, what they were made of,
//! who was restored from them; in memory and in `<data_dir>/shapes.json`. No handlers here.
//!
//! The files are the engine's: checkpoints of the reserved engine owner [`SHAPES_OWNER`]
//! (`<data_dir>/checkpoints/shapes/<key>/`). The index is written after a capture (to a temporary
//! file, fsynced, renamed, the directory fsynced), so a crash between the two leaves a directory
//! without an entry, which the start removes with the other orphan checkpoints. Uses are counted
//! in memory and written without waiting on the disk (losing a count to a crash is harmless).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};

use crate::shape::FileId;

/// The engine owner the shape snapshots belong to (user IDs are `usr_`-prefixed, so no user's
/// sandboxes or checkpoints are ever filed under it).
pub const SHAPES_OWNER: &str = "shapes";

/// One shape snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The shape's key, also the checkpoint's name.
    pub key: String,
    /// The image name of the create that recorded it.
    pub image: String,
    /// The image file's identity at capture.
    pub image_file: FileId,
    /// The kernel's identity at capture.
    pub kernel: FileId,
    /// vCPUs.
    pub cpus: f64,
    /// Guest RAM in MB.
    pub memory_mb: u32,
    /// Disk size in MB (0: the image's).
    pub disk_size_mb: u32,
    /// The sandbox it was captured from (`warm` for `template warm`).
    pub source: String,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// Milliseconds since the epoch of the last restore.
    #[serde(default)]
    pub last_used: Option<i64>,
    /// Restores.
    #[serde(default)]
    pub uses: u64,
    /// Sandboxes restored from it (until the engine can say which sandboxes depend on a
    /// checkpoint: a shape is kept while any of them has a row).
    #[serde(default)]
    pub restored: BTreeSet<String>,
}

/// The file's contents.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    version: u32,
    shapes: BTreeMap<String, Entry>,
}

/// The registry.
#[derive(Debug)]
pub struct Shapes {
    enabled: bool,
    path: PathBuf,
    entries: Mutex<Option<BTreeMap<String, Entry>>>,
    capturing: Mutex<HashSet<String>>,
    /// One write of the file at a time, the newest content last.
    writes: tokio::sync::Mutex<()>,
    restores: AtomicU64,
    captures: AtomicU64,
}

/// Held while one create captures a shape; dropping it lets another try.
#[derive(Debug)]
pub struct Capturing<'a> {
    shapes: &'a Shapes,
    key: String,
}

impl Drop for Capturing<'_> {
    fn drop(&mut self) {
        lock(&self.shapes.capturing).remove(&self.key);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shapes {
    /// The registry of `<data_dir>/shapes.json` (read on first use).
    pub fn new(data_dir: &Path, enabled: bool) -> Self {
        Self {
            enabled,
            path: data_dir.join("shapes.json"),
            entries: Mutex::new(None),
            capturing: Mutex::default(),
            writes: tokio::sync::Mutex::new(()),
            restores: AtomicU64::new(0),
            captures: AtomicU64::new(0),
        }
    }

    /// The config's `shape_snapshots`.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Restores since the daemon started.
    pub fn restores(&self) -> u64 {
        self.restores.load(Ordering::Relaxed)
    }

    /// Captures since the daemon started.
    pub fn captures(&self) -> u64 {
        self.captures.load(Ordering::Relaxed)
    }

    /// Reads the file once (off the async threads); a damaged one is set aside and starts empty
    /// (its checkpoints become orphans, removed at the next start).
    pub async fn load(&self) {
        if lock(&self.entries).is_some() {
            return;
        }
        let path = self.path.clone();
        let read = tokio::task::spawn_blocking(move || read_index(&path)).await;
        let shapes = match read {
            Ok(shapes) => shapes,
            Err(e) => {
                tracing::warn!("reading the shape index: {e}");
                BTreeMap::new()
            }
        };
        let mut entries = lock(&self.entries);
        if entries.is_none() {
            *entries = Some(shapes);
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, Entry>) -> R) -> R {
        let mut entries = lock(&self.entries);
        f(entries.get_or_insert_with(BTreeMap::new))
    }

    /// The entry of `key`.
    pub async fn get(&self, key: &str) -> Option<Entry> {
        self.load().await;
        self.with(|m| m.get(key).cloned())
    }

    /// Every entry.
    pub async fn list(&self) -> Vec<Entry> {
        self.load().await;
        self.with(|m| m.values().cloned().collect())
    }

    /// The right to capture `key`, unless another create holds it.
    pub fn try_capture(&self, key: &str) -> Option<Capturing<'_>> {
        lock(&self.capturing)
            .insert(key.to_owned())
            .then(|| Capturing { shapes: self, key: key.to_owned() })
    }

    /// Records a captured shape, durably.
    pub async fn record(&self, entry: Entry) -> std::io::Result<()> {
        self.load().await;
        self.with(|m| m.insert(entry.key.clone(), entry));
        self.captures.fetch_add(1, Ordering::Relaxed);
        self.save(true).await
    }

    /// Counts a restore of `key` into `sandbox` (written in the background).
    pub async fn used(self: &std::sync::Arc<Self>, key: &str, sandbox: &str, now: i64) {
        self.load().await;
        self.restores.fetch_add(1, Ordering::Relaxed);
        self.with(|m| {
            if let Some(e) = m.get_mut(key) {
                e.uses += 1;
                e.last_used = Some(now);
                e.restored.insert(sandbox.to_owned());
            }
        });
        let me = std::sync::Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = me.save(false).await {
                tracing::warn!("writing the shape index: {e}");
            }
        });
    }

    /// Forgets `keys` (their files are the caller's to remove), durably.
    pub async fn forget(&self, keys: &[String]) -> std::io::Result<()> {
        self.load().await;
        let changed = self.with(|m| keys.iter().filter(|k| m.remove(k.as_str()).is_some()).count());
        if changed == 0 {
            return Ok(());
        }
        self.save(true).await
    }

    /// Drops sandboxes that no longer exist from every entry's `restored`.
    pub async fn prune_restored(&self, live: &HashSet<String>) {
        self.load().await;
        self.with(|m| {
            for e in m.values_mut() {
                e.restored.retain(|id| live.contains(id));
            }
        });
    }

    async fn save(&self, durable: bool) -> std::io::Result<()> {
        let _one = self.writes.lock().await;
        let index = Index { version: 1, shapes: self.with(|m| m.clone()) };
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || write_index(&path, &index, durable))
            .await
            .map_err(std::io::Error::other)?
    }
}

fn read_index(path: &Path) -> BTreeMap<String, Entry> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return BTreeMap::new(),
        Err(e) => {
            tracing::warn!(file = %path.display(), "reading the shape index: {e}");
            return BTreeMap::new();
        }
    };
    match serde_json::from_str::<Index>(&text) {
        Ok(index) => index.shapes,
        Err(e) => {
            let aside = path.with_extension("json.damaged");
            tracing::warn!(file = %path.display(), "the shape index is damaged ({e}): set aside");
            let _ = std::fs::rename(path, aside);
            BTreeMap::new()
        }
    }
}

fn write_index(path: &Path, index: &Index, durable: bool) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(index).map_err(std::io::Error::other)?;
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&text)?;
    if durable {
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if durable && let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A file's identity (its real path, size and modification time), read off the async threads
/// by the caller.
pub fn file_id(path: &Path) -> std::io::Result<FileId> {
    let real = std::fs::canonicalize(path)?;
    let meta = std::fs::metadata(&real)?;
    let mtime = meta.modified()?;
    let mtime_ns = match mtime.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i128::try_from(d.as_nanos()).unwrap_or(i128::MAX),
        Err(e) => -i128::try_from(e.duration().as_nanos()).unwrap_or(i128::MAX),
    };
    Ok(FileId { path: real.to_string_lossy().into_owned(), size: meta.len(), mtime_ns })
}

/// Whether `id` still describes its file.
pub fn unchanged(id: &FileId) -> bool {
    file_id(Path::new(&id.path)).is_ok_and(|now| &now == id)
}
