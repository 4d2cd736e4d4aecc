//! Container images to bootable ext4 files (host.md 2.14): a `docker save` tarball's (or a
//! registry's) layers flattened in order into a directory, whiteouts applied, lohar and what
//! a bhatti guest needs injected, then `mkfs.ext4 -d` (no loop mount, no root filesystem
//! mounted anywhere).
//!
//! Nothing in a layer can write outside the tree: paths with `..` are refused, and every
//! parent is resolved inside the tree (a symlink `etc -> /etc` in a layer leads to the tree's
//! `etc`, never the host's). Device nodes are skipped; ownership and modes are kept. All of
//! it is blocking file work: callers run it on a blocking thread.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{PermissionsExt, lchown, symlink};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Why a conversion failed.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The input is not what it should be (not a tarball, a path with `..`, no manifest).
    #[error("{0}")]
    Invalid(String),
    /// A file operation failed (the host's side).
    #[error("{op} {}: {error}", path.display())]
    Io {
        /// What was done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// `mkfs.ext4` failed or ran past its deadline.
    #[error("mkfs.ext4: {0}")]
    Mkfs(String),
    /// The caller gave up (a cancelled pull).
    #[error("cancelled")]
    Cancelled,
}

impl ConvertError {
    /// The host's disk is full (the answer is 507, not 400 or 500).
    pub fn is_no_space(&self) -> bool {
        match self {
            ConvertError::Io { error, .. } => error.raw_os_error() == Some(28), // ENOSPC
            ConvertError::Mkfs(text) => text.contains("No space left"),
            _ => false,
        }
    }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ConvertError + 'a {
    move |error| ConvertError::Io { op, path: path.to_owned(), error }
}

/// A tar error while reading an entry: the input is at fault unless the disk is.
fn read_err(what: &str) -> impl FnOnce(std::io::Error) -> ConvertError + '_ {
    move |e| ConvertError::Invalid(format!("{what}: {e}"))
}

/// A layer entry's path, relative to the root: `./a/b` and `/a/b` are `a/b`; `..` anywhere is
/// refused; the root itself is `None`.
pub fn normalize(path: &Path) -> Result<Option<PathBuf>, ConvertError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(ConvertError::Invalid(format!(
                    "path traversal in layer entry {:?}",
                    path.display().to_string()
                )));
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// `root/rel` with every symlink on the way resolved inside `root` (absolute targets start at
/// `root`, `..` stops at it); the last component is followed only with `follow_last`.
pub fn secure_join(root: &Path, rel: &Path, follow_last: bool) -> Result<PathBuf, ConvertError> {
    let mut done: Vec<OsString> = Vec::new();
    let mut pending: VecDeque<OsString> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut hops = 0;
    while let Some(c) = pending.pop_front() {
        if c == ".." {
            done.pop();
            continue;
        }
        let mut candidate = root.to_owned();
        candidate.extend(&done);
        candidate.push(&c);
        let last = pending.is_empty();
        let is_link = fs::symlink_metadata(&candidate).is_ok_and(|m| m.file_type().is_symlink());
        if is_link && (!last || follow_last) {
            hops += 1;
            if hops > 40 {
                return Err(ConvertError::Invalid(format!(
                    "too many levels of symlinks at {:?}",
                    rel.display().to_string()
                )));
            }
            let target = fs::read_link(&candidate).map_err(io("reading the link", &candidate))?;
            if target.is_absolute() {
                done.clear();
            }
            let mut next: VecDeque<OsString> = target
                .components()
                .filter_map(|c| match c {
                    Component::Normal(s) => Some(s.to_owned()),
                    Component::ParentDir => Some("..".into()),
                    _ => None,
                })
                .collect();
            next.extend(pending.drain(..));
            pending = next;
        } else {
            done.push(c);
        }
    }
    let mut out = root.to_owned();
    out.extend(&done);
    Ok(out)
}

