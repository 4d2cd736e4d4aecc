//! bhatti's state: one embedded SQLite database, `<data_dir>/state.db`.
//!
//! [`Store`] is one connection (sync; the CLI uses it directly). [`AsyncStore`] is what the
//! daemon holds: its calls run on dedicated connection threads, never on the async runtime's
//! workers. No SQL exists outside this crate; rows and errors are typed ([`StoreError::kind`]
//! is what the server maps to a status).
//!
//! Start-up: [`Store::recovery_inputs`] -> [`recovery::plan`] (pure) ->
//! [`Store::apply_recovery`] -> the engine's `new_recovering` with [`RecoveryPlan::records`]
//! -> [`Store::clean_up_at_start`].

#![forbid(unsafe_code)]

mod async_store;
mod backups;
mod cleanup;
mod db;
mod e2b;
mod error;
mod events;
mod images;
mod metrics;
mod migrations;
mod publish;
mod record;
pub mod recovery;
mod sandboxes;
mod secrets;
mod snapshots;
mod tasks;
mod templates;
mod transitions;
mod types;
mod users;
mod volumes;

pub use async_store::AsyncStore;
pub use backups::VolumeBackup;
pub use cleanup::{CleanupReport, DataDirs};
pub use db::{Options, Store};
pub use e2b::E2bSandbox;
pub use error::{ErrorKind, Resource, Result, StoreError};
pub use events::{Event, EventQuery, NewEvent};
pub use images::{Image, NewImage};
pub use metrics::MetricsSnapshot;
pub use migrations::SCHEMA_VERSION;
pub use publish::PublishRule;
pub use record::{RecordError, StoredRecord};
pub use recovery::{Decision, Outcome, RecoveryInput, RecoveryPlan, SkipReason, UnknownReason};
pub use sandboxes::{Change, MIN_ID_PREFIX, NewSandbox, Sandbox};
pub use secrets::{Ciphertext, SecretInfo};
pub use snapshots::Snapshot;
pub use tasks::{Task, TaskStatus};
pub use templates::{NewTemplate, Template, TemplateMount};
pub use transitions::{Intent, Transition};
pub use types::{Status, Timestamp, sha256_hex};
pub use users::{ApiKey, Quotas, User};
pub use volumes::{Attachment, Volume, VolumeStatus};
