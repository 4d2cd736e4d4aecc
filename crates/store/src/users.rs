//! Users: API keys (kept as SHA-256 only), quotas and the owner's network index.

use rusqlite::{OptionalExtension, Row, params};

use crate::db::Store;
use crate::error::{Resource, Result, StoreError};
use crate::types::{Timestamp, constant_time_eq, hex, new_id, random_bytes, sha256_hex, u32_col};

/// Per-user limits (v1's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Live sandboxes.
    pub max_sandboxes: u32,
    /// vCPUs of one sandbox.
    pub max_cpus_per_sandbox: u32,
    /// Memory of one sandbox, MiB.
    pub max_memory_mb_per_sandbox: u32,
    /// Sum of volume sizes, MiB.
    pub max_volume_storage_mb: u32,
    /// Own images.
    pub max_images: u32,
    /// Named snapshots.
    pub max_snapshots: u32,
    /// Sum of the disks (`disk_size_mb`) of live sandboxes, MiB (ours; v1 had no such limit).
    pub max_disk_mb: u32,
    /// Execs running at once (ours).
    pub max_concurrent_execs: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            max_sandboxes: 5,
            max_cpus_per_sandbox: 4,
            max_memory_mb_per_sandbox: 4096,
            max_volume_storage_mb: 20480,
            max_images: 10,
            max_snapshots: 5,
            max_disk_mb: 51200,
            max_concurrent_execs: 32,
        }
    }
}

/// A user row. The key hash is not part of it: it never leaves the store.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    /// `usr_` + 16 hex.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Limits.
    pub quotas: Quotas,
    /// The owner's network (bridge) index, unique among users, from 1.
    pub subnet_index: u32,
    /// Creation time.
    pub created_at: Timestamp,
}

/// A freshly made API key (`bht_` + 64 hex). Shown once to the admin; only its hash is kept.
/// Its `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// The key, to show to its owner once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn generate() -> Result<Self> {
        Ok(ApiKey(format!("bht_{}", hex(&random_bytes(32)?))))
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

const USER_COLS: &str = "id, name, max_sandboxes, max_cpus_per_sandbox, \
    max_memory_mb_per_sandbox, max_volume_storage_mb, max_images, max_snapshots, subnet_index, \
    created_at, max_disk_mb, max_concurrent_execs";

fn user_row(r: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(0)?,
        name: r.get(1)?,
        quotas: Quotas {
            max_sandboxes: u32_col(r, 2)?,
            max_cpus_per_sandbox: u32_col(r, 3)?,
            max_memory_mb_per_sandbox: u32_col(r, 4)?,
            max_volume_storage_mb: u32_col(r, 5)?,
            max_images: u32_col(r, 6)?,
            max_snapshots: u32_col(r, 7)?,
            max_disk_mb: u32_col(r, 10)?,
            max_concurrent_execs: u32_col(r, 11)?,
        },
        subnet_index: u32_col(r, 8)?,
        created_at: r.get(9)?,
    })
}

impl Store {
    /// Creates a user with a fresh API key and the next subnet index (MAX + 1, from 1, as v1:
    /// only the highest index of a deleted user, who owns no live sandbox, can come back).
    pub fn create_user(&mut self, name: &str, quotas: Quotas) -> Result<(User, ApiKey)> {
        if name.is_empty() {
            return Err(StoreError::Invalid("user name is empty".into()));
        }
        let key = ApiKey::generate()?;
        let id = new_id("usr_")?;
        let now = Timestamp::now();
        let tx = self.write_tx()?;
        let taken: bool =
            tx.query_row("SELECT EXISTS (SELECT 1 FROM users WHERE name = ?1)", [name], |r| {
                r.get(0)
            })?;
        if taken {
            return Err(StoreError::conflict(Resource::User, name, "name is already in use"));
        }
        let subnet: i64 =
            tx.query_row("SELECT COALESCE(MAX(subnet_index), 0) + 1 FROM users", [], |r| r.get(0))?;
        tx.execute(
            &format!("INSERT INTO users ({USER_COLS}, api_key_hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"),
            params![
                id,
                name,
                quotas.max_sandboxes,
                quotas.max_cpus_per_sandbox,
                quotas.max_memory_mb_per_sandbox,
                quotas.max_volume_storage_mb,
                quotas.max_images,
                quotas.max_snapshots,
                subnet,
                now,
                quotas.max_disk_mb,
                quotas.max_concurrent_execs,
                sha256_hex(key.expose()),
            ],
        )?;
        let user =
            tx.query_row(&format!("SELECT {USER_COLS} FROM users WHERE id = ?1"), [&id], user_row)?;
        tx.commit()?;
        Ok((user, key))
    }

    /// The user by ID.
    pub fn user(&self, id: &str) -> Result<User> {
        self.conn
            .query_row(&format!("SELECT {USER_COLS} FROM users WHERE id = ?1"), [id], user_row)
            .optional()?
            .ok_or_else(|| StoreError::not_found(Resource::User, id))
    }