/// Opens a layer: plain tar or gzip (sniffed); zstd is refused by name.
fn open_layer(path: &Path) -> Result<tar::Archive<Box<dyn Read>>, ConvertError> {
    let file = fs::File::open(path).map_err(io("opening", path))?;
    let mut reader = BufReader::new(file);
    let head = reader.fill_buf().map_err(io("reading", path))?;
    let inner: Box<dyn Read> = match head {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::GzDecoder::new(reader)),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => {
            return Err(ConvertError::Invalid("zstd-compressed layers are not supported".into()));
        }
        _ => Box::new(reader),
    };
    Ok(tar::Archive::new(inner))
}

fn remove_any(path: &Path) -> Result<(), ConvertError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(io("removing", path)),
        Ok(_) => fs::remove_file(path).map_err(io("removing", path)),
        Err(_) => Ok(()),
    }
}

/// Applies one layer (a tar file, maybe gzipped) onto the tree at `root`: first its whiteouts
/// to what lower layers left (`.wh.<name>` deletes `<name>`, `.wh..wh..opq` empties its
/// directory), then its entries. Returns how many device nodes were skipped.
pub fn apply_layer(root: &Path, layer: &Path, cancel: &AtomicBool) -> Result<usize, ConvertError> {
    // Pass 1: whiteouts, against the lower layers only.
    let mut archive = open_layer(layer)?;
    for entry in archive.entries().map_err(read_err("reading a layer"))? {
        if cancel.load(Ordering::Relaxed) {
            return Err(ConvertError::Cancelled);
        }
        let entry = entry.map_err(read_err("reading a layer"))?;
        let raw = entry.path().map_err(read_err("a layer entry's path"))?.into_owned();
        let Some(rel) = normalize(&raw)? else { continue };
        let Some(name) = rel.file_name().and_then(|n| n.to_str()) else { continue };
        let Some(hidden) = name.strip_prefix(".wh.") else { continue };
        let parent = rel.parent().unwrap_or(Path::new(""));
        let dir = secure_join(root, parent, true)?;
        if hidden == ".wh..opq" {
            if let Ok(children) = fs::read_dir(&dir) {
                for child in children.flatten() {
                    remove_any(&child.path())?;
                }
            }
        } else if !hidden.is_empty() && hidden != "." && hidden != ".." {
            remove_any(&dir.join(hidden))?;
        }
    }
    // Pass 2: the entries.
    let mut skipped = 0;
    let mut archive = open_layer(layer)?;
    for entry in archive.entries().map_err(read_err("reading a layer"))? {
        if cancel.load(Ordering::Relaxed) {
            return Err(ConvertError::Cancelled);
        }
        let mut entry = entry.map_err(read_err("reading a layer"))?;
        let raw = entry.path().map_err(read_err("a layer entry's path"))?.into_owned();
        let Some(rel) = normalize(&raw)? else { continue };
        if rel.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(".wh.")) {
            continue;
        }
        let header = entry.header().clone();
        let kind = header.entry_type();
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            skipped += 1;
            continue;
        }
        if !(kind.is_dir()
            || kind.is_file()
            || kind.is_symlink()
            || kind.is_hard_link()
            || kind == tar::EntryType::Continuous
            || kind.is_gnu_sparse())
        {
            continue; // pax global headers and the like
        }
        let dest = secure_join(root, &rel, false)?;
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        let existing = fs::symlink_metadata(&dest).ok();
        if kind.is_dir() {
            match existing {
                Some(m) if m.is_dir() => {}
                Some(_) => {
                    remove_any(&dest)?;
                    fs::create_dir(&dest).map_err(io("creating", &dest))?;
                }
                None => fs::create_dir(&dest).map_err(io("creating", &dest))?,
            }
        } else {
            if existing.is_some() {
                remove_any(&dest)?;
            }
            if kind.is_symlink() {
                let target = entry
                    .link_name()
                    .map_err(read_err("a symlink's target"))?
                    .ok_or_else(|| ConvertError::Invalid(format!("symlink {rel:?} has no target")))?
                    .into_owned();
                symlink(&target, &dest).map_err(io("linking", &dest))?;
            } else if kind.is_hard_link() {
                let target =
                    entry.link_name().map_err(read_err("a hard link's target"))?.ok_or_else(
                        || ConvertError::Invalid(format!("hard link {rel:?} has no target")),
                    )?;
                let Some(target) = normalize(&target)? else {
                    return Err(ConvertError::Invalid(format!("hard link {rel:?} to the root")));
                };
                let source = secure_join(root, &target, false)?;
                if fs::hard_link(&source, &dest).is_err() {
                    fs::copy(&source, &dest).map_err(io("copying", &source))?;
                }
                continue; // the target's owner and mode stand
            } else {
                let mut file = fs::File::create(&dest).map_err(io("creating", &dest))?;
                std::io::copy(&mut entry, &mut file).map_err(|e| {
                    if e.raw_os_error() == Some(28) {
                        ConvertError::Io { op: "writing", path: dest.clone(), error: e }
                    } else {
                        ConvertError::Invalid(format!("reading layer entry {rel:?}: {e}"))
                    }
                })?;
            }
        }
        let uid = header.uid().ok().and_then(|u| u32::try_from(u).ok());
        let gid = header.gid().ok().and_then(|g| u32::try_from(g).ok());
        lchown(&dest, uid, gid).map_err(io("changing the owner of", &dest))?;
        if !kind.is_symlink() {
            let mode = header.mode().map_err(read_err("an entry's mode"))? & 0o7777;
            fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
                .map_err(io("setting the mode of", &dest))?;
        }
    }
    Ok(skipped)
}

