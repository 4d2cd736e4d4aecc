//! Named snapshots (checkpoints) of sandboxes, per owner.

use std::path::PathBuf;

use rusqlite::{OptionalExtension, Row, params};

use crate::db::Store;
use crate::error::{Resource, Result, StoreError};
use crate::types::{Timestamp, new_id, u32_col};

/// A named snapshot row.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// `snap_` + 16 hex.
    pub id: String,
    /// Owner.
    pub owner: String,
    /// Name, unique per owner.
    pub name: String,
    /// The sandbox it was taken from (may be gone).
    pub source_sandbox: String,
    /// Its directory.
    pub dir: PathBuf,
    /// The engine's manifest (JSON text).
    pub manifest: String,
    /// Size, MiB.
    pub size_mb: u32,
    /// Creation time.
    pub created_at: Timestamp,
}

const COLS: &str = "id, owner, name, source_sandbox, dir, manifest, size_mb, created_at";

fn row(r: &Row<'_>) -> rusqlite::Result<Snapshot> {
    Ok(Snapshot {
        id: r.get(0)?,
        owner: r.get(1)?,
        name: r.get(2)?,
        source_sandbox: r.get(3)?,
        dir: PathBuf::from(r.get::<_, String>(4)?),
        manifest: r.get(5)?,
        size_mb: u32_col(r, 6)?,
        created_at: r.get(7)?,
    })
}

impl Store {
    /// Records a snapshot the engine has captured. Conflict if the name is taken; limit when
    /// the owner has `max_snapshots` already.
    pub fn create_snapshot(
        &mut self,
        owner: &str,
        name: &str,
        source_sandbox: &str,
        dir: &std::path::Path,
        manifest: &str,
        size_mb: u32,
    ) -> Result<Snapshot> {
        if name.is_empty() {
            return Err(StoreError::Invalid("snapshot name is empty".into()));
        }
        let dir =
            dir.to_str().ok_or_else(|| StoreError::Invalid("snapshot dir is not UTF-8".into()))?;
        let manifest = if manifest.is_empty() { "{}" } else { manifest };
        let id = new_id("snap_")?;
        let tx = self.write_tx()?;
        let max: i64 = tx
            .query_row("SELECT max_snapshots FROM users WHERE id = ?1", [owner], |r| r.get(0))
            .optional()?
            .ok_or_else(|| StoreError::not_found(Resource::User, owner))?;
        let used: i64 =
            tx.query_row("SELECT count(*) FROM snapshots WHERE owner = ?1", [owner], |r| r.get(0))?;
        if used >= max {
            return Err(StoreError::Limit {
                kind: Resource::Snapshot,
                used: used.unsigned_abs(),
                max: max.unsigned_abs(),
            });
        }
        let taken: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM snapshots WHERE owner = ?1 AND name = ?2)",
            [owner, name],
            |r| r.get(0),
        )?;
        if taken {
            return Err(StoreError::conflict(Resource::Snapshot, name, "already exists"));
        }
        tx.execute(
            &format!("INSERT INTO snapshots ({COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
            params![id, owner, name, source_sandbox, dir, manifest, size_mb, Timestamp::now()],
        )?;
        let s = tx.query_row(&format!("SELECT {COLS} FROM snapshots WHERE id = ?1"), [&id], row)?;
        tx.commit()?;
        Ok(s)
    }

    /// Whether the owner may take a snapshot named `name` now: a limit error when
    /// `max_snapshots` exist, a conflict when the name is taken. A cheap check before the
    /// capture; [`Store::create_snapshot`] checks again in its transaction.
    pub fn check_snapshot_room(&self, owner: &str, name: &str) -> Result<()> {
        let max: i64 = self
            .conn
            .query_row("SELECT max_snapshots FROM users WHERE id = ?1", [owner], |r| r.get(0))
            .optional()?
            .ok_or_else(|| StoreError::not_found(Resource::User, owner))?;
        let used: i64 = self.conn.query_row(
            "SELECT count(*) FROM snapshots WHERE owner = ?1",
            [owner],
            |r| r.get(0),
        )?;
        if used >= max {
            return Err(StoreError::Limit {
                kind: Resource::Snapshot,
                used: used.unsigned_abs(),
                max: max.unsigned_abs(),
            });
        }
        let taken: bool = self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM snapshots WHERE owner = ?1 AND name = ?2)",
            [owner, name],
            |r| r.get(0),
        )?;
        if taken {
            return Err(StoreError::conflict(Resource::Snapshot, name, "already exists"));
        }
        Ok(())
    }

    /// Every snapshot row of every owner (the daemon's start compares them with the
    /// directories on the disk).
    pub fn list_all_snapshots(&self) -> Result<Vec<Snapshot>> {
        let mut stmt = self.conn.prepare(&format!("SELECT {COLS} FROM snapshots"))?;
        Ok(stmt.query_map([], row)?.collect::<rusqlite::Result<_>>()?)
    }

    /// The owner's snapshot by name.
    pub fn snapshot(&self, owner: &str, name: &str) -> Result<Snapshot> {
        self.conn
            .query_row(
                &format!("SELECT {COLS} FROM snapshots WHERE owner = ?1 AND name = ?2"),
                [owner, name],
                row,
            )
            .optional()?
            .ok_or_else(|| StoreError::not_found(Resource::Snapshot, name))
    }

    /// The owner's snapshots, newest first.
    pub fn list_snapshots(&self, owner: &str) -> Result<Vec<Snapshot>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLS} FROM snapshots WHERE owner = ?1 ORDER BY created_at DESC, rowid DESC"
        ))?;
        Ok(stmt.query_map([owner], row)?.collect::<rusqlite::Result<_>>()?)
    }

    /// Deletes the owner's snapshot row and returns it (the caller removes the directory).
    pub fn delete_snapshot(&mut self, owner: &str, name: &str) -> Result<Snapshot> {
        let tx = self.write_tx()?;
        let s = tx
            .query_row(
                &format!("SELECT {COLS} FROM snapshots WHERE owner = ?1 AND name = ?2"),
                [owner, name],
                row,
            )
            .optional()?
            .ok_or_else(|| StoreError::not_found(Resource::Snapshot, name))?;
        tx.execute("DELETE FROM snapshots WHERE id = ?1", [&s.id])?;
        tx.commit()?;
        Ok(s)
    }
}
