//! Publish rules: a sandbox port exposed on the public proxy under a globally unique alias.

use rusqlite::{OptionalExtension, Row, params};

use crate::db::Store;
use crate::error::{Resource, Result, StoreError};
use crate::sandboxes::{SB_COLS, Sandbox, query_sandboxes};
use crate::types::{Timestamp, new_id};

/// A publish rule row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRule {
    /// `pub_` + 16 hex.
    pub id: String,
    /// The sandbox.
    pub sandbox_id: String,
    /// Its owner.
    pub owner: String,
    /// Guest port, 1..=65535.
    pub port: u16,
    /// Globally unique alias.
    pub alias: String,
    /// Creation time.
    pub created_at: Timestamp,
}

const COLS: &str = "id, sandbox_id, owner, port, alias, created_at";

fn row(r: &Row<'_>) -> rusqlite::Result<PublishRule> {
    Ok(PublishRule {
        id: r.get(0)?,
        sandbox_id: r.get(1)?,
        owner: r.get(2)?,
        port: r.get(3)?,
        alias: r.get(4)?,
        created_at: r.get(5)?,
    })
}

fn list(
    conn: &rusqlite::Connection,
    tail: &str,
    p: impl rusqlite::Params,
) -> Result<Vec<PublishRule>> {
    let mut stmt = conn.prepare(&format!("SELECT {COLS} FROM publish_rules {tail}"))?;
    Ok(stmt.query_map(p, row)?.collect::<rusqlite::Result<_>>()?)
}

impl Store {
    /// Publishes a port of the owner's live sandbox. A taken alias and an already published
    /// port are distinct conflicts (the server answers the second idempotently).
    pub fn create_publish_rule(
        &mut self,
        owner: &str,
        sandbox_id: &str,
        port: u16,
        alias: &str,
    ) -> Result<PublishRule> {
        if port == 0 || alias.is_empty() {
            return Err(StoreError::Invalid(
                "a port in 1..=65535 and an alias are required".into(),
            ));
        }
        let id = new_id("pub_")?;
        let tx = self.write_tx()?;
        let live: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM sandboxes WHERE id = ?1 AND owner = ?2 \
             AND status != 'destroyed')",
            [sandbox_id, owner],
            |r| r.get(0),
        )?;
        if !live {
            return Err(StoreError::not_found(Resource::Sandbox, sandbox_id));
        }
        if !list(&tx, "WHERE sandbox_id = ?1 AND port = ?2", params![sandbox_id, port])?.is_empty()
        {
            return Err(StoreError::conflict(
                Resource::PublishRule,
                port.to_string(),
                "port is already published",
            ));
        }
        if !list(&tx, "WHERE alias = ?1", [alias])?.is_empty() {
            return Err(StoreError::conflict(
                Resource::PublishRule,
                alias,
                "alias is already taken",
            ));
        }
        tx.execute(
            &format!("INSERT INTO publish_rules ({COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
            params![id, sandbox_id, owner, port, alias, Timestamp::now()],
        )?;
        let rule = list(&tx, "WHERE id = ?1", [&id])?
            .pop()
            .ok_or_else(|| StoreError::not_found(Resource::PublishRule, &id))?;
        tx.commit()?;
        Ok(rule)
    }

    /// The public proxy's lookup: the rule of an alias and its sandbox, if live.
    pub fn publish_route(&self, alias: &str) -> Result<(PublishRule, Sandbox)> {
        let rule = list(&self.conn, "WHERE alias = ?1", [alias])?
            .pop()
            .ok_or_else(|| StoreError::not_found(Resource::PublishRule, alias))?;
        let sandbox = query_sandboxes(
            &self.conn,
            &format!("SELECT {SB_COLS} FROM sandboxes WHERE id = ?1 AND status != 'destroyed'"),
            [&rule.sandbox_id],
        )?
        .pop()
        .ok_or_else(|| StoreError::not_found(Resource::PublishRule, alias))?;
        Ok((rule, sandbox))
    }

    /// Whether an alias is taken (alias generation).
    pub fn alias_taken(&self, alias: &str) -> Result<bool> {
        Ok(self
            .conn
            .query_row("SELECT 1 FROM publish_rules WHERE alias = ?1", [alias], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// A sandbox's rules, by port.
    pub fn sandbox_publish_rules(&self, sandbox_id: &str) -> Result<Vec<PublishRule>> {
        list(&self.conn, "WHERE sandbox_id = ?1 ORDER BY port", [sandbox_id])
    }

    /// All of an owner's rules (sandbox list URLs in one query).
    pub fn owner_publish_rules(&self, owner: &str) -> Result<Vec<PublishRule>> {
        list(&self.conn, "WHERE owner = ?1 ORDER BY sandbox_id, port", [owner])
    }

    /// Unpublishes a port; returns the rule (its alias leaves the route cache).
    pub fn delete_publish_rule(&mut self, sandbox_id: &str, port: u16) -> Result<PublishRule> {
        let tx = self.write_tx()?;
        let rule = list(&tx, "WHERE sandbox_id = ?1 AND port = ?2", params![sandbox_id, port])?
            .pop()
            .ok_or_else(|| StoreError::not_found(Resource::PublishRule, port.to_string()))?;
        tx.execute("DELETE FROM publish_rules WHERE id = ?1", [&rule.id])?;
        tx.commit()?;
        Ok(rule)
    }

    /// Unpublishes every port of a sandbox; returns how many.
    pub fn delete_sandbox_publish_rules(&mut self, sandbox_id: &str) -> Result<usize> {
        Ok(self.conn.execute("DELETE FROM publish_rules WHERE sandbox_id = ?1", [sandbox_id])?)
    }

    /// Removes rules whose sandbox is destroyed or unknown (start-up); returns how many.
    pub fn delete_orphaned_publish_rules(&mut self) -> Result<usize> {
        Ok(self.conn.execute(
            "DELETE FROM publish_rules WHERE sandbox_id IN \
             (SELECT id FROM sandboxes WHERE status IN ('destroyed', 'unknown'))",
            [],
        )?)
    }
}