/// The layers of a `docker save` tarball, in order: the archive is unpacked into `work`
/// (regular files only; symlinks between its entries, as newer Docker writes, are followed by
/// name) and its `manifest.json` read.
pub fn docker_archive_layers(archive: &Path, work: &Path) -> Result<Vec<PathBuf>, ConvertError> {
    let file = fs::File::open(archive).map_err(io("opening", archive))?;
    let mut tar = tar::Archive::new(BufReader::new(file));
    let not_tar = |e: std::io::Error| {
        ConvertError::Invalid(format!("not a tar archive (a `docker save` tarball): {e}"))
    };
    let mut links: std::collections::HashMap<PathBuf, PathBuf> = Default::default();
    let mut entries = 0;
    for entry in tar.entries().map_err(not_tar)? {
        let mut entry = entry.map_err(not_tar)?;
        entries += 1;
        let raw = entry.path().map_err(not_tar)?.into_owned();
        let Some(rel) = normalize(&raw)? else { continue };
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            if let Some(target) = entry.link_name().map_err(not_tar)? {
                let base = if kind.is_symlink() {
                    rel.parent().unwrap_or(Path::new(""))
                } else {
                    Path::new("")
                };
                let target = base.join(target);
                links.insert(rel, target);
            }
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            let dest = work.join(&rel);
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent).map_err(io("creating", parent))?;
            }
            let mut out = fs::File::create(&dest).map_err(io("creating", &dest))?;
            std::io::copy(&mut entry, &mut out).map_err(|e| {
                if e.raw_os_error() == Some(28) {
                    ConvertError::Io { op: "writing", path: dest.clone(), error: e }
                } else {
                    not_tar(e)
                }
            })?;
        }
    }
    if entries == 0 {
        return Err(ConvertError::Invalid("not a tar archive: it is empty".into()));
    }
    let resolve = |name: &str| -> Result<PathBuf, ConvertError> {
        let mut rel = normalize(Path::new(name))?
            .ok_or_else(|| ConvertError::Invalid("a layer named the root".into()))?;
        for _ in 0..8 {
            match links.get(&rel) {
                Some(target) => {
                    rel = normalize(target)?
                        .ok_or_else(|| ConvertError::Invalid("a link to the root".into()))?;
                }
                None => break,
            }
        }
        let path = work.join(&rel);
        if !path.is_file() {
            return Err(ConvertError::Invalid(format!(
                "layer {name:?} is missing from the archive"
            )));
        }
        Ok(path)
    };
    let manifest_path = resolve("manifest.json").map_err(|_| {
        ConvertError::Invalid(
            "no manifest.json in the archive (not a `docker save` tarball)".into(),
        )
    })?;
    let text = fs::read_to_string(&manifest_path).map_err(io("reading", &manifest_path))?;
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(rename = "Layers", default)]
        layers: Vec<String>,
    }
    let manifest: Vec<Entry> = serde_json::from_str(&text)
        .map_err(|e| ConvertError::Invalid(format!("manifest.json: {e}")))?;
    let first = manifest
        .into_iter()
        .next()
        .ok_or_else(|| ConvertError::Invalid("manifest.json lists no image".into()))?;
    if first.layers.is_empty() {
        return Err(ConvertError::Invalid("the image has no layers".into()));
    }
    first.layers.iter().map(|l| resolve(l)).collect()
}

