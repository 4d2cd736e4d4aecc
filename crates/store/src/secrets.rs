//! Secrets: per owner, ciphertext only (the server encrypts with age before it calls here).

use rusqlite::{OptionalExtension, params};

use crate::db::Store;
use crate::error::{Resource, Result, StoreError};
use crate::types::Timestamp;

/// A secret's metadata (what the API lists).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretInfo {
    /// Owner.
    pub owner: String,
    /// Name, unique per owner.
    pub name: String,
    /// First set.
    pub created_at: Timestamp,
    /// Last set.
    pub updated_at: Timestamp,
}

/// An encrypted secret value. Its `Debug` prints only the length.
#[derive(Clone, PartialEq, Eq)]
pub struct Ciphertext(pub Vec<u8>);

impl std::fmt::Debug for Ciphertext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ciphertext(<{} bytes>)", self.0.len())
    }
}

impl Store {
    /// Sets a secret (insert or replace, keeping `created_at`).
    pub fn set_secret(
        &mut self,
        owner: &str,
        name: &str,
        ciphertext: &Ciphertext,
    ) -> Result<SecretInfo> {
        if name.is_empty() {
            return Err(StoreError::Invalid("secret name is empty".into()));
        }
        let tx = self.write_tx()?;
        let user: bool =
            tx.query_row("SELECT EXISTS (SELECT 1 FROM users WHERE id = ?1)", [owner], |r| {
                r.get(0)
            })?;
        if !user {
            return Err(StoreError::not_found(Resource::User, owner));
        }
        tx.execute(
            "INSERT INTO secrets (owner, name, ciphertext, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT (owner, name) \
             DO UPDATE SET ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
            params![owner, name, ciphertext.0, Timestamp::now()],
        )?;
        let info = secret_info(&tx, owner, name)?;
        tx.commit()?;
        Ok(info)
    }

    /// A secret's ciphertext.
    pub fn secret_value(&self, owner: &str, name: &str) -> Result<Ciphertext> {
        self.conn
            .query_row(
                "SELECT ciphertext FROM secrets WHERE owner = ?1 AND name = ?2",
                [owner, name],
                |r| r.get(0),
            )
            .optional()?
            .map(Ciphertext)
            .ok_or_else(|| StoreError::not_found(Resource::Secret, name))
    }

    /// A secret's metadata.
    pub fn secret(&self, owner: &str, name: &str) -> Result<SecretInfo> {
        secret_info(&self.conn, owner, name)
    }

    /// The owner's secrets, by name.
    pub fn list_secrets(&self, owner: &str) -> Result<Vec<SecretInfo>> {
        list(&self.conn, "WHERE owner = ?1 ORDER BY name", [owner])
    }

    /// Every owner's secrets (admin).
    pub fn list_all_secrets(&self) -> Result<Vec<SecretInfo>> {
        list(&self.conn, "ORDER BY owner, name", [])
    }

    /// Deletes a secret.
    pub fn delete_secret(&mut self, owner: &str, name: &str) -> Result<()> {
        let n = self
            .conn
            .execute("DELETE FROM secrets WHERE owner = ?1 AND name = ?2", [owner, name])?;
        if n == 0 {
            return Err(StoreError::not_found(Resource::Secret, name));
        }
        Ok(())
    }
}

impl Store {
    /// Keeps the sealed environment a sandbox's secrets gave it (replacing any earlier one).
    pub fn set_sandbox_secret_env(&mut self, sandbox_id: &str, sealed: &Ciphertext) -> Result<()> {
        let tx = self.write_tx()?;
        let exists: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM sandboxes WHERE id = ?1)",
            [sandbox_id],
            |r| r.get(0),
        )?;
        if !exists {
            return Err(StoreError::not_found(Resource::Sandbox, sandbox_id));
        }
        tx.execute(
            "INSERT INTO sandbox_secret_env (sandbox_id, ciphertext) VALUES (?1, ?2) \
             ON CONFLICT (sandbox_id) DO UPDATE SET ciphertext = excluded.ciphertext",
            params![sandbox_id, sealed.0],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The sealed secret environment of a sandbox, if its create named secrets.
    pub fn sandbox_secret_env(&self, sandbox_id: &str) -> Result<Option<Ciphertext>> {
        Ok(self
            .conn
            .query_row(
                "SELECT ciphertext FROM sandbox_secret_env WHERE sandbox_id = ?1",
                [sandbox_id],
                |r| r.get(0),
            )
            .optional()?
            .map(Ciphertext))
    }
}

fn secret_info(conn: &rusqlite::Connection, owner: &str, name: &str) -> Result<SecretInfo> {
    list(conn, "WHERE owner = ?1 AND name = ?2", [owner, name])?
        .into_iter()
        .next()
        .ok_or_else(|| StoreError::not_found(Resource::Secret, name))
}

fn list(
    conn: &rusqlite::Connection,
    tail: &str,
    p: impl rusqlite::Params,
) -> Result<Vec<SecretInfo>> {
    let mut stmt =
        conn.prepare(&format!("SELECT owner, name, created_at, updated_at FROM secrets {tail}"))?;
    let rows = stmt.query_map(p, |r| {
        Ok(SecretInfo {
            owner: r.get(0)?,
            name: r.get(1)?,
            created_at: r.get(2)?,
            updated_at: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
