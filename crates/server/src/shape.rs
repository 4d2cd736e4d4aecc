//! Which creates may restore a shape snapshot instead of booting, and the shape's key: pure
//! rules (the IO that finds the kernel's and the image's identities is `shapes.rs`'s).
//!
//! The key is a SHA-256 (its first 32 hex digits: the engine's checkpoint names are at most
//! 32 characters) of everything that shapes the booted guest: the daemon's version, the
//! kernel file's and the image file's identities (real path, size, modification time; the
//! guest agent is inside the image, so its version is covered), vCPUs, the CPU limit, memory,
//! disk size, init script, environment and the files written at boot. What a sandbox gets
//! per sandbox is not in it: its name and hostname, agent token, address, labels, secrets
//! (added to each exec), egress policy (applied after the restore), keep-hot.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// A file's identity: a different file, or the same file changed, is another identity.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileId {
    /// The resolved real path.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
}

/// What decides a create's shape: the request (after its template was applied) and what the
/// daemon resolved for it.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The create request, its template applied.
    pub req: &'a api::CreateSandbox,
    /// CPUs and memory with the defaults filled in.
    pub cpus: f64,
    /// Guest RAM in MB.
    pub memory_mb: u32,
    /// The kernel every boot uses.
    pub kernel: &'a FileId,
    /// The file the image name resolved to.
    pub image: &'a FileId,
    /// The daemon's `shape_snapshots` setting.
    pub enabled: bool,
}

/// A shape's key (32 lower-case hex digits).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub String);

/// Why a create boots rather than restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WhyBoot {
    /// `shape_snapshots: false` in the daemon's config.
    #[error("shape snapshots are off")]
    Disabled,
    /// The request said `"boot": true`.
    #[error("the create asked for a boot")]
    Requested,
    /// Persistent volumes are the user's own files, attached at boot.
    #[error("persistent volumes are attached at boot")]
    PersistentVolumes,
    /// Scratch volumes (`new_volumes`) are made empty for each sandbox.
    #[error("scratch volumes are made at boot")]
    ScratchVolumes,
    /// v1's huge pages switch: a restore could not honour it.
    #[error("huge pages are a boot-time choice")]
    Hugepages,
}

/// A create's shape key, or why it must boot.
pub fn restorable(input: &Input<'_>) -> Result<Key, WhyBoot> {
    let req = input.req;
    if !input.enabled {
        return Err(WhyBoot::Disabled);
    }
    if req.boot {
        return Err(WhyBoot::Requested);
    }
    if !req.persistent_volumes.is_empty() {
        return Err(WhyBoot::PersistentVolumes);
    }
    if !req.new_volumes.is_empty() {
        return Err(WhyBoot::ScratchVolumes);
    }
    if req.hugepages {
        return Err(WhyBoot::Hugepages);
    }
    Ok(key(input))
}