/// What a guest of ours needs, put into the tree: lohar as `/usr/local/bin/lohar`, the
/// mount points, public resolvers, and a user with uid 1000 (an existing one is kept, else
/// `lohar` is added; a tree without `/etc/passwd` is left alone). Returns warnings.
pub fn inject(root: &Path, lohar: &Path) -> Result<Vec<String>, ConvertError> {
    let mut warnings = Vec::new();
    let bin = secure_join(root, Path::new("usr/local/bin"), true)?;
    fs::create_dir_all(&bin).map_err(io("creating", &bin))?;
    let dest = secure_join(root, Path::new("usr/local/bin/lohar"), false)?;
    remove_any(&dest)?;
    fs::copy(lohar, &dest).map_err(io("copying lohar from", lohar))?;
    lchown(&dest, Some(0), Some(0)).map_err(io("changing the owner of", &dest))?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o755))
        .map_err(io("setting the mode of", &dest))?;
    for dir in ["proc", "sys", "dev", "dev/pts", "tmp", "run", "workspace", "etc"] {
        let path = secure_join(root, Path::new(dir), true)?;
        if !path.is_dir() {
            remove_any(&path)?;
            fs::create_dir_all(&path).map_err(io("creating", &path))?;
        }
    }
    let tmp = secure_join(root, Path::new("tmp"), true)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777))
        .map_err(io("setting the mode of", &tmp))?;
    let resolv = secure_join(root, Path::new("etc/resolv.conf"), false)?;
    remove_any(&resolv)?;
    fs::write(&resolv, "nameserver 1.1.1.1\nnameserver 8.8.8.8\n")
        .map_err(io("writing", &resolv))?;
    let passwd = secure_join(root, Path::new("etc/passwd"), true)?;
    if passwd.is_file() {
        let text = fs::read_to_string(&passwd).map_err(io("reading", &passwd))?;
        let existing = text.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() >= 6 && f[2] == "1000").then(|| f[5].to_owned())
        });
        let home = match existing {
            Some(home) => home,
            None => {
                append_line(&passwd, "lohar:x:1000:1000:bhatti user:/home/lohar:/bin/sh")?;
                let group = secure_join(root, Path::new("etc/group"), true)?;
                let has_gid = fs::read_to_string(&group)
                    .map(|t| t.lines().any(|l| l.split(':').nth(2) == Some("1000")))
                    .unwrap_or(false);
                if !has_gid {
                    append_line(&group, "lohar:x:1000:")?;
                }
                let shadow = secure_join(root, Path::new("etc/shadow"), true)?;
                if shadow.is_file() {
                    append_line(&shadow, "lohar:!:19000:0:99999:7:::")?;
                }
                "/home/lohar".to_owned()
            }
        };
        if let Some(rel) = normalize(Path::new(&home))? {
            let dir = secure_join(root, &rel, true)?;
            fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
            lchown(&dir, Some(1000), Some(1000)).map_err(io("changing the owner of", &dir))?;
        }
        let workspace = secure_join(root, Path::new("workspace"), true)?;
        lchown(&workspace, Some(1000), Some(1000))
            .map_err(io("changing the owner of", &workspace))?;
    } else {
        warnings.push("no /etc/passwd: no user with uid 1000 was added".to_owned());
    }
    if fs::symlink_metadata(root.join("bin/sh")).is_err() {
        warnings.push("no /bin/sh: exec with a shell will fail".to_owned());
    }
    if root.join("lib/systemd/systemd").exists() || root.join("usr/lib/systemd/systemd").exists() {
        warnings.push("systemd is present but will not be PID 1 (lohar is)".to_owned());
    }
    Ok(warnings)
}

fn append_line(path: &Path, line: &str) -> Result<(), ConvertError> {
    let mut text = fs::read_to_string(path).unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
    fs::write(path, text).map_err(io("writing", path))
}

