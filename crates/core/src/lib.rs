//! bhatti's sandbox vocabulary and the rules over it, shared by the store, the engine and the
//! server: the thermal states, the stored status and what a client sees of the two, the record
//! a restarted daemon recovers a sandbox from, the thermal manager's decision and the lifecycle
//! transition table.
//!
//! Pure: no IO, no clocks read, no async. Every rule is a function of its inputs with a
//! table-driven test that names each row, so the store, the engine and the server cannot
//! disagree about it (they did: two copies of the status rule answered differently).
#![forbid(unsafe_code)]

pub mod cron;
pub mod egress;
pub mod lifecycle;
pub mod publish;
pub mod record;
pub mod status;
pub mod thermal;
pub mod thermal_policy;

pub use egress::{NetPolicy, Policy, Posture};
pub use lifecycle::{Intent, Op, Plan, Refusal};
pub use record::{RECORD_VERSION, RecordError, SandboxRecord, VolumeMount, check_mount_point};
pub use status::Status;
pub use thermal::Thermal;
