//! Images: per owner, global (no owner: built-in tiers, admin imports), and shared with
//! named users. Resolution order for a user: own, then shared with them, then global.

use std::path::PathBuf;

use rusqlite::{OptionalExtension, Row, params};

use crate::db::Store;
use crate::error::{Resource, Result, StoreError};
use crate::types::{Timestamp, new_id, u32_col};

/// An image row.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// `img_` + 16 hex (or a caller-chosen ID for built-in tiers).
    pub id: String,
    /// Owner; `None` for a global image.
    pub owner: Option<String>,
    /// Name.
    pub name: String,
    /// `built-in`, `oci:<ref>`, `import:<name>`, `saved:<sandbox>`.
    pub source: String,
    /// The ext4 file.
    pub file_path: PathBuf,
    /// Size, MiB.
    pub size_mb: u32,
    /// OCI digest, empty if none.
    pub oci_digest: String,
    /// OCI config (JSON text).
    pub oci_config: String,
    /// Creation time.
    pub created_at: Timestamp,
}

/// A new image.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NewImage {
    /// A fixed ID (built-in tiers), or `None` for a fresh one.
    pub id: Option<String>,
    /// Owner; `None` for global.
    pub owner: Option<String>,
    /// Name.
    pub name: String,
    /// Source.
    pub source: String,
    /// File.
    pub file_path: PathBuf,
    /// MiB.
    pub size_mb: u32,
    /// Digest.
    pub oci_digest: String,
    /// OCI config JSON (`{}` if empty).
    pub oci_config: String,
    /// Creation time (built-in tiers use the file's mtime), else now.
    pub created_at: Option<Timestamp>,
}

const COLS: &str =
    "id, owner, name, source, file_path, size_mb, oci_digest, oci_config, created_at";
const COLS_I: &str = "i.id, i.owner, i.name, i.source, i.file_path, i.size_mb, i.oci_digest, \
    i.oci_config, i.created_at";

fn row(r: &Row<'_>) -> rusqlite::Result<Image> {
    Ok(Image {
        id: r.get(0)?,
        owner: r.get(1)?,
        name: r.get(2)?,
        source: r.get(3)?,
        file_path: PathBuf::from(r.get::<_, String>(4)?),
        size_mb: u32_col(r, 5)?,
        oci_digest: r.get(6)?,
        oci_config: r.get(7)?,
        created_at: r.get(8)?,
    })
}

