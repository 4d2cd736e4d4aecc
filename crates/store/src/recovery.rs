//! What to do with each sandbox when the daemon starts: a pure decision over the stored rows
//! and the engine's records (host.md 4.6, step 5), then one transaction that writes it.
//!
//! | stored status | pending intent | engine record            | decision                       |
//! |---------------|----------------|--------------------------|--------------------------------|
//! | destroyed     | any            | any                      | skip                           |
//! | any           | destroy        | any                      | finish the destroy (destroyed) |
//! | creating      | any            | any                      | abandon the create (destroyed) |
//! | any           | create         | any                      | abandon the create (destroyed) |
//! | unknown       | -              | any                      | skip (not loaded, as v1)       |
//! | running/stopped | -            | none (another engine)    | skip                           |
//! | running/stopped | -            | does not decode          | unknown; the others go on      |
//! | stopped       | -              | snapshot                 | restore, stays stopped         |
//! | stopped       | -              | no snapshot              | unknown                        |
//! | running       | -              | snapshot                 | restore, marked stopped        |
//! | running       | -              | no snapshot              | unknown                        |
//!
//! Any other pending intent (stop, start, pause, wake, checkpoint) was interrupted by the
//! crash: the row is decided by the rules above on the record written before that transition
//! (the only one known to be complete), and the outcome names the intent so the daemon reports
//! it. Restored sandboxes come back cold, whatever the record said.

use bhatti_core::{SandboxRecord, Thermal};
use rusqlite::params;

use crate::db::Store;
use crate::error::Result;
use crate::record::StoredRecord;
use crate::sandboxes::{Change, apply_change};
use crate::types::Status;

/// One sandbox as recovery sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecoveryInput {
    /// Sandbox ID.
    pub id: String,
    /// Owner.
    pub owner: String,
    /// Status as stored.
    pub status: Status,
    /// The engine's record, if any.
    pub record: Option<StoredRecord>,
    /// The pending transition, if a crash interrupted one: its row and its stored intent text
    /// (kept as text so an unreadable intent does not stop recovery).
    pub pending: Option<(i64, String)>,
}

/// Why a sandbox is left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Destroyed rows are history.
    Destroyed,
    /// Already unknown: nothing to load.
    AlreadyUnknown,
    /// No record: the sandbox belongs to another engine (or never reached the engine).
    NoEngineState,
}

/// Why a sandbox is marked unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnknownReason {
    /// No saved state to restore from.
    NoSnapshot,
    /// The record does not decode (the message from the decoder).
    MalformedRecord(String),
}

/// The decision for one sandbox.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Hand the record to the engine; the sandbox comes back cold. `mark_stopped` when it was
    /// stored as running (its VM died with the daemon).
    Restore {
        /// The decoded record.
        record: Box<SandboxRecord>,
        /// Status changes from running to stopped.
        mark_stopped: bool,
    },
    /// Status becomes unknown.
    MarkUnknown(UnknownReason),
    /// A destroy was interrupted: status becomes destroyed (the engine, given no record for
    /// it, removes what is left of the VM as an orphan).
    FinishDestroy,
    /// A create was interrupted: its VM never answered its caller, so the row is given up
    /// (status destroyed: the name and the quota slot are free again, and no row is left that
    /// `GET` shows but `exec` and `start` call missing); the engine removes what is left of the
    /// VM as an orphan.
    AbandonCreate,
    /// Left as it is.
    Skip(SkipReason),
}

/// The decision for one sandbox, with what it was decided on.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Sandbox ID.
    pub id: String,
    /// Owner.
    pub owner: String,
    /// Status before recovery.
    pub status: Status,
    /// The intent a crash interrupted, as stored.
    pub interrupted: Option<String>,
    /// What to do.
    pub decision: Decision,
}

/// The decisions for every sandbox.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RecoveryPlan {
    /// One per input, in input order.
    pub outcomes: Vec<Outcome>,
    /// Pending transitions to clear (row IDs).
    transitions: Vec<i64>,
}

impl RecoveryPlan {
    /// The records to hand to the engine (`new_recovering`), with their sandbox IDs.
    pub fn records(&self) -> Vec<(String, SandboxRecord)> {
        self.outcomes
            .iter()
            .filter_map(|o| match &o.decision {
                Decision::Restore { record, .. } => Some((o.id.clone(), (**record).clone())),
                _ => None,
            })
            .collect()
    }

