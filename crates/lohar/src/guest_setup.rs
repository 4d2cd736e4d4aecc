//! Applying the config drive inside the guest: hostname, resolv.conf, files, volumes.
//!
//! Paths are taken relative to a root directory so the logic is testable outside a VM.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::Engine;
use proto::guest::{GuestFile, GuestVolume};
use proto::messages::parse_mode;

use crate::spawn::{USER_GID, USER_UID};

/// Hostname used when the config has none.
pub const DEFAULT_HOSTNAME: &str = "bhatti";

/// Writes /etc/hostname, /etc/hosts and /etc/mailname for `name` (rewritten every boot so a
/// build machine's hostname baked into an image never leaks).
pub fn write_hostname_files(root: &Path, name: &str) -> std::io::Result<()> {
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc)?;
    write_if_changed(&etc.join("hostname"), &format!("{name}\n"))?;
    write_if_changed(
        &etc.join("hosts"),
        &format!("127.0.0.1 localhost {name}\n::1 localhost {name}\n"),
    )?;
    write_if_changed(&etc.join("mailname"), &format!("{name}\n"))
}

/// Writes `text` unless the file already holds exactly that. A boot that changes nothing leaves
/// the root disk clean, so the first `sync` (before the first EXIT) has nothing to flush.
fn write_if_changed(path: &Path, text: &str) -> std::io::Result<()> {
    let is_regular = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file());
    if is_regular && std::fs::read(path).is_ok_and(|old| old == text.as_bytes()) {
        return Ok(());
    }
    let _ = std::fs::remove_file(path);
    std::fs::write(path, text)
}

/// resolv.conf text: the in-cluster responder alone (fast timeout), or public resolvers, or
/// empty when the host sent neither.
pub fn build_resolv_conf(internal: &str, public: &[String]) -> String {
    let mut out = String::new();
    if !internal.is_empty() {
        out.push_str("# bhatti in-cluster DNS (per-user): resolves sibling sandboxes by name\n");
        out.push_str("# and forwards everything else. Do not add public resolvers here: glibc\n");
        out.push_str("# treats NXDOMAIN as final and rotates servers.\n");
        out.push_str(&format!("nameserver {internal}\noptions timeout:2 attempts:1\n"));
    }
    for server in public {
        out.push_str(&format!("nameserver {server}\n"));
    }
    out
}

/// The fallback when there is no config drive.
pub const FALLBACK_RESOLV_CONF: &str = "nameserver 1.1.1.1\nnameserver 8.8.8.8\n";

/// Replaces /etc/resolv.conf (removed first: images often ship it as a dangling symlink).
pub fn write_resolv_conf(root: &Path, text: &str) -> std::io::Result<()> {
    write_if_changed(&root.join("etc/resolv.conf"), text)
}

/// Materialises one config file: parent directories, content, mode, ownership by the user.
pub fn write_file(root: &Path, path: &str, file: &GuestFile) -> Result<(), String> {
    let content = base64::engine::general_purpose::STANDARD
        .decode(&file.content)
        .map_err(|e| format!("{path}: bad base64: {e}"))?;
    let target = root.join(path.trim_start_matches('/'));
    let parent = target.parent().ok_or_else(|| format!("{path}: no parent directory"))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(parent)
        .map_err(|e| format!("{path}: {e}"))?;
    let mode = parse_mode(&file.mode).unwrap_or(0o644);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&target)
        .map_err(|e| format!("{path}: {e}"))?;
    out.write_all(&content).map_err(|e| format!("{path}: {e}"))?;
    out.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{path}: {e}"))?;
    if nix::unistd::geteuid().is_root() {
        let _ = std::os::unix::fs::chown(&target, Some(USER_UID), Some(USER_GID));
        let _ = std::os::unix::fs::chown(parent, Some(USER_UID), Some(USER_GID));
    }
    Ok(())
}

