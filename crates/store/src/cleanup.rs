//! Start-up clean-ups after recovery (host.md 4.6, steps 7-10): what a crash between a row
//! change and a file change left behind.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::db::Store;
use crate::error::Result;

/// Where the daemon keeps the files these clean-ups look at.
#[derive(Debug, Clone)]
pub struct DataDirs {
    /// `<data>/volumes` (`<owner>/<name>.ext4` inside).
    pub volumes: PathBuf,
    /// `<data>/checkpoints` (named snapshots; staging directories end in `.tmp` or hold
    /// `.tmp-` in their name).
    pub checkpoints: PathBuf,
}

impl DataDirs {
    /// The layout under a data directory.
    pub fn under(data_dir: &Path) -> Self {
        DataDirs { volumes: data_dir.join("volumes"), checkpoints: data_dir.join("checkpoints") }
    }
}

/// What the clean-ups removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Attachments of destroyed or unknown sandboxes.
    pub detached: usize,
    /// Volume files no row names (a crash between deleting the row and the file).
    pub stray_volume_files: Vec<PathBuf>,
    /// Checkpoint staging directories (a crash mid-capture).
    pub stale_staging: Vec<PathBuf>,
    /// Publish rules of destroyed or unknown sandboxes.
    pub unpublished: usize,
    /// Files that should have gone but would not (logged by the caller; start-up goes on).
    pub failures: Vec<(PathBuf, String)>,
}

impl Store {
    /// Runs every clean-up; must follow [`Store::apply_recovery`] (it acts on the statuses
    /// recovery sets). A file that cannot be removed is reported, not fatal.
    pub fn clean_up_at_start(&mut self, dirs: &DataDirs) -> Result<CleanupReport> {
        let mut report =
            CleanupReport { detached: self.detach_orphaned_volumes()?, ..Default::default() };
        let known: HashSet<PathBuf> =
            self.list_all_volumes()?.into_iter().map(|v| canonical(&v.file_path)).collect();
        for file in files_at_depth(&dirs.volumes, 2) {
            let is_volume = file.extension().is_some_and(|e| e == "ext4");
            if is_volume && !known.contains(&canonical(&file)) {
                remove(&file, &mut report.stray_volume_files, &mut report.failures);
            }
        }
        // The engine stages at `<checkpoints>/<name>.tmp-*`, the daemon's layout at
        // `<checkpoints>/<owner>/<name>.tmp`; inside a finished checkpoint nothing is touched.
        let staged = entries_at_depth(&dirs.checkpoints, 1)
            .into_iter()
            .chain(entries_at_depth(&dirs.checkpoints, 2).into_iter().filter(|p| in_owner_dir(p)));
        for entry in staged.filter(|p| is_staging(p)).collect::<Vec<_>>() {
            remove(&entry, &mut report.stale_staging, &mut report.failures);
        }
        report.unpublished = self.delete_orphaned_publish_rules()?;
        Ok(report)
    }
}

/// Whether `p`'s parent is an owner's directory (`usr_...`).
fn in_owner_dir(p: &Path) -> bool {
    p.parent()
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("usr_"))
}

fn canonical(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
}

fn is_staging(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".tmp") || n.contains(".tmp-"))
}

/// Entries exactly `depth` levels below `root` (1 = its children); missing dirs are empty.
fn entries_at_depth(root: &Path, depth: usize) -> Vec<PathBuf> {
    let mut level = vec![root.to_path_buf()];
    for _ in 0..depth {
        level = level
            .iter()
            .filter(|d| d.is_dir() && !d.is_symlink())
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flat_map(|rd| rd.flatten().map(|e| e.path()))
            .collect();
    }
    level
}

fn files_at_depth(root: &Path, depth: usize) -> Vec<PathBuf> {
    entries_at_depth(root, depth).into_iter().filter(|p| p.is_file()).collect()
}

fn remove(p: &Path, removed: &mut Vec<PathBuf>, failures: &mut Vec<(PathBuf, String)>) {
    let result = if p.is_dir() && !p.is_symlink() {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    };
    match result {
        Ok(()) => removed.push(p.to_path_buf()),
        Err(e) => failures.push((p.to_path_buf(), e.to_string())),
    }
}
