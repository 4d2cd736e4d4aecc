//! Sandboxes: identity, ownership, name resolution, status, labels, the egress policy, the
//! engine's record and the web-shell token hash.
//!
//! Every lookup that takes an owner sees only that owner's rows: another owner's sandbox is
//! "not found", never "forbidden", so IDs cannot be probed.

use std::collections::BTreeMap;

use bhatti_core::{NetPolicy, SandboxRecord, Thermal};
use rusqlite::{OptionalExtension, Row, params};

use crate::db::Store;
use crate::error::{Resource, Result, StoreError};
use crate::record::StoredRecord;
use crate::types::{
    Status, Timestamp, constant_time_eq, f64_col, json_col, new_id, sha256_hex, status_col,
    to_json, u32_col,
};

/// The shortest ID prefix [`Store::resolve_sandbox`] accepts (shorter ones match too much).
pub const MIN_ID_PREFIX: usize = 4;

/// A sandbox row.
#[derive(Debug, Clone, PartialEq)]
pub struct Sandbox {
    /// 16 hex chars; also the engine's opaque ID.
    pub id: String,
    /// Owner (user ID).
    pub owner: String,
    /// Name, unique per owner among live rows.
    pub name: String,
    /// The store's status.
    pub status: Status,
    /// The engine's thermal state when last told.
    pub thermal: Option<Thermal>,
    /// Template it was made from.
    pub template_id: Option<String>,
    /// Image name.
    pub image: String,
    /// vCPUs as requested (a float, as in v1's API).
    pub cpus: f64,
    /// Memory, MiB.
    pub memory_mb: u32,
    /// Disk size, MiB (0 = the image's).
    pub disk_size_mb: u32,
    /// Guest address.
    pub ip: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Never cooled by the thermal manager.
    pub keep_hot: bool,
    /// Stopped by its user (`POST /stop`): stays stopped until `start`, where a sandbox the
    /// thermal manager put to sleep wakes on the next request.
    pub user_stopped: bool,
    /// Egress policy as the API spells it (`public` with no rules for rows made before
    /// policies).
    pub net_policy: NetPolicy,
    /// The engine's last record (None until the engine wrote one, or for another engine).
    pub record: Option<StoredRecord>,
    /// Whether a web-shell token is set (the hash itself never leaves the store).
    pub has_shell_token: bool,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
    /// Last stop.
    pub stopped_at: Option<Timestamp>,
}

/// What a new sandbox is asked to be.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSandbox {
    /// Owner (user ID).
    pub owner: String,
    /// Name.
    pub name: String,
    /// Template it is made from.
    pub template_id: Option<String>,
    /// Image name.
    pub image: String,
    /// vCPUs.
    pub cpus: f64,
    /// Memory, MiB.
    pub memory_mb: u32,
    /// Disk size, MiB.
    pub disk_size_mb: u32,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Keep hot.
    pub keep_hot: bool,
    /// Egress policy (checked and normalised by the caller).
    pub net_policy: NetPolicy,
}

/// A change of a sandbox's runtime state; `None` fields are left as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct Change<'a> {
    /// New status (`stopped` also sets `stopped_at`).
    pub status: Option<Status>,
    /// New thermal state.
    pub thermal: Option<Thermal>,
    /// New guest address.
    pub ip: Option<&'a str>,
    /// The engine's new record.
    pub record: Option<&'a SandboxRecord>,
    /// Whether its user stopped it (set by a user's stop, cleared by a start or a wake).
    pub user_stopped: Option<bool>,
}

pub(crate) const SB_COLS: &str = "id, owner, name, status, thermal, template_id, image, cpus, \
    memory_mb, disk_size_mb, ip, labels, keep_hot, record, shell_token_hash IS NOT NULL, \
    created_at, updated_at, stopped_at, user_stopped, net_policy";

/// Raw row: JSON columns are decoded after the query so a bad one is a typed error.
struct RawSandbox {
    sandbox: Sandbox,
    labels: String,
    thermal: Option<String>,
    net_policy: String,
}

