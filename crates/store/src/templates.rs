//! Templates: global (not per owner) presets for creating sandboxes.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use crate::db::Store;
use crate::error::{Resource, Result, StoreError};
use crate::types::{Timestamp, f64_col, json_col, new_id, to_json, u32_col};

/// A volume a template mounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateMount {
    /// Volume name.
    pub volume_name: String,
    /// Guest path.
    pub target: String,
    /// Read-only.
    #[serde(default)]
    pub readonly: bool,
    /// Create the volume if missing.
    #[serde(default)]
    pub auto_create: bool,
}

/// A template row.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    /// 16 hex chars.
    pub id: String,
    /// Name (not unique, as v1).
    pub name: String,
    /// Image name.
    pub image: String,
    /// vCPUs.
    pub cpus: f64,
    /// Memory, MiB.
    pub memory_mb: u32,
    /// Disk, MiB.
    pub disk_size_mb: u32,
    /// User data.
    pub userdata: String,
    /// Secret names injected as environment variables.
    pub secrets: Vec<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Volumes to mount.
    pub mounts: Vec<TemplateMount>,
    /// Creation time.
    pub created_at: Timestamp,
}

/// A new template (the ID and time are the store's).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NewTemplate {
    /// Name.
    pub name: String,
    /// Image name.
    pub image: String,
    /// vCPUs.
    pub cpus: f64,
    /// Memory, MiB.
    pub memory_mb: u32,
    /// Disk, MiB.
    pub disk_size_mb: u32,
    /// User data.
    pub userdata: String,
    /// Secret names.
    pub secrets: Vec<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Volumes.
    pub mounts: Vec<TemplateMount>,
}

const COLS: &str =
    "id, name, image, cpus, memory_mb, disk_size_mb, userdata, secrets, labels, mounts, created_at";

type RawTemplate = (Template, String, String, String);

fn raw(r: &Row<'_>) -> rusqlite::Result<RawTemplate> {
    Ok((
        Template {
            id: r.get(0)?,
            name: r.get(1)?,
            image: r.get(2)?,
            cpus: f64_col(r, 3)?,
            memory_mb: u32_col(r, 4)?,
            disk_size_mb: u32_col(r, 5)?,
            userdata: r.get(6)?,
            secrets: Vec::new(),
            labels: BTreeMap::new(),
            mounts: Vec::new(),
            created_at: r.get(10)?,
        },
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
    ))
}

fn decode((mut t, secrets, labels, mounts): RawTemplate) -> Result<Template> {
    t.secrets = json_col(Resource::Template, &t.id, &secrets)?;
    t.labels = json_col(Resource::Template, &t.id, &labels)?;
    t.mounts = json_col(Resource::Template, &t.id, &mounts)?;
    Ok(t)
}

impl Store {
    /// Inserts a template.
    pub fn create_template(&mut self, new: &NewTemplate) -> Result<Template> {
        if new.name.is_empty() || new.image.is_empty() {
            return Err(StoreError::Invalid("template name and image are required".into()));
        }
        if !(new.cpus > 0.0 && new.cpus.is_finite()) {
            return Err(StoreError::Invalid(format!("cpus must be positive, got {}", new.cpus)));
        }
        let id = new_id("")?;
        self.conn.execute(
            &format!("INSERT INTO templates ({COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
            params![
                id,
                new.name,
                new.image,
                new.cpus,
                new.memory_mb,
                new.disk_size_mb,
                new.userdata,
                to_json(&new.secrets)?,
                to_json(&new.labels)?,
                to_json(&new.mounts)?,
                Timestamp::now()
            ],
        )?;
        self.template(&id)
    }

    /// A template by ID.
    pub fn template(&self, id: &str) -> Result<Template> {
        let raw = self
            .conn
            .query_row(&format!("SELECT {COLS} FROM templates WHERE id = ?1"), [id], raw)
            .optional()?
            .ok_or_else(|| StoreError::not_found(Resource::Template, id))?;
        decode(raw)
    }

    /// Every template, newest first.
    pub fn list_templates(&self) -> Result<Vec<Template>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLS} FROM templates ORDER BY created_at DESC, rowid DESC"
        ))?;
        let raws = stmt.query_map([], raw)?.collect::<rusqlite::Result<Vec<_>>>()?;
        raws.into_iter().map(decode).collect()
    }

    /// Deletes a template.
    pub fn delete_template(&mut self, id: &str) -> Result<()> {
        if self.conn.execute("DELETE FROM templates WHERE id = ?1", [id])? == 0 {
            return Err(StoreError::not_found(Resource::Template, id));
        }
        Ok(())
    }
}
