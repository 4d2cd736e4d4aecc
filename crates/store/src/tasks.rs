//! Background tasks (image pulls): progress and result, per owner.

use rusqlite::{OptionalExtension, Row, params};

use crate::db::Store;
use crate::error::{Resource, Result, StoreError};
use crate::types::{Timestamp, new_id};

/// A task's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    /// Still going.
    Running,
    /// Done, with a result.
    Completed,
    /// Done, with an error.
    Failed,
}

impl TaskStatus {
    fn parse(s: &str) -> Self {
        // The column's CHECK allows only these three.
        match s {
            "completed" => TaskStatus::Completed,
            "failed" => TaskStatus::Failed,
            _ => TaskStatus::Running,
        }
    }
}

/// A task row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// `task_` + 16 hex.
    pub id: String,
    /// Owner.
    pub owner: String,
    /// Kind, e.g. `image_pull`.
    pub kind: String,
    /// State.
    pub status: TaskStatus,
    /// Progress text.
    pub progress: String,
    /// Result JSON when completed.
    pub result: Option<String>,
    /// Error when failed.
    pub error: Option<String>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Completion time.
    pub completed_at: Option<Timestamp>,
}

const COLS: &str = "id, owner, kind, status, progress, result, error, created_at, completed_at";

fn row(r: &Row<'_>) -> rusqlite::Result<Task> {
    Ok(Task {
        id: r.get(0)?,
        owner: r.get(1)?,
        kind: r.get(2)?,
        status: TaskStatus::parse(&r.get::<_, String>(3)?),
        progress: r.get(4)?,
        result: r.get(5)?,
        error: r.get(6)?,
        created_at: r.get(7)?,
        completed_at: r.get(8)?,
    })
}

impl Store {
    /// Starts a task.
    pub fn create_task(&mut self, owner: &str, kind: &str) -> Result<Task> {
        let id = new_id("task_")?;
        self.conn.execute(
            "INSERT INTO tasks (id, owner, kind, status, created_at) VALUES (?1, ?2, ?3, 'running', ?4)",
            params![id, owner, kind, Timestamp::now()],
        )?;
        self.task_by_id(&id)
    }

    /// The owner's task.
    pub fn task(&self, owner: &str, id: &str) -> Result<Task> {
        self.conn
            .query_row(
                &format!("SELECT {COLS} FROM tasks WHERE id = ?1 AND owner = ?2"),
                [id, owner],
                row,
            )
            .optional()?
            .ok_or_else(|| StoreError::not_found(Resource::Task, id))
    }

    fn task_by_id(&self, id: &str) -> Result<Task> {
        self.conn
            .query_row(&format!("SELECT {COLS} FROM tasks WHERE id = ?1"), [id], row)
            .optional()?
            .ok_or_else(|| StoreError::not_found(Resource::Task, id))
    }

    /// Updates a running task's progress text.
    pub fn set_task_progress(&mut self, id: &str, progress: &str) -> Result<()> {
        self.finish_or_update(id, "progress = ?2", params![id, progress])
    }

    /// Completes a running task with a JSON result.
    pub fn complete_task(&mut self, id: &str, result_json: &str) -> Result<()> {
        self.finish_or_update(
            id,
            "status = 'completed', result = ?2, completed_at = ?3",
            params![id, result_json, Timestamp::now()],
        )
    }

    /// Fails a running task.
    pub fn fail_task(&mut self, id: &str, error: &str) -> Result<()> {
        self.finish_or_update(
            id,
            "status = 'failed', error = ?2, completed_at = ?3",
            params![id, error, Timestamp::now()],
        )
    }

    fn finish_or_update(&mut self, id: &str, set: &str, p: impl rusqlite::Params) -> Result<()> {
        let n = self
            .conn
            .execute(&format!("UPDATE tasks SET {set} WHERE id = ?1 AND status = 'running'"), p)?;
        if n == 0 {
            // Either missing or already finished: tell which.
            let t = self.task_by_id(id)?;
            return Err(StoreError::conflict(
                Resource::Task,
                id,
                format!("is already {:?}", t.status),
            ));
        }
        Ok(())
    }

    /// Fails every task still running with `error` (a daemon restart: their jobs died with
    /// the process); returns how many.
    pub fn fail_running_tasks(&mut self, error: &str) -> Result<usize> {
        Ok(self.conn.execute(
            "UPDATE tasks SET status = 'failed', error = ?1, completed_at = ?2 \
             WHERE status = 'running'",
            params![error, Timestamp::now()],
        )?)
    }

    /// Deletes finished tasks completed before `before`; returns how many.
    pub fn purge_tasks(&mut self, before: Timestamp) -> Result<usize> {
        Ok(self.conn.execute(
            "DELETE FROM tasks WHERE status != 'running' AND completed_at < ?1",
            [before],
        )?)
    }
}
