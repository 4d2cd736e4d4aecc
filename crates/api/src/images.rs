//! Images and tasks (host.md 1.5, 1.20): v1's `ImageRecord` and `TaskRecord`, and the bodies
//! of `/images/pull`, `/images/import` and `/sandboxes/:id/save-image`.

use serde::{Deserialize, Serialize};

/// v1's `ImageRecord` (file path and OCI config hidden).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Image {
    /// `img_` + 16 hex, `builtin_<name>` for a built-in image.
    pub id: String,
    /// The owner; `""` for a global image (built-in, admin).
    #[serde(default)]
    pub user_id: String,
    /// Name.
    pub name: String,
    /// `built-in`, `oci:<ref>`, `import:<name>`, `saved:<sandbox id>`.
    pub source: String,
    /// Size of its file, MiB.
    pub size_mb: u64,
    /// The manifest digest of a pulled image.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub oci_digest: String,
    /// RFC 3339.
    pub created_at: String,
}

/// `POST /images/import` answer: 201 `{"name","size_mb"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Imported {
    /// The image's name.
    pub name: String,
    /// Its size, MiB.
    pub size_mb: u64,
}

/// `POST /images/pull`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PullRequest {
    /// The image reference (`alpine:3.20`, `127.0.0.1:5000/x:tag`, `http://127.0.0.1:5000/x:tag`
    /// for a plain-HTTP registry; ours).
    #[serde(default, rename = "ref")]
    pub reference: String,
    /// The image's name here.
    #[serde(default)]
    pub name: String,
    /// `user:token` for the registry (never logged, never echoed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
}

/// `POST /images/pull` answers: 202 `{"task_id","status":"running"}`, or 200
/// `{"status":"exists","image","digest"}` when the user already pulled that reference.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PullStarted {
    /// The background task (202).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub task_id: String,
    /// `running` or `exists`.
    pub status: String,
    /// The existing image's name (200).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    /// The existing image's digest (200).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
}

/// `POST /sandboxes/:id/save-image`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SaveImageRequest {
    /// The new image's name.
    #[serde(default)]
    pub name: String,
}

/// v1's `TaskRecord`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Task {
    /// `task_` + 16 hex.
    pub id: String,
    /// The owner.
    pub user_id: String,
    /// `image_pull`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `running`, `completed`, `failed`.
    pub status: String,
    /// What it is doing (`resolving image`, `extracting layer 2/5`, ...).
    #[serde(default)]
    pub progress: String,
    /// A JSON string (`{"image","size_mb","source"}` for a pull) when completed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub result: String,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, once done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
}

/// A pull's result (the task's `result`, as JSON text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PullResult {
    /// The image's name.
    pub image: String,
    /// Its size, MiB.
    pub size_mb: u64,
    /// `oci:<ref>`.
    pub source: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_v1s() {
        let pull: PullRequest =
            serde_json::from_str(r#"{"ref":"alpine:3","name":"a","auth":"u:t"}"#).unwrap();
        assert_eq!((pull.reference.as_str(), pull.name.as_str()), ("alpine:3", "a"));
        let started = PullStarted {
            task_id: "task_1".into(),
            status: "running".into(),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&started).unwrap(),
            serde_json::json!({"task_id":"task_1","status":"running"})
        );
        let task = Task {
            id: "task_1".into(),
            user_id: "usr_1".into(),
            kind: "image_pull".into(),
            status: "running".into(),
            progress: "resolving image".into(),
            result: String::new(),
            error: String::new(),
            created_at: "2026-01-01T00:00:00Z".into(),
            completed_at: None,
        };
        let v = serde_json::to_value(&task).unwrap();
        assert_eq!(v["type"], "image_pull");
        assert!(v.get("result").is_none() && v.get("completed_at").is_none());
    }
}