/// Entries and bytes of regular files under `root` (symlinks not followed).
pub fn measure(root: &Path) -> Result<(u64, u64), ConvertError> {
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(io("listing", &dir))? {
            let entry = entry.map_err(io("listing", &dir))?;
            let meta = fs::symlink_metadata(entry.path()).map_err(io("reading", &entry.path()))?;
            files += 1;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                bytes += meta.len();
            }
        }
    }
    Ok((files, bytes))
}

/// v1's sizing: max(512, 1.3 x content) MiB; inodes max(1.5 x entries, bytes / 4096, 1024).
pub fn ext4_size(files: u64, bytes: u64) -> (u64, u64) {
    let content_mib = bytes.div_ceil(1024 * 1024);
    let size_mib = (content_mib * 13).div_ceil(10).max(512);
    let inodes = (files * 3).div_ceil(2).max(bytes / 4096).max(1024);
    (size_mib, inodes)
}

/// How long `mkfs.ext4` may take.
const MKFS_DEADLINE: Duration = Duration::from_secs(15 * 60);

/// Builds the ext4 file `out` (sparse) from the tree at `root`.
pub async fn make_ext4(
    root: &Path,
    out: &Path,
    files: u64,
    bytes: u64,
) -> Result<(), ConvertError> {
    let (size_mib, inodes) = ext4_size(files, bytes);
    let file = fs::File::create(out).map_err(io("creating", out))?;
    file.set_len(size_mib * 1024 * 1024).map_err(io("sizing", out))?;
    drop(file);
    let mut cmd = tokio::process::Command::new("mkfs.ext4");
    cmd.args(["-t", "ext4", "-F", "-q", "-N", &inodes.to_string(), "-d"])
        .arg(root)
        .arg(out)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(MKFS_DEADLINE, cmd.output())
        .await
        .map_err(|_| ConvertError::Mkfs(format!("still running after {MKFS_DEADLINE:?}")))?
        .map_err(|e| ConvertError::Mkfs(format!("could not start it: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(ConvertError::Mkfs(format!("{}: {}", output.status, stderr.trim())));
    }
    Ok(())
}

/// A `docker save` tarball at `archive` to the ext4 file `out`, in the work directory
/// `work` (removed by the caller). Returns the warnings.
pub async fn docker_archive_to_ext4(
    archive: PathBuf,
    work: PathBuf,
    lohar: PathBuf,
    out: PathBuf,
) -> Result<Vec<String>, ConvertError> {
    let root = work.join("rootfs");
    let unpacked = work.join("archive");
    let tree = root.clone();
    let (warnings, files, bytes) = tokio::task::spawn_blocking(move || {
        fs::create_dir_all(&tree).map_err(io("creating", &tree))?;
        let layers = docker_archive_layers(&archive, &unpacked)?;
        let cancel = AtomicBool::new(false);
        for layer in &layers {
            apply_layer(&tree, layer, &cancel)?;
        }
        let _ = fs::remove_dir_all(&unpacked);
        let warnings = inject(&tree, &lohar)?;
        let (files, bytes) = measure(&tree)?;
        Ok::<_, ConvertError>((warnings, files, bytes))
    })
    .await
    .map_err(|e| ConvertError::Mkfs(format!("conversion thread: {e}")))??;
    make_ext4(&root, &out, files, bytes).await?;
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar of (path, kind) entries: `f:<content>` file, `d` dir, `l:<target>` symlink,
    /// `h:<target>` hard link.
    fn layer(dir: &Path, name: &str, entries: &[(&str, &str)]) -> PathBuf {
        let path = dir.join(name);
        let mut b = tar::Builder::new(fs::File::create(&path).unwrap());
        for (p, spec) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(1234);
            h.set_gid(4321);
            h.set_mtime(0);
            // set_path refuses `..`: write the name bytes directly, as a hostile tool would.
            {
                let gnu = h.as_gnu_mut().unwrap();
                gnu.name[..p.len()].copy_from_slice(p.as_bytes());
            }
            if let Some(content) = spec.strip_prefix("f:") {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o640);
                h.set_size(content.len() as u64);
                h.set_cksum();
                b.append(&h, content.as_bytes()).unwrap();
            } else if *spec == "d" {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o750);
                h.set_size(0);
                h.set_cksum();
                b.append(&h, std::io::empty()).unwrap();
            } else if *spec == "c" {
                h.set_entry_type(tar::EntryType::Char);
                h.set_mode(0o600);
                h.set_size(0);
                h.set_cksum();
                b.append(&h, std::io::empty()).unwrap();
            } else {
                let (kind, target) = if let Some(t) = spec.strip_prefix("l:") {
                    (tar::EntryType::Symlink, t)
                } else {
                    (tar::EntryType::Link, spec.strip_prefix("h:").unwrap())
                };
                h.set_entry_type(kind);
                h.set_mode(0o777);
                h.set_size(0);
                h.set_link_name(target).unwrap();
                h.set_cksum();
                b.append(&h, std::io::empty()).unwrap();
            }
        }
        b.into_inner().unwrap();
        path
    }

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap()
    }

    #[test]
    fn layers_flatten_in_order_with_whiteouts_and_an_opaque_dir() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        let cancel = AtomicBool::new(false);
        let l1 = layer(
            dir.path(),
            "l1.tar",
            &[
                ("etc/", "d"),
                ("etc/keep", "f:one"),
                ("etc/gone", "f:bye"),
                ("opq/", "d"),
                ("opq/old", "f:old"),
                ("opq/sub/", "d"),
                ("opq/sub/deep", "f:deep"),
                ("bin/", "d"),
                ("bin/busybox", "f:bb"),
                ("bin/sh", "l:busybox"),
                ("bin/ln", "h:bin/busybox"),
                ("dev/", "d"),
                ("dev/null", "c"),
                ("replaced", "f:file"),
            ],
        );
        let l2 = layer(
            dir.path(),
            "l2.tar",
            &[
                ("etc/.wh.gone", "f:"),
                // The new entry of the opaque dir comes before its marker: it must survive.
                ("opq/new", "f:new"),
                ("opq/.wh..wh..opq", "f:"),
                ("etc/keep", "f:two"),
                ("replaced/", "d"),
                ("replaced/inside", "f:x"),
            ],
        );
        assert_eq!(apply_layer(&root, &l1, &cancel).unwrap(), 1, "the device node is skipped");
        apply_layer(&root, &l2, &cancel).unwrap();
        assert_eq!(read(&root.join("etc/keep")), "two", "the upper layer wins");
        assert!(!root.join("etc/gone").exists(), "whiteout deletes");
        assert!(!root.join("opq/old").exists() && !root.join("opq/sub").exists(), "opaque dir");
        assert_eq!(read(&root.join("opq/new")), "new", "same-layer entries survive the marker");
        assert!(!root.join("etc/.wh.gone").exists() && !root.join("opq/.wh..wh..opq").exists());
        assert_eq!(fs::read_link(root.join("bin/sh")).unwrap(), Path::new("busybox"));
        assert_eq!(read(&root.join("bin/ln")), "bb", "hard link recreated");
        assert!(!root.join("dev/null").exists());
        assert_eq!(read(&root.join("replaced/inside")), "x", "a file replaced by a dir");
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(root.join("etc/keep")).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1234, 4321, 0o640), "owner and mode");
        assert_eq!(fs::metadata(root.join("etc")).unwrap().mode() & 0o7777, 0o750);
    }

    #[test]
    fn traversal_is_refused_and_symlinks_never_lead_out() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&outside).unwrap();
        let cancel = AtomicBool::new(false);
        for (name, entries) in [
            ("dotdot.tar", vec![("../escape", "f:x")]),
            ("inner.tar", vec![("a/../../escape", "f:x")]),
            ("hardlink.tar", vec![("x", "h:../../etc/passwd")]),
        ] {
            let l = layer(dir.path(), name, &entries);
            let err = apply_layer(&root, &l, &cancel).unwrap_err();
            assert!(
                matches!(err, ConvertError::Invalid(ref m) if m.contains("traversal")),
                "{name}: {err}"
            );
        }
        assert!(!dir.path().join("escape").exists());
        // A symlink to an absolute host path, then a file through it: lands inside the tree.
        let abs = outside.display().to_string();
        let l =
            layer(dir.path(), "via-link.tar", &[("out", &format!("l:{abs}")), ("out/f", "f:in")]);
        apply_layer(&root, &l, &cancel).unwrap();
        assert!(!outside.join("f").exists(), "written outside the tree");
        let inside = root.join(abs.trim_start_matches('/')).join("f");
        assert_eq!(read(&inside), "in");
        // A relative link climbing out is clamped at the root.
        let l = layer(dir.path(), "climb.tar", &[("up", "l:../../../.."), ("up/g", "f:g")]);
        apply_layer(&root, &l, &cancel).unwrap();
        assert_eq!(read(&root.join("g")), "g");
    }

    #[test]
    fn a_docker_archive_lists_its_layers_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let l1 = layer(dir.path(), "l1.tar", &[("a", "f:1")]);
        let archive = dir.path().join("image.tar");
        let mut b = tar::Builder::new(fs::File::create(&archive).unwrap());
        b.append_path_with_name(&l1, "abc/layer.tar").unwrap();
        let manifest = br#"[{"Config":"c.json","RepoTags":["x:1"],"Layers":["abc/layer.tar"]}]"#;
        let mut h = tar::Header::new_gnu();
        h.set_size(manifest.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "manifest.json", &manifest[..]).unwrap();
        b.into_inner().unwrap();
        let work = dir.path().join("work");
        let layers = docker_archive_layers(&archive, &work).unwrap();
        assert_eq!(layers, vec![work.join("abc/layer.tar")]);
        let garbage = dir.path().join("garbage.tar");
        fs::write(&garbage, b"this is not a tarball at all, just some text").unwrap();
        assert!(matches!(docker_archive_layers(&garbage, &work), Err(ConvertError::Invalid(_))));
        let no_manifest = dir.path().join("plain.tar");
        let l = layer(dir.path(), "plain.tar", &[("x", "f:1")]);
        assert_eq!(l, no_manifest);
        let err = docker_archive_layers(&no_manifest, &dir.path().join("w2")).unwrap_err();
        assert!(err.to_string().contains("manifest.json"), "{err}");
    }

    #[test]
    fn inject_adds_lohar_dirs_resolvers_and_uid_1000() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
        // resolv.conf as a symlink to the host's: replaced, the host's untouched.
        symlink("/etc/resolv.conf", root.join("etc/resolv.conf")).unwrap();
        let lohar = dir.path().join("lohar");
        fs::write(&lohar, b"\x7fELF").unwrap();
        inject(&root, &lohar).unwrap();
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(root.join("usr/local/bin/lohar")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o755);
        assert!(read(&root.join("etc/passwd")).contains("lohar:x:1000:1000:"));
        assert!(read(&root.join("etc/group")).contains("lohar:x:1000:"));
        assert_eq!(fs::metadata(root.join("home/lohar")).unwrap().uid(), 1000);
        assert!(read(&root.join("etc/resolv.conf")).contains("1.1.1.1"));
        assert_eq!(fs::metadata(root.join("tmp")).unwrap().mode() & 0o7777, 0o1777);
        for d in ["proc", "sys", "dev/pts", "run", "workspace"] {
            assert!(root.join(d).is_dir(), "{d}");
        }
        // An image that has a uid 1000 keeps it.
        let root2 = dir.path().join("root2");
        fs::create_dir_all(root2.join("etc")).unwrap();
        fs::write(root2.join("etc/passwd"), "node:x:1000:1000::/home/node:/bin/sh\n").unwrap();
        inject(&root2, &lohar).unwrap();
        assert!(!read(&root2.join("etc/passwd")).contains("lohar"));
        assert_eq!(fs::metadata(root2.join("home/node")).unwrap().uid(), 1000);
    }

    #[test]
    fn sizing_follows_v1() {
        assert_eq!(ext4_size(10, 1024), (512, 1024));
        let (mib, inodes) = ext4_size(100_000, 1000 * 1024 * 1024);
        assert_eq!(mib, 1300);
        assert_eq!(inodes, 256_000);
    }
}