/// Mounts a volume; writable mounts are handed to the user.
pub fn mount_volume(volume: &GuestVolume) -> Result<(), String> {
    use nix::mount::{MsFlags, mount};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&volume.mount)
        .map_err(|e| format!("mkdir {}: {e}", volume.mount))?;
    let fs = if volume.fs.is_empty() { "ext4" } else { volume.fs.as_str() };
    let flags = if volume.read_only { MsFlags::MS_RDONLY } else { MsFlags::empty() };
    mount(Some(volume.device.as_str()), volume.mount.as_str(), Some(fs), flags, None::<&str>)
        .map_err(|e| format!("mount {} on {}: {e}", volume.device, volume.mount))?;
    if !volume.read_only {
        let _ = std::os::unix::fs::chown(&volume.mount, Some(USER_UID), Some(USER_GID));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn hostname_files_are_exact_and_overwrite_leaks() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/hosts"), "127.0.0.1 runnervmeorf1\n").unwrap();
        write_hostname_files(root.path(), "dev").unwrap();
        let read = |f: &str| std::fs::read_to_string(root.path().join("etc").join(f)).unwrap();
        assert_eq!(read("hostname"), "dev\n");
        assert_eq!(read("hosts"), "127.0.0.1 localhost dev\n::1 localhost dev\n");
        assert_eq!(read("mailname"), "dev\n");
    }

    #[test]
    fn resolv_conf_variants() {
        let internal = build_resolv_conf("10.0.3.1", &[]);
        assert!(internal.starts_with("# bhatti "));
        assert!(internal.contains("nameserver 10.0.3.1\noptions timeout:2 attempts:1\n"));
        assert_eq!(internal.matches("nameserver").count(), 1);
        let public = build_resolv_conf("", &["1.1.1.1".into(), "8.8.8.8".into()]);
        assert_eq!(public, "nameserver 1.1.1.1\nnameserver 8.8.8.8\n");
        assert_eq!(build_resolv_conf("", &[]), "");
        let both = build_resolv_conf("10.0.0.1", &["1.1.1.1".into()]);
        assert!(both.find("10.0.0.1").unwrap() < both.find("1.1.1.1").unwrap());
    }

    #[test]
    fn unchanged_files_are_not_rewritten() {
        let root = tempfile::tempdir().unwrap();
        write_hostname_files(root.path(), "same").unwrap();
        let path = root.path().join("etc/hosts");
        let before = std::fs::metadata(&path).unwrap().ino();
        write_hostname_files(root.path(), "same").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), before, "rewritten although unchanged");
        write_hostname_files(root.path(), "other").unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().contains("other"));
    }

    #[test]
    fn resolv_conf_replaces_a_dangling_symlink() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(
            "/run/systemd/resolve/stub-resolv.conf",
            root.path().join("etc/resolv.conf"),
        )
        .unwrap();
        write_resolv_conf(root.path(), FALLBACK_RESOLV_CONF).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.path().join("etc/resolv.conf")).unwrap(),
            FALLBACK_RESOLV_CONF
        );
    }

    #[test]
    fn config_files_are_decoded_with_their_mode() {
        let root = tempfile::tempdir().unwrap();
        let file = GuestFile { content: "aGVsbG8=".into(), mode: "0600".into() };
        write_file(root.path(), "/home/lohar/.ssh/key", &file).unwrap();
        let path = root.path().join("home/lohar/.ssh/key");
        assert_eq!(std::fs::read(&path).unwrap(), b"hello");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let bad = GuestFile { content: "!!!".into(), mode: String::new() };
        assert!(write_file(root.path(), "/x", &bad).unwrap_err().contains("bad base64"));
        let dflt = GuestFile { content: String::new(), mode: "bogus".into() };
        write_file(root.path(), "/empty", &dflt).unwrap();
        assert_eq!(
            std::fs::metadata(root.path().join("empty")).unwrap().permissions().mode() & 0o777,
            0o644
        );
    }
}