fn raw_row(r: &Row<'_>) -> rusqlite::Result<RawSandbox> {
    Ok(RawSandbox {
        sandbox: Sandbox {
            id: r.get(0)?,
            owner: r.get(1)?,
            name: r.get(2)?,
            status: status_col(r, 3)?,
            thermal: None,
            template_id: r.get(5)?,
            image: r.get(6)?,
            cpus: f64_col(r, 7)?,
            memory_mb: u32_col(r, 8)?,
            disk_size_mb: u32_col(r, 9)?,
            ip: r.get(10)?,
            labels: BTreeMap::new(),
            keep_hot: r.get(12)?,
            record: r.get::<_, Option<String>>(13)?.map(StoredRecord),
            has_shell_token: r.get(14)?,
            created_at: r.get(15)?,
            updated_at: r.get(16)?,
            stopped_at: r.get(17)?,
            user_stopped: r.get(18)?,
            net_policy: NetPolicy::default(),
        },
        labels: r.get(11)?,
        thermal: r.get(4)?,
        net_policy: r.get(19)?,
    })
}

fn finish(raw: RawSandbox) -> Result<Sandbox> {
    let mut s = raw.sandbox;
    s.labels = json_col(Resource::Sandbox, &s.id, &raw.labels)?;
    s.net_policy = json_col(Resource::Sandbox, &s.id, &raw.net_policy)?;
    s.thermal = match raw.thermal.as_deref() {
        None => None,
        Some(t) => Some(Thermal::parse(t).ok_or_else(|| {
            StoreError::corrupt(Resource::Sandbox, &s.id, format!("bad thermal state {t:?}"))
        })?),
    };
    Ok(s)
}