impl Store {
    /// Inserts an image. A name taken by the same owner (or by another global image) is a
    /// conflict; an owner's own images are limited by `max_images`.
    pub fn create_image(&mut self, new: &NewImage) -> Result<Image> {
        if new.name.is_empty() {
            return Err(StoreError::Invalid("image name is empty".into()));
        }
        let id = match &new.id {
            Some(id) => id.clone(),
            None => new_id("img_")?,
        };
        let path = new
            .file_path
            .to_str()
            .ok_or_else(|| StoreError::Invalid("image path is not UTF-8".into()))?;
        let config = if new.oci_config.is_empty() { "{}" } else { new.oci_config.as_str() };
        let tx = self.write_tx()?;
        if let Some(owner) = &new.owner {
            let max: i64 = tx
                .query_row("SELECT max_images FROM users WHERE id = ?1", [owner], |r| r.get(0))
                .optional()?
                .ok_or_else(|| StoreError::not_found(Resource::User, owner))?;
            let used: i64 =
                tx.query_row("SELECT count(*) FROM images WHERE owner = ?1", [owner], |r| {
                    r.get(0)
                })?;
            if used >= max {
                return Err(StoreError::Limit {
                    kind: Resource::Image,
                    used: used.unsigned_abs(),
                    max: max.unsigned_abs(),
                });
            }
        }
        let taken: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM images WHERE owner IS ?1 AND name = ?2)",
            params![new.owner, new.name],
            |r| r.get(0),
        )?;
        if taken {
            return Err(StoreError::conflict(Resource::Image, &new.name, "already exists"));
        }
        tx.execute(
            &format!("INSERT INTO images ({COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
            params![
                id,
                new.owner,
                new.name,
                new.source,
                path,
                new.size_mb,
                new.oci_digest,
                config,
                new.created_at.unwrap_or_else(Timestamp::now)
            ],
        )?;
        let image =
            tx.query_row(&format!("SELECT {COLS} FROM images WHERE id = ?1"), [&id], row)?;
        tx.commit()?;
        Ok(image)
    }

    /// Resolves an image name for a user: own, then shared with them, then global.
    pub fn image_for(&self, user: &str, name: &str) -> Result<Image> {
        self.conn
            .query_row(
                &format!(
                    "SELECT {COLS_I} FROM images i WHERE i.name = ?2 AND (i.owner = ?1 \
                     OR i.owner IS NULL OR EXISTS (SELECT 1 FROM image_shares s \
                     WHERE s.image_id = i.id AND s.user_id = ?1)) \
                     ORDER BY CASE WHEN i.owner = ?1 THEN 0 WHEN i.owner IS NOT NULL THEN 1 \
                     ELSE 2 END LIMIT 1"
                ),
                [user, name],
                row,
            )
            .optional()?
            .ok_or_else(|| StoreError::not_found(Resource::Image, name))
    }

    /// An image by name regardless of owner: a global one first, else the oldest (local CLI
    /// commands such as `image share`).
    pub fn image_by_name(&self, name: &str) -> Result<Image> {
        self.conn
            .query_row(
                &format!(
                    "SELECT {COLS} FROM images WHERE name = ?1 \
                     ORDER BY owner IS NOT NULL, created_at LIMIT 1"
                ),
                [name],
                row,
            )
            .optional()?
            .ok_or_else(|| StoreError::not_found(Resource::Image, name))
    }

    /// The images a user sees (own, shared with them, global), newest first.
    pub fn list_images(&self, user: &str) -> Result<Vec<Image>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLS_I} FROM images i WHERE i.owner = ?1 OR i.owner IS NULL OR EXISTS \
             (SELECT 1 FROM image_shares s WHERE s.image_id = i.id AND s.user_id = ?1) \
             ORDER BY i.created_at DESC, i.rowid DESC"
        ))?;
        Ok(stmt.query_map([user], row)?.collect::<rusqlite::Result<_>>()?)
    }

    /// Deletes the user's own image by name and returns it (the caller removes the file).
    /// Global and shared images are "not found" here.
    pub fn delete_image(&mut self, owner: &str, name: &str) -> Result<Image> {
        let tx = self.write_tx()?;
        let image = tx
            .query_row(
                &format!("SELECT {COLS} FROM images WHERE owner = ?1 AND name = ?2"),
                [owner, name],
                row,
            )
            .optional()?
            .ok_or_else(|| StoreError::not_found(Resource::Image, name))?;
        tx.execute("DELETE FROM images WHERE id = ?1", [&image.id])?;
        tx.commit()?;
        Ok(image)
    }

    /// Registers or refreshes a global image with a fixed ID (a built-in image found on disk):
    /// its file, size and time follow the file's. Answers whether anything changed.
    pub fn upsert_global_image(&mut self, new: &NewImage) -> Result<bool> {
        let Some(id) = &new.id else {
            return Err(StoreError::Invalid("a global image needs a fixed ID".into()));
        };
        let path = new
            .file_path
            .to_str()
            .ok_or_else(|| StoreError::Invalid("image path is not UTF-8".into()))?;
        let created = new.created_at.unwrap_or_else(Timestamp::now);
        let tx = self.write_tx()?;
        let current = tx
            .query_row(&format!("SELECT {COLS} FROM images WHERE id = ?1"), [id], row)
            .optional()?;
        let changed = match current {
            Some(old)
                if old.file_path == new.file_path
                    && old.size_mb == new.size_mb
                    && old.created_at == created =>
            {
                false
            }
            Some(_) => {
                tx.execute(
                    "UPDATE images SET file_path = ?2, size_mb = ?3, created_at = ?4 WHERE id = ?1",
                    params![id, path, new.size_mb, created],
                )?;
                true
            }
            None => {
                tx.execute(
                    &format!(
                        "INSERT INTO images ({COLS}) VALUES (?1, NULL, ?2, ?3, ?4, ?5, '', '{{}}', ?6)"
                    ),
                    params![id, new.name, new.source, path, new.size_mb, created],
                )?;
                true
            }
        };
        tx.commit()?;
        Ok(changed)
    }

    /// How many live sandboxes boot from the image file `path` (their disks are overlays on
    /// it): those whose engine record names the file, and those still being created from an
    /// image of this name (no record yet).
    pub fn image_users(&self, image: &Image) -> Result<u64> {
        let path = image.file_path.to_str().unwrap_or_default();
        let n: i64 = self.conn.query_row(
            "SELECT count(*) FROM sandboxes WHERE status != 'destroyed' AND ( \
             (record IS NOT NULL AND json_extract(record, '$.image') = ?1) OR \
             (record IS NULL AND image = ?2 AND (?3 IS NULL OR owner = ?3)))",
            params![path, image.name, image.owner],
            |r| r.get(0),
        )?;
        Ok(n.unsigned_abs())
    }

    /// Shares an image with a user (idempotent).
    pub fn share_image(&mut self, image_id: &str, user_id: &str) -> Result<()> {
        let tx = self.write_tx()?;
        for (kind, sql, id) in [
            (Resource::Image, "SELECT EXISTS (SELECT 1 FROM images WHERE id = ?1)", image_id),
            (Resource::User, "SELECT EXISTS (SELECT 1 FROM users WHERE id = ?1)", user_id),
        ] {
            if !tx.query_row(sql, [id], |r| r.get::<_, bool>(0))? {
                return Err(StoreError::not_found(kind, id));
            }
        }
        tx.execute(
            "INSERT OR IGNORE INTO image_shares (image_id, user_id) VALUES (?1, ?2)",
            [image_id, user_id],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Revokes a share.
    pub fn unshare_image(&mut self, image_id: &str, user_id: &str) -> Result<()> {
        let n = self.conn.execute(
            "DELETE FROM image_shares WHERE image_id = ?1 AND user_id = ?2",
            [image_id, user_id],
        )?;
        if n == 0 {
            return Err(StoreError::not_found(
                Resource::Image,
                format!("{image_id} share to {user_id}"),
            ));
        }
        Ok(())
    }

    /// The names of the users an image is shared with, sorted.
    pub fn image_shares(&self, image_id: &str) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare(
            "SELECT u.name FROM image_shares s JOIN users u ON u.id = s.user_id \
             WHERE s.image_id = ?1 ORDER BY u.name",
        )?;
        Ok(stmt.query_map([image_id], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?)
    }
}
