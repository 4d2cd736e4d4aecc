//! Fork (ours, issue 24): `POST /sandboxes/:id/fork` makes copy-on-write clones of a running
//! sandbox; the answer (201) is a list of sandbox objects, as `POST /sandboxes` answers one.

use serde::{Deserialize, Serialize};

/// The most clones one fork makes.
pub const MAX_FORK_COUNT: u32 = 16;

/// `POST /sandboxes/:id/fork`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ForkRequest {
    /// How many clones (1 to 16).
    pub count: u32,
    /// Their names, one per clone; `<source>-<6 hex>` each when absent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}
