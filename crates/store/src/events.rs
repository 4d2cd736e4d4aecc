//! The event log: what happened, to whom, when. Appended in batches by the daemon's recorder.

use rusqlite::params_from_iter;
use rusqlite::types::Value;

use crate::db::Store;
use crate::error::{Result, StoreError};
use crate::types::Timestamp;

/// An event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// When it happened.
    pub ts: Timestamp,
    /// Type, e.g. `sandbox.created`.
    pub kind: String,
    /// User, empty if none.
    pub user_id: String,
    /// Sandbox, empty if none.
    pub sandbox_id: String,
    /// Details, a JSON object as text (`{}` if empty). Never secrets or tokens.
    pub meta: String,
}

impl NewEvent {
    /// An event of `kind` now, with no user, sandbox or details.
    pub fn now(kind: impl Into<String>) -> Self {
        NewEvent {
            ts: Timestamp::now(),
            kind: kind.into(),
            user_id: String::new(),
            sandbox_id: String::new(),
            meta: "{}".into(),
        }
    }
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Sequence number.
    pub id: i64,
    /// The event.
    pub event: NewEvent,
}

/// A filter over the log (all given fields must match).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// A type with a `.` matches exactly; without, it matches itself and `<it>.*`.
    pub kind: Option<String>,
    /// User.
    pub user_id: Option<String>,
    /// Sandbox.
    pub sandbox_id: Option<String>,
    /// At or after.
    pub since: Option<Timestamp>,
    /// At most this many, newest first (default 50).
    pub limit: Option<u32>,
}

impl EventQuery {
    fn where_clause(&self) -> (String, Vec<Value>) {
        let mut conds = Vec::new();
        let mut args: Vec<Value> = Vec::new();
        if let Some(kind) = &self.kind {
            args.push(Value::Text(kind.clone()));
            let n = args.len();
            if kind.contains('.') {
                conds.push(format!("type = ?{n}"));
            } else {
                // A prefix compare that needs no LIKE escaping.
                conds.push(format!(
                    "(type = ?{n} OR substr(type, 1, length(?{n}) + 1) = ?{n} || '.')"
                ));
            }
        }
        for (col, v) in [("user_id", &self.user_id), ("sandbox_id", &self.sandbox_id)] {
            if let Some(v) = v {
                args.push(Value::Text(v.clone()));
                conds.push(format!("{col} = ?{}", args.len()));
            }
        }
        if let Some(since) = self.since {
            args.push(Value::Integer(since.0));
            conds.push(format!("ts >= ?{}", args.len()));
        }
        let clause =
            if conds.is_empty() { String::new() } else { format!("WHERE {}", conds.join(" AND ")) };
        (clause, args)
    }
}

impl Store {
    /// Appends events in one transaction: all of them or none.
    pub fn record_events(&mut self, events: &[NewEvent]) -> Result<()> {
        let tx = self.write_tx()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO events (ts, type, user_id, sandbox_id, meta) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for e in events {
                if e.kind.is_empty() {
                    return Err(StoreError::Invalid("event type is empty".into()));
                }
                let meta = if e.meta.is_empty() { "{}" } else { e.meta.as_str() };
                stmt.execute(rusqlite::params![e.ts, e.kind, e.user_id, e.sandbox_id, meta])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Events matching `q`, newest first.
    pub fn query_events(&self, q: &EventQuery) -> Result<Vec<Event>> {
        let (clause, mut args) = q.where_clause();
        args.push(Value::Integer(i64::from(q.limit.unwrap_or(50))));
        let sql = format!(
            "SELECT id, ts, type, user_id, sandbox_id, meta FROM events {clause} \
             ORDER BY ts DESC, id DESC LIMIT ?{}",
            args.len()
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(params_from_iter(args), |r| {
            Ok(Event {
                id: r.get(0)?,
                event: NewEvent {
                    ts: r.get(1)?,
                    kind: r.get(2)?,
                    user_id: r.get(3)?,
                    sandbox_id: r.get(4)?,
                    meta: r.get(5)?,
                },
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// How many events match `q` (its limit ignored).
    pub fn count_events(&self, q: &EventQuery) -> Result<u64> {
        let (clause, args) = q.where_clause();
        let n: i64 = self.conn.query_row(
            &format!("SELECT count(*) FROM events {clause}"),
            params_from_iter(args),
            |r| r.get(0),
        )?;
        Ok(n.unsigned_abs())
    }

    /// Deletes events older than `before` (retention); returns how many.
    pub fn purge_events(&mut self, before: Timestamp) -> Result<usize> {
        Ok(self.conn.execute("DELETE FROM events WHERE ts < ?1", [before])?)
    }
}
