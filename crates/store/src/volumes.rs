//! Persistent volumes and their attachments to sandboxes.
//!
//! Attach rules (host.md 4.4), checked and applied in one write transaction so two racing
//! attaches cannot both pass: the volume must exist and be `ready`; a read-write attach needs
//! no other attachment; a read-only attach needs no read-write one (many read-only are fine);
//! a volume with any attachment cannot be deleted or resized.

use std::path::PathBuf;

use rusqlite::{OptionalExtension, Row, params};

use crate::db::Store;
use crate::error::{Resource, Result, StoreError};
use crate::types::{Timestamp, new_id, u32_col};

/// A volume's life: rows are inserted `creating` before the file is made, then `ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeStatus {
    /// The file is being made; attaches are refused.
    Creating,
    /// Usable.
    Ready,
}

impl VolumeStatus {
    fn as_str(self) -> &'static str {
        match self {
            VolumeStatus::Creating => "creating",
            VolumeStatus::Ready => "ready",
        }
    }
}

/// A volume row.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    /// `vol_` + 16 hex.
    pub id: String,
    /// Owner.
    pub owner: String,
    /// Name, unique per owner.
    pub name: String,
    /// Size, MiB.
    pub size_mb: u32,
    /// The ext4 file on the host.
    pub file_path: PathBuf,
    /// Creating or ready.
    pub status: VolumeStatus,
    /// Creation time.
    pub created_at: Timestamp,
    /// Current attachments, in attach order.
    pub attachments: Vec<Attachment>,
}

/// A volume attached to a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The volume.
    pub volume_id: String,
    /// The sandbox.
    pub sandbox_id: String,
    /// Guest mount point.
    pub mount: String,
    /// Read-only.
    pub read_only: bool,
    /// When.
    pub attached_at: Timestamp,
}

const VOL_COLS: &str = "id, owner, name, size_mb, file_path, status, created_at";
const ATT_COLS: &str = "volume_id, sandbox_id, mount, read_only, attached_at";

fn vol_row(r: &Row<'_>) -> rusqlite::Result<Volume> {
    let status: String = r.get(5)?;
    Ok(Volume {
        id: r.get(0)?,
        owner: r.get(1)?,
        name: r.get(2)?,
        size_mb: u32_col(r, 3)?,
        file_path: PathBuf::from(r.get::<_, String>(4)?),
        // The column's CHECK allows only these two.
        status: if status == "creating" { VolumeStatus::Creating } else { VolumeStatus::Ready },
        created_at: r.get(6)?,
        attachments: Vec::new(),
    })
}

fn att_row(r: &Row<'_>) -> rusqlite::Result<Attachment> {
    Ok(Attachment {
        volume_id: r.get(0)?,
        sandbox_id: r.get(1)?,
        mount: r.get(2)?,
        read_only: r.get(3)?,
        attached_at: r.get(4)?,
    })
}

fn attachments(conn: &rusqlite::Connection, volume_id: &str) -> Result<Vec<Attachment>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ATT_COLS} FROM volume_attachments WHERE volume_id = ?1 ORDER BY rowid"
    ))?;
    Ok(stmt.query_map([volume_id], att_row)?.collect::<rusqlite::Result<_>>()?)
}

fn volume_in(conn: &rusqlite::Connection, owner: &str, name: &str) -> Result<Volume> {
    let mut v = conn
        .query_row(
            &format!("SELECT {VOL_COLS} FROM volumes WHERE owner = ?1 AND name = ?2"),
            [owner, name],
            vol_row,
        )
        .optional()?
        .ok_or_else(|| StoreError::not_found(Resource::Volume, name))?;
    v.attachments = attachments(conn, &v.id)?;
    Ok(v)
}

fn path_text(p: &std::path::Path) -> Result<&str> {
    p.to_str().ok_or_else(|| StoreError::Invalid(format!("path {} is not UTF-8", p.display())))
}

