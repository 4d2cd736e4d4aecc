//! Persistent volumes: ext4 images that live outside any sandbox, attached as extra disks.
//!
//! A volume is a sparse file formatted with `mkfs.ext4` (no mount on the host). Destroying a
//! sandbox never touches its volumes; attaching one to a later sandbox gives it the same data.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use crate::error::{EngineError, Resource, io_at};
use crate::run::run;

pub use bhatti_core::VolumeMount;

/// The engine's checks of a volume on top of the pure mount-point rule.
pub trait VolumeChecks {
    /// Checks the mount point and that the volume file exists.
    fn validate(&self) -> Result<(), EngineError>;
    /// Checks the mount point: absolute, no `..`, not a system directory.
    fn validate_mount(&self) -> Result<(), EngineError>;
}

impl VolumeChecks for VolumeMount {
    fn validate(&self) -> Result<(), EngineError> {
        self.validate_mount()?;
        if !self.path.is_file() {
            return Err(EngineError::not_found(Resource::Volume, self.volume_name()));
        }
        Ok(())
    }

    fn validate_mount(&self) -> Result<(), EngineError> {
        self.check_mount()
            .map_err(|why| EngineError::invalid(format!("volume mount {:?}: {why}", self.mount)))
    }
}

/// Which sandboxes have which volume files attached. A file attached read-write belongs to one
/// sandbox alone; read-only attachments may share a file that nobody writes.
#[derive(Debug, Default)]
pub struct Claims {
    by_path: std::collections::BTreeMap<PathBuf, Vec<(String, bool)>>,
}

impl Claims {
    /// Claims `volumes` for `sandbox` (its unique ID, never a reusable name), all or nothing. Paths are compared canonicalised, so
    /// two spellings of one file are one file.
    pub fn claim(&mut self, sandbox: &str, volumes: &[VolumeMount]) -> Result<(), EngineError> {
        let mut wanted = Vec::new();
        for v in volumes {
            let path = v.path.canonicalize().unwrap_or_else(|_| v.path.clone());
            let others = self.by_path.get(&path).map(Vec::as_slice).unwrap_or(&[]);
            let conflict =
                others.iter().any(|(holder, ro)| holder != sandbox && (!ro || !v.read_only));
            if conflict {
                let users = others.iter().filter(|(holder, _)| holder != sandbox).count();
                return Err(EngineError::InUse { name: v.volume_name(), users });
            }
            wanted.push((path, v.read_only));
        }
        for (path, ro) in wanted {
            self.by_path.entry(path).or_default().push((sandbox.to_owned(), ro));
        }
        Ok(())
    }

    /// Gives back every claim of `sandbox`.
    pub fn release(&mut self, sandbox: &str) {
        self.by_path.retain(|_, holders| {
            holders.retain(|(name, _)| name != sandbox);
            !holders.is_empty()
        });
    }

    /// How many sandboxes have `path` attached.
    pub fn users(&self, path: &Path) -> usize {
        let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
        self.by_path.get(&path).map_or(0, Vec::len)
    }
}

/// Creates a volume of `size_mib` at `path`: a sparse file made into ext4. Refuses to overwrite
/// an existing file. The file is built under a temporary name and renamed, so a crash never
/// leaves a half-made volume under the real name.
pub async fn create(path: &Path, size_mib: u32) -> Result<(), EngineError> {
    if size_mib == 0 {
        return Err(EngineError::invalid("volume size must be at least 1 MiB"));
    }
    if path.exists() {
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        return Err(EngineError::exists(Resource::Volume, name));
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_at("creating", parent))?;
    }
    let partial = path.with_extension("partial");
    std::fs::File::create(&partial)
        .and_then(|file| file.set_len(u64::from(size_mib) * 1024 * 1024))
        .map_err(io_at("creating", &partial))?;
    let made = run(
        Command::new("mkfs.ext4").args(["-F", "-q", "-E", "root_owner=1000:1000"]).arg(&partial),
        Duration::from_secs(60),
    )
    .await;
    if let Err(e) = made {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, path).map_err(io_at("renaming", &partial))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn mount(m: &str, path: &Path) -> VolumeMount {
        VolumeMount { path: path.to_owned(), mount: m.into(), read_only: false }
    }

    #[test]
    fn mount_points_are_checked() {
        let file = tempfile::NamedTempFile::new().unwrap();
        assert!(mount("/data", file.path()).validate().is_ok());
        assert!(mount("/home/lohar/work", file.path()).validate().is_ok());
        for bad in ["data", "/data/../etc", "/", "/etc", "/usr/", "//proc", "/./tmp"] {
            assert!(mount(bad, file.path()).validate().is_err(), "{bad} accepted");
        }
        let missing = mount("/data", Path::new("/nonexistent/volume.ext4")).validate().unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::NotFound);
        assert_eq!(missing.to_string(), r#"volume "volume" not found"#);
    }

    #[test]
    fn claims_keep_one_writer_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("v.ext4");
        std::fs::write(&file, b"x").unwrap();
        let other_spelling = dir.path().join(".").join("v.ext4");
        let mut claims = Claims::default();
        claims.claim("a", &[mount_ro("/ro", &file, true)]).unwrap();
        claims.claim("b", &[mount_ro("/ro", &other_spelling, true)]).unwrap();
        assert_eq!(claims.users(&file), 2);
        // A writer while readers exist, and a second writer, are refused; nothing is half-claimed.
        let both = [mount_ro("/w", &file, false)];
        assert_eq!(claims.claim("c", &both).unwrap_err().kind(), ErrorKind::InUse);
        claims.release("a");
        claims.release("b");
        assert_eq!(claims.users(&file), 0);
        claims.claim("c", &both).unwrap();
        assert!(claims.claim("d", &[mount_ro("/r", &file, true)]).is_err());
        claims.release("c");
        claims.claim("d", &[mount_ro("/r", &file, true)]).unwrap();
    }

    fn mount_ro(m: &str, path: &Path, read_only: bool) -> VolumeMount {
        VolumeMount { path: path.to_owned(), mount: m.into(), read_only }
    }

    #[tokio::test]
    async fn create_makes_an_ext4_image_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v/data.ext4");
        create(&path, 16).await.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 16 * 1024 * 1024);
        // The ext4 superblock magic 0xEF53 at offset 1024 + 56.
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1024 + 56..1024 + 58], &[0x53, 0xEF]);
        assert_eq!(create(&path, 16).await.unwrap_err().kind(), ErrorKind::AlreadyExists);
        assert_eq!(
            create(&dir.path().join("z.ext4"), 0).await.unwrap_err().kind(),
            ErrorKind::Invalid
        );
        assert!(!dir.path().join("v/data.partial").exists());
    }
}
