//! A persistent volume's file on the host: made, checked, grown, copied. Each tool runs under
//! a deadline and is killed when it passes; nothing here mounts anything on the host.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use crate::error::ApiError;

/// mkfs, e2fsck, resize2fs and tune2fs on a volume.
const FS_TOOL_DEADLINE: Duration = Duration::from_secs(120);
/// Copying a volume (clone, a backup's snapshot).
pub(crate) const COPY_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// Runs `cmd` to its end within `deadline`; `ok` says which exit codes are success.
async fn run(
    mut cmd: Command,
    deadline: Duration,
    ok: impl Fn(i32) -> bool,
) -> Result<Vec<u8>, ApiError> {
    let tool = format!("{:?}", cmd.as_std().get_program());
    cmd.kill_on_drop(true).stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(deadline, cmd.output())
        .await
        .map_err(|_| ApiError::Internal(format!("{tool} took longer than {deadline:?}")))?
        .map_err(|e| ApiError::Internal(format!("starting {tool}: {e}")))?;
    match out.status.code() {
        Some(code) if ok(code) => Ok(out.stdout),
        _ => Err(ApiError::Internal(format!(
            "{tool} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

/// A path beside `file` with `suffix` added to its name (`data.ext4` -> `data.ext4.partial`).
pub(crate) fn beside(file: &Path, suffix: &str) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    file.with_file_name(name)
}

/// Makes an empty ext4 volume of `size_mb` at `path` (a sparse file, `mkfs.ext4 -F -q`, the
/// root directory owned by the guest's user 1000), built under a temporary name and renamed,
/// so a failure never leaves a half-made file under the real name. A stray file at `path`
/// (a crash between a row's deletion and its file's) is replaced.
pub(crate) async fn make(path: &Path, size_mb: u32) -> Result<(), ApiError> {
    let partial = beside(path, ".partial");
    let (p, len) = (partial.clone(), u64::from(size_mb) * 1024 * 1024);
    blocking(move || {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::File::create(&p)?.set_len(len)
    })
    .await?;
    let mut cmd = Command::new("mkfs.ext4");
    cmd.args(["-F", "-q", "-E", "root_owner=1000:1000"]).arg(&partial);
    if let Err(e) = run(cmd, FS_TOOL_DEADLINE, |c| c == 0).await {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(e);
    }
    tokio::fs::rename(&partial, path).await.map_err(io("renaming", &partial))
}

/// Whether the file system was cleanly unmounted: `tune2fs -l` reports the state `clean` and
/// no journal waiting to be replayed (`needs_recovery`; v1 looked at the state only, which an
/// ext4 with a journal keeps `clean` while mounted, so a volume of a killed VM passed and its
/// read-only mount then failed in the guest).
pub(crate) async fn is_clean(path: &Path) -> Result<bool, ApiError> {
    let mut cmd = Command::new("tune2fs");
    cmd.arg("-l").arg(path);
    let out = run(cmd, FS_TOOL_DEADLINE, |c| c == 0).await?;
    Ok(clean_in(&String::from_utf8_lossy(&out)))
}

/// [`is_clean`] on `tune2fs -l`'s text.
fn clean_in(listing: &str) -> bool {
    let field = |name: &str| {
        listing.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or_default()
    };
    field("Filesystem state:") == "clean"
        && !field("Filesystem features:").split_whitespace().any(|f| f == "needs_recovery")
}

/// `e2fsck -f -y`: 0 (clean) and 1 (errors fixed) are success.
pub(crate) async fn check(path: &Path) -> Result<(), ApiError> {
    let mut cmd = Command::new("e2fsck");
    cmd.args(["-f", "-y"]).arg(path);
    run(cmd, FS_TOOL_DEADLINE, |c| c <= 1).await.map(drop)
}

/// Grows a detached volume to `size_mb`: check, grow the file, `resize2fs`.
pub(crate) async fn grow(path: &Path, size_mb: u32) -> Result<(), ApiError> {
    check(path).await?;
    let (p, len) = (path.to_owned(), u64::from(size_mb) * 1024 * 1024);
    blocking(move || std::fs::OpenOptions::new().write(true).open(&p)?.set_len(len)).await?;
    let mut cmd = Command::new("resize2fs");
    cmd.arg(path);
    run(cmd, FS_TOOL_DEADLINE, |c| c == 0).await.map(drop)
}

/// Copies `from` to `to` keeping holes (`cp --reflink=auto --sparse=always`), under a
/// temporary name first.
pub(crate) async fn copy(from: &Path, to: &Path) -> Result<(), ApiError> {
    let partial = beside(to, ".partial");
    let mut cmd = Command::new("cp");
    cmd.args(["--reflink=auto", "--sparse=always"]).arg(from).arg(&partial);
    if let Err(e) = run(cmd, COPY_DEADLINE, |c| c == 0).await {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(e);
    }
    tokio::fs::rename(&partial, to).await.map_err(io("renaming", &partial))
}

/// Removes a file; already gone is fine.
pub(crate) async fn remove(path: &Path) {
    match tokio::fs::remove_file(path).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), "removing a volume file: {e}"),
    }
}

/// An IO error on `path` as an answer: a full disk is 507, anything else internal.
pub(crate) fn io<'a>(op: &'static str, path: &'a Path) -> impl Fn(std::io::Error) -> ApiError + 'a {
    move |e| io_error(op, path, &e)
}

pub(crate) fn io_error(op: &str, path: &Path, e: &std::io::Error) -> ApiError {
    if e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28) {
        ApiError::NoSpace(format!("{op}: the host's disk is full"))
    } else {
        ApiError::Internal(format!("{op} {}: {e}", path.display()))
    }
}

/// Blocking file work on a blocking thread.
async fn blocking(
    work: impl FnOnce() -> std::io::Result<()> + Send + 'static,
) -> Result<(), ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::Internal(format!("file work: {e}")))?
        .map_err(|e| io_error("volume file", Path::new(""), &e))
}

#[cfg(test)]
mod tests {
    #[test]
    fn clean_means_clean_state_and_no_journal_to_replay() {
        let rows = [
            (
                "clean",
                "Filesystem state:         clean\nFilesystem features:      has_journal extent",
                true,
            ),
            (
                "needs recovery",
                "Filesystem state:         clean\nFilesystem features:      has_journal needs_recovery extent",
                false,
            ),
            (
                "not clean",
                "Filesystem state:         not clean\nFilesystem features:      has_journal",
                false,
            ),
            ("with errors", "Filesystem state:         clean with errors\n", false),
            ("no state", "Filesystem features:      has_journal\n", false),
        ];
        for (name, listing, clean) in rows {
            assert_eq!(super::clean_in(listing), clean, "{name}");
        }
    }
}