/// Runs a query returning sandbox rows.
pub(crate) fn query_sandboxes(
    conn: &rusqlite::Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Sandbox>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let raws = stmt.query_map(params, raw_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
    raws.into_iter().map(finish).collect()
}

fn one(rows: Vec<Sandbox>) -> Option<Sandbox> {
    rows.into_iter().next()
}

impl Store {
    /// Inserts a sandbox in status `creating`, taking its name. Refused when the owner is
    /// unknown, the name is in use by a live sandbox of the owner (conflict), or the owner's
    /// `max_sandboxes` live sandboxes exist (limit), all checked in one transaction.
    pub fn create_sandbox(&mut self, new: &NewSandbox) -> Result<Sandbox> {
        if new.name.is_empty() {
            return Err(StoreError::Invalid("sandbox name is empty".into()));
        }
        if !(new.cpus > 0.0 && new.cpus.is_finite()) {
            return Err(StoreError::Invalid(format!("cpus must be positive, got {}", new.cpus)));
        }
        let id = new_id("")?;
        let labels = to_json(&new.labels)?;
        let net_policy = to_json(&new.net_policy)?;
        let now = Timestamp::now();
        let tx = self.write_tx()?;
        let limits: Option<(i64, i64)> = tx
            .query_row(
                "SELECT max_sandboxes, max_disk_mb FROM users WHERE id = ?1",
                [&new.owner],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((max, max_disk)) = limits else {
            return Err(StoreError::not_found(Resource::User, &new.owner));
        };
        let live: i64 = tx.query_row(
            "SELECT count(*) FROM sandboxes WHERE owner = ?1 AND status != 'destroyed'",
            [&new.owner],
            |r| r.get(0),
        )?;
        if live >= max {
            return Err(StoreError::Limit {
                kind: Resource::Sandbox,
                used: live.unsigned_abs(),
                max: max.unsigned_abs(),
            });
        }
        // The disks of the owner's live sandboxes, this one included (a disk of the image's
        // own size, `0`, counts as nothing: images are small and shared).
        let disk_used: i64 = tx.query_row(
            "SELECT COALESCE(SUM(disk_size_mb), 0) FROM sandboxes \
             WHERE owner = ?1 AND status != 'destroyed'",
            [&new.owner],
            |r| r.get(0),
        )?;
        if disk_used + i64::from(new.disk_size_mb) > max_disk {
            return Err(StoreError::Quota {
                what: "disk",
                used_mb: disk_used.unsigned_abs(),
                max_mb: max_disk.unsigned_abs(),
            });
        }
        if name_taken(&tx, &new.owner, &new.name, None)? {
            return Err(StoreError::conflict(
                Resource::Sandbox,
                &new.name,
                "name is already in use",
            ));
        }
        tx.execute(
            "INSERT INTO sandboxes (id, owner, name, status, template_id, image, cpus, memory_mb, \
             disk_size_mb, labels, keep_hot, created_at, updated_at, net_policy) \
             VALUES (?1, ?2, ?3, 'creating', ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12)",
            params![
                id,
                new.owner,
                new.name,
                new.template_id,
                new.image,
                new.cpus,
                new.memory_mb,
                new.disk_size_mb,
                labels,
                new.keep_hot,
                now,
                net_policy
            ],
        )?;
        let sandbox = one(query_sandboxes(
            &tx,
            &format!("SELECT {SB_COLS} FROM sandboxes WHERE id = ?1"),
            [&id],
        )?)
        .ok_or_else(|| StoreError::not_found(Resource::Sandbox, &id))?;
        tx.commit()?;
        Ok(sandbox)
    }

    /// The owner's sandbox by exact ID (destroyed rows included: their status says so).
    pub fn sandbox(&self, owner: &str, id: &str) -> Result<Sandbox> {
        one(query_sandboxes(
            &self.conn,
            &format!("SELECT {SB_COLS} FROM sandboxes WHERE id = ?1 AND owner = ?2"),
            [id, owner],
        )?)
        .ok_or_else(|| StoreError::not_found(Resource::Sandbox, id))
    }

    /// Any owner's sandbox by exact ID (the daemon's own paths: recovery, engine events,
    /// the public proxy).
    pub fn sandbox_by_id(&self, id: &str) -> Result<Sandbox> {
        one(query_sandboxes(
            &self.conn,
            &format!("SELECT {SB_COLS} FROM sandboxes WHERE id = ?1"),
            [id],
        )?)
        .ok_or_else(|| StoreError::not_found(Resource::Sandbox, id))
    }

    /// Resolves what a user typed: the exact ID, else a live sandbox's name, else a unique ID
    /// prefix of at least [`MIN_ID_PREFIX`] chars among live sandboxes (for the CLI). Only the
    /// owner's rows are considered. An ambiguous prefix is a conflict naming the count.
    pub fn resolve_sandbox(&self, owner: &str, id_or_name: &str) -> Result<Sandbox> {
        let sql = format!(
            "SELECT {SB_COLS} FROM sandboxes WHERE owner = ?1 AND \
             (id = ?2 OR (name = ?2 AND status != 'destroyed')) ORDER BY id = ?2 DESC LIMIT 1"
        );
        if let Some(s) = one(query_sandboxes(&self.conn, &sql, [owner, id_or_name])?) {
            return Ok(s);
        }
        let is_hex = id_or_name.bytes().all(|b| b.is_ascii_hexdigit());
        if id_or_name.len() >= MIN_ID_PREFIX && is_hex {
            // Hex only, so the prefix has no LIKE wildcards; LIMIT 2 is enough to tell.
            let sql = format!(
                "SELECT {SB_COLS} FROM sandboxes WHERE owner = ?1 AND status != 'destroyed' \
                 AND id LIKE ?2 || '%' LIMIT 2"
            );
            let found = query_sandboxes(&self.conn, &sql, [owner, id_or_name])?;
            if found.len() > 1 {
                return Err(StoreError::conflict(
                    Resource::Sandbox,
                    id_or_name,
                    "ID prefix matches more than one sandbox",
                ));
            }
            if let Some(s) = one(found) {
                return Ok(s);
            }
        }
        Err(StoreError::not_found(Resource::Sandbox, id_or_name))
    }

    /// The owner's sandboxes, newest first, with every `(key, value)` of `labels` (AND).
    pub fn list_sandboxes(&self, owner: &str, labels: &[(String, String)]) -> Result<Vec<Sandbox>> {
        let all = query_sandboxes(
            &self.conn,
            &format!(
                "SELECT {SB_COLS} FROM sandboxes WHERE owner = ?1 \
                 ORDER BY created_at DESC, rowid DESC"
            ),
            [owner],
        )?;
        Ok(all
            .into_iter()
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
            .collect())
    }

    /// Every sandbox of every owner, oldest first (recovery, the thermal manager, admin).
    pub fn list_all_sandboxes(&self) -> Result<Vec<Sandbox>> {
        query_sandboxes(
            &self.conn,
            &format!("SELECT {SB_COLS} FROM sandboxes ORDER BY created_at, rowid"),
            [],
        )
    }

    /// Live (not destroyed) sandboxes of the owner.
    pub fn count_live_sandboxes(&self, owner: &str) -> Result<u32> {
        let n: i64 = self.conn.query_row(
            "SELECT count(*) FROM sandboxes WHERE owner = ?1 AND status != 'destroyed'",
            [owner],
            |r| r.get(0),
        )?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Applies a runtime change to a sandbox (not destroyed) by ID.
    pub fn update_sandbox(&mut self, id: &str, change: &Change<'_>) -> Result<()> {
        let tx = self.write_tx()?;
        apply_change(&tx, id, change)?;
        tx.commit()?;
        Ok(())
    }

    /// Sets the status (`stopped` also sets `stopped_at`).
    pub fn set_status(&mut self, id: &str, status: Status) -> Result<()> {
        self.update_sandbox(id, &Change { status: Some(status), ..Change::default() })
    }

    /// Stores the engine's record.
    pub fn set_record(&mut self, id: &str, record: &SandboxRecord) -> Result<()> {
        self.update_sandbox(id, &Change { record: Some(record), ..Change::default() })
    }

    /// Renames the owner's sandbox; the new name must be free among the owner's live rows.
    pub fn rename_sandbox(&mut self, owner: &str, id: &str, new_name: &str) -> Result<Sandbox> {
        if new_name.is_empty() {
            return Err(StoreError::Invalid("sandbox name is empty".into()));
        }
        let tx = self.write_tx()?;
        let current = one(query_sandboxes(
            &tx,
            &format!("SELECT {SB_COLS} FROM sandboxes WHERE id = ?1 AND owner = ?2"),
            [id, owner],
        )?)
        .ok_or_else(|| StoreError::not_found(Resource::Sandbox, id))?;
        if current.name == new_name {
            return Ok(current);
        }
        if name_taken(&tx, owner, new_name, Some(id))? {
            return Err(StoreError::conflict(
                Resource::Sandbox,
                new_name,
                "name is already in use",
            ));
        }
        tx.execute(
            "UPDATE sandboxes SET name = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, new_name, Timestamp::now()],
        )?;
        let s = reread(&tx, id)?;
        tx.commit()?;
        Ok(s)
    }

    /// Sets and removes labels of the owner's sandbox in one transaction; returns the labels.
    pub fn update_labels(
        &mut self,
        owner: &str,
        id: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<BTreeMap<String, String>> {
        let tx = self.write_tx()?;
        let mut s = one(query_sandboxes(
            &tx,
            &format!("SELECT {SB_COLS} FROM sandboxes WHERE id = ?1 AND owner = ?2"),
            [id, owner],
        )?)
        .ok_or_else(|| StoreError::not_found(Resource::Sandbox, id))?;
        if set.is_empty() && remove.is_empty() {
            return Ok(s.labels);
        }
        for k in remove {
            s.labels.remove(k);
        }
        s.labels.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
        tx.execute(
            "UPDATE sandboxes SET labels = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, to_json(&s.labels)?, Timestamp::now()],
        )?;
        tx.commit()?;
        Ok(s.labels)
    }

    /// Sets keep-hot on the owner's sandbox.
    pub fn set_keep_hot(&mut self, owner: &str, id: &str, keep_hot: bool) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE sandboxes SET keep_hot = ?3, updated_at = ?4 WHERE id = ?1 AND owner = ?2",
            params![id, owner, keep_hot, Timestamp::now()],
        )?;
        if n == 0 {
            return Err(StoreError::not_found(Resource::Sandbox, id));
        }
        Ok(())
    }

    /// Replaces the egress policy of the owner's live sandbox and returns the one it had (to
    /// put back if the engine refuses the new one). The engine's stored record gets the policy
    /// too, so a daemon restarted before the engine exports a new record restores the policy
    /// this row shows (a record that does not decode is left for recovery to judge).
    pub fn set_net_policy(
        &mut self,
        owner: &str,
        id: &str,
        policy: &NetPolicy,
    ) -> Result<NetPolicy> {
        let tx = self.write_tx()?;
        let current = one(query_sandboxes(
            &tx,
            &format!(
                "SELECT {SB_COLS} FROM sandboxes WHERE id = ?1 AND owner = ?2 \
                 AND status != 'destroyed'"
            ),
            [id, owner],
        )?)
        .ok_or_else(|| StoreError::not_found(Resource::Sandbox, id))?;
        let record = current.record.as_ref().and_then(|r| r.decode().ok()).map(|mut record| {
            record.net_policy = policy.clone();
            record.to_json()
        });
        tx.execute(
            "UPDATE sandboxes SET net_policy = ?2, record = COALESCE(?3, record), \
             updated_at = ?4 WHERE id = ?1",
            params![id, to_json(policy)?, record, Timestamp::now()],
        )?;
        tx.commit()?;
        Ok(current.net_policy)
    }

    /// Sets (rotates) or clears the web-shell token of the owner's sandbox; only its SHA-256
    /// is stored.
    pub fn set_shell_token(&mut self, owner: &str, id: &str, token: Option<&str>) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE sandboxes SET shell_token_hash = ?3, updated_at = ?4 \
             WHERE id = ?1 AND owner = ?2 AND status != 'destroyed'",
            params![id, owner, token.map(sha256_hex), Timestamp::now()],
        )?;
        if n == 0 {
            return Err(StoreError::not_found(Resource::Sandbox, id));
        }
        Ok(())
    }

    /// Whether `token` opens the web shell of sandbox `id`. A missing or destroyed sandbox, no
    /// token set and a wrong token all answer `false` alike (the web shell must not tell them
    /// apart); the hash comparison is constant-time.
    pub fn check_shell_token(&self, id: &str, token: &str) -> Result<bool> {
        let stored: Option<String> = self
            .conn
            .query_row(
                "SELECT shell_token_hash FROM sandboxes WHERE id = ?1 AND status != 'destroyed'",
                [id],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        Ok(stored.is_some_and(|h| constant_time_eq(&h, &sha256_hex(token))))
    }

    /// Marks a sandbox destroyed: its name is free again, the row stays for the record.
    pub fn mark_destroyed(&mut self, id: &str) -> Result<()> {
        self.set_status(id, Status::Destroyed)
    }

    /// Deletes the owner's sandbox row, with its attachments, publish rules and pending
    /// transition (foreign-key cascades, one statement).
    pub fn delete_sandbox(&mut self, owner: &str, id: &str) -> Result<()> {
        let n =
            self.conn.execute("DELETE FROM sandboxes WHERE id = ?1 AND owner = ?2", [id, owner])?;
        if n == 0 {
            return Err(StoreError::not_found(Resource::Sandbox, id));
        }
        Ok(())
    }

    /// Deletes any owner's sandbox row by ID (admin and daemon paths).
    pub fn delete_sandbox_by_id(&mut self, id: &str) -> Result<()> {
        let n = self.conn.execute("DELETE FROM sandboxes WHERE id = ?1", [id])?;
        if n == 0 {
            return Err(StoreError::not_found(Resource::Sandbox, id));
        }
        Ok(())
    }
}

/// Whether a live sandbox of `owner` other than `except` has `name`.
fn name_taken(
    tx: &rusqlite::Connection,
    owner: &str,
    name: &str,
    except: Option<&str>,
) -> Result<bool> {
    Ok(tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM sandboxes WHERE owner = ?1 AND name = ?2 \
         AND status != 'destroyed' AND id IS NOT ?3)",
        params![owner, name, except],
        |r| r.get(0),
    )?)
}

