//! What a sandbox is made of: the create request, templates, and the defaults of a
//! template-free create.

use std::collections::BTreeMap;
use std::path::PathBuf;

use proto::guest::GuestFile;
use serde::{Deserialize, Serialize};

use crate::volume::VolumeMount;

/// vCPUs when neither the request nor a template says.
pub const DEFAULT_VCPUS: u8 = 1;
/// Guest RAM in MiB when neither the request nor a template says (v1's code default).
pub const DEFAULT_MEMORY_MIB: u32 = 1024;

/// The owner of sandboxes created without one (a single-user engine, the tests).
pub const DEFAULT_OWNER: &str = "local";

/// What to create.
#[derive(Clone, PartialEq, Eq)]
pub struct CreateSpec {
    /// The caller's opaque, unique ID for the sandbox (the store's ID): lower-case letters,
    /// digits and `-`, at most 32 characters. Every per-sandbox resource is keyed by it.
    pub id: String,
    /// Who the sandbox belongs to: guests of one owner reach each other, guests of different
    /// owners never do. Letters, digits, `_` and `-`, at most 64 characters.
    pub owner: String,
    /// The guest's hostname (RFC 1123 label); the ID when empty.
    pub hostname: String,
    /// Grow the disk to this size (MiB); the guest grows its root filesystem to fill it at
    /// boot. `None` keeps the image's size; smaller than the image is refused.
    pub disk_size_mib: Option<u32>,
    /// Root filesystem image.
    pub image: PathBuf,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub vcpus: u8,
    /// CPU time the sandbox may use, in thousandths of a core (v1's `cpus: 0.5` is 500), at most
    /// `vcpus` cores; `None` is `vcpus` whole cores.
    pub cpu_millis: Option<u32>,
    /// Environment for every exec.
    pub env: BTreeMap<String, String>,
    /// Init script, run as the `init` session.
    pub init: String,
    /// Files written into the guest before init runs (guest path -> base64 content and mode,
    /// as v1's API carries them).
    pub files: BTreeMap<String, GuestFile>,
    /// Persistent volumes to attach.
    pub volumes: Vec<VolumeMount>,
    /// Scratch volumes: made empty for this sandbox, destroyed with it (v1's `new_volumes`).
    pub scratch_volumes: Vec<ScratchVolume>,
    /// What the guest may reach outside (checked; the default is `public`).
    pub net_policy: bhatti_core::Policy,
}

/// An empty ext4 volume that lives and dies with its sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScratchVolume {
    /// Absolute mount point in the guest.
    pub mount: String,
    /// Size in MiB.
    pub size_mib: u32,
}

impl CreateSpec {
    /// A template-free create with the defaults (1 vCPU, 1024 MiB, the default owner, the ID as
    /// hostname, no env, init or volumes).
    pub fn new(id: impl Into<String>, image: impl Into<PathBuf>) -> Self {
        Self {
            id: id.into(),
            owner: DEFAULT_OWNER.into(),
            hostname: String::new(),
            disk_size_mib: None,
            image: image.into(),
            memory_mib: DEFAULT_MEMORY_MIB,
            vcpus: DEFAULT_VCPUS,
            cpu_millis: None,
            env: BTreeMap::new(),
            init: String::new(),
            files: BTreeMap::new(),
            volumes: Vec::new(),
            scratch_volumes: Vec::new(),
            net_policy: bhatti_core::Policy::default(),
        }
    }

    /// A create from a template: everything the template says; the caller may then override
    /// fields (a request's own env entries win over the template's, as in v1).
    pub fn from_template(id: impl Into<String>, template: &Template) -> Self {
        Self {
            id: id.into(),
            owner: DEFAULT_OWNER.into(),
            hostname: String::new(),
            disk_size_mib: template.disk_size_mib,
            image: template.image.clone(),
            memory_mib: template.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB),
            vcpus: template.vcpus.unwrap_or(DEFAULT_VCPUS),
            cpu_millis: None,
            env: template.env.clone(),
            init: template.init.clone(),
            files: BTreeMap::new(),
            volumes: template.volumes.clone(),
            scratch_volumes: Vec::new(),
            net_policy: bhatti_core::Policy::default(),
        }
    }
}

/// A reusable sandbox shape (v1's templates: global, stored by the server).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    /// Root filesystem image.
    pub image: PathBuf,
    /// vCPUs; the default when absent.
    #[serde(default)]
    pub vcpus: Option<u8>,
    /// Guest RAM in MiB; the default when absent.
    #[serde(default)]
    pub memory_mib: Option<u32>,
    /// Environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Init script.
    #[serde(default)]
    pub init: String,
    /// Volumes every sandbox of this template gets.
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
    /// Disk size in MiB; the image's size when absent.
    #[serde(default)]
    pub disk_size_mib: Option<u32>,
}

impl CreateSpec {
    /// The same spec for another owner.
    pub fn owned_by(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    /// The hostname the guest gets.
    pub fn guest_hostname(&self) -> &str {
        if self.hostname.is_empty() { &self.id } else { &self.hostname }
    }
}

/// Environment values and file contents are the user's secrets: Debug shows their keys only.
impl std::fmt::Debug for CreateSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateSpec")
            .field("id", &self.id)
            .field("owner", &self.owner)
            .field("hostname", &self.hostname)
            .field("image", &self.image)
            .field("memory_mib", &self.memory_mib)
            .field("vcpus", &self.vcpus)
            .field("disk_size_mib", &self.disk_size_mib)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("init", &format_args!("<{} bytes>", self.init.len()))
            .field("files", &self.files.keys().collect::<Vec<_>>())
            .field("volumes", &self.volumes)
            .field("scratch_volumes", &self.scratch_volumes)
            .field("net_policy", &self.net_policy)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_fields_carry_over_and_defaults_fill_the_rest() {
        let template = Template {
            image: "/images/node.ext4".into(),
            vcpus: Some(2),
            memory_mib: None,
            env: [("NODE_ENV".to_owned(), "test".to_owned())].into(),
            init: "npm start".into(),
            volumes: vec![],
            disk_size_mib: Some(2048),
        };
        let spec = CreateSpec::from_template("web", &template);
        assert_eq!((spec.vcpus, spec.memory_mib), (2, DEFAULT_MEMORY_MIB));
        assert_eq!(spec.env["NODE_ENV"], "test");
        assert_eq!(spec.init, "npm start");
        assert_eq!(spec.image, PathBuf::from("/images/node.ext4"));
        assert_eq!(spec.disk_size_mib, Some(2048));
        assert_eq!(spec.guest_hostname(), "web");
        let bare = CreateSpec::new("x", "/i.ext4");
        assert_eq!((bare.vcpus, bare.memory_mib), (1, 1024));
    }

    #[test]
    fn debug_shows_env_keys_but_never_values() {
        let mut spec = CreateSpec::new("x", "/i.ext4");
        spec.env.insert("API_KEY".into(), "sekrit-value".into());
        let text = format!("{spec:?}");
        assert!(text.contains("API_KEY") && !text.contains("sekrit-value"), "{text}");
    }

    #[test]
    fn template_json_accepts_missing_optional_fields() {
        let t: Template = serde_json::from_str(r#"{"image":"/i.ext4"}"#).unwrap();
        assert_eq!(t, Template { image: "/i.ext4".into(), ..Default::default() });
    }
}
