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
    Migration {
        version: 4,
        name: "volume backups",
        sql: include_str!("schema/004_volume_backups.sql"),
    },
    Migration {
        version: 5,
        name: "metrics snapshots",
        sql: include_str!("schema/005_metrics.sql"),
    },
    Migration {
        version: 6,
        name: "stopped by its user",
        sql: include_str!("schema/006_user_stopped.sql"),
    },
    Migration {
        version: 7,
        name: "egress policies",
        sql: include_str!("schema/007_net_policy.sql"),
    },
    Migration {
        version: 8,
        name: "disk and exec quotas, sealed secret env",
        sql: include_str!("schema/008_tenancy.sql"),
    },
    Migration { version: 9, name: "e2b sandboxes", sql: include_str!("schema/009_e2b.sql") },
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

    /// Rows a database of schema `version` could hold.
    fn seed(conn: &Connection, version: u32) {
        if version >= 1 {
            conn.execute_batch(
                "INSERT INTO users (id, name, api_key_hash, max_sandboxes, max_cpus_per_sandbox,
                     max_memory_mb_per_sandbox, max_volume_storage_mb, max_images, max_snapshots,
                     subnet_index, created_at)
                     VALUES ('usr_1', 'alice', 'hash', 5, 4, 4096, 20480, 10, 5, 1, 0);
                 INSERT INTO sandboxes (id, owner, name, status, image, cpus, memory_mb,
                     disk_size_mb, created_at, updated_at)
                     VALUES ('sb1', 'usr_1', 'dev', 'running', 'minimal', 1, 1024, 0, 0, 0);
                 INSERT INTO volumes (id, owner, name, size_mb, file_path, status, created_at)
                     VALUES ('vol_1', 'usr_1', 'data', 10, '/v', 'ready', 0);
                 INSERT INTO volume_attachments VALUES ('vol_1', 'sb1', '/data', 0, 0);",
            )
            .unwrap();
        }
        if version >= 2 {
            conn.execute_batch(
                "INSERT INTO tasks (id, owner, kind, status, created_at)
                     VALUES ('task_1', 'usr_1', 'image_pull', 'running', 0);
                 INSERT INTO events (ts, type) VALUES (0, 'sandbox.created');",
            )
            .unwrap();
        }
        if version >= 4 {
            conn.execute_batch(
                "INSERT INTO volume_backups VALUES ('bkp_0', 'usr_1', 'data', 'k0', 1, '', 0);",
            )
            .unwrap();
        }
        if version >= 3 {
            conn.execute_batch(
                "INSERT INTO transitions (sandbox_id, intent, started_at) VALUES ('sb1', 'stop', 0);",
            )
            .unwrap();
        }
    }

    fn count(conn: &Connection, table: &str) -> i64 {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn migrates_from_every_earlier_version_keeping_the_data() {
        for from in 0..SCHEMA_VERSION {
            let mut conn = Connection::open_in_memory().unwrap();
            conn.pragma_update(None, "foreign_keys", "ON").unwrap();
            migrate_to(&mut conn, from).unwrap();
            assert_eq!(version(&conn).unwrap(), from);
            seed(&conn, from);
            let applied = migrate(&mut conn).unwrap();
            assert_eq!(applied, (from + 1..=SCHEMA_VERSION).collect::<Vec<_>>(), "from {from}");
            for table in ["users", "sandboxes", "volumes", "volume_attachments"] {
                assert_eq!(count(&conn, table), i64::from(from >= 1), "{table} from v{from}");
            }
            for table in ["tasks", "events"] {
                assert_eq!(count(&conn, table), i64::from(from >= 2), "{table} from v{from}");
            }
            assert_eq!(count(&conn, "transitions"), i64::from(from >= 3), "from v{from}");
            assert_eq!(count(&conn, "volume_backups"), i64::from(from >= 4), "from v{from}");
            if from >= 1 {
                // A sandbox made before policies reads as `public` with no rules, as it ran.
                let policy: String = conn
                    .query_row("SELECT net_policy FROM sandboxes WHERE id = 'sb1'", [], |r| {
                        r.get(0)
                    })
                    .unwrap();
                let policy: bhatti_core::NetPolicy = serde_json::from_str(&policy).unwrap();
                assert_eq!(policy, bhatti_core::NetPolicy::default(), "from v{from}");
            }
            // The latest schema works on the migrated data.
            if from >= 1 {
                conn.execute(
                    "INSERT INTO volume_backups VALUES ('bkp_1', 'usr_1', 'data', 'k', 1, '', 0)",
                    [],
                )
                .unwrap();
            }
            conn.execute(
                "INSERT INTO metrics_snapshots (ts, api_requests, api_errors, \
                api_auth_failures, api_rate_limited, proxy_requests, proxy_errors, \
                proxy_cold_wakes, proxy_rate_limited, events_dropped, sandboxes_total, \
                sandboxes_hot, sandboxes_warm, sandboxes_cold, users_total, users_active, \
                websockets_active, host_mem_total_mb, host_mem_avail_mb, host_load_1m) \
                VALUES (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0.5)",
                [],
            )
            .unwrap();
            let fk_problems: i64 = conn
                .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| r.get(0))
                .unwrap();
            assert_eq!(fk_problems, 0, "from v{from}");
        }
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