impl Store {
    /// Inserts a volume in status `creating` (the caller makes the file, then calls
    /// [`Store::set_volume_ready`]). Refused when the name is taken (conflict) or the owner's
    /// volume storage would pass `max_volume_storage_mb` (limit, in MiB).
    pub fn create_volume(
        &mut self,
        owner: &str,
        name: &str,
        size_mb: u32,
        file_path: &std::path::Path,
    ) -> Result<Volume> {
        if name.is_empty() || size_mb == 0 {
            return Err(StoreError::Invalid("volume name and a size > 0 are required".into()));
        }
        let id = new_id("vol_")?;
        let tx = self.write_tx()?;
        let max: i64 = tx
            .query_row("SELECT max_volume_storage_mb FROM users WHERE id = ?1", [owner], |r| {
                r.get(0)
            })
            .optional()?
            .ok_or_else(|| StoreError::not_found(Resource::User, owner))?;
        let used: i64 = tx.query_row(
            "SELECT COALESCE(SUM(size_mb), 0) FROM volumes WHERE owner = ?1",
            [owner],
            |r| r.get(0),
        )?;
        if used + i64::from(size_mb) > max {
            return Err(StoreError::Limit {
                kind: Resource::Volume,
                used: used.unsigned_abs(),
                max: max.unsigned_abs(),
            });
        }
        let taken: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM volumes WHERE owner = ?1 AND name = ?2)",
            [owner, name],
            |r| r.get(0),
        )?;
        if taken {
            return Err(StoreError::conflict(Resource::Volume, name, "already exists"));
        }
        tx.execute(
            &format!(
                "INSERT INTO volumes ({VOL_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, 'creating', ?6)"
            ),
            params![id, owner, name, size_mb, path_text(file_path)?, Timestamp::now()],
        )?;
        let v = volume_in(&tx, owner, name)?;
        tx.commit()?;
        Ok(v)
    }

    /// Marks a volume's file made.
    pub fn set_volume_ready(&mut self, owner: &str, name: &str) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE volumes SET status = ?3 WHERE owner = ?1 AND name = ?2",
            params![owner, name, VolumeStatus::Ready.as_str()],
        )?;
        if n == 0 {
            return Err(StoreError::not_found(Resource::Volume, name));
        }
        Ok(())
    }

    /// The owner's volume by name, with its attachments.
    pub fn volume(&self, owner: &str, name: &str) -> Result<Volume> {
        volume_in(&self.conn, owner, name)
    }

    /// The owner's volumes, newest first, with their attachments.
    pub fn list_volumes(&self, owner: &str) -> Result<Vec<Volume>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {VOL_COLS} FROM volumes WHERE owner = ?1 ORDER BY created_at DESC, rowid DESC"
        ))?;
        let mut vols: Vec<Volume> =
            stmt.query_map([owner], vol_row)?.collect::<rusqlite::Result<_>>()?;
        for v in &mut vols {
            v.attachments = attachments(&self.conn, &v.id)?;
        }
        Ok(vols)
    }

    /// Every volume of every owner (start-up clean-up).
    pub fn list_all_volumes(&self) -> Result<Vec<Volume>> {
        let mut stmt =
            self.conn.prepare(&format!("SELECT {VOL_COLS} FROM volumes ORDER BY rowid"))?;
        Ok(stmt.query_map([], vol_row)?.collect::<rusqlite::Result<_>>()?)
    }

    /// MiB of volumes the owner has.
    pub fn volume_storage_used(&self, owner: &str) -> Result<u64> {
        let n: i64 = self.conn.query_row(
            "SELECT COALESCE(SUM(size_mb), 0) FROM volumes WHERE owner = ?1",
            [owner],
            |r| r.get(0),
        )?;
        Ok(n.unsigned_abs())
    }

    /// Deletes a detached volume row and returns it (the caller then removes the file; a
    /// crash in between leaves a file the start-up clean-up removes).
    pub fn delete_volume(&mut self, owner: &str, name: &str) -> Result<Volume> {
        let tx = self.write_tx()?;
        let v = volume_in(&tx, owner, name)?;
        if !v.attachments.is_empty() {
            return Err(StoreError::conflict(
                Resource::Volume,
                name,
                format!("has {} active attachment(s)", v.attachments.len()),
            ));
        }
        tx.execute("DELETE FROM volumes WHERE id = ?1", [&v.id])?;
        tx.commit()?;
        Ok(v)
    }

    /// Records a detached volume's new, larger size (after the file was grown).
    pub fn resize_volume(&mut self, owner: &str, name: &str, size_mb: u32) -> Result<Volume> {
        let tx = self.write_tx()?;
        let v = volume_in(&tx, owner, name)?;
        if !v.attachments.is_empty() {
            return Err(StoreError::conflict(Resource::Volume, name, "is attached"));
        }
        if size_mb <= v.size_mb {
            return Err(StoreError::Invalid(format!(
                "new size {size_mb} MiB must exceed the current {} MiB",
                v.size_mb
            )));
        }
        tx.execute("UPDATE volumes SET size_mb = ?2 WHERE id = ?1", params![v.id, size_mb])?;
        let v = volume_in(&tx, owner, name)?;
        tx.commit()?;
        Ok(v)
    }

    /// Attaches the owner's volume to the owner's live sandbox, by the rules above.
    pub fn attach_volume(
        &mut self,
        owner: &str,
        volume: &str,
        sandbox_id: &str,
        mount: &str,
        read_only: bool,
    ) -> Result<Attachment> {
        let tx = self.write_tx()?;
        let v = volume_in(&tx, owner, volume)?;
        if v.status == VolumeStatus::Creating {
            return Err(StoreError::conflict(
                Resource::Volume,
                volume,
                "is being created, retry shortly",
            ));
        }
        let sandbox_ok: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM sandboxes WHERE id = ?1 AND owner = ?2 \
             AND status != 'destroyed')",
            [sandbox_id, owner],
            |r| r.get(0),
        )?;
        if !sandbox_ok {
            return Err(StoreError::not_found(Resource::Sandbox, sandbox_id));
        }
        if v.attachments.iter().any(|a| a.sandbox_id == sandbox_id) {
            return Err(StoreError::conflict(
                Resource::Volume,
                volume,
                "is already attached to this sandbox",
            ));
        }
        let rw = v.attachments.iter().filter(|a| !a.read_only).count();
        if !read_only && !v.attachments.is_empty() {
            return Err(StoreError::conflict(
                Resource::Volume,
                volume,
                format!(
                    "is attached to {} sandbox(es); read-write needs it alone",
                    v.attachments.len()
                ),
            ));
        }
        if read_only && rw > 0 {
            return Err(StoreError::conflict(Resource::Volume, volume, "is attached read-write"));
        }
        tx.execute(
            &format!("INSERT INTO volume_attachments ({ATT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5)"),
            params![v.id, sandbox_id, mount, read_only, Timestamp::now()],
        )?;
        let a = tx.query_row(
            &format!(
                "SELECT {ATT_COLS} FROM volume_attachments WHERE volume_id = ?1 AND sandbox_id = ?2"
            ),
            [&v.id, sandbox_id],
            att_row,
        )?;
        tx.commit()?;
        Ok(a)
    }

    /// Detaches the owner's volume from a sandbox.
    pub fn detach_volume(&mut self, owner: &str, volume: &str, sandbox_id: &str) -> Result<()> {
        let n = self.conn.execute(
            "DELETE FROM volume_attachments WHERE sandbox_id = ?2 AND volume_id = \
             (SELECT id FROM volumes WHERE owner = ?1 AND name = ?3)",
            [owner, sandbox_id, volume],
        )?;
        if n == 0 {
            return Err(StoreError::not_found(
                Resource::Attachment,
                format!("{volume} on {sandbox_id}"),
            ));
        }
        Ok(())
    }

    /// Detaches every volume from a sandbox; returns how many.
    pub fn detach_all_volumes(&mut self, sandbox_id: &str) -> Result<usize> {
        Ok(self
            .conn
            .execute("DELETE FROM volume_attachments WHERE sandbox_id = ?1", [sandbox_id])?)
    }

    /// The volumes attached to a sandbox, in attach order (the guest's device order).
    pub fn sandbox_volumes(&self, sandbox_id: &str) -> Result<Vec<(Volume, Attachment)>> {
        let mut stmt = self.conn.prepare(
            "SELECT v.id, v.owner, v.name, v.size_mb, v.file_path, v.status, v.created_at, \
             a.volume_id, a.sandbox_id, a.mount, a.read_only, a.attached_at \
             FROM volume_attachments a JOIN volumes v ON v.id = a.volume_id \
             WHERE a.sandbox_id = ?1 ORDER BY a.rowid",
        )?;
        let rows = stmt.query_map([sandbox_id], |r| {
            let v = vol_row(r)?;
            let a = Attachment {
                volume_id: r.get(7)?,
                sandbox_id: r.get(8)?,
                mount: r.get(9)?,
                read_only: r.get(10)?,
                attached_at: r.get(11)?,
            };
            Ok((v, a))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Removes attachments whose sandbox is destroyed or unknown (run after recovery has set
    /// statuses); returns how many. A missing sandbox cannot hold one: the foreign key
    /// cascades its deletion.
    pub fn detach_orphaned_volumes(&mut self) -> Result<usize> {
        Ok(self.conn.execute(
            "DELETE FROM volume_attachments WHERE sandbox_id IN \
             (SELECT id FROM sandboxes WHERE status IN ('destroyed', 'unknown'))",
            [],
        )?)
    }
}