fn key(input: &Input<'_>) -> Key {
    let req = input.req;
    // Files by path (the engine writes them in that order too), each content hashed.
    let files: BTreeMap<&str, (String, String)> = req
        .files
        .iter()
        .map(|f| {
            (f.guest_path.as_str(), (hex(&Sha256::digest(f.content.as_bytes())), f.mode.clone()))
        })
        .collect();
    let canonical = serde_json::json!({
        "format": 1,
        "daemon": api::VERSION,
        "kernel": input.kernel,
        "image": input.image,
        // The exact bits: 1.0 and 1.00 are one shape, 0.5 and 0.50001 are two.
        "cpus": input.cpus.to_bits(),
        "memory_mb": input.memory_mb,
        "disk_size_mb": req.disk_size_mb,
        "init": req.init,
        "env": req.env,
        "files": files,
    });
    let digest = Sha256::digest(canonical.to_string().as_bytes());
    Key(hex(&digest)[..32].to_owned())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, size: u64, mtime_ns: i128) -> FileId {
        FileId { path: path.into(), size, mtime_ns }
    }

    fn input<'a>(req: &'a api::CreateSandbox, kernel: &'a FileId, image: &'a FileId) -> Input<'a> {
        Input { req, cpus: 1.0, memory_mb: 512, kernel, image, enabled: true }
    }

    #[test]
    fn what_boots() {
        let (kernel, image) = (file("/k", 1, 1), file("/i", 2, 2));
        let base = api::CreateSandbox::default();
        let rows: Vec<(&str, api::CreateSandbox, bool, Result<(), WhyBoot>)> = vec![
            ("plain create restores", base.clone(), true, Ok(())),
            ("off in the config", base.clone(), false, Err(WhyBoot::Disabled)),
            (
                "boot asked for",
                api::CreateSandbox { boot: true, ..base.clone() },
                true,
                Err(WhyBoot::Requested),
            ),
            (
                "persistent volumes",
                api::CreateSandbox {
                    persistent_volumes: vec![api::CreateVolume {
                        name: "v".into(),
                        mount: "/data".into(),
                        size_mb: 0,
                        auto_create: true,
                        read_only: false,
                    }],
                    ..base.clone()
                },
                true,
                Err(WhyBoot::PersistentVolumes),
            ),
            (
                "scratch volumes",
                api::CreateSandbox {
                    new_volumes: vec![api::NewVolume {
                        name: "s".into(),
                        mount: "/s".into(),
                        size_mb: 10,
                    }],
                    ..base.clone()
                },
                true,
                Err(WhyBoot::ScratchVolumes),
            ),
            (
                "huge pages",
                api::CreateSandbox { hugepages: true, ..base.clone() },
                true,
                Err(WhyBoot::Hugepages),
            ),
            (
                "env, init, labels, secrets and a policy restore",
                api::CreateSandbox {
                    env: [("A".to_owned(), "1".to_owned())].into(),
                    init: "echo hi".into(),
                    labels: [("l".to_owned(), "x".to_owned())].into(),
                    secrets: vec!["S".into()],
                    keep_hot: true,
                    ..base.clone()
                },
                true,
                Ok(()),
            ),
        ];
        for (name, req, enabled, want) in rows {
            let got = restorable(&Input { enabled, ..input(&req, &kernel, &image) }).map(drop);
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn what_is_in_the_key() {
        let (kernel, image) = (file("/k", 1, 1), file("/i", 2, 2));
        let base = api::CreateSandbox::default();
        let key_of = |req: &api::CreateSandbox, f: &dyn Fn(&mut Input<'_>)| {
            let mut i = input(req, &kernel, &image);
            f(&mut i);
            restorable(&i).unwrap()
        };
        let same = key_of(&base, &|_| {});
        assert_eq!(same.0.len(), 32);
        assert!(same.0.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        let (k2, i2, i3) = (file("/k", 1, 2), file("/i", 3, 2), file("/j", 2, 2));
        let with = |r: api::CreateSandbox| r;
        let differ: Vec<(&str, Key)> = vec![
            (
                "kernel changed",
                restorable(&Input { kernel: &k2, ..input(&base, &kernel, &image) }).unwrap(),
            ),
            (
                "image grew",
                restorable(&Input { image: &i2, ..input(&base, &kernel, &image) }).unwrap(),
            ),
            (
                "another image file",
                restorable(&Input { image: &i3, ..input(&base, &kernel, &image) }).unwrap(),
            ),
            ("cpus", key_of(&base, &|i| i.cpus = 2.0)),
            ("cpu fraction", key_of(&base, &|i| i.cpus = 0.5)),
            ("memory", key_of(&base, &|i| i.memory_mb = 1024)),
            (
                "disk",
                key_of(&with(api::CreateSandbox { disk_size_mb: 2048, ..base.clone() }), &|_| {}),
            ),
            (
                "init",
                key_of(&with(api::CreateSandbox { init: "x".into(), ..base.clone() }), &|_| {}),
            ),
            (
                "env",
                key_of(
                    &with(api::CreateSandbox {
                        env: [("A".to_owned(), "1".to_owned())].into(),
                        ..base.clone()
                    }),
                    &|_| {},
                ),
            ),
            (
                "a file",
                key_of(
                    &with(api::CreateSandbox {
                        files: vec![api::CreateFile {
                            guest_path: "/f".into(),
                            content: "eA==".into(),
                            mode: String::new(),
                        }],
                        ..base.clone()
                    }),
                    &|_| {},
                ),
            ),
        ];
        for (name, key) in &differ {
            assert_ne!(key, &same, "{name}");
        }
        let alike: Vec<(&str, Key)> = vec![
            (
                "a name",
                key_of(&with(api::CreateSandbox { name: "x".into(), ..base.clone() }), &|_| {}),
            ),
            (
                "labels",
                key_of(
                    &with(api::CreateSandbox {
                        labels: [("a".to_owned(), "b".to_owned())].into(),
                        ..base.clone()
                    }),
                    &|_| {},
                ),
            ),
            (
                "secrets",
                key_of(
                    &with(api::CreateSandbox { secrets: vec!["S".into()], ..base.clone() }),
                    &|_| {},
                ),
            ),
            (
                "keep hot",
                key_of(&with(api::CreateSandbox { keep_hot: true, ..base.clone() }), &|_| {}),
            ),
            (
                "a policy",
                key_of(
                    &with(api::CreateSandbox {
                        net_policy: Some(api::NetPolicy {
                            default: api::Posture::Deny,
                            ..Default::default()
                        }),
                        ..base.clone()
                    }),
                    &|_| {},
                ),
            ),
        ];
        for (name, key) in &alike {
            assert_eq!(key, &same, "{name}");
        }
    }
}
