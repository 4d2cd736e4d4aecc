//! Volume backups: records of off-site copies (the server uploads; the store remembers).

use rusqlite::{OptionalExtension, Row, params};

use crate::db::Store;
use crate::error::{Resource, Result, StoreError};
use crate::types::{Timestamp, new_id};

/// A backup row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeBackup {
    /// `bkp_` + 16 hex.
    pub id: String,
    /// Owner.
    pub owner: String,
    /// The volume's name.
    pub volume_name: String,
    /// Object key.
    pub s3_key: String,
    /// Compressed size.
    pub size_bytes: u64,
    /// Checksum, empty if not computed.
    pub sha256: String,
    /// Creation time.
    pub created_at: Timestamp,
}

const COLS: &str = "id, owner, volume_name, s3_key, size_bytes, sha256, created_at";

fn row(r: &Row<'_>) -> rusqlite::Result<VolumeBackup> {
    Ok(VolumeBackup {
        id: r.get(0)?,
        owner: r.get(1)?,
        volume_name: r.get(2)?,
        s3_key: r.get(3)?,
        size_bytes: r.get::<_, i64>(4)?.unsigned_abs(),
        sha256: r.get(5)?,
        created_at: r.get(6)?,
    })
}

impl Store {
    /// Records an uploaded backup.
    pub fn create_volume_backup(
        &mut self,
        owner: &str,
        volume_name: &str,
        s3_key: &str,
        size_bytes: u64,
        sha256: &str,
    ) -> Result<VolumeBackup> {
        let id = new_id("bkp_")?;
        let size = i64::try_from(size_bytes)
            .map_err(|_| StoreError::Invalid("backup too large".into()))?;
        self.conn.execute(
            &format!("INSERT INTO volume_backups ({COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
            params![id, owner, volume_name, s3_key, size, sha256, Timestamp::now()],
        )?;
        self.volume_backup(owner, &id)
    }

    /// The owner's backup by ID.
    pub fn volume_backup(&self, owner: &str, id: &str) -> Result<VolumeBackup> {
        self.conn
            .query_row(
                &format!("SELECT {COLS} FROM volume_backups WHERE id = ?1 AND owner = ?2"),
                [id, owner],
                row,
            )
            .optional()?
            .ok_or_else(|| StoreError::not_found(Resource::Volume, format!("backup {id}")))
    }

    /// The owner's backups of a volume, newest first.
    pub fn list_volume_backups(&self, owner: &str, volume_name: &str) -> Result<Vec<VolumeBackup>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLS} FROM volume_backups WHERE owner = ?1 AND volume_name = ?2 \
             ORDER BY created_at DESC, rowid DESC"
        ))?;
        Ok(stmt.query_map([owner, volume_name], row)?.collect::<rusqlite::Result<_>>()?)
    }

    /// The backups beyond the newest `keep` (retention deletes these), oldest last.
    pub fn volume_backups_beyond(
        &self,
        owner: &str,
        volume_name: &str,
        keep: usize,
    ) -> Result<Vec<VolumeBackup>> {
        Ok(self.list_volume_backups(owner, volume_name)?.into_iter().skip(keep).collect())
    }

    /// Deletes the owner's backup record.
    pub fn delete_volume_backup(&mut self, owner: &str, id: &str) -> Result<()> {
        let n = self
            .conn
            .execute("DELETE FROM volume_backups WHERE id = ?1 AND owner = ?2", [id, owner])?;
        if n == 0 {
            return Err(StoreError::not_found(Resource::Volume, format!("backup {id}")));
        }
        Ok(())
    }
}