    /// Sandboxes whose transition a crash interrupted, with the intent.
    pub fn interrupted(&self) -> Vec<(&str, &str)> {
        self.outcomes
            .iter()
            .filter_map(|o| o.interrupted.as_deref().map(|i| (o.id.as_str(), i)))
            .collect()
    }

    /// The outcome of one sandbox.
    pub fn outcome(&self, id: &str) -> Option<&Outcome> {
        self.outcomes.iter().find(|o| o.id == id)
    }
}

/// Decides every sandbox. Pure: no database, no files, no engine.
pub fn plan(inputs: Vec<RecoveryInput>) -> RecoveryPlan {
    let mut transitions = Vec::new();
    let outcomes = inputs
        .into_iter()
        .map(|input| {
            let interrupted = input.pending.as_ref().map(|(_, intent)| intent.clone());
            if let Some((id, _)) = &input.pending {
                transitions.push(*id);
            }
            Outcome {
                decision: decide(&input),
                id: input.id,
                owner: input.owner,
                status: input.status,
                interrupted,
            }
        })
        .collect();
    RecoveryPlan { outcomes, transitions }
}

fn decide(input: &RecoveryInput) -> Decision {
    let pending = input.pending.as_ref().map(|(_, intent)| intent.as_str());
    match (input.status, pending) {
        (Status::Destroyed, _) => return Decision::Skip(SkipReason::Destroyed),
        (_, Some("destroy")) => return Decision::FinishDestroy,
        (Status::Creating, _) | (_, Some("create")) => return Decision::AbandonCreate,
        (Status::Unknown, _) => return Decision::Skip(SkipReason::AlreadyUnknown),
        (Status::Running | Status::Stopped, _) => {}
    }
    let Some(stored) = &input.record else {
        return Decision::Skip(SkipReason::NoEngineState);
    };
    let record = match stored.decode() {
        Ok(r) => r,
        Err(e) => return Decision::MarkUnknown(UnknownReason::MalformedRecord(e.0)),
    };
    if !record.snapshot {
        return Decision::MarkUnknown(UnknownReason::NoSnapshot);
    }
    Decision::Restore { record: Box::new(record), mark_stopped: input.status == Status::Running }
}

impl Store {
    /// Every sandbox with its record and pending transition, oldest first.
    pub fn recovery_inputs(&self) -> Result<Vec<RecoveryInput>> {
        let mut stmt = self.conn.prepare(
            "SELECT s.id, s.owner, s.status, s.record, t.id, t.intent FROM sandboxes s \
             LEFT JOIN transitions t ON t.sandbox_id = s.id ORDER BY s.created_at, s.rowid",
        )?;
        let rows = stmt.query_map([], |r| {
            let pending = match r.get::<_, Option<i64>>(4)? {
                Some(t) => Some((t, r.get::<_, String>(5)?)),
                None => None,
            };
            Ok(RecoveryInput {
                id: r.get(0)?,
                owner: r.get(1)?,
                status: crate::types::status_col(r, 2)?,
                record: r.get::<_, Option<String>>(3)?.map(StoredRecord),
                pending,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Writes a plan in one transaction: statuses, cold thermal state of restored sandboxes,
    /// and the interrupted transitions cleared. A row whose status changed since the plan was
    /// made (another process) is left alone.
    pub fn apply_recovery(&mut self, plan: &RecoveryPlan) -> Result<()> {
        let tx = self.write_tx()?;
        for o in &plan.outcomes {
            let status = match &o.decision {
                Decision::Restore { mark_stopped: true, .. } => Some(Status::Stopped),
                Decision::Restore { mark_stopped: false, .. } => None,
                Decision::MarkUnknown(_) => Some(Status::Unknown),
                Decision::FinishDestroy | Decision::AbandonCreate => Some(Status::Destroyed),
                Decision::Skip(_) => continue,
            };
            let still: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM sandboxes WHERE id = ?1 AND status = ?2)",
                params![o.id, o.status.as_str()],
                |r| r.get(0),
            )?;
            if !still {
                continue;
            }
            let thermal = matches!(o.decision, Decision::Restore { .. }).then_some(Thermal::Cold);
            apply_change(&tx, &o.id, &Change { status, thermal, ..Change::default() })?;
        }
        for t in &plan.transitions {
            tx.execute("DELETE FROM transitions WHERE id = ?1", [t])?;
        }
        tx.commit()?;
        Ok(())
    }
}
