//! Sandboxes made through the E2B-compatible listener (issue 25): the envd token's digest,
//! E2B's metadata and the timeout's deadline, beside the sandbox's own row.

use rusqlite::{OptionalExtension, Row, params};

use crate::db::Store;
use crate::error::Result;
use crate::types::{constant_time_eq, sha256_hex};

/// One E2B sandbox's row.
#[derive(Clone, PartialEq, Eq)]
pub struct E2bSandbox {
    /// The bhatti sandbox.
    pub sandbox_id: String,
    /// Its owner (a user ID).
    pub owner: String,
    /// The `templateID` it was asked for.
    pub template_id: String,
    /// SHA-256 (hex) of its envd access token.
    pub token_sha256: String,
    /// The token sealed to the daemon's age key (the server seals and opens it).
    pub token_sealed: Vec<u8>,
    /// E2B's metadata, a JSON object of strings.
    pub metadata: String,
    /// Unix seconds.
    pub started_at: i64,
    /// The deadline, Unix seconds.
    pub end_at: i64,
    /// Paused (cold) at the deadline instead of destroyed.
    pub auto_pause: bool,
}

impl std::fmt::Debug for E2bSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E2bSandbox")
            .field("sandbox_id", &self.sandbox_id)
            .field("owner", &self.owner)
            .field("template_id", &self.template_id)
            .field("end_at", &self.end_at)
            .field("auto_pause", &self.auto_pause)
            .finish_non_exhaustive()
    }
}

impl E2bSandbox {
    /// Whether `token` is this sandbox's envd token (constant time over the digests).
    pub fn token_matches(&self, token: &str) -> bool {
        constant_time_eq(&sha256_hex(token), &self.token_sha256)
    }
}

const COLS: &str = "e.sandbox_id, e.owner, e.template_id, e.token_sha256, e.token_sealed, \
                    e.metadata, e.started_at, e.end_at, e.auto_pause";

fn row(r: &Row<'_>) -> rusqlite::Result<E2bSandbox> {
    Ok(E2bSandbox {
        sandbox_id: r.get(0)?,
        owner: r.get(1)?,
        template_id: r.get(2)?,
        token_sha256: r.get(3)?,
        token_sealed: r.get(4)?,
        metadata: r.get(5)?,
        started_at: r.get(6)?,
        end_at: r.get(7)?,
        auto_pause: r.get::<_, i64>(8)? != 0,
    })
}

fn live(
    conn: &rusqlite::Connection,
    tail: &str,
    p: impl rusqlite::Params,
) -> Result<Vec<E2bSandbox>> {
    let sql = format!(
        "SELECT {COLS} FROM e2b_sandboxes e JOIN sandboxes s ON s.id = e.sandbox_id \
         WHERE s.status != 'destroyed' {tail}"
    );
    let mut stmt = conn.prepare(&sql)?;
    Ok(stmt.query_map(p, row)?.collect::<rusqlite::Result<_>>()?)
}

impl Store {
    /// Records an E2B sandbox (its sandbox row exists already).
    pub fn insert_e2b_sandbox(&mut self, e: &E2bSandbox) -> Result<()> {
        let tx = self.write_tx()?;
        tx.execute(
            "INSERT INTO e2b_sandboxes (sandbox_id, owner, template_id, token_sha256, token_sealed, \
             metadata, started_at, end_at, auto_pause) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                e.sandbox_id,
                e.owner,
                e.template_id,
                e.token_sha256,
                e.token_sealed,
                e.metadata,
                e.started_at,
                e.end_at,
                i64::from(e.auto_pause)
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// A live E2B sandbox by its sandbox ID.
    pub fn e2b_sandbox(&self, sandbox_id: &str) -> Result<Option<E2bSandbox>> {
        let sql = format!(
            "SELECT {COLS} FROM e2b_sandboxes e JOIN sandboxes s ON s.id = e.sandbox_id \
             WHERE s.status != 'destroyed' AND e.sandbox_id = ?1"
        );
        Ok(self.conn.query_row(&sql, [sandbox_id], row).optional()?)
    }

    /// An owner's live E2B sandboxes, oldest first.
    pub fn e2b_sandboxes_of(&self, owner: &str) -> Result<Vec<E2bSandbox>> {
        live(&self.conn, "AND e.owner = ?1 ORDER BY e.started_at, e.sandbox_id", [owner])
    }

    /// Live E2B sandboxes whose deadline is at or before `now` (Unix seconds).
    pub fn e2b_sandboxes_due(&self, now: i64) -> Result<Vec<E2bSandbox>> {
        live(&self.conn, "AND e.end_at <= ?1 ORDER BY e.end_at", [now])
    }

    /// Moves a sandbox's deadline; false when it has no E2B row.
    pub fn set_e2b_deadline(&mut self, sandbox_id: &str, end_at: i64) -> Result<bool> {
        let tx = self.write_tx()?;
        let n = tx.execute(
            "UPDATE e2b_sandboxes SET end_at = ?2 WHERE sandbox_id = ?1",
            params![sandbox_id, end_at],
        )?;
        tx.commit()?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_token_digest() {
        let e = E2bSandbox {
            sandbox_id: "s".into(),
            owner: "u".into(),
            template_id: "base".into(),
            token_sha256: sha256_hex("tok"),
            token_sealed: vec![1, 2],
            metadata: "{}".into(),
            started_at: 1,
            end_at: 2,
            auto_pause: false,
        };
        assert!(!format!("{e:?}").contains(&e.token_sha256));
        assert!(e.token_matches("tok"));
        assert!(!e.token_matches("other"));
    }
}