    /// The user by name.
    pub fn user_by_name(&self, name: &str) -> Result<User> {
        self.conn
            .query_row(&format!("SELECT {USER_COLS} FROM users WHERE name = ?1"), [name], user_row)
            .optional()?
            .ok_or_else(|| StoreError::not_found(Resource::User, name))
    }

    /// The user an API key belongs to (the request pipeline's lookup). An unknown key is
    /// "not found" naming no key.
    pub fn user_by_api_key(&self, key: &str) -> Result<User> {
        let hash = sha256_hex(key);
        let found = self
            .conn
            .query_row(
                &format!("SELECT {USER_COLS}, api_key_hash FROM users WHERE api_key_hash = ?1"),
                [&hash],
                |r| Ok((user_row(r)?, r.get::<_, String>(12)?)),
            )
            .optional()?;
        match found {
            // The index lookup found it; the comparison is kept constant-time anyway.
            Some((user, stored)) if constant_time_eq(&stored, &hash) => Ok(user),
            _ => Err(StoreError::not_found(Resource::User, "<api key>")),
        }
    }

    /// All users, by name.
    pub fn list_users(&self) -> Result<Vec<User>> {
        let mut stmt =
            self.conn.prepare(&format!("SELECT {USER_COLS} FROM users ORDER BY name"))?;
        Ok(stmt.query_map([], user_row)?.collect::<rusqlite::Result<_>>()?)
    }

    /// Replaces the user's key; the old one stops working at once.
    pub fn rotate_api_key(&mut self, id: &str) -> Result<ApiKey> {
        let key = ApiKey::generate()?;
        let n = self.conn.execute(
            "UPDATE users SET api_key_hash = ?2 WHERE id = ?1",
            params![id, sha256_hex(key.expose())],
        )?;
        if n == 0 {
            return Err(StoreError::not_found(Resource::User, id));
        }
        Ok(key)
    }

    /// Changes a user's limits.
    pub fn set_quotas(&mut self, id: &str, q: Quotas) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE users SET max_sandboxes = ?2, max_cpus_per_sandbox = ?3, \
             max_memory_mb_per_sandbox = ?4, max_volume_storage_mb = ?5, max_images = ?6, \
             max_snapshots = ?7, max_disk_mb = ?8, max_concurrent_execs = ?9 WHERE id = ?1",
            params![
                id,
                q.max_sandboxes,
                q.max_cpus_per_sandbox,
                q.max_memory_mb_per_sandbox,
                q.max_volume_storage_mb,
                q.max_images,
                q.max_snapshots,
                q.max_disk_mb,
                q.max_concurrent_execs
            ],
        )?;
        if n == 0 {
            return Err(StoreError::not_found(Resource::User, id));
        }
        Ok(())
    }

    /// Deletes a user that owns nothing but destroyed sandboxes (those rows go with it) and
    /// finished tasks. Live sandboxes, secrets, volumes, images or snapshots are a conflict
    /// naming what is left (v1 refused only for sandboxes and secrets and left the others'
    /// files without an owner).
    pub fn delete_user(&mut self, id: &str) -> Result<()> {
        let tx = self.write_tx()?;
        let exists: bool =
            tx.query_row("SELECT EXISTS (SELECT 1 FROM users WHERE id = ?1)", [id], |r| r.get(0))?;
        if !exists {
            return Err(StoreError::not_found(Resource::User, id));
        }
        let checks = [
            (
                "active sandbox(es)",
                "SELECT count(*) FROM sandboxes WHERE owner = ?1 AND status != 'destroyed'",
            ),
            ("secret(s)", "SELECT count(*) FROM secrets WHERE owner = ?1"),
            ("volume(s)", "SELECT count(*) FROM volumes WHERE owner = ?1"),
            ("image(s)", "SELECT count(*) FROM images WHERE owner = ?1"),
            ("snapshot(s)", "SELECT count(*) FROM snapshots WHERE owner = ?1"),
            ("volume backup(s)", "SELECT count(*) FROM volume_backups WHERE owner = ?1"),
        ];
        for (what, sql) in checks {
            let n: i64 = tx.query_row(sql, [id], |r| r.get(0))?;
            if n > 0 {
                return Err(StoreError::conflict(Resource::User, id, format!("has {n} {what}")));
            }
        }
        tx.execute("DELETE FROM sandboxes WHERE owner = ?1", [id])?;
        tx.execute("DELETE FROM users WHERE id = ?1", [id])?;
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_key_hashes_are_refused_by_the_schema() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path().join("state.db")).unwrap();
        let (a, _) = store.create_user("a", Quotas::default()).unwrap();
        let (b, _) = store.create_user("b", Quotas::default()).unwrap();
        let err = store
            .conn
            .execute(
                "UPDATE users SET api_key_hash = (SELECT api_key_hash FROM users WHERE id = ?1) \
                 WHERE id = ?2",
                [&a.id, &b.id],
            )
            .map_err(StoreError::from)
            .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Conflict, "{err}");
    }
}
