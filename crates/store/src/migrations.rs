//! Versioned schema migrations: an ordered table of SQL scripts and the schema version in
//! SQLite's `user_version` header field.
//!
//! Each script runs in its own `BEGIN IMMEDIATE` transaction together with the version bump, so
//! a crash mid-migration leaves the previous version intact and the next open runs the script
//! again from the start. The version is read again inside the transaction: a CLI and a daemon
//! opening the same file at once migrate it once. A database newer than this binary is refused
//! rather than written to (v1 ran every `ALTER` at each open and ignored the errors).
//!
//! Adding a migration: append a script with the next version; never edit a released one.

use rusqlite::{Connection, TransactionBehavior};

use crate::error::{Resource, Result, StoreError};

/// One step of the schema.
#[derive(Debug)]
pub(crate) struct Migration {
    /// The schema version after this script.
    pub version: u32,
    /// What it does, for logs.
    pub name: &'static str,
    /// The SQL.
    pub sql: &'static str,
}

/// Every migration, in order; versions are 1, 2, 3, ... without gaps.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "initial", sql: include_str!("schema/001_initial.sql") },
    Migration {
        version: 2,
        name: "tasks and events",
        sql: include_str!("schema/002_tasks_events.sql"),
    },
    Migration {
        version: 3,
        name: "pending transitions",
        sql: include_str!("schema/003_transitions.sql"),
    },
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// The schema version of an open database.
pub(crate) fn version(conn: &Connection) -> Result<u32> {
    let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    u32::try_from(v).map_err(|_| StoreError::Invalid(format!("bad schema version {v}")))
}

/// Brings the database to [`SCHEMA_VERSION`]; returns the versions applied.
pub(crate) fn migrate(conn: &mut Connection) -> Result<Vec<u32>> {
    migrate_to(conn, SCHEMA_VERSION)
}

/// Brings the database to `target` (tests build every earlier version with this).
pub(crate) fn migrate_to(conn: &mut Connection, target: u32) -> Result<Vec<u32>> {
    let mut applied = Vec::new();
    let current = version(conn)?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::Invalid(format!(
            "database schema version {current} is newer than this bhatti understands \
             ({SCHEMA_VERSION}); upgrade bhatti"
        )));
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > current && m.version <= target) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Another process may have migrated while we waited for the write lock.
        if version(&tx)? >= m.version {
            continue;
        }
        tx.execute_batch(m.sql).map_err(|e| {
            StoreError::corrupt(
                Resource::Schema,
                m.version.to_string(),
                format!("migration {:?} failed: {e}", m.name),
            )
        })?;
        // user_version is part of the database header, so it commits with the script.
        tx.pragma_update(None, "user_version", m.version)?;
        tx.commit()?;
        applied.push(m.version);
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_dense_and_ordered() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "migration {:?}", m.name);
        }
    }

    #[test]
    fn migrates_an_empty_database_and_is_idempotent() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(version(&conn).unwrap(), 0);
        assert_eq!(migrate(&mut conn).unwrap(), (1..=SCHEMA_VERSION).collect::<Vec<_>>());
        assert_eq!(version(&conn).unwrap(), SCHEMA_VERSION);
        assert!(migrate(&mut conn).unwrap().is_empty(), "second run applies nothing");
    }

    #[test]
    fn refuses_a_newer_database() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        let err = migrate(&mut conn).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Invalid);
        assert!(err.to_string().contains("newer"), "{err}");
    }

    #[test]
    fn a_failing_script_leaves_the_previous_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate_to(&mut conn, 1).unwrap();
        // Simulate a half-applied v2 (a table v2 creates already exists): v2 fails as a whole.
        conn.execute_batch("CREATE TABLE tasks (x INTEGER)").unwrap();
        assert!(migrate(&mut conn).is_err());
        assert_eq!(version(&conn).unwrap(), 1, "the version bump rolled back with the script");
        let events: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_schema WHERE name = 'events'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(events, 0, "nothing of the failed script is visible");
    }
}