fn reread(conn: &rusqlite::Connection, id: &str) -> Result<Sandbox> {
    one(query_sandboxes(conn, &format!("SELECT {SB_COLS} FROM sandboxes WHERE id = ?1"), [id])?)
        .ok_or_else(|| StoreError::not_found(Resource::Sandbox, id))
}

/// Applies `change` inside the caller's transaction. A destroyed sandbox takes no change but
/// being destroyed again (a late engine event must not bring it back).
pub(crate) fn apply_change(
    conn: &rusqlite::Connection,
    id: &str,
    change: &Change<'_>,
) -> Result<()> {
    let status: Option<Status> = conn
        .query_row("SELECT status FROM sandboxes WHERE id = ?1", [id], |r| status_col(r, 0))
        .optional()?;
    match status {
        None => return Err(StoreError::not_found(Resource::Sandbox, id)),
        Some(Status::Destroyed) if change.status != Some(Status::Destroyed) => {
            return Err(StoreError::conflict(Resource::Sandbox, id, "is destroyed"));
        }
        Some(_) => {}
    }
    let now = Timestamp::now();
    let stopped_at = (change.status == Some(Status::Stopped)).then_some(now);
    conn.execute(
        "UPDATE sandboxes SET status = COALESCE(?2, status), thermal = COALESCE(?3, thermal), \
         ip = COALESCE(?4, ip), record = COALESCE(?5, record), \
         stopped_at = COALESCE(?6, stopped_at), updated_at = ?7, \
         user_stopped = COALESCE(?8, user_stopped) WHERE id = ?1",
        params![
            id,
            change.status.map(Status::as_str),
            change.thermal.map(Thermal::as_str),
            change.ip,
            change.record.map(SandboxRecord::to_json),
            stopped_at,
            now,
            change.user_stopped
        ],
    )?;
    Ok(())
}
