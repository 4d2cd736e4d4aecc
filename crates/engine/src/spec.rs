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

/// What to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateSpec {
    /// Unique name: lower-case letters, digits and `-`, at most 32 characters.
    pub name: String,
    /// Root filesystem image.
    pub image: PathBuf,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub vcpus: u8,
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
    /// A template-free create with the defaults (1 vCPU, 1024 MiB, no env, init or volumes).
    pub fn new(name: impl Into<String>, image: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            image: image.into(),
            memory_mib: DEFAULT_MEMORY_MIB,
            vcpus: DEFAULT_VCPUS,
            env: BTreeMap::new(),
            init: String::new(),
            files: BTreeMap::new(),
            volumes: Vec::new(),
            scratch_volumes: Vec::new(),
        }
    }

    /// A create from a template: everything the template says; the caller may then override
    /// fields (a request's own env entries win over the template's, as in v1).
    pub fn from_template(name: impl Into<String>, template: &Template) -> Self {
        Self {
            name: name.into(),
            image: template.image.clone(),
            memory_mib: template.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB),
            vcpus: template.vcpus.unwrap_or(DEFAULT_VCPUS),
            env: template.env.clone(),
            init: template.init.clone(),
            files: BTreeMap::new(),
            volumes: template.volumes.clone(),
            scratch_volumes: Vec::new(),
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
        };
        let spec = CreateSpec::from_template("web", &template);
        assert_eq!((spec.vcpus, spec.memory_mib), (2, DEFAULT_MEMORY_MIB));
        assert_eq!(spec.env["NODE_ENV"], "test");
        assert_eq!(spec.init, "npm start");
        assert_eq!(spec.image, PathBuf::from("/images/node.ext4"));
        let bare = CreateSpec::new("x", "/i.ext4");
        assert_eq!((bare.vcpus, bare.memory_mib), (1, 1024));
    }

    #[test]
    fn template_json_accepts_missing_optional_fields() {
        let t: Template = serde_json::from_str(r#"{"image":"/i.ext4"}"#).unwrap();
        assert_eq!(t, Template { image: "/i.ext4".into(), ..Default::default() });
    }
}
