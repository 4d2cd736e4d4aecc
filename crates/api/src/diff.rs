//! `GET /sandboxes/:id/diff`: what changed in a sandbox's root filesystem (issue 24).

use serde::{Deserialize, Serialize};

/// The query of `GET /sandboxes/:id/diff`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DiffQuery {
    /// `creation` (the default: what the sandbox was made from) or the name of one of the
    /// caller's snapshots.
    #[serde(default)]
    pub against: Option<String>,
    /// Add unified diffs of the changed text files.
    #[serde(default)]
    pub patch: Option<bool>,
}

/// One path that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DiffEntry {
    /// Absolute path in the guest.
    pub path: String,
    /// `file`, `dir`, `symlink` or `other`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Size in bytes (a symlink's: its target's length).
    pub size: u64,
    /// Permission bits in octal, e.g. `"0644"`.
    pub mode: String,
    /// A changed entry's size before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_size: Option<u64>,
    /// A changed entry's mode before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_mode: Option<String>,
}

/// The answer of `GET /sandboxes/:id/diff`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Diff {
    /// What it was compared with: `creation` or the snapshot's name.
    pub against: String,
    /// Paths that are new, sorted.
    pub added: Vec<DiffEntry>,
    /// Paths whose content, link target, mode or owner changed, sorted.
    pub changed: Vec<DiffEntry>,
    /// Paths that are gone, sorted.
    pub deleted: Vec<DiffEntry>,
    /// More paths differ than one answer lists (10,000): the lists stop there.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// With `patch=true`: unified diffs of the text files (each file cut at 256 KiB, the whole
    /// at 4 MiB, marked "(truncated)"; binary files named, not shown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
}

/// A mode as the API writes it: four octal digits.
pub fn mode_text(mode: u16) -> String {
    format!("{:04o}", mode & 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_shape() {
        let d = Diff {
            against: "creation".into(),
            added: vec![DiffEntry {
                path: "/a".into(),
                kind: "file".into(),
                size: 3,
                mode: mode_text(0o644),
                old_size: None,
                old_mode: None,
            }],
            ..Diff::default()
        };
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "against": "creation",
                "added": [{"path": "/a", "type": "file", "size": 3, "mode": "0644"}],
                "changed": [], "deleted": [],
            })
        );
        assert_eq!(mode_text(0o4755), "4755");
        assert_eq!(serde_json::from_value::<Diff>(v).unwrap(), d);
    }
}
