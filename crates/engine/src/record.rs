//! The record a store keeps per sandbox so a restarted daemon can bring it back: the type and
//! its rules live in `bhatti-core` (the store reads it without the VM stack); here is what the
//! engine adds, the guest configuration a record boots with.

pub use bhatti_core::{RECORD_VERSION, SandboxRecord};

/// The config drive content of a recorded sandbox when it boots again (volumes and name
/// servers are added by the engine).
pub(crate) fn guest_config(record: &SandboxRecord) -> proto::guest::GuestConfig {
    proto::guest::GuestConfig {
        sandbox_id: record.id.clone(),
        hostname: record.hostname.clone(),
        token: record.token.clone(),
        env: record.env.clone(),
        init: record.init.clone(),
        ..Default::default()
    }
}
