//! Write-ahead intents for sandbox transitions.
//!
//! The engine's side effects (boot a VM, save its memory, delete its files) cannot join a
//! database transaction, so the daemon brackets each one:
//!
//! ```text
//! begin_transition(sandbox, Stop)      -- committed before the side effect
//! engine.stop(...)                     -- the side effect
//! finish_transition(t, Change{..})     -- result + record + intent removal, one transaction
//! ```
//!
//! A crash between the two leaves the intent row, and recovery reports the sandbox as
//! interrupted instead of trusting a status that may be stale. One pending transition per
//! sandbox: the engine serializes a sandbox's operations, so a second `begin` while one is
//! pending is a conflict (an earlier crash, or a bug), never silently stacked.

use rusqlite::{OptionalExtension, params};

use crate::db::Store;
use crate::error::{Resource, Result, StoreError};
use crate::sandboxes::{Change, apply_change};
use crate::types::Timestamp;

pub use bhatti_core::Intent;

/// A begun transition, to be finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Its row.
    pub id: i64,
    /// The sandbox.
    pub sandbox_id: String,
    /// What it does.
    pub intent: Intent,
    /// When it began.
    pub started_at: Timestamp,
}

impl Store {
    /// Records the intent before the side effect. Conflict if one is already pending.
    pub fn begin_transition(&mut self, sandbox_id: &str, intent: Intent) -> Result<Transition> {
        let tx = self.write_tx()?;
        let status: Option<String> = tx
            .query_row("SELECT status FROM sandboxes WHERE id = ?1", [sandbox_id], |r| r.get(0))
            .optional()?;
        if status.is_none() {
            return Err(StoreError::not_found(Resource::Sandbox, sandbox_id));
        }
        let pending: Option<String> = tx
            .query_row("SELECT intent FROM transitions WHERE sandbox_id = ?1", [sandbox_id], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(p) = pending {
            return Err(StoreError::conflict(
                Resource::Sandbox,
                sandbox_id,
                format!("a {p} transition is pending"),
            ));
        }
        let now = Timestamp::now();
        tx.execute(
            "INSERT INTO transitions (sandbox_id, intent, started_at) VALUES (?1, ?2, ?3)",
            params![sandbox_id, intent.as_str(), now],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        Ok(Transition { id, sandbox_id: sandbox_id.to_owned(), intent, started_at: now })
    }

    /// Records the result after the side effect: applies `change` and removes the intent in
    /// one transaction (both or neither are visible). A transition recovery already cleared is
    /// "not found" and changes nothing.
    pub fn finish_transition(&mut self, t: &Transition, change: &Change<'_>) -> Result<()> {
        let tx = self.write_tx()?;
        let n = tx.execute("DELETE FROM transitions WHERE id = ?1", [t.id])?;
        if n == 0 {
            return Err(StoreError::not_found(Resource::Transition, t.id.to_string()));
        }
        apply_change(&tx, &t.sandbox_id, change)?;
        tx.commit()?;
        Ok(())
    }

    /// Every pending transition, oldest first.
    pub fn pending_transitions(&self) -> Result<Vec<Transition>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, sandbox_id, intent, started_at FROM transitions ORDER BY id")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get(3)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(id, sandbox_id, intent, started_at)| {
                let intent = Intent::parse(&intent).ok_or_else(|| {
                    StoreError::corrupt(
                        Resource::Transition,
                        id.to_string(),
                        format!("bad intent {intent:?}"),
                    )
                })?;
                Ok(Transition { id, sandbox_id, intent, started_at })
            })
            .collect()
    }
}
