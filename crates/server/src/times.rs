//! Times as the API writes them.

use std::time::Duration;

/// RFC 3339 of a stored time.
pub fn rfc3339(t: store::Timestamp) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(t.millis().max(0).unsigned_abs());
    humantime::format_rfc3339_millis(at).to_string()
}
